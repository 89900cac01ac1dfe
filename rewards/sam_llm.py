"""FineRewards' SAM + LLM reward (local semantics): segment, label each part, ask an LLM how likely it is.

Per image with segments k = 1..K, LLM scores s_k in [1, 3] (expected score in logprob mode, parsed integer in
paper mode) and pixel areas a_k (each segment's own mask area; overlapping masks count in full):

* ``sam_llm``       (area-weighted): r = (Σ a_k s_k / Σ a_k − 2) / 2
* ``sam_llm_mean``  (unweighted, the paper's formula): r = (mean_k s_k − 2) / 2

Both lie in [−0.5, 0.5]; higher is better (+0.5: every part is certain to belong to the prompted scene,
−0.5: every part is unlikely).

Unlikely-content heatmap ``[H, W]`` in 0..1: every segment is painted with (3 − s_k) / 2 (1 = unlikely,
0 = certain); uncovered pixels are 0. Overlaps: segments are painted from the largest to the smallest area
(ties: the order of the segment list), so a smaller segment lying on a larger one shows its own value.

Zero segments (SAM found nothing above its thresholds): with ``on_empty="whole_image"`` (default) the whole
image becomes one segment, labelled and judged like any other (the reward is then the single label's score,
the heatmap is uniform); with ``on_empty="neutral"`` the reward is 0.0 (the middle of the scale, = every part
"may appear"), the heatmap is all zeros and the details say ``n_segments: 0``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from PIL import Image

from .. import bridge
from ..weights.loaders import ModelHandle
from .images import as_pil_list, broadcast_prompts
from .labels import label_segments
from .llm_judge import Judgement, LLMJudge
from .segments import SegmentOptions, segment_images, segment_options, whole_image_segment
from .types import RewardScores, Segments

NAMES = ["sam_llm", "sam_llm_mean"]
SCORE_NAMES = NAMES  # the scores this reward produces, in order
VALUE_RANGE = (-0.5, 0.5)


# ---------------------------------------------------------------- formulas
def reward_from_scores(scores: Sequence[float], areas: Sequence[float] | None = None) -> float:
    """(mean score − 2) / 2; area-weighted mean when ``areas`` is given. No scores → 0.0 (neutral)."""
    if len(scores) == 0:
        return 0.0
    s = torch.tensor([float(x) for x in scores], dtype=torch.float64)
    if areas is None:
        mean = float(s.mean())
    else:
        a = torch.tensor([float(x) for x in areas], dtype=torch.float64)
        if len(a) != len(s):
            raise ValueError(f"{len(a)} areas for {len(s)} scores.")
        if float(a.sum()) <= 0:
            mean = float(s.mean())
        else:
            mean = float((a * s).sum() / a.sum())
    return (mean - 2.0) / 2.0


def unlikely_heatmap(masks: torch.Tensor, scores: Sequence[float], size: tuple[int, int] | None = None) -> torch.Tensor:
    """``[H,W]`` float 0..1: each mask painted with (3 − score)/2, largest area first (smaller ones on top)."""
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N,H,W], got {tuple(masks.shape)}.")
    h, w = size or tuple(masks.shape[-2:])
    heat = torch.zeros(h, w, dtype=torch.float32)
    if masks.shape[0] == 0:
        return heat
    if len(scores) != masks.shape[0]:
        raise ValueError(f"{len(scores)} scores for {masks.shape[0]} masks.")
    m = masks.bool().cpu()
    areas = m.sum(dim=(1, 2)).tolist()
    order = sorted(range(len(areas)), key=lambda k: (-areas[k], k))
    for k in order:
        v = min(1.0, max(0.0, (3.0 - float(scores[k])) / 2.0))
        heat[m[k]] = v
    return heat


def segment_table(seg: Segments, judgements: Sequence[Judgement] | None = None) -> list[dict]:
    total = float(seg.image_size[0] * seg.image_size[1])
    rows = []
    for k in range(len(seg)):
        row = {"label": seg.labels[k] if seg.labels else "", "label_confidence": _f(seg.label_scores[k])
               if seg.label_scores else None, "area": int(seg.areas[k]), "area_fraction": round(int(seg.areas[k]) / total, 6),
               "sam_score": round(float(seg.scores[k]), 6),
               "score": round(float(seg.values[k]), 6) if seg.values else None}
        if judgements is not None:
            j = judgements[k]
            row["p1"], row["p2"], row["p3"] = (round(p, 6) for p in j.probs)
        rows.append(row)
    return rows


def _f(x):
    x = float(x)
    return None if math.isnan(x) else round(x, 6)


def table_text(details: Sequence[dict]) -> str:
    """Plain-text per-segment table for all images."""
    lines = []
    for i, d in enumerate(details):
        lines.append(f"image {i}: sam_llm={d['sam_llm']:+.4f} sam_llm_mean={d['sam_llm_mean']:+.4f} "
                     f"segments={d['n_segments']}{' (whole image: no segment found)' if d.get('fallback') else ''}")
        rows = d["segments"]
        if not rows:
            lines.append("  (no segments: neutral reward 0)")
            continue
        w = max(5, *(len(r["label"]) for r in rows))
        lines.append(f"  {'#':>3}  {'label'.ljust(w)}  {'area':>8}  {'area%':>6}  {'score':>5}  p(1/2/3)")
        for k, r in enumerate(rows):
            ps = f"{r['p1']:.2f}/{r['p2']:.2f}/{r['p3']:.2f}" if "p1" in r else ""
            lines.append(f"  {k:>3}  {r['label'].ljust(w)}  {r['area']:>8}  {100 * r['area_fraction']:>5.1f}%  "
                         f"{r['score']:>5.2f}  {ps}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the pipeline
@dataclass
class SamLlmResult:
    weighted: RewardScores
    unweighted: RewardScores
    heatmaps: list[torch.Tensor]          # one [H,W] per image (empty when not asked for)
    segments: list[Segments]
    table: str
    details: list[dict] = field(default_factory=list)

    def heatmap_batch(self) -> torch.Tensor:
        sizes = {tuple(h.shape) for h in self.heatmaps}
        if len(sizes) > 1:
            raise ValueError(f"Images of different sizes give heatmaps of different sizes: {sorted(sizes)}.")
        return torch.stack(self.heatmaps) if self.heatmaps else torch.zeros(0, 1, 1)

    def json(self) -> str:
        return json.dumps(self.details, indent=1)


JUDGE_MODES = ("logprob", "paper", "semantic")


def make_judge(mode: str, llm: ModelHandle | None = None, text_encoder: ModelHandle | None = None,
               batch_size: int = 64):
    """The judge for ``mode``: the LLM judge (``logprob`` / ``paper``, needs ``llm``) or the semantic-similarity
    judge (``semantic``, needs ``text_encoder``: the caption reward's MiniLM or CLIP text encoder)."""
    if mode not in JUDGE_MODES:
        raise ValueError(f"Unknown judge mode {mode!r}: use {', '.join(JUDGE_MODES)}.")
    if mode == "semantic":
        if text_encoder is None:
            raise ValueError("The semantic judge needs a text encoder: connect a RewardLoop Text Encoder Loader "
                             "(all-MiniLM-L6-v2 or a CLIP model), or pick judge mode logprob/paper with an LLM.")
        from .semantic_judge import SemanticJudge
        return SemanticJudge(text_encoder)
    if llm is None:
        raise ValueError(f"Judge mode {mode!r} needs an LLM: connect a RewardLoop LLM loader, or pick judge mode "
                         "semantic with a text encoder.")
    return LLMJudge(llm, mode=mode, batch_size=batch_size)


class SamLlmReward:
    """The reward from loaded handles (SAM, CLIP or captioner, LLM) and options; ``score(images, prompts)``."""

    def __init__(self, sam: ModelHandle, llm: ModelHandle | None, clip: ModelHandle | None = None,
                 captioner: ModelHandle | None = None, *, label_mode: str | None = None, judge_mode: str = "logprob",
                 text_encoder: ModelHandle | None = None,
                 segment: SegmentOptions | None = None, on_empty: str = "whole_image",
                 extra_vocabulary: Sequence[str] = (), general_vocabulary: bool = True, batch_size: int = 64,
                 keep_loaded: bool = True, **segment_kw):
        self.sam, self.llm, self.clip, self.captioner = sam, llm, clip, captioner
        # a missing labeller is reported when labels are needed (pre-labelled segments need none)
        self.label_mode = label_mode or ("clip" if clip is not None or captioner is None else "caption")
        if on_empty not in ("whole_image", "neutral"):
            raise ValueError(f"on_empty must be 'whole_image' or 'neutral', got {on_empty!r}.")
        self.on_empty = on_empty
        self.segment_options = (segment or segment_options(**segment_kw)).validated()
        self.text_encoder = text_encoder
        self.judge = make_judge(judge_mode, llm=llm, text_encoder=text_encoder, batch_size=batch_size)
        self.extra_vocabulary = list(extra_vocabulary)
        self.general_vocabulary = general_vocabulary
        self.keep_loaded = keep_loaded
        self.names = list(NAMES)

    def segment(self, pils: Sequence[Image.Image]) -> list[Segments]:
        sam = bridge.to_device_for_use(self.sam.model, self.sam.device)
        try:
            return segment_images(sam, pils, self.segment_options)
        finally:
            bridge.offload(sam, self.keep_loaded)

    def score(self, images, prompts, segments: Sequence[Segments] | None = None,
              heatmaps: bool = True) -> SamLlmResult:
        """The reward of each image; ``heatmaps=False`` skips painting the unlikely-content maps (the scorer
        interface, used for ranking, needs only the numbers)."""
        pils = as_pil_list(images)
        if not pils:
            raise ValueError("No images to score.")
        prompts = broadcast_prompts(prompts, len(pils)) if isinstance(prompts, str) else \
            broadcast_prompts(list(prompts), len(pils))
        segs = list(segments) if segments is not None else self.segment(pils)
        if len(segs) != len(pils):
            raise ValueError(f"{len(segs)} segment sets for {len(pils)} images.")
        fallback = [False] * len(pils)
        for i, (pil, s) in enumerate(zip(pils, segs)):
            if len(s) == 0 and self.on_empty == "whole_image":
                segs[i] = whole_image_segment((pil.height, pil.width), i)
                fallback[i] = True
        need_labels = [s for s in segs if len(s) and len(s.labels) != len(s)]
        if need_labels:
            idx = [i for i, s in enumerate(segs) if len(s) and len(s.labels) != len(s)]
            label_segments([pils[i] for i in idx], [segs[i] for i in idx], [prompts[i] for i in idx],
                           clip=self.clip, captioner=self.captioner, mode=self.label_mode,
                           extra_vocabulary=self.extra_vocabulary, general_vocabulary=self.general_vocabulary)
        judged = self.judge.judge_many([list(s.labels) for s in segs], prompts)
        w_vals, u_vals, heats, details = [], [], [], []
        for i, (s, js) in enumerate(zip(segs, judged)):
            s.values = [j.score for j in js]
            areas = [float(a) for a in s.areas]
            rw = reward_from_scores(s.values, areas)
            ru = reward_from_scores(s.values)
            w_vals.append(rw)
            u_vals.append(ru)
            if heatmaps:
                heats.append(unlikely_heatmap(s.masks, s.values, tuple(s.image_size)))
            details.append({"sam_llm": rw, "sam_llm_mean": ru, "n_segments": 0 if fallback[i] else len(s),
                            "fallback": fallback[i], "prompt": prompts[i], "judge_mode": self.judge.mode,
                            "label_mode": self.label_mode, "segments": segment_table(s, js)})
        weighted = RewardScores("sam_llm", w_vals, True, VALUE_RANGE, [dict(d) for d in details])
        unweighted = RewardScores("sam_llm_mean", u_vals, True, VALUE_RANGE, [dict(d) for d in details])
        return SamLlmResult(weighted, unweighted, heats, segs, table_text(details), details)

    def __call__(self, images, prompts) -> list[RewardScores]:
        r = self.score(images, prompts, heatmaps=False)
        return [r.weighted, r.unweighted]

    def __repr__(self) -> str:
        labeller = self.clip or self.captioner
        judge = self.text_encoder if self.judge.mode == "semantic" else self.llm
        return (f"<scorer sam_llm ({self.sam.name}, {labeller.name if labeller else 'no labeller'}, "
                f"{self.judge.mode} judge {judge.name if judge is not None else '?'})>")


# ---------------------------------------------------------------- registry entry
DEFAULT_MODELS = {"sam": "sam-vit-b", "clip": "clip-vit-large-patch14", "llm": "SmolLM2-135M-Instruct",
                  "text_encoder": "all-MiniLM-L6-v2"}
# the light profile's judge: the best of the judges that run offline on the shipped graded set
# (benchmarks/llm_judge_quality.py; the README's table)
DEFAULT_JUDGE = "semantic"


def _flag(v) -> bool:
    if isinstance(v, bool):
        return v
    if str(v).strip().lower() in ("1", "true", "yes", "on"):
        return True
    if str(v).strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"Expected true or false, got {v!r}.")


