"""Peak memory (RSS) of ``rank`` as the folder grows: streamed in chunks, it should not grow with N.

    python benchmarks/rank_memory_bench.py [--n 32,128,512] [--size 1024] [--chunk 16] [--repeats 3] [--quick]

Writes N test images (``--size`` × ``--size`` PNG, smooth content with a moving square) once, builds the tiny
caption and rich-feedback models (no download), then runs ``python -m rewardloop rank --rewards caption,rich``
on the first N images, each run in a fresh process that reports its own peak RSS (``ru_maxrss``). Runs
alternate over the sizes (``_method.py``: repeats, min and median, load). Printed per N: the peak, seconds, and
the ratio of each peak to the smallest N's. ``--unbounded 32,128`` adds runs with ``--chunk`` equal to N (every
image in memory at once, as ``rank`` did before streaming) for comparison. ``--quick``: N = 8,16,32 at 256 px.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _method import header, load, parse, parser, peak_rss_mb

TINY = ["--model", "captioner=tiny-blip", "--model", "text_encoder=tiny-minilm", "--model",
        "rich_feedback=tiny-rahf"]


def make_images(folder: Path, n: int, size: int) -> list[Path]:
    import numpy as np
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 255 // size, yy * 255 // size, (xx + yy) * 127 // size], -1).astype(np.uint8)
    files = []
    for i in range(n):
        f = folder / f"img_{i:04d}.png"
        if not f.exists():
            a = base.copy()
            o = (i * 37) % (size // 2)
            a[o:o + size // 4, o // 2:o // 2 + size // 4] = (200, 40 + i % 200, 90)
            Image.fromarray(a, "RGB").save(f, compress_level=1)
        files.append(f)
    return files


def child(argv: list[str]) -> None:
    from rewardloop.cli import main as cli_main
    t0 = time.perf_counter()
    rc = cli_main(argv)
    print(json.dumps({"rc": rc, "peak": peak_rss_mb(), "seconds": time.perf_counter() - t0}))


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2:])
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--n", default="32,128,512", help="folder sizes to compare")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--unbounded", default="", help="sizes to also run with --chunk N (everything at once)")
    args = parse(ap, argv)
    if args.quick:
        args.n, args.size = "8,16,32", 256
    sizes = [int(x) for x in args.n.split(",")]
    work = Path(tempfile.mkdtemp(prefix="rank-memory-"))
    models = work / "models"
    env = dict(os.environ, REWARDLOOP_MODELS=str(models), HF_HUB_OFFLINE="1", REWARDLOOP_NO_TQDM="1",
               OMP_NUM_THREADS="1")
    from rewardloop.weights import tiny
    for key in ("tiny-blip", "tiny-minilm", "tiny-rahf"):
        tiny.build(key, models)
    files = make_images(work / "images", max(sizes), args.size)
    configs = [(n, args.chunk) for n in sizes] + [(int(n), int(n)) for n in args.unbounded.split(",") if n]
    header("rank: peak RSS vs folder size (caption + rich on tiny models)", image=f"{args.size}x{args.size}",
           chunk=args.chunk, sizes=args.n, unbounded=args.unbounded or "none")
    runs: dict = {c: [] for c in configs}
    for r in range(args.repeats):  # every run is a fresh process: no warm-up to share
        for n, chunk in (configs if r % 2 == 0 else configs[::-1]):
            out = work / f"out_{n}_{chunk}_{r}"
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "rank", *map(str, files[:n]),
                   "--rewards", "caption,rich", "--prompt", "a red square on a gradient", "--out", str(out),
                   "--chunk", str(chunk), "--device", "cpu", *TINY]
            got = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if got.returncode != 0:
                raise SystemExit(f"rank failed (N={n}): {got.stderr[-2000:]}")
            res = json.loads(got.stdout.strip().splitlines()[-1])
            res["load"] = load()
            runs[(n, chunk)].append(res)
    base = None
    for (n, chunk), rs in runs.items():
        peaks = [x["peak"] for x in rs]
        base = base or min(peaks)
        kind = "streamed" if chunk < n or (n, chunk) == (sizes[0], args.chunk) else "all at once"
        print(f"N={n:4} chunk {chunk:4} ({kind:11}): peak RSS min {min(peaks):7.0f} MiB median "
              f"{statistics.median(peaks):7.0f} MiB  (x{min(peaks) / base:.3f} of N={sizes[0]})  "
              f"{min(x['seconds'] for x in rs):7.1f} s min  (n={len(rs)})  [{rs[-1]['load']}]")
    big, small = runs[(sizes[-1], args.chunk)], runs[(sizes[0], args.chunk)]
    ratio = min(x["peak"] for x in big) / min(x["peak"] for x in small)
    print(f"peak RSS N={sizes[-1]} / N={sizes[0]} (min of repeats): {ratio:.3f} "
          f"({'within' if abs(ratio - 1) <= 0.10 else 'NOT within'} 10%)")


if __name__ == "__main__":
    main()
