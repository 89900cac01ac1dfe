"""Every tiny model kind is written in its real format and loads back through the registry and the cache."""
from __future__ import annotations

import pytest
import torch

from rewardloop.weights.catalogue import CATALOGUE
from rewardloop.weights.loaders import LOADERS, sam_config_from_state_dict
from rewardloop.weights.registry import resolve

# tiny-sd15-single needs a CLIP tokenizer like a user's checkpoint does: its own tests below
TINY = [s for s in CATALOGUE if s.source == "tiny" and s.key != "tiny-sd15-single"]


@pytest.mark.parametrize("spec", TINY, ids=[s.key for s in TINY])
def test_tiny_model_round_trips_through_registry(spec, tiny, fresh_cache, models_root):
    key = tiny(spec.key)
    r = resolve(key)
    assert r.where == "models-root" and r.path == models_root / spec.folder / spec.name
    h = LOADERS[spec.kind](key, device="cpu")
    assert h.path == r.path and h.model is not None
    assert fresh_cache.stats.misses == 1
    again = LOADERS[spec.kind](key, device="cpu")
    assert again is h and fresh_cache.stats.hits == 1


def test_sam_pth_is_segment_anything_layout(tiny, fresh_cache):
    from rewardloop.weights.safe_load import load_state_dict
    h = LOADERS["sam"](tiny("tiny-sam"), device="cpu")
    sd = load_state_dict(h.path)
    assert {k.split(".")[0] for k in sd} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    cfg = sam_config_from_state_dict(sd)
    assert cfg["embed_dim"] == 64 and cfg["depth"] == 2 and cfg["global_attn_indexes"] == (1,)
    assert cfg["img_size"] == 256 and cfg["window_size"] == 4
    from segment_anything import SamPredictor
    pred = SamPredictor(h.model)
    import numpy as np
    pred.set_image(np.zeros((40, 60, 3), dtype=np.uint8))
    masks, scores, _ = pred.predict(point_coords=np.array([[30, 20]]), point_labels=np.array([1]))
    assert masks.shape == (3, 40, 60) and scores.shape == (3,)


def test_sam_config_inference_matches_official_vit_b_layout():
    from segment_anything import sam_model_registry
    with torch.device("meta"):
        sam = sam_model_registry["vit_b"]()
    cfg = sam_config_from_state_dict(sam.state_dict())
    assert cfg == dict(embed_dim=768, depth=12, num_heads=12, img_size=1024, patch_size=16, window_size=14,
                       global_attn_indexes=(2, 5, 8, 11), out_chans=256, decoder_depth=2, decoder_mlp_dim=2048,
                       decoder_heads=8, mask_in_chans=16, iou_head_hidden_dim=256)


def test_captioner_and_llm_generate(tiny, fresh_cache):
    from rewardloop.rewards.images import image_to_pil
    cap = LOADERS["captioner"](tiny("tiny-blip2"), device="cpu")
    img = image_to_pil(torch.rand(1, 32, 32, 3))
    inputs = cap.processor(images=img, text="", return_tensors="pt")  # the image tokens (transformers 4.x too)
    out = cap.model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 1
    llm = LOADERS["llm"](tiny("tiny-llm"), device="cpu")
    enc = llm.processor.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
    assert enc["input_ids"].shape[1] > 2
    assert llm.model(**enc).logits.shape[-1] == len(llm.processor)


def test_unknown_dtype_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="fp32, fp16, bf16"):
        LOADERS["llm"](tiny("tiny-llm"), dtype="fp8", device="cpu")


def _write_clip_tokenizer(folder):
    from rewardloop.weights.tiny import clip_tokenizer
    tok = clip_tokenizer()
    tok.model_max_length = 8192  # like ComfyUI's copy says
    tok.save_pretrained(folder)
    return folder


def test_clip_tokenizer_missing_is_one_actionable_line(monkeypatch):
    from rewardloop.weights import clip_tokenizer as ct
    monkeypatch.setattr(ct, "candidate_dirs", lambda: [])
    monkeypatch.setattr(ct, "package_bpe_files", lambda: [])
    with pytest.raises(FileNotFoundError) as e:
        ct.find_clip_tokenizer()
    msg = str(e.value)
    assert "\n" not in msg and "download clip-l-tokenizer" in msg and "comfy/sd1_tokenizer" in msg


def test_clip_tokenizer_found_in_a_namespace_package_and_cut_at_77(tmp_path, monkeypatch):
    """ComfyUI's `comfy` is a namespace package (no __init__.py, __file__ is None): it is found through its path."""
    import sys
    from rewardloop.weights import clip_tokenizer as ct
    _write_clip_tokenizer(tmp_path / "comfy" / "sd1_tokenizer")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "comfy", raising=False)
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setenv("REWARDLOOP_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("REWARDLOOP_PACK_MODELS", str(tmp_path / "pack_models"))
    monkeypatch.setattr(ct, "_hf_cache_dirs", lambda: [])
    monkeypatch.setattr(ct, "package_bpe_files", lambda: [])
    import comfy  # noqa: F401
    assert getattr(sys.modules["comfy"], "__file__", None) is None
    tok = ct.find_clip_tokenizer()
    assert tok.model_max_length == 77
    assert len(tok(["a cat " * 100], truncation=True, max_length=tok.model_max_length).input_ids[0]) == 77


@pytest.mark.slow
def test_tiny_sd15_single_loads_in_the_trainers_offline(tiny, models_root):
    """The one base of the real-host tests: an SD1.5-layout single file that the trainers load with every tensor
    in place (ComfyUI's and Forge's detection are checked in the real hosts)."""
    from safetensors import safe_open
    from rewardloop.trainers.base_model import load_base
    from rewardloop.weights.tiny import sd_to_ldm_state_dict
    path = resolve(tiny("tiny-sd15-single")).path
    _write_clip_tokenizer(models_root / "clip" / "clip-l-tokenizer")
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        assert f.metadata()["rewardloop.diffusers_config"] == "tiny-sd15"
        ref = {k: f.get_tensor(k) for k in keys if k.endswith("conv_in.weight") or "attn2.to_k" in k
               or "final_layer_norm" in k}
    assert any(k.startswith("cond_stage_model.transformer.text_model.encoder.layers.11.") for k in keys)
    assert any(k.startswith("first_stage_model.decoder.up.3.") for k in keys)
    assert any(k.startswith("model.diffusion_model.input_blocks.1.1.") for k in keys)  # one level with attention
    c = load_base(path, device="cpu")
    assert c.family == "sd1" and c.tokenizer.model_max_length == 77
    assert c.unet.config.block_out_channels == (320,) or list(c.unet.config.block_out_channels) == [320]
    back = sd_to_ldm_state_dict(c)
    assert set(back) == set(keys)
    for k, v in ref.items():
        assert torch.equal(back[k].to(v.dtype), v), k
