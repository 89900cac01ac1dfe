"""The A1111/Forge glue against a minimal stand-in of ``modules.scripts`` / ``modules.processing`` / gradio.

What these tests do NOT cover (no WebUI here): the real gradio layout, the real ``process_images`` loop calling
``postprocess_batch_list``, real img2img inpainting quality, Forge's divergences.
"""
from __future__ import annotations

import importlib.util
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
from rewardloop.scripts import _logic

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ stand-ins
class _Comp:
    def __init__(self, kind, **kw):
        self.kind, self.kw = kind, kw


class _Ctx(_Comp):
    def __enter__(self):
        _FakeGradio.opened.append(self)
        return self

    def __exit__(self, *a):
        return False


class _FakeGradio(types.ModuleType):
    opened: list = []

    def __init__(self):
        super().__init__("gradio")
        for k in ("Checkbox", "CheckboxGroup", "Slider", "Dropdown"):
            setattr(self, k, (lambda kind: (lambda **kw: _Comp(kind, **kw)))(k))
        self.Accordion = lambda label=None, **kw: _Ctx("Accordion", label=label, **kw)
        self.Row = lambda **kw: _Ctx("Row", **kw)


class _PP:
    def __init__(self, images):
        self.images = images


class _Img2Img:
    calls: list = []

    def __init__(self, **kw):
        self.kw = kw
        self.scripts = "runner"
        _Img2Img.calls.append(self)


def _process_images(p2):
    """Fake inpainting: paint the masked pixels white, so the test can see what was repainted."""
    img = np.asarray(p2.kw["init_images"][0]).copy()
    m = np.asarray(p2.kw["image_mask"]) > 127
    img[m] = 255
    from PIL import Image
    return types.SimpleNamespace(images=[Image.fromarray(img)])


