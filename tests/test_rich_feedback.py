"""Rich feedback (RAHF): tiny model outputs, save/load, converter key mapping, TFRecords, trainer + resume,
metrics against hand-computed values, nodes on ComfyUI tensors, CLI."""
from __future__ import annotations

import dataclasses
import math
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from rewardloop.rewards.rich_feedback import HEATMAP_TYPES, SCORE_TYPES
from rewardloop.rewards.rich_feedback import metrics as M
from rewardloop.rewards.rich_feedback.words import clean_prompt, parse_tagged, prompt_words, tagged_target



@pytest.fixture(scope="module")
def rahf(tiny):
    from rewardloop.rewards.rich_feedback.model import load_rich_feedback
    return load_rich_feedback(tiny("tiny-rahf"), device="cpu", dtype="fp32")


def _images():
    return [Image.new("RGB", (40, 24), (200, 30, 30)), Image.fromarray(
        (np.random.default_rng(0).random((20, 36, 3)) * 255).astype(np.uint8))]


# ---------------------------------------------------------------- words
def test_richhf_word_split_and_tags():
    p = 'A "red" car: on the street, at night; fast!? yes.'
    assert prompt_words(p) == ["A", "red", "car", "on", "the", "street", "at", "night", "fast", "yes"]
    assert clean_prompt(p) == "A red car on the street at night fast yes"
    assert tagged_target(["a", "yellow", "cat"], [1, 0, 1]) == "a yellow_0 cat"
    assert parse_tagged("a yellow_0 cat", "a yellow cat") == (["yellow"], [1, 0, 1])
    # a dropped word shifts positions: the tagged word is still found (first untagged occurrence)
    assert parse_tagged("a cat_0", "a yellow cat") == (["cat"], [1, 1, 0])
    assert parse_tagged("", "a cat") == ([], [1, 1])


# ---------------------------------------------------------------- model outputs
def test_tiny_model_outputs_shapes_and_ranges(rahf):
    from rewardloop.rewards.rich_feedback.predict import predict
    ims = _images()
    res = predict(rahf, ims, ["a red car, on the street", "a cat"], batch_size=1, max_new_tokens=6)
    assert len(res) == 2
    for k in HEATMAP_TYPES:
        assert [tuple(m.shape) for m in res.heatmaps[k]] == [(24, 40), (20, 36)]
        assert all(0 <= float(m.min()) and float(m.max()) <= 1 for m in res.heatmaps[k])
        assert tuple(res.model_heatmaps[k].shape) == (2, 32, 32)
    for k in SCORE_TYPES:
        assert len(res.scores[k]) == 2 and all(0 < v < 1 for v in res.scores[k])
    assert all(isinstance(t, str) for t in res.tagged)
    assert [len(lab) for lab in res.word_labels] == [6, 2]
    assert all(set(kw) <= set(prompt_words(p)) for kw, p in zip(res.keywords, ["a red car, on the street", "a cat"]))
    # batching does not change results
    res2 = predict(rahf, ims, ["a red car, on the street", "a cat"], batch_size=2, keywords=False)
    for k in SCORE_TYPES:
        assert np.allclose(res.scores[k], res2.scores[k], atol=1e-5)


def test_augmented_prompt_variant(tiny, models_root, tmp_path):
    from rewardloop.rewards.rich_feedback.model import build_tiny_rahf, load_rahf_folder
    from rewardloop.rewards.rich_feedback.predict import predict
    tiny("tiny-rahf")
    folder = build_tiny_rahf(models_root / "rich_feedback" / "tiny-rahf-aug", multi_head=False)
    model, tok, cfg = load_rahf_folder(folder)
    assert not cfg.multi_head and set(model.heatmap_heads) == {"shared"} and set(model.score_heads) == {"shared"}
    res = predict(model, _images(), "a red car", tokenizer=tok, keywords=False)
    assert [tuple(m.shape) for m in res.heatmaps["misalignment"]] == [(24, 40), (20, 36)]
    # the task text changes the output: the shared heatmap head gives different maps for the two tasks (the shared
    # score head of a random tiny model may saturate to one value, so the scores are not compared)
    assert (res.heatmaps["implausibility"][0] - res.heatmaps["misalignment"][0]).abs().max() > 1e-4


