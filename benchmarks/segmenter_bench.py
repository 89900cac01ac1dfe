"""Which segmenter is the lighter trade? SAM ViT-B vs SAM 2.1 (Hiera-tiny, through transformers), same work.

    python benchmarks/segmenter_bench.py [--points 64] [--threads 1] [--repeats 3] [--quick]

Random weights in the real sizes (nothing is downloaded; speed does not depend on the weights): segment-anything's
ViT-B (``weights.tiny.make_sam``, encoder input 1024, 256-d two-way decoder) and transformers' ``Sam2Model`` with
its default config (the Hiera-tiny image encoder of SAM 2 / 2.1 at 1024, 256-d decoder) when the installed
transformers has it. Timed with the shared method (``_method.py``): one image-encoder forward per image, and one
mask-decoder forward for ``--points`` point prompts (3 masks each) on that image's embedding — the automatic mask
generator runs ``points_per_side²`` of these per image (256 at the default 16). Printed: seconds per image for
the encoder, milliseconds per point for the decoder, and the per-image total at 16 × 16 points.
``--quick``: encoders at input 256 (CI-sized; the ratio then says little about full-size images).
"""
from __future__ import annotations

import torch
from _method import compare, header, parse, parser


def sam1(img_size: int):
    from rewardloop.rewards.segments import _decode
    from rewardloop.weights.tiny import make_sam
    sam = make_sam(embed_dim=768, depth=12, num_heads=12, img_size=img_size, global_attn_indexes=(2, 5, 8, 11))
    x = torch.randn(1, 3, img_size, img_size)
    pe = sam.prompt_encoder.get_dense_pe()
    state = {}

    def encode():
        state["f"] = sam.image_encoder(x)

    def decode(points):
        if "f" not in state:
            encode()
        _decode(sam, state["f"], pe, torch.rand(points, 2) * img_size)
    return sam, encode, decode


def sam2(img_size: int):
    from transformers import Sam2Config, Sam2Model
    cfg = Sam2Config()
    if img_size != 1024:  # the config's sizes are for 1024 px
        cfg.vision_config.backbone_config.image_size = [img_size, img_size]
        cfg.vision_config.backbone_feature_sizes = [[img_size // s] * 2 for s in (4, 8, 16)]
        cfg.prompt_encoder_config.image_size = img_size
    model = Sam2Model(cfg).eval()
    x = torch.randn(1, 3, img_size, img_size)
    state = {}

    def encode():
        state["e"] = model.get_image_embeddings(pixel_values=x)

    def decode(points):
        if "e" not in state:
            encode()
        pts = (torch.rand(1, points, 1, 2) * img_size)
        labels = torch.ones(1, points, 1, dtype=torch.long)
        model(image_embeddings=state["e"], input_points=pts, input_labels=labels, multimask_output=True)
    return model, encode, decode


def main(argv=None) -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=64, help="point prompts per decoder forward")
    ap.add_argument("--threads", type=int, default=1)
    args = parse(ap, argv)
    img = 256 if args.quick else 1024
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    builders = {"SAM ViT-B (segment-anything)": sam1}
    try:
        from transformers import Sam2Model  # noqa: F401
        builders["SAM 2.1 Hiera-tiny (transformers)"] = sam2
    except ImportError:
        print("(transformers has no Sam2Model: SAM 2 not measured)")
    built = {name: b(img) for name, b in builders.items()}
    header("segmenters: image encoder and mask decoder cost, random weights in real sizes", encoder_input=img,
           points_per_decoder_forward=args.points)
    variants = {}
    for name, (_, enc, dec) in built.items():
        variants[f"{name} encoder"] = enc
        variants[f"{name} decoder"] = lambda dec=dec: dec(args.points)
    with torch.no_grad():
        t = compare(variants, args.repeats, args.warmup)
    for name, (model, _, _) in built.items():
        e, d = t[f"{name} encoder"], t[f"{name} decoder"]
        n = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name} ({n:.1f} M params)")
        print("  " + e.line(unit_name="s/image", width=10).replace(e.name, "encoder"))
        print("  " + d.line(unit=args.points / 1000, unit_name="ms/point", width=10).replace(d.name, "decoder"))
        per_image = e.min + d.min / args.points * 256
        print(f"  per image at 16x16 points (min figures): {per_image:.2f} s, encoder {100 * e.min / per_image:.0f}%")


if __name__ == "__main__":
    main()
