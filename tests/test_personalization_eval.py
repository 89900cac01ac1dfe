"""Personalization evaluation (DreamBooth protocol): templates, metrics, CLI, bad inputs, nodes."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rewardloop.cli import main
from rewardloop.rewards import dreambench as DB


def _img(seed: int, size=(40, 48)) -> Image.Image:
    rs = np.random.RandomState(seed)
    a = (rs.rand(size[1], size[0], 3) * 255).astype(np.uint8)
    a[size[1] // 4: size[1] // 2, :, seed % 3] = 255  # some structure so the images differ in content
    return Image.fromarray(a)


# ------------------------------------------------------------------ templates and classes
def test_dreambench_templates_and_classes():
    assert len(DB.OBJECT_TEMPLATES) == 25 and len(DB.LIVE_TEMPLATES) == 25
    assert len(set(DB.OBJECT_TEMPLATES)) == 25 and len(set(DB.LIVE_TEMPLATES)) == 25
    shared = set(DB.OBJECT_TEMPLATES) & set(DB.LIVE_TEMPLATES)
    assert len(shared) == 15  # 10 recontextualisations + 5 property changes are common to both sets
    assert all(t.count("{subject}") == 1 for t in DB.OBJECT_TEMPLATES + DB.LIVE_TEMPLATES)
    assert sum("wearing" in t or "outfit" in t for t in DB.LIVE_TEMPLATES) == 10
    assert not any("wearing" in t or "outfit" in t for t in DB.OBJECT_TEMPLATES)
    # the benchmark: 30 subjects, 15 classes, 9 live (cats and dogs), 21 objects
    assert len(DB.SUBJECTS) == 30 and len(set(DB.SUBJECTS.values())) == 15
    kinds = {s: DB.subject_kind(s) for s in DB.SUBJECTS}
    assert sorted(s for s, k in kinds.items() if k == "live") == \
        ["cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"]
    assert sum(k == "object" for k in kinds.values()) == 21
    # the rule beyond DreamBench, and its overrides
    assert DB.subject_kind("woman") == "live" and DB.subject_kind("golden retriever dog") == "live"
    assert DB.subject_kind("toy dog") == "object" and DB.subject_kind("teddy bear") == "object"
    assert DB.subject_kind("stuffed animal") == "object" and DB.subject_kind("backpack") == "object"
    assert DB.subject_kind("backpack", "live") == "live" and DB.subject_kind("dog", "object") == "object"


def test_prompts_use_identifier_and_class_and_clip_text_drops_the_identifier():
    ps = DB.build_prompts("dog6", "sks")
    assert len(ps) == 25 and [p.index for p in ps] == list(range(25))
    assert ps[0].prompt == "a sks dog in the jungle" and ps[0].clip_text == "a dog in the jungle"
    assert ps[10].prompt == "a sks dog wearing a red hat" and ps[-1].prompt == "a cube shaped sks dog"
    obj = DB.build_prompts("wolf_plushie", "zwx", limit=3)
    assert [p.prompt for p in obj] == ["a zwx stuffed animal in the jungle", "a zwx stuffed animal in the snow",
                                       "a zwx stuffed animal on the beach"]
    assert DB.build_prompts("backpack", "sks")[10].prompt == "a sks backpack with a wheat field in the background"
    inst = DB.build_prompts("cat", "sks", clip_text="instance")
    assert all(p.clip_text == p.prompt for p in inst)
    assert DB.strip_identifier("a sks dog on the beach", "sks") == "a dog on the beach"
    assert DB.strip_identifier("a sksy dog", "sks") == "a sksy dog"  # whole words only
    for bad in ("", "d0g!", "a b c d e", "x" * 41):
        with pytest.raises(ValueError, match="class"):
            DB.resolve_class(bad)
    with pytest.raises(ValueError, match="one word"):
        DB.build_prompts("dog", "two words")
    with pytest.raises(ValueError, match="kind"):
        DB.subject_kind("dog", "plant")


# ------------------------------------------------------------------ metrics against raw model outputs
def _raw_reference(dino_dir: Path, clip_dir: Path, gen, refs, texts):
    """DINO CLS / CLIP projected embeddings from the raw models, cosines by explicit loops in float64."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, ViTModel
    dino = ViTModel.from_pretrained(dino_dir, local_files_only=True).eval()
    dproc = AutoImageProcessor.from_pretrained(dino_dir, local_files_only=True)
    clip = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
    cproc = AutoImageProcessor.from_pretrained(clip_dir, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(clip_dir, local_files_only=True)
    with torch.no_grad():
        def dino_cls(ims):
            hidden = dino(pixel_values=dproc(images=ims, return_tensors="pt")["pixel_values"]).last_hidden_state
            return hidden[:, 0].double().numpy()

        def clip_img(ims):
            px = cproc(images=ims, return_tensors="pt")["pixel_values"]
            return clip.visual_projection(clip.vision_model(pixel_values=px).pooler_output).double().numpy()

        enc = tok(texts, padding=True, return_tensors="pt")
        t = clip.text_projection(clip.text_model(**enc).pooler_output).double().numpy()
        dg, dr, cg, cr = dino_cls(gen), dino_cls(refs), clip_img(gen), clip_img(refs)

    def cos(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    dino_v = [np.mean([cos(dg[i], dr[k]) for k in range(len(refs))]) for i in range(len(gen))]
    clip_i = [np.mean([cos(cg[i], cr[k]) for k in range(len(refs))]) for i in range(len(gen))]
    clip_t = [cos(cg[i], t[i]) for i in range(len(gen))]
    ref_dino = np.mean([cos(dr[a], dr[b]) for a in range(len(refs)) for b in range(len(refs)) if a != b])
    return dino_v, clip_i, clip_t, ref_dino


def test_metrics_match_an_independent_computation(tiny, fresh_cache):
    from rewardloop.rewards.personalization import PersonalizationScorer
    from rewardloop.weights.registry import resolve
    gen = [_img(i, (40 + 8 * i, 48)) for i in range(4)]   # different sizes: each model's processor fits them
    refs = [_img(10 + k, (56, 40)) for k in range(3)]
    texts = ["a dog in the jungle", "a dog in the jungle", "a red dog", "a red dog"]
    sc = PersonalizationScorer(tiny("tiny-dino"), tiny("tiny-clip"), device="cpu", batch_size=3)
    s = sc.score(gen, refs, texts, prompts=[t.replace("a ", "a sks ", 1) for t in texts])
    d, ci, ct, rd = _raw_reference(resolve("tiny-dino").path, resolve("tiny-clip").path, gen, refs, texts)
    np.testing.assert_allclose(s.dino, d, atol=1e-5)
    np.testing.assert_allclose(s.clip_i, ci, atol=1e-5)
    np.testing.assert_allclose(s.clip_t, ct, atol=1e-5)
    assert s.reference_dino == pytest.approx(rd, abs=1e-5)
    assert len(set(np.round(s.dino, 6))) == 4 and len(set(np.round(s.clip_t, 6))) == 4  # not a constant
    rows = s.per_prompt()
    assert [r["prompt"] for r in rows] == ["a sks dog in the jungle", "a sks red dog"] and s.group == [0, 0, 1, 1]
    assert rows[1]["clip_t"] == pytest.approx((ct[2] + ct[3]) / 2, abs=1e-5)
    assert s.means()["dino"] == pytest.approx(float(np.mean(d)), abs=1e-5)
    # a generated image identical to reference 0: cos = 1 against it, so DINO = (1 + cos(r0,r1) + cos(r0,r2)) / 3
    same = sc.score([refs[0]], refs, ["a dog"])
    pair = sc.score([refs[0]], refs[1:], ["a dog"])
    assert same.dino[0] == pytest.approx((1 + 2 * pair.dino[0]) / 3, abs=1e-5)
    assert same.clip_i[0] == pytest.approx((1 + 2 * pair.clip_i[0]) / 3, abs=1e-5)
    table = s.table()
    assert "a sks red dog" in table and "mean over 4 images, 2 prompts" in table and "references vs each other" in table


# ------------------------------------------------------------------ CLI end to end on tiny-sd + a tiny LoRA
@pytest.fixture(scope="module")
def subject(tiny, tmp_path_factory):
    from rewardloop.trainers import lora as L
    root = tmp_path_factory.mktemp("subject")
    c = L.load_base(tiny("tiny-sd"), device="cpu")
    L.add_lora(c, L.LoraConfig(rank=2))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # as after training: non-zero up weights, so the LoRA changes the images
        for p in L.trainable_parameters(c):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    lora = L.export_lora(c, str(root / "zwx_dog.safetensors"), {"trigger": "zwx", "resolution": "16"})
    refs = root / "refs"
    refs.mkdir()
    for k in range(3):
        _img(20 + k).save(refs / f"{k}.png")
    tiny("tiny-dino")
    tiny("tiny-clip")
    return {"lora": lora, "refs": refs, "root": root}


def test_cli_writes_table_csv_and_html(subject, tmp_path, capsys, fresh_cache):
    out = tmp_path / "eval"
    rc = main(["eval-personalization", "--lora", str(subject["lora"]), "--refs", str(subject["refs"]),
               "--class", "dog", "--samples", "2", "--limit", "3", "--steps", "2", "--dino", "tiny-dino",
               "--clip", "tiny-clip", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    text = capsys.readouterr().out
    # identifier and resolution from the LoRA's metadata; the base from its ss_sd_model_name (tiny-sd)
    for p in ("a zwx dog in the jungle", "a zwx dog in the snow", "a zwx dog on the beach"):
        assert p in text
    assert "mean over 6 images, 3 prompts" in text and "live prompts for 'zwx dog'" in text
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 6 and [r["seed"] for r in rows] == ["0", "1"] * 3
    assert rows[0]["clip_text"] == "a dog in the jungle" and rows[0]["prompt"] == "a zwx dog in the jungle"
    for r in rows:
        assert (out / r["file"]).is_file() and -1 <= float(r["dino"]) <= 1 and -1 <= float(r["clip_t"]) <= 1
        with Image.open(out / r["file"]) as im:
            assert im.size == (16, 16)
    per = list(csv.DictReader((out / "prompts.csv").open()))
    assert [r["prompt_index"] for r in per] == ["0", "1", "2", "mean"]
    mean_dino = np.mean([float(r["dino"]) for r in rows])
    assert float(per[-1]["dino"]) == pytest.approx(mean_dino, abs=1e-5)
    assert f"{mean_dino:.3f}" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 6 and summary["settings"]["identifier"] == "zwx"
    assert summary["paper_dreambench_sd14"]["DreamBooth"]["dino"] == 0.694
    page = (out / "index.html").read_text()
    assert page.count("<img src='images/") == 6 and page.count("<img src='references/") == 3
    assert "a zwx dog on the beach" in page and f"DINO {float(rows[5]['dino']):.3f}" in page
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".eval.")]  # no temporary folder left
    # an existing report is never replaced without --overwrite (refused before any model loads)
    assert main(["eval-personalization", "--lora", str(subject["lora"]), "--refs", str(subject["refs"]),
                 "--class", "dog", "--dino", "tiny-dino", "--clip", "tiny-clip", "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_the_lora_is_applied_and_seeds_are_fixed(subject, fresh_cache):
    from rewardloop.trainers.evaluate import generate_images, plan_evaluation
    kw = dict(base="tiny-sd", samples=2, steps=2, limit=1, dino="tiny-dino", clip="tiny-clip")
    with_lora = plan_evaluation(subject["lora"], [subject["refs"] / "0.png"], "dog", **kw)
    base_only = plan_evaluation("none", [subject["refs"] / "0.png"], "dog", identifier="zwx", **kw)
    assert with_lora.seeds == [0, 1] and with_lora.generation_prompts == base_only.generation_prompts
    a = [np.asarray(i, dtype=np.int16) for i in generate_images(with_lora, device="cpu", progress=False)]
    b = [np.asarray(i, dtype=np.int16) for i in generate_images(base_only, device="cpu", progress=False)]
    again = [np.asarray(i, dtype=np.int16) for i in generate_images(with_lora, device="cpu", progress=False)]
    assert all((x == y).all() for x, y in zip(a, again))           # fixed seeds: reproducible
    assert all(np.abs(x - y).mean() > 1 for x, y in zip(a, b))      # the LoRA changes the images
    assert np.abs(a[0] - a[1]).mean() > 1                            # the two samples differ


# ------------------------------------------------------------------ bad inputs: one line, nothing loaded
@pytest.fixture
def no_loading(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")
    from rewardloop.trainers import lora as L
    from rewardloop.weights import loaders
    monkeypatch.setattr(L, "load_base", boom)
    monkeypatch.setattr(loaders, "load_clip", boom)
    monkeypatch.setattr(loaders, "load_dino", boom)


def _bad_cases(subject, tmp_path):
    bad_png = tmp_path / "broken" / "x.png"
    bad_png.parent.mkdir()
    bad_png.write_bytes(b"\x89PNG not really")
    not_lora = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(not_lora))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    ok = ["--lora", str(subject["lora"]), "--refs", str(subject["refs"]), "--class", "dog", "--dino", "tiny-dino",
          "--clip", "tiny-clip"]

    def with_(**kv):
        args = list(ok)
        for k, v in kv.items():
            flag = "--" + k.replace("_", "-")
            if flag in args:
                args[args.index(flag) + 1] = v
            else:
                args += [flag, v]
        return args
    return {
        "missing refs": (with_(refs=str(tmp_path / "nowhere")), "does not exist"),
        "unreadable image": (with_(refs=str(bad_png.parent)), "x.png is not an image file"),
        "bad class": (with_(**{"class": "d0g!"}), "not a class noun"),
        "unknown dino": (with_(dino="no-such-dino"), "no-such-dino"),
        "unknown clip": (with_(clip="no-such-clip"), "no-such-clip"),
        "missing lora": (with_(lora=str(tmp_path / "absent.safetensors")), "not found"),
        "not a lora": (with_(lora=str(not_lora)), "not a kohya-style LoRA"),
        "bad identifier": (with_(identifier="two words"), "one word"),
        "zero samples": (with_(samples="0"), "samples must be"),
        "unknown base": (with_(base="no-such-base.safetensors"), "no-such-base"),
        "output exists": (with_(out=str(full)), "--overwrite"),
    }


@pytest.mark.parametrize("case", ["missing refs", "unreadable image", "bad class", "unknown dino", "unknown clip",
                                  "missing lora", "not a lora", "bad identifier", "zero samples", "unknown base",
                                  "output exists"])
def test_bad_inputs_give_one_error_line_before_loading(case, subject, tmp_path, capsys, no_loading):
    args, needle = _bad_cases(subject, tmp_path)[case]
    assert main(["eval-personalization", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    if case == "output exists":
        assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


def test_dry_run_lists_the_prompts_without_loading(subject, capsys, no_loading):
    assert main(["eval-personalization", "--lora", str(subject["lora"]), "--refs", str(subject["refs"]), "--class",
                 "backpack_dog", "--dino", "tiny-dino", "--clip", "tiny-clip", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["kind"] == "object" and len(plan["prompts"]) == 25
    assert plan["prompts"][0]["prompt"] == "a zwx backpack in the jungle"


def test_report_folder_is_replaced_atomically(tmp_path):
    from rewardloop.fileio import OutputExistsError, atomic_folder
    out = tmp_path / "r"
    with atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(OutputExistsError):
        with atomic_folder(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_folder(out, overwrite=True) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash while writing")
    assert (out / "a.txt").read_text() == "1"                           # the old report is intact
    with atomic_folder(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]        # no temporary or old folder left


# ------------------------------------------------------------------ nodes on ComfyUI-shaped tensors
def _batch(seeds, h=24, w=32):
    return torch.stack([torch.from_numpy(np.asarray(_img(s, (w, h)), dtype=np.float32) / 255) for s in seeds])


def test_nodes_on_comfyui_tensors(tiny, fresh_cache):
    import rewardloop
    from rewardloop.rewards.images import image_to_pil
    from rewardloop.rewards.personalization import PersonalizationScorer
    P = rewardloop.NODE_CLASS_MAPPINGS["RewardLoopDreamBenchPrompts"]
    E = rewardloop.NODE_CLASS_MAPPINGS["RewardLoopEvaluatePersonalization"]
    assert E.INPUT_IS_LIST is True and P.OUTPUT_IS_LIST == (True, True, False, False)
    prompts, clip_texts, text, n = P().prompts("dog", "sks", "auto", 3)
    assert n == 3 and prompts[2] == "a sks dog on the beach" and clip_texts[2] == "a dog on the beach"
    assert text.splitlines() == prompts
    # list execution: one IMAGE batch [B,H,W,C] per prompt, widgets as one-item lists
    batches = [_batch([1, 2]), _batch([3, 4]), _batch([5, 6])]
    refs = [_batch([30, 31], 40, 40)]
    out = E().evaluate(batches, refs, prompts, ["sks"], [tiny("tiny-dino")], [tiny("tiny-clip")], ["fp32"],
                       ["cpu"])
    dino, clip_i, clip_t, md, mci, mct, table = out["result"]
    assert out["ui"]["text"] == [table] and "a sks dog on the beach" in table
    assert len(dino) == 6 and dino.group == [0, 0, 1, 1, 2, 2] and clip_t.name == "clip_t"
    gen = [im for b in batches for im in image_to_pil(b)]
    want = PersonalizationScorer("tiny-dino", "tiny-clip", device="cpu").score(
        gen, image_to_pil(refs[0]), [c for c in clip_texts for _ in range(2)])
    np.testing.assert_allclose(clip_t.values, want.clip_t, atol=1e-6)
    np.testing.assert_allclose(dino.values, want.dino, atol=1e-6)
    assert md == pytest.approx(np.mean(want.dino)) and mct == pytest.approx(np.mean(want.clip_t))
    # one batch with one typed line per image (the identifier removed for CLIP-T), or one prompt for all
    one = E().evaluate([torch.cat(batches)], refs, ["\n".join(p for p in prompts for _ in range(2))], ["sks"],
                       [tiny("tiny-dino")], [tiny("tiny-clip")], ["fp32"], ["cpu"])["result"]
    np.testing.assert_allclose(one[2].values, want.clip_t, atol=1e-6)
    single = E().evaluate([batches[0]], refs, ["a sks dog in the jungle"], ["sks"], [tiny("tiny-dino")],
                          [tiny("tiny-clip")], ["fp32"], ["cpu"])["result"]
    np.testing.assert_allclose(single[2].values, want.clip_t[:2], atol=1e-6)
    with pytest.raises(ValueError, match="2 prompts for 3 image batch"):
        E().evaluate(batches, refs, prompts[:2], ["sks"], [tiny("tiny-dino")], [tiny("tiny-clip")], ["fp32"],
                     ["cpu"])