def test_save_load_round_trip(rahf, tmp_path):
    from rewardloop.rewards.rich_feedback.model import load_rahf_folder, save_rahf
    from rewardloop.rewards.rich_feedback.predict import predict
    out = save_rahf(rahf.model, rahf.processor, tmp_path / "copy")
    assert {"config.json", "model.safetensors", "tokenizer"} <= {p.name for p in out.iterdir()}
    with pytest.raises(FileExistsError):
        save_rahf(rahf.model, rahf.processor, tmp_path / "copy")
    model, tok, cfg = load_rahf_folder(out)
    a = predict(rahf, _images(), "a red car", max_new_tokens=5)
    b = predict(model, _images(), "a red car", tokenizer=tok, max_new_tokens=5)
    for k in HEATMAP_TYPES:
        assert torch.equal(a.model_heatmaps[k], b.model_heatmaps[k])
    assert a.scores == b.scores and a.tagged == b.tagged
    assert cfg.to_dict() == rahf.model.config.to_dict()


# ---------------------------------------------------------------- converter
def _conv_cfg():
    from rewardloop.rewards.rich_feedback.model import RAHFConfig
    return RAHFConfig(vit=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                               image_size=32, patch_size=8),
                      t5=dict(vocab_size=120, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=2,
                              num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1),
                      score_fc=(16, 8))


@pytest.mark.parametrize("multi_head", [True, False])
def test_converter_key_mapping(multi_head):
    from _richhf_layout import richhf_state_dict

    from rewardloop.rewards.rich_feedback import convert as C
    sd = richhf_state_dict(_conv_cfg(), multi_head)
    assert "vit.encoder.layer.0.attention.attention.query.weight" in sd and "vit.pooler.dense.weight" in sd
    ours, unmatched, dropped = C.convert_state_dict(sd)
    assert unmatched == [] and sorted(dropped) == ["vit.pooler.dense.bias", "vit.pooler.dense.weight"]
    model, rep = C.convert_to_model({"module." + k: v for k, v in sd.items()}, vit_heads=4)   # DDP prefix too
    cfg = rep["config"]
    assert cfg.multi_head == multi_head and cfg.heatmap_up == (32, 16, 16) and cfg.score_convs == (32, 16, 8, 4, 2, 1)
    assert cfg.vit["num_hidden_layers"] == 2 and cfg.t5["num_heads"] == 4 and cfg.t5["d_kv"] == 8
    mine = model.state_dict()
    head = "implausibility." if multi_head else ""
    ohead = "implausibility." if multi_head else "shared."
    pairs = {f"heatmap_predictor.{head}deconv_layers.1.0.weight": f"heatmap_heads.{ohead}up.1.deconv.weight",
             f"heatmap_predictor.{head}conv_layers2.2.4.scale": f"heatmap_heads.{ohead}up.2.norm2.scale",
             f"heatmap_predictor.{head}conv_layers.5.scale": f"heatmap_heads.{ohead}stem_norm2.scale",
             f"heatmap_predictor.{head}last_conv2.bias": f"heatmap_heads.{ohead}out_conv2.bias",
             f"score_predictor.{'overall.' if multi_head else ''}conv_layers.16.scale":
                 f"score_heads.{'overall.' if multi_head else 'shared.'}convs.5.norm.scale",
             f"score_predictor.{'overall.' if multi_head else ''}linear_layers.4.weight":
                 f"score_heads.{'overall.' if multi_head else 'shared.'}fc3.weight",
             "visual_token_projection.weight": "image_proj.weight",
             "t5.encoder.block.1.layer.1.DenseReluDense.wo.weight": "t5.encoder.block.1.layer.1.DenseReluDense.wo.weight"}
    vit_k = [k for k in mine if k.startswith("image_encoder.") and "q" in k.split(".")[-2]][0]
    for theirs, ours_k in pairs.items():
        assert torch.equal(sd[theirs], mine[ours_k]), theirs
    assert any(torch.equal(sd["vit.encoder.layer.0.attention.attention.query.weight"], mine[k])
               for k in mine if k.startswith("image_encoder.")), vit_k
    with pytest.raises(KeyError):
        C.map_key("something_else.weight")


