"""Assemble Rank node (best-of-N), plus a scorer loader and a 'score with scorer' node so a best-of-N graph
can be built from the reward registry alone."""
from __future__ import annotations

import uuid

import torch

from ..rewards.images import broadcast_prompts, image_to_pil
from ..rewards.ranking import MODES, assemble_rank
from ..rewards.report import scores_table
from ._common import CATEGORY, DEVICES, DTYPES, SCORER, SCORES, device_arg, image_hw, validated

N_SOCKETS = 6


def save_previews(images, prefix: str = "rewardloop_rank") -> list[dict]:
    """Save IMAGE previews to the temp folder the way core PreviewImage does; return the UI entries."""
    from ..bridge import temp_dir
    folder = temp_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:10]
    out = []
    for i, pil in enumerate(image_to_pil(images)):
        name = f"{prefix}_{tag}_{i:04d}.png"
        pil.save(folder / name, compress_level=1)
        out.append({"filename": name, "subfolder": "", "type": "temp"})
    return out


class RewardLoopAssembleRank:
    DESCRIPTION = ("Best-of-N: ranks an IMAGE batch by several rewards at once (FineRewards' assemble ranking). "
                   "rank_sum (paper, Borda): per-reward rank 0 = best, weighted sum, lowest total wins, ties broken by "
                   "the sum of z-scored rewards then by image index. zscore / raw: weighted sum of z-scored / raw "
                   "values, highest wins, ties by index. Each reward's direction (higher or lower is better) is "
                   "respected. With a group size, each group of N images (one prompt) is ranked on its own. "
                   "Shows the ranked images and the table in the graph.")
    CATEGORY = f"{CATEGORY}/ranking"
    FUNCTION = "rank"
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE", "IMAGE", "INT", SCORES, "STRING")
    RETURN_NAMES = ("images_ranked", "top_k", "indices", "assembled_scores", "table")
    OUTPUT_IS_LIST = (False, False, True, False, False)
    OUTPUT_TOOLTIPS = (
        "All images sorted best-first (group by group when a group size is set).",
        "The best top_k images of each group.",
        "Input indices of the ranked images, best-first (a list of INT).",
        "The assembled totals as a reward, in ranked order (rank_sum: lower is better, 0 = best possible; zscore/raw: "
        "higher is better); per-reward ranks in its details.",
        "Table of every reward and rank per image, best-first.")

    @classmethod
    def INPUT_TYPES(cls):
        opt = {}
        for i in range(1, N_SOCKETS + 1):
            opt[f"scores_{i}"] = (SCORES, {"tooltip": f"Reward #{i} for the same images (any reward node). "
                                                      "Unconnected sockets are ignored."})
        for i in range(1, N_SOCKETS + 1):
            opt[f"weight_{i}"] = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.05,
                                            "tooltip": f"Weight of reward #{i} (0 = show but do not rank by it)."})
        return {"required": {
            "images": ("IMAGE", {"tooltip": "The candidates: one KSampler batch of N, or several joined with Image "
                                            "Batch, in the order the rewards scored them."}),
            "mode": (list(MODES), {"default": "rank_sum",
                                   "tooltip": "rank_sum = paper's Borda count; zscore = weighted z-scores; raw = "
                                              "weighted raw values (only when the scales match)."}),
            "top_k": ("INT", {"default": 1, "min": 1, "max": 4096,
                              "tooltip": "How many of the best images per group go to the top_k output."}),
            "group_size": ("INT", {"default": 0, "min": 0, "max": 4096,
                                   "tooltip": "Images per prompt when several prompts share the batch (each group "
                                              "ranked on its own); 0 = the whole batch is one group."}),
        }, "optional": opt}

    @validated
    def rank(self, images, mode, top_k, group_size, **kw):
        scores, weights = [], []
        for i in range(1, N_SOCKETS + 1):
            s = kw.get(f"scores_{i}")
            if s is not None:
                scores.append(s)
                weights.append(float(kw.get(f"weight_{i}", 1.0)))
        from ..errors import UserError
        if not scores:
            raise UserError("Assemble Rank: connect at least one REWARDLOOP_SCORES input (a reward node's scores).")
        image_hw(images)  # a batch with images, all finite
        n = images.shape[0]
        for s in scores:
            if len(s) != n:
                raise UserError(f"Assemble Rank: {n} images but reward {s.name!r} scored {len(s)}: score the same "
                                "batch you rank.")
        if group_size and n % group_size:
            raise UserError(f"Assemble Rank: {n} images do not split into groups of {group_size}: set group_size to "
                            f"a divisor of {n} (images per prompt), or 0 for one group.")
        r = assemble_rank(scores, weights, mode, group_size)
        top = r.top_k(top_k)
        table = r.table()
        ranked = images[r.order]
        ui = {"images": save_previews(ranked), "text": [table]}
        return {"ui": ui, "result": (ranked, images[top], list(r.order), r.as_scores(r.order), table)}


def _models_from_text(text: str) -> dict[str, str]:
    from ..rewards.scoring import parse_model_options
    items = [t.strip() for line in (text or "").splitlines() for t in line.split(",") if t.strip()]
    return parse_model_options(items)


