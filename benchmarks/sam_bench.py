"""Our SAM mask generation (low-res and exact selection) vs segment-anything's SamAutomaticMaskGenerator.

A random SAM with ViT-B sizes (embed 768, depth 12, 12 heads, global attention at 2/5/8/11, 256-d decoder) is
built with ``weights.tiny.make_sam`` (no download); same model, same settings for every variant. Thresholds are
0 by default so that random weights still produce masks and every pipeline does the full work (measuring every
candidate, NMS). Prints seconds per image for each (and the encoder alone), the ratios, and mask agreement with
the stock generator (greedy IoU matching). Random weights give noisy logits: the low-res selection's agreement
is a lower bound of what a trained SAM's smooth logits give.

    python benchmarks/sam_bench.py [--img-size 1024] [--image 256] [--points 8] [--repeats 3] [--quick]

Method: ``_method.py`` (warm-up, alternating order, repeats, min and median, load). ``--quick``: a ViT-B-width
encoder at input 256 (CI-sized).
"""
from __future__ import annotations

import numpy as np
import torch
from _method import compare, header, parse, parser, ratio_line


def main(argv=None) -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--img-size", type=int, default=1024, help="SAM encoder input size (ViT-B uses 1024)")
    ap.add_argument("--image", type=int, default=256, help="test image side in pixels")
    ap.add_argument("--points", type=int, default=8, help="points per side")
    ap.add_argument("--iou", type=float, default=0.0, help="pred_iou_thresh")
    ap.add_argument("--stability", type=float, default=0.0, help="stability_score_thresh")
    ap.add_argument("--nms", type=float, default=0.7, help="box_nms_thresh (1.0 keeps every mask: random weights "
                                                          "give near-identical boxes that NMS would merge)")
    args = parse(ap, argv)
    if args.quick:
        args.img_size, args.image, args.points = 256, 128, 8

    from rewardloop.rewards.images import image_to_pil
    from rewardloop.rewards.segments import SegmentOptions, segment_images
    from rewardloop.weights.tiny import make_sam

    torch.manual_seed(0)
    if args.quick:  # a narrow, shallow encoder: the pipeline's work after the encoder is what is compared
        sam = make_sam(embed_dim=256, depth=4, num_heads=4, img_size=args.img_size, global_attn_indexes=(1, 3))
    else:
        sam = make_sam(embed_dim=768, depth=12, num_heads=12, img_size=args.img_size,
                       global_attn_indexes=(2, 5, 8, 11))
    n_params = sum(p.numel() for p in sam.parameters())
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, args.image, args.image, 3, generator=g) * 0.3
    img[:, args.image // 4: args.image // 2, args.image // 5: args.image * 3 // 5] += 0.6
    pil = image_to_pil(img.clamp(0, 1))[0]
    common = dict(points_per_side=args.points, pred_iou_thresh=args.iou, stability_score_thresh=args.stability,
                  box_nms_thresh=args.nms, max_segments=0)

    result = {}

    def run(name, **kw):
        def go():
            result[name] = segment_images(sam, [pil], SegmentOptions(**common, **kw))[0]
        return go

    header("SAM automatic masks: ours (low-res / exact selection) vs segment-anything's generator",
           model=f"{'narrow' if args.quick else 'ViT-B-sized'} random weights ({n_params / 1e6:.1f} M params)",
           encoder_input=args.img_size, image=f"{args.image}x{args.image}", points=f"{args.points}x{args.points}",
           thresholds=f"iou>{args.iou} stability>={args.stability} nms {args.nms}")
    from rewardloop.rewards.segments import _encode

    def encoder():
        with torch.no_grad():
            _encode(sam, pil)

    variants = {"image encoder alone": encoder, "ours, low-res selection": run("low"),
                "ours, exact selection": run("exact", exact_selection=True), "stock AMG": run("stock", backend="stock")}
    t = compare(variants, args.repeats, args.warmup)
    enc = t["image encoder alone"].min
    print(t["image encoder alone"].line(unit_name="s/image", width=26))
    for name, key in (("ours, low-res selection", "low"), ("ours, exact selection", "exact"), ("stock AMG", "stock")):
        print(f"{t[name].line(unit_name='s/image', width=26)}  ({len(result[key])} masks)")
    for name in ("ours, low-res selection", "ours, exact selection"):
        print(ratio_line(f"stock / {name}, end to end", t["stock AMG"], t[name]))
        print(f"  after the shared encoder forward (min): "
              f"{max(t['stock AMG'].min - enc, 1e-9) / max(t[name].min - enc, 1e-9):.2f}x")
    for key in ("low", "exact"):
        print(f"mask agreement, ours ({key} selection) vs stock: " + agreement(result[key], result["stock"]))


def agreement(ours, stock) -> str:
    """Greedy one-to-one matching by IoU."""
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
    return (f"{len(ours)} vs {len(stock)} masks, mean matched IoU {mean_iou:.4f}, matched with IoU>0.95: "
            f"{100 * frac:.1f}%")


if __name__ == "__main__":
    main()