OPTION_KEYS = {"points_per_side": int, "points_per_batch": int, "pred_iou_thresh": float,
               "stability_score_thresh": float, "stability_score_offset": float, "box_nms_thresh": float,
               "min_area": int, "max_segments": int, "backend": str, "label_mode": str, "judge_mode": str,
               "on_empty": str, "batch_size": int, "encoder_batch": int, "upsample_mb": int, "lowres_mb": int,
               "exact_selection": _flag}


MODEL_ROLES = {"sam": "sams", "clip": "clip", "llm": "LLM", "captioner": "blip",
               "text_encoder": "clip"}  # role -> model folder


def needed_models(models: dict[str, str] | None = None) -> tuple[dict[str, str], dict]:
    """Split ``models`` into the model each role loads (defaults filled in) and typed options, checking both
    (unknown roles, option values of the wrong type or out of range) without loading anything."""
    from ..errors import UserError
    kinds = {int: "a whole number", float: "a number", str: "text", _flag: "true or false"}
    models, options = dict(models or {}), {}
    for key in list(models):
        if key in OPTION_KEYS:
            raw = models.pop(key)
            try:
                options[key] = OPTION_KEYS[key](raw)
            except (TypeError, ValueError):
                raise UserError(f"sam_llm option {key}={raw!r}: expected {kinds[OPTION_KEYS[key]]}.") from None
    unknown = set(models) - set(MODEL_ROLES)
    if unknown:
        raise UserError(f"sam_llm has no model role {sorted(unknown)}: use sam, clip, llm, text_encoder, captioner "
                        f"(or options {', '.join(sorted(OPTION_KEYS))}).")
    # a named LLM means its judge; otherwise the light default
    options.setdefault("judge_mode", "logprob" if "llm" in models else DEFAULT_JUDGE)
    for key, allowed in (("judge_mode", JUDGE_MODES), ("on_empty", ("whole_image", "neutral")),
                         ("label_mode", ("clip", "caption"))):
        if key in options and options[key] not in allowed:
            raise UserError(f"sam_llm option {key}={options[key]!r}: use {' or '.join(allowed)}.")
    if options.get("batch_size", 1) < 1:
        raise UserError("sam_llm option batch_size must be at least 1.")
    try:
        segment_options(**options)
    except ValueError as e:
        raise UserError(f"sam_llm option: {e}") from None
    label_mode = options.pop("label_mode", None) or ("caption" if "captioner" in models and "clip" not in models
                                                     else "clip")
    if label_mode == "caption" and "captioner" not in models:
        raise UserError("sam_llm label_mode=caption needs a captioner: add sam_llm.captioner=MODEL.")
    need = {"sam": models.get("sam", DEFAULT_MODELS["sam"])}
    if options["judge_mode"] == "semantic":
        need["text_encoder"] = models.get("text_encoder", DEFAULT_MODELS["text_encoder"])
    else:
        need["llm"] = models.get("llm", DEFAULT_MODELS["llm"])
    if label_mode == "clip":
        need["clip"] = models.get("clip", DEFAULT_MODELS["clip"])
    if "captioner" in models:
        need["captioner"] = models["captioner"]
    options["label_mode"] = label_mode
    return need, options


