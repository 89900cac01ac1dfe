"""Training data: reference images → pixel tensors, prompts → text-encoder states, images → cached VAE
latents, and the :class:`Batch` an objective receives.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from .base_model import SDComponents

if TYPE_CHECKING:
    from .loop import Trainer


def prepare_image(img: Image.Image, resolution: int, center_crop: bool = True) -> torch.Tensor:
    """PIL (any mode / size) → [3,R,R] in [-1,1]: RGB, shorter side resized to R, centre crop (or squash)."""
    if not isinstance(img, Image.Image):
        raise TypeError(f"Training images must be PIL images (got {type(img).__name__}).")
    if img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "LA") else img.convert("RGB")
    w, h = img.size
    if w < 1 or h < 1:
        raise ValueError("An image has zero size.")
    if center_crop:
        s = resolution / min(w, h)
        nw, nh = max(resolution, round(w * s)), max(resolution, round(h * s))
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - resolution) // 2, (nh - resolution) // 2
        img = img.crop((left, top, left + resolution, top + resolution))
    else:
        img = img.resize((resolution, resolution), Image.BICUBIC)
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return arr * 2 - 1


def check_dataset(dataset, what: str = "reference images") -> list[tuple[Image.Image, str]]:
    items = list(dataset or [])
    if not items:
        raise ValueError(f"No {what} were given: add at least one image.")
    for i, it in enumerate(items):
        if not (isinstance(it, (tuple, list)) and len(it) == 2):
            raise ValueError(f"{what} item {i} must be (PIL image, prompt).")
        if not isinstance(it[1], str) or not it[1].strip():
            raise ValueError(f"{what} item {i} has an empty prompt.")
    return items


@dataclass
class Batch:
    """One training batch. Instance samples first, then prior (class) samples when present."""
    latents: torch.Tensor            # [B,C,h,w], scaled VAE latents (x0)
    cond: torch.Tensor               # encoder hidden states [B,T,D]
    is_prior: torch.Tensor           # [B] bool
    ref_index: torch.Tensor          # [B] index into the dataset (instance) or class dataset (prior)
    added_cond: dict | None = None   # SDXL: text_embeds, time_ids
    pixels: torch.Tensor | None = None  # [B,3,R,R] in [-1,1] (only when the objective needs them)

    @property
    def instance(self) -> torch.Tensor:
        return ~self.is_prior


def _tokenize(tok, prompts: list[str], device) -> torch.Tensor:
    return tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids.to(device)


def encode_prompts(components: SDComponents, prompts: list[str], size: int | None = None):
    """Prompts → (encoder hidden states, SDXL added_cond or None). Gradients flow when the TE is trained."""
    dev = components.device
    if not components.is_sdxl:
        te = components.text_encoder
        ids = _tokenize(components.tokenizer, prompts, dev)
        return te(ids)[0], None
    hs, pooled = [], None
    for tok, te in ((components.tokenizer, components.text_encoder), (components.tokenizer_2, components.text_encoder_2)):
        out = te(_tokenize(tok, prompts, dev), output_hidden_states=True)
        hs.append(out.hidden_states[-2])
        if te is components.text_encoder_2:
            pooled = out[0]
    size = size or 1024
    time_ids = torch.tensor([[size, size, 0, 0, size, size]] * len(prompts), dtype=torch.float32, device=dev)
    return torch.cat(hs, dim=-1), {"text_embeds": pooled, "time_ids": time_ids}


@torch.no_grad()
def encode_images(components: SDComponents, pixels: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """[N,3,R,R] in [-1,1] → latent posterior parameters [N,2C,h,w] (mean ‖ logvar), for cached sampling."""
    vae = components.vae
    dtype = next(vae.parameters()).dtype
    outs = []
    for i in range(0, pixels.shape[0], batch):
        dist = vae.encode(pixels[i:i + batch].to(components.device, dtype)).latent_dist
        outs.append(torch.cat([dist.mean, dist.logvar], 1).float())
    return torch.cat(outs)


def sample_latents(params: torch.Tensor, trainer: Trainer, scale: float) -> torch.Tensor:
    mean, logvar = params.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30, 20))
    return (mean + std * trainer.randn(mean.shape)) * scale


def _build_pixels(items, res, center_crop) -> torch.Tensor:
    return torch.stack([prepare_image(img, res, center_crop) for img, _ in items])
