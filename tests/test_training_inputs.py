"""Finite or stop, bad data refused in one line, files people can use: NaN/inf in every trainer, RichHF records
and malformed TFRecords, refused pickles and damaged safetensors, name lengths, umask, orphan temporaries,
where outputs go, diffusers / peft LoRA files."""
from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rewardloop import bridge, fileio
from rewardloop.fileio import NonFiniteError, UnsafeNameError
from rewardloop.trainers import lora as L
from rewardloop.trainers import tfrecord as T


def refs(n=2, seed=0):
    return [Image.fromarray((np.random.RandomState(seed + i).rand(40, 40, 3) * 255).astype(np.uint8))
            for i in range(n)]


def all_finite_safetensors(folder: Path) -> int:
    """Every tensor in every .safetensors under ``folder`` is finite; returns how many files were checked."""
    from safetensors.torch import load_file
    files = list(folder.rglob("*.safetensors"))
    for f in files:
        for k, v in load_file(str(f)).items():
            assert bool(torch.isfinite(v).all()), (f, k)
    return len(files)


def one_error_line(capsys) -> str:
    """The one ``error:`` line (libraries' own progress bars, e.g. transformers' weight loading, aside)."""
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "it/s]" not in ln]
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


# ---------------------------------------------------------------- finite or stop
def test_lora_core_stops_on_non_finite_loss_or_weights_naming_the_step(tiny, tmp_path):
    base = tiny("tiny-sd")
    data = [(im, "a photo of sks dog") for im in refs(2)]
    # lr 1e30: the first step is finite, the second forward overflows
    with pytest.raises(NonFiniteError, match=r"The loss became nan at step 2: lower the learning rate \(now 1e\+30\)"):
        L.train_lora(L.load_base(base, device="cpu"), data, L.NoiseMSE(), L.LoraConfig(rank=2),
                     L.TrainConfig(steps=4, lr=1e30, resolution=32, save_every=1), tmp_path / "a")
    assert L.latest_checkpoint(tmp_path / "a").name == "step_0000001"
    st = torch.load(tmp_path / "a" / "checkpoints" / "step_0000001" / "state.pt", weights_only=True)
    assert all(bool(torch.isfinite(v).all()) for v in st["params"].values())
    assert not (tmp_path / "a" / "lora.safetensors").exists()
    # finite loss, infinite gradient (d sqrt|x| at 0): the update turns the weights into NaN
    class InfGrad(L.NoiseMSE):
        def __call__(self, trainer, batch):
            pred = trainer.predict(batch)["pred"]
            return (pred - pred.detach()).abs().sqrt().mean(), {}

    with pytest.raises(NonFiniteError, match="LoRA weights became NaN or infinite at step 1"):
        L.train_lora(L.load_base(base, device="cpu"), data, InfGrad(), L.LoraConfig(rank=2),
                     L.TrainConfig(steps=2, lr=1e-3, resolution=32, save_every=1), tmp_path / "b")
    assert L.latest_checkpoint(tmp_path / "b") is None and not (tmp_path / "b" / "lora.safetensors").exists()
    with pytest.raises(ValueError, match="learning rate"):
        L.TrainConfig(lr=1e39).validate()

    class NaNAt3(L.NoiseMSE):            # a NaN image reaching the loss at step 3
        def __call__(self, trainer, batch):
            loss, mets = super().__call__(trainer, batch)
            return (loss * float("nan") if trainer.step == 2 else loss), mets

    with pytest.raises(NonFiniteError, match="at step 3"):
        L.train_lora(L.load_base(base, device="cpu"), data, NaNAt3(), L.LoraConfig(rank=2),
                     L.TrainConfig(steps=4, lr=1e-3, resolution=32, save_every=1), tmp_path / "c")
    assert all_finite_safetensors(tmp_path) == 0 and L.latest_checkpoint(tmp_path / "c").name == "step_0000002"


