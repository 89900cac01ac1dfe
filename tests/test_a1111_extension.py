"""The extension's library side (``rewardloop.sdwebui``) on cases the real Forge test cannot reach.

The extension itself runs in a real Forge in ``tests/test_forge_real.py`` (ranking, interrupts, img2img overlays,
auto-fix, errors, install) and is checked against A1111 1.8.0's and Forge's sources in
``tests/test_webui_contract.py``. What stays here: hand-computed settings / PNG-info / list bookkeeping, the
A1111-only token-merging reset (Forge never applies token merging in ``process_images``), per-image negative
prompts (the API sends one negative prompt per job), deterministic keep/reject of a fix, and loading the script
the A1111 way (its folder is on ``sys.path`` only while the script loads).
"""
from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from rewardloop.rewards.scoring import FunctionScorer
from rewardloop.rewards.types import RewardScores
from rewardloop.sdwebui import host, logic

ROOT = Path(__file__).resolve().parents[1]


def args(**kw) -> list:
    v = {**logic.ui_defaults(), **kw}
    return [v[name] for name in logic.UI_ORDER]


# ------------------------------------------------------------------ settings and PNG info
def test_api_may_send_only_the_first_arguments():
    s = logic.parse_args(True, ["rich"])
    assert s.enabled and s.rewards == ["rich"] and s.keep_top_k == 0 and s.fix_candidates == 1
    assert s.models["caption.captioner"] == "blip-large" and s.models["sam_llm.clip"] == ""
    assert logic.parse_args(True, "caption, rich").rewards == ["caption", "rich"]
    assert not logic.parse_args().active


@pytest.mark.parametrize("bad, match", [
    (dict(mode="best"), "ranking mode"), (dict(w_sam_llm=-1.0), "weights"), (dict(rewards=["clip"]), "unknown"),
    (dict(fix_reward="caption"), "heatmaps"), (dict(fix_candidates=0), "candidates"), (dict(denoise=0.0), "denoising"),
])
def test_bad_settings_are_refused_in_one_line(bad, match):
    with pytest.raises(ValueError, match=match) as e:
        logic.parse_args(*args(**bad))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="at most"):
        logic.parse_args(*args(), "extra")


def test_models_per_reward_and_light_defaults():
    s = logic.parse_args(*args(**{"sam_llm.clip": "clip-vit-large-patch14", "rich.rich_feedback": "/m/rahf"}))
    assert s.models_for("caption") == {"captioner": "blip-large", "text_encoder": "all-MiniLM-L6-v2"}
    assert s.models_for("sam_llm") == {"sam": "sam-vit-b", "llm": "SmolLM2-135M-Instruct",
                                       "clip": "clip-vit-large-patch14"}  # CLIP labels: no captioner loaded
    assert s.models_for("rich") == {"rich_feedback": "/m/rahf"}
    assert logic.parse_args(*args()).models_for("sam_llm")["captioner"] == "blip-large"


def test_png_info_round_trip():
    s = logic.parse_args(*args(enabled=True, rewards=["caption", "rich"], w_rich=2.5, keep_top_k=2, mode="zscore",
                               autofix=True, threshold=0.35, dilation=2.0, denoise=0.6, fix_candidates=3,
                               **{"rich.rich_feedback": "tiny-rahf"}))
    params = logic.generation_params(s)
    assert params == {"RewardLoop rank": "caption+rich", "RewardLoop weights": "1+2.5", "RewardLoop mode": "zscore",
                      "RewardLoop top k": 2, "RewardLoop fix": "rich",
                      "RewardLoop fix settings": "threshold 0.35; dilation 2%; denoise 0.6; candidates 3",
                      "RewardLoop models": "caption.captioner=blip-large; caption.text_encoder=all-MiniLM-L6-v2; "
                                           "rich.rich_feedback=tiny-rahf"}
    back = logic.settings_from_infotext({k: str(v) for k, v in params.items()})
    assert logic.parse_args(*args(**back)) == s
    assert logic.settings_from_infotext({"Steps": "20"}) == {"enabled": False, "autofix": False}


