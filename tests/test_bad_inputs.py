"""A corpus of bad inputs through every CLI command: each exits 1 with exactly one ``error:`` line on stderr and no
traceback, loads no model, and leaves every folder it was given unchanged (hashed before and after).

The files are generated here (truncated PNG, text named .png, 0-byte file, a 14k×14k PNG header, corrupt
safetensors, pickles that would run code, malformed TFRecords, bad prompt files, broken and looping symlinks,
names longer than the file system allows). Cases run in-process through ``cli.main`` (fast); a few run as real
``python -m rewardloop`` subprocesses. The training commands' cases run the same way.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rewardloop.cli import main

TINY = ["tiny-blip", "tiny-minilm", "tiny-sam", "tiny-clip", "tiny-llm", "tiny-rahf", "tiny-sd", "tiny-dino"]


class _Payload:
    """Unpickling this would create ``marker``: the corpus asserts it never exists."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(w: int = 14000, h: int = 14000) -> bytes:
    """A valid PNG header claiming w×h pixels (the data is a few bytes: a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def _save_png(path: Path, h: int = 32, w: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, tiny, models_root):
    """Every bad file, generated once; the tiny models the commands name are built first (so a case fails on the
    bad input it is about, not on a missing model)."""
    for key in TINY:
        tiny(key)
    root = tmp_path_factory.mktemp("corpus")
    c: dict[str, Path] = {"root": root, "models": models_root, "marker": root / "PWNED"}
    good = _save_png(root / "good.png")
    c["good"] = good
    _save_png(root / "good2.png", seed=1)
    c["good2"] = root / "good2.png"
    data = good.read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "text.png").write_text("this is not an image\n")
    (root / "zero.png").write_bytes(b"")
    (root / "bomb.png").write_bytes(_bomb_png())
    os.symlink(root / "nowhere.png", root / "broken_link.png")
    os.symlink(root / "loop.png", root / "loop.png")
    for k in ("truncated", "text", "zero", "bomb", "broken_link", "loop"):
        c[k] = root / f"{k}.png"
    c["missing"] = root / "missing.png"
    (root / "mixed").mkdir()
    shutil.copy(good, root / "mixed" / "a.png")
    (root / "mixed" / "b.png").write_text("not an image")
    c["mixed"] = root / "mixed"
    (root / "empty_dir").mkdir()
    c["empty_dir"] = root / "empty_dir"
    (root / "dir.png").mkdir()
    c["dir_png"] = root / "dir.png"
    _save_png(root / "small.png", 16, 24)
    c["small"] = root / "small.png"
    for d in ("twin1", "twin2"):
        (root / d).mkdir()
        _save_png(root / d / "same.png")
    c["twin1"], c["twin2"] = root / "twin1" / "same.png", root / "twin2" / "same.png"
    a_file = root / "a_file.txt"
    a_file.write_text("x")
    c["a_file"] = a_file
    c["long_name"] = root / ("n" * 300)
    # output folders
    (root / "full_out").mkdir()
    (root / "full_out" / "keep.txt").write_text("do not touch")
    c["full_out"] = root / "full_out"
    os.symlink(root / "gone", root / "broken_out")
    c["broken_out"] = root / "broken_out"
    # prompt files
    (root / "prompts_binary.txt").write_bytes(b"\xff\xfe\x00\x81 not utf-8 \xc3\x28")
    (root / "prompts_comments.txt").write_text("# only a comment\n\n   \n")
    (root / "prompts_bad.json").write_text("{ not json")
    (root / "prompts_keys.json").write_text(json.dumps({"images": []}))
    (root / "prompts_dir").mkdir()
    (root / "prompts_ok.txt").write_text("a cat\na dog\n")
    c["prompts_ok"] = root / "prompts_ok.txt"
    for k in ("binary", "comments"):
        c[f"prompts_{k}"] = root / f"prompts_{k}.txt"
    c["prompts_bad_json"], c["prompts_keys_json"] = root / "prompts_bad.json", root / "prompts_keys.json"
    c["prompts_dir"], c["prompts_missing"] = root / "prompts_dir", root / "prompts_missing.txt"
    # models: corrupt safetensors, code-carrying pickles (in the models root, found by name like real ones)
    from safetensors.torch import save_file

    from rewardloop.weights.safe_load import load_state_dict
    sams = models_root / "sams"
    sd = load_state_dict(sams / "tiny_sam.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(sams / "ok_sam.safetensors"))
    st = (sams / "ok_sam.safetensors").read_bytes()
    (sams / "bad_truncated.safetensors").write_bytes(st[: len(st) // 2])
    (sams / "bad_garbage.safetensors").write_bytes(b"hello world " * 20)
    (sams / "bad_zero.safetensors").write_bytes(b"")
    (sams / "bad_header.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + st[8:])
    (sams / "ok_sam.safetensors").unlink()
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1), "x": _Payload(c["marker"])},
               sams / "evil.pth")
    llm = models_root / "LLM"
    shutil.copytree(llm / "tiny-llm", llm / "evil-llm")
    (llm / "evil-llm" / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2), "x": _Payload(c["marker"])},
               llm / "evil-llm" / "pytorch_model.bin")
    shutil.copytree(llm / "tiny-llm", llm / "truncated-llm")
    w = (llm / "truncated-llm" / "model.safetensors").read_bytes()
    (llm / "truncated-llm" / "model.safetensors").write_bytes(w[: len(w) // 3])
    blip = models_root / "blip"
    shutil.copytree(blip / "tiny-blip", blip / "garbage-blip")
    (blip / "garbage-blip" / "model.safetensors").write_bytes(b"\x00" * 100)
    (root / "not_a_model").mkdir()
    (root / "not_a_model" / "config.json").write_text("{ this is not json")
    c["not_a_model"] = root / "not_a_model"
    torch.save({"x": _Payload(c["marker"])}, root / "evil_model.pt")
    (root / "truncated.safetensors").write_bytes(st[: len(st) // 3])
    c["evil_pt"], c["trunc_st"] = root / "evil_model.pt", root / "truncated.safetensors"
    # TFRecords: valid framing around garbage, garbage framing, truncated, absurd length, NaN scores, bad PNG map
    from rewardloop.trainers.rich_feedback import write_synthetic_richhf
    from rewardloop.trainers.tfrecord import encode_example, frame_record, masked_crc, write_records
    rec, img_dir = write_synthetic_richhf(root / "richhf", n=2)
    c["tf_images"] = img_dir
    raw = rec.read_bytes()
    (root / "tf_garbage.tfrecord").write_bytes(b"\x01\x02garbage that is no TFRecord" * 3)
    (root / "tf_truncated.tfrecord").write_bytes(raw[: len(raw) // 2])
    huge = struct.pack("<Q", 1 << 62)
    (root / "tf_huge_length.tfrecord").write_bytes(huge + struct.pack("<I", masked_crc(huge)) + b"\x00" * 16)
    (root / "tf_bad_proto.tfrecord").write_bytes(frame_record(b"\xff\xff\xff\xff\x0f\x00garbage"))
    uid = sorted(p.stem for p in img_dir.glob("*.png"))[0]
    base = {"filename": f"images/{uid}.png", "artifact_score": [float("nan")], "misalignment_score": [0.5],
            "aesthetics_score": [0.5], "overall_score": [0.5], "artifact_map": [b""], "misalignment_map": [b""],
            "prompt_misalignment_label": [b"1 1 1"]}
    write_records(root / "tf_nan_score.tfrecord", [encode_example(base)])
    short = {k: v for k, v in base.items() if k != "overall_score"}
    short["artifact_score"] = [0.5]
    write_records(root / "tf_missing_score.tfrecord", [encode_example(short)])
    bad_png = dict(base, artifact_score=[0.5], artifact_map=[b"\x89PNG\r\n\x1a\nbroken"])
    write_records(root / "tf_bad_png.tfrecord", [encode_example(bad_png)])
    for k in ("garbage", "truncated", "huge_length", "bad_proto", "nan_score", "missing_score", "bad_png"):
        c[f"tf_{k}"] = root / f"tf_{k}.tfrecord"
    # workflows: one broken API workflow in its own folder
    (root / "wf" / "api").mkdir(parents=True)  # API sources live in <workflows folder>/api
    (root / "wf" / "api" / "broken.api.json").write_text(json.dumps({"1": {"class_type": "NoSuchNode", "inputs": {}}}))
    c["wf"] = root / "wf"
    return c


def _snapshot(*folders: Path) -> str:
    """Content hash of every file under the folders (names, symlink targets and bytes)."""
    h = hashlib.sha256()
    for folder in folders:
        if not folder.exists() and not folder.is_symlink():
            h.update(f"{folder}:absent".encode())
            continue
        for p in sorted([folder, *folder.rglob("*")]) if folder.is_dir() else [folder]:
            h.update(str(p).encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            elif p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


def _listing(folder: Path) -> list:
    return sorted((str(p), p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*"))


SD = ["--sd", "tiny-sd"]
TINY_CAPTION = ["--model", "captioner=tiny-blip", "--model", "text_encoder=tiny-minilm"]
TINY_SAM_LLM = ["--model", "sam=tiny-sam", "--model", "clip=tiny-clip", "--model", "llm=tiny-llm"]
RANK = ["rank", "--rewards", "caption", "--prompt", "a cat", *TINY_CAPTION]
SCORE = ["score", "--reward", "caption", "--prompt", "a cat", *TINY_CAPTION]
FIX = ["fix", "--prompt", "a cat", *SD, "--reward", "rich", "--model", "rich_feedback=tiny-rahf"]
DPG = ["train-dpg", "--base", "tiny-sd", "--trigger", "sks", "--class-prompt", "a photo of a dog",
       "--dino-model", "tiny-dino", "--steps", "1", "--resolution", "32", "--preset", "cpu"]
RANKED = ["train-ranked", "--base", "tiny-sd", "--rewards", "caption", *TINY_CAPTION, "--k", "2", "--rounds", "1",
          "--steps", "1", "--resolution", "32", "--gen-steps", "1"]
RFT = ["train-rich-feedback", "--init", "tiny-rahf", "--steps", "1", "--batch-size", "1", "--cpu"]
EVAL = ["eval-rich-feedback", "--model", "tiny-rahf", "--device", "cpu"]

def _th(name, argv, expect, marks=()):
    """A case of a training command (its up-front checks live in trainers/ and the training CLIs)."""
    return pytest.param(name, argv, expect, id=name, marks=marks)


# (id, argv with {placeholders}, text the error line must contain)
CASES = [
    # ------------------------------------------------ score: files
    ("score-text-as-png", [*SCORE, "{text}"], "not an image file"),
    ("score-zero-bytes", [*SCORE, "{zero}"], "empty (0 bytes)"),
    ("score-truncated-png", [*SCORE, "{truncated}"], "damaged or truncated"),
    ("score-decompression-bomb", [*SCORE, "{bomb}"], "REWARDLOOP_MAX_IMAGE_PIXELS="),
    ("score-broken-symlink", [*SCORE, "{broken_link}"], "broken symbolic link"),
    ("score-symlink-loop", [*SCORE, "{loop}"], "symbolic link"),
    ("score-missing-file", [*SCORE, "{missing}"], "does not exist"),
    ("score-folder-with-bad-image", [*SCORE, "{mixed}"], "b.png"),
    ("score-empty-folder", [*SCORE, "{empty_dir}"], "holds no images"),
    ("score-folder-named-png", [*SCORE, "{dir_png}"], "holds no images"),
    # ------------------------------------------------ score: names, roles, prompts, devices
    ("score-unknown-reward", ["score", "--reward", "caption,nosuch", "--prompt", "a", "{good}"], "'nosuch'"),
    ("score-reward-twice", ["score", "--reward", "caption,caption", "--prompt", "a", *TINY_CAPTION, "{good}"],
     "named twice"),
    ("score-unknown-role", [*SCORE, "--model", "nosuch=x", "{good}"], "'nosuch'"),
    ("score-role-of-unchosen-reward", [*SCORE, "--model", "llm=tiny-llm", "{good}"], "no chosen reward takes 'llm'"),
    ("score-scoped-unchosen-reward", [*SCORE, "--model", "sam_llm.llm=tiny-llm", "{good}"], "not one of the chosen"),
    ("score-model-without-equals", [*SCORE, "--model", "captioner", "{good}"], "ROLE=MODEL"),
    ("score-missing-model", ["score", "--reward", "caption", "--prompt", "a", "--model", "captioner=no-such-blip",
                             "--model", "text_encoder=tiny-minilm", "{good}"], "not found in models/blip"),
    ("score-bad-option-value", ["score", "--reward", "sam_llm", "--prompt", "a", *TINY_SAM_LLM, "--model",
                                "points_per_side=many", "{good}"], "whole number"),
    ("score-3-prompts-2-images", [*SCORE, "--prompt", "b", "--prompt", "c", "{good}", "{good2}"],
     "3 prompts for 2 images"),
    ("score-prompt-lines-mismatch", ["score", "--reward", "caption", "--prompt", "a\nb\nc", *TINY_CAPTION, "{good}"],
     "3 lines for 1 image"),
    ("score-empty-prompt", ["score", "--reward", "caption", "--prompt", "  ", *TINY_CAPTION, "{good}"], "empty"),
    ("score-unknown-device", [*SCORE, "--device", "nosuchdevice", "{good}"], "unknown device"),
    ("score-unknown-dtype", [*SCORE, "--dtype", "fp8", "{good}"], "--dtype"),
    # ------------------------------------------------ score: corrupt / unsafe model files
    ("score-truncated-safetensors", ["score", "--reward", "sam_llm", "--prompt", "a", "--model",
                                     "sam=bad_truncated.safetensors", "--model", "clip=tiny-clip", "--model",
                                     "llm=tiny-llm", "{good}"], "damaged or incomplete"),
    ("score-garbage-safetensors", ["score", "--reward", "sam_llm", "--prompt", "a", "--model",
                                   "sam=bad_garbage.safetensors", "--model", "clip=tiny-clip", "--model",
                                   "llm=tiny-llm", "{good}"], "damaged or incomplete"),
    ("score-zero-byte-safetensors", ["score", "--reward", "sam_llm", "--prompt", "a", "--model",
                                     "sam=bad_zero.safetensors", "--model", "clip=tiny-clip", "--model",
                                     "llm=tiny-llm", "{good}"], "damaged or incomplete"),
    ("score-huge-header-safetensors", ["score", "--reward", "sam_llm", "--prompt", "a", "--model",
                                       "sam=bad_header.safetensors", "--model", "clip=tiny-clip", "--model",
                                       "llm=tiny-llm", "{good}"], "damaged or incomplete"),
    ("score-pickle-payload-pth", ["score", "--reward", "sam_llm", "--prompt", "a", "--model", "sam=evil.pth",
                                  "--model", "clip=tiny-clip", "--model", "llm=tiny-llm", "{good}"],
     "Refusing to load evil.pth"),
    ("score-pickle-payload-hf-bin", ["score", "--reward", "sam_llm", "--prompt", "a", "--model", "sam=tiny-sam",
                                     "--model", "clip=tiny-clip", "--model", "llm=evil-llm", "{good}"],
     "Refusing to load pytorch_model.bin"),
    ("score-truncated-hf-weights", ["score", "--reward", "sam_llm", "--prompt", "a", "--model", "sam=tiny-sam",
                                    "--model", "clip=tiny-clip", "--model", "llm=truncated-llm", "{good}"],
     "damaged or incomplete"),
    # ------------------------------------------------ rank
    ("rank-unknown-reward-fails-fast", ["rank", "--rewards", "caption,nosuch", "--prompt", "a", "{good}", "--out",
                                        "{out}"], "'nosuch'"),
    ("rank-out-not-empty", [*RANK, "{good}", "--out", "{full_out}"], "--overwrite"),
    ("rank-out-is-a-file", [*RANK, "{good}", "--out", "{a_file}"], "is a file"),
    ("rank-out-under-a-file", [*RANK, "{good}", "--out", "{a_file}/sub"], "is a file"),
    ("rank-out-broken-symlink", [*RANK, "{good}", "--out", "{broken_out}"], "broken symbolic link"),
    ("rank-out-name-too-long", [*RANK, "{good}", "--out", "{long_name}"], "shorter name"),
    ("rank-weights-not-numbers", [*RANK, "--weights", "1,x", "{good}", "--out", "{out}"], "numbers"),
    ("rank-weights-count", [*RANK, "--weights", "1,1,1", "{good}", "--out", "{out}"], "one per reward"),
    ("rank-weights-negative", [*RANK, "--weights", "-1", "{good}", "--out", "{out}"], "≥ 0"),
    ("rank-weights-all-zero", [*RANK, "--weights", "0", "{good}", "--out", "{out}"], "all 0"),
    ("rank-group-size-negative", [*RANK, "--group-size", "-1", "{good}", "--out", "{out}"], "--group-size"),
    ("rank-group-size-not-divisor", [*RANK, "--group-size", "3", "{good}", "{good2}", "--out", "{out}"],
     "do not split"),
    ("rank-bad-image", [*RANK, "{good}", "{truncated}", "--out", "{out}"], "truncated"),
    ("rank-bomb", [*RANK, "{bomb}", "--out", "{out}"], "decompression-bomb"),
    ("rank-unknown-mode", [*RANK, "--mode", "best", "{good}", "--out", "{out}"], "--mode"),
    # ------------------------------------------------ fix
    ("fix-unknown-sd-before-scoring", ["fix", "--prompt", "a", "--sd", "no-such-sd", "--reward", "rich", "--model",
                                       "rich_feedback=tiny-rahf", "{good}", "--out", "{out}"], "'no-such-sd'"),
    ("fix-k-zero", [*FIX, "--k", "0", "{good}", "--out", "{out}"], "--k"),
    ("fix-denoise-zero", [*FIX, "--denoise", "0", "{good}", "--out", "{out}"], "--denoise"),
    ("fix-gigantic-dilation", [*FIX, "--dilate", "5000", "{good}", "--out", "{out}"], "--dilate"),
    ("fix-nan-floor", [*FIX, "--floor", "nan", "{good}", "--out", "{out}"], "--floor"),
    ("fix-mask-not-an-image", [*FIX, "--mask", "{text}", "{good}", "--out", "{out}"], "not an image"),
    ("fix-unknown-score-name", [*FIX, "--score-name", "nosuch", "{good}", "--out", "{out}"], "plausibility"),
    ("fix-mixed-sizes", [*FIX, "{good}", "{small}", "--out", "{out}"], "one size"),
    ("fix-two-inputs-one-name", [*FIX, "{twin1}", "{twin2}", "--out", "{out}"], "rename one"),
    ("fix-out-not-empty", [*FIX, "{good}", "--out", "{full_out}"], "--overwrite"),
    ("fix-reward-without-model", ["fix", "--prompt", "a", *SD, "--reward", "rich", "--model",
                                  "rich_feedback=no-such-rahf", "{good}", "--out", "{out}"], "no-such-rahf"),
    # ------------------------------------------------ caption / judge
    ("caption-bad-image", ["caption", "--model", "tiny-blip", "{zero}"], "empty (0 bytes)"),
    ("caption-unknown-model", ["caption", "--model", "no-such-captioner", "{good}"], "not found"),
    ("caption-garbage-weights", ["caption", "--model", "garbage-blip", "{good}"], "damaged or incomplete"),
    ("caption-zero-tokens", ["caption", "--model", "tiny-blip", "--max-new-tokens", "0", "{good}"],
     "--max-new-tokens"),
    ("caption-zero-batch", ["caption", "--model", "tiny-blip", "--batch-size", "0", "{good}"], "--batch-size"),
    ("judge-pickle-payload", ["judge", "cat", "--prompt", "a cat", "--llm", "evil-llm"], "Refusing to load"),
    ("judge-unknown-llm", ["judge", "cat", "--prompt", "a cat", "--llm", "no-such-llm"], "not found"),
    ("judge-empty-label", ["judge", " ", "--prompt", "a cat", "--llm", "tiny-llm"], "label is empty"),
    ("judge-empty-prompt", ["judge", "cat", "--prompt", "", "--llm", "tiny-llm"], "--prompt is empty"),
    # ------------------------------------------------ models / download / selftest / workflows
    ("models-unknown-flag", ["models", "--everything"], "unrecognized arguments"),
    ("download-unknown-key", ["download", "no-such-model", "--root", "{out}"], "Unknown model"),
    ("download-tiny-model", ["download", "tiny-sam", "--root", "{out}"], "cannot be downloaded"),
    ("download-nothing", ["download", "--root", "{out}"], "Name models"),
    ("download-root-is-a-file", ["download", "blip-large", "--root", "{a_file}"], "is a file"),
    ("download-offline", ["download", "blip-large", "--root", "{out}"], "Could not download"),
    ("selftest-only-matches-nothing", ["selftest", "--only", "no-such-check"], "matches no check"),
    ("selftest-keep-is-a-file", ["selftest", "--only", "registry", "--keep", "{a_file}"], "is a file"),
    ("workflows-missing-folder", ["workflows", "--check", "--folder", "{missing}"], "not a folder"),
    ("workflows-missing-core-nodes", ["workflows", "--check", "--core-nodes", "{missing}"], "does not exist"),
    ("workflows-invalid-workflow", ["workflows", "--check", "--folder", "{wf}"], "problem"),
    ("workflows-object-info-not-json", ["workflows", "core-nodes", "--object-info", "{text}"], "not a readable"),
    # ------------------------------------------------ convert-rich-feedback
    ("convert-missing-source", ["convert-rich-feedback", "{missing}", "--out-dir", "{out}"], "does not exist"),
    ("convert-pickle-payload", ["convert-rich-feedback", "{evil_pt}", "--out-dir", "{out}"], "Refusing to load"),
    ("convert-truncated-safetensors", ["convert-rich-feedback", "{trunc_st}", "--out-dir", "{out}"],
     "damaged or incomplete"),
    ("convert-missing-tokenizer", ["convert-rich-feedback", "{good}", "--tokenizer", "{missing}", "--out-dir",
                                   "{out}"], "--tokenizer"),
    ("convert-escaping-name", ["convert-rich-feedback", "{evil_pt}", "--name", "../escape", "--out-dir", "{out}"],
     "Refusing to load"),
    ("convert-vit-heads-zero", ["convert-rich-feedback", "{good}", "--vit-heads", "0", "--out-dir", "{out}"],
     "--vit-heads"),
    ("convert-existing-output", ["convert-rich-feedback", "{good}", "--name", "keep.txt", "--out-dir",
                                 "{full_out}"], "--overwrite"),
    # ------------------------------------------------ eval-personalization
    ("eval-personalization-bad-reference", ["eval-personalization", "--lora", "none", "--base", "tiny-sd", "--refs",
                                            "{mixed}", "--class", "dog", "--dino", "tiny-dino", "--clip", "tiny-clip",
                                            "--out", "{out}"], "b.png"),
    ("eval-personalization-bomb-reference", ["eval-personalization", "--lora", "none", "--base", "tiny-sd", "--refs",
                                             "{bomb}", "--class", "dog", "--dino", "tiny-dino", "--clip",
                                             "tiny-clip", "--out", "{out}"], "decompression-bomb"),
    ("eval-personalization-missing-lora", ["eval-personalization", "--lora", "no-such-lora", "--refs", "{good}",
                                           "--class", "dog", "--out", "{out}"], "no-such-lora"),
    ("eval-personalization-out-not-empty", ["eval-personalization", "--lora", "none", "--base", "tiny-sd", "--refs",
                                            "{good}", "--class", "dog", "--dino", "tiny-dino", "--clip", "tiny-clip",
                                            "--out", "{full_out}"], "overwrite"),
    # ------------------------------------------------ training commands (their checks: the training work)
    ("train-dpg-bad-reference", [*DPG, "--refs", "{mixed}", "--out", "corpus_dpg"], "b.png"),
    ("train-dpg-missing-refs", [*DPG, "--refs", "{missing}", "--out", "corpus_dpg"], "does not exist"),
    ("train-dpg-bomb-reference", [*DPG, "--refs", "{bomb}", "--out", "corpus_dpg"], "decompression-bomb"),
    _th("train-dpg-negative-steps", [*DPG, "--refs", "{good}", "--steps", "-2", "--out", "corpus_dpg"],
                 "steps"),
    ("train-dpg-unknown-base", ["train-dpg", "--base", "no-such-base", "--refs", "{good}", "--trigger",
                                            "sks", "--class-prompt", "a dog", "--out", "corpus_dpg"], "no-such-base"),
    ("train-dpg-escaping-name", [*DPG, "--refs", "{good}", "--out", "../escape"], "would leave"),
    ("train-dpg-unknown-reward", [*DPG, "--refs", "{good}", "--reward", "aesthetics:1", "--out", "corpus_dpg"],
     "Unknown reward 'aesthetics'"),
    ("train-dpg-bad-reward-weight", [*DPG, "--refs", "{good}", "--reward", "caption:x", "--out", "corpus_dpg"],
     "must be a number"),
    ("train-dpg-reward-unknown-role", [*DPG, "--refs", "{good}", "--reward", "caption", "--reward-model",
                                       "sam=tiny-sam", "--out", "corpus_dpg"], "no chosen reward takes 'sam'"),
    ("train-dpg-paper-lora-rate", [*DPG, "--refs", "{good}", "--preset", "paper", "--lr", "1e-4", "--out",
                                   "corpus_dpg"], "learning rate <= 1e-05"),
    _th("train-dpg-250-char-name", [*DPG, "--refs", "{good}", "--out", "d" * 250], "name"),
    ("train-ranked-missing-prompts", [*RANKED, "--prompts", "{prompts_missing}", "--out", "corpus_ranked"],
     "does not exist"),
    ("train-ranked-prompts-folder", [*RANKED, "--prompts", "{prompts_dir}", "--out", "corpus_ranked"],
     "does not exist"),
    ("train-ranked-binary-prompts", [*RANKED, "--prompts", "{prompts_binary}", "--out", "corpus_ranked"],
     "not UTF-8"),
    ("train-ranked-only-comments", [*RANKED, "--prompts", "{prompts_comments}", "--out", "corpus_ranked"],
     "no prompts"),
    ("train-ranked-bad-json", [*RANKED, "--prompts", "{prompts_bad_json}", "--out", "corpus_ranked"],
     "not valid JSON"),
    ("train-ranked-json-keys", [*RANKED, "--prompts", "{prompts_keys_json}", "--out", "corpus_ranked"],
     "MS-COCO"),
    _th("train-ranked-negative-steps", [*RANKED, "--prompts", "{prompts_ok}", "--steps", "-2",
                                                 "--out", "corpus_ranked"], "steps"),
    _th("train-ranked-unknown-reward", ["train-ranked", "--base", "tiny-sd", "--prompts", "{prompts_ok}",
                                                 "--rewards", "caption,nosuch", "--out", "corpus_ranked"], "nosuch"),
    _th("train-ranked-unknown-role", [*RANKED, "--model", "nosuch=x", "--prompts", "{prompts_ok}", "--out",
                                               "corpus_ranked"], "nosuch"),
    _th("train-ranked-250-char-name", [*RANKED, "--prompts", "{prompts_ok}", "--out", "r" * 250], "name"),
    ("train-rich-feedback-missing-data", [*RFT, "--train", "{missing}", "--out", "{out}"], "does not exist"),
    ("train-rich-feedback-garbage", [*RFT, "--train", "{tf_garbage}", "--images", "{tf_images}", "--out", "{out}"],
     "TFRecord"),
    ("train-rich-feedback-truncated", [*RFT, "--train", "{tf_truncated}", "--images", "{tf_images}",
                                                   "--out", "{out}"], "truncated"),
    _th("train-rich-feedback-huge-length", [*RFT, "--train", "{tf_huge_length}", "--images", "{tf_images}",
                                                     "--out", "{out}"], "tfrecord"),
    ("train-rich-feedback-bad-proto", [*RFT, "--train", "{tf_bad_proto}", "--images", "{tf_images}", "--out",
                                       "{out}"], "protobuf"),
    _th("train-rich-feedback-nan-score", [*RFT, "--train", "{tf_nan_score}", "--images", "{tf_images}",
                                                   "--out", "{out}"], "artifact_score"),
    _th("train-rich-feedback-missing-score", [*RFT, "--train", "{tf_missing_score}", "--images",
                                                       "{tf_images}", "--out", "{out}"], "overall_score"),
    _th("train-rich-feedback-bad-png-map", [*RFT, "--train", "{tf_bad_png}", "--images", "{tf_images}",
                                                     "--out", "{out}"], "artifact_map"),
    ("train-rich-feedback-negative-steps", [*RFT, "--train", "{tf_garbage}", "--steps", "-2", "--out",
                                                        "{out}"], "steps"),
    ("eval-rich-feedback-garbage", [*EVAL, "--data", "{tf_garbage}", "--images", "{tf_images}"], "TFRecord"),
    _th("eval-rich-feedback-huge-length", [*EVAL, "--data", "{tf_huge_length}", "--images",
                                                    "{tf_images}"], "tfrecord"),
    _th("eval-rich-feedback-unknown-model", ["eval-rich-feedback", "--model", "no-such-rahf", "--data",
                                                      "{tf_garbage}"], "no-such-rahf"),
]

LOADS_ALLOWED = {"download-offline"}


def _fill(argv, corpus, out):
    vals = {k: str(v) for k, v in corpus.items()}
    vals["out"] = str(out)
    return [a.format(**vals) if "{" in a else a for a in argv]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """Per case: outputs (runs, LoRAs, downloads) go under one temporary folder that is hashed before/after."""
    monkeypatch.setenv("REWARDLOOP_OUTPUT", str(tmp_path / "output"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("REWARDLOOP_MAX_IMAGE_PIXELS", raising=False)
    return tmp_path


@pytest.mark.parametrize("name,argv,expect", [c if hasattr(c, "marks") else pytest.param(*c, id=c[0])
                                              for c in CASES])
def test_bad_input_gives_one_error_line_and_changes_nothing(name, argv, expect, corpus, workspace, capsys):
    from rewardloop.weights.cache import MODEL_CACHE
    out = workspace / "out"
    args = _fill(argv, corpus, out)
    watched = [workspace, corpus["root"]]
    before, models_before = _snapshot(*watched), _listing(corpus["models"])
    misses = MODEL_CACHE.stats.misses
    rc = main(args)
    got = capsys.readouterr()
    err_lines = [ln for ln in got.err.splitlines() if ln.strip()]
    errors = [ln for ln in err_lines if ln.startswith("error:")]
    assert rc == 1, f"exit code {rc}; stderr: {got.err[-2000:]}"
    assert len(errors) == 1, f"expected exactly one error line, got: {err_lines}"
    assert "Traceback" not in got.err and "Traceback" not in got.out
    assert expect.lower() in errors[0].lower(), errors[0]
    assert _snapshot(*watched) == before, "a failed start changed the folders it was given"
    assert _listing(corpus["models"]) == models_before, "a failed start changed the models folder"
    assert not corpus["marker"].exists(), "a pickle payload ran"
    if name not in LOADS_ALLOWED:
        assert MODEL_CACHE.stats.misses == misses, "a model was loaded before the input was checked"


def test_a_path_that_is_no_model_fails_at_load_with_one_line(corpus, workspace, capsys):
    """A user-given path is trusted on the command line; when it holds no model the load itself fails: one line."""
    rc = main(["score", "--reward", "caption", "--prompt", "a", "--model", f"captioner={corpus['not_a_model']}",
               "--model", "text_encoder=tiny-minilm", str(corpus["good"])])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "Could not load the captioner model" in err and "Traceback" not in err


def test_verbose_shows_the_traceback(corpus, capsys):
    with pytest.raises(Exception, match="not an image file"):
        main(["-v", *SCORE, str(corpus["text"])])


def test_a_trusted_large_image_is_allowed_by_the_env_var(tmp_path, monkeypatch):
    from rewardloop.errors import UserError
    from rewardloop.rewards.images import open_image
    big = tmp_path / "big.png"
    Image.new("L", (400, 300)).save(big)
    monkeypatch.setenv("REWARDLOOP_MAX_IMAGE_PIXELS", "100000")
    with pytest.raises(UserError, match=r"400×300 = 120,000 pixels.*REWARDLOOP_MAX_IMAGE_PIXELS=200000"):
        open_image(big)
    monkeypatch.setenv("REWARDLOOP_MAX_IMAGE_PIXELS", "200000")
    assert open_image(big).size == (400, 300)


def _run(*args, env=None):
    e = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "rewardloop", *args], capture_output=True, text=True, env=e,
                          timeout=300)


@pytest.mark.parametrize("case", ["score-text-as-png", "rank-unknown-reward-fails-fast",
                                  "score-pickle-payload-pth"])
def test_real_subprocess_cases(case, corpus, tmp_path):
    """The same contract through ``python -m rewardloop`` (interpreter exit code, real stderr)."""
    argv = next(c for c in CASES if not hasattr(c, "marks") and c[0] == case)[1]
    before = _snapshot(tmp_path, corpus["root"])
    proc = _run(*_fill(argv, corpus, tmp_path / "out"), env={"REWARDLOOP_MODELS": str(corpus["models"]),
                                                            "REWARDLOOP_OUTPUT": str(tmp_path / "output")})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and len([ln for ln in lines if ln.startswith("error:")]) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert _snapshot(tmp_path, corpus["root"]) == before and not corpus["marker"].exists()
