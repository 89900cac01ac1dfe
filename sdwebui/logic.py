"""WebUI-free logic of the A1111/Forge extension: settings, scoring, ranking, per-image lists, auto-fix masks.

* :func:`parse_args` turns the UI values (or an API call's ``alwayson_scripts`` args, possibly fewer) into
  :class:`Settings`; :func:`generation_params` is what the run records in the PNG info.
* :func:`score` runs the selected rewards (``rewards.scoring.make_scorer`` with the models chosen in the UI);
  :func:`rank_order` orders a batch best-first with ``rewards.ranking.assemble_rank``.
* :class:`BatchBook` keeps the WebUI's per-image lists (``p.seeds`` …, ``p.all_*``, img2img's per-slot
  ``overlay_images`` / ``color_corrections``) in step with the reordered / shortened batch.
* :func:`flag_masks` turns a reward's heatmaps (``details[i]["<kind>_heatmap"]``) into inpainting masks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..rewards.ranking import MODES

REWARDS = ("caption", "sam_llm", "rich")
FIX_REWARDS = ("rich", "sam_llm")       # the rewards that give heatmaps
HEATMAP_KEYS = ("implausibility_heatmap", "misalignment_heatmap", "unlikely_heatmap", "heatmap")

# Model fields of the UI, one per reward role (like the nodes' loaders): (ui key, reward, role, catalogue kind).
MODEL_FIELDS = (
    ("caption.captioner", "caption", "captioner", "captioner"),
    ("caption.text_encoder", "caption", "text_encoder", "text_encoder"),
    ("sam_llm.sam", "sam_llm", "sam", "sam"),
    ("sam_llm.llm", "sam_llm", "llm", "llm"),
    ("sam_llm.captioner", "sam_llm", "captioner", "captioner"),
    ("sam_llm.clip", "sam_llm", "clip", "clip"),
    ("rich.rich_feedback", "rich", "rich_feedback", "rich_feedback"),
)
MODEL_HELP = {
    "caption.captioner": "caption reward: captioner",
    "caption.text_encoder": "caption reward: text encoder (prompt-caption similarity)",
    "sam_llm.sam": "SAM + LLM reward: segmenter",
    "sam_llm.llm": "SAM + LLM reward: LLM judge",
    "sam_llm.captioner": "SAM + LLM reward: segment labels by captioning (used when no CLIP is set)",
    "sam_llm.clip": "SAM + LLM reward: CLIP for open-vocabulary segment labels (the paper's; empty = captioner)",
    "rich.rich_feedback": "rich feedback (RAHF) model",
}


def light_default(role: str, kind: str) -> str:
    """The light profile's model for a role; '' where the light profile has none (SAM + LLM's CLIP labels),
    the only catalogued model where there is no light one (RAHF)."""
    from ..weights.catalogue import CATALOGUE
    specs = [s for s in CATALOGUE if s.kind == kind and s.source != "tiny"]
    light = [s.key for s in specs if "light" in s.profiles]
    if light:
        return light[0]
    return specs[0].key if (specs and role == "rich_feedback") else ""


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
    fix_reward: str = "rich"     # the reward whose heatmaps flag regions and whose score judges a fix
    fix_candidates: int = 1      # img2img candidates per flagged image; the best replaces it only if it scores higher
    models: dict[str, str] = field(default_factory=dict)   # MODEL_FIELDS ui key -> model ('' = default)
    heatmap: str = "implausibility_heatmap"

    @property
    def active(self) -> bool:
        return (self.enabled and bool(self.rewards)) or self.autofix

    @property
    def ranking(self) -> list[str]:
        return list(self.rewards) if self.enabled else []

    def models_for(self, reward: str) -> dict[str, str]:
        """``make_scorer`` model options of one reward (roles left empty take the reward's own defaults)."""
        out = {role: self.models[key] for key, rew, role, _ in MODEL_FIELDS
               if rew == reward and self.models.get(key)}
        if reward == "sam_llm" and out.get("clip"):
            out.pop("captioner", None)  # CLIP labels the segments; the captioner would load for nothing
        return out


UI_ORDER = ("enabled", "rewards", "w_caption", "w_sam_llm", "w_rich", "keep_top_k", "mode", "autofix",
            "threshold", "dilation", "denoise", "fix_reward", "fix_candidates") + tuple(f[0] for f in MODEL_FIELDS)


def ui_defaults() -> dict[str, Any]:
    """The UI's initial values, by :data:`UI_ORDER` name (model fields: the light profile)."""
    s = Settings()
    out = {"enabled": s.enabled, "rewards": list(s.rewards), "w_caption": 1.0, "w_sam_llm": 1.0, "w_rich": 1.0,
           "keep_top_k": s.keep_top_k, "mode": s.mode, "autofix": s.autofix, "threshold": s.threshold,
           "dilation": s.dilation, "denoise": s.denoise, "fix_reward": s.fix_reward,
           "fix_candidates": s.fix_candidates}
    out.update({key: light_default(role, kind) for key, _, role, kind in MODEL_FIELDS})
    return out


def parse_args(*args) -> Settings:
    """UI values in :data:`UI_ORDER` → Settings. Fewer values (an API call naming only the first ones) take the
    UI defaults for the rest; nonsense values are refused with one line that says what to change."""
    if not args:
        return Settings()  # the script's arguments were not sent at all: stay off
    if len(args) > len(UI_ORDER):
        raise ValueError(f"RewardLoop: got {len(args)} script arguments, expected at most {len(UI_ORDER)} "
                         f"({', '.join(UI_ORDER)}).")
    v = ui_defaults()
    v.update(zip(UI_ORDER, args))
    raw = v["rewards"]
    rewards = [r.strip() for r in (raw.split(",") if isinstance(raw, str) else (raw or [])) if r and r.strip()]
    unknown = [r for r in rewards if r not in REWARDS]
    if unknown:
        raise ValueError(f"RewardLoop: unknown reward(s) {unknown}; choose from {', '.join(REWARDS)}.")
    try:
        weights = {"caption": float(v["w_caption"]), "sam_llm": float(v["w_sam_llm"]), "rich": float(v["w_rich"])}
    except (TypeError, ValueError):
        raise ValueError("RewardLoop: reward weights must be numbers.") from None
    if any(not math.isfinite(w) or w < 0 for w in weights.values()):
        raise ValueError(f"RewardLoop: weights must be finite and >= 0, got {weights}.")
    mode = str(v["mode"] or "rank_sum")
    if mode not in MODES:
        raise ValueError(f"RewardLoop: ranking mode {mode!r} unknown; choose from {', '.join(MODES)}.")
    fix_reward = str(v["fix_reward"] or "rich")
    if fix_reward not in FIX_REWARDS:
        raise ValueError(f"RewardLoop: auto-fix flags regions with {' or '.join(FIX_REWARDS)} (they give "
                         f"heatmaps), not {fix_reward!r}.")
    k = int(1 if v["fix_candidates"] is None else v["fix_candidates"])
    if not 1 <= k <= 16:
        raise ValueError(f"RewardLoop: auto-fix candidates must be 1..16, got {k}.")
    denoise = float(v["denoise"])
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"RewardLoop: repair denoising strength must be in (0, 1], got {denoise}.")
    models = {key: str(v[key] or "").strip() for key, *_ in MODEL_FIELDS}
    return Settings(enabled=bool(v["enabled"]), rewards=rewards, weights=weights,
                    keep_top_k=max(0, int(v["keep_top_k"] or 0)), mode=mode, autofix=bool(v["autofix"]),
                    threshold=float(v["threshold"]), dilation=float(v["dilation"]), denoise=denoise,
                    fix_reward=fix_reward, fix_candidates=k, models=models)


