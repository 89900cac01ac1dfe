"""The trusted preference rewards (PickScore, HPS v2.1, ImageReward, LAION aesthetics, CLIPScore) on tiny models in
their released on-disk layouts: each score equals a reference computed here independently (raw CLIP towers, raw
open_clip / BLIP tensors, torchvision pre-processing), batched = per-image, direction, shapes, clear errors."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rewardloop.rewards import scoring
from rewardloop.rewards.ranking import assemble_rank
from rewardloop.weights.tiny import TINY_REWARD_MODELS

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PROMPTS = ["a cat on a table", "a red car", "a cat on a table"]

MODELS = {name: TINY_REWARD_MODELS[name] for name in ("pickscore", "hps", "image_reward", "aesthetic", "clip_score")}


def _images(sizes=((40, 56), (64, 48), (33, 33))) -> list[Image.Image]:
    """Non-square RGB images of different sizes (exercise crop and pad)."""
    out = []
    for i, (h, w) in enumerate(sizes):
        a = (np.random.default_rng(i).random((h, w, 3)) * 120).astype(np.uint8)
        a[h // 4: h // 2, w // 3: 2 * w // 3] = (200, 60 + 40 * i, 30)
        out.append(Image.fromarray(a, "RGB"))
    return out


@pytest.fixture(scope="module")
def built(tiny):
    for models in MODELS.values():
        for key in models.values():
            tiny(key)
    return {name: scoring.make_scorer(name, models=models, device="cpu") for name, models in MODELS.items()}


def _path(key):
    from rewardloop.weights.registry import resolve
    return resolve(key).path


# ---------------------------------------------------------------- independent references
def _clip_towers(folder, images, texts):
    """L2-normalised image / text embeddings straight from a CLIPModel's towers and projections."""
    from transformers import CLIPModel, CLIPProcessor
    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    proc = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    with torch.no_grad():
        px = proc.image_processor(images=images, return_tensors="pt")["pixel_values"]
        img = model.visual_projection(model.vision_model(pixel_values=px).pooler_output)
        enc = proc.tokenizer(texts, padding=True, return_tensors="pt")
        txt = model.text_projection(model.text_model(**enc).pooler_output)
    return img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True), model


def _ln(x, sd, p, eps):
    return F.layer_norm(x, (x.shape[-1],), sd[p + ".weight"], sd[p + ".bias"], eps)


