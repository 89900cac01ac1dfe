"""Automatic mask generation on a segment-anything ``Sam`` (any size), batched, without pycocotools.

Algorithm (the same steps as segment-anything's ``SamAutomaticMaskGenerator`` with one crop layer, written
for throughput):

1. one image-encoder forward per image (resize longest side to the encoder size, normalise, pad);
2. a ``points_per_side`` × ``points_per_side`` grid of foreground point prompts (cell centres);
3. ``points_per_batch`` points per prompt-encoder/mask-decoder forward, three candidate masks per point;
4. drop candidates whose predicted IoU ≤ ``pred_iou_thresh`` *before* upsampling (it does not depend on the
   mask), upsample the rest to image size, compute the stability score (IoU of the mask thresholded at
   ``mask_threshold ± stability_score_offset``) and drop those below ``stability_score_thresh`` (a threshold
   of 0 switches its filter off, as in the stock generator);
5. box NMS over all surviving masks of the image (``torchvision.ops.batched_nms``, scores = predicted IoU);
6. drop masks smaller than ``min_area`` pixels, keep the best ``max_segments`` (by predicted IoU, ties by
   stability then by grid order).

Masks stay boolean tensors at image size the whole way (no RLE round trips). ``backend="stock"`` runs
segment-anything's own ``SamAutomaticMaskGenerator`` with the same settings, for comparison.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import bridge
from ..weights.loaders import ModelHandle
from .images import as_pil_list
from .types import Segments


@dataclass(frozen=True)
class SegmentOptions:
    points_per_side: int = 16
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_area: int = 0            # pixels; smaller masks are dropped
    max_segments: int = 32       # 0 = no limit
    backend: str = "batched"     # batched | stock

    def validated(self) -> "SegmentOptions":
        if self.points_per_side < 1:
            raise ValueError("points_per_side must be at least 1 (16 is a good start, 32 is SAM's default).")
        if self.points_per_batch < 1:
            raise ValueError("points_per_batch must be at least 1.")
        if not 0.0 <= self.box_nms_thresh <= 1.0:
            raise ValueError("box_nms_thresh is an IoU: give a value in 0..1.")
        if self.min_area < 0 or self.max_segments < 0:
            raise ValueError("min_area and max_segments cannot be negative (max_segments 0 = no limit).")
        if self.backend not in ("batched", "stock"):
            raise ValueError(f"Unknown segmentation backend {self.backend!r}: use 'batched' or 'stock'.")
        return self


def segment_options(**kw) -> SegmentOptions:
    """Build options from keyword arguments, ignoring keys that are not segmentation options."""
    names = set(SegmentOptions.__dataclass_fields__)
    return SegmentOptions(**{k: v for k, v in kw.items() if k in names}).validated()


def point_grid(n: int) -> np.ndarray:
    """``n*n`` points in normalised (x, y) coordinates at the cell centres, row by row."""
    off = 1.0 / (2 * n)
    side = np.linspace(off, 1 - off, n)
    xs = np.tile(side[None, :], (n, 1))
    ys = np.tile(side[:, None], (1, n))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Bool ``[N,H,W]`` → XYXY boxes ``[N,4]`` (inclusive max pixel index; empty masks give zeros)."""
    if masks.shape[0] == 0:
        return torch.zeros(0, 4, device=masks.device)
    h, w = masks.shape[-2:]
    rows = masks.any(dim=2)  # [N,H]
    cols = masks.any(dim=1)  # [N,W]
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ar_h, h).min(dim=1).values
    y2 = torch.where(rows, ar_h, -1).max(dim=1).values
    x1 = torch.where(cols, ar_w, w).min(dim=1).values
    x2 = torch.where(cols, ar_w, -1).max(dim=1).values
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    empty = ~rows.any(dim=1)
    boxes[empty] = 0
    return boxes


def stability_score(logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    inter = (logits > (mask_threshold + offset)).sum(dim=(-1, -2), dtype=torch.int64)
    union = (logits > (mask_threshold - offset)).sum(dim=(-1, -2), dtype=torch.int64)
    return inter.float() / union.clamp(min=1).float()


def _encode(sam, pil: Image.Image) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int], object]:
    """One image-encoder forward, preprocessing exactly as ``SamPredictor.set_image``."""
    from segment_anything.utils.transforms import ResizeLongestSide
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    arr = np.asarray(pil.convert("RGB"))
    resized = transform.apply_image(arr)
    device = next(sam.parameters()).device
    dtype = next(sam.parameters()).dtype
    x = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()[None].float()
    x = sam.preprocess(x).to(dtype)
    features = sam.image_encoder(x)
    return features, tuple(resized.shape[:2]), tuple(arr.shape[:2]), transform


