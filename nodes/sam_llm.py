"""SAM + LLM reward nodes: loaders (SAM, CLIP, LLM), Segment, Label Segments, the reward, and its scorer.

Thin adapters: IMAGE → PIL, library call (``rewards.segments`` / ``labels`` / ``sam_llm``), results → MASK /
custom sockets.
"""
from __future__ import annotations

import torch

from ..rewards.images import broadcast_prompts, image_to_pil
from ._common import (CAPTIONER, CATEGORY, CLIP_MODEL, DEVICES, DTYPES, LLM_MODEL, SAM_MODEL, SCORER, SCORES,
                      SEGMENTS, TEXT_ENCODER, device_arg, image_hw, model_choices, validated)

CAT = f"{CATEGORY}/sam_llm"
RANGE = "range -0.5..+0.5, higher is better"


def _seg_inputs() -> dict:
    return {
        "points_per_side": ("INT", {"default": 16, "min": 1, "max": 64, "tooltip":
                                    "Grid of N×N point prompts (SAM's default is 32; 16 is 4× faster)."}),
        "pred_iou_thresh": ("FLOAT", {"default": 0.88, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                      "Keep masks whose predicted IoU is above this (0..1, higher = fewer masks)."}),
        "stability_score_thresh": ("FLOAT", {"default": 0.95, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                             "Keep masks whose stability score is at least this (0..1)."}),
        "box_nms_thresh": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                     "Box IoU above which the weaker of two masks is removed (non-maximum "
                                     "suppression)."}),
        "min_area": ("INT", {"default": 0, "min": 0, "max": 1 << 24, "tooltip":
                             "Drop masks smaller than this many pixels."}),
        "max_segments": ("INT", {"default": 32, "min": 0, "max": 1024, "tooltip":
                                 "Keep at most this many masks per image (best predicted IoU first; 0 = all)."}),
    }


def _seg_kw(points_per_side, pred_iou_thresh, stability_score_thresh, box_nms_thresh, min_area, max_segments):
    from ..rewards.segments import segment_options
    return segment_options(points_per_side=points_per_side, pred_iou_thresh=pred_iou_thresh,
                           stability_score_thresh=stability_score_thresh, box_nms_thresh=box_nms_thresh,
                           min_area=min_area, max_segments=max_segments)


def _check_segments(segments, image) -> None:
    """Segments connected next to an IMAGE must come from that batch (same size, no image index beyond it)."""
    from ..errors import UserError
    h, w = image_hw(image)
    b = int(image.shape[0]) if image.ndim == 4 else 1
    if tuple(segments.image_size) != (h, w):
        sh, sw = segments.image_size
        raise UserError(f"The segments were made on {sw}×{sh} images but the image is {w}×{h}: connect the "
                        "segments of these images (Segment on the same IMAGE).")
    if len(segments) and int(segments.image_index.max()) >= b:
        raise UserError(f"The segments belong to {int(segments.image_index.max()) + 1} images but the batch has {b}: "
                        "connect the segments of this batch.")


def _check_labeller(clip, captioner, mode: str = "clip") -> None:
    from ..errors import UserError
    if (mode == "clip" and clip is None) or (clip is None and captioner is None):
        raise UserError("Labels need a CLIP model: connect Load CLIP for Labels to 'clip' (or a captioner to "
                        "'captioner' with mode caption).")
    if mode == "caption" and captioner is None:
        raise UserError("Labels in mode caption need a captioner: connect Captioner Loader to 'captioner'.")


# ---------------------------------------------------------------- loaders
class RewardLoopSAMLoader:
    DESCRIPTION = "Loads a segment-anything checkpoint (.pth/.safetensors, ViT-B/L/H or any size) from models/sams."
    CATEGORY = f"{CAT}/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (SAM_MODEL,)
    RETURN_NAMES = ("sam",)
    OUTPUT_TOOLTIPS = ("The SAM model handle for the Segment and SAM+LLM nodes.",)

    @classmethod
    def INPUT_TYPES(cls):
        choices = model_choices("sams", ("sam",))
        return {"required": {
            "model": (choices, {"default": choices[0], "tooltip": "Catalogue key (sam-vit-b/l/h) or a file in "
                                                                  "models/sams. Fetch: python -m rewardloop download sam-vit-b"}),
            "dtype": (DTYPES, {"default": "fp32", "tooltip": "Weights precision (fp32 is safest for SAM)."}),
            "device": (DEVICES, {"default": "auto", "tooltip": "Where to run (auto = ComfyUI's choice)."})}}

    @validated
    def load(self, model, dtype="fp32", device="auto"):
        from ..weights.loaders import load_sam
        return (load_sam(model, dtype=dtype, device=device_arg(device)),)