def _bounded_models(reward: str, models: dict[str, str]) -> dict[str, str]:
    """Model names typed into a (possibly shared) workflow may only name catalogue keys or entries inside ComfyUI's
    model folders, never a host path; every one is checked before anything loads. Names found in a folder are
    passed on as that resolved path, so the loader cannot pick another file of the same name elsewhere."""
    from ..rewards.scoring import check_scorers, models_for
    from ..weights.catalogue import by_key
    plan = check_scorers([reward], models, trusted=False)[reward]
    own = models_for(reward, models)
    keys = by_key()
    out = dict(models)
    for key, value in models.items():
        role = key.split(".", 1)[1] if "." in key else key
        if role in plan and own.get(role) == value and value not in keys:
            out[key] = plan[role]
    return out


class RewardLoopScorerFromRegistry:
    DESCRIPTION = ("Builds a reward scorer by name (caption, sam_llm, rich) with chosen models, for Score With "
                   "Scorer, Auto-Fix re-scoring or training. Models load on first use and stay cached.")
    CATEGORY = f"{CATEGORY}/ranking"
    FUNCTION = "load"
    RETURN_TYPES = (SCORER,)
    RETURN_NAMES = ("scorer",)
    OUTPUT_TOOLTIPS = ("A callable reward (images, prompts) → scores.",)

    @classmethod
    def INPUT_TYPES(cls):
        from ..rewards.scoring import available
        names = available()
        return {"required": {
            "reward": (names, {"default": "rich" if "rich" in names else names[0],
                               "tooltip": "caption: caption-vs-prompt similarity; sam_llm: segment + LLM likelihood; "
                                          "rich: RAHF heatmaps and 4 scores."}),
            "models": ("STRING", {"default": "", "multiline": True,
                                  "tooltip": "Optional ROLE=MODEL, one per line (e.g. captioner=blip-large, "
                                             "text_encoder=all-MiniLM-L6-v2, sam=sam-vit-b, llm=…, rich_feedback=…); "
                                             "empty roles use the reward's light defaults. Models are catalogue "
                                             "keys or names inside ComfyUI's model folders; paths outside them are "
                                             "refused (workflows are shared)."}),
            "device": (DEVICES, {"default": "auto", "tooltip": "Where the reward models run."}),
            "dtype": (DTYPES, {"default": "auto", "tooltip": "Precision of the reward models."}),
        }}

    @validated
    def load(self, reward, models, device, dtype):
        from ..rewards.scoring import make_scorer
        checked = _bounded_models(reward, _models_from_text(models))
        return (make_scorer(reward, models=checked, device=device_arg(device),
                            dtype=None if dtype == "auto" else dtype),)


class RewardLoopScoreWithScorer:
    DESCRIPTION = "Scores an IMAGE batch with a scorer (one call for the whole batch); up to four of its scores out."
    CATEGORY = f"{CATEGORY}/ranking"
    FUNCTION = "score"
    RETURN_TYPES = (SCORES, SCORES, SCORES, SCORES, "STRING", "MASK")
    RETURN_NAMES = ("scores_1", "scores_2", "scores_3", "scores_4", "table", "heatmap")
    OUTPUT_TOOLTIPS = ("The scorer's first score (e.g. caption similarity, or RAHF plausibility).",
                       "Its second score, if any (RAHF: alignment).", "Its third score, if any (RAHF: aesthetics).",
                       "Its fourth score, if any (RAHF: overall).", "Table of all its scores.",
                       "The first heatmap the reward reports per image (RAHF: implausibility; 0..1, image size), "
                       "all zeros when it reports none — feed it to Heatmap → Mask.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "scorer": (SCORER, {"tooltip": "A scorer from Reward Scorer (or any node giving REWARDLOOP_SCORER)."}),
            "images": ("IMAGE", {"tooltip": "Images to score."}),
            "prompt": ("STRING", {"default": "", "multiline": True,
                                  "tooltip": "The prompt the images were made from: one for all, or one line per "
                                             "image."}),
        }}

    @validated
    def score(self, scorer, images, prompt):
        pils = image_to_pil(images)
        out = scorer(pils, broadcast_prompts(prompt, len(pils)))
        padded = list(out[:4]) + [None] * (4 - min(4, len(out)))
        return (*padded, scores_table(list(out)), first_heatmaps(out, images))


def first_heatmaps(scores, images) -> torch.Tensor:
    """[B,H,W] from the first reward detail that holds 2-D maps (resized to the images), zeros otherwise."""
    from ..rewards.images import resize_map
    from ..rewards.regions import detail_heatmaps
    b, h, w = images.shape[:3]
    for s in scores:
        maps = [detail_heatmaps(d) for d in (s.details or [])]
        if len(maps) == b and all(maps):
            key = next(iter(maps[0]))
            if all(key in m for m in maps):
                return torch.stack([resize_map(torch.from_numpy(m[key]), (h, w))[0] for m in maps]).clamp(0, 1)
    return torch.zeros(b, h, w)


NODE_CLASS_MAPPINGS = {"RewardLoopAssembleRank": RewardLoopAssembleRank,
                       "RewardLoopScorerFromRegistry": RewardLoopScorerFromRegistry,
                       "RewardLoopScoreWithScorer": RewardLoopScoreWithScorer}
NODE_DISPLAY_NAME_MAPPINGS = {"RewardLoopAssembleRank": "Assemble Rank / Best-of-N (RewardLoop)",
                              "RewardLoopScorerFromRegistry": "Reward Scorer (RewardLoop)",
                              "RewardLoopScoreWithScorer": "Score With Scorer (RewardLoop)"}
