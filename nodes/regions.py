"""Heatmap → Mask and Overlay nodes (thin adapters over rewards/regions.py)."""
from __future__ import annotations

import torch

from ..rewards.images import mask_to_batch
from ..rewards.regions import COLORMAPS, heatmap_to_mask, overlay
from ._common import CATEGORY, check_map_fits, image_hw, validated


class RewardLoopHeatmapToMask:
    DESCRIPTION = ("Turns a heatmap (RAHF implausibility/misalignment, SAM+LLM unlikely content, any MASK in 0..1) "
                   "into an inpainting mask: blur, threshold relative to the maximum with an absolute floor (a clean "
                   "image gives an empty mask), drop small regions, dilate, feather. Optionally one mask per region.")
    CATEGORY = f"{CATEGORY}/regions"
    FUNCTION = "make_mask"
    RETURN_TYPES = ("MASK", "MASK", "INT")
    RETURN_NAMES = ("mask", "regions", "region_count")
    OUTPUT_TOOLTIPS = ("Feathered mask per image at image size (1 = repaint). Empty (all 0) when nothing is flagged.",
                       "With 'split': one feathered mask per region (all images' regions in order); otherwise the "
                       "same as 'mask'.",
                       "Number of regions found over the whole batch.")

    @classmethod
    def INPUT_TYPES(cls):
        pct = {"min": 0.0, "max": 50.0, "step": 0.1}
        return {"required": {
            "heatmap": ("MASK", {"tooltip": "Heatmap in 0..1 ([B,H,W] or [H,W]); higher = more flagged."}),
            "relative": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01,
                                   "tooltip": "Threshold as a fraction of each heatmap's maximum (0.5 = half the peak)."}),
            "floor": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 1.0, "step": 0.01,
                                "tooltip": "Absolute minimum heat to flag anything: maps whose peak is below it give "
                                           "an empty mask (clean images are left alone)."}),
            "blur": ("FLOAT", dict(pct, default=0.5, tooltip="Gaussian blur of the heatmap before thresholding, "
                                                            "sigma in % of the image's short side.")),
            "dilate": ("FLOAT", dict(pct, default=3.0, tooltip="Grow the mask by this radius, in % of the short side "
                                                              "(elliptical kernel).")),
            "feather": ("FLOAT", dict(pct, default=1.0, tooltip="Soft edge outside the mask, sigma in % of the short "
                                                               "side (0 = hard edge).")),
            "min_area": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 100.0, "step": 0.01,
                                   "tooltip": "Drop flagged regions smaller than this % of the image area (before "
                                              "dilation)."}),
            "split": ("BOOLEAN", {"default": False, "tooltip": "Also output one mask per connected region."}),
        }, "optional": {
            "image": ("IMAGE", {"tooltip": "The image the heatmap belongs to: the mask is made at its size "
                                           "(default: the heatmap's size)."}),
        }}

    @validated
    def make_mask(self, heatmap, relative, floor, blur, dilate, feather, min_area, split, image=None):
        maps = mask_to_batch(heatmap)
        size = None
        if image is not None:
            size = image_hw(image)
            check_map_fits("heatmap", maps, image)
        r = heatmap_to_mask(maps, size, blur=blur, relative=relative, floor=floor,
                            dilate=dilate, feather=feather, min_area=min_area, split=split)
        regions = r.region_masks if split else r.mask
        if regions.shape[0] == 0:
            regions = torch.zeros_like(r.mask[:1])
        return (r.mask, regions, int(sum(r.counts)))


class RewardLoopHeatmapOverlay:
    DESCRIPTION = "Draws a heatmap over an image with a colour map, for previews in the graph."
    CATEGORY = f"{CATEGORY}/regions"
    FUNCTION = "draw"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The image with the colour-mapped heatmap blended over it.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Images to draw on."}),
            "heatmap": ("MASK", {"tooltip": "Heatmap in 0..1 (one for all images, or one per image; any resolution "
                                            "with the images' aspect ratio)."}),
            "colormap": (list(COLORMAPS), {"default": "jet", "tooltip": "OpenCV colour map."}),
            "alpha": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                "tooltip": "Opacity of the overlay (0 = image only, 1 = colours only)."}),
            "weighted": ("BOOLEAN", {"default": True, "tooltip": "Scale the opacity by the heat, so cold areas keep "
                                                                 "the image; off = uniform opacity."}),
        }}

    @validated
    def draw(self, image, heatmap, colormap, alpha, weighted):
        maps = mask_to_batch(heatmap)
        check_map_fits("heatmap", maps, image)
        return (overlay(image, maps, colormap, alpha, weighted),)


NODE_CLASS_MAPPINGS = {"RewardLoopHeatmapToMask": RewardLoopHeatmapToMask,
                       "RewardLoopHeatmapOverlay": RewardLoopHeatmapOverlay}
NODE_DISPLAY_NAME_MAPPINGS = {"RewardLoopHeatmapToMask": "Heatmap → Mask (RewardLoop)",
                              "RewardLoopHeatmapOverlay": "Heatmap Overlay (RewardLoop)"}
