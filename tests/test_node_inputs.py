"""Every node checks its inputs before any work and says what to change in the graph: NaN/inf images and masks,
empty batches, prompt lines that do not match the batch, mask/image count and shape mismatches, widget values
outside their declared range, and model names in the Reward Scorer's free-text field that point outside the model
folders (workflows are shared between people)."""
from __future__ import annotations

import math

import pytest
import torch

import rewardloop
from rewardloop.errors import UserError
from rewardloop.rewards.scoring import FunctionScorer
from rewardloop.rewards.types import RewardScores

NODES = rewardloop.NODE_CLASS_MAPPINGS


class Untouchable:
    """Stands in for a model, sampler or socket value: any use means the node started work before checking."""

    def __getattr__(self, name):
        raise AssertionError(f"the node used its inputs ({name}) before checking them")

    def __call__(self, *a, **k):
        raise AssertionError("the node ran a model before checking its inputs")


def _kwargs(cls, images: torch.Tensor, mask_hw=None) -> dict:
    """Arguments for a node: the given IMAGE, valid masks, widget defaults, untouchable models."""
    b, h, w = images.shape[0], images.shape[1], images.shape[2]
    kw = {}
    for name, entry in cls.INPUT_TYPES().get("required", {}).items():
        t, opts = entry[0], (entry[1] if len(entry) > 1 else {})
        if t == "IMAGE":
            kw[name] = images
        elif t == "MASK":
            kw[name] = torch.zeros(max(b, 1), *(mask_hw or (max(h, 1), max(w, 1))))
        elif isinstance(t, list):
            kw[name] = opts.get("default", t[0] if t else "")
        elif t in ("INT", "FLOAT", "BOOLEAN"):
            kw[name] = opts.get("default", 1)
        elif t == "STRING":
            kw[name] = "a cat"
        else:
            kw[name] = Untouchable()
    return kw


def _call(cls, kw):
    node = cls()
    return getattr(node, cls.FUNCTION)(**kw)


IMAGE_NODES = sorted(k for k, c in NODES.items() if any(e[0] == "IMAGE" for e in c.INPUT_TYPES()["required"].values()
                                                        if isinstance(e, (list, tuple))))
MASK_NODES = ["RewardLoopHeatmapToMask", "RewardLoopHeatmapOverlay", "RewardLoopAutoFix"]


def _with_required_extras(node_id, kw, b):
    if node_id == "RewardLoopAssembleRank":
        kw["scores_1"] = RewardScores("r", [0.5] * b)
    return kw


def test_the_image_nodes_are_all_covered():
    assert {"RewardLoopCaption", "RewardLoopCaptionReward", "RewardLoopSegment", "RewardLoopLabelSegments",
            "RewardLoopSamLlmReward", "RewardLoopAssembleRank", "RewardLoopScoreWithScorer",
            "RewardLoopHeatmapOverlay", "RewardLoopAutoFix", "RewardLoopRichFeedback"} <= set(IMAGE_NODES)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("node_id", IMAGE_NODES + ["RewardLoopHeatmapToMask"])
def test_every_image_node_refuses_non_finite_images(node_id, bad):
    cls = NODES[node_id]
    img = torch.rand(2, 16, 16, 3)
    img[1, 3, 4, 0] = bad
    kw = _with_required_extras(node_id, _kwargs(cls, img), 2)
    if node_id == "RewardLoopHeatmapToMask":
        kw["image"] = img
    with pytest.raises(UserError, match=r"NaN or infinite values \(batch item 1\)"):
        _call(cls, kw)


@pytest.mark.parametrize("node_id", IMAGE_NODES)
def test_every_image_node_says_no_images_for_an_empty_batch(node_id):
    cls = NODES[node_id]
    kw = _with_required_extras(node_id, _kwargs(cls, torch.zeros(0, 16, 16, 3)), 0)
    with pytest.raises(ValueError, match=r"(?i)no (reference )?images") as e:
        _call(cls, kw)
    assert "prompt is empty" not in str(e.value)


@pytest.mark.parametrize("node_id", MASK_NODES)
def test_mask_nodes_refuse_non_finite_masks(node_id):
    cls = NODES[node_id]
    img = torch.rand(1, 16, 16, 3)
    kw = _kwargs(cls, img)
    name = "heatmap" if "heatmap" in kw else "mask"
    kw[name] = torch.zeros(1, 16, 16)
    kw[name][0, 2, 2] = math.nan
    with pytest.raises(UserError, match="MASK contains NaN"):
        _call(cls, kw)