@pytest.fixture
def ext(monkeypatch):
    modules = types.ModuleType("modules")
    ms = types.ModuleType("modules.scripts")

    class Script:
        pass

    ms.Script = Script
    ms.AlwaysVisible = object()
    mp = types.ModuleType("modules.processing")
    mp.StableDiffusionProcessingImg2Img = _Img2Img
    mp.process_images = _process_images
    modules.scripts, modules.processing = ms, mp
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.scripts", ms)
    monkeypatch.setitem(sys.modules, "modules.processing", mp)
    monkeypatch.setitem(sys.modules, "gradio", _FakeGradio())
    _Img2Img.calls.clear()
    _FakeGradio.opened.clear()
    spec = importlib.util.spec_from_file_location("rewardloop_a1111_under_test", ROOT / "scripts" / "rewardloop_a1111.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _logic.clear_scorers()
    yield mod
    _logic.clear_scorers()


def brightness_scorer(name="caption", higher=True):
    def fn(images, prompts):
        return [RewardScores(name, [float(np.asarray(im).mean()) / 255 for im in images], higher, (0, 1))]
    return FunctionScorer([name], fn)


def fixed_scorer(name, values, higher=True, details=None):
    return FunctionScorer([name], lambda images, prompts: [RewardScores(name, list(values), higher, (0, 1),
                                                                        details or [])])


def use_scorers(monkeypatch, table):
    monkeypatch.setattr(_logic, "SCORER_FACTORY", lambda name: table[name])


def batch(levels, h=16, w=20):
    """WebUI-style batch: CHW float tensors in 0..1, one flat grey level each."""
    return [torch.full((3, h, w), float(v)) for v in levels]


def make_p(n, batch_size=None, n_iter=1):
    bs = batch_size or n
    total = bs * n_iter
    return types.SimpleNamespace(
        prompt="a cat", negative_prompt="blurry", batch_size=bs, n_iter=n_iter, steps=20, cfg_scale=7.0,
        sampler_name="Euler a", sd_model="model", outpath_samples="out", outpath_grids="grids",
        all_prompts=[f"prompt{i}" for i in range(total)], all_negative_prompts=[f"neg{i}" for i in range(total)],
        all_seeds=[100 + i for i in range(total)], all_subseeds=[200 + i for i in range(total)],
        prompts=[f"prompt{i}" for i in range(bs)], negative_prompts=[f"neg{i}" for i in range(bs)],
        seeds=[100 + i for i in range(bs)], subseeds=[200 + i for i in range(bs)])


def args(enabled=True, rewards=("caption",), w=(1.0, 1.0, 1.0), keep=0, mode="rank_sum", autofix=False,
         threshold=0.5, dilation=0.0, denoise=0.5):
    return (enabled, list(rewards), *w, keep, mode, autofix, threshold, dilation, denoise)


def start_batch(p, b):
    """What the WebUI does before each batch: slice the per-batch lists out of p.all_*."""
    s = b * p.batch_size
    p.prompts = p.all_prompts[s:s + p.batch_size]
    p.negative_prompts = p.all_negative_prompts[s:s + p.batch_size]
    p.seeds = p.all_seeds[s:s + p.batch_size]
    p.subseeds = p.all_subseeds[s:s + p.batch_size]


# ------------------------------------------------------------------ UI
def test_script_is_always_visible_with_an_accordion(ext):
    s = ext.RewardLoopScript()
    assert s.title() == "RewardLoop"
    assert s.show(False) is sys.modules["modules.scripts"].AlwaysVisible
    assert s.show(True) is sys.modules["modules.scripts"].AlwaysVisible
    comps = s.ui(False)
    assert [c.kind for c in comps] == ["Checkbox", "CheckboxGroup", "Slider", "Slider", "Slider", "Slider",
                                       "Dropdown", "Checkbox", "Slider", "Slider", "Slider"]
    assert len(comps) == len(_logic.UI_ORDER)
    assert comps[1].kw["choices"] == ["caption", "sam_llm", "rich"]
    assert _FakeGradio.opened[0].kind == "Accordion"
    # the UI defaults parse into valid settings
    defaults = [c.kw.get("value") for c in comps]
    st = _logic.parse_args(*defaults)
    assert st.enabled is False and st.rewards == ["caption"] and st.mode == "rank_sum" and not st.active


# ------------------------------------------------------------------ best-of-N
def test_reorders_best_first_and_keeps_lists_in_step(ext, monkeypatch):
    use_scorers(monkeypatch, {"caption": brightness_scorer()})
    s, p = ext.RewardLoopScript(), make_p(4)
    imgs = batch([0.2, 0.8, 0.5, 0.9])
    pp = _PP(list(imgs))
    s.postprocess_batch_list(p, pp, *args(), batch_number=0)
    assert [round(float(t.mean()), 1) for t in pp.images] == [0.9, 0.8, 0.5, 0.2]
    assert all(isinstance(t, torch.Tensor) and t.shape == (3, 16, 20) for t in pp.images)
    assert p.seeds == [103, 101, 102, 100] and p.prompts == ["prompt3", "prompt1", "prompt2", "prompt0"]
    assert p.negative_prompts == ["neg3", "neg1", "neg2", "neg0"] and p.subseeds == [203, 201, 202, 200]
    assert p.all_seeds == [103, 101, 102, 100] and p.all_prompts[0] == "prompt3"


def test_keep_top_k_drops_the_rest(ext, monkeypatch):
    use_scorers(monkeypatch, {"caption": brightness_scorer()})
    s, p = ext.RewardLoopScript(), make_p(4)
    pp = _PP(batch([0.2, 0.8, 0.5, 0.9]))
    s.postprocess_batch_list(p, pp, *args(keep=2), batch_number=0)
    assert len(pp.images) == 2 and [round(float(t.mean()), 1) for t in pp.images] == [0.9, 0.8]
    assert p.seeds == [103, 101] and p.prompts == ["prompt3", "prompt1"]
    assert p.all_seeds == [103, 101] and p.all_prompts == ["prompt3", "prompt1"]
    assert p.all_subseeds == [203, 201] and p.all_negative_prompts == ["neg3", "neg1"]


def test_several_batches_keep_all_lists_aligned(ext, monkeypatch):
    use_scorers(monkeypatch, {"caption": brightness_scorer()})
    s, p = ext.RewardLoopScript(), make_p(3, batch_size=3, n_iter=2)
    start_batch(p, 0)
    pp0 = _PP(batch([0.1, 0.7, 0.4]))
    s.postprocess_batch_list(p, pp0, *args(keep=1), batch_number=0)
    assert p.seeds == [101] and len(p.all_seeds) == 6  # later batches still slice all_* by n * batch_size
    start_batch(p, 1)
    assert p.seeds == [103, 104, 105]
    pp1 = _PP(batch([0.3, 0.2, 0.6]))
    s.postprocess_batch_list(p, pp1, *args(keep=1), batch_number=1)
    assert p.seeds == [105] and p.prompts == ["prompt5"]
    assert p.all_seeds == [101, 105] and p.all_prompts == ["prompt1", "prompt5"]
    assert p.all_subseeds == [201, 205]


def test_two_weighted_rewards_rank_sum_by_hand(ext, monkeypatch):
    # caption (higher better): [0.9, 0.1, 0.5] -> ranks [0, 2, 1]
    # artefacts (lower better): [3, 1, 2]      -> ranks [2, 0, 1]
    # weights caption 1, sam_llm 3: totals [0+6, 2+0, 1+3] = [6, 2, 4] -> order [1, 2, 0]
    use_scorers(monkeypatch, {"caption": fixed_scorer("caption", [0.9, 0.1, 0.5]),
                              "sam_llm": fixed_scorer("artefacts", [3, 1, 2], higher=False)})
    s, p = ext.RewardLoopScript(), make_p(3)
    pp = _PP(batch([0.1, 0.2, 0.3]))
    s.postprocess_batch_list(p, pp, *args(rewards=("caption", "sam_llm"), w=(1.0, 3.0, 1.0)), batch_number=0)
    assert p.seeds == [101, 102, 100]
    # with equal weights: totals [2, 2, 2] -> ties resolved deterministically (never a crash, all kept)
    p2, pp2 = make_p(3), _PP(batch([0.1, 0.2, 0.3]))
    s.postprocess_batch_list(p2, pp2, *args(rewards=("caption", "sam_llm")), batch_number=0)
    assert sorted(p2.seeds) == [100, 101, 102] and len(pp2.images) == 3


def test_local_rank_sum_fallback_by_hand():
    a = RewardScores("a", [1.0, 3.0, 3.0, 2.0])          # ranks [3, 0.5, 0.5, 2]
    b = RewardScores("b", [5.0, 6.0, 4.0, 7.0], False)  # lower better: ranks [2, 1... ] -> oriented [-5,-6,-4,-7]
    # b oriented best-first: 4 (idx2) rank0, 5 (idx0) rank1, 6 (idx1) rank2, 7 (idx3) rank3
    # totals (w=1,1): [3+1, 0.5+2, 0.5+0, 2+3] = [4, 2.5, 0.5, 5]
    assert _logic.rank_sum_order([a, b], [1.0, 1.0]) == [2, 1, 0, 3]
    assert _logic.rank_sum_order([a], [1.0]) == [1, 2, 3, 0]  # tie 1/2 -> lower index first
    with pytest.raises(ValueError, match="NaN"):
        _logic.rank_sum_order([RewardScores("c", [1.0, float("nan")])], [1.0])


def test_rich_reward_shares_its_weight_among_its_scores(monkeypatch):
    seen = {}

    def fake_rank(flat, w, mode="rank_sum"):
        seen["w"] = w
        return types.SimpleNamespace(order=[0, 1])

    mod = types.ModuleType("rewardloop.rewards.ranking")
    mod.assemble_rank = fake_rank
    monkeypatch.setitem(sys.modules, "rewardloop.rewards.ranking", mod)
    scored = {"caption": [RewardScores("caption", [1, 2])],
              "rich": [RewardScores(k, [1, 2]) for k in ("plausibility", "aesthetics", "alignment", "overall")]}
    assert _logic.rank_order(scored, {"caption": 2.0, "rich": 1.0}) == [0, 1]
    assert seen["w"] == [2.0, 0.25, 0.25, 0.25, 0.25]


def test_off_or_without_our_args_leaves_the_batch_alone(ext, monkeypatch):
    use_scorers(monkeypatch, {})  # any scorer use would KeyError
    s, p = ext.RewardLoopScript(), make_p(2)
    imgs = batch([0.2, 0.8])
    pp = _PP(list(imgs))
    s.postprocess_batch_list(p, pp, *args(enabled=False), batch_number=0)
    s.postprocess_batch_list(p, pp, batch_number=0)  # API call that did not send our arguments
    assert pp.images[0] is imgs[0] and p.seeds == [100, 101]


@pytest.mark.parametrize("bad, match", [
    (dict(mode="best"), "ranking mode"), (dict(w=(1.0, -1.0, 1.0)), "weights"), (dict(rewards=("clip",)), "unknown"),
])
def test_bad_settings_are_refused_clearly(bad, match):
    with pytest.raises(ValueError, match=match):
        _logic.parse_args(*args(**bad))


def test_a_scorer_returning_the_wrong_count_is_refused(ext, monkeypatch):
    use_scorers(monkeypatch, {"caption": fixed_scorer("caption", [0.5])})
    with pytest.raises(ValueError, match="1 scores for 2 images"):
        ext.RewardLoopScript().postprocess_batch_list(make_p(2), _PP(batch([0.1, 0.2])), *args(), batch_number=0)


# ------------------------------------------------------------------ auto-fix
def test_heatmap_mask_threshold_and_dilation_by_hand():
    heat = np.zeros((4, 4), np.float32)
    heat[1, 2] = 0.9
    m = _logic.heatmap_mask(heat, (4, 4), 0.5, 0.0)
    assert m.sum() == 1 and m[1, 2] == 1
    m = _logic.heatmap_mask(heat, (20, 20), 0.5, 5.0)  # upsampled 5x, then dilated by 1 px
    assert m.any() and m.max() == 1
    assert _logic.heatmap_mask(np.zeros((4, 4)), (8, 8), 0.5, 10.0).sum() == 0


def test_autofix_repaints_only_flagged_regions_through_img2img(ext, monkeypatch):
    heat_flag = torch.zeros(8, 10)
    heat_flag[2:4, 3:6] = 0.9  # flagged block of image 1 (at half resolution)
    details = [{"implausibility_heatmap": torch.zeros(8, 10)}, {"implausibility_heatmap": heat_flag}]
    use_scorers(monkeypatch, {"rich": fixed_scorer("plausibility", [0.4, 0.6], details=details)})
    s, p = ext.RewardLoopScript(), make_p(2)
    imgs = batch([0.2, 0.2])
    pp = _PP(list(imgs))
    s.postprocess_batch_list(p, pp, *args(enabled=False, autofix=True, threshold=0.5, dilation=0.0, denoise=0.35),
                             batch_number=0)
    assert len(_Img2Img.calls) == 1  # only image 1 had a flagged region
    kw = _Img2Img.calls[0].kw
    assert kw["denoising_strength"] == 0.35 and kw["seed"] == 101 and kw["prompt"] == "prompt1"
    assert kw["width"] == 20 and kw["height"] == 16 and kw["sd_model"] == "model"
    assert _Img2Img.calls[0].scripts is None  # never re-enters always-on scripts
    mask = np.asarray(kw["image_mask"]) > 127
    assert mask[4:8, 6:12].all() and mask.sum() == 4 * 6  # the block, scaled x2
    fixed = pp.images[1]
    assert isinstance(fixed, torch.Tensor) and fixed.shape == (3, 16, 20)
    assert float(fixed[:, 5, 7].min()) == 1.0 and abs(float(fixed[:, 0, 0].max()) - 0.2) < 0.01
    assert pp.images[0] is imgs[0]
    assert p.seeds == [100, 101]  # no ranking asked: order unchanged


def test_autofix_then_best_of_n_and_rich_added_for_masks(ext, monkeypatch):
    calls = []

    def caption(images, prompts):
        calls.append("caption")
        return [RewardScores("caption", [0.1, 0.9])]

    heat = torch.ones(4, 4)
    use_scorers(monkeypatch, {"caption": FunctionScorer(["caption"], caption),
                              "rich": fixed_scorer("overall", [0.5, 0.5], details=[{"heatmap": heat}, {}])})
    s, p = ext.RewardLoopScript(), make_p(2)
    pp = _PP(batch([0.3, 0.3]))
    s.postprocess_batch_list(p, pp, *args(rewards=("caption",), autofix=True, keep=1), batch_number=0)
    assert calls == ["caption"] and len(_Img2Img.calls) == 1 and _Img2Img.calls[0].kw["seed"] == 100
    assert p.seeds == [101] and len(pp.images) == 1  # ranking used caption only (rich only gave the masks)


# ------------------------------------------------------------------ packaging / install
def test_pack_import_never_pulls_gradio_or_webui_modules():
    code = ("import sys, rewardloop, rewardloop.scripts, rewardloop.scripts._logic; "
            "bad = [m for m in ('gradio', 'modules', 'modules.scripts') if m in sys.modules]; "
            "assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.fixture
def install(monkeypatch):
    spec = importlib.util.spec_from_file_location("rewardloop_install_a1111", ROOT / "install.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    return mod


def _fake_launch(monkeypatch, skip):
    launch = types.ModuleType("launch")
    launch.args = types.SimpleNamespace(skip_install=skip)
    monkeypatch.setitem(sys.modules, "launch", launch)


def test_install_detects_a1111_and_honours_skip_install(install, monkeypatch, capsys):
    if install.HERE.parent.name == "custom_nodes":
        pytest.skip("checkout lives in a custom_nodes folder: detected as ComfyUI by design")
    monkeypatch.delitem(sys.modules, "launch", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path])  # untouched; no real `launch` module is importable
    assert install.detect_host() == "manual"
    _fake_launch(monkeypatch, skip=True)
    assert install.detect_host() == "a1111"
    calls = []
    assert install.main([], runner=lambda cmd, **kw: calls.append(cmd)) == 0
    assert calls == [] and "skipped (--skip-install)" in capsys.readouterr().out


def test_install_under_a1111_pip_installs_only_missing(install, monkeypatch, capsys):
    if install.HERE.parent.name == "custom_nodes":
        pytest.skip("checkout lives in a custom_nodes folder: detected as ComfyUI by design")
    _fake_launch(monkeypatch, skip=False)
    monkeypatch.setattr(install, "missing_requirements", lambda lines=None: ["surely-missing>=1"])
    calls = []
    assert install.main([], runner=lambda cmd: calls.append(cmd)) == 0
    assert calls == [[sys.executable, "-m", "pip", "install", "surely-missing>=1"]]
    monkeypatch.setenv("COMFYUI_PATH", "/somewhere/ComfyUI")
    assert install.detect_host() == "comfyui"  # the Manager sets COMFYUI_PATH: never treated as A1111


def test_script_loads_the_pack_from_its_extension_folder_when_not_installed():
    """In A1111 the extension folder (any name) is not an importable ``rewardloop``: the script loads it itself."""
    code = f"""
import importlib.abc, importlib.util, sys, types
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "rewardloop":
            raise ImportError("not installed")
        return None
sys.meta_path.insert(0, Block())
ms = types.ModuleType("modules.scripts")
ms.Script = type("Script", (), {{}})
ms.AlwaysVisible = object()
mods = types.ModuleType("modules")
mods.scripts = ms
sys.modules.update({{"gradio": types.ModuleType("gradio"), "modules": mods, "modules.scripts": ms}})
spec = importlib.util.spec_from_file_location("rl_a1111", {str(ROOT / "scripts" / "rewardloop_a1111.py")!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
import rewardloop
assert rewardloop.__file__ == {str(ROOT / "__init__.py")!r}, rewardloop.__file__
assert mod._logic.__name__ == "rewardloop.scripts._logic" and rewardloop.NODE_CLASS_MAPPINGS
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, cwd="/")
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
