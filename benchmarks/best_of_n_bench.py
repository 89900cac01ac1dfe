"""Best-of-N scoring: N images through caption + SAM/LLM + rich feedback, batched vs a per-image loop.

    PYTHONPATH=<parent of the pack> HF_HUB_OFFLINE=1 python benchmarks/best_of_n_bench.py [--n 8] [--repeat 2]

Builds tiny random models (no downloads) in a temporary folder, warms every scorer up once (model loading is
not timed), then times one batched call against N single-image calls, side by side in one run, and prints the
ratio (loop time / batched time) per reward and overall. Rewards whose module is not in this checkout are
skipped and named. Each timed call gets fresh prompt text, so per-(label, prompt) caches inside a reward
never favour either side; an untimed run then checks that batched and looped scores agree (max |diff|).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("REWARDLOOP_NO_TQDM", "1")

try:
    import rewardloop  # noqa: F401
except ImportError:  # run from inside the pack folder without PYTHONPATH
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

REWARDS = {
    "caption": {"captioner": "tiny-blip2", "text_encoder": "tiny-minilm"},
    "sam_llm": {"sam": "tiny-sam", "clip": "tiny-clip", "llm": "tiny-llm"},
    "rich": {"rich_feedback": "tiny-rahf"},
}


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--repeat", type=int, default=2, help="timed repeats (the minimum is reported)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    import torch

    from rewardloop.rewards.scoring import make_scorer
    from rewardloop.weights import tiny
    from rewardloop.weights.catalogue import CATALOGUE
    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix="rewardloop-bench-"))
    os.environ["REWARDLOOP_MODELS"] = str(root)
    known = {s.key for s in CATALOGUE}
    ims = images(args.n)
    prompts = ["a bright square on a dark background"] * args.n
    rows, skipped = [], []
    import importlib.util

    from rewardloop.rewards import scoring
    for name, models in REWARDS.items():
        mod = scoring.SCORER_FACTORIES[name].split(":")[0]
        try:
            found = importlib.util.find_spec(mod, "rewardloop.rewards") is not None
        except ImportError:
            found = False
        if not found:
            skipped.append(f"{name} (module rewardloop.rewards{mod} not in this checkout)")
            continue
        missing = [k for k in models.values() if k not in known or k not in tiny.BUILDERS]
        if missing:
            skipped.append(f"{name} (tiny model(s) {', '.join(missing)} not in this checkout)")
            continue
        try:
            for key in models.values():
                tiny.build(key, root)
            scorer = make_scorer(name, models=models, device=args.device)
        except (ImportError, ModuleNotFoundError) as e:
            skipped.append(f"{name} (module missing: {e})")
            continue
        except Exception as e:  # one broken reward must not hide the others' numbers
            skipped.append(f"{name} (could not be built: {type(e).__name__}: {e})")
            continue
        scorer(ims[:1], ["warm-up prompt"])  # warm-up: load models (not timed)
        tb = tl = float("inf")
        for r in range(args.repeat):
            # fresh prompt text per timed call, so a reward's (label, prompt) caches never favour either side
            pb = [f"{p} (run {r} batched)" for p in prompts]
            pl = [f"{p} (run {r} loop)" for p in prompts]
            t0 = time.perf_counter()
            scorer(ims, pb)
            tb = min(tb, time.perf_counter() - t0)
            t0 = time.perf_counter()
            for im, pr in zip(ims, pl):
                scorer([im], [pr])
            tl = min(tl, time.perf_counter() - t0)
        batched = scorer(ims, prompts)  # agreement check (not timed)
        looped = [scorer([im], [pr]) for im, pr in zip(ims, prompts)]
        diff = 0.0
        for j, s in enumerate(batched):
            diff = max(diff, max(abs(s.values[i] - looped[i][j].values[0]) for i in range(args.n)))
        rows.append((name, ", ".join(s.name for s in batched), tb, tl, diff))
    print(f"best-of-N scoring, N={args.n}, device={args.device}, torch threads={torch.get_num_threads()}, "
          f"min of {args.repeat} runs")
    print(f"{'reward':8}  {'scores':40}  {'batched s':>9}  {'loop s':>8}  {'loop/batched':>12}  max |diff|")
    for name, names, tb, tl, diff in rows:
        print(f"{name:8}  {names[:40]:40}  {tb:9.3f}  {tl:8.3f}  {tl / tb:11.2f}x  {diff:.2e}")
    if rows:
        tb = sum(r[2] for r in rows)
        tl = sum(r[3] for r in rows)
        print(f"{'all':8}  {'':40}  {tb:9.3f}  {tl:8.3f}  {tl / tb:11.2f}x")
    for s in skipped:
        print(f"skipped: {s}")
    import shutil
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