class RewardLoopCLIPLoader:
    DESCRIPTION = "Loads a full CLIP model (image + text towers, HF folder in models/clip) for zero-shot segment labels."
    CATEGORY = f"{CAT}/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (CLIP_MODEL,)
    RETURN_NAMES = ("clip",)
    OUTPUT_TOOLTIPS = ("The CLIP model handle for Label Segments and SAM+LLM nodes.",)

    @classmethod
    def INPUT_TYPES(cls):
        choices = model_choices("clip", ("clip",))
        return {"required": {
            "model": (choices, {"default": choices[0], "tooltip": "Catalogue key or an HF CLIP folder in models/clip."}),
            "dtype": (DTYPES, {"default": "auto", "tooltip": "Weights precision (auto: fp16/bf16 on GPU, fp32 on CPU)."}),
            "device": (DEVICES, {"default": "auto", "tooltip": "Where to run (auto = ComfyUI's choice)."})}}

    @validated
    def load(self, model, dtype="auto", device="auto"):
        from ..weights.loaders import load_clip
        return (load_clip(model, dtype=dtype, device=device_arg(device)),)


class RewardLoopLLMLoader:
    DESCRIPTION = ("Loads a causal chat LLM (HF folder or .gguf in models/LLM; Vicuna-7B v1.5 is the paper's judge, "
                   "SmolLM2-135M-Instruct the light one) for the SAM+LLM reward.")
    CATEGORY = f"{CAT}/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (LLM_MODEL,)
    RETURN_NAMES = ("llm",)
    OUTPUT_TOOLTIPS = ("The LLM handle for the SAM+LLM reward and scorer.",)

    @classmethod
    def INPUT_TYPES(cls):
        choices = model_choices("LLM", ("llm",))
        default = "SmolLM2-135M-Instruct" if "SmolLM2-135M-Instruct" in choices else choices[0]
        return {"required": {
            "model": (choices, {"default": default, "tooltip": "Catalogue key, an HF folder or a .gguf in models/LLM "
                                                               "(GGUF is dequantised once and cached)."}),
            "dtype": (DTYPES, {"default": "auto", "tooltip": "Weights precision (auto: fp16/bf16 on GPU, fp32 on CPU)."}),
            "device": (DEVICES, {"default": "auto", "tooltip": "Where to run (auto = ComfyUI's choice)."})}}

    @validated
    def load(self, model, dtype="auto", device="auto"):
        from ..weights.loaders import load_llm
        return (load_llm(model, dtype=dtype, device=device_arg(device)),)


# ---------------------------------------------------------------- segment / label
class RewardLoopSegment:
    DESCRIPTION = ("Automatic SAM masks: a grid of point prompts (batched decoder), IoU / stability thresholds, box "
                   "NMS, minimum area, maximum count. One mask per segment at image size.")
    CATEGORY = CAT
    FUNCTION = "segment"
    RETURN_TYPES = ("MASK", SEGMENTS)
    RETURN_NAMES = ("masks", "segments")
    OUTPUT_TOOLTIPS = ("One mask per segment [N,H,W] (all images' segments in order; one empty mask when nothing "
                       "was found).", "Segments (masks, boxes, areas, SAM scores, image index) for Label Segments / "
                                      "SAM+LLM Reward.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sam": (SAM_MODEL, {"tooltip": "From the RewardLoop SAM loader."}),
                             "image": ("IMAGE", {"tooltip": "Images to segment (a batch is fine)."}),
                             **_seg_inputs()}}

    @validated
    def segment(self, sam, image, points_per_side=16, pred_iou_thresh=0.88, stability_score_thresh=0.95,
                box_nms_thresh=0.7, min_area=0, max_segments=32):
        from ..rewards.segments import concat_segments, segment_images
        opt = _seg_kw(points_per_side, pred_iou_thresh, stability_score_thresh, box_nms_thresh, min_area, max_segments)
        segs = concat_segments(segment_images(sam, image_to_pil(image), opt))
        h, w = segs.image_size
        masks = segs.masks.float() if len(segs) else torch.zeros(1, h, w)
        return (masks, segs)


