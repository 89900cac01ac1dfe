"""LAION aesthetic predictor v2 ("improved aesthetic predictor", Schuhmann 2022), reward ``aesthetic``.

    aesthetic(image) = MLP( normalize( E_img(image) ) )            about 1..10 (AVA-style rating), higher is better

``E_img`` is CLIP ViT-L/14's projected image embedding (768-d; ``clip-vit-large-patch14``), L2-normalised; the
MLP is the released ``sac+logos+ava1-l14-linearMSE.pth``, trained with an MSE loss on SAC + LAION-Logos + AVA
ratings. The prompt is not used. The scale is the training ratings' (1..10) but the head is linear, so values
outside it are possible; typical photos score 4..7.

Released layout of the MLP (a ``torch.nn.Sequential`` called ``layers``): ``layers.0`` Linear(768, 1024),
``layers.1`` Dropout(0.2), ``layers.2`` Linear(1024, 128), ``layers.3`` Dropout(0.2), ``layers.4`` Linear(128, 64),
``layers.5`` Dropout(0.1), ``layers.6`` Linear(64, 16), ``layers.7`` Linear(16, 1) — no activations (the ReLUs are
commented out in the release), so the state dict holds ``layers.{0,2,4,6,7}.{weight,bias}``. :class:`ScoreMLP`
rebuilds whatever Linear indices a file holds (ImageReward's head has the same layout over BLIP text features).
"""
from __future__ import annotations

import os
import re

import torch

from ..weights.cache import cached
from ..weights.loaders import ModelHandle, _dtype_device, _place, _resolve, load_clip
from ..weights.safe_load import load_state_dict
from .preference import (COMMON_OPTIONS, PreferenceScorer, clip_image_embeds, clip_processor_pixels,
                         needed)

NAME = "aesthetic"
DEFAULT_MODELS = {"aesthetic": "laion-aesthetic-v2", "clip": "clip-vit-large-patch14"}
MODEL_ROLES = {"aesthetic": "rewards", "clip": "clip"}  # role -> model folder
OPTION_KEYS = dict(COMMON_OPTIONS)
SCORE_NAMES = [NAME]  # the scores this reward produces


def needed_models(models: dict | None = None) -> tuple[dict[str, str], dict]:
    """The model each role loads (defaults filled in) and the typed options, checked before loading."""
    return needed(NAME, models, DEFAULT_MODELS, OPTION_KEYS)


class ScoreMLP(torch.nn.Module):
    """A stack of Linear layers at the indices the state dict names (gaps are dropout slots, identity at eval)."""

    def __init__(self, sizes: dict[int, tuple[int, int]]):
        super().__init__()
        last = max(sizes)
        mods = [torch.nn.Linear(*sizes[i]) if i in sizes else torch.nn.Dropout(0.0) for i in range(last + 1)]
        self.layers = torch.nn.Sequential(*mods)

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> "ScoreMLP":
        """Build from ``layers.N.weight/bias`` keys (``mlp.``/``model.`` prefixes tolerated; other keys ignored)."""
        prefix = "layers."
        clean = {}
        for k, v in sd.items():
            k = re.sub(r"^(module\.|model\.|mlp\.)+", "", k)
            if k.startswith(prefix):
                clean[k] = v
        sizes = {}
        for k, v in clean.items():
            m = re.match(rf"{re.escape(prefix)}(\d+)\.weight$", k)
            if m and v.ndim == 2:
                sizes[int(m.group(1))] = (int(v.shape[1]), int(v.shape[0]))
        if not sizes or 0 not in sizes:
            raise ValueError("Not an aesthetic/ImageReward MLP head: no 'layers.0.weight' Linear layer "
                             f"(keys: {sorted(sd)[:4]}).")
        order = sorted(sizes)
        for a, b in zip(order, order[1:]):
            if sizes[a][1] != sizes[b][0]:
                raise ValueError(f"MLP head layers {a} and {b} do not chain ({sizes[a]} then {sizes[b]}).")
        if sizes[order[-1]][1] != 1:
            raise ValueError(f"The MLP head must end in one output, got {sizes[order[-1]][1]}.")
        mlp = cls(sizes)
        mlp.load_state_dict(clean, strict=True)
        return mlp.eval()


def load_aesthetic(name: str | os.PathLike, dtype=None, device=None) -> ModelHandle:
    """The aesthetic MLP head (``.pth`` weights-only or ``.safetensors``) by key, name in ``models/rewards``, path."""
    r = _resolve(name, "rewards")
    dtype, device = _dtype_device(dtype or "fp32", device)

    def load():
        mlp = ScoreMLP.from_state_dict(load_state_dict(r.path))
        return ModelHandle("aesthetic", str(name), r.path, _place(mlp.to(dtype), device), None, dtype, device)

    return cached("aesthetic", r.path, load, dtype, device)


class AestheticScorer(PreferenceScorer):
    name = NAME
    value_range = (1.0, 10.0)
    needs_prompt = False

    def __init__(self, head: ModelHandle, clip: ModelHandle, batch_size: int = 16, keep_loaded: bool = False):
        super().__init__([clip, head], batch_size, keep_loaded)
        self.head, self.clip = head, clip
        dim = int(clip.model.config.projection_dim)
        if head.model.in_features != dim:
            raise ValueError(f"The aesthetic head {head.name} expects {head.model.in_features}-d CLIP image embeddings "
                             f"but {clip.name} gives {dim}-d: use the CLIP it was trained on (clip-vit-large-patch14 "
                             f"for the released LAION head).")

    def score_batch(self, images, prompts, prepared):
        emb = clip_image_embeds(self.clip.model, clip_processor_pixels(self.clip.processor, images))
        p = next(self.head.model.parameters())
        return self.head.model(emb.to(p.device, p.dtype)).float()[:, 0]


def make_scorer(models: dict | None = None, device=None, dtype=None, batch_size: int = 16, keep_loaded: bool = False,
                **_ignored) -> AestheticScorer:
    """Registry factory. Roles: ``aesthetic`` (the MLP head, default laion-aesthetic-v2), ``clip`` (default
    clip-vit-large-patch14). Options: batch_size, keep_loaded."""
    roles, given = needed_models(models)
    opts = {"batch_size": batch_size, "keep_loaded": keep_loaded, **given}
    clip = load_clip(roles["clip"], dtype=dtype, device=device)
    head = load_aesthetic(roles["aesthetic"], device=device)
    return AestheticScorer(head, clip, **opts)
