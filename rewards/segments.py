"""Automatic mask generation on a segment-anything ``Sam`` (any size), batched, without pycocotools.

Algorithm (the same steps as segment-anything's ``SamAutomaticMaskGenerator`` with one crop layer, written
for throughput and bounded memory):

1. image-encoder forwards over several images at once (``encoder_batch`` images per forward; 0 = as many as
   fit the memory budget, see :func:`encoder_batch_size`); each image resized (longest side = encoder size),
   normalised and padded exactly as ``SamPredictor.set_image``;
2. a ``points_per_side`` × ``points_per_side`` grid of foreground point prompts (cell centres);
3. ``points_per_batch`` points per prompt-encoder/mask-decoder forward, three candidate masks per point;
4. drop candidates whose predicted IoU ≤ ``pred_iou_thresh`` (it does not depend on the mask); measure the rest
   — stability score (IoU of the mask thresholded at ``mask_threshold ± stability_score_offset``), box, area —
   on their **low-resolution** logits (the decoder's grid, 256×256 for SAM, 4 input pixels per cell; boxes and
   areas scaled to the original pixels), and drop those below ``stability_score_thresh`` (0 switches the
   filter off, as in the stock generator). ``exact_selection=True`` measures on the logits upsampled to the
   image instead, a few candidates at a time (at most ``upsample_mb`` MiB): the stock generator's numbers, at
   the cost of one full-size upsampling per candidate. Only the numbers and the low-res logits of the
   best-scored candidates are kept (at most ``lowres_mb`` MiB; a winner whose logits were let go is
   recomputed from its decoder batch, which gives the same numbers);
5. box NMS over all surviving candidates of the image (``torchvision.ops.batched_nms``, scores = predicted IoU);
6. drop masks smaller than ``min_area`` pixels, keep the best ``max_segments`` (by predicted IoU, ties by
   stability then by grid order); only these winners are upsampled to full-resolution boolean masks (their
   areas and boxes are then counted exactly).

Memory bound per image, beyond the model and one encoder batch: one decoder batch (``points_per_batch`` × 3
low-resolution logits and the decoder's activations), ``upsample_mb`` + ``lowres_mb`` MiB, a few numbers per
candidate, and the output (``max_segments`` boolean masks of H×W bytes) — independent of the thresholds, of
the image size beyond the output and of how many candidates survive the filters. ``max_segments=0`` (no limit)
returns every surviving mask and lifts the bound.
``backend="stock"`` runs segment-anything's own ``SamAutomaticMaskGenerator`` with the same settings (for
comparison; it keeps every candidate at full resolution).
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
    encoder_batch: int = 0       # images per image-encoder forward; 0 = as many as fit ENCODER_BUDGET_MB
    upsample_mb: int = 64        # full-resolution logits upsampled at a time (MiB)
    lowres_mb: int = 64          # low-resolution logits of the best candidates kept until the winners are known
    exact_selection: bool = False  # stability/boxes/areas for the filters and NMS at full resolution (stock's numbers)

    def validated(self) -> "SegmentOptions":
        if self.points_per_side < 1:
            raise ValueError("points_per_side must be at least 1 (16 is a good start, 32 is SAM's default).")
        if self.points_per_batch < 1:
            raise ValueError("points_per_batch must be at least 1.")
        if not 0.0 <= self.box_nms_thresh <= 1.0:
            raise ValueError("box_nms_thresh is an IoU: give a value in 0..1.")
        if self.min_area < 0 or self.max_segments < 0:
            raise ValueError("min_area and max_segments cannot be negative (max_segments 0 = no limit).")
        if self.encoder_batch < 0 or self.upsample_mb < 1 or self.lowres_mb < 1:
            raise ValueError("encoder_batch cannot be negative (0 = by memory); upsample_mb and lowres_mb must be "
                             "at least 1.")
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


def _prepare(sam, pil: Image.Image):
    """Preprocessing exactly as ``SamPredictor.set_image``: ``[3,S,S]`` input, input size, original size."""
    from segment_anything.utils.transforms import ResizeLongestSide
    transform = ResizeLongestSide(sam.image_encoder.img_size)
    arr = np.asarray(pil.convert("RGB"))
    resized = transform.apply_image(arr)
    device = next(sam.parameters()).device
    dtype = next(sam.parameters()).dtype
    x = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()[None].float()
    x = sam.preprocess(x).to(dtype)[0]
    return x, tuple(resized.shape[:2]), tuple(arr.shape[:2]), transform


def _encode(sam, pil: Image.Image) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int], object]:
    """One image-encoder forward for one image."""
    x, input_size, size, transform = _prepare(sam, pil)
    return sam.image_encoder(x[None]), input_size, size, transform


ENCODER_BUDGET_MB = {"cpu": 2048, "cuda": 0}   # cuda: 0 = half of the free memory


def encoder_batch_size(sam, opt: SegmentOptions | None = None) -> int:
    """Images per image-encoder forward: ``opt.encoder_batch`` when set, else as many as fit the budget
    (the encoder's attention maps dominate: heads × tokens² floats per global block, kept a few at a time)."""
    if opt is not None and opt.encoder_batch:
        return opt.encoder_batch
    enc = sam.image_encoder
    param = next(sam.parameters())
    tokens = (enc.img_size // enc.patch_embed.proj.kernel_size[0]) ** 2
    heads = enc.blocks[0].attn.num_heads
    width = enc.patch_embed.proj.out_channels
    per_image = param.element_size() * (3 * heads * tokens * tokens + 24 * tokens * width)
    budget = ENCODER_BUDGET_MB.get(param.device.type, 1024) * 2 ** 20
    if param.device.type == "cuda" and not budget:
        try:
            budget = torch.cuda.mem_get_info(param.device)[0] // 2
        except Exception:  # pragma: no cover
            budget = 2 * 2 ** 30
    return int(max(1, min(16, budget // max(per_image, 1))))


def _upsample(sam, low_res: torch.Tensor, input_size, original_size) -> torch.Tensor:
    """Low-res mask logits ``[N,h,w]`` → logits at the original image size (as ``Sam.postprocess_masks``)."""
    size = sam.image_encoder.img_size
    m = F.interpolate(low_res[:, None].float(), (size, size), mode="bilinear", align_corners=False)
    m = m[..., : input_size[0], : input_size[1]]
    m = F.interpolate(m, original_size, mode="bilinear", align_corners=False)
    return m[:, 0]


class _LowResStore:
    """Low-resolution logits of the best candidates (by predicted IoU, stability, grid order), at most
    ``max_bytes``; the rest are let go and recomputed if they win."""

    def __init__(self, max_bytes: int):
        import heapq
        self._heapq = heapq
        self.max_bytes = max_bytes
        self.bytes = 0
        self.heap: list = []          # (iou, stab, -order, order): the worst candidate on top
        self.logits: dict[int, torch.Tensor] = {}

    def add(self, order: int, iou: float, stab: float, logits: torch.Tensor) -> None:
        item = (iou, stab, -order, order)
        size = logits.numel() * logits.element_size()
        while self.heap and self.bytes + size > self.max_bytes:
            if self.heap[0] >= item:   # the new one is the worst: do not keep it
                return
            worst = self._heapq.heappop(self.heap)
            self.bytes -= size
            del self.logits[worst[3]]
        if self.bytes + size > self.max_bytes:
            return
        self._heapq.heappush(self.heap, item)
        self.logits[order] = logits.clone()
        self.bytes += size


def _decode(sam, features, dense_pe, coords):
    """One prompt-encoder/mask-decoder forward: low-res logits ``[P*3,h,w]`` and predicted IoU ``[P*3]``."""
    labels = torch.ones(coords.shape[0], 1, dtype=torch.int64, device=coords.device)
    sparse, dense = sam.prompt_encoder(points=(coords[:, None, :], labels), boxes=None, masks=None)
    low_res, iou = sam.mask_decoder(image_embeddings=features, image_pe=dense_pe,
                                    sparse_prompt_embeddings=sparse.to(features.dtype),
                                    dense_prompt_embeddings=dense.to(features.dtype), multimask_output=True)
    return low_res.flatten(0, 1).float(), iou.flatten().float()


def _measure(sam, low_res, input_size, size, thr: float, opt: SegmentOptions):
    """Stability, XYXY boxes (original pixels) and areas of candidates from their low-res logits ``[K,h,w]``.

    ``exact_selection``: from the logits upsampled to the image (the stock generator's numbers, a few candidates
    at a time). Otherwise from the low-res logits themselves (the decoder's grid, 4 input pixels per cell,
    cropped to the image's part of the padded input), with boxes and areas scaled to the original pixels."""
    h, w = size
    if opt.exact_selection:
        per = 4 * (h * w + sam.image_encoder.img_size ** 2 + low_res[0].numel())
        chunk = max(1, (opt.upsample_mb * 2 ** 20) // per)
        parts = []
        for c in range(0, low_res.shape[0], chunk):
            logits = _upsample(sam, low_res[c:c + chunk], input_size, size)
            masks = logits > thr
            parts.append((stability_score(logits, thr, opt.stability_score_offset), masks_to_boxes(masks),
                          masks.sum(dim=(1, 2)).float()))
            del logits, masks
        return tuple(torch.cat(x) for x in zip(*parts))
    lh = min(low_res.shape[-2], -(-input_size[0] * low_res.shape[-2] // sam.image_encoder.img_size))
    lw = min(low_res.shape[-1], -(-input_size[1] * low_res.shape[-1] // sam.image_encoder.img_size))
    lr = low_res[:, :lh, :lw]
    stab = stability_score(lr, thr, opt.stability_score_offset)
    masks = lr > thr
    sy = sam.image_encoder.img_size / low_res.shape[-2] * h / input_size[0]   # original pixels per cell
    sx = sam.image_encoder.img_size / low_res.shape[-1] * w / input_size[1]
    b = masks_to_boxes(masks)
    boxes = torch.stack([b[:, 0] * sx, b[:, 1] * sy, ((b[:, 2] + 1) * sx - 1).clamp(max=w - 1),
                         ((b[:, 3] + 1) * sy - 1).clamp(max=h - 1)], dim=1)
    boxes[~masks.flatten(1).any(1)] = 0
    return stab, boxes, masks.sum(dim=(1, 2)).float() * (sx * sy)


@torch.no_grad()
def _segment_features(sam, features, input_size, size, transform, opt: SegmentOptions):
    """Steps 2–6 for one image whose encoder features (``[1,C,h,w]``) are known."""
    h, w = size
    device = features.device
    pts = point_grid(opt.points_per_side) * np.array([[w, h]])
    pts_in = torch.as_tensor(transform.apply_coords(pts, (h, w)), dtype=torch.float32, device=device)
    dense_pe = sam.prompt_encoder.get_dense_pe()
    thr = float(sam.mask_threshold)
    # max_segments == 0 asks for every surviving mask: then every candidate's low-res logits are kept
    store = _LowResStore(opt.lowres_mb * 2 ** 20 if opt.max_segments else float("inf"))
    kept: dict[str, list] = {"iou": [], "stab": [], "order": [], "box": [], "area": [], "batch": []}
    for b, start in enumerate(range(0, len(pts_in), opt.points_per_batch)):
        low_res, iou = _decode(sam, features, dense_pe, pts_in[start:start + opt.points_per_batch])
        order = torch.arange(start * 3, start * 3 + iou.numel(), device=device)
        # as the stock generator: a threshold of 0 disables the filter (keeps masks with predicted IoU <= 0 too)
        keep = iou > opt.pred_iou_thresh if opt.pred_iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
        sel = keep.nonzero()[:, 0]
        if len(sel):
            stab, boxes, areas = _measure(sam, low_res[sel], input_size, size, thr, opt)
            good = stab >= opt.stability_score_thresh if opt.stability_score_thresh > 0 else \
                torch.ones_like(stab, dtype=torch.bool)
            sel, stab = sel[good], stab[good]
            kept["iou"].append(iou[sel])
            kept["stab"].append(stab)
            kept["order"].append(order[sel])
            kept["box"].append(boxes[good])
            kept["area"].append(areas[good])
            kept["batch"].append(torch.full((len(sel),), b, dtype=torch.int64, device=device))
            for j, k in enumerate(sel.tolist()):
                store.add(int(order[k]), float(iou[k]), float(stab[j]), low_res[k])
        del low_res
        bridge.check_interrupt()
    cat = {k: torch.cat(v) for k, v in kept.items()} if kept["iou"] else {}
    if not cat or not len(cat["iou"]):
        return torch.zeros(0, h, w, dtype=torch.bool), torch.zeros(0), torch.zeros(0, dtype=torch.int64), size
    winners = _select(cat, opt)
    masks = _winner_masks(sam, features, dense_pe, pts_in, cat, winners, store, input_size, size, thr, opt)
    return masks, cat["iou"][winners].cpu(), masks.sum(dim=(1, 2)), size


def _winner_masks(sam, features, dense_pe, pts_in, cat, winners, store, input_size, size, thr, opt):
    """Full-resolution boolean masks of the winners, from kept low-res logits or their recomputed batch."""
    orders = [int(cat["order"][i]) for i in winners]
    low = {o: store.logits[o] for o in orders if o in store.logits}
    for b in sorted({int(cat["batch"][i]) for i, o in zip(winners, orders) if o not in low}):
        start = b * opt.points_per_batch
        low_res, _ = _decode(sam, features, dense_pe, pts_in[start:start + opt.points_per_batch])
        for o in orders:
            if o not in low and start * 3 <= o < start * 3 + low_res.shape[0]:
                low[o] = low_res[o - start * 3].clone()
    h, w = size
    out = torch.zeros(len(orders), h, w, dtype=torch.bool)
    chunk = max(1, (opt.upsample_mb * 2 ** 20) // (4 * (h * w + sam.image_encoder.img_size ** 2)))
    for c in range(0, len(orders), chunk):
        part = torch.stack([low[o] for o in orders[c:c + chunk]])
        out[c:c + len(part)] = (_upsample(sam, part, input_size, size) > thr).cpu()
    return out


def _select(cat: dict, opt: SegmentOptions) -> torch.Tensor:
    """Indices of the winners: box NMS, ``min_area``, best ``max_segments`` by (IoU, stability, grid order)."""
    from torchvision.ops import batched_nms
    iou = cat["iou"]
    keep = batched_nms(cat["box"].float(), iou.float(), torch.zeros_like(iou, dtype=torch.int64), opt.box_nms_thresh)
    if opt.min_area > 0:
        keep = keep[cat["area"][keep] >= opt.min_area]
    # deterministic ranking: predicted IoU desc, stability desc, grid order asc
    iou_l, stab_l, order_l = iou.tolist(), cat["stab"].tolist(), cat["order"].tolist()
    idx = sorted(keep.tolist(), key=lambda i: (-iou_l[i], -stab_l[i], order_l[i]))
    if opt.max_segments:
        idx = idx[: opt.max_segments]
    return torch.tensor(idx, dtype=torch.int64, device=iou.device)


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
    cat = {"iou": torch.tensor([a["predicted_iou"] for a in anns], dtype=torch.float32),
           "stab": torch.tensor([a["stability_score"] for a in anns], dtype=torch.float32),
           "order": torch.arange(len(anns)), "box": masks_to_boxes(masks), "area": masks.sum(dim=(1, 2))}
    # stock already ran NMS; only apply min_area / max_segments / ordering (NMS again is a no-op)
    win = _select(cat, replace(opt, box_nms_thresh=1.0))
    return masks[win], cat["iou"][win], cat["area"][win], (h, w)


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
    out = []
    with bridge.Progress(len(pils), "segmenting") as bar:
        if opt.backend == "stock":
            for pil in pils:
                out.append(_segments(_segment_one_stock(model, pil, opt), len(out)))
                bar.update()
            return out
        step = encoder_batch_size(model, opt)
        for s in range(0, len(pils), step):
            prepared = [_prepare(model, pil) for pil in pils[s:s + step]]
            with torch.no_grad():
                feats = model.image_encoder(torch.stack([p[0] for p in prepared]))
            for j, (_, input_size, size, transform) in enumerate(prepared):
                got = _segment_features(model, feats[j:j + 1], input_size, size, transform, opt)
                out.append(_segments(got, len(out)))
                bar.update()
            del feats
    return out


def _segments(got, index: int) -> Segments:
    masks, iou, areas, size = got
    return Segments(masks=masks, boxes=masks_to_boxes(masks), areas=areas.to(torch.int64), scores=iou.float(),
                    image_index=torch.full((masks.shape[0],), index, dtype=torch.int64), image_size=size)


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
