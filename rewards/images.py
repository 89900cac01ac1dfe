"""Conversions between ComfyUI IMAGE/MASK tensors, PIL images and numpy, for every part of the pack."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image


def _check_image(t: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"Expected an IMAGE tensor [B,H,W,C], got {type(t).__name__}.")
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4:
        raise ValueError(f"IMAGE must be [B,H,W,C]; got shape {tuple(t.shape)}.")
    return t


def image_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """ComfyUI IMAGE ``[B,H,W,C]`` float 0..1 → list of RGB PIL images (gray and RGBA accepted)."""
    t = _check_image(images)
    arr = (t.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    out = []
    for a in arr:
        c = a.shape[-1]
        if c == 1:
            a = np.repeat(a, 3, axis=-1)
        elif c == 4:
            a = a[..., :3]
        elif c != 3:
            raise ValueError(f"IMAGE has {c} channels; expected 1, 3 or 4.")
        out.append(Image.fromarray(a, "RGB"))
    return out


def pil_to_image(images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
    """PIL image(s) → ComfyUI IMAGE ``[B,H,W,3]`` float32 0..1 (all must share one size)."""
    if isinstance(images, Image.Image):
        images = [images]
    arrs = [np.asarray(to_rgb(im), dtype=np.float32) / 255.0 for im in images]
    sizes = {a.shape for a in arrs}
    if len(sizes) > 1:
        raise ValueError(f"Images of different sizes cannot form one IMAGE batch: {sorted(sizes)}.")
    return torch.from_numpy(np.stack(arrs))


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode → RGB (alpha composited on white is not assumed: alpha is dropped)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA"):
        return im.convert("RGBA").convert("RGB")
    return im.convert("RGB")


def as_pil_list(images) -> list[Image.Image]:
    """Accept an IMAGE tensor, one PIL image, a list of PIL images, numpy arrays or file paths."""
    if isinstance(images, torch.Tensor):
        return image_to_pil(images)
    if isinstance(images, Image.Image):
        return [to_rgb(images)]
    if isinstance(images, np.ndarray):
        return image_to_pil(torch.from_numpy(images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)))
    out = []
    for im in images:
        if isinstance(im, Image.Image):
            out.append(to_rgb(im))
        elif isinstance(im, (str, bytes)) or hasattr(im, "__fspath__"):
            with Image.open(im) as f:
                out.append(to_rgb(f.copy()))
        else:
            out.extend(as_pil_list(im))
    return out


def mask_to_batch(mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI MASK ``[B,H,W]`` or ``[H,W]`` → float ``[B,H,W]``."""
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3:
        raise ValueError(f"MASK must be [B,H,W] or [H,W]; got shape {tuple(mask.shape)}.")
    return mask.float()


def resize_map(m: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize ``[B,H,W]`` maps to ``size=(H,W)``."""
    m = mask_to_batch(m)
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return torch.nn.functional.interpolate(m[:, None], size=size, mode=mode, **kw)[:, 0]


def broadcast_prompts(prompt: str | Iterable[str], n: int, what: str = "prompt") -> list[str]:
    """One prompt for all images, or exactly one per image (a list, or one line per image)."""
    if isinstance(prompt, str):
        lines = [p.strip() for p in prompt.split("\n") if p.strip()]
        # one line per image when the counts match; otherwise the whole text is one prompt
        prompts = lines if (len(lines) > 1 and len(lines) == n) else [" ".join(lines)]
    else:
        prompts = [str(p).strip() for p in prompt]
    if not prompts or any(not p for p in prompts):
        raise ValueError(f"The {what} is empty: type the text the image was generated from.")
    if len(prompts) == 1:
        return prompts * n
    if len(prompts) != n:
        raise ValueError(f"Got {len(prompts)} {what}s for {n} images: give one {what}, or one per image "
                         f"(one per line).")
    return prompts
