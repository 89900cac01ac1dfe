"""The pack inside a real ComfyUI server (v0.3.64, headless, CPU, loopback only): tests/comfyui_host.py.

`.ci/run` prepares ComfyUI (COMFYUI_PATH / COMFYUI_PYTHON); locally see README 'Testing in the real hosts'.

* the pack installs the ComfyUI-Manager way (folder in custom_nodes + install.py with ComfyUI's Python) without
  changing any package ComfyUI already had, and loads without import errors;
* ``/object_info`` lists every node of NODE_CLASS_MAPPINGS with the inputs INPUT_TYPES declares, and
  ``tests/data/core_nodes.json`` still matches this ComfyUI; model pickers list no placeholder files;
* each runnable ``workflows/api/*.api.json`` runs on tiny models (``workflows/api/tiny_models.json``);
* LoRAs trained by the DPG and reward-ranked nodes on ``tiny-sd15-single`` load through core LoraLoader on the same
  checkpoint with zero ``lora key not loaded`` lines, and change the image (strength 1 vs 0).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyui_host import LORA_MISS, PACK_FOLDER, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.realhost]
BASE = "tiny-sd15-single"


def _api_workflows() -> list[Path]:
    return sorted((ROOT / "workflows" / "api").glob("*.api.json"))


@pytest.fixture(scope="module")
def object_info(comfy):
    return comfy.get("/object_info", timeout=120)


def test_install_py_adds_packages_and_changes_none(comfy):
    before, after = comfy.freeze_before, comfy.freeze_after
    changed = {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v}
    assert not changed, f"install.py changed packages ComfyUI had: {changed}\n{comfy.install_log[-3000:]}"
    for pkg in ("diffusers", "peft", "accelerate", "segment-anything"):
        assert pkg in after, f"{pkg} missing from ComfyUI's Python after install.py:\n{comfy.install_log[-3000:]}"


def test_pack_loaded_without_import_errors(comfy, object_info):
    lines = comfy.log_text().splitlines()
    bad = [ln for ln in lines if PACK_FOLDER in ln and ("IMPORT FAILED" in ln or "Cannot import" in ln)]
    bad += [ln for ln in lines if "RewardLoop: nodes." in ln and "not loaded" in ln]  # nodes/__init__ isolation
    assert not bad, "\n".join(bad) + "\n" + comfy.log_tail()
    assert any(PACK_FOLDER in ln for ln in lines), "the pack was not even attempted:\n" + comfy.log_tail()
    # the pack runs as ComfyUI imports it: `rewardloop` is not importable in ComfyUI's Python
    import subprocess

    from comfyui_host import host_env
    r = subprocess.run([comfy.python, "-c", "import rewardloop"], capture_output=True, env=host_env(), timeout=60)
    assert r.returncode != 0, "rewardloop is importable in ComfyUI's Python: the test would not see a user's setup"


def test_object_info_lists_every_node_with_its_inputs(object_info):
    from rewardloop.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from rewardloop.workflows.graph import input_entries, spec_from_class
    assert NODE_CLASS_MAPPINGS
    for key, cls in NODE_CLASS_MAPPINGS.items():
        assert key in object_info, f"{key} missing from /object_info"
        live = object_info[key]
        ours = spec_from_class(cls)
        assert live["category"].startswith("RewardLoop"), live["category"]
        if key in NODE_DISPLAY_NAME_MAPPINGS:
            assert live["display_name"] == NODE_DISPLAY_NAME_MAPPINGS[key]
        assert list(live["output"]) == list(ours["output"]), key
        assert list(live["output_name"]) == list(ours["output_name"]), key
        assert bool(live["output_node"]) == ours["output_node"], key
        want = [(n, t, req) for n, t, _o, _c, req in input_entries(ours)]
        got = [(n, t, req) for n, t, _o, _c, req in input_entries(live)]
        assert got == want, f"{key}: /object_info inputs {got} != INPUT_TYPES {want}"


def test_model_pickers_list_no_placeholder_files(comfy, object_info):
    """ComfyUI's models folders hold `put_..._here` marker files; no picker of ours may offer them."""
    from rewardloop.workflows.graph import input_entries
    # the real placeholders of this ComfyUI checkout, copied into the temporary base directory's models/
    import shutil
    from comfyui_host import comfy_path
    src = comfy_path() / "models"
    markers = sorted(src.glob("*/put_*_here"))
    assert markers, f"no placeholder files in {src}"
    for m in markers:
        dst = comfy.tmp / "models" / m.parent.name / m.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(m, dst)
    info = comfy.get("/object_info", timeout=120)
    offered = []
    for key, spec in info.items():
        if not key.startswith("RewardLoop"):
            continue
        for name, _t, _o, choices, _r in input_entries(spec):
            offered += [(key, name, c) for c in (choices or []) if isinstance(c, str) and c.startswith("put_")]
    assert not offered, offered


