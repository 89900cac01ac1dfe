"""Every message quoted in the README's Troubleshooting table is what the code prints.

Each quote (a backticked span in the first column; ``…`` stands for the parts that vary) must match a message the
code really produces here: the triggers below cause each error and collect its text. A quote whose literal pieces
(between ``…``) all appear verbatim in the pack's source also passes (log lines that need a broken install)."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def troubleshooting_quotes() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Troubleshooting"):text.index("## Layout")]
    quotes = []
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith(("| message", "|---")):
            first = line.split(" | ")[0]
            quotes += re.findall(r"`([^`]+)`", first)
    return quotes


def _message(fn) -> str:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - we want the text of whatever it raises
        from rewardloop.cli import describe
        return describe(e)
    raise AssertionError(f"{fn} raised nothing")


@pytest.fixture
def produced(tmp_path, monkeypatch) -> list[str]:
    """The real messages, caused one by one."""
    from PIL import Image
    from safetensors.torch import save_file

    from rewardloop import NODE_CLASS_MAPPINGS
    from rewardloop.cli import describe
    from rewardloop.cli._checks import check_out_dir
    from rewardloop.rewards.images import broadcast_prompts, image_to_pil, open_image
    from rewardloop.rewards.scoring import check_model_keys
    from rewardloop.weights import registry
    from rewardloop.weights.catalogue import ModelSpec
    from rewardloop.weights.safe_load import check_safetensors, load_state_dict
    monkeypatch.setenv("REWARDLOOP_MODELS", str(tmp_path / "empty_models"))
    monkeypatch.setenv("REWARDLOOP_PACK_MODELS", str(tmp_path / "empty_pack"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("REWARDLOOP_MAX_IMAGE_PIXELS", raising=False)
    out = []
    out.append(_message(lambda: registry.resolve("blip-large")))
    out.append(_message(lambda: registry.download("blip-large", tmp_path / "dl")))

    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))
    torch.save({"x": Payload()}, tmp_path / "evil.pth")
    out.append(_message(lambda: load_state_dict(tmp_path / "evil.pth")))
    save_file({"w": torch.zeros(64)}, str(tmp_path / "m.safetensors"))
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    out.append(_message(lambda: check_safetensors(tmp_path / "t.safetensors")))
    f = tmp_path / "model.bin"
    f.write_bytes(b"abc")
    spec = ModelSpec("demo", "sam", "sams", "model.bin", sha256={"model.bin": "0" * 64})
    out.append(_message(lambda: registry.verify(spec, f)))
    (tmp_path / "x.png").write_text("not an image")
    out.append(_message(lambda: open_image(tmp_path / "x.png")))
    from test_bad_inputs import _bomb_png
    (tmp_path / "big.png").write_bytes(_bomb_png())
    out.append(_message(lambda: open_image(tmp_path / "big.png")))
    nan = torch.rand(2, 8, 8, 3)
    nan[1, 0, 0, 0] = math.nan
    out.append(_message(lambda: image_to_pil(nan)))
    out.append(_message(lambda: image_to_pil(torch.zeros(0, 8, 8, 3))))
    out.append(_message(lambda: broadcast_prompts(["a", "b", "c"], 4)))
    out.append(_message(lambda: broadcast_prompts("a\nb\nc", 2)))
    out.append(_message(lambda: broadcast_prompts("", 2)))
    out.append(_message(lambda: check_model_keys(["caption"], {"llm": "x"})))
    out.append(_message(lambda: registry.resolve("/home/me/sam.pth", folder="sams", trusted=False)))
    out.append(_message(lambda: NODE_CLASS_MAPPINGS["RewardLoopAssembleRank"]().rank(
        torch.rand(2, 8, 8, 3), "rank_sum", 0, 0)))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ranked").mkdir()
    (tmp_path / "ranked" / "a.png").write_bytes(b"x")
    out.append(_message(lambda: check_out_dir("ranked", overwrite=False)))
    out.append(describe(TypeError("'NoneType' object is not subscriptable")))
    out += _training_messages(tmp_path)
    Image.new("RGB", (2, 2)).save(tmp_path / "ok.png")
    return out


def _training_messages(tmp_path) -> list[str]:
    """The training side's messages: run settings, the run lock, name length, resume refusals, bad records."""
    from test_training_inputs import _good_example

    from rewardloop.fileio import safe_output_path
    from rewardloop.trainers import run_folder
    from rewardloop.trainers import tfrecord as T
    from rewardloop.trainers.rich_feedback import read_richhf
    from rewardloop.weights.safe_load import load_training_state
    out = []
    run = tmp_path / "run"
    run.mkdir()
    run_folder.write_settings(run, "dpg", {"lora": {"rank": 2}})
    out.append(_message(lambda: run_folder.check_settings(run, "dpg", {"lora": {"rank": 4}})))
    fd = run_folder._acquire(run)
    try:
        out.append(_message(lambda: run_folder._acquire(run)))      # a second open file: the lock refuses it
    finally:
        os.close(fd)
    out.append(_message(lambda: safe_output_path(tmp_path, "n" * 250, ".safetensors")))

    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))
    torch.save({"x": Payload()}, tmp_path / "state.pt")
    out.append(_message(lambda: load_training_state(tmp_path / "state.pt")))
    (tmp_path / "cut").mkdir()
    torch.save({"step": torch.zeros(1000)}, tmp_path / "cut" / "state.pt")
    data = (tmp_path / "cut" / "state.pt").read_bytes()
    (tmp_path / "cut" / "state.pt").write_bytes(data[: len(data) // 2])
    out.append(_message(lambda: load_training_state(tmp_path / "cut" / "state.pt")))
    ex = _good_example()
    ex.pop("artifact_score")
    (tmp_path / "bad.tfrecord").write_bytes(T.frame_record(T.encode_example(ex)))
    out.append(_message(lambda: read_richhf(tmp_path / "bad.tfrecord")))
    return out


def _source_text() -> str:
    files = [p for p in ROOT.rglob("*.py") if "tests" not in p.relative_to(ROOT).parts]
    return "\n".join(p.read_text() for p in files)


def test_every_troubleshooting_quote_is_what_the_code_prints(produced):
    quotes = troubleshooting_quotes()
    assert len(quotes) >= 15, quotes
    source = _source_text()
    missing = []
    for q in quotes:
        pattern = ".*?".join(re.escape(part) for part in q.split("…"))
        if any(re.search(pattern, m) for m in produced):
            continue
        pieces = [p.strip() for p in q.split("…") if p.strip()]
        if pieces and all(p in source for p in pieces):
            continue
        missing.append(q)
    assert not missing, "README quotes no code prints:\n" + "\n".join(missing) + "\n\nproduced:\n" + \
        "\n".join(produced)