class RewardLoopLabelSegments:
    DESCRIPTION = ("Open-vocabulary label per segment: CLIP zero-shot on the masked crop over the prompt's nouns plus "
                   "a general COCO/ADE vocabulary, or the caption of the crop. Confidence per label.")
    CATEGORY = CAT
    FUNCTION = "label"
    RETURN_TYPES = (SEGMENTS, "STRING")
    RETURN_NAMES = ("segments", "labels")
    OUTPUT_TOOLTIPS = ("The same segments with labels and label confidences (CLIP probability 0..1, or the caption's "
                       "mean token probability 0..1).", "One line per segment: image, label, confidence.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "segments": (SEGMENTS, {"tooltip": "From the Segment node."}),
            "image": ("IMAGE", {"tooltip": "The images that were segmented."}),
            "prompt": ("STRING", {"multiline": True, "default": "", "tooltip":
                                  "The generation prompt (its nouns join the vocabulary); one line per image or one "
                                  "for all; may be empty in caption mode."}),
            "mode": (["clip", "caption"], {"default": "clip", "tooltip":
                                           "clip: zero-shot over the vocabulary; caption: caption each crop."})},
            "optional": {
                "clip": (CLIP_MODEL, {"tooltip": "CLIP model (needed for mode clip)."}),
                "captioner": (CAPTIONER, {"tooltip": "Captioner (needed for mode caption)."}),
                "extra_vocabulary": ("STRING", {"default": "", "tooltip": "Extra label words, comma-separated."})}}

    @validated
    def label(self, segments, image, prompt="", mode="clip", clip=None, captioner=None, extra_vocabulary=""):
        from ..rewards.labels import label_segments
        from ..rewards.segments import concat_segments, split_segments
        _check_segments(segments, image)
        _check_labeller(clip, captioner, mode)
        pils = image_to_pil(image)
        parts = split_segments(segments, len(pils))
        prompts = broadcast_prompts(prompt, len(pils)) if prompt.strip() else [None] * len(pils)
        extra = [w for w in extra_vocabulary.split(",") if w.strip()]
        label_segments(pils, parts, prompts, clip=clip, captioner=captioner, mode=mode, extra_vocabulary=extra)
        out = concat_segments(parts)
        lines = [f"{int(i)}\t{lab}\t{conf:.3f}" for i, lab, conf in zip(out.image_index, out.labels, out.label_scores)]
        return (out, "\n".join(lines))


# ---------------------------------------------------------------- reward / scorer
def _reward_inputs() -> dict:
    return {
        "judge_mode": (["logprob", "paper", "semantic"], {"default": "logprob", "tooltip":
                                              "logprob: deterministic expected score from P(1/2/3) in one batched "
                                              "forward; paper: greedy answer parsed as tag:score; semantic: "
                                              "prompt–label similarity of a text encoder (connect text_encoder; "
                                              "no LLM needed; light and fast)."}),
        "on_empty": (["whole_image", "neutral"], {"default": "whole_image", "tooltip":
                                                  "When SAM finds no segment: judge the whole image as one segment, "
                                                  "or give the neutral reward 0 and an empty heatmap."}),
    }


def _judge_models() -> dict:
    return {"llm": (LLM_MODEL, {"tooltip": "From the RewardLoop LLM loader (judge modes logprob and paper)."}),
            "text_encoder": (TEXT_ENCODER, {"tooltip": "From the Text Encoder Loader (judge mode semantic: "
                                                        "all-MiniLM-L6-v2 or a CLIP model)."})}