def _upsample(sam, low_res: torch.Tensor, input_size, original_size) -> torch.Tensor:
    """Low-res mask logits ``[N,h,w]`` → logits at the original image size (as ``Sam.postprocess_masks``)."""
    size = sam.image_encoder.img_size
    m = F.interpolate(low_res[:, None].float(), (size, size), mode="bilinear", align_corners=False)
    m = m[..., : input_size[0], : input_size[1]]
    m = F.interpolate(m, original_size, mode="bilinear", align_corners=False)
    return m[:, 0]


@torch.no_grad()
def _segment_one_batched(sam, pil: Image.Image, opt: SegmentOptions):
    features, input_size, (h, w), transform = _encode(sam, pil)
    device = features.device
    pts = point_grid(opt.points_per_side) * np.array([[w, h]])
    pts_in = transform.apply_coords(pts, (h, w))
    pe = sam.prompt_encoder
    dense_pe = pe.get_dense_pe()
    thr = float(sam.mask_threshold)
    kept_masks, kept_iou, kept_stab, kept_order = [], [], [], []
    for start in range(0, len(pts_in), opt.points_per_batch):
        coords = torch.as_tensor(pts_in[start:start + opt.points_per_batch], dtype=torch.float32, device=device)
        labels = torch.ones(coords.shape[0], 1, dtype=torch.int64, device=device)
        sparse, dense = pe(points=(coords[:, None, :], labels), boxes=None, masks=None)
        low_res, iou = sam.mask_decoder(image_embeddings=features, image_pe=dense_pe,
                                        sparse_prompt_embeddings=sparse.to(features.dtype),
                                        dense_prompt_embeddings=dense.to(features.dtype), multimask_output=True)
        low_res = low_res.flatten(0, 1).float()
        iou = iou.flatten().float()
        order = torch.arange(start * 3, start * 3 + iou.numel(), device=device)
        # as the stock generator: a threshold of 0 disables the filter (keeps masks with predicted IoU <= 0 too)
        keep = iou > opt.pred_iou_thresh if opt.pred_iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
        if not keep.any():
            bridge.check_interrupt()
            continue
        logits = _upsample(sam, low_res[keep], input_size, (h, w))
        stab = stability_score(logits, thr, opt.stability_score_offset)
        keep2 = stab >= opt.stability_score_thresh if opt.stability_score_thresh > 0 else \
            torch.ones_like(stab, dtype=torch.bool)
        kept_masks.append((logits[keep2] > thr))
        kept_iou.append(iou[keep][keep2])
        kept_stab.append(stab[keep2])
        kept_order.append(order[keep][keep2])
        bridge.check_interrupt()
    if not kept_masks:
        empty = torch.zeros(0, h, w, dtype=torch.bool)
        return empty, torch.zeros(0), torch.zeros(0), (h, w)
    masks = torch.cat(kept_masks)
    iou = torch.cat(kept_iou)
    stab = torch.cat(kept_stab)
    order = torch.cat(kept_order)
    return _select(masks, iou, stab, order, opt, (h, w))


def _select(masks, iou, stab, order, opt: SegmentOptions, size):
    from torchvision.ops import batched_nms
    boxes = masks_to_boxes(masks)
    keep = batched_nms(boxes.float(), iou.float(), torch.zeros_like(iou, dtype=torch.int64), opt.box_nms_thresh)
    masks, iou, stab, order, boxes = masks[keep], iou[keep], stab[keep], order[keep], boxes[keep]
    areas = masks.sum(dim=(1, 2))
    if opt.min_area > 0:
        big = areas >= opt.min_area
        masks, iou, stab, order, boxes, areas = masks[big], iou[big], stab[big], order[big], boxes[big], areas[big]
    # deterministic ranking: predicted IoU desc, stability desc, grid order asc
    idx = sorted(range(len(iou)), key=lambda i: (-float(iou[i]), -float(stab[i]), int(order[i])))
    if opt.max_segments:
        idx = idx[: opt.max_segments]
    idx_t = torch.tensor(idx, dtype=torch.int64, device=masks.device)
    return masks[idx_t].cpu(), iou[idx_t].cpu(), areas[idx_t].cpu(), size


