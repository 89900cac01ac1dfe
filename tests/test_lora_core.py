"""The shared LoRA training core on tiny-sd: loading (folder and single file), kohya export, resume, bad inputs."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from rewardloop import bridge
from rewardloop.fileio import OutputExistsError, UnsafeNameError
from rewardloop.trainers import lora as L




def refs(n=2, size=(40, 48), mode="RGB"):
    out = []
    for i in range(n):
        arr = (np.random.RandomState(i).rand(size[1], size[0], 3) * 255).astype(np.uint8)
        out.append(Image.fromarray(arr).convert(mode))
    return out


def _expected_kohya(model, prefix, targets, te=False):
    """kohya names computed from the module tree alone (before any adapter is added)."""
    names = set()
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            path = name
            if te and not name.startswith("text_model."):
                path = "text_model." + name   # kohya / A1111 / ComfyUI use the transformers-4 module tree
            names.add(prefix + path.replace(".", "_"))
    return names


def test_export_has_kohya_key_for_every_targeted_module_and_changes_output(tiny, fresh_cache, out_env):
    base = tiny("tiny-sd")
    c = L.load_base(base, device="cpu")
    cfg = L.LoraConfig(rank=2, alpha=1.0, train_text_encoder=True)
    expected = _expected_kohya(c.unet, "lora_unet_", cfg.targets) | \
        _expected_kohya(c.text_encoder, "lora_te_", cfg.text_targets, te=True)
    assert len(expected) == 32 + 8  # 4 transformer blocks x (attn1, attn2) x 4 projections; CLIP 2 layers x 4
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in expected
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q" in expected
    L.add_lora(c, cfg)
    with torch.no_grad():  # make the (zero-initialised) up weights non-zero, as after training
        g = torch.Generator().manual_seed(0)
        for p in L.trainable_parameters(c):
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    sd = L.lora_state_dict(c)
    assert {k.split(".")[0] for k in sd} == expected
    for n in expected:
        down, up, alpha = sd[n + ".lora_down.weight"], sd[n + ".lora_up.weight"], sd[n + ".alpha"]
        assert down.shape[0] == 2 and up.shape[1] == 2 and float(alpha) == 1.0

    path = L.export_lora(c, "people/alice", {"trigger": "sks", "steps": "5", "objective": "test"})
    assert path.parent == (bridge.loras_dir() / "people").resolve() and path.name == "alice.safetensors"
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == set(sd)
    unet_file = next((L._resolve_base(base) / "unet").glob("*.safetensors"))
    assert meta["ss_new_sd_model_hash"] == hashlib.sha256(unet_file.read_bytes()).hexdigest()
    assert meta["ss_network_dim"] == "2" and meta["ss_network_alpha"] == "1.0"
    assert meta["modelspec.trigger_phrase"] == "sks" and meta["ss_base_model_version"] == "sd_v1"
    with pytest.raises(OutputExistsError):
        L.export_lora(c, "people/alice", {})
    before = path.read_bytes()
    with pytest.raises(UnsafeNameError):
        L.export_lora(c, "../escape", {})
    assert path.read_bytes() == before and not (bridge.loras_dir().parent / "escape.safetensors").exists()

    # the exported file, merged into a fresh model, reproduces the adapter model and changes the output
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ids = L._tokenize(c.tokenizer, ["a photo of sks dog"], "cpu")
    with torch.no_grad():
        want = c.unet(x, torch.tensor([500]), encoder_hidden_states=c.text_encoder(ids)[0]).sample
    fresh = L.load_base(base, device="cpu")
    with torch.no_grad():
        plain = fresh.unet(x, torch.tensor([500]), encoder_hidden_states=fresh.text_encoder(ids)[0]).sample
    img0 = L.generate(fresh, ["a photo of sks dog"], [3], steps=2, width=32, height=32)[0]
    patched = L.load_lora_into(fresh, path, scale=1.0)
    assert len(patched) == len(expected)
    with torch.no_grad():
        got = fresh.unet(x, torch.tensor([500]), encoder_hidden_states=fresh.text_encoder(ids)[0]).sample
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())
    assert (got - plain).abs().max() > 1e-3
    img1 = L.generate(fresh, ["a photo of sks dog"], [3], steps=2, width=32, height=32)[0]
    assert np.abs(np.asarray(img0, np.int16) - np.asarray(img1, np.int16)).max() > 0


def test_single_file_checkpoint_loads_identically(tiny, fresh_cache):
    folder = L.load_base(tiny("tiny-sd"), device="cpu")
    key = tiny("tiny-sd-single")
    from rewardloop.weights.registry import resolve
    p = resolve(key).path
    assert p.is_file() and p.parent.name == "checkpoints"
    from safetensors import safe_open
    with safe_open(str(p), "pt") as f:
        keys = list(f.keys())
    # the original LDM / CompVis layout
    assert any(k.startswith("model.diffusion_model.input_blocks.1.0.in_layers.0.") for k in keys)
    assert any(k.startswith("model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.") for k in keys)
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in keys
    # explicit config= and the checkpoint's own hint give the same, exact weights
    for single in (L.load_base(key, device="cpu", config=L._resolve_base("tiny-sd")), L.load_base(p, device="cpu")):
        assert single.family == "sd1" and not single.is_sdxl
        for name in ("unet", "vae", "text_encoder"):
            a, b = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
            assert set(a) == set(b)
            for k in a:
                assert torch.equal(a[k], b[k].reshape(a[k].shape)), (name, k)


def test_bundled_configs_describe_the_real_architectures():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    counts = {}
    for fam in ("sd1", "sd2", "sdxl"):
        d = L.CONFIG_DIR / fam
        with init_empty_weights():
            u = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(d / "unet"))
        counts[fam] = round(sum(p.numel() for p in u.parameters()) / 1e6, 2)
    assert counts == {"sd1": 859.52, "sd2": 865.91, "sdxl": 2567.46}
    assert L._family_from_keys(["conditioner.embedders.1.model.x"]) == "sdxl"
    assert L._family_from_keys(["cond_stage_model.model.transformer.x"]) == "sd2"
    assert L._family_from_keys(["cond_stage_model.transformer.text_model.x"]) == "sd1"


def test_resume_after_interrupt_matches_uninterrupted_run(tiny, fresh_cache, tmp_path):
    base = tiny("tiny-sd")
    data = [(im, "a photo of sks dog") for im in refs(2)]
    cls = [(im, "a photo of dog") for im in refs(1, size=(32, 32))]
    lcfg = L.LoraConfig(rank=2)
    tcfg = L.TrainConfig(steps=4, lr=1e-3, resolution=32, save_every=2, seed=5, lr_scheduler="linear",
                         sample_every=4, sample_prompts=("a sks dog",), sample_steps=2)
    full = L.train_lora(L.load_base(base, device="cpu"), data, L.NoiseMSE(), lcfg, tcfg, tmp_path / "a",
                        class_dataset=cls)
    assert full.steps_done == 4 and full.lora_path.is_file() and full.loss_plot_png.is_file()
    assert [int(r["step"]) for r in L.read_log(full.log_csv)] == [1, 2, 3, 4]
    assert {"loss", "mse", "prior", "lr"} <= set(L.read_log(full.log_csv)[0])
    assert len(full.samples) == 1 and full.samples[0].is_file()

    def stop_at_3(info):
        if info["step"] == 3:
            bridge.request_interrupt()

    with torch.inference_mode():  # as ComfyUI runs nodes: the core must leave inference mode itself
        with pytest.raises(bridge.Interrupted):
            L.train_lora(L.load_base(base, device="cpu"), data, L.NoiseMSE(), lcfg, tcfg, tmp_path / "b",
                         progress=stop_at_3, class_dataset=cls)
    assert L.latest_checkpoint(tmp_path / "b").name == "step_0000003"
    assert not list((tmp_path / "b" / "checkpoints").glob(".tmp*"))
    resumed = L.train_lora(L.load_base(base, device="cpu"), data, L.NoiseMSE(), lcfg, tcfg, tmp_path / "b",
                           class_dataset=cls)
    assert resumed.steps_done == 4
    assert [int(r["step"]) for r in L.read_log(resumed.log_csv)] == [1, 2, 3, 4]
    assert set(full.state) == set(resumed.state)
    for k in full.state:
        assert torch.equal(full.state[k], resumed.state[k]), k
    assert any(float(v.abs().max()) > 0 for k, v in full.state.items() if "lora_up" in k)  # it trained


def test_noise_mse_reduces_loss_with_accumulation_and_checkpointing(tiny, fresh_cache, tmp_path):
    data = [(im, "a photo of sks dog") for im in refs(2)]
    res = L.train_lora(L.load_base(tiny("tiny-sd"), device="cpu"), data, L.NoiseMSE(), L.LoraConfig(rank=4),
                       L.TrainConfig(steps=4, lr=1e-2, resolution=32, save_every=0, batch_size=1, grad_accum=2,
                                     gradient_checkpointing=True, cache_latents=False, fixed_draw=True),
                       tmp_path)
    losses = [float(r["loss"]) for r in L.read_log(res.log_csv)]
    assert losses[-1] < losses[0]


def test_bad_inputs_give_clear_errors(tiny, tmp_path):
    c = L.load_base(tiny("tiny-sd"), device="cpu")
    with pytest.raises(ValueError, match="No reference images"):
        L.train_lora(c, [], L.NoiseMSE(), L.LoraConfig(rank=2), L.TrainConfig(steps=1, resolution=32), tmp_path)
    with pytest.raises(ValueError, match="empty prompt"):
        L.train_lora(c, [(refs(1)[0], " ")], L.NoiseMSE(), L.LoraConfig(rank=2),
                     L.TrainConfig(steps=1, resolution=32), tmp_path)
    with pytest.raises(ValueError, match="multiple of 8"):
        L.TrainConfig(resolution=30).validate()
    with pytest.raises(ValueError, match="match no module"):
        L.add_lora(c, L.LoraConfig(rank=2, targets=("nope_proj",)))
    # 1-channel and palette images are converted to RGB and centre-cropped
    gray = refs(1, size=(60, 20), mode="L")[0]
    t = L.prepare_image(gray, 16)
    assert t.shape == (3, 16, 16) and torch.equal(t[0], t[1]) and -1 <= float(t.min()) <= float(t.max()) <= 1
    assert L.prepare_image(refs(1, mode="P")[0], 16).shape == (3, 16, 16)
    with pytest.raises(FileNotFoundError, match="not found"):
        L.load_base("no-such-model.safetensors")


COMFY_MAP_SCRIPT = r"""
import json, sys, types
sys.path.insert(0, sys.argv[1])
try:
    import einops  # noqa: F401