def test_auto_fix_refuses_mask_count_and_shape_mismatches():
    cls = NODES["RewardLoopAutoFix"]
    kw = _kwargs(cls, torch.rand(3, 32, 32, 3))
    kw["mask"] = torch.zeros(2, 32, 32)
    with pytest.raises(UserError, match="2 masks for 3 images"):
        _call(cls, kw)
    kw["mask"] = torch.zeros(3, 16, 16)
    with pytest.raises(UserError, match="mask is 16×16 but the image is 32×32"):
        _call(cls, kw)
    kw["mask"] = torch.zeros(3, 16, 32)
    with pytest.raises(UserError, match="mask is 32×16 but the image is 32×32"):
        _call(cls, kw)


def test_auto_fix_checks_prompt_lines_and_score_name_before_sampling():
    cls = NODES["RewardLoopAutoFix"]
    kw = _kwargs(cls, torch.rand(2, 32, 32, 3))
    kw["prompt"] = "one\ntwo\nthree"
    with pytest.raises(UserError, match="3 lines for 2 images"):
        _call(cls, kw)
    kw["prompt"] = "a cat"
    kw["scorer"] = FunctionScorer(["bright"], lambda ims, ps: [])
    kw["score_name"] = "plausibility"
    with pytest.raises(UserError, match="not a score of the connected scorer: use one of bright"):
        _call(cls, kw)


def test_heatmap_nodes_refuse_heatmaps_of_other_images():
    to_mask, over = NODES["RewardLoopHeatmapToMask"], NODES["RewardLoopHeatmapOverlay"]
    kw = _kwargs(to_mask, torch.rand(1, 32, 64, 3))
    kw["image"] = torch.rand(1, 32, 64, 3)
    kw["heatmap"] = torch.zeros(1, 64, 64)  # square map for a 2:1 image
    with pytest.raises(UserError, match="heatmap is 64×64 but the image is 64×32"):
        _call(to_mask, kw)
    kw["heatmap"] = torch.zeros(1, 16, 32)  # lower resolution, same shape: resized
    mask, _, _ = _call(to_mask, kw)
    assert tuple(mask.shape) == (1, 32, 64)
    kw = _kwargs(over, torch.rand(3, 16, 16, 3))
    kw["heatmap"] = torch.zeros(2, 16, 16)
    with pytest.raises(UserError, match="2 heatmaps for 3 images"):
        _call(over, kw)


def test_score_with_scorer_refuses_prompt_lines_that_do_not_match_the_batch():
    seen = []

    def fn(images, prompts):
        seen.append(list(prompts))
        return [RewardScores("n", [float(i) for i in range(len(images))])]

    node = NODES["RewardLoopScoreWithScorer"]()
    imgs = torch.rand(2, 8, 8, 3)
    with pytest.raises(UserError, match="3 lines for 2 images"):
        node.score(FunctionScorer(["n"], fn), imgs, "a red car\na blue car\na cat")
    assert not seen, "the scorer ran before the prompt was checked"
    node.score(FunctionScorer(["n"], fn), imgs, "a red car\na blue car")
    node.score(FunctionScorer(["n"], fn), imgs, "a red car")
    assert seen == [["a red car", "a blue car"], ["a red car", "a red car"]]


@pytest.mark.parametrize("node_id,widget,value,expect", [
    ("RewardLoopAssembleRank", "top_k", 0, "top_k = 0 is out of range: set it to 1..4096"),
    ("RewardLoopAssembleRank", "group_size", -1, "group_size = -1 is out of range"),
    ("RewardLoopAssembleRank", "top_k", 1.5, "top_k must be a whole number"),
    ("RewardLoopHeatmapToMask", "dilate", 5000.0, "dilate = 5000.0 is out of range: set it to 0.0..50.0"),
    ("RewardLoopHeatmapToMask", "relative", math.nan, "relative must be a finite number"),
    ("RewardLoopSegment", "points_per_side", 0, "points_per_side = 0 is out of range"),
    ("RewardLoopRichFeedback", "batch_size", 0, "batch_size = 0 is out of range"),
    ("RewardLoopCaption", "max_new_tokens", -3, "max_new_tokens = -3 is out of range"),
])
def test_out_of_range_widgets_are_refused_before_work(node_id, widget, value, expect):
    cls = NODES[node_id]
    kw = _with_required_extras(node_id, _kwargs(cls, torch.rand(2, 16, 16, 3)), 2)
    kw[widget] = value
    with pytest.raises(UserError, match=expect.replace("(", r"\(").replace(".", r"\.")):
        _call(cls, kw)


def test_assemble_rank_group_size_must_divide_the_batch():
    cls = NODES["RewardLoopAssembleRank"]
    kw = _with_required_extras("RewardLoopAssembleRank", _kwargs(cls, torch.rand(3, 8, 8, 3)), 3)
    kw["group_size"] = 2
    with pytest.raises(UserError, match="3 images do not split into groups of 2"):
        _call(cls, kw)
    kw["group_size"] = 0
    kw["scores_2"] = RewardScores("s", [1.0, 2.0])
    with pytest.raises(UserError, match="3 images but reward 's' scored 2"):
        _call(cls, kw)