@torch.no_grad()
def _segment_one_stock(sam, pil: Image.Image, opt: SegmentOptions):
    from segment_anything import SamAutomaticMaskGenerator
    gen = SamAutomaticMaskGenerator(sam, points_per_side=opt.points_per_side, points_per_batch=opt.points_per_batch,
                                    pred_iou_thresh=opt.pred_iou_thresh,
                                    stability_score_thresh=opt.stability_score_thresh,
                                    stability_score_offset=opt.stability_score_offset,
                                    box_nms_thresh=opt.box_nms_thresh, output_mode="binary_mask")
    arr = np.asarray(pil.convert("RGB"))
    h, w = arr.shape[:2]
    anns = gen.generate(arr)
    if not anns:
        return torch.zeros(0, h, w, dtype=torch.bool), torch.zeros(0), torch.zeros(0), (h, w)
    masks = torch.from_numpy(np.stack([a["segmentation"] for a in anns])).bool()
    iou = torch.tensor([a["predicted_iou"] for a in anns], dtype=torch.float32)
    stab = torch.tensor([a["stability_score"] for a in anns], dtype=torch.float32)
    order = torch.arange(len(anns))
    # stock already ran NMS; only apply min_area / max_segments / ordering (NMS again is a no-op)
    return _select(masks, iou, stab, order, replace(opt, box_nms_thresh=1.0), (h, w))


def segment_images(sam: ModelHandle | torch.nn.Module, images, options: SegmentOptions | None = None,
                   **kw) -> list[Segments]:
    """Segment each image; returns one :class:`Segments` per image (``image_index`` = the image's position).

    ``images``: an IMAGE tensor, PIL image(s) or paths. ``sam``: a handle from ``load_sam`` or a ``Sam``.
    Options as :class:`SegmentOptions` or keyword arguments. An image without any segment gives an empty
    ``Segments`` (``masks`` of shape ``[0,H,W]``).
    """
    opt = (options or segment_options(**kw)).validated()
    model = sam.model if isinstance(sam, ModelHandle) else sam
    pils = as_pil_list(images)
    run = _segment_one_batched if opt.backend == "batched" else _segment_one_stock
    out = []
    with bridge.Progress(len(pils), "segmenting") as bar:
        for i, pil in enumerate(pils):
            masks, iou, areas, size = run(model, pil, opt)
            out.append(Segments(masks=masks, boxes=masks_to_boxes(masks), areas=areas.to(torch.int64),
                                scores=iou.float(), image_index=torch.full((masks.shape[0],), i, dtype=torch.int64),
                                image_size=size))
            bar.update()
    return out


def concat_segments(parts: Sequence[Segments]) -> Segments:
    """Join per-image segments into one batch (all images must share one size)."""
    if not parts:
        raise ValueError("No segments to join.")
    sizes = {tuple(p.image_size) for p in parts}
    if len(sizes) > 1:
        raise ValueError(f"Images of different sizes cannot share one SEGMENTS batch: {sorted(sizes)}.")
    lab = all(len(p.labels) == len(p) for p in parts)
    val = all(len(p.values) == len(p) for p in parts)
    return Segments(masks=torch.cat([p.masks for p in parts]), boxes=torch.cat([p.boxes for p in parts]),
                    areas=torch.cat([p.areas for p in parts]), scores=torch.cat([p.scores for p in parts]),
                    image_index=torch.cat([p.image_index for p in parts]), image_size=parts[0].image_size,
                    labels=[x for p in parts for x in p.labels] if lab else [],
                    label_scores=[x for p in parts for x in p.label_scores] if lab else [],
                    values=[x for p in parts for x in p.values] if val else [])


def split_segments(seg: Segments, n_images: int | None = None) -> list[Segments]:
    n = n_images if n_images is not None else (int(seg.image_index.max()) + 1 if len(seg) else 1)
    return [seg.for_image(i) for i in range(n)]


def whole_image_segment(size: tuple[int, int], index: int = 0) -> Segments:
    """One segment covering the whole image (the fallback when SAM finds nothing)."""
    h, w = size
    return Segments(masks=torch.ones(1, h, w, dtype=torch.bool),
                    boxes=torch.tensor([[0.0, 0.0, w - 1.0, h - 1.0]]), areas=torch.tensor([h * w]),
                    scores=torch.tensor([0.0]), image_index=torch.tensor([index]), image_size=(h, w))


def options_dict(opt: SegmentOptions) -> dict:
    return asdict(opt)