# ------------------------------------------------------------------ PNG info
INFO_RANK, INFO_WEIGHTS, INFO_TOP_K, INFO_MODE = ("RewardLoop rank", "RewardLoop weights", "RewardLoop top k",
                                                  "RewardLoop mode")
INFO_FIX, INFO_FIX_SETTINGS, INFO_MODELS = "RewardLoop fix", "RewardLoop fix settings", "RewardLoop models"
INFO_PLACE, INFO_FIX_RESULT, INFO_ERROR = "RewardLoop place", "RewardLoop fix result", "RewardLoop error"


def generation_params(s: Settings) -> dict[str, Any]:
    """What a run records in each image's PNG info (``p.extra_generation_params``); read back by
    :func:`settings_from_infotext` when a user pastes the parameters."""
    out: dict[str, Any] = {}
    if s.ranking:
        out[INFO_RANK] = "+".join(s.ranking)
        out[INFO_WEIGHTS] = "+".join(f"{s.weights[r]:g}" for r in s.ranking)
        out[INFO_MODE] = s.mode
        out[INFO_TOP_K] = s.keep_top_k
    if s.autofix:
        out[INFO_FIX] = s.fix_reward
        out[INFO_FIX_SETTINGS] = (f"threshold {s.threshold:g}; dilation {s.dilation:g}%; denoise {s.denoise:g}; "
                                  f"candidates {s.fix_candidates}")
    used = set(s.ranking) | ({s.fix_reward} if s.autofix else set())
    models = [f"{key}={s.models[key]}" for key, rew, *_ in MODEL_FIELDS if rew in used and s.models.get(key)]
    if models:
        out[INFO_MODELS] = "; ".join(models)
    return out


