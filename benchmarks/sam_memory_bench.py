"""Peak memory (RSS) of automatic segmentation with thresholds 0: does it stay bounded as candidates grow?

    python benchmarks/sam_memory_bench.py [--image 2048] [--points 8,16] [--repeats 3] [--quick]

Each measurement runs in a fresh process (so ``ru_maxrss`` is its own): build a random SAM with ViT-B sizes
(``weights.tiny.make_sam``; no download), make an ``--image`` × ``--image`` picture, run one image-encoder
forward (the **baseline**: model + image + encoder activations, everything except mask generation), then
``segment_images`` with ``pred_iou_thresh=0`` and ``stability_score_thresh=0`` (every candidate survives the
filters: 3 × points² of them) and the default ``max_segments`` (32). Printed: the baseline, the peak, the peak
above the baseline, seconds, the number of candidates and of masks returned, and the bound that
``rewards/segments.py`` states for mask generation. Configurations alternate across repeats (``_method.py``);
the minimum and median of each figure are shown with the load. ``--stock`` adds segment-anything's generator
(it keeps every candidate at full resolution: several GB at 2048 px).
``--quick``: a narrow encoder at input 256 and a 512 px image.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from _method import header, load, parse, parser, peak_rss_mb


def child(args) -> None:
    import time

    import torch
    from PIL import Image

    from rewardloop.rewards.segments import SegmentOptions, _encode, segment_images
    from rewardloop.weights.tiny import make_sam
    torch.manual_seed(0)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    if args.quick:
        sam = make_sam(embed_dim=256, depth=4, num_heads=4, img_size=256, global_attn_indexes=(1, 3))
    else:
        sam = make_sam(embed_dim=768, depth=12, num_heads=12, img_size=1024, global_attn_indexes=(2, 5, 8, 11))
    g = torch.Generator().manual_seed(0)
    n = args.image
    arr = (torch.rand(n, n, 3, generator=g) * 80).to(torch.uint8)
    arr[n // 4: n // 2, n // 5: 3 * n // 5] += 150
    pil = Image.fromarray(arr.numpy(), "RGB")
    with torch.no_grad():
        _encode(sam, pil)
    base = peak_rss_mb()
    opt = SegmentOptions(points_per_side=args.points, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                         backend=args.backend)
    t0 = time.perf_counter()
    seg = segment_images(sam, [pil], opt)[0]
    sec = time.perf_counter() - t0
    print(json.dumps({"base": base, "peak": peak_rss_mb(), "seconds": sec, "masks": len(seg),
                      "candidates": 3 * args.points ** 2, "max_segments": opt.max_segments,
                      "upsample_mb": opt.upsample_mb, "lowres_mb": opt.lowres_mb,
                      "points_per_batch": opt.points_per_batch}))


def main(argv=None) -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--image", type=int, default=2048, help="image side in pixels")
    ap.add_argument("--points", default="8,16", help="points per side to compare (comma-separated)")
    ap.add_argument("--stock", action="store_true", help="also measure segment-anything's generator")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each measured process")
    ap.add_argument("--child", action="store_true", help=argparse_hidden())
    ap.add_argument("--backend", default="batched", help=argparse_hidden())
    args = parse(ap, argv)
    if args.child:
        args.points = int(args.points)
        return child(args)
    if args.quick:
        args.image, args.points = 512, "4,8"
    configs = [(int(p), "batched") for p in args.points.split(",")]
    if args.stock:
        configs += [(int(p), "stock") for p in args.points.split(",")]
    header("SAM automatic segmentation: peak RSS with thresholds 0", image=f"{args.image}x{args.image}",
           model="narrow random SAM, input 256" if args.quick else "ViT-B-sized random SAM, input 1024",
           configs=", ".join(f"{b} pps {p}" for p, b in configs))
    runs: dict = {c: [] for c in configs}
    for r in range(args.repeats):  # no warm-up needed: every run is a fresh process
        for c in (configs if r % 2 == 0 else configs[::-1]):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--points", str(c[0]), "--backend", c[1],
                   "--image", str(args.image), "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if out.returncode != 0:
                raise SystemExit(f"child failed ({c}): {out.stderr[-2000:]}")
            got = json.loads(out.stdout.strip().splitlines()[-1])
            got["load"] = load()
            runs[c].append(got)
    for (p, b), rs in runs.items():
        f = {k: [x[k] for x in rs] for k in ("base", "peak", "seconds")}
        above = [x["peak"] - x["base"] for x in rs]
        x = rs[-1]
        print(f"{b:8} pps {p:3} ({x['candidates']:5} candidates -> {x['masks']:3} masks): "
              f"peak RSS min {min(f['peak']):7.0f} MiB median {statistics.median(f['peak']):7.0f} MiB; "
              f"above baseline (model + encoder) min {min(above):6.0f} median {statistics.median(above):6.0f} MiB; "
              f"baseline {statistics.median(f['base']):6.0f} MiB; {min(f['seconds']):.1f} s (min)  (n={len(rs)})  "
              f"[{x['load']}]")
    x = next(iter(runs.values()))[-1]
    out_mb = x["max_segments"] * args.image * args.image / 2 ** 20
    print(f"stated bound for mask generation (batched): one decoder batch of {x['points_per_batch']} points + "
          f"upsample_mb {x['upsample_mb']} + lowres_mb {x['lowres_mb']} + max_segments {x['max_segments']} x H x W "
          f"bytes ({out_mb:.0f} MiB here) - independent of the thresholds and of points_per_side")


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