def make_scorer(models: dict[str, str] | None = None, device=None, dtype=None, **options) -> SamLlmReward:
    """Registry factory. Roles: ``sam`` (default sam-vit-b), ``clip`` (default clip-vit-large-patch14),
    ``llm`` (default SmolLM2-135M-Instruct; loaded only for judge modes logprob/paper), ``text_encoder`` (default
    all-MiniLM-L6-v2; loaded only for the semantic judge), optional ``captioner`` (labels by captioning the crops;
    then CLIP is not loaded unless given). Judge: ``judge_mode`` when given; else ``logprob`` when an ``llm`` is
    named, else :data:`DEFAULT_JUDGE`. Option names (``points_per_side``,
    ``judge_mode``, ``on_empty``, …) may also be passed inside ``models`` (the CLI's ``--model
    points_per_side=8``); they are converted to their types."""
    from ..weights.loaders import load_captioner, load_clip, load_llm, load_sam
    need, from_models = needed_models(models)
    for key, value in from_models.items():
        options.setdefault(key, value)
    sam = load_sam(need["sam"], dtype=None, device=device)
    llm = load_llm(need["llm"], dtype=dtype, device=device) if "llm" in need else None
    text_encoder = None
    if "text_encoder" in need:
        from .similarity import load_text_encoder
        text_encoder = load_text_encoder(need["text_encoder"], dtype=dtype, device=device)
    clip = load_clip(need["clip"], dtype=dtype, device=device) if "clip" in need else None
    captioner = load_captioner(need["captioner"], dtype=dtype, device=device) if "captioner" in need else None
    return SamLlmReward(sam, llm, clip, captioner, text_encoder=text_encoder, **options)
