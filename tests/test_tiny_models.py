"""Every tiny model kind is written in its real format and loads back through the registry and the cache."""
from __future__ import annotations

import pytest
import torch

from rewardloop.weights.catalogue import CATALOGUE
from rewardloop.weights.loaders import LOADERS, sam_config_from_state_dict
from rewardloop.weights.registry import resolve

TINY = [s for s in CATALOGUE if s.source == "tiny"]


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