except ImportError:  # only rearrange/repeat are imported at module level; unet_to_diffusers needs neither
    e = types.ModuleType("einops"); e.rearrange = e.repeat = None; sys.modules["einops"] = e
import comfy.utils
cfg = {"num_res_blocks": [1, 1], "channel_mult": [1, 2], "transformer_depth": [0, 1],
       "transformer_depth_output": [0, 0, 1, 1], "transformer_depth_middle": 1}
print(json.dumps(comfy.utils.unet_to_diffusers(cfg)))
"""


@pytest.mark.realhost
def test_kohya_names_and_ldm_layout_agree_with_comfyui_key_map(tiny, fresh_cache):
    """ComfyUI's own diffusers→LDM map (run in a subprocess) resolves every exported UNet LoRA key to a weight
    of our single-file checkpoint with the right shape; text-encoder keys follow ComfyUI's template."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    comfy_dir = Path(os.environ.get("COMFYUI_PATH", "/nonexistent"))
    if not (comfy_dir / "comfy" / "utils.py").is_file():
        pytest.skip("no ComfyUI checkout to compare with: set COMFYUI_PATH / COMFYUI_PYTHON (bash .ci/run does)")
    py = os.environ.get("COMFYUI_PYTHON", sys.executable)
    proc = subprocess.run([py, "-c", COMFY_MAP_SCRIPT, str(comfy_dir)], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"ComfyUI's utils did not import here: {proc.stderr.strip().splitlines()[-1:]}")
    cmap = json.loads(proc.stdout.strip().splitlines()[-1])
    comfy_keys = {"lora_unet_" + k[:-len(".weight")].replace(".", "_"): "model.diffusion_model." + v
                  for k, v in cmap.items() if k.endswith(".weight")}          # as comfy/lora.py builds them
    c = L.load_base(tiny("tiny-sd"), device="cpu")
    L.add_lora(c, L.LoraConfig(rank=2, train_text_encoder=True))
    sd = L.lora_state_dict(c)
    from safetensors import safe_open
    from rewardloop.weights.registry import resolve
    with safe_open(str(resolve(tiny("tiny-sd-single")).path), "pt") as f:
        ldm = {k: f.get_slice(k).get_shape() for k in f.keys()}
    unet_names = sorted({k.split(".")[0] for k in sd if k.startswith("lora_unet_")})
    assert len(unet_names) == 32
    for n in unet_names:
        assert n in comfy_keys, f"ComfyUI would not match {n}"
        target = comfy_keys[n]
        out_f, in_f = sd[n + ".lora_up.weight"].shape[0], sd[n + ".lora_down.weight"].shape[1]
        assert ldm[target] == [out_f, in_f], (n, target)
    template = (comfy_dir / "comfy" / "lora.py").read_text()
    assert '"lora_te_text_model_encoder_layers_{}_{}"' in template
    te = sorted({k.split(".")[0] for k in sd if k.startswith("lora_te_")})
    allowed = {f"lora_te_text_model_encoder_layers_{b}_self_attn_{p}" for b in range(2)
               for p in ("q_proj", "k_proj", "v_proj", "out_proj")}
    assert set(te) == allowed


def test_sdxl_folder_trains_and_exports_te1_te2_keys(tmp_path, fresh_cache):
    from rewardloop.weights.tiny import make_sdxl_pipeline
    folder = tmp_path / "tiny-sdxl"
    make_sdxl_pipeline().save_pretrained(folder, safe_serialization=True)
    c = L.load_base(folder, device="cpu")
    assert c.is_sdxl and c.family == "sdxl" and c.text_encoder_2 is not None
    data = [(im, "a photo of sks dog") for im in refs(1)]
    res = L.train_lora(c, data, L.NoiseMSE(), L.LoraConfig(rank=2, train_text_encoder=True),
                       L.TrainConfig(steps=2, lr=1e-3, resolution=32, save_every=0), tmp_path / "run")
    prefixes = {k.split("_text_model")[0] for k in res.state if k.startswith("lora_te")}
    assert prefixes == {"lora_te1", "lora_te2"}
    assert "lora_te2_text_model_encoder_layers_1_self_attn_out_proj.lora_up.weight" in res.state
    assert any(k.startswith("lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_") for k in res.state)
    img = L.generate(c, ["a photo of sks dog"], [0], steps=2, width=32, height=32)[0]
    assert img.size == (32, 32)
