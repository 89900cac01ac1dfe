"""Utility nodes that work with any reward: show scores as a table in the graph."""
from __future__ import annotations

from ..rewards.report import scores_table
from ._common import CATEGORY, SCORES


class RewardLoopShowScores:
    DESCRIPTION = "Shows one or more reward score sets as a table in the graph and returns it as text."
    CATEGORY = f"{CATEGORY}/utils"
    FUNCTION = "show"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("table",)
    OUTPUT_TOOLTIPS = ("Plain-text table: one row per image, one column per reward.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"scores": (SCORES, {"tooltip": "Scores from any RewardLoop reward node."})},
                "optional": {"scores_2": (SCORES, {"tooltip": "More scores for the same images."}),
                             "scores_3": (SCORES, {"tooltip": "More scores for the same images."}),
                             "scores_4": (SCORES, {"tooltip": "More scores for the same images."})}}

    def show(self, scores, scores_2=None, scores_3=None, scores_4=None):
        table = scores_table([s for s in (scores, scores_2, scores_3, scores_4) if s is not None])
        return {"ui": {"text": [table]}, "result": (table,)}


NODE_CLASS_MAPPINGS = {"RewardLoopShowScores": RewardLoopShowScores}
NODE_DISPLAY_NAME_MAPPINGS = {"RewardLoopShowScores": "Show Scores (RewardLoop)"}
