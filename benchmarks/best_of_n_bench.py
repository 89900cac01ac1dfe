"""Best-of-N scoring: N images through every registry reward, one batched call vs N single-image calls.

    PYTHONPATH=<parent of the pack> HF_HUB_OFFLINE=1 python benchmarks/best_of_n_bench.py [--n 8] [--repeats 5]
        [--rewards pickscore,hps,image_reward,aesthetic,clip_score,caption,sam_llm,rich] [--threads 1]

Builds tiny random models (no downloads; ``weights.tiny.TINY_REWARD_MODELS``) in a temporary folder, builds every
scorer and warms it up on both paths (model loading is not timed), then times the batched call and the per-image
loop side by side in one process: in alternating order (A B, B A, …) for ``--repeats`` rounds, reporting the
minimum and the median of each and the ratio of the medians (loop / batched). The 1-minute load average is printed
before and after, because the machine may be shared. Each timed call gets fresh prompt text, so per-(label,
prompt) caches inside a reward never favour either side; an untimed run then checks that batched and per-image
scores agree (max |diff|). A reward whose module or tiny model is not in this checkout is skipped and named.

The timing method lives in :func:`compare` alone (warm-up, alternation, min/median), so moving this benchmark onto a
shared benchmark helper is one call.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("REWARDLOOP_NO_TQDM", "1")

try:
    import rewardloop  # noqa: F401
except ImportError:  # run from inside the pack folder without PYTHONPATH
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def compare(a: Callable[[int], object], b: Callable[[int], object], repeats: int) -> dict:
    """Time ``a`` and ``b`` (each called with the round number) after one untimed warm-up each, alternating which
    goes first every round; returns min and median seconds of both."""
    a(-1)
    b(-1)
    ta, tb = [], []
    for r in range(repeats):
        order = ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta))
        for fn, times in order:
            t0 = time.perf_counter()
            fn(r)
            times.append(time.perf_counter() - t0)
    return {"a_min": min(ta), "a_median": statistics.median(ta), "b_min": min(tb), "b_median": statistics.median(tb)}


def images(n: int, size: int = 64):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        a = (rng.random((size, size, 3)) * 80).astype(np.uint8)
        a[size // 4: size // 2, (i * 5) % (size // 2): (i * 5) % (size // 2) + size // 4] = 200
        out.append(Image.fromarray(a, "RGB"))
    return out


def build_scorer(name: str, models: dict, root: Path, device: str):
    """(scorer, None) or (None, why it was skipped)."""
    from rewardloop.rewards import scoring
    from rewardloop.weights import tiny
    from rewardloop.weights.catalogue import CATALOGUE
    mod = scoring.SCORER_FACTORIES[name].split(":")[0]
    try:
        found = importlib.util.find_spec(mod, "rewardloop.rewards") is not None
    except ImportError:
        found = False
    if not found:
        return None, f"{name} (module rewardloop.rewards{mod} not in this checkout)"
    known = {s.key for s in CATALOGUE}
    missing = [k for k in models.values() if k not in known or k not in tiny.BUILDERS]
    if missing:
        return None, f"{name} (tiny model(s) {', '.join(missing)} not in this checkout)"
    try:
        for key in models.values():
            tiny.build(key, root)
        return scoring.make_scorer(name, models=models, device=device), None
    except Exception as e:  # one broken reward must not hide the others' numbers
        return None, f"{name} (could not be built: {type(e).__name__}: {e})"


def main(argv=None) -> int:
    from rewardloop.rewards.scoring import available
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8, help="images per best-of-N batch")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (alternating order)")
    p.add_argument("--rewards", default=",".join(available()), help="comma-separated rewards (default: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)

    import torch

    from rewardloop.weights.tiny import TINY_REWARD_MODELS
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix="rewardloop-bench-"))
    os.environ["REWARDLOOP_MODELS"] = str(root)
    ims = images(args.n)
    base = "a bright square on a dark background"
    rows, skipped = [], []
    load_before = load_average()
    try:
        for name in [r.strip() for r in args.rewards.split(",") if r.strip()]:
            if name not in TINY_REWARD_MODELS:
                skipped.append(f"{name} (no tiny models listed for it)")
                continue
            scorer, why = build_scorer(name, TINY_REWARD_MODELS[name], root, args.device)
            if scorer is None:
                skipped.append(why)
                continue

            def batched(r, scorer=scorer):
                scorer(ims, [f"{base} (run {r} batched)"] * args.n)

            def per_image(r, scorer=scorer):
                for im in ims:
                    scorer([im], [f"{base} (run {r} loop)"])

            t = compare(batched, per_image, args.repeats)
            prompts = [base] * args.n
            together = scorer(ims, prompts)  # agreement check (not timed)
            alone = [scorer([im], [pr]) for im, pr in zip(ims, prompts)]
            diff = max(abs(s.values[i] - alone[i][j].values[0]) for j, s in enumerate(together) for i in range(args.n))
            rows.append((name, ", ".join(s.name for s in together), t, diff))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"best-of-N scoring, N={args.n}, device={args.device}, torch threads={torch.get_num_threads()}, "
          f"{args.repeats} alternating rounds; load average (1/5/15 min) before: {load_before}, "
          f"after: {load_average()}")
    print(f"{'reward':13} {'scores':34} {'batched min/med s':>18} {'per-image min/med s':>20} {'ratio':>7}  max |diff|")
    for name, names, t, diff in rows:
        print(f"{name:13} {names[:34]:34} {t['a_min']:8.3f}/{t['a_median']:<8.3f}  {t['b_min']:9.3f}/{t['b_median']:<9.3f} "
              f"{t['b_median'] / t['a_median']:6.2f}x  {diff:.2e}")
    if rows:
        tb = sum(r[2]["a_median"] for r in rows)
        tl = sum(r[2]["b_median"] for r in rows)
        print(f"{'all':13} {'(sum of medians)':34} {tb:17.3f}  {tl:19.3f} {tl / tb:6.2f}x")
    for s in skipped:
        print(f"skipped: {s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
