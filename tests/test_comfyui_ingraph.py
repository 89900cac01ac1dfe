"""Personalize in Graph (DPG) inside the real ComfyUI server (tests/comfyui_host.py), per architecture.

For SD1.5 (the shared ``tiny-sd15-single``), SDXL and SD3.5 (``weights/tiny_comfy.py``: ComfyUI's own model classes
with tiny configs, detected by CheckpointLoaderSimple as SD15 / KOALA_700M (SDXL class) / SD3):

* one graph trains a few steps on the loaded MODEL and samples with the node's MODEL output and with the input
  MODEL, side by side: the images differ, and the node reports its LoRA file;
* a second graph reloads that file through core LoraLoader (strength 1) on the same checkpoint: zero
  ``lora key not loaded`` lines, the image differs from the base model's and equals the in-graph MODEL's image
  (the node's MODEL output is the input with the saved LoRA applied exactly as LoraLoader applies it), and the
  loader's cached MODEL still samples exactly as before training (the graph's model was not touched).
SD1.5 also trains the text-encoder LoRA (CLIP output and LoraLoader's clip strength).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyui_host import LORA_MISS, ROOT, host_env

pytestmark = [pytest.mark.slow, pytest.mark.realhost]
ARCHES = ["sd15", "sdxl", "sd35"]


def _tiny_checkpoint(comfy, arch: str) -> str:
    """The tiny checkpoint's name in models/checkpoints (SDXL/SD3.5 built once per builder version, cached)."""
    if arch == "sd15":
        return comfy.build_models({"models": {"sd": ["tiny-sd15-single"]}})["sd"]
    src = ROOT / "weights" / "tiny_comfy.py"
    key = hashlib.sha1(src.read_bytes()).hexdigest()[:10]
    cache = Path(os.environ.get("REWARDLOOP_TINY_CACHE", Path.home() / ".cache" / "rewardloop" / "tiny_comfy"))
    built = cache / f"comfy-tiny-{arch}-{key}.safetensors"
    if not built.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = built.with_suffix(".part")
        r = subprocess.run([comfy.python, str(src), os.environ["COMFYUI_PATH"], arch, str(tmp)],
                           capture_output=True, text=True, timeout=900, env=host_env())
        assert r.returncode == 0, r.stderr[-3000:]
        os.replace(tmp, built)
    name = f"comfy-tiny-{arch}.safetensors"
    link = comfy.models_root / "checkpoints" / name
    if not link.exists():
        link.symlink_to(built)
    return name


def _sample(ckpt_node: str, model: list, clip: list, prefix: str, nid: int) -> dict:
    n = {str(nid): {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of sks dog", "clip": clip}},
         str(nid + 1): {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}},
         str(nid + 2): {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
         str(nid + 3): {"class_type": "KSampler", "inputs": {
             "model": model, "positive": [str(nid), 0], "negative": [str(nid + 1), 0],
             "latent_image": [str(nid + 2), 0], "seed": 3, "steps": 2, "cfg": 4.0, "sampler_name": "euler",
             "scheduler": "normal", "denoise": 1.0}},
         str(nid + 4): {"class_type": "VAEDecode", "inputs": {"samples": [str(nid + 3), 0], "vae": [ckpt_node, 2]}},
         str(nid + 5): {"class_type": "SaveImage", "inputs": {"images": [str(nid + 4), 0], "filename_prefix": prefix}}}
    return n


def _img(comfy, hist, nid) -> np.ndarray:
    [png] = comfy.output_files(hist, str(nid))
    return np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("arch", ARCHES)
def test_in_graph_dpg_trains_reloads_and_changes_the_image(comfy, arch):
    ckpt = _tiny_checkpoint(comfy, arch)
    comfy.write_inputs({"inputs": {"ig_a.png": [48, 40], "ig_b.png": [40, 48]}})
    te = arch == "sd15"
    name = f"realhost/ingraph_{arch}"
    train = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "ig_a.png"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "ig_b.png"}},
        "4": {"class_type": "ImageBatch", "inputs": {"image1": ["2", 0], "image2": ["3", 0]}},
        "5": {"class_type": "RewardLoopPersonalizeInGraphDPG", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "references": ["4", 0], "trigger": "sks",
            "class_prompt": "a photo of a dog", "steps": 2, "lr": 0.05, "rank": 4, "loss_mode": "look_forward",
            "resolution": 64, "seed": 0, "output_name": name, "overwrite": True, "preset": "cpu",
            "num_class_images": 0, "sample_steps": 1, "gradient_checkpointing": "on",
            "train_text_encoder": "on" if te else "off"}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 4]}},
    }
    if arch == "sd35":   # a reward through the learned critic, td target (the chain step on a flow schedule)
        rahf = comfy.build_models({"models": {"r": ["tiny-rahf"]}})
        assert rahf
        train["7"] = {"class_type": "RewardLoopScorerFromRegistry", "inputs": {
            "reward": "rich", "models": "rich_feedback=tiny-rahf", "device": "auto", "dtype": "auto"}}
        train["5"]["inputs"].update(reward=["7", 0], reward_weight=1.0, critic_update_every=1, critic_target="td")
    train.update(_sample("1", ["5", 0], ["5", 1], f"ig_{arch}_graph", 10))   # the node's MODEL (+CLIP)
    train.update(_sample("1", ["1", 0], ["1", 1], f"ig_{arch}_base", 20))    # the input MODEL, same graph
    hist = comfy.run_ok(train, timeout=1200)
    assert any(f"{name}.safetensors" in t for t in hist["outputs"]["5"]["text"]), hist["outputs"]["5"]
    if arch == "sd35":   # the node's summary line: the rich scores of the decoded x̂0 and the critic's loss
        [text] = [t for t in hist["outputs"]["5"]["text"] if name in t]
        assert "; rewards (last scored): " in text and "overall " in text and "; critic loss " in text, text
    graph, base = _img(comfy, hist, 15), _img(comfy, hist, 25)
    assert np.abs(graph - base).max() > 0, "the node's MODEL samples exactly like the input MODEL"
    lora = comfy.models_root / "loras" / f"{name}.safetensors"
    from safetensors import safe_open
    with safe_open(str(lora), "pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("diffusion_model.") for k in keys)
    assert any(k.startswith("text_encoders.") for k in keys) == te

    reload = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
              "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                           "lora_name": f"{name}.safetensors",
                                                           "strength_model": 1.0, "strength_clip": 1.0}}}
    reload.update(_sample("1", ["2", 0], ["2", 1], f"ig_{arch}_file", 10))
    reload.update(_sample("1", ["1", 0], ["1", 1], f"ig_{arch}_base_after", 20))  # the cached input MODEL again
    mark = comfy.log_mark()
    hist2 = comfy.run_ok(reload, timeout=900)
    log = comfy.log_since(mark)
    missed = [ln for ln in log.splitlines() if LORA_MISS in ln or "NOT LOADED" in ln]
    assert not missed, f"{len(missed)} LoRA keys not loaded:\n" + "\n".join(missed[:20])
    file_img = _img(comfy, hist2, 15)
    assert np.array_equal(_img(comfy, hist2, 25), base), "training changed the MODEL the loader node holds"
    assert np.abs(file_img - base).max() > 0, "the reloaded LoRA does not change the image"
    assert np.abs(file_img - graph).max() <= 1, "LoraLoader(file) and the node's MODEL output sample differently"
    print(f"{arch}: {len(keys)} LoRA tensors, all loaded; graph vs base max diff {np.abs(graph - base).max()}")
