"""Rich feedback speed, measured side by side in one run (tiny model; ratios, not absolute numbers):

1. batched RAHF inference (one forward per batch) vs one image at a time, scores + heatmaps, no decoder;
2. the same with keyword decoding on;
3. TFRecord reading with CRC verification vs without.

Run: ``python benchmarks/rich_feedback_bench.py`` (builds tiny models in a temporary folder).
"""
from __future__ import annotations

import os
import tempfile
import time

import torch


def _best(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("REWARDLOOP_NO_TQDM", "1")
    torch.set_num_threads(1)
    root = tempfile.mkdtemp(prefix="rl-bench-")
    os.environ["REWARDLOOP_MODELS"] = root
    from rewardloop.rewards.rich_feedback.model import load_rich_feedback
    from rewardloop.rewards.rich_feedback.predict import predict
    from rewardloop.trainers.rich_feedback import write_synthetic_richhf
    from rewardloop.trainers.tfrecord import read_records
    from rewardloop.weights import tiny
    tiny.build("tiny-rahf", root)
    h = load_rich_feedback("tiny-rahf", device="cpu", dtype="fp32")
    from PIL import Image
    ims = [Image.new("RGB", (64, 48), (i * 8, 100, 200 - i * 8)) for i in range(16)]
    prompts = [f"a red car number {i}, on the street" for i in range(16)]
    for kw in (False, True):
        one = _best(lambda: predict(h, ims, prompts, batch_size=1, keywords=kw, max_new_tokens=12))
        batched = _best(lambda: predict(h, ims, prompts, batch_size=16, keywords=kw, max_new_tokens=12))
        print(f"predict 16 images, keywords={kw}: one-at-a-time {one:.3f}s, batched {batched:.3f}s, "
              f"speed-up x{one / batched:.2f}")
    rec, _ = write_synthetic_richhf(os.path.join(root, "data"), n=64, map_size=512)
    size = os.path.getsize(rec)
    on = _best(lambda: sum(1 for _ in read_records(rec, verify=True)))
    off = _best(lambda: sum(1 for _ in read_records(rec, verify=False)))
    print(f"read {size / 1e6:.2f} MB TFRecord: verify CRC {on:.3f}s ({size / 1e6 / on:.1f} MB/s), "
          f"no verify {off:.3f}s, CRC cost x{on / off:.1f}")


if __name__ == "__main__":
    main()