# ------------------------------------------------------------------ the per-image lists, by hand
def make_p(batch_size, n_iter):
    total = batch_size * n_iter
    return types.SimpleNamespace(
        batch_size=batch_size, n_iter=n_iter, all_prompts=[f"p{i}" for i in range(total)],
        all_negative_prompts=[f"n{i}" for i in range(total)], all_seeds=[100 + i for i in range(total)],
        all_subseeds=[200 + i for i in range(total)], overlay_images=["o0", "o1", "o2"], color_corrections=None)


def start_batch(p, b):
    """What the WebUI does before each batch."""
    s = b * p.batch_size
    for name in logic.PER_BATCH_LISTS:
        setattr(p, name, getattr(p, "all_" + name)[s:s + p.batch_size])
    book = getattr(p, logic.BatchBook.ATTR, None)
    if book:
        book.restore_slots(p)  # our before_process_batch hook


def test_two_batches_top1_then_finish():
    p = make_p(3, 2)
    book = logic.BatchBook.of(p)
    start_batch(p, 0)
    book.apply(p, [2], 0, 3, 3)
    assert p.seeds == [102] and p.overlay_images == ["o2"]            # this batch's remaining steps
    assert p.all_seeds[:3] == [102, 100, 101] and len(p.all_seeds) == 6  # the next batch still slices at 3
    start_batch(p, 1)
    assert p.seeds == [103, 104, 105] and p.overlay_images == ["o0", "o1", "o2"]  # per-slot order restored
    book.apply(p, [1, 0], 1, 3, 3)
    assert p.seeds == [104, 103] and p.overlay_images == ["o1", "o0"]
    book.finish(p)
    assert p.all_seeds == [102, 104, 103] and p.all_prompts == ["p2", "p4", "p3"]
    assert p.all_subseeds == [202, 204, 203] and p.all_negative_prompts == ["n2", "n4", "n3"]
    assert p.overlay_images == ["o0", "o1", "o2"]


def test_interrupt_after_the_first_batch():
    p = make_p(2, 3)
    book = logic.BatchBook.of(p)
    start_batch(p, 0)
    book.apply(p, [1], 0, 2, 2)
    book.finish(p)  # the WebUI calls postprocess after an interrupted loop too
    assert p.all_seeds == [101] and p.all_prompts == ["p1"]
    q = make_p(2, 2)
    logic.BatchBook.of(q).keep_all(0, 2, 2)  # a batch left alone (error) keeps its images
    logic.BatchBook.of(q).finish(q)
    assert q.all_seeds == [100, 101]


# ------------------------------------------------------------------ images and masks
def test_scored_pixels_are_the_saved_pixels():
    x = torch.rand(3, 5, 7)
    pil = host.to_pil(x)
    saved = (255.0 * np.moveaxis(x.numpy(), 0, 2)).astype(np.uint8)  # what the WebUI saves
    assert (np.asarray(pil) == saved).all()
    back = host.like(x, pil)
    assert back.shape == x.shape and back.dtype == x.dtype
    assert ((255.0 * np.moveaxis(back.numpy(), 0, 2)).astype(np.uint8) == saved).all()


def test_heatmap_mask_threshold_and_dilation_by_hand():
    heat = np.zeros((4, 4), np.float32)
    heat[1, 2] = 0.9
    m = logic.heatmap_mask(heat, (4, 4), 0.5, 0.0)
    assert m.sum() == 1 and m[1, 2] == 1
    m = logic.heatmap_mask(heat, (20, 20), 0.5, 5.0)  # upsampled 5x, then dilated by 1 px
    assert m.any() and m.sum() > logic.heatmap_mask(heat, (20, 20), 0.5, 0.0).sum()
    assert logic.heatmap_mask(np.zeros((4, 4)), (8, 8), 0.5, 10.0).sum() == 0


