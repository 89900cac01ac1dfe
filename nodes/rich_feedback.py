"""Rich feedback (RAHF) nodes: load a model, predict heatmaps / scores / keywords, make a re-scoring scorer."""
from __future__ import annotations

import torch

from ._common import (CATEGORY, DEVICES, DTYPES, RICH_FEEDBACK_MODEL, SCORER, SCORES, device_arg, model_choices,
                      validated)

AREA = f"{CATEGORY}/rich feedback"
_SCORE_TIP = "{} score of each image, 0..1 (higher is better), predicted by RAHF."


class RewardLoopRichFeedbackLoader:
    DESCRIPTION = ("Loads a RAHF rich-feedback model (models/rich_feedback). The converted public RichHF checkpoint "
                   "(rahf-richhf-multihead) is CC BY-NC 4.0: non-commercial use only.")
    CATEGORY = AREA
    FUNCTION = "load"
    RETURN_TYPES = (RICH_FEEDBACK_MODEL,)
    RETURN_NAMES = ("rich_feedback",)
    OUTPUT_TOOLTIPS = ("The loaded RAHF model (cached: a second run loads nothing).",)

    @classmethod
    def INPUT_TYPES(cls):
        from ..weights.catalogue import CATALOGUE
        other = {s.name for s in CATALOGUE if s.folder == "rich_feedback" and s.kind != "rich_feedback"}
        choices = [c for c in model_choices("rich_feedback", ("rich_feedback",)) if c not in other]  # no tiny-vit/t5
        return {"required": {
            "model": (choices, {"default": choices[0], "tooltip": "RAHF model folder in models/rich_feedback "
                                "(convert the RichHF checkpoint with `python -m rewardloop convert-rich-feedback`, "
                                "or train one with `train-rich-feedback`)."}),
            "dtype": (DTYPES, {"default": "auto", "tooltip": "Weights precision; fp16 is run as bf16 (T5 overflows "
                               "in fp16)."}),
            "device": (DEVICES, {"default": "auto", "tooltip": "Where to run the model (auto = ComfyUI's device)."}),
        }}

    @validated
    def load(self, model, dtype="auto", device="auto"):
        from ..rewards.rich_feedback.model import load_rich_feedback
        return (load_rich_feedback(model, dtype=None if dtype == "auto" else dtype, device=device_arg(device)),)


class RewardLoopRichFeedback:
    DESCRIPTION = ("RAHF rich feedback for each image and its prompt: implausibility and misalignment heatmaps "
                   "(MASK, image size, 0..1), four scores (0..1, higher is better) and the prompt words the model "
                   "thinks the image misses.")
    CATEGORY = AREA
    FUNCTION = "run"
    RETURN_TYPES = ("MASK", "MASK", SCORES, SCORES, SCORES, SCORES, "STRING")
    RETURN_NAMES = ("implausibility", "misalignment", "plausibility", "alignment", "aesthetics", "overall",
                    "misaligned_keywords")
    OUTPUT_TOOLTIPS = (
        "Implausibility heatmap [B,H,W] at image size, 0..1: high where the image has artifacts / implausible parts.",
        "Misalignment heatmap [B,H,W] at image size, 0..1: high where the image disagrees with the prompt.",
        _SCORE_TIP.format("Plausibility (few artifacts)"), _SCORE_TIP.format("Text-image alignment"),
        _SCORE_TIP.format("Aesthetics"), _SCORE_TIP.format("Overall"),
        "Misaligned prompt words, one line per image (comma-separated; empty line = none found).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "rich_feedback": (RICH_FEEDBACK_MODEL, {"tooltip": "A model from Load Rich Feedback Model."}),
            "image": ("IMAGE", {"tooltip": "Images to judge (a batch is processed in model batches)."}),
            "prompt": ("STRING", {"multiline": True, "default": "", "tooltip":
                                  "The prompt the images were generated from: one for all, or one line per image."}),
        }, "optional": {
            "batch_size": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "Images per model forward."}),
            "keywords": ("BOOLEAN", {"default": True, "tooltip": "Run the T5 decoder to find misaligned words "
                                     "(off = faster, empty keywords)."}),
            "keep_loaded": ("BOOLEAN", {"default": True, "tooltip": "Keep the model on the GPU after the run."}),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    @validated
    def run(self, rich_feedback, image, prompt, batch_size=8, keywords=True, keep_loaded=True, unique_id=None):
        from ..rewards.images import broadcast_prompts, image_to_pil
        from ..rewards.rich_feedback.predict import predict, to_reward_scores
        pils = image_to_pil(image)
        prompts = broadcast_prompts(prompt, len(pils))
        res = predict(rich_feedback, pils, prompts, batch_size=batch_size, keywords=keywords,
                      keep_loaded=keep_loaded, node_id=unique_id)
        maps = [torch.stack(res.heatmaps[k]).float().cpu() for k in ("implausibility", "misalignment")]
        scores = to_reward_scores(res, prompts)
        text = "\n".join(", ".join(kw) for kw in res.keywords)
        return (maps[0], maps[1], *scores, text)


class RewardLoopRichFeedbackScorer:
    DESCRIPTION = ("Turns a RAHF model into a scorer for ranking, auto-fix re-scoring and training: it returns "
                   "plausibility, alignment, aesthetics, overall (0..1, higher is better; plausibility first).")
    CATEGORY = AREA
    FUNCTION = "make"
    RETURN_TYPES = (SCORER,)
    RETURN_NAMES = ("scorer",)
    OUTPUT_TOOLTIPS = ("A reward scorer: images + prompts → four RAHF scores (plausibility first).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "rich_feedback": (RICH_FEEDBACK_MODEL, {"tooltip": "A model from Load Rich Feedback Model."}),
        }, "optional": {
            "batch_size": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "Images per model forward."}),
            "keywords": ("BOOLEAN", {"default": False, "tooltip": "Also decode misaligned keywords into the score "
                                     "details (slower; not needed for re-scoring)."}),
        }}

    @validated
    def make(self, rich_feedback, batch_size=8, keywords=False):
        from ..rewards.rich_feedback.predict import RichFeedbackScorer
        return (RichFeedbackScorer(rich_feedback, batch_size=batch_size, keywords=keywords),)


NODE_CLASS_MAPPINGS = {
    "RewardLoopRichFeedbackLoader": RewardLoopRichFeedbackLoader,
    "RewardLoopRichFeedback": RewardLoopRichFeedback,
    "RewardLoopRichFeedbackScorer": RewardLoopRichFeedbackScorer,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RewardLoopRichFeedbackLoader": "Load Rich Feedback Model (RewardLoop)",
    "RewardLoopRichFeedback": "Rich Feedback (RewardLoop)",
    "RewardLoopRichFeedbackScorer": "Rich Feedback Scorer (RewardLoop)",
}
