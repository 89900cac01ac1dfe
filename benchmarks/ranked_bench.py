"""Where one reward-ranked round spends its time: generation, scoring, selection (+ writing), training.

Runs ``--rounds`` rounds of ``trainers/ranked.py`` on the tiny diffusers model (built offline in a temporary
folder) and prints seconds and shares per phase, measured in the same run. Rewards: ``fake`` (brightness and
contrast functions, no model: isolates the loop's own cost) or real reward modules on tiny models
(``--rewards caption,sam_llm,rich`` when those modules are installed).

    PYTHONPATH=.. python benchmarks/ranked_bench.py [--prompts 2 --k 4 --res 64 --gen-steps 10 --steps 10]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("REWARDLOOP_NO_TQDM", "1")

TINY_MODELS = {"captioner": "tiny-blip", "text_encoder": "tiny-minilm", "clip": "tiny-clip", "sam": "tiny-sam",
               "llm": "tiny-llm", "rich_feedback": "tiny-rich"}


def fake_scorers():
    import numpy as np

    from rewardloop.rewards.scoring import FunctionScorer
    from rewardloop.rewards.types import RewardScores

    def brightness(images, prompts):
        return [RewardScores("brightness", [float(np.asarray(i, dtype=np.float32).mean() / 255) for i in images])]

    def contrast(images, prompts):
        return [RewardScores("contrast", [float(np.asarray(i, dtype=np.float32).std() / 255) for i in images])]

    return [FunctionScorer(["brightness"], brightness), FunctionScorer(["contrast"], contrast)]


def real_scorers(names, root):
    from rewardloop.rewards.scoring import make_scorer
    from rewardloop.weights import tiny
    out = []
    for n in names:
        for key in ("tiny-blip", "tiny-minilm", "tiny-clip", "tiny-sam", "tiny-llm"):
            tiny.build(key, root)
        out.append(make_scorer(n, models={k: v for k, v in TINY_MODELS.items() if k != "rich_feedback"}))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--top", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--gen-steps", type=int, default=10)
    ap.add_argument("--gen-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="training steps per round")
    ap.add_argument("--rewards", default="fake", help="fake, or comma-separated reward names on tiny models")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for the tiny model on a "
                                                           "busy machine)")
    ap.add_argument("--device", default=os.environ.get("REWARDLOOP_DEVICE", "cpu"))
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    os.environ["REWARDLOOP_DEVICE"] = args.device
    tmp = Path(tempfile.mkdtemp(prefix="ranked-bench-"))
    os.environ["REWARDLOOP_MODELS"] = str(tmp / "models")

    from rewardloop.trainers import lora as core
    from rewardloop.trainers.ranked import RankedConfig, RankedTrainer
    from rewardloop.weights import tiny

    t0 = time.perf_counter()
    tiny.build("tiny-sd", tmp / "models")
    t_build = time.perf_counter() - t0
    scorers = fake_scorers() if args.rewards == "fake" else real_scorers(
        [n.strip() for n in args.rewards.split(",") if n.strip()], tmp / "models")
    prompts = ["a photo of a cat sitting on a table", "a red car on the street", "a dog running in the park",
               "a boat on the water near the beach"] * 8
    prompts = [f"{p} {i}" if i >= 4 else p for i, p in enumerate(prompts)][:args.prompts]
    cfg = RankedConfig(k=args.k, rounds=args.rounds, top=args.top, gen_steps=args.gen_steps, gen_batch=args.gen_batch,
                       eval_final=False, seed=0)
    t0 = time.perf_counter()
    trainer = RankedTrainer("tiny-sd", prompts, scorers, tmp / "run", cfg, core.LoraConfig(rank=4),
                            core.TrainConfig(steps=args.steps, lr=1e-4, resolution=args.res, seed=0),
                            device=args.device)
    trainer._ensure_components()
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = trainer.run()
    t_run = time.perf_counter() - t0

    print(f"reward-ranked round on tiny-sd: {len(prompts)} prompts x K={args.k} at {args.res}px, "
          f"{args.gen_steps} sampling steps, {args.steps} training steps, rewards={args.rewards}, "
          f"device={args.device}, threads={args.threads}")
    print(f"(setup, not in the table: build tiny-sd {t_build:.2f}s, load base + LoRA {t_load:.2f}s)")
    phases = ["generate", "score", "select", "train"]
    for rec in res.rounds:
        sec = rec["seconds"]
        total = sum(sec.get(p, 0.0) for p in phases)
        print(f"\nround {rec['round']}  ({rec['candidates']} candidates, {len(rec['kept'])} kept)")
        print(f"{'phase':<10}{'seconds':>10}{'share':>9}{'per unit':>22}")
        units = {"generate": (rec["candidates"], "image"), "score": (rec["candidates"], "image"),
                 "select": (rec["candidates"], "image"), "train": (args.steps, "step")}
        for p in phases:
            n, u = units[p]
            s = sec.get(p, 0.0)
            print(f"{p:<10}{s:>10.3f}{100 * s / total:>8.1f}%{1000 * s / max(n, 1):>14.1f} ms/{u}")
        print(f"{'total':<10}{total:>10.3f}{100.0:>8.1f}%")
    # side by side: one batched pipeline call vs one call per image (same seeds, same images)
    from rewardloop.trainers.ranked import generate_batch
    comps = trainer.components
    n = min(args.gen_batch, len(prompts) * args.k)
    ps = [prompts[i % len(prompts)] for i in range(n)]
    seeds = list(range(n))
    generate_batch(comps, ps[:1], seeds[:1], steps=1, width=args.res, height=args.res)  # warm-up
    t0 = time.perf_counter()
    generate_batch(comps, ps, seeds, steps=args.gen_steps, width=args.res, height=args.res)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p, sd in zip(ps, seeds):
        generate_batch(comps, [p], [sd], steps=args.gen_steps, width=args.res, height=args.res)
    t_single = time.perf_counter() - t0
    print(f"\ngeneration of {n} images at {args.res}px: one batched call {t_batched:.3f}s vs one call per image "
          f"{t_single:.3f}s -> ratio per-image/batched {t_single / t_batched:.2f}")
    overhead = t_run - sum(sum(r["seconds"].get(p, 0.0) for p in phases) for r in res.rounds)
    print(f"\nloop overhead outside the phases (state, tables, plot, LoRA export): {overhead:.3f}s")
    print(f"run dir: {res.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
