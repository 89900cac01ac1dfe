"""Best-of-N scoring: N images through caption + SAM/LLM + rich feedback, batched vs a per-image loop.

    PYTHONPATH=<parent of the pack> python benchmarks/best_of_n_bench.py [--n 8] [--repeats 3] [--quick]

Builds tiny random models (no downloads) in a temporary folder, then times one batched call against N
single-image calls with the shared method (``_method.py``: warm-up, so model loading is not timed; alternating
order; repeats; min and median; load) and prints the ratio (loop / batched) per reward and overall. Rewards
whose module is not in this checkout are skipped and named. Each timed call gets fresh prompt text, so
per-(label, prompt) caches inside a reward never favour either side; an untimed run then checks that batched
and looped scores agree (max |diff|).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from _method import Timing, compare, header, parse, parser, ratio_line

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
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--device", default="cpu")
    args = parse(p, argv)
    if args.quick:
        args.n = 4

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
        fresh = {}

        def before(variant, r, fresh=fresh):  # fresh prompt text per timed call: no cache favours a side
            fresh[variant] = [f"{p} (run {r} {variant})" for p in prompts]

        def batched(scorer=scorer, fresh=fresh):
            scorer(ims, fresh.get("batched", prompts))

        def loop(scorer=scorer, fresh=fresh):
            for im, pr in zip(ims, fresh.get("loop", prompts)):
                scorer([im], [pr])

        t = compare({"batched": batched, "loop": loop}, args.repeats, args.warmup, before=before)
        batched = scorer(ims, prompts)  # agreement check (not timed)
        looped = [scorer([im], [pr]) for im, pr in zip(ims, prompts)]
        diff = 0.0
        for j, s in enumerate(batched):
            diff = max(diff, max(abs(s.values[i] - looped[i][j].values[0]) for i in range(args.n)))
        rows.append((name, ", ".join(s.name for s in batched), t["batched"], t["loop"], diff))
    header("best-of-N scoring: one batched call vs one call per image", n=args.n, device=args.device)
    for name, names, tb, tl, diff in rows:
        print(f"-- {name} ({names}); max |batched - loop| {diff:.2e}")
        tb.name, tl.name = f"{name} batched", f"{name} loop"
        print(tb.line())
        print(tl.line())
        print(ratio_line(f"{name} loop/batched", tl, tb))
    if rows:
        tb = Timing("all batched", [sum(x) for x in zip(*(r[2].times for r in rows))], rows[-1][2].load)
        tl = Timing("all loop", [sum(x) for x in zip(*(r[3].times for r in rows))], rows[-1][3].load)
        print("-- all rewards (sum of each repeat)")
        print(tb.line())
        print(tl.line())
        print(ratio_line("all loop/batched", tl, tb))
    for s in skipped:
        print(f"skipped: {s}")
    import shutil
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