def test_nothing_non_finite_is_ever_written(tiny, tmp_path):
    c = L.load_base(tiny("tiny-sd"), device="cpu")
    L.add_lora(c, L.LoraConfig(rank=2))
    with torch.no_grad():
        next(p for p in L.trainable_parameters(c)).fill_(float("inf"))
    with pytest.raises(NonFiniteError, match="holds NaN or infinite"):
        L.export_lora(c, str(tmp_path / "x.safetensors"))
    assert not list(tmp_path.iterdir())
    with pytest.raises(NonFiniteError):
        fileio.check_finite({"a": {"b": [torch.ones(2), torch.tensor([1.0, float("nan")])]}}, "state")
    assert fileio.first_non_finite({"a": torch.ones(3), "n": torch.arange(3)}) is None


def test_ranked_stops_on_non_finite_training(tiny, tmp_path):
    from rewardloop.rewards.scoring import FunctionScorer
    from rewardloop.rewards.types import RewardScores
    from rewardloop.trainers import ranked
    scorer = FunctionScorer(["b"], lambda ims, ps: [RewardScores("b", [float(np.asarray(i).mean()) for i in ims],
                                                                 True, (0, 255))])
    with pytest.raises(NonFiniteError, match="at step 2"):
        ranked.train_ranked(tiny("tiny-sd"), ["a cat"], [scorer], tmp_path / "run",
                            ranked.RankedConfig(k=2, rounds=1, gen_steps=1, eval_final=False),
                            L.LoraConfig(rank=2), L.TrainConfig(steps=3, lr=1e30, resolution=32))
    assert not (tmp_path / "run" / "round_000" / "adapter.safetensors").exists()
    assert not (tmp_path / "run" / "round_000" / "lora.safetensors").exists()
    bad = FunctionScorer(["b"], lambda ims, ps: [RewardScores("b", [float("inf")] * len(ims), True, (0, 1))])
    with pytest.raises(ValueError, match="NaN or inf"):
        ranked.train_ranked(tiny("tiny-sd"), ["a cat"], [bad], tmp_path / "run2",
                            ranked.RankedConfig(k=2, rounds=1, gen_steps=1, eval_final=False),
                            L.LoraConfig(rank=2), L.TrainConfig(steps=1, lr=1e-3, resolution=32))