def test_converted_heads_compute_what_the_reference_heads_compute():
    """Weights moved by the key table land in layers with the same role: same outputs on the same input."""
    from _richhf_layout import RefRAHF

    from rewardloop.rewards.rich_feedback import convert as C
    from rewardloop.rewards.rich_feedback.model import HeatmapHead, ScoreHead
    cfg = _conv_cfg().resolved()
    torch.manual_seed(3)
    ref = RefRAHF(cfg, True)
    hm = HeatmapHead(32, cfg.heatmap_stem, cfg.heatmap_up, cfg.heatmap_last, cfg.image_size)
    sc = ScoreHead(32, cfg.score_convs, cfg.score_fc, cfg.grid)
    pre_h, pre_s = "heatmap_heads.misalignment.", "score_heads.aesthetics."
    sd = {C.map_key("heatmap_predictor.misalignment." + k): v
          for k, v in ref.heatmap_predictor["misalignment"].state_dict().items()}
    hm.load_state_dict({k[len(pre_h):]: v for k, v in sd.items()}, strict=True)
    sd = {C.map_key("score_predictor.aesthetics." + k): v
          for k, v in ref.score_predictor["aesthetics"].state_dict().items()}
    sc.load_state_dict({k[len(pre_s):]: v for k, v in sd.items()}, strict=True)
    x = torch.randn(2, 32, cfg.grid, cfg.grid)
    with torch.no_grad():
        assert torch.allclose(hm(x), ref.heatmap_predictor["misalignment"](x), atol=1e-6)
        assert torch.allclose(sc(x), ref.score_predictor["aesthetics"](x), atol=1e-6)


def test_convert_checkpoint_file_and_cli(tiny, models_root, tmp_path, capsys):
    from _richhf_layout import richhf_state_dict

    from rewardloop.cli import main
    from rewardloop.rewards.rich_feedback.model import load_rich_feedback
    from rewardloop.weights.tiny import bpe_tokenizer
    tok = bpe_tokenizer()
    cfg = _conv_cfg()
    cfg.t5["vocab_size"] = len(tok)
    torch.save(richhf_state_dict(cfg), tmp_path / "model.pt")
    tok.save_pretrained(tmp_path / "t5tok")
    assert main(["convert-rich-feedback", str(tmp_path / "model.pt"), "--name", "conv-test", "--out-dir",
                 str(tmp_path / "out"), "--tokenizer", str(tmp_path / "t5tok"), "--vit-heads", "4"]) == 0
    got = capsys.readouterr()
    assert "CC BY-NC 4.0" in got.err and "0 unmatched" in got.out  # the licence note never mixes into results
    assert main(["convert-rich-feedback", str(tmp_path / "model.pt"), "--name", "conv-test", "--out-dir",
                 str(tmp_path / "out"), "--tokenizer", str(tmp_path / "t5tok")]) == 1      # no overwriting
    h = load_rich_feedback(str(tmp_path / "out" / "conv-test"), device="cpu", dtype="fp32")
    assert "non-commercial" in h.extra["license"]
    assert (tmp_path / "out" / "conv-test" / "LICENSE.txt").is_file()


