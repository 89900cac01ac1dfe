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

TINY_MODELS = {  # reward -> role -> tiny catalogue key
    "caption": {"captioner": "tiny-blip", "text_encoder": "tiny-minilm"},
    "sam_llm": {"sam": "tiny-sam", "llm": "tiny-llm", "clip": "tiny-clip"},
    "rich": {"rich_feedback": "tiny-rahf"},
}


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
    """Reward modules on tiny models; a reward whose module or tiny model is missing is skipped with a note."""
    from rewardloop.rewards.scoring import make_scorer
    from rewardloop.weights import tiny
    out = []
    for n in names:
        try:
            models = TINY_MODELS.get(n, {})
            for key in models.values():
                tiny.build(key, root)
            out.append(make_scorer(n, models=dict(models)))
        except Exception as e:  # noqa: BLE001 - a benchmark reports and goes on
            print(f"(reward {n!r} skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]})")
    if not out:
        raise SystemExit("no reward could be built; run with --rewards fake")
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
    ap.add_argument("--repeats", type=int, default=2, help="repeats of the side-by-side generation comparison")
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

    def batched():
        generate_batch(comps, ps, seeds, steps=args.gen_steps, width=args.res, height=args.res)

    def per_image():
        for p, sd in zip(ps, seeds):
            generate_batch(comps, [p], [sd], steps=args.gen_steps, width=args.res, height=args.res)

    def core_generate():
        core.generate(comps, ps, seeds, steps=args.gen_steps, width=args.res, height=args.res)

    times = {"batched": [], "per_image": [], "core": []}
    for _ in range(args.repeats):  # alternate the variants; keep each one's best time (shared, noisy machine)
        for name, fn in (("batched", batched), ("per_image", per_image), ("core", core_generate)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    t_batched, t_single, t_core = (min(times[k]) for k in ("batched", "per_image", "core"))
    print(f"\ngeneration of {n} images at {args.res}px, side by side (best of {args.repeats}, alternating):")
    print(f"  one batched call (trainer)        {t_batched:8.3f}s  1.00x")
    print(f"  one call per image (same code)    {t_single:8.3f}s  {t_single / t_batched:.2f}x")
    print(f"  core.generate (one per call)      {t_core:8.3f}s  {t_core / t_batched:.2f}x")
    overhead = t_run - sum(sum(r["seconds"].get(p, 0.0) for p in phases) for r in res.rounds)
    print(f"\nloop overhead outside the phases (state, tables, plot, LoRA export): {overhead:.3f}s")
    print(f"run dir: {res.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
