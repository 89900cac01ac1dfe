"""Where one reward-ranked round spends its time: generation, scoring, selection (+ writing), training.

Runs ``--rounds`` rounds of ``trainers/ranked.py`` on the tiny diffusers model (built offline in a temporary
folder) and prints seconds and shares per phase, measured in the same run. Rewards: ``fake`` (brightness and
contrast functions, no model: isolates the loop's own cost) or real reward modules on tiny models
(``--rewards caption,sam_llm,rich`` when those modules are installed).

    PYTHONPATH=.. python benchmarks/ranked_bench.py [--prompts 2 --k 4 --res 64 --gen-steps 10 --steps 10] [--quick]

Method: ``_method.py``. The round runs once untimed (warm-up) and then ``--repeats`` times in fresh run folders;
each phase's min and median over the repeats are printed with the load. The generation comparison (one batched
call vs one call per image vs ``core.generate``) alternates its variants' order each repeat.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from _method import Timing, compare, header, load, parse, parser, ratio_line

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
    ap = parser(__doc__.splitlines()[0])
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
    args = parse(ap, argv)
    if args.quick:
        args.prompts, args.k, args.res, args.gen_steps, args.steps = 2, 2, 32, 2, 2

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
    header("reward-ranked round on tiny-sd: where the time goes", prompts=len(prompts), k=args.k,
           resolution=f"{args.res}px", sampling_steps=args.gen_steps, training_steps=args.steps,
           rewards=args.rewards, device=args.device)
    print(f"(setup, not timed: build tiny-sd {t_build:.2f}s)")
    phases = ["generate", "score", "select", "train"]
    timings = {p: Timing(p) for p in phases + ["total", "outside phases"]}
    for r in range(args.warmup + args.repeats):
        trainer = RankedTrainer("tiny-sd", prompts, scorers, tmp / f"run{r}", cfg, core.LoraConfig(rank=4),
                                core.TrainConfig(steps=args.steps, lr=1e-4, resolution=args.res, seed=0),
                                device=args.device)
        trainer._ensure_components()  # loading the base is not timed
        t0 = time.perf_counter()
        res = trainer.run()
        t_run = time.perf_counter() - t0
        if r < args.warmup:
            continue
        sec = {p: sum(rec["seconds"].get(p, 0.0) for rec in res.rounds) for p in phases}
        for p in phases:
            timings[p].times.append(sec[p])
        timings["total"].times.append(t_run)
        # state, tables, plot, LoRA export
        timings["outside phases"].times.append(t_run - sum(sec.values()))
        for t in timings.values():
            t.load = load()
    n_cand = res.rounds[0]["candidates"]
    units = {"generate": (n_cand, "image"), "score": (n_cand, "image"), "select": (n_cand, "image"),
             "train": (args.steps, "step")}
    tot = timings["total"].median
    print(f"\n{args.rounds} round(s), {n_cand} candidates per round, {len(res.rounds[0]['kept'])} kept")
    for p in phases:
        n, u = units[p]
        print(f"{timings[p].line(width=16)}  share {100 * timings[p].median / tot:5.1f}%  "
              f"{1000 * timings[p].median / max(n * args.rounds, 1):8.1f} ms/{u} (median)")
    print(timings["outside phases"].line(width=16))
    print(timings["total"].line(width=16))
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

    t = compare({"one batched call (trainer)": batched, "one call per image": per_image,
                 "core.generate": core_generate}, args.repeats, args.warmup)
    tb, ts, tc = t.values()
    print(f"\ngeneration of {n} images at {args.res}px, side by side:")
    for x in (tb, ts, tc):
        print(x.line(width=28))
    print(ratio_line("per image / batched", ts, tb))
    print(ratio_line("core.generate / batched", tc, tb))
    print(f"run dir: {res.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
