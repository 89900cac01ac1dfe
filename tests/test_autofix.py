"""Auto-fix: wiring with a deterministic fake sampler, the tiny diffusers pipeline, the node, the ComfyUI adapter."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from rewardloop.rewards.inpaint import auto_fix, blend
from rewardloop.rewards.regions import heatmap_to_mask
from rewardloop.rewards.scoring import FunctionScorer
from rewardloop.rewards.types import RewardScores


class FakeSampler:
    """Candidate i is a flat grey of level ``levels[i]`` (deterministic); records every call."""

    def __init__(self, levels):
        self.levels = levels
        self.calls = []

    def __call__(self, image, mask, k, seed):
        self.calls.append((tuple(image.shape), tuple(mask.shape), k, seed))
        h, w = image.shape[1:3]
        return torch.stack([torch.full((h, w, 3), float(self.levels[i % len(self.levels)])) for i in range(k)])


def brightness_scorer(name="plausibility", hib=True, calls=None):
    def fn(images, prompts):
        if calls is not None:
            calls.append((len(images), list(prompts)))
        return [RewardScores("other", [0.0] * len(images)),
                RewardScores(name, [float(np.asarray(im).mean()) / 255 for im in images], hib, (0, 1))]
    return FunctionScorer(["other", name], fn)


def square_mask(h=32, w=40, feather=1.0):
    heat = torch.zeros(h, w)
    heat[10:20, 12:24] = 1
    return heatmap_to_mask(heat, blur=0, dilate=0, feather=feather, min_area=0).mask


def test_best_candidate_chosen_by_score_and_wiring(image_batch):
    img = image_batch(2, 32, 40) * 0.5
    mask = square_mask()
    sampler = FakeSampler([0.2, 0.9, 0.6])
    calls = []
    res = auto_fix(img, mask, sampler, brightness_scorer(calls=calls), k=3, seed=7, prompt="a dog")
    assert sampler.calls == [((1, 32, 40, 3), (1, 32, 40), 3, 7), ((1, 32, 40, 3), (1, 32, 40), 3, 10)]
    assert calls == [(4, ["a dog"] * 4)] * 2            # original + 3 candidates, one scorer call per image
    assert res.chosen == [1, 1] and res.score_name == "plausibility"   # the brightest candidate wins
    assert res.candidates.shape == (6, 32, 40, 3) and res.images.shape == img.shape
    m = mask[0]
    expected = blend(img[:1], torch.full((1, 32, 40, 3), 0.9), m)[0]
    assert torch.equal(res.images[0], expected)
    outside = m == 0
    for i in range(2):
        assert torch.equal(res.images[i][outside], img[i][outside])
    assert "candidate 1 chosen" in res.summary()


def test_original_kept_when_no_candidate_beats_it():
    img = torch.ones(1, 32, 40, 3)
    res = auto_fix(img, square_mask(), FakeSampler([0.1, 0.5]), brightness_scorer(), k=2, seed=0)
    assert res.chosen == [-1] and torch.equal(res.images, img)
    assert "original kept" in res.summary()
    # a lower-is-better score flips the choice: the darkest candidate now wins
    low = auto_fix(img, square_mask(), FakeSampler([0.1, 0.5]), brightness_scorer("err", hib=False), k=2, seed=0,
                   score_name="err")
    assert low.chosen == [0] and not low.higher_is_better
    # equal score is not "better": original kept (and margin demands more)
    same = auto_fix(torch.full((1, 32, 40, 3), 0.5), square_mask(feather=0), FakeSampler([0.5]),
                    brightness_scorer(), k=1)
    assert same.chosen == [-1]


def test_empty_mask_returns_original_without_sampling_or_scoring():
    img = torch.rand(2, 32, 40, 3)
    sampler = FakeSampler([0.9])
    calls = []
    empty = heatmap_to_mask(torch.full((32, 40), 0.02)).mask     # clean heatmap → empty mask
    res = auto_fix(img, empty, sampler, brightness_scorer(calls=calls), k=4)
    assert sampler.calls == [] and calls == [] and res.skipped == [True, True] and res.chosen == [-1, -1]
    assert torch.equal(res.images, img) and torch.equal(res.candidates, img)
    assert "skipped" in res.summary()


def test_pick_score_prefers_plausibility():
    from rewardloop.rewards.inpaint import pick_score
    a, b, c = RewardScores("aesthetics", [1.0]), RewardScores("rahf.plausibility", [2.0]), RewardScores("x", [0.0])
    assert pick_score([a, b, c]).name == "rahf.plausibility"
    assert pick_score([a, RewardScores("implausibility_area", [1.0], False)]).name == "aesthetics"
    assert pick_score([a, c], "x") is c


def test_bad_inputs():
    img = torch.rand(2, 16, 16, 3)
    with pytest.raises(ValueError, match="3 masks for 2 images"):
        auto_fix(img, torch.ones(3, 16, 16), FakeSampler([0.5]), brightness_scorer())
    with pytest.raises(ValueError, match="no score named"):
        auto_fix(img, torch.ones(16, 16), FakeSampler([0.5]), brightness_scorer(), k=1, score_name="nope")
    with pytest.raises(ValueError, match="K must be"):
        auto_fix(img, torch.ones(16, 16), FakeSampler([0.5]), brightness_scorer(), k=0)


def test_tiny_diffusers_inpaint_changes_only_the_masked_region(tiny):
    from rewardloop.rewards.inpaint import DiffusersInpaintSampler
    tiny("tiny-sd")
    g = torch.Generator().manual_seed(3)
    img = torch.rand(1, 36, 40, 3, generator=g)                  # 36: not a multiple of 8 (border is kept)
    mask = square_mask(36, 40, feather=2.0)
    sampler = DiffusersInpaintSampler("tiny-sd", "a red apple", steps=2, cfg=1.0, denoise=1.0, device="cpu",
                                      dtype="fp32")
    raw = sampler(img, mask, 2, 5)
    assert raw.shape == (2, 36, 40, 3)
    res = auto_fix(img, mask, sampler, brightness_scorer(), k=2, seed=5, prompt="a red apple")
    assert torch.equal(res.candidates, blend(img, raw, mask[0]))  # same seed → same candidates
    outside = mask[0] == 0
    band = (mask[0] > 0) & (mask[0] < 1)
    assert band.any()
    for c in res.candidates:
        assert torch.equal(c[outside], img[0][outside])           # bit for bit outside the mask + feather band
        assert not torch.equal(c[mask[0] == 1], img[0][mask[0] == 1])  # the masked region was repainted
    assert torch.equal(res.images[0][outside], img[0][outside])
    scores = res.scores[0]
    assert res.chosen[0] == (int(np.argmax(scores[1:])) if max(scores[1:]) > scores[0] else -1)


def test_autofix_node_with_fake_sampler(monkeypatch, image_batch):
    import rewardloop
    from rewardloop.nodes import autofix
    made = []

    def fake_make(model, positive, negative, vae, steps, cfg, sampler_name, scheduler, denoise):
        made.append((steps, cfg, sampler_name, scheduler, denoise))
        return FakeSampler([0.95, 0.2])

    monkeypatch.setattr(autofix, "make_sampler", fake_make)
    node = rewardloop.NODE_CLASS_MAPPINGS["RewardLoopAutoFix"]()
    img = image_batch(2, 32, 40)
    mask = square_mask()                                           # one [1,H,W] mask for both images
    out = node.fix("MODEL", "POS", "NEG", "VAE", img, mask, 2, 8, 5.0, "euler", "normal", 0.6, 1,
                   scorer=brightness_scorer(), prompt="a cat")
    best, cands, used, report = out["result"]
    assert made == [(8, 5.0, "euler", "normal", 0.6)]
    assert best.shape == img.shape and cands.shape == (4, 32, 40, 3) and used.shape == (2, 32, 40)
    assert out["ui"]["text"] == [report] and "candidate 0 chosen" in report
    assert torch.equal(best[:, used[0] == 0], img[:, used[0] == 0])
    spec = node.INPUT_TYPES()["required"]
    assert "euler" in spec["sampler_name"][0] and "normal" in spec["scheduler"][0]


def test_comfy_sampler_adapter_with_fake_comfy(monkeypatch):
    """The ComfyUI adapter's wiring (encode, noise mask, K latents, comfy.sample.sample, decode, paste)."""
    from rewardloop.rewards.inpaint import ComfySampler
    seen = {}
    sample_mod = types.ModuleType("comfy.sample")
    sample_mod.fix_empty_latent_channels = lambda model, latent: latent
    sample_mod.prepare_noise = lambda latent, seed, inds: torch.randn(
        latent.shape, generator=torch.Generator().manual_seed(seed))

    def sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent, **kw):
        seen.update(kw, steps=steps, cfg=cfg, sampler=sampler_name, scheduler=scheduler, latent=latent.shape,
                    noise=noise.shape, positive=positive)
        return latent + 1.0

    sample_mod.sample = sample
    utils_mod = types.ModuleType("comfy.utils")
    utils_mod.PROGRESS_BAR_ENABLED = False
    comfy = types.ModuleType("comfy")
    comfy.sample, comfy.utils = sample_mod, utils_mod
    for name, mod in (("comfy", comfy), ("comfy.sample", sample_mod), ("comfy.utils", utils_mod)):
        monkeypatch.setitem(sys.modules, name, mod)

    class FakeVAE:
        downscale_ratio = 8

        def encode(self, pixels):
            seen["encoded"] = tuple(pixels.shape)
            return torch.zeros(pixels.shape[0], 4, pixels.shape[1] // 8, pixels.shape[2] // 8)

        def decode(self, samples):
            return torch.full((samples.shape[0], samples.shape[2] * 8, samples.shape[3] * 8, 3), 0.25)

    img = torch.rand(1, 36, 44, 3)
    mask = torch.zeros(1, 36, 44)
    mask[:, 8:20, 8:20] = 1
    s = ComfySampler("MODEL", "POS", "NEG", FakeVAE(), steps=3, cfg=4.0, sampler_name="euler", scheduler="karras",
                     denoise=0.7)
    out = s(img, mask, 3, 11)
    assert seen["encoded"] == (1, 32, 40, 3) and seen["latent"] == (3, 4, 4, 5) and seen["noise"] == (3, 4, 4, 5)
    assert seen["noise_mask"].shape == (1, 1, 32, 40) and seen["denoise"] == 0.7 and seen["seed"] == 11
    assert (seen["steps"], seen["cfg"], seen["sampler"], seen["scheduler"]) == (3, 4.0, "euler", "karras")
    assert seen["disable_pbar"] is True and seen["positive"] == "POS"
    assert out.shape == (3, 36, 44, 3)
    assert torch.all(out[:, :32, :40] == 0.25)
    assert torch.equal(out[:, 32:], img[:, 32:].expand(3, -1, -1, -1))   # cropped border keeps the original


@pytest.mark.parametrize("name,node", [("best_of_n.api.json", "RewardLoopAssembleRank"),
                                       ("auto_fix.api.json", "RewardLoopAutoFix")])
def test_workflows_use_valid_inputs_of_our_nodes(name, node):
    import json

    from rewardloop.workflows import graph
    path = graph.API_DIR / name
    assert any(n["class_type"] == node for n in json.loads(path.read_text()).values())
    assert graph.validate_file(path, graph.all_specs()) == []


def test_fix_cli_with_tiny_sd_and_a_fake_heatmap_reward(tiny, tmp_path, monkeypatch, capsys):
    from PIL import Image

    from rewardloop.cli import main
    from rewardloop.rewards import scoring

    def rich(images, prompts):
        hm = np.zeros((8, 8), np.float32)
        hm[2:5, 2:5] = 1.0
        maps = [hm if i == 0 else np.zeros_like(hm) for i in range(len(images))]  # image 1 is "clean"
        vals = [float(np.asarray(im).mean()) / 255 for im in images]
        return [RewardScores("plausibility", vals, True, (0, 1), [{"implausibility_heatmap": m} for m in maps])]

    fake = types.ModuleType("rl_fake_fix")
    fake.make = lambda models=None, **kw: FunctionScorer(["plausibility"], rich)
    monkeypatch.setitem(sys.modules, "rl_fake_fix", fake)
    monkeypatch.setattr(scoring, "SCORER_FACTORIES", {"rich": "rl_fake_fix:make"})
    tiny("tiny-sd")
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(src / f"im{i}.png")
    out = tmp_path / "out"
    rc = main(["fix", str(src), "--prompt", "a cat", "--sd", "tiny-sd", "--k", "2", "--steps", "1", "--cfg", "1",
               "--dilate", "0", "--out", str(out), "--device", "cpu", "--dtype", "fp32"])
    assert rc == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["im0_cand0.png", "im0_cand1.png", "im0_fixed.png", "im0_mask.png", "im1_fixed.png",
                     "im1_mask.png", "report.txt"]
    report = (out / "report.txt").read_text()
    assert "im1.png: mask empty, skipped" in report
    assert np.array_equal(np.asarray(Image.open(out / "im1_fixed.png")), np.asarray(Image.open(src / "im1.png")))
    mask = np.asarray(Image.open(out / "im0_mask.png"))[..., 0]
    fixed, orig = np.asarray(Image.open(out / "im0_fixed.png")), np.asarray(Image.open(src / "im0.png"))
    assert mask.max() == 255 and np.array_equal(fixed[mask == 0], orig[mask == 0])
    assert main(["fix", str(src), "--prompt", "a cat", "--sd", "tiny-sd", "--out", str(out)]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