# ---------------------------------------------------------------- TFRecords
def test_tfrecord_round_trip_and_checks(tmp_path):
    from rewardloop.trainers import tfrecord as T
    assert T.crc32c(b"123456789") == 0xE3069283          # the CRC-32C check value
    ex = {"filename": b"a/b/uid1.png", "artifact_score": [0.25], "lab": [b"1 0 1"], "ints": [1, -2, 300]}
    path = T.write_examples(tmp_path / "x.tfrecord", [ex, ex])
    got = list(T.read_examples(path))
    assert got == [{"filename": [b"a/b/uid1.png"], "artifact_score": [0.25], "lab": [b"1 0 1"],
                    "ints": [1, -2, 300]}] * 2
    raw = bytearray(path.read_bytes())
    length = struct.unpack("<Q", raw[:8])[0]
    raw[12 + length // 2] ^= 0xFF                        # corrupt the first payload
    (tmp_path / "bad.tfrecord").write_bytes(bytes(raw))
    with pytest.raises(T.TFRecordError, match="data checksum"):
        list(T.read_records(tmp_path / "bad.tfrecord"))
    # cross-check with the protobuf runtime when available (tf.train.Example built from a descriptor)
    pb = pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    f = descriptor_pb2.FileDescriptorProto(name="ex_test.proto", package="tft", syntax="proto3")
    for name, fields in [("BytesList", [("value", 1, 12, 3)]), ("FloatList", [("value", 1, 2, 3)]),
                         ("Int64List", [("value", 1, 3, 3)])]:
        m = f.message_type.add(name=name)
        for fn, num, typ, lab in fields:
            m.field.add(name=fn, number=num, type=typ, label=lab)
    feat = f.message_type.add(name="Feature")
    feat.oneof_decl.add(name="kind")
    for fn, num, tn in [("bytes_list", 1, "BytesList"), ("float_list", 2, "FloatList"), ("int64_list", 3, "Int64List")]:
        feat.field.add(name=fn, number=num, type=11, label=1, type_name=f".tft.{tn}", oneof_index=0)
    feats = f.message_type.add(name="Features")
    entry = feats.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=9, label=1)
    entry.field.add(name="value", number=2, type=11, label=1, type_name=".tft.Feature")
    feats.field.add(name="feature", number=1, type=11, label=3, type_name=".tft.Features.FeatureEntry")
    exm = f.message_type.add(name="Example")
    exm.field.add(name="features", number=1, type=11, label=1, type_name=".tft.Features")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    desc = pool.FindMessageTypeByName("tft.Example")
    Example = message_factory.GetMessageClass(desc) if hasattr(message_factory, "GetMessageClass") \
        else message_factory.MessageFactory(pool).GetPrototype(desc)  # protobuf < 4.21 (Forge pins 3.20)
    msg = Example.FromString(T.encode_example(ex))
    assert list(msg.features.feature["ints"].int64_list.value) == [1, -2, 300]
    assert msg.features.feature["filename"].bytes_list.value[0] == b"a/b/uid1.png"
    assert T.parse_example(msg.SerializeToString()) == got[0]
    assert pb is not None


# ---------------------------------------------------------------- trainer
def test_trainer_loss_decreases_and_resume_is_exact(tiny, tmp_path):
    from rewardloop.rewards.rich_feedback.model import load_rahf_folder
    from rewardloop.trainers.rich_feedback import (TrainConfig, latest_checkpoint, read_richhf, train,
                                                   write_synthetic_richhf)
    tiny("tiny-rahf")
    rec, img = write_synthetic_richhf(tmp_path / "data", n=6)
    recs = read_richhf(rec)
    assert len(recs) == 6 and recs[0].labels == [1, 0, 1, 1, 1, 1] and recs[0].scores["plausibility"] == 0.25
    cfg = TrainConfig(train=[str(rec)], images=str(img), init="tiny-rahf", out=str(tmp_path / "a"), steps=6,
                      batch_size=3, grad_accum=1, lr=1e-3, min_lr=1e-3, save_every=0, log_every=0, cpu=True)
    full = train(cfg)
    assert full["step"] == 6 and len(full["losses"]) == 6
    assert np.mean(full["losses"][-2:]) < np.mean(full["losses"][:2])          # it learns
    # interrupted after 3 steps, then resumed: continues at step 3 and ends with the same weights
    cfg_b = dataclasses.replace(cfg, out=str(tmp_path / "b"))
    part = train(cfg_b, stop_after=3)
    assert part["step"] == 3 and part["model"] is None
    assert latest_checkpoint(tmp_path / "b").name == "step-00000003"
    rest = train(cfg_b)
    assert rest["resumed_from"].endswith("step-00000003") and rest["step"] == 6
    assert np.allclose(rest["losses"], full["losses"], atol=1e-5)
    a, _, _ = load_rahf_folder(full["model"])
    b, _, _ = load_rahf_folder(rest["model"])
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), k


def test_trainer_grad_accum_and_augmented(tiny, tmp_path):
    from rewardloop.rewards.rich_feedback.model import build_tiny_rahf
    from rewardloop.trainers.rich_feedback import TrainConfig, train, write_synthetic_richhf
    tiny("tiny-rahf")
    folder = build_tiny_rahf(tmp_path / "models" / "rich_feedback" / "aug", multi_head=False)
    rec, img = write_synthetic_richhf(tmp_path / "data", n=4, with_caption=True)
    (img / "prompts.json").unlink()                       # prompts come from the records' caption feature
    res = train(TrainConfig(train=[str(rec)], images=str(img), init=str(folder), out=str(tmp_path / "run"),
                            steps=2, batch_size=2, grad_accum=2, lr=1e-3, save_every=1, keep_checkpoints=1,
                            log_every=0, cpu=True))
    assert res["step"] == 2 and len(res["losses"]) == 2
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-00000002"]
    with pytest.raises(ValueError, match="fp16"):
        train(TrainConfig(train=[str(rec)], images=str(img), init=str(folder), out=str(tmp_path / "x"),
                          mixed_precision="fp16", cpu=True))


