"""Conversions between ComfyUI IMAGE/MASK tensors, PIL images and numpy, for every part of the pack.

Every image that enters the pack passes here, so the checks live here once: image files are opened with
:func:`open_image` (unreadable, truncated or non-image files and decompression bombs give one clear line), and
IMAGE / MASK tensors are refused when empty or when they hold NaN or infinite values (such an image would
otherwise score like a normal one and could win a ranking).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import UserError, first_line

MAX_PIXELS_ENV = "REWARDLOOP_MAX_IMAGE_PIXELS"


def check_finite(t, what: str = "IMAGE") -> None:
    """Refuse tensors / arrays with NaN or infinite values (one line naming the first bad batch item)."""
    if isinstance(t, torch.Tensor):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            flat = (~torch.isfinite(t)).reshape(t.shape[0], -1).any(1) if t.ndim >= 2 else None
            where = f" (batch item {int(flat.nonzero()[0])})" if flat is not None else ""
            raise UserError(f"The {what} contains NaN or infinite values{where}: check the node or file that "
                            f"produced it (a VAE decode in fp16 can overflow; try fp32 or bf16).")
    elif isinstance(t, np.ndarray) and t.dtype.kind == "f" and not np.isfinite(t).all():
        raise UserError(f"The {what} contains NaN or infinite values: check the file or node that produced it.")


def _check_image(t: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"Expected an IMAGE tensor [B,H,W,C], got {type(t).__name__}.")
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4:
        raise UserError(f"IMAGE must be [B,H,W,C]; got shape {tuple(t.shape)}.")
    if t.shape[0] == 0:
        raise UserError("No images: the IMAGE batch is empty; connect a node that outputs at least one image.")
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise UserError(f"The IMAGE has no pixels (shape {tuple(t.shape)}): check the node that produced it.")
    check_finite(t)
    return t


def max_image_pixels() -> int | None:
    """The largest image (in pixels) opened from a file: ``REWARDLOOP_MAX_IMAGE_PIXELS`` (0 = no limit), else
    Pillow's decompression-bomb limit (about 89 megapixels)."""
    env = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if env:
        try:
            v = int(float(env))
        except ValueError:
            raise UserError(f"{MAX_PIXELS_ENV}={env!r} is not a number: give a pixel count such as 200000000 "
                            "(0 = no limit).") from None
        return v if v > 0 else None
    return Image.MAX_IMAGE_PIXELS


def _bomb_error(path, size_text: str, limit: int | None, need: int) -> UserError:
    allow = max(need, 2 * (limit or 0))
    return UserError(f"Image {path} is {size_text}, more than the decompression-bomb limit of {limit:,} pixels; if "
                     f"you trust the file, allow it with {MAX_PIXELS_ENV}={allow} (0 = no limit).")


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file as RGB, or raise one :class:`UserError` line that names the file and
    says what to do (missing, not a file, not an image, truncated/corrupt, larger than the pixel limit)."""
    p = Path(os.fspath(path))
    if not p.exists():
        raise UserError(f"Image {p} does not exist" + (" (a broken symbolic link)" if p.is_symlink() else "") + ".")
    if not p.is_file():
        raise UserError(f"Image {p} is not a regular file: give image files or folders of them.")
    limit = max_image_pixels()
    old = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if os.environ.get(MAX_PIXELS_ENV, "").strip():
                Image.MAX_IMAGE_PIXELS = limit  # the user raised (or lowered) the limit on purpose
            with Image.open(p) as f:
                w, h = f.size
                if limit is not None and w * h > limit:
                    raise _bomb_error(p, f"{w}×{h} = {w * h:,} pixels", limit, w * h)
                if w == 0 or h == 0:
                    raise UserError(f"Image {p} has no pixels ({w}×{h}).")
                f.load()
                if f.mode == "F":  # float TIFF and the like: refuse NaN/inf before the conversion hides them
                    check_finite(np.asarray(f), f"image {p}")
                im = to_rgb(f)
                if im is f:
                    im = f.copy()
    except UserError:
        raise
    except Image.DecompressionBombError as e:  # over twice Pillow's own limit: size known only from the message
        import re
        m = re.search(r"\((\d+) pixels\)", str(e))
        need = int(m.group(1)) if m else 0
        raise _bomb_error(p, f"{need:,} pixels" if need else "very large", limit, need) from None
    except PermissionError:
        raise UserError(f"Image {p} cannot be read (permission denied).") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        if p.stat().st_size == 0:
            why = "empty (0 bytes)"
        elif isinstance(e, Image.UnidentifiedImageError):
            why = "not an image file (or in a format Pillow cannot read)"
        else:
            why = f"damaged or truncated ({first_line(e)})"
        raise UserError(f"Image {p} is {why}: re-save it as PNG/JPEG/WebP or remove it.") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old
    return im


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
            raise UserError(f"IMAGE has {c} channels; expected 1, 3 or 4.")
        out.append(Image.fromarray(a, "RGB"))
    return out


def pil_to_image(images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
    """PIL image(s) → ComfyUI IMAGE ``[B,H,W,3]`` float32 0..1 (all must share one size)."""
    if isinstance(images, Image.Image):
        images = [images]
    if not len(images):
        raise UserError("No images to convert: give at least one image.")
    arrs = [np.asarray(to_rgb(im), dtype=np.float32) / 255.0 for im in images]
    sizes = {a.shape for a in arrs}
    if len(sizes) > 1:
        raise UserError(f"Images of different sizes cannot form one IMAGE batch: {sorted(sizes)}.")
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
        check_finite(images)
        return image_to_pil(torch.from_numpy(images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)))
    out = []
    for im in images:
        if isinstance(im, Image.Image):
            out.append(to_rgb(im))
        elif isinstance(im, (str, bytes)) or hasattr(im, "__fspath__"):
            out.append(open_image(im.decode() if isinstance(im, bytes) else im))
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
        raise UserError(f"MASK must be [B,H,W] or [H,W]; got shape {tuple(mask.shape)}.")
    if mask.shape[0] == 0:
        raise UserError("The MASK batch is empty: connect a node that outputs at least one mask.")
    mask = mask.float()
    check_finite(mask, "MASK")
    return mask


def resize_map(m: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize ``[B,H,W]`` maps to ``size=(H,W)``."""
    m = mask_to_batch(m)
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return torch.nn.functional.interpolate(m[:, None], size=size, mode=mode, **kw)[:, 0]


def broadcast_prompts(prompt: str | Iterable[str], n: int, what: str = "prompt") -> list[str]:
    """One prompt for all images, or exactly one per image (a list, or one line per image).

    A text with several lines must have exactly one line per image: a line count that does not match the batch
    is an error (joining the lines silently would score every image against a wrong prompt)."""
    if n < 1:
        raise UserError("No images: the batch is empty; connect a node that outputs at least one image.")
    if isinstance(prompt, str):
        prompts = [p.strip() for p in prompt.split("\n") if p.strip()]
        if len(prompts) > 1 and len(prompts) != n:
            raise UserError(f"The {what} has {len(prompts)} lines for {n} image{'s' if n != 1 else ''}: write one "
                            f"{what} on a single line for all images, or exactly one line per image.")
    else:
        prompts = [str(p).strip() for p in prompt]
    if not prompts or any(not p for p in prompts):
        raise UserError(f"The {what} is empty: type the text the image was generated from.")
    if len(prompts) == 1:
        return prompts * n
    if len(prompts) != n:
        raise UserError(f"Got {len(prompts)} {what}s for {n} images: give one {what}, or one per image "
                        f"(one per line).")
    return prompts
