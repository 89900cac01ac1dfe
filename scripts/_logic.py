"""A1111/Forge-free logic of the WebUI extension: best-of-N by the assembled reward, and auto-fix masks.

``scripts/rewardloop_a1111.py`` is the thin WebUI glue (gradio UI, ``scripts.Script`` hooks, img2img); all
decisions live here so they are tested without a WebUI:

* :func:`parse_args` turns the UI values into :class:`Settings`;
* :func:`score` runs the selected rewards (``rewards.scoring.make_scorer``) on a batch;
* :func:`rank_order` orders the batch best-first: ``rewards.ranking.assemble_rank`` when present, else the
  local rank-sum below (FineRewards' assemble ranking: per reward 0 = best, tied values share the mean
  position, weighted sum, lowest total wins, ties → lower index);
* :func:`select` keeps the top-k and :class:`BatchBook` keeps ``p.prompts`` / ``p.seeds`` / ``p.all_*`` in step;
* :func:`flag_masks` turns a reward's heatmaps (``details[i]["<kind>_heatmap"]``) into inpainting masks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

REWARDS = ("caption", "sam_llm", "rich")
MODES = ("rank_sum", "zscore", "raw")
HEATMAP_KEYS = ("implausibility_heatmap", "misalignment_heatmap", "unlikely_heatmap", "heatmap")


@dataclass
class Settings:
    enabled: bool = False
    rewards: list[str] = field(default_factory=lambda: ["caption"])
    weights: dict[str, float] = field(default_factory=lambda: {r: 1.0 for r in REWARDS})
    keep_top_k: int = 0          # 0 = keep every image, only reorder best-first
    mode: str = "rank_sum"
    autofix: bool = False
    threshold: float = 0.5       # heat value in 0..1 at or above which a pixel is flagged
    dilation: float = 3.0        # % of the image's short side
    denoise: float = 0.5         # img2img denoising strength of the repair
    heatmap: str = "implausibility_heatmap"

    @property
    def active(self) -> bool:
        return (self.enabled and bool(self.rewards)) or self.autofix


UI_ORDER = ("enabled", "rewards", "w_caption", "w_sam_llm", "w_rich", "keep_top_k", "mode", "autofix",
            "threshold", "dilation", "denoise")


def parse_args(*args) -> Settings:
    """UI values (in :data:`UI_ORDER`) → Settings, with clear errors for nonsense values."""
    if len(args) < len(UI_ORDER):
        return Settings()  # the UI was not built (API call without our args): stay off
    v = dict(zip(UI_ORDER, args))
    rewards = [r for r in (v["rewards"] or []) if r]
    unknown = [r for r in rewards if r not in REWARDS]
    if unknown:
        raise ValueError(f"RewardLoop: unknown reward(s) {unknown}; choose from {', '.join(REWARDS)}.")
    weights = {"caption": float(v["w_caption"]), "sam_llm": float(v["w_sam_llm"]), "rich": float(v["w_rich"])}
    if any(not math.isfinite(w) or w < 0 for w in weights.values()):
        raise ValueError(f"RewardLoop: weights must be finite and >= 0, got {weights}.")
    mode = str(v["mode"] or "rank_sum")
    if mode not in MODES:
        raise ValueError(f"RewardLoop: ranking mode {mode!r} unknown; choose from {', '.join(MODES)}.")
    return Settings(enabled=bool(v["enabled"]), rewards=rewards, weights=weights,
                    keep_top_k=max(0, int(v["keep_top_k"] or 0)), mode=mode, autofix=bool(v["autofix"]),
                    threshold=float(v["threshold"]), dilation=float(v["dilation"]), denoise=float(v["denoise"]))


# ------------------------------------------------------------------ scoring
_SCORERS: dict[str, Any] = {}


def default_factory(name: str):
    from ..rewards.scoring import make_scorer
    return make_scorer(name)


SCORER_FACTORY: Callable[[str], Any] = default_factory


def get_scorer(name: str):
    """One scorer per reward name, built once (models stay in the pack's model cache)."""
    if name not in _SCORERS:
        _SCORERS[name] = SCORER_FACTORY(name)
    return _SCORERS[name]


def clear_scorers() -> None:
    _SCORERS.clear()


def score(images: Sequence, prompts: Sequence[str], rewards: Sequence[str]) -> dict[str, list]:
    """reward name → the RewardScores its scorer returns for these images (a scorer may return several)."""
    out = {}
    for r in rewards:
        res = get_scorer(r)(list(images), list(prompts))
        for s in res:
            if len(s.values) != len(images):
                raise ValueError(f"RewardLoop: reward {s.name!r} returned {len(s.values)} scores for "
                                 f"{len(images)} images.")
        out[r] = list(res)
    return out


def _average_ranks(oriented: np.ndarray) -> np.ndarray:
    """0 = best (largest oriented value); ties share the mean of their positions."""
    order = np.argsort(-oriented, kind="stable")
    ranks = np.empty(len(oriented), dtype=np.float64)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and oriented[order[j + 1]] == oriented[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def rank_sum_order(scores: Sequence, weights: Sequence[float]) -> list[int]:
    """Local fallback of the assemble ranking (rank-sum): best-first image indices."""
    n = len(scores[0].values)
    total = np.zeros(n)
    for s, w in zip(scores, weights):
        vals = np.asarray(s.values, dtype=np.float64)
        if not np.all(np.isfinite(vals)):
            raise ValueError(f"RewardLoop: reward {s.name!r} has NaN/infinite scores; cannot rank.")
        oriented = vals if s.higher_is_better else -vals
        total += w * _average_ranks(oriented)
    return sorted(range(n), key=lambda i: (total[i], i))


def rank_order(scored: dict[str, list], weights: dict[str, float], mode: str = "rank_sum") -> list[int]:
    """Best-first order of the batch from every reward's scores, each weighted by its reward's weight.

    A reward that yields several scores (rich: four) shares its weight equally among them.
    """
    flat, w = [], []
    for name, res in scored.items():
        for s in res:
            flat.append(s)
            w.append(float(weights.get(name, 1.0)) / max(1, len(res)))
    if not flat:
        raise ValueError("RewardLoop: no rewards selected to rank by.")
    try:
        from ..rewards.ranking import assemble_rank
    except ImportError:
        assemble_rank = None
    if assemble_rank is not None:
        return list(assemble_rank(flat, w, mode=mode).order)
    if mode != "rank_sum":
        raise ValueError(f"RewardLoop: mode {mode!r} needs rewards/ranking.py; only rank_sum is built in.")
    return rank_sum_order(flat, w)


def select(order: Sequence[int], keep_top_k: int) -> list[int]:
    return list(order[:keep_top_k]) if keep_top_k and keep_top_k < len(order) else list(order)


# ------------------------------------------------------------------ keeping p.* lists in step
PER_IMAGE_LISTS = ("prompts", "negative_prompts", "seeds", "subseeds")
ALL_LISTS = ("all_prompts", "all_negative_prompts", "all_seeds", "all_subseeds")


class BatchBook:
    """Reorders / drops the per-image lists of an A1111 ``p`` consistently with ``pp.images``.

    The batch lists (``p.prompts`` …) are replaced by the kept entries in the new order. In the ``p.all_*``
    lists the batch's slice is reordered in place (later batches index ``all_*`` by ``n * batch_size``, so
    their length must not change before the last batch); dropped entries are removed from ``p.all_*`` after
    the last batch, all at once.
    """

    ATTR = "_rewardloop_dropped"

    @staticmethod
    def apply(p, keep: Sequence[int], batch_number: int, batch_size: int, n_images: int) -> None:
        keep = list(keep)
        for name in PER_IMAGE_LISTS:
            lst = getattr(p, name, None)
            if isinstance(lst, list) and len(lst) == n_images:
                setattr(p, name, [lst[i] for i in keep])
        start = batch_number * batch_size
        order = keep + [i for i in range(n_images) if i not in keep]
        dropped = getattr(p, BatchBook.ATTR, None)
        if dropped is None or batch_number == 0:
            dropped = []
        for name in ALL_LISTS:
            lst = getattr(p, name, None)
            if isinstance(lst, list) and len(lst) >= start + n_images:
                chunk = lst[start:start + n_images]
                lst[start:start + n_images] = [chunk[i] for i in order]
        dropped += [start + j for j in range(len(keep), n_images)]
        setattr(p, BatchBook.ATTR, dropped)
        n_iter = int(getattr(p, "n_iter", 1) or 1)
        if batch_number >= n_iter - 1 and dropped:
            for name in ALL_LISTS:
                lst = getattr(p, name, None)
                if isinstance(lst, list):
                    for idx in sorted(set(dropped), reverse=True):
                        if idx < len(lst):
                            del lst[idx]
            setattr(p, BatchBook.ATTR, [])


# ------------------------------------------------------------------ auto-fix masks
def find_heatmap(details: dict, preferred: str) -> Any:
    if preferred in details:
        return details[preferred]
    for k in HEATMAP_KEYS:
        if k in details:
            return details[k]
    for k, v in details.items():
        if k.endswith("heatmap"):
            return v
    return None


def heatmap_mask(heat, size_hw: tuple[int, int], threshold: float, dilation_pct: float) -> np.ndarray:
    """Heatmap (0..1, any size) → binary float mask ``[H,W]`` (1 = repaint): resize, threshold, dilate."""
    import cv2
    h, w = size_hw
    a = heat.detach().float().cpu().numpy() if hasattr(heat, "detach") else np.asarray(heat, dtype=np.float32)
    a = np.squeeze(a).astype(np.float32)
    if a.ndim != 2:
        raise ValueError(f"RewardLoop: heatmap must be 2-D, got shape {a.shape}.")
    a = cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)
    m = (a >= threshold).astype(np.uint8)
    r = int(round(dilation_pct / 100.0 * min(h, w)))
    if r > 0 and m.any():
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        m = cv2.dilate(m, k)
    return m.astype(np.float32)


def flag_masks(scored: dict[str, list], n: int, size_hw: tuple[int, int], settings: Settings) -> list:
    """One mask per image (None where nothing is flagged or no reward gives a heatmap)."""
    masks: list = [None] * n
    for res in scored.values():
        for s in res:
            for i, det in enumerate(s.details or []):
                if masks[i] is not None or not det:
                    continue
                heat = find_heatmap(det, settings.heatmap)
                if heat is None:
                    continue
                m = heatmap_mask(heat, size_hw, settings.threshold, settings.dilation)
                if m.any():
                    masks[i] = m
    return masks


def autofix(images: list, prompts: Sequence[str], masks: Sequence, inpaint: Callable) -> tuple[list, list[int]]:
    """Repair every image that has a mask with ``inpaint(image, mask, index) -> image``; returns (images, fixed)."""
    out, fixed = list(images), []
    for i, m in enumerate(masks):
        if m is None:
            continue
        out[i] = inpaint(images[i], m, i)
        fixed.append(i)
    return out, fixed