def _open_clip_tower(x, sd, prefix, layers, heads, mask=None):
    """open_clip's residual attention blocks (nn.MultiheadAttention with the packed in-projection)."""
    for i in range(layers):
        b = f"{prefix}transformer.resblocks.{i}."
        mha = torch.nn.MultiheadAttention(x.shape[-1], heads, batch_first=True)
        mha.load_state_dict({k: sd[b + "attn." + k] for k in ("in_proj_weight", "in_proj_bias", "out_proj.weight",
                                                               "out_proj.bias")})
        h = _ln(x, sd, b + "ln_1", 1e-5)
        x = x + mha(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = _ln(x, sd, b + "ln_2", 1e-5)
        x = x + F.linear(F.gelu(F.linear(h, sd[b + "mlp.c_fc.weight"], sd[b + "mlp.c_fc.bias"])),
                         sd[b + "mlp.c_proj.weight"], sd[b + "mlp.c_proj.bias"])
    return x


def _hps_reference(images, prompts, tokenizer):
    """HPS v2.1 by hand: its eval transform (torchvision), open_clip's towers on the raw fp16 tensors, cosine."""
    import torchvision.transforms.functional as TF
    sd = {k: v.float() for k, v in torch.load(_path("tiny-hps"), weights_only=True)["state_dict"].items()}
    size = 32
    px = []
    for im in images:
        x = TF.to_tensor(im)
        h, w = x.shape[1:]
        s = size / max(h, w)
        nh, nw = round(h * s), round(w * s)
        x = TF.resize(x, [nh, nw], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        x = TF.pad(x, [(size - nw) // 2, (size - nh) // 2, size - nw - (size - nw) // 2, size - nh - (size - nh) // 2])
        px.append(TF.normalize(x, OPENAI_MEAN, OPENAI_STD))
    px = torch.stack(px)
    with torch.no_grad():
        x = F.conv2d(px, sd["visual.conv1.weight"], stride=8).flatten(2).transpose(1, 2)
        x = torch.cat([sd["visual.class_embedding"].expand(x.shape[0], 1, -1), x], 1)
        x = x + sd["visual.positional_embedding"]
        x = _open_clip_tower(_ln(x, sd, "visual.ln_pre", 1e-5), sd, "visual.", 2, 2)
        img = _ln(x[:, 0], sd, "visual.ln_post", 1e-5) @ sd["visual.proj"]
        ids = torch.zeros(len(prompts), 77, dtype=torch.long)
        for i, p in enumerate(prompts):
            body = tokenizer(p, add_special_tokens=False)["input_ids"]
            t = [tokenizer.bos_token_id] + body + [tokenizer.eos_token_id]
            ids[i, :len(t)] = torch.tensor(t)
        x = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
        causal = torch.full((77, 77), float("-inf")).triu(1)
        x = _ln(_open_clip_tower(x, sd, "", 2, 2, causal), sd, "ln_final", 1e-5)
        txt = x[torch.arange(len(prompts)), ids.argmax(-1)] @ sd["text_projection"]
    return F.cosine_similarity(img, txt, dim=-1), sd, px, ids


def _image_reward_reference(images, prompts, tokenizer):
    """ImageReward by hand from the raw ImageReward.pt tensors: BLIP ViT, BERT with cross-attention, MLP, μ/σ."""
    import torchvision.transforms as T
    folder = _path("tiny-imagereward")
    sd = torch.load(folder / "ImageReward.pt", weights_only=True)
    med = json.loads((folder / "med_config.json").read_text())
    tf = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor(),
                    T.Normalize(OPENAI_MEAN, OPENAI_STD)])
    px = torch.stack([tf(im) for im in images])

    def attention(q_in, kv_in, p, heads, mask=None):
        q = F.linear(q_in, sd[p + "query.weight"], sd[p + "query.bias"])
        k = F.linear(kv_in, sd[p + "key.weight"], sd[p + "key.bias"])
        v = F.linear(kv_in, sd[p + "value.weight"], sd[p + "value.bias"])
        split = lambda t: t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is not None:
            s = s + (1.0 - mask[:, None, None, :]) * -10000.0
        return (s.softmax(-1) @ v).transpose(1, 2).reshape(q_in.shape)

    with torch.no_grad():
        v = "blip.visual_encoder."
        x = F.conv2d(px, sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"], stride=16)
        x = torch.cat([sd[v + "cls_token"].expand(len(images), -1, -1), x.flatten(2).transpose(1, 2)], 1)
        x = x + sd[v + "pos_embed"]
        for i in range(2):
            b = f"{v}blocks.{i}."
            h = _ln(x, sd, b + "norm1", 1e-6)
            B, N, C = h.shape
            qkv = F.linear(h, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]).reshape(B, N, 3, 2, C // 2)
            q, k, vv = qkv.permute(2, 0, 3, 1, 4)
            a = ((q @ k.transpose(-2, -1)) * (C // 2) ** -0.5).softmax(-1)
            x = x + F.linear((a @ vv).transpose(1, 2).reshape(B, N, C), sd[b + "attn.proj.weight"],
                             sd[b + "attn.proj.bias"])
            h = _ln(x, sd, b + "norm2", 1e-6)
            x = x + F.linear(F.gelu(F.linear(h, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])),
                             sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        image = _ln(x, sd, v + "norm", 1e-6)
        enc = tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        t = "blip.text_encoder."
        L = enc["input_ids"].shape[1]
        h = sd[t + "embeddings.word_embeddings.weight"][enc["input_ids"]] + \
            sd[t + "embeddings.position_embeddings.weight"][:L]
        h = _ln(h, sd, t + "embeddings.LayerNorm", med["layer_norm_eps"])
        mask = enc["attention_mask"].float()
        heads = med["num_attention_heads"]
        for i in range(med["num_hidden_layers"]):
            b = f"{t}encoder.layer.{i}."
            a = attention(h, h, b + "attention.self.", heads, mask)
            h = _ln(F.linear(a, sd[b + "attention.output.dense.weight"], sd[b + "attention.output.dense.bias"]) + h,
                    sd, b + "attention.output.LayerNorm", med["layer_norm_eps"])
            a = attention(h, image, b + "crossattention.self.", heads)
            h = _ln(F.linear(a, sd[b + "crossattention.output.dense.weight"],
                             sd[b + "crossattention.output.dense.bias"]) + h,
                    sd, b + "crossattention.output.LayerNorm", med["layer_norm_eps"])
            inter = F.gelu(F.linear(h, sd[b + "intermediate.dense.weight"], sd[b + "intermediate.dense.bias"]))
            h = _ln(F.linear(inter, sd[b + "output.dense.weight"], sd[b + "output.dense.bias"]) + h,
                    sd, b + "output.LayerNorm", med["layer_norm_eps"])
        r = h[:, 0]
        for i in (0, 2, 4, 6, 7):
            r = F.linear(r, sd[f"mlp.layers.{i}.weight"], sd[f"mlp.layers.{i}.bias"])
    return (r[:, 0] - 0.16717362830052426) / 1.0333394966054072


# ---------------------------------------------------------------- each reward equals its reference
def test_pickscore_is_logit_scale_times_cosine_of_the_raw_towers(built):
    ims = _images()
    img, txt, model = _clip_towers(_path("tiny-pickscore"), ims, PROMPTS)
    ref = model.logit_scale.detach().exp() * (img * txt).sum(-1)
    assert model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-3)
    got = built["pickscore"](ims, PROMPTS)[0]
    assert got.name == "pickscore" and got.higher_is_better and len(got) == 3
    np.testing.assert_allclose(got.values, ref.numpy(), atol=1e-4)
    assert got.value_range == pytest.approx((-100.0, 100.0), rel=1e-3)


def test_hps_matches_open_clip_tensors_by_hand(built):
    from transformers import AutoTokenizer
    ims = _images()
    tok = AutoTokenizer.from_pretrained(_path("tiny-clip-tokenizer"))
    ref, *_ = _hps_reference(ims, PROMPTS, tok)
    got = built["hps"](ims, PROMPTS)[0]
    assert got.name == "hps" and got.value_range == (-1.0, 1.0)
    np.testing.assert_allclose(got.values, ref.numpy(), atol=1e-4)
    assert all(-1 <= v <= 1 for v in got.values)


def test_hps_key_map_agrees_with_open_clip_itself(built):
    """The same tensors through open_clip's own CLIP (when open-clip-torch is installed, as in the test extras)."""
    pytest.importorskip("open_clip")  # Forge's venv has open-clip-torch 2.20 (no __version__): the model API is enough
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from transformers import AutoTokenizer
    ims = _images()
    tok = AutoTokenizer.from_pretrained(_path("tiny-clip-tokenizer"))
    ref, sd, px, ids = _hps_reference(ims, PROMPTS, tok)
    m = CLIP(embed_dim=64, vision_cfg=CLIPVisionCfg(layers=2, width=128, head_width=64, patch_size=8, image_size=32),
             text_cfg=CLIPTextCfg(context_length=77, vocab_size=sd["token_embedding.weight"].shape[0], width=128,
                                  heads=2, layers=2)).eval()
    m.load_state_dict(sd, strict=True)
    with torch.no_grad():
        oc = (m.encode_image(px, normalize=True) * m.encode_text(ids, normalize=True)).sum(-1)
    np.testing.assert_allclose(oc.numpy(), ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(built["hps"](ims, PROMPTS)[0].values, oc.numpy(), atol=1e-4)


def test_image_reward_matches_blip_tensors_by_hand(built):
    from transformers import AutoTokenizer
    ims = _images()
    tok = AutoTokenizer.from_pretrained(_path("tiny-bert-tokenizer"))
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    ref = _image_reward_reference(ims, PROMPTS, tok)
    got = built["image_reward"](ims, PROMPTS)[0]
    assert got.name == "image_reward" and got.higher_is_better and got.value_range is None
    np.testing.assert_allclose(got.values, ref.numpy(), atol=1e-4)
    assert len(set(np.round(got.values, 5))) == 3  # the prompt and the image both matter


def test_aesthetic_is_the_released_mlp_on_normalised_clip_embeddings(built):
    ims = _images()
    img, _, _ = _clip_towers(_path("tiny-clip"), ims, ["x"])
    head = torch.load(_path("tiny-aesthetic"), weights_only=True)
    assert sorted({k.split(".")[1] for k in head}) == ["0", "2", "4", "6", "7"]  # the released layout
    x = img
    for i in (0, 2, 4, 6, 7):
        x = x @ head[f"layers.{i}.weight"].T + head[f"layers.{i}.bias"]
    got = built["aesthetic"](ims, None)[0]
    np.testing.assert_allclose(got.values, x[:, 0].numpy(), atol=1e-5)
    # the prompt is not used
    assert built["aesthetic"](ims, ["anything", "else", "here"])[0].values == pytest.approx(got.values, abs=1e-6)


def test_clip_score_is_w_times_clamped_cosine_with_the_paper_prefix(built):
    ims = _images()
    img, txt, _ = _clip_towers(_path("tiny-clip"), ims, [f"A photo depicts {p}" for p in PROMPTS])
    cos = (img * txt).sum(-1)
    got = built["clip_score"](ims, PROMPTS)[0]
    np.testing.assert_allclose(got.values, (2.5 * cos.clamp_min(0)).numpy(), atol=1e-5)
    assert got.value_range == (0.0, 2.5) and all(0 <= v <= 2.5 for v in got.values)
    # options through the model dict (the CLI's --model clip_score.weight=1 …): bare prompt, w = 1
    bare = scoring.make_scorer("clip_score", models={"clip": "tiny-clip", "weight": "1", "prefix": ""}, device="cpu")
    img, txt, _ = _clip_towers(_path("tiny-clip"), ims, PROMPTS)
    np.testing.assert_allclose(bare(ims, PROMPTS)[0].values, (img * txt).sum(-1).clamp_min(0).numpy(), atol=1e-5)


# ---------------------------------------------------------------- batching, direction, registry
@pytest.mark.parametrize("name", list(MODELS))
def test_batched_equals_per_image_and_chunked(built, name):
    ims = _images()
    whole = built[name](ims, PROMPTS)[0].values
    single = [built[name]([im], [p])[0].values[0] for im, p in zip(ims, PROMPTS)]
    np.testing.assert_allclose(whole, single, atol=1e-5)
    chunked = scoring.make_scorer(name, models={**MODELS[name], "batch_size": "2"}, device="cpu")
    assert chunked.batch_size == 2
    np.testing.assert_allclose(chunked(ims, PROMPTS)[0].values, whole, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_direction_higher_is_better_drives_the_ranking(built, name):
    ims = _images(((40, 56), (64, 48), (33, 33), (50, 50)))
    s = built[name](ims, ["a cat on a table"])[0]
    assert s.higher_is_better and len(s.values) == 4 and len(s.details) == 4
    r = assemble_rank([s], mode="rank_sum")
    assert r.order == sorted(range(4), key=lambda i: (-s.values[i], i))
    assert s.name in scoring.REWARD_INFO and "higher is better" in scoring.REWARD_INFO[s.name]


def test_registry_lists_and_routes_the_new_rewards():
    assert {"pickscore", "hps", "image_reward", "aesthetic", "clip_score"} <= set(scoring.available())
    m = {"clip": "X", "hps": "H", "clip_tokenizer": "T", "llm": "L", "aesthetic.clip": "Y", "batch_size": "4"}
    assert scoring.models_for("aesthetic", m) == {"clip": "Y", "batch_size": "4"}
    assert scoring.models_for("clip_score", m) == {"clip": "X", "batch_size": "4"}
    assert scoring.models_for("hps", m) == {"hps": "H", "clip_tokenizer": "T", "batch_size": "4"}
    assert scoring.models_for("sam_llm", m) == {"clip": "X", "llm": "L", "batch_size": "4"}


def test_second_scorer_loads_nothing(built, fresh_cache):
    scoring.make_scorer("hps", models=MODELS["hps"], device="cpu")
    misses = fresh_cache.stats.misses
    scoring.make_scorer("hps", models=MODELS["hps"], device="cpu")
    assert fresh_cache.stats.misses == misses and fresh_cache.stats.hits >= 2


# ---------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("name", ["pickscore", "hps", "image_reward", "clip_score"])
def test_bad_inputs_are_one_clear_error(built, name):
    with pytest.raises(ValueError, match="no images"):
        built[name]([], [])
    with pytest.raises(ValueError, match="2 prompts for 3 images"):
        built[name](_images(), ["a", "b"])
    with pytest.raises(ValueError, match="prompt is empty"):
        built[name](_images(), "  ")


def test_unknown_role_and_bad_option(tiny):
    with pytest.raises(ValueError, match=r"hps has no model role \['llm'\]"):
        from rewardloop.rewards.hps import make_scorer
        make_scorer(models={"llm": "x"})
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        scoring.make_scorer("clip_score", models={"clip": tiny("tiny-clip"), "batch_size": "0"}, device="cpu")
    with pytest.raises(ValueError, match="keep_loaded='maybe': expected true or false"):
        scoring.make_scorer("clip_score", models={"clip": tiny("tiny-clip"), "keep_loaded": "maybe"}, device="cpu")
    # the registry's preflight knows every role and option, and checks them before anything loads
    from rewardloop.errors import UserError
    with pytest.raises(UserError, match="reward hps has no role or option 'clip'"):
        scoring.check_scorers(["hps", "pickscore"], {"hps.clip": "x"})
    with pytest.raises(UserError, match="no chosen reward takes 'weight'"):
        scoring.check_scorers(["hps"], {"weight": "2"})
    plan = scoring.check_scorers(["clip_score", "aesthetic"], {"clip": tiny("tiny-clip"),
                                                               "aesthetic": tiny("tiny-aesthetic"), "weight": "1"})
    assert plan["aesthetic"]["aesthetic"].endswith("tiny_aesthetic.pth") and plan["clip_score"]["clip"].endswith("tiny-clip")


def test_missing_weights_name_the_download_command(monkeypatch, tmp_path):
    from rewardloop.weights import registry
    monkeypatch.setenv("REWARDLOOP_MODELS", str(tmp_path / "none"))
    monkeypatch.setenv("REWARDLOOP_PACK_MODELS", str(tmp_path / "pack"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    for name, key in (("pickscore", "pickscore-v1"), ("hps", "hps-v2.1"), ("image_reward", "imagereward-v1.0"),
                      ("aesthetic", "clip-vit-large-patch14"), ("clip_score", "clip-vit-large-patch14")):
        with pytest.raises(registry.ModelNotFoundError) as e:
            scoring.make_scorer(name, device="cpu")
        msg = str(e.value)
        assert "\n" not in msg and f"python -m rewardloop download {key}" in msg


def test_aesthetic_head_on_the_wrong_clip(tiny, tmp_path):
    from rewardloop.weights.tiny import score_mlp_state_dict
    head = tmp_path / "head8.pth"
    torch.save(score_mlp_state_dict(torch.Generator().manual_seed(0), (8, 16, 8, 4, 2, 1)), head)
    with pytest.raises(ValueError, match="expects 8-d CLIP image embeddings but tiny-clip gives 16-d"):
        scoring.make_scorer("aesthetic", models={"aesthetic": str(head), "clip": tiny("tiny-clip")}, device="cpu")
    bad = tmp_path / "notahead.pth"
    torch.save({"weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(ValueError, match="Not an aesthetic/ImageReward MLP head"):
        scoring.make_scorer("aesthetic", models={"aesthetic": str(bad), "clip": tiny("tiny-clip")}, device="cpu")


def test_hps_refuses_a_file_that_is_not_open_clip(tiny):
    with pytest.raises(ValueError, match="Not an open_clip ViT CLIP checkpoint"):
        scoring.make_scorer("hps", models={"hps": str(_path(tiny("tiny-aesthetic"))),
                                           "clip_tokenizer": tiny("tiny-clip-tokenizer")}, device="cpu")


class _Payload:
    pass


def test_image_reward_loads_weights_only_and_needs_med_config(tiny, tmp_path):
    from rewardloop.weights.safe_load import UnsafeCheckpointError
    folder = tmp_path / "ir"
    folder.mkdir()
    torch.save({"blip.visual_encoder.cls_token": torch.zeros(1), "evil": _Payload()}, folder / "ImageReward.pt")
    (folder / "med_config.json").write_text("{}")
    with pytest.raises(UnsafeCheckpointError, match="Refusing to load ImageReward.pt"):
        scoring.make_scorer("image_reward", models={"image_reward": str(folder),
                                                    "bert_tokenizer": tiny("tiny-bert-tokenizer")}, device="cpu")
    (folder / "med_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no med_config.json.*download imagereward-v1.0"):
        scoring.make_scorer("image_reward", models={"image_reward": str(folder),
                                                    "bert_tokenizer": tiny("tiny-bert-tokenizer")}, device="cpu")


# ---------------------------------------------------------------- the released architectures, from shapes
def _meta(*shape):
    return torch.empty(*shape, device="meta")


def test_open_clip_config_reads_vit_h_14_from_shapes():
    """HPS v2.1's ViT-H/14 (open_clip ViT-H-14.json: width 1280, 32 layers, head width 80, patch 14, text 1024 × 24
    layers × 16 heads, embed 1024) comes out of the shapes alone."""
    from rewardloop.rewards.hps import open_clip_config
    sd = {"visual.conv1.weight": _meta(1280, 3, 14, 14), "visual.positional_embedding": _meta(257, 1280),
          "visual.proj": _meta(1280, 1024), "token_embedding.weight": _meta(49408, 1024),
          "positional_embedding": _meta(77, 1024)}
    for i in range(32):
        sd[f"visual.transformer.resblocks.{i}.mlp.c_fc.weight"] = _meta(5120, 1280)
    for i in range(24):
        sd[f"transformer.resblocks.{i}.mlp.c_fc.weight"] = _meta(4096, 1024)
    cfg = open_clip_config(sd)
    v, t = cfg["vision_config"], cfg["text_config"]
    assert (v["hidden_size"], v["num_hidden_layers"], v["num_attention_heads"], v["image_size"], v["patch_size"],
            v["intermediate_size"], v["hidden_act"]) == (1280, 32, 16, 224, 14, 5120, "gelu")
    assert (t["hidden_size"], t["num_hidden_layers"], t["num_attention_heads"], t["vocab_size"],
            t["max_position_embeddings"]) == (1024, 24, 16, 49408, 77)
    assert cfg["projection_dim"] == 1024 and t["eos_token_id"] == 2  # eos 2 = open_clip's argmax pooling


def test_blip_vit_large_config_from_shapes():
    from rewardloop.rewards.image_reward import text_config_from, vision_config_from
    sd = {"embeddings.patch_embedding.weight": _meta(1024, 3, 16, 16),
          "embeddings.position_embedding": _meta(1, 197, 1024),
          **{f"encoder.layers.{i}.mlp.fc1.weight": _meta(4096, 1024) for i in range(24)}}
    v = vision_config_from(sd)
    assert (v["hidden_size"], v["num_hidden_layers"], v["num_attention_heads"], v["image_size"], v["layer_norm_eps"]) \
        == (1024, 24, 16, 224, 1e-6)
    med = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "vocab_size": 30524,
           "encoder_width": 768, "add_cross_attention": True}
    t = text_config_from(med, 1024)
    assert t["encoder_hidden_size"] == 1024 and t["vocab_size"] == 30524 and t["is_decoder"]


# ---------------------------------------------------------------- nodes
class _S:
    """A minimal REWARDLOOP_SCORES value."""

    def __new__(cls, name, values, hib=True):
        from rewardloop.rewards.types import RewardScores
        return RewardScores(name, values, hib)


def test_assemble_rank_returns_latent_and_mask_subsets(image_batch, tmp_path, monkeypatch):
    import rewardloop
    from rewardloop import bridge
    monkeypatch.setattr(bridge, "temp_dir", lambda: tmp_path)
    node = rewardloop.NODE_CLASS_MAPPINGS["RewardLoopAssembleRank"]()
    imgs = image_batch(4, 16, 24)
    lat = {"samples": torch.arange(4.0)[:, None, None, None].expand(4, 4, 2, 3).clone(),
           "noise_mask": torch.arange(4.0)[:, None, None, None].expand(4, 1, 2, 3).clone(),
           "batch_index": [7, 8, 9, 10]}
    masks = torch.arange(4.0)[:, None, None].expand(4, 16, 24).clone()
    out = node.rank(imgs, "rank_sum", 2, 0, latents=lat, masks=masks, scores_1=_S("a", [1, 4, 2, 3]))["result"]
    ranked, top, idx, _, _, lat_r, lat_top, m_r, m_top = out
    assert idx == [1, 3, 2, 0]
    assert lat_r["samples"][:, 0, 0, 0].tolist() == [1, 3, 2, 0] and lat_r["batch_index"] == [8, 10, 9, 7]
    assert lat_r["noise_mask"][:, 0, 0, 0].tolist() == [1, 3, 2, 0]
    assert lat_top["samples"][:, 0, 0, 0].tolist() == [1, 3]
    assert m_r[:, 0, 0].tolist() == [1, 3, 2, 0] and m_top[:, 0, 0].tolist() == [1, 3]
    assert torch.equal(top, imgs[[1, 3]])
    # one mask for all is repeated; nothing connected → those outputs are blocked with a message
    one = node.rank(imgs, "rank_sum", 1, 0, masks=torch.ones(1, 16, 24), scores_1=_S("a", [1, 4, 2, 3]))["result"]
    assert one[8].shape == (1, 16, 24) and one[7].shape == (4, 16, 24)
    assert bridge.is_blocked(one[5]) and "connect its latents input" in one[5].message
    with pytest.raises(ValueError, match="latents hold 2 samples but 4 images"):
        node.rank(imgs, "rank_sum", 1, 0, latents={"samples": torch.zeros(2, 4, 2, 3)}, scores_1=_S("a", [1, 4, 2, 3]))
    with pytest.raises(ValueError, match="3 masks for 4 images"):
        node.rank(imgs, "rank_sum", 1, 0, masks=torch.zeros(3, 16, 24), scores_1=_S("a", [1, 4, 2, 3]))


def test_assemble_rank_stops_the_graph_below_the_threshold(image_batch, tmp_path, monkeypatch):
    import rewardloop
    from rewardloop import bridge
    monkeypatch.setattr(bridge, "temp_dir", lambda: tmp_path)
    node = rewardloop.NODE_CLASS_MAPPINGS["RewardLoopAssembleRank"]()
    imgs = image_batch(4, 16, 24)
    kw = dict(scores_1=_S("pickscore", [19.0, 21.5, 20.0, 18.0]), scores_2=_S("err", [0.3, 0.1, 0.2, 0.4], False))
    passed = node.rank(imgs, "rank_sum", 1, 0, stop_on="scores_1", stop_threshold=21.0, **kw)
    assert not any(bridge.is_blocked(v) for v in passed["result"][:5])  # winner (image 1) has 21.5 ≥ 21
    stopped = node.rank(imgs, "rank_sum", 1, 0, stop_on="scores_1", stop_threshold=22.0, **kw)
    assert all(bridge.is_blocked(v) and v.message is None for v in stopped["result"])  # silent: run succeeds
    assert "below the threshold 22" in stopped["ui"]["text"][0] and len(stopped["ui"]["images"]) == 4
    # lower-is-better values stop when the winner is above the threshold (rank_sum total of the winner here is 0)
    assert not bridge.is_blocked(node.rank(imgs, "rank_sum", 1, 0, stop_on="assembled", stop_threshold=0.0,
                                           **kw)["result"][0])
    blocked = node.rank(imgs, "zscore", 1, 0, stop_on="assembled", stop_threshold=5.0, **kw)
    assert bridge.is_blocked(blocked["result"][0]) and "assembled zscore total" in blocked["ui"]["text"][0]
    with pytest.raises(ValueError, match="stop_on is scores_4 but nothing is connected"):
        node.rank(imgs, "rank_sum", 1, 0, stop_on="scores_4", stop_threshold=1.0, **kw)


def test_reward_scorer_node_lists_every_reward_and_clip_reward_scorer_shares_a_clip(built, tiny):
    import rewardloop
    from rewardloop.weights.loaders import load_clip
    spec = rewardloop.NODE_CLASS_MAPPINGS["RewardLoopScorerFromRegistry"].INPUT_TYPES()["required"]
    names, opts = spec["reward"]
    assert {"pickscore", "hps", "image_reward", "aesthetic", "clip_score"} <= set(names)
    assert "clip_score: CLIPScore" in opts["tooltip"] and "hps: clip_tokenizer, hps" in spec["models"][1]["tooltip"]
    sc = rewardloop.NODE_CLASS_MAPPINGS["RewardLoopScorerFromRegistry"]().load(
        "hps", "hps=tiny-hps\nclip_tokenizer=tiny-clip-tokenizer", "cpu", "auto")[0]
    ims = _images()
    assert sc(ims, PROMPTS)[0].values == pytest.approx(built["hps"](ims, PROMPTS)[0].values, abs=1e-6)
    node = rewardloop.NODE_CLASS_MAPPINGS["RewardLoopCLIPRewardScorer"]()
    assert "laion-aesthetic-v2" in node.INPUT_TYPES()["required"]["aesthetic_head"][0]
    clip = load_clip(tiny("tiny-clip"), device="cpu")
    for reward in ("clip_score", "aesthetic"):
        s = node.build(clip, reward, tiny("tiny-aesthetic"), 2)[0]
        assert s(ims, PROMPTS)[0].values == pytest.approx(built[reward](ims, PROMPTS)[0].values, abs=1e-6)
    pick = node.build(load_clip(tiny("tiny-pickscore"), device="cpu"), "pickscore", "", 4)[0]
    assert pick(ims, PROMPTS)[0].values == pytest.approx(built["pickscore"](ims, PROMPTS)[0].values, abs=1e-5)


def test_score_and_rank_cli_take_the_new_rewards(built, tmp_path, capsys):
    from rewardloop.cli import main
    src = tmp_path / "in"
    src.mkdir()
    ims = _images()
    for i, im in enumerate(ims):
        im.save(src / f"img{i}.png")
    models = [f"{r}.{role}={key}" for r in ("hps", "image_reward", "aesthetic", "clip_score")
              for role, key in MODELS[r].items()]
    args = sum((["--model", m] for m in models), [])
    assert main(["score", str(src), "--reward", "hps,image_reward,aesthetic,clip_score", "--prompt", "a red car",
                 "--json", *args]) == 0
    got = {s["name"]: s["values"] for s in json.loads(capsys.readouterr().out)["scores"]}
    assert set(got) == {"hps", "image_reward", "aesthetic", "clip_score"}
    loaded = [Image.open(src / f"img{i}.png") for i in range(3)]
    assert got["hps"] == pytest.approx(built["hps"](loaded, "a red car")[0].values, abs=1e-5)
    out = tmp_path / "ranked"
    assert main(["rank", str(src), "--rewards", "hps,image_reward,aesthetic,clip_score", "--prompt", "a red car",
                 "--out", str(out), *args]) == 0
    assert len(list((out / "ranked").iterdir())) == 3 and (out / "report.csv").is_file()


def test_every_reward_names_its_roles_defaults_and_their_kinds():
    """What model pickers (the A1111/Forge extension) need, for every registry reward."""
    from rewardloop.weights.catalogue import get_spec
    for name in scoring.available():
        roles = scoring.REWARD_ROLES[name]
        defaults = scoring.default_models(name)
        assert set(defaults) <= roles and name in scoring.REWARD_INFO
        for role, key in defaults.items():
            assert get_spec(key).kind in scoring.ROLE_KINDS[role], (name, role, key)
        for role in roles:
            assert role in scoring.ROLE_KINDS, role
    assert scoring.default_models("hps") == {"hps": "hps-v2.1"}  # its CLIP tokenizer is found on the machine
    assert scoring.default_models("rich") == {"rich_feedback": "rahf-richhf-multihead"}


def test_hps_takes_the_clip_tokenizer_found_on_the_machine(built, tiny, monkeypatch, fresh_cache):
    """Without a clip_tokenizer role HPS uses the CLIP BPE tokenizer the trainers find (host copies, open_clip's BPE);
    a full CLIP vocabulary on the tiny model is the vocabulary-size error, a fitting one scores like the role."""
    from transformers import AutoTokenizer

    from rewardloop.weights import clip_tokenizer
    tok = AutoTokenizer.from_pretrained(_path(tiny("tiny-clip-tokenizer")))
    monkeypatch.setattr(clip_tokenizer, "find_clip_tokenizer", lambda pad_token=None: tok)
    s = scoring.make_scorer("hps", models={"hps": tiny("tiny-hps")}, device="cpu")
    ims = _images()
    assert s(ims, PROMPTS)[0].values == pytest.approx(built["hps"](ims, PROMPTS)[0].values, abs=1e-6)
    fresh_cache.clear()
    big = type("Big", (), {"__len__": lambda self: 49408})()
    monkeypatch.setattr(clip_tokenizer, "find_clip_tokenizer", lambda pad_token=None: big)
    with pytest.raises(ValueError, match=r"49408 tokens but tiny-hps knows \d+: HPS needs the CLIP BPE tokenizer"):
        scoring.make_scorer("hps", models={"hps": tiny("tiny-hps")}, device="cpu")
