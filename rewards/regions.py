"""Heatmap → inpainting mask, and colour-mapped heatmap overlays (OpenCV morphology; no ComfyUI).

Works on any heatmap in 0..1 (RAHF implausibility / misalignment maps, the SAM+LLM unlikely-content map):
``[H,W]`` or ``[B,H,W]`` (torch or numpy). The pipeline, per image (RAHF paper B.6; the numbers are our
choices, the paper gives none):

1. resize the heatmap to the image size (bilinear) and Gaussian-blur it (sigma = ``blur`` % of the short side);
2. threshold: ``heat >= max(relative * max(heat), floor)``. The absolute ``floor`` makes a clean image
   (a near-zero map) give an **empty** mask instead of thresholding noise relative to a tiny maximum;
3. drop connected components (8-connectivity) whose thresholded area is below ``min_area`` % of the image;
4. dilate with an elliptical kernel of radius ``dilate`` % of the short side;
5. feather: Gaussian blur (sigma = ``feather`` % of the short side) of the binary mask, scaled so that the
   binary region stays exactly 1 and the soft band lies *outside* it; pixels further away stay exactly 0.
6. optionally split: one mask per connected region of the dilated mask (``split=True``).

Mask convention (ComfyUI MASK): 1 = repaint here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from ..errors import UserError

# % of the short side for blur / dilate / feather (a larger radius makes kernels of gigabytes), % of the area for
# min_area; and the most memory the per-region masks of ``split`` may take.
MAX_PCT = {"blur": 50.0, "dilate": 50.0, "feather": 50.0, "min_area": 100.0}
MAX_SPLIT_BYTES = 1 << 30

COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO,
             "magma": cv2.COLORMAP_MAGMA, "viridis": cv2.COLORMAP_VIRIDIS, "hot": cv2.COLORMAP_HOT}


@dataclass
class Regions:
    """Result of :func:`heatmap_to_mask` (all tensors float32 on the CPU, image size).

    ``mask``: ``[B,H,W]`` feathered union mask per image; ``binary``: ``[B,H,W]`` 0/1 before feathering;
    ``region_masks``: ``[R,H,W]`` one feathered mask per region (only with ``split``; empty otherwise);
    ``region_image``: image index of each region; ``region_areas``: binary pixel count of each region;
    ``counts[b]``: number of regions of image ``b``.
    """

    mask: torch.Tensor
    binary: torch.Tensor
    region_masks: torch.Tensor
    region_image: list[int] = field(default_factory=list)
    region_areas: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    @property
    def empty(self) -> list[bool]:
        return [bool(m.max() <= 0) for m in self.binary]


def _as_maps(heatmap) -> np.ndarray:
    if isinstance(heatmap, torch.Tensor):
        arr = heatmap.detach().float().cpu().numpy()
    else:
        arr = np.asarray(heatmap, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 4 and arr.shape[-1] in (1, 3, 4):  # an IMAGE-shaped map: take the mean over channels
        arr = arr.mean(-1)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"A heatmap must be [H,W] or [B,H,W]; got shape {tuple(arr.shape)}.")
    if not np.isfinite(arr).all():
        raise UserError("The heatmap contains NaN or infinite values: check the node that produced it.")
    return arr.astype(np.float32)


def _pct_px(pct: float, short: int) -> float:
    return max(float(pct), 0.0) / 100.0 * short


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return a
    return cv2.GaussianBlur(a, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)


def feather_mask(binary: np.ndarray, sigma: float) -> np.ndarray:
    """Soft edge *outside* a 0/1 mask: 1 inside, decaying to exactly 0 a few sigma away."""
    binary = binary.astype(np.float32)
    if sigma <= 0 or binary.max() <= 0:
        return binary
    soft = np.clip(2.0 * cv2.GaussianBlur(binary, (0, 0), sigmaX=sigma, sigmaY=sigma,
                                          borderType=cv2.BORDER_CONSTANT), 0.0, 1.0)
    out = np.maximum(binary, soft)
    out[out < 1e-3] = 0.0  # cut the Gaussian tail so "unmasked" means exactly 0
    return out


def heatmap_to_mask(heatmap, image_size: tuple[int, int] | None = None, *, blur: float = 0.5,
                    relative: float = 0.5, floor: float = 0.1, dilate: float = 3.0, feather: float = 1.0,
                    min_area: float = 0.1, split: bool = False) -> Regions:
    """Turn heatmaps into inpainting masks (see the module doc for the steps).

    ``image_size``: ``(H, W)`` of the output (defaults to the heatmap's size). ``blur``, ``dilate`` and
    ``feather`` are in % of the short side of the output; ``min_area`` in % of the output area;
    ``relative`` in 0..1 of each map's maximum; ``floor`` an absolute heat value in 0..1.
    """
    if not 0.0 <= relative <= 1.0:
        raise UserError(f"relative threshold must be in 0..1, got {relative}.")
    if not 0.0 <= floor:
        raise UserError(f"floor must be ≥ 0, got {floor}.")
    for name, value in (("blur", blur), ("dilate", dilate), ("feather", feather), ("min_area", min_area)):
        if not 0.0 <= float(value) <= MAX_PCT[name]:
            raise UserError(f"{name} must be in 0..{MAX_PCT[name]:g} (% of the image's "
                            f"{'area' if name == 'min_area' else 'short side'}), got {value}.")
    maps = _as_maps(heatmap)
    h, w = (int(image_size[0]), int(image_size[1])) if image_size else maps.shape[1:]
    if h < 1 or w < 1:
        raise UserError(f"The mask size must be at least 1×1, got {w}×{h}.")
    short = min(h, w)
    masks, binaries, regions, reg_img, reg_area, counts = [], [], [], [], [], []
    r = int(round(_pct_px(dilate, short)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)) if r > 0 else None
    min_px = _pct_px(min_area, 1) * h * w  # % of the area
    fsig = _pct_px(feather, short)
    for b, m in enumerate(maps):
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
        m = _blur(m, _pct_px(blur, short))
        peak = float(m.max())
        thr = max(relative * peak, floor)
        binary = (m >= thr).astype(np.uint8) if peak >= floor and peak > 0 else np.zeros((h, w), np.uint8)
        if binary.any() and min_px > 0:
            n, lab, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
            keep = np.zeros(n, bool)
            keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_px
            binary = keep[lab].astype(np.uint8)
        if kernel is not None and binary.any():
            binary = cv2.dilate(binary, kernel)
        binaries.append(binary.astype(np.float32))
        masks.append(feather_mask(binary, fsig))
        count = 0
        if binary.any():
            n, lab, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
            count = n - 1
            need = (len(regions) + count) * h * w * 4
            if split and need > MAX_SPLIT_BYTES:
                raise UserError(f"split would make {len(regions) + count} region masks of {w}×{h} "
                                f"({need / 2 ** 30:.1f} GB): raise min_area or relative, or turn split off.")
            if split:
                for c in range(1, n):
                    regions.append(feather_mask((lab == c).astype(np.float32), fsig))
                    reg_img.append(b)
                    reg_area.append(int(stats[c, cv2.CC_STAT_AREA]))
        counts.append(count)
    region_masks = torch.from_numpy(np.stack(regions)) if regions else torch.zeros(0, h, w)
    return Regions(torch.from_numpy(np.stack(masks)), torch.from_numpy(np.stack(binaries)), region_masks,
                   reg_img, reg_area, counts)


def overlay(image: torch.Tensor, heatmap, colormap: str = "jet", alpha: float = 0.5,
            weighted: bool = True) -> torch.Tensor:
    """IMAGE ``[B,H,W,C]`` + heatmap (``[H,W]`` or ``[B,H,W]``, 0..1, any size) → IMAGE with a colour overlay.

    ``weighted=True`` blends ``alpha * heat`` per pixel (cold areas keep the image); ``False`` blends a
    uniform ``alpha``. One heatmap is applied to every image; otherwise the counts must match.
    """
    if colormap not in COLORMAPS:
        raise ValueError(f"Unknown colormap {colormap!r}: choose from {', '.join(COLORMAPS)}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in 0..1, got {alpha}.")
    img = image if image.ndim == 4 else image.unsqueeze(0)
    b, h, w, c = img.shape
    maps = _as_maps(heatmap)
    if len(maps) not in (1, b):
        raise ValueError(f"{len(maps)} heatmaps for {b} images: give one heatmap, or one per image.")
    out = []
    base = img[..., :3].detach().float().cpu().numpy()
    for i in range(b):
        m = maps[i if len(maps) == b else 0]
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
        m = np.clip(m, 0.0, 1.0)
        color = cv2.applyColorMap((m * 255.0 + 0.5).astype(np.uint8), COLORMAPS[colormap])
        color = cv2.cvtColor(color, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        a = (alpha * m)[..., None] if weighted else np.float32(alpha)
        out.append(base[i] * (1.0 - a) + color * a)
    return torch.from_numpy(np.stack(out).astype(np.float32)).clamp(0, 1)


def detail_heatmaps(details: dict | None) -> dict[str, np.ndarray]:
    """2-D maps in a reward's per-image ``details`` (keys containing "map", e.g. RAHF's implausibility heatmap),
    as float32 arrays, implausibility first."""
    out = {}
    for k, v in (details or {}).items():
        if "map" not in str(k).lower() or isinstance(v, (str, bytes, int, float)):
            continue
        try:
            a = np.asarray(v.detach().float().cpu() if hasattr(v, "detach") else v, dtype=np.float32).squeeze()
        except Exception:
            continue
        if a.ndim == 2 and a.size > 1:
            out[k] = a
    return dict(sorted(out.items(), key=lambda kv: (0 if "implausib" in kv[0].lower() else 1)))
