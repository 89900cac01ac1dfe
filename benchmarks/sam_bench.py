"""Our batched SAM mask generation vs segment-anything's stock SamAutomaticMaskGenerator, same model, same settings.

A random SAM with ViT-B sizes (embed 768, depth 12, 12 heads, global attention at 2/5/8/11, 256-d decoder) is
built with ``weights.tiny.make_sam`` (no download). Thresholds are 0 by default so that random weights still
produce masks and both pipelines do the full work (upsampling, stability, NMS). Prints seconds per image for
each, the ratio, the image-encoder share, and mask agreement (greedy IoU matching).

    python benchmarks/sam_bench.py [--img-size 1024] [--image 256] [--points 8] [--repeats 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--img-size", type=int, default=1024, help="SAM encoder input size (ViT-B uses 1024)")
    ap.add_argument("--image", type=int, default=256, help="test image side in pixels")
    ap.add_argument("--points", type=int, default=8, help="points per side")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--iou", type=float, default=0.0, help="pred_iou_thresh")
    ap.add_argument("--stability", type=float, default=0.0, help="stability_score_thresh")
    ap.add_argument("--nms", type=float, default=0.7, help="box_nms_thresh (1.0 keeps every mask: random weights "
                                                          "give near-identical boxes that NMS would merge)")
    args = ap.parse_args()

    from rewardloop.rewards.images import image_to_pil
    from rewardloop.rewards.segments import SegmentOptions, segment_images
    from rewardloop.weights.tiny import make_sam

    torch.manual_seed(0)
    sam = make_sam(embed_dim=768, depth=12, num_heads=12, img_size=args.img_size, global_attn_indexes=(2, 5, 8, 11))
    n_params = sum(p.numel() for p in sam.parameters())
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, args.image, args.image, 3, generator=g) * 0.3
    img[:, args.image // 4: args.image // 2, args.image // 5: args.image * 3 // 5] += 0.6
    pil = image_to_pil(img.clamp(0, 1))[0]
    common = dict(points_per_side=args.points, pred_iou_thresh=args.iou, stability_score_thresh=args.stability,
                  box_nms_thresh=args.nms, max_segments=0)

    with torch.no_grad():
        t = time.perf_counter()
        from rewardloop.rewards.segments import _encode
        _encode(sam, pil)
        enc = time.perf_counter() - t

    times = {"batched": [], "stock": []}
    result = {}
    for r in range(args.repeats):
        for backend in (("batched", "stock") if r % 2 == 0 else ("stock", "batched")):
            t = time.perf_counter()
            result[backend] = segment_images(sam, [pil], SegmentOptions(backend=backend, **common))[0]
            times[backend].append(time.perf_counter() - t)
    ours, stock = result["batched"], result["stock"]
    t_ours, t_stock = statistics.median(times["batched"]), statistics.median(times["stock"])

    # agreement: greedy one-to-one matching by IoU
    a = ours.masks.reshape(len(ours), -1).float()
    b = stock.masks.reshape(len(stock), -1).float()
    if len(a) and len(b):
        inter = a @ b.T
        union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
        iou = (inter / union.clamp(min=1)).numpy()
        pairs = sorted(((iou[i, j], i, j) for i in range(len(a)) for j in range(len(b))), reverse=True)
        used_a, used_b, matched = set(), set(), []
        for v, i, j in pairs:
            if i not in used_a and j not in used_b:
                used_a.add(i)
                used_b.add(j)
                matched.append(v)
        matched = np.array(matched)
        mean_iou = float(matched.mean())
        frac = float((matched > 0.95).sum()) / max(len(a), len(b))
    else:
        mean_iou, frac = float("nan"), float(len(a) == len(b))

    print(f"SAM ViT-B-sized random weights ({n_params / 1e6:.1f} M params), encoder input {args.img_size}, "
          f"image {args.image}x{args.image}, {args.points}x{args.points} points, thresholds iou>{args.iou} "
          f"stability>={args.stability} nms {args.nms}, torch threads {torch.get_num_threads()}")
    print(f"image encoder alone: {enc:.2f} s")
    print(f"ours (batched):  {t_ours:.2f} s/image  ({len(ours)} masks)   runs: {[round(x, 2) for x in times['batched']]}")
    print(f"stock AMG:       {t_stock:.2f} s/image  ({len(stock)} masks)   runs: {[round(x, 2) for x in times['stock']]}")
    print(f"speed ratio stock/ours: {t_stock / t_ours:.2f}x end to end; "
          f"{max(t_stock - enc, 1e-9) / max(t_ours - enc, 1e-9):.2f}x after the shared encoder forward")
    print(f"mask agreement: {len(ours)} vs {len(stock)} masks, mean matched IoU {mean_iou:.4f}, "
          f"matched with IoU>0.95: {100 * frac:.1f}%")


if __name__ == "__main__":
    main()