class RewardLoopSamLlmReward:
    DESCRIPTION = ("FineRewards' SAM + LLM reward: segment, label each part, ask the LLM how likely each label is in "
                   "the prompted scene (1 unlikely, 2 may appear, 3 certain); r = (mean score − 2)/2 in -0.5..+0.5, "
                   "higher is better. Also a per-segment table and an unlikely-content heatmap.")
    CATEGORY = CAT
    FUNCTION = "score"
    RETURN_TYPES = (SCORES, SCORES, "STRING", "MASK", "STRING")
    RETURN_NAMES = ("scores", "scores_unweighted", "table", "unlikely_heatmap", "json")
    OUTPUT_TOOLTIPS = (f"sam_llm: area-weighted mean score → reward ({RANGE}).",
                       f"sam_llm_mean: plain mean over segments, the paper's formula ({RANGE}).",
                       "Per-segment table: label, area, score, P(1/2/3).",
                       "Unlikely-content heatmap [B,H,W] 0..1: each segment painted (3 − score)/2 (1 = unlikely); "
                       "smaller segments drawn over larger ones.",
                       "The same table as JSON (one object per image).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sam": (SAM_MODEL, {"tooltip": "From the RewardLoop SAM loader."}),
            "image": ("IMAGE", {"tooltip": "Generated images to score."}),
            "prompt": ("STRING", {"multiline": True, "default": "", "tooltip":
                                  "The prompt the images were generated from (one for all, or one line per image)."}),
            **_reward_inputs(), **_seg_inputs()},
            "optional": {
                "clip": (CLIP_MODEL, {"tooltip": "CLIP model for labels (needed unless a captioner is connected)."}),
                "captioner": (CAPTIONER, {"tooltip": "Captioner: label segments by captioning their crops instead."}),
                "segments": (SEGMENTS, {"tooltip": "Segments from Segment / Label Segments (skips segmenting and, "
                                                   "when labelled, labelling)."}),
                **_judge_models()}}

    @validated
    def score(self, sam, llm=None, image=None, prompt="", judge_mode="logprob", on_empty="whole_image",
              points_per_side=16, pred_iou_thresh=0.88, stability_score_thresh=0.95, box_nms_thresh=0.7, min_area=0,
              max_segments=32, clip=None, captioner=None, segments=None, text_encoder=None):
        from ..errors import UserError
        if image is None:
            raise UserError("No images: connect an IMAGE to the SAM+LLM Reward node.")
        from ..rewards.sam_llm import SamLlmReward
        from ..rewards.segments import split_segments
        image_hw(image)
        if segments is not None:
            _check_segments(segments, image)
        if segments is None or not segments.labels:
            _check_labeller(clip, captioner, "clip" if clip is not None else "caption")
        pils = image_to_pil(image)
        opt = _seg_kw(points_per_side, pred_iou_thresh, stability_score_thresh, box_nms_thresh, min_area, max_segments)
        reward = SamLlmReward(sam, llm, clip, captioner, label_mode="clip" if clip is not None else "caption",
                              judge_mode=judge_mode, segment=opt, on_empty=on_empty, text_encoder=text_encoder)
        parts = split_segments(segments, len(pils)) if segments is not None else None
        r = reward.score(pils, broadcast_prompts(prompt, len(pils)), parts)
        return (r.weighted, r.unweighted, r.table, r.heatmap_batch(), r.json())


class RewardLoopSamLlmScorer:
    DESCRIPTION = ("Packs the SAM + LLM reward as a scorer (reward names sam_llm and sam_llm_mean, -0.5..+0.5, "
                   "higher is better) for ranking, auto-fix and reward-ranked training nodes.")
    CATEGORY = CAT
    FUNCTION = "make"
    RETURN_TYPES = (SCORER,)
    RETURN_NAMES = ("scorer",)
    OUTPUT_TOOLTIPS = ("A scorer: images + prompts → [sam_llm, sam_llm_mean].",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sam": (SAM_MODEL, {"tooltip": "From the RewardLoop SAM loader."}),
            **_reward_inputs(), **_seg_inputs()},
            "optional": {
                "clip": (CLIP_MODEL, {"tooltip": "CLIP model for labels (needed unless a captioner is connected)."}),
                "captioner": (CAPTIONER, {"tooltip": "Captioner: label segments by captioning their crops instead."}),
                **_judge_models()}}

    @validated
    def make(self, sam, llm=None, judge_mode="logprob", on_empty="whole_image", points_per_side=16,
             pred_iou_thresh=0.88, stability_score_thresh=0.95, box_nms_thresh=0.7, min_area=0, max_segments=32,
             clip=None, captioner=None, text_encoder=None):
        from ..rewards.sam_llm import SamLlmReward
        _check_labeller(clip, captioner, "clip" if clip is not None else "caption")
        opt = _seg_kw(points_per_side, pred_iou_thresh, stability_score_thresh, box_nms_thresh, min_area, max_segments)
        return (SamLlmReward(sam, llm, clip, captioner, label_mode="clip" if clip is not None else "caption",
                             judge_mode=judge_mode, segment=opt, on_empty=on_empty, text_encoder=text_encoder),)


NODE_CLASS_MAPPINGS = {
    "RewardLoopSAMLoader": RewardLoopSAMLoader,
    "RewardLoopCLIPLoader": RewardLoopCLIPLoader,
    "RewardLoopLLMLoader": RewardLoopLLMLoader,
    "RewardLoopSegment": RewardLoopSegment,
    "RewardLoopLabelSegments": RewardLoopLabelSegments,
    "RewardLoopSamLlmReward": RewardLoopSamLlmReward,
    "RewardLoopSamLlmScorer": RewardLoopSamLlmScorer,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RewardLoopSAMLoader": "Load SAM (RewardLoop)",
    "RewardLoopCLIPLoader": "Load CLIP for Labels (RewardLoop)",
    "RewardLoopLLMLoader": "Load LLM Judge (RewardLoop)",
    "RewardLoopSegment": "Segment Anything (RewardLoop)",
    "RewardLoopLabelSegments": "Label Segments (RewardLoop)",
    "RewardLoopSamLlmReward": "SAM+LLM Reward (RewardLoop)",
    "RewardLoopSamLlmScorer": "SAM+LLM Scorer (RewardLoop)",
}