def settings_from_infotext(params: dict[str, str]) -> dict[str, Any]:
    """UI values (by :data:`UI_ORDER` name) that a pasted PNG info sets: ``enabled`` / ``autofix`` always (off when
    the image was made without them), the others only where the PNG info names them."""
    out: dict[str, Any] = {"enabled": INFO_RANK in params, "autofix": INFO_FIX in params}
    if INFO_RANK in params:
        rewards = [r for r in str(params[INFO_RANK]).split("+") if r in REWARDS]
        out["rewards"] = rewards
        weights = str(params.get(INFO_WEIGHTS, "")).split("+")
        for r, w in zip(rewards, weights):
            try:
                out[f"w_{r}"] = float(w)
            except ValueError:
                pass
        if params.get(INFO_MODE) in MODES:
            out["mode"] = params[INFO_MODE]
        if str(params.get(INFO_TOP_K, "")).isdigit():
            out["keep_top_k"] = int(params[INFO_TOP_K])
    if INFO_FIX in params:
        if params[INFO_FIX] in FIX_REWARDS:
            out["fix_reward"] = params[INFO_FIX]
        for part in str(params.get(INFO_FIX_SETTINGS, "")).split(";"):
            name, _, value = part.strip().partition(" ")
            key = {"threshold": "threshold", "dilation": "dilation", "denoise": "denoise",
                   "candidates": "fix_candidates"}.get(name)
            if key:
                try:
                    num = float(value.rstrip("%"))
                    out[key] = int(num) if key == "fix_candidates" else num
                except ValueError:
                    pass
    for part in str(params.get(INFO_MODELS, "")).split(";"):
        key, _, value = part.strip().partition("=")
        if key in {f[0] for f in MODEL_FIELDS}:
            out[key] = value
    return out


# ------------------------------------------------------------------ scoring and ranking
_SCORERS: dict[str, tuple[tuple, Any]] = {}


def default_factory(name: str, models: dict[str, str]):
    from ..rewards.scoring import make_scorer
    return make_scorer(name, models={f"{name}.{role}": value for role, value in models.items()})


SCORER_FACTORY = default_factory


def get_scorer(name: str, models: dict[str, str] | None = None):
    """One scorer per reward, rebuilt only when its models change (the models stay in the pack's cache)."""
    key = tuple(sorted((models or {}).items()))
    hit = _SCORERS.get(name)
    if hit is None or hit[0] != key:
        _SCORERS[name] = (key, SCORER_FACTORY(name, dict(models or {})))
    return _SCORERS[name][1]


def clear_scorers() -> None:
    _SCORERS.clear()


def score(images: Sequence, prompts: Sequence[str], rewards: Sequence[str], settings: Settings) -> dict[str, list]:
    """reward name → the RewardScores its scorer returns for these images (a scorer may return several)."""
    out = {}
    for r in rewards:
        res = get_scorer(r, settings.models_for(r))(list(images), list(prompts))
        for s in res:
            if len(s.values) != len(images):
                raise ValueError(f"RewardLoop: reward {s.name!r} returned {len(s.values)} scores for "
                                 f"{len(images)} images.")
        out[r] = list(res)
    return out


def splice(scored: dict[str, list], fresh: dict[str, list], indices: Sequence[int]) -> dict[str, list]:
    """``scored`` with the values (and details) of images ``indices`` replaced by ``fresh`` (scored alone)."""
    from ..rewards.types import RewardScores
    out = {}
    for name, res in scored.items():
        new = []
        for s, f in zip(res, fresh[name]):
            values, details = list(s.values), list(s.details) if s.details else []
            for j, i in enumerate(indices):
                values[i] = f.values[j]
                if details and f.details:
                    details[i] = f.details[j]
            new.append(RewardScores(s.name, values, s.higher_is_better, s.value_range, details, s.group))
        out[name] = new
    return out


def rank_order(scored: dict[str, list], weights: dict[str, float], mode: str = "rank_sum") -> list[int]:
    """Best-first order of the batch from every reward's scores, each weighted by its reward's weight.

    A reward that yields several scores (rich: four) shares its weight equally among them.
    """
    from ..rewards.ranking import assemble_rank
    flat, w = [], []
    for name, res in scored.items():
        for s in res:
            flat.append(s)
            w.append(float(weights.get(name, 1.0)) / max(1, len(res)))
    if not flat:
        raise ValueError("RewardLoop: no rewards selected to rank by.")
    return list(assemble_rank(flat, w, mode=mode).order)


