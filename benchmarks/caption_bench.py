"""Caption reward: batched (one generate call per batch chunk, one embedding pass) vs per image, side by side.

    python benchmarks/caption_bench.py [--images 16] [--repeats 3] [--captioner tiny-blip2] [--encoder tiny-minilm]
    python benchmarks/caption_bench.py --quick

Builds the tiny models in a temporary models root (unless --models-root points at real ones), runs both ways
on the same images in one process with the shared method (``_method.py``: warm-up, alternating order, repeats,
min and median, load), checks they give the same captions and scores, and prints the ratio.
"""
from __future__ import annotations

import os
import tempfile

from _method import compare, header, parse, parser, ratio_line


def main(argv=None) -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--captioner", default="tiny-blip2")
    ap.add_argument("--encoder", default="tiny-minilm")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--models-root", default=None, help="models root to use instead of building tiny models")
    args = parse(ap, argv)
    if args.quick:
        args.images, args.max_new_tokens = 4, 8

    import numpy as np
    import torch
    from PIL import Image

    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.models_root or tempfile.mkdtemp(prefix="rewardloop-bench-")
    os.environ["REWARDLOOP_MODELS"] = root
    from rewardloop.rewards.caption_reward import caption_reward
    from rewardloop.weights import tiny
    from rewardloop.weights.loaders import load_captioner, load_text_encoder
    for key in (args.captioner, args.encoder):
        if key.startswith("tiny-"):
            tiny.build(key, root)
    cap = load_captioner(args.captioner, device=args.device)
    enc = load_text_encoder(args.encoder, device=args.device)
    rng = np.random.RandomState(0)
    images = [Image.fromarray((rng.rand(64, 64, 3) * 255).astype("uint8")) for _ in range(args.images)]
    prompt = "a photo of a red cube on a wooden table"

    def batched():
        return caption_reward(cap, enc, images, prompt, max_new_tokens=args.max_new_tokens,
                              batch_size=len(images), keep_loaded=True)

    def per_image():
        return [caption_reward(cap, enc, [im], prompt, max_new_tokens=args.max_new_tokens, batch_size=1,
                               keep_loaded=True) for im in images]

    header("caption reward: batched vs per image", captioner=args.captioner, encoder=args.encoder,
           images=args.images, max_new_tokens=args.max_new_tokens, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    t = compare({"batched (1 generate call)": batched, f"per image ({args.images} calls)": per_image},
                args.repeats, args.warmup, sync)
    tb, ts = t.values()
    for x in (tb, ts):
        print(x.line(unit=args.images / 1000, unit_name="ms/image"))
    print(ratio_line("per-image / batched", ts, tb))
    rb, rs = batched(), per_image()
    same_caps = [d["caption"] for d in rb.details] == [r.details[0]["caption"] for r in rs]
    max_diff = max(abs(a - r.values[0]) for a, r in zip(rb.values, rs))
    print(f"same captions: {same_caps}; max |score difference|: {max_diff:.2e}")


if __name__ == "__main__":
    main()
