"""``caption``: print a caption for each image file (the captioner of the caption reward)."""
from __future__ import annotations

from ._checks import add_device_args, check_int, check_model, collect_images, load_images


def register(sub):
    p = sub.add_parser("caption", help="caption image files (BLIP / BLIP-2 / any HF captioner)")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--model", default="blip-large",
                   help="captioner: catalogue key, folder name in models/blip or path (default: blip-large; "
                        "the paper's: blip2-opt-2.7b)")
    p.add_argument("--mode", choices=["short", "detailed"], default="short",
                   help="short (the paper's, unconditional) or detailed (prompted)")
    p.add_argument("--max-new-tokens", type=int, default=30, help="longest caption in tokens (default 30)")
    p.add_argument("--batch-size", type=int, default=8, help="images per generate call (default 8)")
    add_device_args(p)
    p.add_argument("--json", action="store_true", help="print JSON [{file, caption}] instead of lines")
    p.set_defaults(func=cmd_caption)


def cmd_caption(args) -> int:
    from ..rewards.caption_reward import caption
    from ..rewards.report import dumps
    from ..weights.loaders import load_captioner
    check_int("--max-new-tokens", args.max_new_tokens, 1, 4096)
    check_int("--batch-size", args.batch_size, 1)
    check_model(args.model, "blip", "--model")
    files = collect_images(args.images)
    images = load_images(files)
    handle = load_captioner(args.model, dtype=args.dtype, device=args.device)
    caps = caption(handle, images, args.mode, args.max_new_tokens, args.batch_size)
    if args.json:
        print(dumps([{"file": str(f), "caption": c} for f, c in zip(files, caps)]))
    else:
        for f, c in zip(files, caps):
            print(f"{f}\t{c}")
    return 0


# ---------------------------------------------------------------- selftest checks (tiny models)
def _images(n: int = 3):
    import numpy as np
    from PIL import Image
    rng = np.random.RandomState(0)
    return [Image.fromarray((rng.rand(24 + 5 * i, 40, 3) * 255).astype("uint8")) for i in range(n)]


def _check_caption(ctx) -> str:
    from ..rewards.caption_reward import caption
    from ..weights.loaders import load_captioner
    out = []
    for key in ("tiny-blip", "tiny-blip2"):
        h = load_captioner(ctx.model(key), device="cpu")
        ims = _images()
        batched = caption(h, ims, "short", max_new_tokens=6, batch_size=3)
        single = [caption(h, [im], "short", max_new_tokens=6, batch_size=1)[0] for im in ims]
        assert batched == single, f"{key}: batched captions differ from per-image captions"
        assert len(caption(h, ims[:2], "detailed", max_new_tokens=6)) == 2
        out.append(f"{key} {len(batched)} captions")
    return ", ".join(out) + ", batched == per-image"


def _check_caption_reward(ctx) -> str:
    import math

    from ..rewards.scoring import make_scorer
    got = []
    for enc in ("tiny-minilm", "tiny-clip"):
        scorer = make_scorer("caption", {"captioner": ctx.model("tiny-blip2"), "text_encoder": ctx.model(enc)},
                             device="cpu", max_new_tokens=6)
        (s,) = scorer(_images(), ["a red cube on a table"])
        assert s.name == "caption" and len(s) == 3 and s.higher_is_better
        assert all(-1.0 <= v <= 1.0 and not math.isnan(v) for v in s.values), s.values
        assert all("caption" in d for d in s.details)
        got.append(f"{enc}: {min(s.values):.3f}..{max(s.values):.3f}")
    return "; ".join(got)


SELFTESTS = [("caption: tiny BLIP / BLIP-2, batched == per-image", _check_caption),
             ("caption reward: tiny captioner + MiniLM / CLIP", _check_caption_reward)]