# ------------------------------------------------------------------ auto-fix: keep only improvements
class _Sampler:
    calls: list = []

    def __init__(self, p, prompt, negative, denoise):
        self.prompt, self.negative = prompt, negative

    def __call__(self, image, mask, k, seed):
        _Sampler.calls.append((self.prompt, self.negative, k, seed))
        return torch.ones(k, *image.shape[1:3], 3)  # white everywhere; auto_fix keeps it only inside the mask


def test_a_fix_replaces_an_image_only_when_it_scores_higher(monkeypatch):
    heat = torch.zeros(8, 10)
    heat[2:4, 3:6] = 0.9

    def rich(images, prompts):  # brighter = more plausible for image 0's fixes; image 1's fixes score lower
        vals = [float(np.asarray(im).mean()) / 255 for im in images]
        if prompts[0] == "p1" and len(images) > 2:
            vals = [1.0] + [0.0] * (len(images) - 1)
        return [RewardScores("plausibility", vals, True, (0, 1), [{"implausibility_heatmap": heat}] * len(images))]

    monkeypatch.setattr(logic, "SCORER_FACTORY", lambda name, models: FunctionScorer(["plausibility"], rich))
    logic.clear_scorers()
    _Sampler.calls.clear()
    p = types.SimpleNamespace(prompts=["p0", "p1"], negative_prompts=["n0", "n1"], seeds=[5, 9], batch_size=2)
    originals = [torch.full((3, 16, 20), 0.2), torch.full((3, 16, 20), 0.2)]
    images, pils = list(originals), [host.to_pil(t) for t in originals]
    s = logic.parse_args(*args(autofix=True, threshold=0.5, dilation=0.0, fix_candidates=2))
    scored = logic.score(pils, p.prompts, ["rich"], s)
    book = logic.BatchBook.of(p)
    kept = host.autofix_batch(p, images, pils, p.prompts, p.negative_prompts, p.seeds, scored, s, book, 0,
                              sampler_cls=_Sampler)
    logic.clear_scorers()
    assert kept == [0]
    assert _Sampler.calls == [("p0", "n0", 2, 5), ("p1", "n1", 2, 9)]  # each image's own negative prompt and seed
    a = np.asarray(host.to_pil(images[0]))
    mask = np.zeros((16, 20), bool)
    mask[4:8, 6:12] = True  # the flagged block, scaled x2
    assert (a[mask] == 255).all() and (a[~mask] == np.asarray(host.to_pil(originals[0]))[~mask]).all()
    assert images[1] is originals[1]
    assert book.notes[(0, 0)]["RewardLoop fix result"].startswith("fixed (plausibility")
    assert book.notes[(0, 1)]["RewardLoop fix result"].startswith("kept original")


# ------------------------------------------------------------------ the outer job's state (A1111 paths)
def test_outer_job_kept_restores_what_a_nested_job_changes(tmp_path):
    class SDP:
        cached_c = [None, None]
        cached_uc = [None, None]

    class T2I(SDP):
        cached_hr_c = [None, None]

    calls = []
    processing = types.SimpleNamespace(StableDiffusionProcessing=SDP, StableDiffusionProcessingTxt2Img=T2I)
    sd_models = types.SimpleNamespace(apply_token_merging=lambda m, r: (calls.append(r),
                                                                        setattr(m, "applied_token_merged_ratio", r)))
    state = types.SimpleNamespace(job="outer", job_no=1, job_count=4, sampling_step=3, sampling_steps=20,
                                  textinfo=None, current_image_sampling_step=0)
    model = types.SimpleNamespace(applied_token_merged_ratio=0.3, comments=["c"], extra_generation_params={"a": 1})
    p = types.SimpleNamespace(sd_model=model)
    SDP.cached_c[:] = ["outer params", "outer cond"]
    outer_cache = SDP.cached_c
    (tmp_path / "params.txt").write_text("outer infotext")
    with host.outer_job_kept(p, processing, types.SimpleNamespace(state=state), sd_models, tmp_path):
        SDP.cached_c[:] = ["nested", "cond"]
        SDP.cached_c = [None, None]          # what close() does
        state.job_no, state.job_count, state.sampling_steps = 7, 9, 5
        model.applied_token_merged_ratio = 0  # A1111's process_images resets token merging to 0
        model.comments, model.extra_generation_params = [], {}
        (tmp_path / "params.txt").write_text("nested infotext, Denoising strength: 0.5")
    assert SDP.cached_c is outer_cache and SDP.cached_c == ["outer params", "outer cond"]
    assert (state.job_no, state.job_count, state.sampling_steps, state.job) == (1, 4, 20, "outer")
    assert calls == [0.3] and model.applied_token_merged_ratio == 0.3
    assert model.comments == ["c"] and model.extra_generation_params == {"a": 1}
    assert (tmp_path / "params.txt").read_text() == "outer infotext"
    (tmp_path / "params.txt").unlink()
    with host.outer_job_kept(p, processing, types.SimpleNamespace(state=state), sd_models, tmp_path):
        (tmp_path / "params.txt").write_text("nested")
    assert not (tmp_path / "params.txt").exists() and calls == [0.3]  # ratio unchanged: not re-applied


