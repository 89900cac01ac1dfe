"""Caption reward: batched (one generate call per batch chunk, one embedding pass) vs per image, side by side.

    python benchmarks/caption_bench.py [--images 16] [--repeats 5] [--captioner tiny-blip2] [--encoder tiny-minilm]

Builds the tiny models in a temporary models root (unless --models-root points at real ones), runs both ways
on the same images in one process, checks they give the same captions and scores, and prints the median
times and their ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("REWARDLOOP_NO_TQDM", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--captioner", default="tiny-blip2")
    ap.add_argument("--encoder", default="tiny-minilm")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--models-root", default=None, help="models root to use instead of building tiny models")
    args = ap.parse_args()

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

    def timed(fn):
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), out

    # interleave the two so that machine load affects both alike
    tb, rb = timed(batched)
    ts, rs = timed(per_image)
    tb2, _ = timed(batched)
    ts2, _ = timed(per_image)
    tb, ts = min(tb, tb2), min(ts, ts2)
    same_caps = [d["caption"] for d in rb.details] == [r.details[0]["caption"] for r in rs]
    max_diff = max(abs(a - r.values[0]) for a, r in zip(rb.values, rs))
    print(f"captioner={args.captioner} encoder={args.encoder} images={args.images} "
          f"max_new_tokens={args.max_new_tokens} device={args.device} threads={torch.get_num_threads()}")
    print(f"batched   (1 generate call, 1 embedding pass): {tb * 1000:9.1f} ms  "
          f"({tb / args.images * 1000:.2f} ms/image)")
    print(f"per-image ({args.images} calls):                        {ts * 1000:9.1f} ms  "
          f"({ts / args.images * 1000:.2f} ms/image)")
    print(f"ratio per-image / batched: {ts / tb:.2f}x")
    print(f"same captions: {same_caps}; max |score difference|: {max_diff:.2e}")


if __name__ == "__main__":
    main()
