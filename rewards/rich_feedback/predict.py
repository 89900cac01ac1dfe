"""Batched RAHF inference: images + prompts → two heatmaps, four scores, misaligned keywords.

Pre-processing matches the RichHF re-implementation: the whole image is resized to the model's square input
(no crop; bilinear) and normalised with mean/std from the config (0.5); the prompt is cleaned with the
RichHF word split and the words joined by spaces. Heatmaps come out at the model size (384 px for the
public checkpoint) and are resized back to each image's own size. Keywords are the prompt words the T5
decoder tagged ``_0``, aligned by position with the cleaned prompt words.

``make_scorer`` registers RAHF as the ``rich`` reward (role ``rich_feedback``): four
:class:`~rewardloop.rewards.types.RewardScores` (plausibility, alignment, aesthetics, overall), each higher
is better in (0, 1), with the heatmaps and keywords in ``details``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ... import bridge
from ..images import as_pil_list, broadcast_prompts, to_rgb
from ..types import RewardScores
from . import HEATMAP_TYPES, SCORE_TYPES
from .words import clean_prompt, parse_tagged

DEFAULT_MODEL = "rahf-richhf-multihead"
MODEL_ROLES = {"rich_feedback": "rich_feedback"}  # role -> model folder


def needed_models(models: dict | None = None) -> tuple[dict[str, str], dict]:
    """The RAHF model to load (default filled in) and no options."""
    return {"rich_feedback": (models or {}).get("rich_feedback") or DEFAULT_MODEL}, {}
SCORE_RANGE = (0.0, 1.0)
SCORE_NAMES = list(SCORE_TYPES)  # the scores this reward produces, in order


@dataclass
class RichFeedback:
    """Predictions for a batch. Heatmaps per type: one ``[H_i, W_i]`` float tensor (0..1) per image."""

    heatmaps: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)
    tagged: list[str] = field(default_factory=list)
    keywords: list[list[str]] = field(default_factory=list)
    word_labels: list[list[int]] = field(default_factory=list)
    model_heatmaps: dict[str, torch.Tensor] = field(default_factory=dict)   # [B,S,S] at the model's size

    def __len__(self) -> int:
        return len(self.tagged) if self.tagged else len(next(iter(self.scores.values()), []))


def preprocess_images(images: Sequence[Image.Image], config) -> torch.Tensor:
    """PIL images → normalised ``[B,3,S,S]`` float tensor (whole image resized, no crop)."""
    s = config.image_size
    arr = np.stack([np.asarray(to_rgb(im).resize((s, s), Image.BILINEAR), dtype=np.float32) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(config.image_mean, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(config.image_std, dtype=torch.float32)[None, :, None, None]
    return (x - mean) / std


def tokenize(tokenizer, texts: Sequence[str], max_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    return enc.input_ids.to(device), enc.attention_mask.to(device)


def model_inputs(model, tokenizer, images: Sequence[Image.Image], prompts: Sequence[str], device) -> dict:
    """Everything ``RAHF.forward`` needs for a batch (also used by the trainer's evaluation)."""
    cfg = model.config
    cleaned = [clean_prompt(p) for p in prompts]
    ids, mask = tokenize(tokenizer, cleaned, cfg.max_text_tokens, device)
    out = {"pixel_values": preprocess_images(images, cfg).to(device), "input_ids": ids, "attention_mask": mask}
    if not cfg.multi_head:
        out["task_inputs"] = {n: tokenize(tokenizer, t, cfg.max_text_tokens, device)
                              for n, t in model.augmented_texts(cleaned).items()}
    return out


def _unpack(handle_or_model, tokenizer=None):
    if hasattr(handle_or_model, "model") and hasattr(handle_or_model, "processor"):
        return handle_or_model.model, handle_or_model.processor, getattr(handle_or_model, "device", None)
    if tokenizer is None:
        raise ValueError("Pass a ModelHandle from load_rich_feedback, or the model together with its tokenizer.")
    return handle_or_model, tokenizer, None


def predict(handle_or_model, images, prompts, batch_size: int = 8, keywords: bool = True,
            max_new_tokens: int | None = None, tokenizer=None, device=None, keep_loaded: bool = True,
            node_id: str | None = None) -> RichFeedback:
    """Run RAHF on ``images`` (PIL list, IMAGE tensor, paths) with one prompt or one per image."""
    model, tok, dev = _unpack(handle_or_model, tokenizer)
    pils = as_pil_list(images)
    prompts = broadcast_prompts(prompts, len(pils))
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    device = torch.device(device) if device else (dev or next(model.parameters()).device)
    model = bridge.to_device_for_use(model, device)
    res = RichFeedback(heatmaps={k: [] for k in HEATMAP_TYPES}, scores={k: [] for k in SCORE_TYPES})
    model_maps: dict[str, list[torch.Tensor]] = {k: [] for k in HEATMAP_TYPES}
    try:
        with torch.inference_mode(), bridge.Progress(len(pils), "rich feedback", node_id) as bar:
            for start in range(0, len(pils), batch_size):
                ims, prs = pils[start:start + batch_size], prompts[start:start + batch_size]
                out = model(**model_inputs(model, tok, ims, prs, device))
                for k in HEATMAP_TYPES:
                    maps = out["heatmaps"][k].float().clamp(0, 1).cpu()
                    model_maps[k].append(maps)
                    for m, im in zip(maps, ims):
                        h, w = im.size[1], im.size[0]
                        big = m if tuple(m.shape) == (h, w) else torch.nn.functional.interpolate(
                            m[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
                        res.heatmaps[k].append(big.clamp(0, 1))
                for k in SCORE_TYPES:
                    res.scores[k] += out["scores"][k].float().cpu().tolist()
                if keywords:
                    gen = model.generate_tags(out["encoder_text"], out["text_mask"], max_new_tokens)
                    texts = tok.batch_decode(gen, skip_special_tokens=True)
                else:
                    texts = [""] * len(ims)
                for t, p in zip(texts, prs):
                    kw, labels = parse_tagged(t, p) if keywords else ([], [])
                    res.tagged.append(t.strip())
                    res.keywords.append(kw)
                    res.word_labels.append(labels)
                bar.update(len(ims))
    finally:
        bridge.offload(model, keep_loaded)
    res.model_heatmaps = {k: torch.cat(v) for k, v in model_maps.items()}
    return res


def to_reward_scores(res: RichFeedback, prompts: Sequence[str] | None = None) -> list[RewardScores]:
    """Four RewardScores (plausibility first), heatmaps + keywords in each image's details."""
    details = []
    for i in range(len(res)):
        d: dict[str, Any] = {
            "misaligned_keywords": res.keywords[i] if res.keywords else [],
            "tagged_prompt": res.tagged[i] if res.tagged else "",
            "implausibility_heatmap": res.heatmaps["implausibility"][i],
            "misalignment_heatmap": res.heatmaps["misalignment"][i],
        }
        if prompts is not None:
            d["prompt"] = prompts[i]
        details.append(d)
    return [RewardScores(k, res.scores[k], True, SCORE_RANGE, [dict(d) for d in details]) for k in SCORE_TYPES]


class RichFeedbackScorer:
    """``scorer(images, prompts) -> [plausibility, alignment, aesthetics, overall]`` (higher is better, 0..1)."""

    names = list(SCORE_TYPES)

    def __init__(self, handle, batch_size: int = 8, keywords: bool = True, max_new_tokens: int | None = None,
                 keep_loaded: bool = True):
        self.handle = handle
        self.batch_size, self.keywords = int(batch_size), bool(keywords)
        self.max_new_tokens, self.keep_loaded = max_new_tokens, keep_loaded

    def __call__(self, images, prompts) -> list[RewardScores]:
        pils = as_pil_list(images)
        prompts = broadcast_prompts(prompts, len(pils))
        res = predict(self.handle, pils, prompts, self.batch_size, self.keywords, self.max_new_tokens,
                      keep_loaded=self.keep_loaded)
        return to_reward_scores(res, prompts)

    def __repr__(self) -> str:
        return f"<scorer rich feedback ({self.handle.name}): {', '.join(self.names)}>"


def make_scorer(models: dict | None = None, device=None, dtype=None, **options) -> RichFeedbackScorer:
    """The ``rich`` reward. ``models["rich_feedback"]``: catalogue key, name in models/rich_feedback or path
    (default ``rahf-richhf-multihead``). Options: batch_size, keywords, max_new_tokens, keep_loaded."""
    from .model import load_rich_feedback
    handle = load_rich_feedback(needed_models(models)[0]["rich_feedback"], dtype=dtype, device=device)
    return RichFeedbackScorer(handle, **options)
