"""``judge``: ask the LLM judge how likely labels are in a prompted scene (FineRewards' 1/2/3 scale).

The SAM + LLM reward itself runs through ``python -m rewardloop score --reward sam_llm``; this command shows
the judge alone, and this module registers the SAM + LLM selftest checks.
"""
from __future__ import annotations

from ._checks import add_device_args, check_model


def register(sub):
    p = sub.add_parser("judge", help="likelihood (1 unlikely .. 3 certain) of labels in a prompted scene (LLM or "
                                     "semantic judge)")
    p.add_argument("labels", nargs="+", help="labels (tags) to judge, e.g. cat bench 'traffic light'")
    p.add_argument("--prompt", required=True, help="the text-to-image prompt (the scene)")
    p.add_argument("--llm", default="SmolLM2-135M-Instruct", help="LLM key, folder name in models/LLM, or path")
    p.add_argument("--mode", choices=["logprob", "paper", "semantic"], default="logprob",
                   help="logprob: expected score from P(1/2/3); paper: greedy answer parsed as tag:score; semantic: "
                        "prompt-label similarity of --text-encoder (no LLM)")
    p.add_argument("--text-encoder", default="all-MiniLM-L6-v2",
                   help="text encoder of the semantic judge (key, folder in models/clip, or path)")
    add_device_args(p)
    p.add_argument("--json", action="store_true", help="print strict JSON (a value that does not apply is null)")
    p.set_defaults(func=cmd_judge)


def cmd_judge(args) -> int:
    from ..errors import UserError
    from ..rewards.report import dumps
    from ..rewards.sam_llm import make_judge, reward_from_scores
    labels = [lab.strip() for lab in args.labels]
    if any(not lab for lab in labels):
        raise UserError("A label is empty: give words such as cat bench 'traffic light'.")
    if not args.prompt.strip():
        raise UserError("--prompt is empty: type the scene (the text-to-image prompt).")
    args.labels = labels
    if args.mode == "semantic":
        from ..rewards.similarity import load_text_encoder
        check_model(args.text_encoder, "clip", "--text-encoder")
        judge = make_judge("semantic", text_encoder=load_text_encoder(args.text_encoder, dtype=args.dtype,
                                                                      device=args.device))
    else:
        from ..weights.loaders import load_llm
        check_model(args.llm, "LLM", "--llm")
        judge = make_judge(args.mode, llm=load_llm(args.llm, dtype=args.dtype, device=args.device))
    got = judge.judge(args.labels, args.prompt)
    r = reward_from_scores([j.score for j in got])
    if args.json:
        print(dumps({"prompt": args.prompt, "reward": r, "labels": [
            {"label": j.label, "score": j.score, "p": list(j.probs), "digit_mass": j.digit_mass, "raw": j.raw}
            for j in got]}, indent=1))
        return 0
    w = max(5, *(len(j.label) for j in got))
    print(f"{'label'.ljust(w)}  score  P(1)  P(2)  P(3)")
    for j in got:
        print(f"{j.label.ljust(w)}  {j.score:5.2f}  {j.probs[0]:.2f}  {j.probs[1]:.2f}  {j.probs[2]:.2f}")
    print(f"reward (mean score - 2)/2 = {r:+.4f}  (range -0.5..+0.5, higher = labels fit the prompt)")
    if args.mode == "paper" and got:
        print(f"answer: {got[0].raw!r}")
    return 0


# ---------------------------------------------------------------- selftests (tiny models)
def _img():
    import torch
    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 48, 64, 3, generator=g) * 0.2
    img[:, 12:24, 16:32] += 0.7
    return img.clamp(0, 1)


def _check_segment(ctx) -> str:
    from ..rewards.segments import segment_images
    from ..weights.loaders import load_sam
    sam = load_sam(ctx.model("tiny-sam"), device="cpu")
    segs = segment_images(sam, _img(), points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    s = segs[0]
    assert s.masks.shape[1:] == (48, 64) and s.masks.dtype.is_floating_point is False
    assert len(s) >= 1 and int(s.areas[0]) == int(s.masks[0].sum())
    return f"{len(s)} segment(s) at 48x64"


def _check_label(ctx) -> str:
    from ..rewards.labels import label_segments, prompt_nouns
    from ..rewards.segments import whole_image_segment
    from ..weights.loaders import load_clip
    assert prompt_nouns("two dogs near a traffic light") == ["dog", "traffic light"]
    seg = whole_image_segment((48, 64))
    label_segments(_img(), [seg], ["a cat on a bench"], clip=load_clip(ctx.model("tiny-clip"), device="cpu"))
    assert len(seg.labels) == 1 and 0.0 < seg.label_scores[0] <= 1.0
    return f"label {seg.labels[0]!r} p={seg.label_scores[0]:.3f}"


def _check_judge(ctx) -> str:
    from ..rewards.llm_judge import JudgeCache, LLMJudge
    from ..weights.loaders import load_llm
    cache = JudgeCache()
    judge = LLMJudge(load_llm(ctx.model("tiny-llm"), device="cpu"), cache=cache)
    got = judge.judge(["cat", "tree", "cat"], "a cat under a tree")
    assert all(abs(sum(j.probs) - 1) < 1e-5 and 1 <= j.score <= 3 for j in got)
    judge.judge(["cat"], "a cat under a tree")
    assert cache.stats.hits >= 1
    return f"scores {[round(j.score, 3) for j in got]}, cache hits {cache.stats.hits}"


def _check_reward(ctx) -> str:
    from ..rewards.scoring import make_scorer
    from ..rewards.images import image_to_pil
    scorer = make_scorer("sam_llm", {"sam": ctx.model("tiny-sam"), "clip": ctx.model("tiny-clip"),
                                     "llm": ctx.model("tiny-llm")}, device="cpu", points_per_side=4)
    res = scorer.score(image_to_pil(_img()), ["a cat on a bench"])
    assert -0.5 <= res.weighted.values[0] <= 0.5 and res.heatmap_batch().shape == (1, 48, 64)
    return f"sam_llm={res.weighted.values[0]:+.4f} sam_llm_mean={res.unweighted.values[0]:+.4f}"


SELFTESTS = [("sam_llm: segment (batched SAM masks)", _check_segment),
             ("sam_llm: label segments (CLIP zero-shot)", _check_label),
             ("sam_llm: LLM judge (batched 1/2/3 probabilities + cache)", _check_judge),
             ("sam_llm: reward + heatmap", _check_reward)]
