"""PickScore (Kirstain et al. 2023, "Pick-a-Pic"), reward ``pickscore``.

    pickscore(image, prompt) = exp(logit_scale) · cos( E_img(image), E_txt(prompt) )      higher is better

``E_img`` / ``E_txt`` are the projected image / text embeddings of PickScore_v1, a CLIP ViT-H/14 fine-tuned on
Pick-a-Pic preferences and released as a Hugging Face ``CLIPModel`` folder (with its processor);
``exp(logit_scale)`` is 100 for the release, so values lie in -100..100 and typical ones in 18..24. The
authors turn several images' scores into preference probabilities with a softmax over the candidates; the ranking
is the same, and assemble ranking works on the raw scores. Texts are truncated at CLIP's 77 tokens; images go
through the folder's own processor (short side to 224 bicubic, centre crop, CLIP normalisation).
"""
from __future__ import annotations

import torch

from ..weights.loaders import ModelHandle, load_clip
from .preference import (COMMON_OPTIONS, PreferenceScorer, clip_image_embeds, clip_processor_pixels, clip_text_embeds,
                         encode_distinct, needed, tokenizer_of)

NAME = "pickscore"
DEFAULT_MODELS = {"pickscore": "pickscore-v1"}
MODEL_ROLES = {"pickscore": "clip"}  # role -> model folder
OPTION_KEYS = dict(COMMON_OPTIONS)
SCORE_NAMES = [NAME]  # the scores this reward produces


def needed_models(models: dict | None = None) -> tuple[dict[str, str], dict]:
    """The model each role loads (defaults filled in) and the typed options, checked before loading."""
    return needed(NAME, models, DEFAULT_MODELS, OPTION_KEYS)


class ClipLogitScorer(PreferenceScorer):
    """``exp(logit_scale) · cos`` of any HF CLIP model (PickScore's formula)."""

    name = NAME

    def __init__(self, clip: ModelHandle, batch_size: int = 16, keep_loaded: bool = False):
        super().__init__([clip], batch_size, keep_loaded)
        self.clip = clip
        self.scale = float(clip.model.logit_scale.detach().float().exp())
        self.value_range = (-self.scale, self.scale)

    def prepare(self, prompts):
        tok = tokenizer_of(self.clip.processor)
        return encode_distinct(prompts, lambda texts: clip_text_embeds(self.clip.model, tok, texts))

    def score_batch(self, images, prompts, prepared):
        img = clip_image_embeds(self.clip.model, clip_processor_pixels(self.clip.processor, images))
        txt = torch.stack([prepared[p] for p in prompts]).to(img.device)
        return self.scale * (img * txt).sum(-1)


def make_scorer(models: dict | None = None, device=None, dtype=None, batch_size: int = 16, keep_loaded: bool = False,
                **_ignored) -> ClipLogitScorer:
    """Registry factory. Role ``pickscore``: a CLIPModel folder (default pickscore-v1). Options: batch_size,
    keep_loaded."""
    roles, given = needed_models(models)
    opts = {"batch_size": batch_size, "keep_loaded": keep_loaded, **given}
    return ClipLogitScorer(load_clip(roles["pickscore"], dtype=dtype, device=device), **opts)