def test_report_reaches_the_console_and_the_generation_info(capsys):
    p = types.SimpleNamespace(extra_generation_params={})
    host.report(p, "rich_feedback 'x' not found in models/rich_feedback.\nmore")
    err = capsys.readouterr().err
    assert err.startswith("*** RewardLoop: rich_feedback 'x' not found")
    assert p.extra_generation_params["RewardLoop error"] == "RewardLoop: rich_feedback 'x' not found in " \
                                                            "models/rich_feedback."


# ------------------------------------------------------------------ loading
def test_pack_import_never_pulls_gradio_or_webui_modules():
    code = ("import sys, rewardloop, rewardloop.sdwebui.logic, rewardloop.sdwebui.host; "
            "bad = [m for m in ('gradio', 'modules', 'modules.scripts', 'launch') if m in sys.modules]; "
            "assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    assert out.returncode == 0, out.stderr[-2000:]


def test_scripts_folder_holds_only_the_script():
    assert sorted(p.name for p in (ROOT / "scripts").iterdir() if p.name != "__pycache__") == ["rewardloop_a1111.py"]


def test_script_loads_the_pack_from_its_folder_the_a1111_way(tmp_path):
    """A1111 puts the extension folder (any name) on sys.path only while loading the script, and nothing has
    ``rewardloop`` installed: the script imports its own folder as the package."""
    ext = tmp_path / "extensions" / "sd-webui-rewardloop"
    ext.parent.mkdir()
    ext.symlink_to(ROOT, target_is_directory=True)
    code = f"""
import importlib.abc, importlib.util, sys, types
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "rewardloop":
            raise ImportError("not installed")
        return None
sys.meta_path.insert(0, Block())
class Comp:
    def __init__(self, *a, **kw): self.kw = kw
    def __enter__(self): return self
    def __exit__(self, *a): return False
gr = types.ModuleType("gradio")
for k in ("Checkbox", "CheckboxGroup", "Slider", "Dropdown", "Accordion", "Row"):
    setattr(gr, k, Comp)
ms = types.ModuleType("modules.scripts")
ms.Script = type("Script", (), {{}})
ms.AlwaysVisible = object()
mods = types.ModuleType("modules")
mods.scripts = ms
sys.modules.update({{"gradio": gr, "modules": mods, "modules.scripts": ms}})
saved = list(sys.path)
sys.path.insert(0, {str(ext)!r})
spec = importlib.util.spec_from_file_location("rewardloop_a1111.py", {str(ext / "scripts" / "rewardloop_a1111.py")!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sys.path[:] = saved
import rewardloop
from pathlib import Path
assert Path(rewardloop.__file__).resolve() == Path({str(ROOT / "__init__.py")!r}), rewardloop.__file__
assert mod.logic.__name__ == "rewardloop.sdwebui.logic" and rewardloop.NODE_CLASS_MAPPINGS
comps = mod.RewardLoopScript().ui(False)
assert len(comps) == len(mod.logic.UI_ORDER)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, cwd="/")
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
