"""Heatmap → mask (OpenCV morphology) and overlays, library and nodes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rewardloop.rewards.regions import heatmap_to_mask, overlay


def disk(h, w, cy, cx, r, value=1.0):
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).float() * value


def bbox(m):
    ys, xs = torch.nonzero(m > 0, as_tuple=True)
    return int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())


def test_empty_and_clean_heatmaps_give_empty_masks():
    for heat in (torch.zeros(2, 32, 40), torch.full((32, 40), 0.05), torch.rand(32, 40) * 0.09):
        r = heatmap_to_mask(heat, floor=0.1)
        assert r.mask.max() == 0 and r.binary.max() == 0 and all(r.empty)
        assert sum(r.counts) == 0
    # the same faint map is flagged once the floor is below its peak
    assert heatmap_to_mask(torch.full((32, 40), 0.05), floor=0.01, blur=0).binary.min() == 1


def test_one_blob_gives_one_dilated_region_of_the_expected_size():
    heat = disk(100, 100, 50, 50, 10)
    r = heatmap_to_mask(heat, blur=0, relative=0.5, floor=0.1, dilate=5.0, feather=0.0, min_area=0.0)
    assert r.counts == [1]
    # 5 % of the 100 px short side = 5 px radius: the disk of radius 10 grows to radius 15
    assert bbox(r.binary[0]) == (35, 65, 35, 65)
    area = float(r.binary.sum())
    assert abs(area - math.pi * 15 ** 2) / (math.pi * 15 ** 2) < 0.05
    assert torch.equal(r.mask, r.binary)  # no feather
    no_dil = heatmap_to_mask(heat, blur=0, dilate=0, feather=0, min_area=0)
    assert torch.equal(no_dil.binary[0], heat)


def test_feather_band_lies_outside_the_region_and_far_pixels_are_exactly_zero():
    heat = disk(100, 100, 50, 50, 10)
    r = heatmap_to_mask(heat, blur=0, dilate=0, feather=2.0, min_area=0)
    m, b = r.mask[0], r.binary[0]
    assert torch.all(m[b > 0] == 1.0)
    band = (m > 0) & (m < 1)
    assert band.any() and not (band & (b > 0)).any()
    assert m[0, 0] == 0.0 and m[50, 80] == 0.0  # 30 px away: exactly 0


def test_min_area_filter_and_split():
    heat = torch.zeros(100, 100)
    heat[10:13, 10:13] = 1.0        # 9 px = 0.09 % of the image
    heat[50:70, 50:70] = 1.0        # 400 px = 4 %
    keep_all = heatmap_to_mask(heat, blur=0, dilate=0, feather=0, min_area=0, split=True)
    assert keep_all.counts == [2] and keep_all.region_masks.shape == (2, 100, 100)
    assert keep_all.region_image == [0, 0] and sorted(keep_all.region_areas) == [9, 400]
    assert float((keep_all.region_masks[0] * keep_all.region_masks[1]).sum()) == 0  # disjoint
    big = heatmap_to_mask(heat, blur=0, dilate=0, feather=0, min_area=1.0, split=True)
    assert big.counts == [1] and big.region_areas == [400]
    assert big.binary[0, 11, 11] == 0 and big.binary[0, 60, 60] == 1
    none = heatmap_to_mask(heat, blur=0, dilate=0, feather=0, min_area=10.0, split=True)
    assert none.counts == [0] and none.region_masks.shape[0] == 0 and none.mask.max() == 0
    # dilation merges two close blobs into one region
    near = torch.zeros(100, 100)
    near[40:50, 40:50] = 1
    near[40:50, 53:63] = 1
    assert heatmap_to_mask(near, blur=0, dilate=0, feather=0, min_area=0).counts == [2]
    assert heatmap_to_mask(near, blur=0, dilate=3, feather=0, min_area=0).counts == [1]


def test_relative_threshold_keeps_only_the_strong_blob():
    heat = disk(64, 64, 16, 16, 6, 1.0) + disk(64, 64, 48, 48, 6, 0.3)
    r = heatmap_to_mask(heat, blur=0, relative=0.5, dilate=0, feather=0, min_area=0)
    assert r.counts == [1] and r.binary[0, 16, 16] == 1 and r.binary[0, 48, 48] == 0
    low = heatmap_to_mask(heat, blur=0, relative=0.2, dilate=0, feather=0, min_area=0)
    assert low.counts == [1 + 1]


def test_output_shape_is_image_shape():
    heat = torch.zeros(3, 24, 32)
    heat[1, 8:16, 8:16] = 1
    r = heatmap_to_mask(heat, (96, 128), min_area=0, split=True)
    assert r.mask.shape == (3, 96, 128) and r.binary.shape == (3, 96, 128)
    assert r.region_masks.shape[1:] == (96, 128) and r.region_image == [1] and r.counts == [0, 1, 0]
    assert heatmap_to_mask(np.zeros((24, 32), np.float32)).mask.shape == (1, 24, 32)
    with pytest.raises(ValueError, match="NaN"):
        heatmap_to_mask(torch.full((8, 8), float("nan")))
    with pytest.raises(ValueError, match=r"\[H,W\] or \[B,H,W\]"):
        heatmap_to_mask(torch.zeros(8))


def test_overlay():
    img = torch.rand(2, 20, 30, 3)
    heat = torch.zeros(10, 15)
    out = overlay(img, heat, "jet", 0.5)
    assert out.shape == img.shape
    assert torch.allclose(out, img, atol=1e-6)  # cold everywhere: weighted overlay keeps the image
    hot = overlay(img, torch.ones(2, 20, 30), "jet", 1.0)
    assert torch.allclose(hot[0, 0, 0], torch.tensor([0.5, 0.0, 0.0]), atol=0.01)  # jet(255) is dark red
    uni = overlay(img, heat, "jet", 0.5, weighted=False)
    assert not torch.allclose(uni, img)
    with pytest.raises(ValueError, match="colormap"):
        overlay(img, heat, "rainbowish")
    with pytest.raises(ValueError, match="3 heatmaps for 2 images"):
        overlay(img, torch.zeros(3, 20, 30))


def test_nodes_on_comfy_tensors(image_batch):
    import rewardloop
    to_mask = rewardloop.NODE_CLASS_MAPPINGS["RewardLoopHeatmapToMask"]()
    img = image_batch(2, 64, 96)
    heat = torch.zeros(2, 32, 48)
    heat[0, 4:8, 4:8] = 1
    heat[0, 20:28, 30:40] = 0.9
    mask, regions, count = to_mask.make_mask(heat, 0.5, 0.1, 0.0, 2.0, 1.0, 0.0, True, image=img)
    assert mask.shape == (2, 64, 96) and mask.dtype == torch.float32
    assert count == 2 and regions.shape == (2, 64, 96) and mask[1].max() == 0
    mask, regions, count = to_mask.make_mask(torch.zeros(32, 48), 0.5, 0.1, 0.5, 3.0, 1.0, 0.1, True)
    assert count == 0 and regions.shape == (1, 32, 48) and mask.max() == 0
    ov = rewardloop.NODE_CLASS_MAPPINGS["RewardLoopHeatmapOverlay"]()
    (out,) = ov.draw(img, heat, "turbo", 0.6, True)
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
