"""CLIP Reward Scorer: CLIPScore, PickScore's formula or the LAION aesthetic head on a CLIP model already loaded in
the graph (Load CLIP), so one CLIP object serves SAM + LLM labels and these rewards. Every reward (these included)
is also available by name from Reward Scorer (nodes/ranking.py)."""
from __future__ import annotations

from ._common import CATEGORY, CLIP_MODEL, SCORER, model_choices

CLIP_REWARDS = ("clip_score", "pickscore", "aesthetic")


class RewardLoopCLIPRewardScorer:
    DESCRIPTION = ("A reward scorer on a loaded CLIP model: clip_score = 2.5·max(cos(image, 'A photo depicts' + "
                   "prompt), 0) (0..2.5); pickscore = exp(logit_scale)·cos (PickScore's formula: load PickScore_v1 as "
                   "the CLIP; -100..100); aesthetic = LAION aesthetic MLP on the CLIP's image embedding (about 1..10, "
                   "needs CLIP ViT-L/14; prompt unused). All higher is better.")
    CATEGORY = f"{CATEGORY}/ranking"
    FUNCTION = "build"
    RETURN_TYPES = (SCORER,)
    RETURN_NAMES = ("scorer",)
    OUTPUT_TOOLTIPS = ("A callable reward (images, prompts) → scores, for Score With Scorer, Auto-Fix or training.",)

    @classmethod
    def INPUT_TYPES(cls):
        heads = model_choices("rewards", ("aesthetic",))
        return {"required": {
            "clip": (CLIP_MODEL, {"tooltip": "A CLIP model from Load CLIP (clip-vit-large-patch14, PickScore_v1, …)."}),
            "reward": (list(CLIP_REWARDS), {"default": "clip_score", "tooltip": "Which score to compute with it."}),
            "aesthetic_head": (heads, {"default": heads[0] if heads else "",
                                       "tooltip": "The aesthetic MLP (models/rewards), used by reward=aesthetic."}),
            "batch_size": ("INT", {"default": 16, "min": 1, "max": 512, "tooltip": "Images per forward pass."}),
        }}

    def build(self, clip, reward, aesthetic_head, batch_size):
        if reward == "clip_score":
            from ..rewards.clip_score import CLIPScoreScorer
            return (CLIPScoreScorer(clip, batch_size=batch_size),)
        if reward == "pickscore":
            from ..rewards.pickscore import ClipLogitScorer
            return (ClipLogitScorer(clip, batch_size=batch_size),)
        if reward == "aesthetic":
            from ..rewards.aesthetic import AestheticScorer, load_aesthetic
            return (AestheticScorer(load_aesthetic(aesthetic_head, device=clip.device), clip, batch_size=batch_size),)
        raise ValueError(f"CLIP Reward Scorer: reward {reward!r} unknown: choose {', '.join(CLIP_REWARDS)}.")


NODE_CLASS_MAPPINGS = {"RewardLoopCLIPRewardScorer": RewardLoopCLIPRewardScorer}
NODE_DISPLAY_NAME_MAPPINGS = {"RewardLoopCLIPRewardScorer": "CLIP Reward Scorer (RewardLoop)"}