def test_images_and_prompts_from_pickapic_parquet(tmp_path):
    """Pick-a-Pic v1 layout: image_0_uid/jpg_0, image_1_uid/jpg_1, caption (skips without pyarrow)."""
    pa = pytest.importorskip("pyarrow")
    import io

    import pyarrow.parquet as pq

    from rewardloop.trainers.rich_feedback import ImageSource

    def jpg(colour):
        buf = io.BytesIO()
        Image.new("RGB", (16, 12), colour).save(buf, format="JPEG")
        return buf.getvalue()

    table = pa.table({"image_0_uid": ["u0", "u2"], "image_1_uid": ["u1", "u3"],
                      "jpg_0": [jpg((255, 0, 0)), jpg((0, 0, 255))], "jpg_1": [jpg((0, 255, 0)), jpg((9, 9, 9))],
                      "caption": ["a red thing", "a blue thing"]})
    pq.write_table(table, tmp_path / "shard.parquet")
    src = ImageSource(parquet=[str(tmp_path / "shard.parquet")], uids={"u1", "u2"})
    assert set(src.blobs) == {"u1", "u2"}
    assert src.prompt("u1") == "a red thing" and src.prompt("u2") == "a blue thing" and src.prompt("u0") is None
    im = src.image("u1")
    assert im.size == (16, 12) and im.getpixel((8, 6))[1] > 200
    with pytest.raises(FileNotFoundError, match="u0"):
        src.image("u0")


# ---------------------------------------------------------------- metrics (hand-computed)
P = np.array([[0.1, 0.9], [0.4, 0.2]])
G = np.array([[0.0, 1.0], [1.0, 0.0]])