def test_core_nodes_json_matches_this_comfyui(object_info):
    from rewardloop.workflows.core_nodes import trim
    from rewardloop.workflows.graph import input_entries, load_core_specs
    saved = load_core_specs()
    live = trim(object_info, keep=list(saved))
    for name, spec in saved.items():
        assert name in live, f"core node {name} no longer exists in this ComfyUI"
        want = [(n, t, req, bool(o.get("files")) or c) for n, t, o, c, req in input_entries(spec)]
        got = [(n, t, req, bool(o.get("files")) or c) for n, t, o, c, req in input_entries(live[name])]
        assert got == want, f"core node {name} changed: regenerate tests/data/core_nodes.json"
        assert live[name]["output"] == spec["output"], name


def test_server_refuses_an_unknown_node(comfy):
    status, body = comfy.post("/prompt", {"prompt": {"1": {"class_type": "RewardLoopNoSuchNode", "inputs": {}}}})
    assert status == 400 and "error" in body, body


def test_tokenizer_from_comfyui_matches_and_bpe_rebuild_is_exact(comfy, tmp_path):
    """The trainers' CLIP tokenizer comes from ComfyUI's comfy/sd1_tokenizer (cut at 77, not its 8192), and the
    vocabulary rebuilt from CLIP's original BPE merges (what open_clip / clip ship) equals that copy exactly."""
    import gzip

    from comfyui_host import comfy_path
    from rewardloop.weights import clip_tokenizer as ct
    src = comfy_path() / "comfy" / "sd1_tokenizer"
    assert json.loads((src / "tokenizer_config.json").read_text())["model_max_length"] == 8192
    tok = ct._load(src, None)
    assert tok.model_max_length == 77
    ids = tok(["a photo of sks dog " * 40], padding="max_length", truncation=True,
              max_length=tok.model_max_length).input_ids[0]
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407
    merges = (src / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    bpe = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe, "wt", encoding="utf-8") as f:  # CLIP's file: a header line, then merges (and more)
        f.write("\n".join(["\"bpe_simple_vocab_16e6.txt#version: 0.2"] + merges + ["x y"] * 10) + "\n")
    out = ct.files_from_bpe(bpe, tmp_path / "rebuilt")
    assert json.loads((out / "vocab.json").read_text()) == json.loads((src / "vocab.json").read_text())


@pytest.mark.parametrize("path", _api_workflows(), ids=lambda p: p.name)
def test_workflow_runs_on_tiny_models(comfy, object_info, path):
    from rewardloop.workflows import tiny_run
    from rewardloop.workflows.graph import validate_api
    name = path.name[:-len(".api.json")]
    plan = tiny_run.load_plan()
    ok, reason = tiny_run.entry_for(name, plan)
    assert ok, reason
    for lora in plan[name].get("requires", []):
        if not (comfy.models_root / "loras" / lora).is_file():
            _run_named(comfy, "dpg_personalize")  # the LoRA an earlier workflow writes (when run alone)
    files = comfy.build_models(plan[name])
    comfy.write_inputs(plan[name])
    prompt = tiny_run.apply(json.loads(path.read_text()), plan[name], files)
    live = {ct: comfy.get(f"/object_info/{ct}")[ct] for ct in {n["class_type"] for n in prompt.values()}}
    errs = validate_api(prompt, live)  # live specs, fetched after building: the tiny model names must be offered
    assert not errs, errs
    t0 = time.monotonic()
    mark = comfy.log_mark()
    hist = comfy.run_ok(prompt)
    outs = hist["outputs"]
    sinks = [nid for nid, n in prompt.items() if object_info[n["class_type"]].get("output_node")]
    for nid in sinks:
        assert nid in outs and outs[nid], f"output node {nid} ({prompt[nid]['class_type']}) produced no ui output"
        for img in outs[nid].get("images", []):
            if img.get("type") == "output":
                f = comfy.output_dir / img.get("subfolder", "") / img["filename"]
                assert f.is_file() and f.stat().st_size > 0, f
    missed = [ln for ln in comfy.log_since(mark).splitlines() if LORA_MISS in ln]
    assert not missed, f"{len(missed)} LoRA keys not loaded:\n" + "\n".join(missed[:20])
    for nid, needle in plan[name].get("expect_text", {}).items():  # what a node showed, e.g. a table's summary
        shown = "\n".join(str(t) for t in outs.get(nid, {}).get("text", []))
        assert needle in shown, f"node {nid} showed {shown[-800:]!r}, expected {needle!r}"
    print(f"{path.name}: success in {time.monotonic() - t0:.1f} s, outputs from nodes {sorted(outs)}")