def test_a_nan_image_cannot_win_a_ranking():
    """Before: a NaN image scored like a normal one and could come out first. Now the batch is refused."""
    imgs = torch.rand(3, 8, 8, 3)
    imgs[2] = math.nan
    bright = FunctionScorer(["bright"], lambda ims, ps: [RewardScores("bright", [float(sum(im.convert("L").getdata()))
                                                                                 for im in ims])])
    with pytest.raises(UserError, match="batch item 2"):
        NODES["RewardLoopScoreWithScorer"]().score(bright, imgs, "a cat")
    with pytest.raises(UserError, match="batch item 2"):
        NODES["RewardLoopAssembleRank"]().rank(imgs, "rank_sum", 1, 0, scores_1=RewardScores("r", [0.0, 0.0, 9.0]))


def test_segment_nodes_refuse_segments_of_other_images_and_missing_labellers():
    from rewardloop.rewards.segments import whole_image_segment
    seg = whole_image_segment((48, 64))
    label = NODES["RewardLoopLabelSegments"]()
    with pytest.raises(UserError, match="made on 64×48 images but the image is 32×32"):
        label.label(seg, torch.rand(1, 32, 32, 3), "a cat", "clip", clip=Untouchable())
    with pytest.raises(UserError, match="need a CLIP model: connect Load CLIP for Labels to 'clip'"):
        label.label(seg, torch.rand(1, 48, 64, 3), "a cat", "clip")
    two = whole_image_segment((48, 64), index=1)
    with pytest.raises(UserError, match="belong to 2 images but the batch has 1"):
        label.label(two, torch.rand(1, 48, 64, 3), "a cat", "clip", clip=Untouchable())
    reward = NODES["RewardLoopSamLlmReward"]()
    with pytest.raises(UserError, match="need a CLIP model"):
        reward.score(Untouchable(), Untouchable(), torch.rand(1, 48, 64, 3), "a cat")
    with pytest.raises(UserError, match="need a CLIP model"):
        NODES["RewardLoopSamLlmScorer"]().make(Untouchable(), Untouchable())


# ---------------------------------------------------------------- Reward Scorer: bounded trust
@pytest.mark.parametrize("key,value,expect", [
    ("sam", "/etc/passwd", "path outside models/sams"),
    ("llm", "../../LLM/tiny-llm", "path outside models/LLM"),
    ("sam_llm.clip", "~/secret-model", "path outside models/clip"),
    ("sam_llm.captioner", "C:/Users/x/model", "path outside models/blip"),
    ("nosuch", "tiny-llm", "no chosen reward takes 'nosuch'"),
    ("sam", "no-such-sam.pth", "not found in models/sams"),
])
def test_reward_scorer_models_field_names_only_model_folder_entries(key, value, expect, tiny):
    for k in ("tiny-sam", "tiny-clip", "tiny-llm"):
        tiny(k)
    models = {"sam": "tiny-sam", "clip": "tiny-clip", "llm": "tiny-llm", key: value}
    node = NODES["RewardLoopScorerFromRegistry"]()
    with pytest.raises((UserError, FileNotFoundError), match=expect):
        node.load("sam_llm", "\n".join(f"{k}={v}" for k, v in models.items()), "cpu", "fp32")


def test_reward_scorer_resolves_folder_names_to_their_files(tiny, models_root):
    from rewardloop.nodes.ranking import _bounded_models
    for key in ("tiny-sam", "tiny-clip", "tiny-llm"):
        tiny(key)
    got = _bounded_models("sam_llm", {"sam": "tiny_sam.pth", "clip": "tiny-clip", "llm": "tiny-llm"})
    assert got["sam"] == str(models_root / "sams" / "tiny_sam.pth")
    assert got["clip"] == "tiny-clip" and got["llm"] == "tiny-llm"  # catalogue keys pass as they are


def test_the_cli_trusts_the_users_own_paths(tiny, models_root):
    """On the command line the user's own paths are fine (only shared workflows are bounded)."""
    from rewardloop.rewards.scoring import check_scorers
    tiny("tiny-rahf")
    plan = check_scorers(["rich"], {"rich_feedback": str(models_root / "rich_feedback" / "tiny-rahf")})
    assert plan["rich"]["rich_feedback"].endswith("tiny-rahf")
    with pytest.raises(ValueError, match="path outside"):
        check_scorers(["rich"], {"rich_feedback": str(models_root / "rich_feedback" / "tiny-rahf")}, trusted=False)