def test_score_correlations():
    assert M.plcc([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert M.srcc([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    # ties get average ranks: x ranks 1, 2.5, 2.5, 4 -> 4.5 / sqrt(4.5 * 5)
    assert M.srcc([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert math.isnan(M.plcc([1, 1, 1], [1, 2, 3]))
    out = M.score_metrics({"plausibility": [0.1, 0.2, 0.3]}, {"plausibility": [0.3, 0.2, 0.1]})
    assert out["plausibility"]["plcc"] == pytest.approx(-1) and out["plausibility"]["srcc"] == pytest.approx(-1)


def test_heatmap_metrics_hand_computed():
    assert M.mse(P, G) == pytest.approx(0.42 / 4)
    assert M.cc(P, G) == pytest.approx(0.5 / math.sqrt(0.38), rel=1e-6)
    # P normalised: .0625 .5625 .25 .125 ; G normalised: 0 .5 .5 0
    assert M.kld(P, G) == pytest.approx(0.5 * math.log(0.5 / 0.5625) + 0.5 * math.log(0.5 / 0.25), rel=1e-6)
    assert M.sim(P, G) == pytest.approx(0.75, rel=1e-6)
    assert M.nss(P, G) == pytest.approx((0.5 / math.sqrt(0.38 / 3) + 0.0) / 2, rel=1e-6)
    assert M.auc_judd(P, G, jitter=False) == 1.0
    # fixations on 0.1 and 0.4 -> normalised 0 and .375: ROC (0,0) (.5,.5) (1,1) -> 0.5
    assert M.auc_judd(P, np.array([[1, 0], [1, 0]]), jitter=False) == pytest.approx(0.5)
    assert M.auc_judd(P, G, jitter=True) == pytest.approx(1.0)            # seeded jitter: deterministic
    # ties without jitter: a perfect binary prediction is 1; its inverse has one threshold (at the minimum)
    # whose ROC point is (1, 1), so Judd's curve is the diagonal: 0.5
    assert M.auc_judd(G, G, jitter=False) == 1.0 and M.auc_judd(1 - G, G, jitter=False) == 0.5


def test_heatmap_metrics_edge_cases():
    const = np.full((2, 2), 0.5)
    assert M.cc(const, G) == 0.0 and M.nss(const, G) == 0.0 and M.auc_judd(const, G) == 0.5
    assert M.sim(const, G) == pytest.approx(0.5, rel=1e-6)
    assert M.kld(const, G) == pytest.approx(math.log(2), rel=1e-6)
    assert math.isnan(M.nss(P, np.zeros((2, 2)))) and math.isnan(M.auc_judd(P, np.zeros((2, 2))))
    p2 = np.array([[0.2, 0.0], [0.0, 0.0]])
    agg = M.heatmap_metrics([P, p2], [G, np.zeros((2, 2))], jitter=False)
    assert agg["mse_all"] == pytest.approx((0.105 + 0.01) / 2) and agg["mse_gt0"] == pytest.approx(0.01)
    assert agg["cc"] == pytest.approx(M.cc(P, G)) and agg["n"] == 2 and agg["n_gt0"] == 1
    only_empty = M.heatmap_metrics([p2], [np.zeros((2, 2))])
    assert math.isnan(only_empty["cc"]) and only_empty["mse_gt0"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="same shape"):
        M.mse(np.zeros((2, 2)), np.zeros((3, 3)))


def test_keyword_metrics():
    k = M.keyword_metrics(["a yellow_0 cat", "a dog_0", "a cow_0"], ["a yellow cat_0", "a dog_0", "a dog_0"])
    # sample 1: predicted 'yellow' (wrong) -> P=R=F=0; sample 2: perfect; sample 3: wrong word -> 0
    assert k["precision"] == pytest.approx(1 / 3) and k["recall"] == pytest.approx(1 / 3)
    assert k["f1"] == pytest.approx(1 / 3)
    assert k["micro_precision"] == pytest.approx(1 / 2) and k["micro_recall"] == pytest.approx(1 / 3)
    assert k["micro_f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    table = M.format_table({"plausibility": {"plcc": 0.5, "srcc": 0.25}},
                           {"implausibility": M.heatmap_metrics([P], [G])}, k)
    assert "PLCC" in table and "AUC-Judd" in table and "33.3" in table


# ---------------------------------------------------------------- scorer, nodes, CLI
def test_scorer_registry(tiny):
    from rewardloop.rewards.scoring import make_scorer
    scorer = make_scorer("rich", {"rich_feedback": tiny("tiny-rahf")}, device="cpu", keywords=False)
    out = scorer(_images(), ["a red car", "a cat"])
    assert [s.name for s in out] == list(SCORE_TYPES) == scorer.names
    assert all(s.higher_is_better and s.value_range == (0.0, 1.0) for s in out)
    assert tuple(out[0].details[1]["misalignment_heatmap"].shape) == (20, 36)


def test_nodes_on_comfy_tensors(tiny, image_batch):
    from rewardloop.nodes.rich_feedback import (RewardLoopRichFeedback, RewardLoopRichFeedbackLoader,
                                                RewardLoopRichFeedbackScorer)
    from rewardloop.rewards.types import RewardScores
    (handle,) = RewardLoopRichFeedbackLoader().load(tiny("tiny-rahf"), "fp32", "cpu")
    imgs = image_batch(3, 48, 64)
    with torch.inference_mode():
        out = RewardLoopRichFeedback().run(handle, imgs, "a red car\na blue car\na cat", batch_size=2)
    imp, mis, *scores, text = out
    for m in (imp, mis):
        assert tuple(m.shape) == (3, 48, 64) and m.dtype == torch.float32 and 0 <= m.min() and m.max() <= 1
    assert [s.name for s in scores] == list(SCORE_TYPES) and all(isinstance(s, RewardScores) for s in scores)
    assert all(len(s) == 3 and all(0 < v < 1 for v in s.values) for s in scores)
    assert isinstance(text, str) and text.count("\n") == 2
    (scorer,) = RewardLoopRichFeedbackScorer().make(handle, 4)
    with torch.inference_mode():
        res = scorer(imgs, "a car")
    assert res[0].name == "plausibility" and len(res[0]) == 3


def test_eval_cli_on_synthetic_records(tiny, tmp_path, capsys):
    from rewardloop.cli import main
    from rewardloop.trainers.rich_feedback import write_synthetic_richhf
    rec, img = write_synthetic_richhf(tmp_path / "data", n=4)
    assert main(["eval-rich-feedback", "--model", tiny("tiny-rahf"), "--data", str(rec), "--images", str(img),
                 "--batch-size", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "4 images" in out and "PLCC" in out and "implausibility" in out and "Misaligned keywords" in out