def _run_named(comfy, name: str) -> dict:
    from rewardloop.workflows import tiny_run
    plan = tiny_run.load_plan()
    files = comfy.build_models(plan[name])
    comfy.write_inputs(plan[name])
    prompt = tiny_run.apply(json.loads((ROOT / "workflows" / "api" / f"{name}.api.json").read_text()), plan[name],
                            files)
    return comfy.run_ok(prompt)


# ------------------------------------------------------------------ trained LoRAs through core LoraLoader
def _txt2img_with_lora(ckpt: str, lora: str, strength: float, prefix: str) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora,
                                                     "strength_model": strength, "strength_clip": strength}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "a photo of sks dog"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": ""}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "positive": ["3", 0], "negative": ["4", 0],
                                                   "latent_image": ["5", 0], "seed": 3, "steps": 2, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}},
    }


def _assert_lora_loads_and_changes_the_image(comfy, ckpt: str, lora: str, tag: str) -> None:
    from safetensors import safe_open
    with safe_open(str(comfy.models_root / "loras" / lora), "pt") as f:
        n_keys = len(list(f.keys()))
    assert n_keys > 0
    images = {}
    for s in (0.0, 1.0):
        mark = comfy.log_mark()
        hist = comfy.run_ok(_txt2img_with_lora(ckpt, lora, s, f"{tag}_s{int(s)}"))
        log = comfy.log_since(mark)
        missed = [ln for ln in log.splitlines() if LORA_MISS in ln or ("lora" in ln.lower() and "ERROR" in ln)]
        assert not missed, f"{len(missed)} LoRA problems for {lora} at strength {s}:\n" + "\n".join(missed[:20])
        [png] = comfy.output_files(hist, "8")
        images[s] = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    diff = np.abs(images[1.0] - images[0.0])
    assert diff.max() > 0, f"{lora}: the image at strength 1 equals the one at strength 0 (the LoRA did nothing)"
    print(f"{lora}: {n_keys} tensors, all loaded; image change at strength 1: mean {diff.mean():.2f}, "
          f"max {diff.max()} (of 255)")


def test_dpg_lora_loads_in_core_loraloader_and_changes_the_image(comfy):
    files = comfy.build_models({"models": {"sd": [BASE], "d": ["tiny-dino"]}})
    comfy.write_inputs({"inputs": {"ref_a.png": [48, 40], "ref_b.png": [40, 48]}})
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "ref_a.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "ref_b.png"}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "4": {"class_type": "RewardLoopPersonalizeDPG", "inputs": {
            "checkpoint": files["sd"], "references": ["3", 0], "trigger": "sks", "class_prompt": "a photo of a dog",
            "steps": 3, "lr": 0.05, "rank": 4, "loss_mode": "look_forward", "resolution": 64, "seed": 0,
            "output_name": "realhost/dpg_lora", "overwrite": True, "preset": "cpu", "num_class_images": 0,
            "sample_steps": 1}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}},
    }
    comfy.run_ok(prompt)
    _assert_lora_loads_and_changes_the_image(comfy, files["sd"], "realhost/dpg_lora.safetensors", "dpg")


def test_ranked_lora_loads_in_core_loraloader_and_changes_the_image(comfy):
    files = comfy.build_models({"models": {"sd": [BASE], "r": ["tiny-rahf"]}})
    prompt = {
        "1": {"class_type": "RewardLoopScorerFromRegistry", "inputs": {
            "reward": "rich", "models": "rich_feedback=tiny-rahf", "device": "auto", "dtype": "auto"}},
        "2": {"class_type": "RewardLoopRankedFinetune", "inputs": {
            "checkpoint": files["sd"], "prompts": "a photo of sks dog", "scorer": ["1", 0], "weight": 1.0,
            "k": 2, "rounds": 1, "top_k": 1, "lora_rank": 4, "learning_rate": 0.01, "steps_per_round": 3,
            "resolution": 64, "sample_steps": 1, "cfg": 5.0, "seed": 1, "output_name": "realhost_ranked",
            "overwrite": True, "ranking": "rank_sum"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}},
    }
    hist = comfy.run_ok(prompt)
    loras = sorted(p.relative_to(comfy.models_root / "loras").as_posix()
                   for p in (comfy.models_root / "loras").rglob("realhost_ranked*.safetensors"))
    assert loras, f"the ranked node wrote no LoRA; outputs {hist['outputs']}"
    _assert_lora_loads_and_changes_the_image(comfy, files["sd"], loras[-1], "ranked")
