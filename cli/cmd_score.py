"""``score``: score image files with one or more rewards and print a table (or JSON)."""
from __future__ import annotations

from ..rewards.report import scores_json, scores_table
from ..rewards.scoring import available, check_scorers, make_scorer, parse_model_options
from .. import distributed
from ._checks import add_device_args, check_int, check_prompts, collect_images, split_names
from ._stream import DEFAULT_CHUNK, check_images, stream_scores


def register(sub):
    p = sub.add_parser("score", help=f"score images with rewards ({', '.join(available())})")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--reward", action="append", required=True,
                   help=f"reward to compute (repeatable, or comma-separated): {', '.join(available())}")
    p.add_argument("--prompt", action="append", required=True,
                   help="the prompt (once for all images, or once per image in order)")
    p.add_argument("--model", action="append", metavar="ROLE=MODEL",
                   help="model for a role, e.g. captioner=blip-large, text_encoder=all-MiniLM-L6-v2, llm=…, "
                        "pickscore=…, hps=…, image_reward=…, aesthetic=…, clip=…; REWARD.ROLE=… for one reward; "
                        "options the same way (batch_size=8, clip_score.prefix=)")
    p.add_argument("--chunk", type=int, default=DEFAULT_CHUNK,
                   help=f"images loaded and scored at a time (memory is bounded by the chunk; default {DEFAULT_CHUNK})")
    add_device_args(p)
    p.add_argument("--json", action="store_true",
                   help="print JSON {files, prompts, scores} instead of a table (strict JSON: NaN is null)")
    p.set_defaults(func=cmd_score)


def cmd_score(args) -> int:
    names = split_names(args.reward)
    models = parse_model_options(args.model)
    check_scorers(names, models)  # names, roles, every model on disk: before anything loads
    check_int("--chunk", args.chunk, 1)
    files = collect_images(args.images)
    prompts = check_prompts(args.prompt, len(files))
    check_images(files)  # every file decodes: before any model loads
    scorers = [make_scorer(name, models=models, device=args.device, dtype=args.dtype) for name in names]
    scores = stream_scores(files, prompts, scorers, args.chunk)
    if not distributed.is_main():
        return 0
    if args.json:
        print(scores_json(scores, files, prompts))
    else:
        print("\n".join(f"{i}: {f}" for i, f in enumerate(files)))
        print(scores_table(scores))
    return 0


# ---------------------------------------------------------------- selftest
def _check_preference_rewards(ctx) -> str:
    """PickScore, HPS, ImageReward, aesthetics and CLIPScore on their tiny released-layout models."""
    import numpy as np
    from PIL import Image

    from ..weights.tiny import TINY_REWARD_MODELS
    ims = [Image.fromarray((np.random.default_rng(i).random((40, 56, 3)) * 255).astype(np.uint8)) for i in range(3)]
    prompts = ["a cat", "a red car", "a cat"]
    out = []
    for name in ("pickscore", "hps", "image_reward", "aesthetic", "clip_score"):
        models = {role: ctx.model(key) for role, key in TINY_REWARD_MODELS[name].items()}
        scorer = make_scorer(name, models=models, device="cpu")
        batched = scorer(ims, prompts)[0].values
        single = [scorer([im], [p])[0].values[0] for im, p in zip(ims, prompts)]
        assert np.allclose(batched, single, atol=1e-4), (name, batched, single)
        out.append(f"{name} {batched[0]:.3g}")
    return "; ".join(out) + " (batched = per-image)"


SELFTESTS = [("preference rewards: PickScore, HPS, ImageReward, aesthetic, CLIPScore", _check_preference_rewards)]
