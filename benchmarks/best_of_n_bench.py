"""Best-of-N scoring: N images through every registry reward, one batched call vs N single-image calls.

    PYTHONPATH=<parent of the pack> python benchmarks/best_of_n_bench.py [--n 8] [--repeats 3] [--quick]
        [--rewards caption,sam_llm,rich,pickscore,hps,image_reward,aesthetic,clip_score]

Builds tiny random models (no downloads) in a temporary folder, then times one batched call against N
single-image calls with the shared method (``_method.py``: warm-up, so model loading is not timed; alternating
order; repeats; min and median; load) and prints the ratio (loop / batched) per reward and overall. Rewards
whose module is not in this checkout are skipped and named. Each timed call gets fresh prompt text, so
per-(label, prompt) caches inside a reward never favour either side; an untimed run then checks that batched
and looped scores agree (max |diff|).
"""
from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

from _method import Timing, compare, header, parse, parser, ratio_line

# random SAM weights predict low IoUs and near-identical boxes: with SAM's thresholds every image would fall back
# to one whole-image segment, and NMS would merge the rest. These keep max_segments (32) masks per image, so the
# labeller and the judge get a real image's amount of work; the table reports the counts.
SAM_OPTIONS = {"pred_iou_thresh": "0", "stability_score_thresh": "0", "box_nms_thresh": "1.0"}


def images(n: int, size: int = 128):
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
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    from rewardloop.weights.tiny import TINY_REWARD_MODELS as REWARDS  # every registry reward's tiny models
    p.add_argument("--rewards", default=",".join(REWARDS), help="comma-separated subset of " + ", ".join(REWARDS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default; 1 suits the tiny "
                                                          "models on a shared machine)")
    args = parse(p, argv)
    if args.quick:
        args.n, args.size = 4, 64

    import torch

    from rewardloop.rewards.scoring import make_scorer
    from rewardloop.weights import tiny
    from rewardloop.weights.catalogue import CATALOGUE
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix="rewardloop-bench-"))
    os.environ["REWARDLOOP_MODELS"] = str(root)
    known = {s.key for s in CATALOGUE}
    ims = images(args.n, args.size)
    prompts = ["a bright square on a dark background"] * args.n
    rows, skipped = [], []
    import importlib.util

    from rewardloop.rewards import scoring
    encoder_share: dict = {}
    decoder_share: dict = {}
    for name in [r.strip() for r in args.rewards.split(",") if r.strip()]:
        if name not in REWARDS:
            skipped.append(f"{name} (no tiny models listed for it in weights/tiny.py TINY_REWARD_MODELS)")
            continue
        models = REWARDS[name]
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
            scorer = make_scorer(name, models=dict(models, **(SAM_OPTIONS if name == "sam_llm" else {})),
                                 device=args.device)
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

        enc = _clock(scorer.sam.model.image_encoder) if name == "sam_llm" else None
        dec = _clock(scorer.sam.model.mask_decoder) if name == "sam_llm" else None

        def timed(fn, variant, enc=enc, dec=dec):
            def run():
                e0, d0 = (enc["s"], dec["s"]) if enc else (0.0, 0.0)
                fn()
                if enc:
                    enc.setdefault(variant, []).append(enc["s"] - e0)
                    dec.setdefault(variant, []).append(dec["s"] - d0)
            return run

        variants = {"batched": timed(batched, "batched"), "loop": timed(loop, "loop")}
        if name == "sam_llm":  # the previous algorithm: every candidate measured at full resolution
            exact = make_scorer(name, models=dict(models, **SAM_OPTIONS, exact_selection="1"), device=args.device)

            def batched_exact(fresh=fresh):
                exact(ims, fresh.get("batched, exact selection", prompts))
            variants["batched, exact selection"] = batched_exact
        t = compare(variants, args.repeats, args.warmup, before=before)
        if enc:  # the encoder's / decoder's seconds of each timed run over that run's total (skip the warm-ups)
            for share, clock in ((encoder_share, enc), (decoder_share, dec)):
                share.update({v: [e / tt for e, tt in zip(clock[v][args.warmup:], t[v].times)]
                              for v in ("batched", "loop")})
        batched = scorer(ims, prompts)  # agreement check (not timed)
        looped = [scorer([im], [pr]) for im, pr in zip(ims, prompts)]
        diff = 0.0
        for j, s in enumerate(batched):
            diff = max(diff, max(abs(s.values[i] - looped[i][j].values[0]) for i in range(args.n)))
        counts = [d.get("n_segments") for d in (batched[0].details or []) if isinstance(d, dict)]
        rows.append((name, ", ".join(s.name for s in batched), t["batched"], t["loop"], diff, counts,
                     t.get("batched, exact selection")))
    header("best-of-N scoring: one batched call vs one call per image", n=args.n, image=f"{args.size}px",
           device=args.device)
    for name, names, tb, tl, diff, counts, tex in rows:
        print(f"-- {name} ({names}); max |batched - loop| {diff:.2e}")
        if name == "sam_llm":
            print(f"   segments per image: {counts} (thresholds 0, NMS off, max_segments 32; 0 = whole-image "
                  f"fallback); SAM image encoder share of the time (median): batched "
                  f"{100 * statistics.median(encoder_share['batched']):.0f}%, loop "
                  f"{100 * statistics.median(encoder_share['loop']):.0f}%; SAM mask decoder share (median): batched "
                  f"{100 * statistics.median(decoder_share['batched']):.0f}%, loop "
                  f"{100 * statistics.median(decoder_share['loop']):.0f}%")
        tb.name, tl.name = f"{name} batched", f"{name} loop"
        print(tb.line())
        print(tl.line())
        print(ratio_line(f"{name} loop/batched", tl, tb))
        if tex is not None:
            tex.name = f"{name} batched, exact selection"
            print(tex.line(width=36))
            print(ratio_line(f"{name} exact selection (every candidate at full size) / low-res selection", tex, tb))
    if rows:
        if len(rows) == 1:
            return 0
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


def _clock(module) -> dict:
    """Accumulate the seconds spent in ``module``'s forward (``clock["s"]``)."""
    import time
    clock = {"s": 0.0}
    forward = module.forward

    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return forward(*a, **k)
        finally:
            clock["s"] += time.perf_counter() - t0
    module.forward = timed
    return clock


if __name__ == "__main__":
    raise SystemExit(main())
