"""CLIPScore (Hessel et al. 2021, reference-free), reward ``clip_score``.

    clip_score(image, prompt) = w · max( cos( E_img(image), E_txt(prefix + prompt) ), 0 )      0..w, higher is better

with the paper's ``w = 2.5`` and prefix ``"A photo depicts"`` (both options), on CLIP ViT-L/14
(``clip-vit-large-patch14``; the paper used ViT-B/32, any HF CLIP folder works). The rescaling only stretches
cosines (which rarely exceed 0.4) towards 0..1; ``prefix=""`` scores the bare prompt (as torchmetrics does).
"""
from __future__ import annotations

import torch

from ..weights.loaders import ModelHandle, load_clip
from .preference import (COMMON_OPTIONS, PreferenceScorer, clip_image_embeds, clip_processor_pixels, clip_text_embeds,
                         encode_distinct, needed, tokenizer_of)

NAME = "clip_score"
DEFAULT_MODELS = {"clip": "clip-vit-large-patch14"}
MODEL_ROLES = {"clip": "clip"}  # role -> model folder
OPTION_KEYS = {**COMMON_OPTIONS, "weight": float, "prefix": str}
SCORE_NAMES = [NAME]  # the scores this reward produces


def needed_models(models: dict | None = None) -> tuple[dict[str, str], dict]:
    """The model each role loads (defaults filled in) and the typed options, checked before loading."""
    return needed(NAME, models, DEFAULT_MODELS, OPTION_KEYS)
WEIGHT = 2.5
PREFIX = "A photo depicts"


class CLIPScoreScorer(PreferenceScorer):
    name = NAME

    def __init__(self, clip: ModelHandle, weight: float = WEIGHT, prefix: str = PREFIX, batch_size: int = 16,
                 keep_loaded: bool = False):
        super().__init__([clip], batch_size, keep_loaded)
        if not weight > 0:
            raise ValueError(f"clip_score: weight must be > 0 (the paper uses 2.5), got {weight}.")
        self.clip, self.weight, self.prefix = clip, float(weight), str(prefix or "").strip()
        self.value_range = (0.0, self.weight)

    def text(self, prompt: str) -> str:
        return f"{self.prefix} {prompt}" if self.prefix else prompt

    def prepare(self, prompts):
        tok = tokenizer_of(self.clip.processor)
        return encode_distinct(prompts, lambda ps: clip_text_embeds(self.clip.model, tok, [self.text(p) for p in ps]))

    def score_batch(self, images, prompts, prepared):
        img = clip_image_embeds(self.clip.model, clip_processor_pixels(self.clip.processor, images))
        txt = torch.stack([prepared[p] for p in prompts]).to(img.device)
        return self.weight * (img * txt).sum(-1).clamp_min(0.0)


def make_scorer(models: dict | None = None, device=None, dtype=None, batch_size: int = 16, keep_loaded: bool = False,
                weight: float = WEIGHT, prefix: str = PREFIX, **_ignored) -> CLIPScoreScorer:
    """Registry factory. Role ``clip`` (default clip-vit-large-patch14). Options: weight (2.5), prefix ("A photo
    depicts"; empty for none), batch_size, keep_loaded."""
    roles, given = needed_models(models)
    opts = {"batch_size": batch_size, "keep_loaded": keep_loaded, "weight": weight, "prefix": prefix, **given}
    return CLIPScoreScorer(load_clip(roles["clip"], dtype=dtype, device=device), **opts)
