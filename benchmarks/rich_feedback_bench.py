"""Rich feedback speed, measured side by side in one run (tiny model; ratios, not absolute numbers):

1. batched RAHF inference (one forward per batch) vs one image at a time, scores + heatmaps, no decoder;
2. the same with keyword decoding on;
3. TFRecord reading with CRC verification vs without.

Run: ``python benchmarks/rich_feedback_bench.py [--images 16] [--quick]`` (builds tiny models in a temporary
folder). Method: ``_method.py`` (warm-up, alternating order, repeats, min and median, load).
"""
from __future__ import annotations

import os
import tempfile

import torch
from _method import compare, header, parse, parser, ratio_line


def main(argv=None) -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--records", type=int, default=64, help="records in the synthetic TFRecord")
    args = parse(ap, argv)
    if args.quick:
        args.images, args.records = 4, 16
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
    n = args.images
    ims = [Image.new("RGB", (64, 48), (i * 8 % 256, 100, (200 - i * 8) % 256)) for i in range(n)]
    prompts = [f"a red car number {i}, on the street" for i in range(n)]
    header("rich feedback: batched vs one at a time; TFRecord CRC cost", images=n, model="tiny-rahf")
    for kw in (False, True):
        t = compare({f"one at a time (kw={kw})": lambda: predict(h, ims, prompts, batch_size=1, keywords=kw,
                                                                  max_new_tokens=12),
                     f"batched {n} (kw={kw})": lambda: predict(h, ims, prompts, batch_size=n, keywords=kw,
                                                              max_new_tokens=12)},
                    args.repeats, args.warmup)
        one, batched = t.values()
        print(one.line())
        print(batched.line())
        print(ratio_line(f"predict {n} images, keywords={kw}: one-at-a-time / batched", one, batched))
    rec, _ = write_synthetic_richhf(os.path.join(root, "data"), n=args.records, map_size=512)
    size = os.path.getsize(rec)
    t = compare({"read, verify CRC": lambda: sum(1 for _ in read_records(rec, verify=True)),
                 "read, no verify": lambda: sum(1 for _ in read_records(rec, verify=False))},
                args.repeats, args.warmup)
    on, off = t.values()
    print(f"{on.line()}  ({size / 1e6 / on.min:.1f} MB/s)")
    print(f"{off.line()}  ({size / 1e6 / off.min:.1f} MB/s)")
    print(ratio_line(f"CRC cost on a {size / 1e6:.2f} MB TFRecord (verify / no verify)", on, off))


if __name__ == "__main__":
    main()