def select(order: Sequence[int], keep_top_k: int) -> list[int]:
    return list(order[:keep_top_k]) if keep_top_k and keep_top_k < len(order) else list(order)


# ------------------------------------------------------------------ keeping p.* lists in step
PER_BATCH_LISTS = ("prompts", "negative_prompts", "seeds", "subseeds")
ALL_LISTS = ("all_prompts", "all_negative_prompts", "all_seeds", "all_subseeds")
PER_SLOT_LISTS = ("overlay_images", "color_corrections")  # img2img: set once per job, reused by every batch


class BatchBook:
    """Keeps an A1111/Forge job's per-image lists in step with the reordered / shortened batches.

    While the job runs, image ``i`` of batch ``n`` must stay at ``p.all_*[n * batch_size + i]`` (the WebUI slices
    the next batch's seeds from there, and per-image scripts such as ADetailer read their seed there), so a
    batch's slice is reordered in place, kept images first. :meth:`finish` (the ``postprocess`` hook, which runs
    after the last batch *and* after an interrupted one) then removes the dropped images' and the never-run
    batches' entries at once, so that ``all_*[j]`` belongs to the ``j``-th image of the result. img2img's per-slot
    lists are reordered for the batch's remaining steps and restored before the next batch (:meth:`restore_slots`).
    Per-image outcomes (place in the batch, auto-fix result) are kept for the PNG info.
    """

    ATTR = "_rewardloop_book"

    def __init__(self):
        self.kept: dict[int, int] = {}             # batch number -> images kept
        self.batch_size = 1
        self.slots: dict[str, list] = {}           # per-slot list -> its original order
        self.notes: dict[tuple[int, int], dict[str, str]] = {}   # (batch, index after reorder) -> info key -> text
        self.failed = False                        # an error was reported: the job's later batches are left alone

    @classmethod
    def of(cls, p) -> "BatchBook":
        book = getattr(p, cls.ATTR, None)
        if book is None:
            book = cls()
            setattr(p, cls.ATTR, book)
        return book

    def restore_slots(self, p) -> None:
        for name, original in self.slots.items():
            setattr(p, name, original)
        self.slots.clear()

    def apply(self, p, keep: Sequence[int], batch_number: int, batch_size: int, n_images: int) -> None:
        keep = list(keep)
        self.batch_size = max(1, int(batch_size or n_images))
        for name in PER_BATCH_LISTS:
            lst = getattr(p, name, None)
            if isinstance(lst, list) and len(lst) == n_images:
                setattr(p, name, [lst[i] for i in keep])
        start = batch_number * self.batch_size
        order = keep + [i for i in range(n_images) if i not in keep]
        for name in ALL_LISTS:
            lst = getattr(p, name, None)
            if isinstance(lst, list) and len(lst) >= start + n_images:
                chunk = lst[start:start + n_images]
                lst[start:start + n_images] = [chunk[i] for i in order]
        for name in PER_SLOT_LISTS:
            lst = self.slots.get(name, getattr(p, name, None))
            if isinstance(lst, list) and len(lst) >= n_images:
                self.slots[name] = lst
                setattr(p, name, [lst[i] for i in keep])
        self.kept[batch_number] = len(keep)

    def keep_all(self, batch_number: int, batch_size: int, n_images: int) -> None:
        """A batch left as it was (nothing to rank, or an error): its images all stay, in order."""
        self.batch_size = max(1, int(batch_size or n_images))
        self.kept[batch_number] = n_images

    def note(self, batch_number: int, index: int, key: str, text: str) -> None:
        self.notes.setdefault((batch_number, index), {})[key] = text

    def finish(self, p) -> None:
        self.restore_slots(p)
        if self.kept:
            idx = [b * self.batch_size + j for b in sorted(self.kept) for j in range(self.kept[b])]
            for name in ALL_LISTS:
                lst = getattr(p, name, None)
                if isinstance(lst, list):
                    lst[:] = [lst[i] for i in idx if i < len(lst)]   # in place: Processed holds the same lists
        self.kept.clear()


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


def flag_masks(scores: list, n: int, size_hw: tuple[int, int], settings: Settings) -> list:
    """One mask per image from one reward's scores (None where nothing is flagged or it gives no heatmap)."""
    masks: list = [None] * n
    for s in scores:
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