def test_dpg_node_refuses_nan_references(tiny, out_env, monkeypatch):
    import rewardloop
    node = rewardloop.NODE_CLASS_MAPPINGS["RewardLoopPersonalizeDPG"]()
    imgs = torch.rand(2, 32, 32, 3)
    imgs[1, 3, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        node.train(tiny("tiny-sd"), imgs, "sks", "a photo of a dog", 2, 1e-3, 2, "dreambooth", 32, 0, "nan_refs",
                   False, "cpu")


# ---------------------------------------------------------------- rich feedback data
def _richhf_with(tmp_path, extra: list[bytes]) -> tuple[Path, Path]:
    """The synthetic RichHF set (6 good records) with ``extra`` raw payloads appended as further records."""
    from rewardloop.trainers.rich_feedback import write_synthetic_richhf
    rec, img = write_synthetic_richhf(tmp_path / "data", n=6)
    with open(rec, "ab") as f:
        for payload in extra:
            f.write(T.frame_record(payload))
    return rec, img


def _good_example(**changes) -> dict:
    from rewardloop.trainers.rich_feedback import png_bytes
    ex = {"filename": b"images/00000000-synthetic.png", "aesthetics_score": [0.5], "artifact_score": [0.25],
          "misalignment_score": [0.5], "overall_score": [0.75], "artifact_map": [png_bytes(np.zeros((8, 8)))],
          "misalignment_map": [b""], "prompt_misalignment_label": [b"1 1 1 1 1 1"]}
    ex.update(changes)
    return {k: v for k, v in ex.items() if v is not None}


def test_rich_feedback_refuses_a_score_less_record_or_skips_it(tiny, tmp_path):
    from rewardloop.trainers.rich_feedback import BadRecordError, TrainConfig, read_richhf, train
    tiny("tiny-rahf")
    rec, img = _richhf_with(tmp_path, [T.encode_example(_good_example(artifact_score=None, overall_score=None))])
    cfg = TrainConfig(train=[str(rec)], images=str(img), init="tiny-rahf", out=str(tmp_path / "run"), steps=2,
                      batch_size=2, lr=1e-3, min_lr=1e-3, save_every=1, log_every=0, cpu=True)
    with pytest.raises(BadRecordError, match=r"train.tfrecord record 6, uid 00000000-synthetic: no artifact_score "
                                             r"number.*--skip-bad-records"):
        train(cfg)
    assert not (tmp_path / "run").exists()                 # refused before anything was created
    res = train(dataclasses_replace(cfg, skip_bad=True))
    assert res["n_skipped_bad"] == 1 and res["n_examples"] == 6 and res["step"] == 2
    assert all(np.isfinite(res["losses"]))
    assert all_finite_safetensors(tmp_path / "run") >= 2   # checkpoints and the final model
    skipped: list[str] = []
    assert len(read_richhf(rec, skip_bad=True, skipped=skipped)) == 6 and "artifact_score" in skipped[0]
    # a non-finite score is refused the same way (one such record used to make the whole model NaN)
    rec2, _ = _richhf_with(tmp_path / "nan", [T.encode_example(_good_example(overall_score=[float("nan")]))])
    with pytest.raises(BadRecordError, match="overall_score = nan, not a finite number"):
        read_richhf(rec2)


def dataclasses_replace(cfg, **kw):
    import dataclasses
    return dataclasses.replace(cfg, **kw)


def test_rich_feedback_stops_on_non_finite_loss_naming_step_and_records(tiny, tmp_path):
    from rewardloop.trainers.rich_feedback import TrainConfig, train, write_synthetic_richhf
    tiny("tiny-rahf")
    rec, img = write_synthetic_richhf(tmp_path / "data", n=4)
    cfg = TrainConfig(train=[str(rec)], images=str(img), init="tiny-rahf", out=str(tmp_path / "run"), steps=4,
                      batch_size=2, lr=1e30, min_lr=1e30, save_every=1, log_every=0, cpu=True)
    with pytest.raises(NonFiniteError, match=r"at step 2 on records [0-9a-f]{8}-synthetic"):
        train(cfg)
    assert all_finite_safetensors(tmp_path / "run") == 1   # the step-1 checkpoint only
    assert not (tmp_path / "run" / "model").exists()
    # the run is there: a plain rerun with other settings is refused, --overwrite starts afresh
    with pytest.raises(ValueError, match="other settings"):
        train(dataclasses_replace(cfg, lr=1e-3, min_lr=1e-3))
    res = train(dataclasses_replace(cfg, lr=1e-3, min_lr=1e-3, overwrite=True))
    assert res["step"] == 4 and res["resumed_from"] is None


def _tfrecord_cases(tmp_path) -> dict[str, tuple[Path, str]]:
    """Malformed TFRecords (and records) with the words their one-line error must contain."""
    cases = {}
    good = T.encode_example(_good_example())
    p = tmp_path / "garbage.tfrecord"
    p.write_bytes(os.urandom(64))
    cases["length checksum"] = (p, "bad length checksum")
    p = tmp_path / "huge.tfrecord"
    head = struct.pack("<Q", 1 << 62)
    p.write_bytes(head + struct.pack("<I", T.masked_crc(head)) + b"x" * 16)
    cases["huge length"] = (p, "says it has 4611686018427387904 bytes")
    p = tmp_path / "cut.tfrecord"
    p.write_bytes(T.frame_record(good)[:-10])
    cases["truncated"] = (p, "only")
    p = tmp_path / "short.tfrecord"
    p.write_bytes(T.frame_record(_short_float_example()))
    cases["short float list"] = (p, "not a whole number of floats")
    p = tmp_path / "png.tfrecord"
    p.write_bytes(T.frame_record(T.encode_example(_good_example(artifact_map=[b"\x89PNG\r\n\x1a\n" + b"\0" * 40]))))
    cases["bad png"] = (p, "its artifact_map is not a readable image")
    bomb = io.BytesIO()
    Image.new("L", (1, 1)).save(bomb, format="PNG")
    raw = bytearray(bomb.getvalue())
    raw[16:24] = struct.pack(">II", 14000, 14000)            # IHDR width/height: 14k x 14k
    import zlib
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    p = tmp_path / "bomb.tfrecord"
    p.write_bytes(T.frame_record(T.encode_example(_good_example(misalignment_map=[bytes(raw)]))))
    cases["14k heatmap"] = (p, "its misalignment_map is not a readable image")
    p = tmp_path / "labels.tfrecord"
    p.write_bytes(T.frame_record(T.encode_example(_good_example(prompt_misalignment_label=[b"1 x 1"]))))
    cases["bad labels"] = (p, "expected 0/1 per word")
    p = tmp_path / "wire.tfrecord"
    p.write_bytes(T.frame_record(bytes([0x0A, 0x06, 0x0A, 0x04, 0x08, 0xFF, 0xFF, 0x7F])))  # map entry as varint
    cases["wire type"] = (p, "wire type")
    return cases


def _short_float_example() -> bytes:
    """A good Example whose artifact_score float list is 3 bytes long (packed floats are 4 bytes each)."""
    entries = b""
    for k, v in sorted(_good_example().items()):
        if k == "artifact_score":
            feat = T._len_field(2, T._len_field(1, struct.pack("<f", 0.25)[:3]))
        else:
            feat = T.encode_feature(v)
        entries += T._len_field(1, T._len_field(1, k.encode()) + T._len_field(2, feat))
    return T._len_field(1, entries)


def test_malformed_tfrecords_give_one_line_in_train_and_eval(tiny, tmp_path, capsys):
    from rewardloop.cli import main
    tiny("tiny-rahf")
    img = tmp_path / "images"
    img.mkdir()
    for name, (path, words) in _tfrecord_cases(tmp_path).items():
        for argv in (["train-rich-feedback", "--train", str(path), "--images", str(img), "--init", "tiny-rahf",
                      "--out", str(tmp_path / "run"), "--cpu", "--steps", "1"],
                     ["eval-rich-feedback", "--model", "tiny-rahf", "--data", str(path), "--images", str(img),
                      "--device", "cpu"]):
            assert main(argv) == 1, (name, argv[0])
            line = one_error_line(capsys)
            assert words in line, (name, line)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- refused pickles, damaged files
class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp") / f"rewardloop_trainhard_pwned_{os.getpid()}"


def test_resume_refuses_a_pickled_or_damaged_state(tiny, models_root, tmp_path, capsys, monkeypatch):
    from rewardloop.cli import main
    tiny("tiny-sd")
    monkeypatch.setenv("REWARDLOOP_OUTPUT", str(tmp_path / "out"))
    refs_dir = tmp_path / "refs"
    refs_dir.mkdir()
    for i, im in enumerate(refs(2)):
        im.save(refs_dir / f"{i}.png")
    ck = tmp_path / "out" / "rewardloop_runs" / "evil" / "checkpoints" / "step_0000001"
    ck.mkdir(parents=True)
    (ck / "meta.json").write_text('{"step": 1}')
    (ck / "state.pt").write_bytes(pickle.dumps({"params": _Evil()}))
    argv = ["train-dpg", "--base", "tiny-sd", "--refs", str(refs_dir), "--trigger", "sks", "--class-prompt",
            "a photo of a dog", "--out", "evil", "--steps", "2", "--resolution", "32", "--preset", "cpu",
            "--num-class-images", "0", "--sample-steps", "1"]
    assert main(argv) == 1
    assert "Refusing to resume" in one_error_line(capsys) and not MARKER.exists()
    (ck / "state.pt").write_bytes(pickle.dumps({"params": _Evil()}, protocol=2))
    assert main(argv) == 1
    assert f"it would call {os.system.__module__}.system" in one_error_line(capsys) and not MARKER.exists()
    (ck / "state.pt").write_bytes(b"PK\x03\x04 truncated zip")
    assert main(argv) == 1
    assert "the file is damaged" in one_error_line(capsys)
    assert main(argv + ["--overwrite"]) == 0                   # the documented way out
    capsys.readouterr()
    # the rich-feedback trainer refuses a pickled state.pt the same way
    from rewardloop.trainers.rich_feedback import write_synthetic_richhf
    from rewardloop.weights.registry import resolve
    rec, img = write_synthetic_richhf(tmp_path / "data", n=4)
    rck = tmp_path / "rahf_run" / "checkpoints" / "step-00000001"
    shutil.copytree(resolve(tiny("tiny-rahf"), folder="rich_feedback").path, rck / "model")
    (rck / "state.pt").write_bytes(pickle.dumps({"step": _Evil()}))
    assert main(["train-rich-feedback", "--train", str(rec), "--images", str(img), "--init", "tiny-rahf", "--out",
                 str(tmp_path / "rahf_run"), "--cpu", "--steps", "2", "--batch-size", "2"]) == 1
    assert "Refusing to resume" in one_error_line(capsys) and not MARKER.exists()


def test_damaged_safetensors_give_one_line(tiny, models_root, tmp_path, capsys, monkeypatch):
    from rewardloop.cli import main
    from rewardloop.weights.registry import resolve
    monkeypatch.setenv("REWARDLOOP_OUTPUT", str(tmp_path / "out"))
    refs_dir = tmp_path / "refs"
    refs_dir.mkdir()
    refs(1)[0].save(refs_dir / "0.png")
    single = resolve(tiny("tiny-sd-single")).path
    variants = {"random": os.urandom(200), "header": struct.pack("<Q", 10 ** 12) + b"{}",
                "cut": single.read_bytes()[:5000]}
    for name, data in variants.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(data)
        assert main(["train-dpg", "--base", str(bad), "--refs", str(refs_dir), "--trigger", "sks", "--class-prompt",
                     "a photo of a dog", "--out", f"dmg_{name}", "--resolution", "32", "--preset", "cpu"]) == 1
        assert "is not a readable .safetensors checkpoint" in one_error_line(capsys)
    rahf = tmp_path / "rahf_bad"
    shutil.copytree(resolve(tiny("tiny-rahf"), folder="rich_feedback").path, rahf)
    (rahf / "model.safetensors").write_bytes(os.urandom(100))
    from rewardloop.trainers.rich_feedback import write_synthetic_richhf
    rec, img = write_synthetic_richhf(tmp_path / "data", n=4)
    assert main(["train-rich-feedback", "--train", str(rec), "--images", str(img), "--init", str(rahf), "--out",
                 str(tmp_path / "r"), "--cpu", "--steps", "1", "--batch-size", "2"]) == 1
    assert "not a readable .safetensors" in one_error_line(capsys)
    assert main(["eval-rich-feedback", "--model", str(rahf), "--data", str(rec), "--images", str(img),
                 "--device", "cpu"]) == 1
    assert "not a readable .safetensors" in one_error_line(capsys)
    with pytest.raises(ValueError, match="not a readable .safetensors LoRA"):
        L.load_lora_into(L.load_base(tiny("tiny-sd"), device="cpu"), tmp_path / "random.safetensors")


# ---------------------------------------------------------------- names, permissions, temporaries, locations
def test_long_names_are_refused_up_front_against_the_real_temp_name(tmp_path, tiny, out_env, monkeypatch):
    limit = fileio.max_name_length(tmp_path, ".safetensors") - len(".safetensors")
    assert 200 < limit < 250
    with pytest.raises(UnsafeNameError, match=r"too long \(250 characters\): use at most \d+ characters"):
        fileio.safe_output_path(tmp_path, "a" * 250, ".safetensors")
    with pytest.raises(UnsafeNameError, match="too long"):
        fileio.safe_output_path(tmp_path, "a" * (limit + 1), ".safetensors")
    with pytest.raises(UnsafeNameError, match="sub-folder"):
        fileio.safe_output_path(tmp_path, "d" * 256 + "/x", ".safetensors")
    # the longest accepted name really can be written atomically (its temporary fits the file system)
    ok = fileio.safe_output_path(tmp_path, "b" * limit, ".safetensors")
    fileio.atomic_save(ok, lambda tmp: Path(tmp).write_bytes(b"x"))
    with fileio.atomic_write(ok) as f:
        f.write(b"y")
    assert ok.read_bytes() == b"y" and len(ok.name) == limit + len(".safetensors")
    # training refuses such a name before loading anything (it used to fail after training)
    from rewardloop.trainers import dpg as D

    def refuse(*a, **k):
        raise AssertionError("loaded a model")

    monkeypatch.setattr(L, "load_base", refuse)
    with pytest.raises(UnsafeNameError, match="too long"):
        D.personalize(tiny("tiny-sd"), refs(1), "sks", "a photo of a dog", out_name="a" * 234, preset="cpu")


def test_outputs_respect_the_umask(tmp_path, tiny):
    old = os.umask(0o027)
    try:
        a = fileio.atomic_save(tmp_path / "a.bin", lambda tmp: Path(tmp).write_bytes(b"1"))
        b = fileio.atomic_write_text(tmp_path / "b.txt", "2")
        with fileio.atomic_folder(tmp_path / "folder") as d:
            (d / "x").write_text("3")
        c = L.load_base(tiny("tiny-sd"), device="cpu")
        L.add_lora(c, L.LoraConfig(rank=2))
        lora = L.export_lora(c, str(tmp_path / "lora.safetensors"))
        assert [p.stat().st_mode & 0o777 for p in (a, b, lora)] == [0o640] * 3
        assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o750
        os.umask(0o022)
        assert fileio.atomic_write_text(tmp_path / "b.txt", "4").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_orphan_temporaries_of_dead_writers_are_removed_on_the_next_write(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "lora.safetensors"
    orphan = tmp_path / f".lora.safetensors.{dead.pid}-0123abcd.safetensors"
    orphan.write_bytes(b"half")
    orphan_dir = tmp_path / f".lora.safetensors.{dead.pid}-89abcdef.tmp"
    orphan_dir.mkdir()
    live = tmp_path / f".lora.safetensors.{os.getppid()}-0123abcd.safetensors"   # a writer still running
    live.write_bytes(b"busy")
    other = tmp_path / f".other.safetensors.{dead.pid}-0123abcd.safetensors"      # another file's temporary
    other.write_bytes(b"x")
    fileio.atomic_save(target, lambda tmp: Path(tmp).write_bytes(b"done"))
    assert not orphan.exists() and not orphan_dir.exists() and live.exists() and other.exists()
    assert target.read_bytes() == b"done"
    # checkpoint folders change name every time: a killed checkpoint write is removed by the next checkpoint
    ck = tmp_path / "run" / "checkpoints"
    half = ck / f".step_0000002.{dead.pid}-0123abcd.tmp"
    (half / "x").mkdir(parents=True)
    fileio.clean_orphans_in(ck)
    assert not half.exists() and other.exists()


def test_loras_and_runs_go_to_a_user_location_never_the_pack(tmp_path, monkeypatch):
    monkeypatch.delenv("REWARDLOOP_MODELS", raising=False)
    monkeypatch.delenv("REWARDLOOP_OUTPUT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert bridge.loras_dir() == tmp_path / "output" / "loras"
    assert bridge.output_dir() == tmp_path / "output"
    assert bridge.PACK_DIR not in bridge.loras_dir().parents
    assert bridge.loras_dir() in bridge.folder_search_paths("loras")          # trained LoRAs are found by name
    monkeypatch.setenv("REWARDLOOP_OUTPUT", str(tmp_path / "elsewhere"))
    assert bridge.loras_dir() == tmp_path / "elsewhere" / "loras"
    from rewardloop.trainers import dpg as D
    assert D.run_dir_for("a/b") == (tmp_path / "elsewhere" / "rewardloop_runs" / "a" / "b").resolve()


# ---------------------------------------------------------------- diffusers / peft LoRA files
def _unet_out(c, x, ids):
    with torch.no_grad():
        return c.unet(x, torch.tensor([500]), encoder_hidden_states=c.text_encoder(ids)[0]).sample


def test_load_lora_into_reads_diffusers_and_peft_files(tiny, tmp_path):
    """Files written by diffusers' and peft's own savers merge to what diffusers' own loader computes."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, get_peft_model_state_dict
    base = tiny("tiny-sd")
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    src = L.load_base(base, device="cpu")
    ids = L._tokenize(src.tokenizer, ["a photo of sks dog"], "cpu")
    plain = _unet_out(src, x, ids)
    import inspect
    # diffusers < 0.34 (Forge pins 0.31) writes no adapter metadata: its files mean alpha = rank
    takes_meta = "unet_lora_adapter_metadata" in inspect.signature(StableDiffusionPipeline.save_lora_weights).parameters
    ucfg = PeftLoraConfig(r=2, lora_alpha=3 if takes_meta else 2, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                          init_lora_weights="gaussian")
    tcfg = PeftLoraConfig(r=2, lora_alpha=5 if takes_meta else 2, target_modules=["q_proj", "v_proj"],
                          init_lora_weights="gaussian")
    src.unet.add_adapter(ucfg)
    from peft import inject_adapter_in_model
    inject_adapter_in_model(tcfg, src.text_encoder)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in (src.unet, src.text_encoder):
            for n, p in m.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    want = _unet_out(src, x, ids)
    assert (want - plain).abs().max() > 1e-3
    StableDiffusionPipeline.save_lora_weights(
        tmp_path / "diffusers", unet_lora_layers=get_peft_model_state_dict(src.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(src.text_encoder),
        **(dict(unet_lora_adapter_metadata=ucfg.to_dict(), text_encoder_lora_adapter_metadata=tcfg.to_dict())
           if takes_meta else {}))
    dfile = tmp_path / "diffusers" / "pytorch_lora_weights.safetensors"
    # our merge of the diffusers file ...
    fresh = L.load_base(base, device="cpu")
    names = L.load_lora_into(fresh, dfile)
    assert len(names) == 32 + 4 and any(n.startswith("lora_te_text_model_encoder_layers_") for n in names)
    got = _unet_out(fresh, x, ids)
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())
    # ... equals what diffusers' own loader makes of it
    ref = L.load_base(base, device="cpu")
    ref.pipeline().load_lora_weights(str(tmp_path / "diffusers"), weight_name=dfile.name)
    assert torch.allclose(_unet_out(ref, x, ids), got, atol=1e-4)
    # a peft adapter folder (save_pretrained: base_model.model.… keys + adapter_config.json)
    unet_only = L.load_base(base, device="cpu")
    pm = get_peft_model(unet_only.unet, PeftLoraConfig(r=2, lora_alpha=4, target_modules=["to_q", "to_v"],
                                                       init_lora_weights="gaussian"))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    want_peft = _unet_out(unet_only, x, ids)
    pm.save_pretrained(tmp_path / "peft")
    fresh2 = L.load_base(base, device="cpu")
    assert len(L.load_lora_into(fresh2, tmp_path / "peft")) == 16
    assert torch.allclose(_unet_out(fresh2, x, ids), want_peft, atol=1e-4)


def test_existing_outputs_and_runs_give_one_line(tiny, models_root, tmp_path, capsys, monkeypatch):
    from rewardloop.cli import main
    from rewardloop.trainers.rich_feedback import write_synthetic_richhf
    monkeypatch.setenv("REWARDLOOP_OUTPUT", str(tmp_path / "out"))
    refs_dir = tmp_path / "refs"
    refs_dir.mkdir()
    refs(1)[0].save(refs_dir / "0.png")
    (bridge.loras_dir() / "taken").mkdir(parents=True, exist_ok=True)
    (bridge.loras_dir() / "taken" / "lora.safetensors").write_bytes(b"mine")
    assert main(["train-dpg", "--base", tiny("tiny-sd"), "--refs", str(refs_dir), "--trigger", "sks",
                 "--class-prompt", "a photo of a dog", "--out", "taken/lora", "--preset", "cpu"]) == 1
    assert "already exists" in one_error_line(capsys)
    assert (bridge.loras_dir() / "taken" / "lora.safetensors").read_bytes() == b"mine"
    assert not (tmp_path / "out" / "rewardloop_runs").exists()
    rec, img = write_synthetic_richhf(tmp_path / "data", n=4)
    argv = ["train-rich-feedback", "--train", str(rec), "--images", str(img), "--init", tiny("tiny-rahf"), "--out",
            str(tmp_path / "rr"), "--cpu", "--steps", "1", "--batch-size", "2"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv + ["--resume", "none"]) == 1
    assert "--overwrite" in one_error_line(capsys)
    assert main(argv + ["--resume", "none", "--overwrite"]) == 0
