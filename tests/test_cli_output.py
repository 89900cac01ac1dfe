"""Output a machine can read: strict JSON with file names, `workflows --check` says what it checked, progress bars
never mix into results, and long input names give outputs the file system accepts."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from rewardloop.cli import main


def _strict(text: str):
    def no_constants(name):
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=no_constants)


def _images(folder, n=2, name=lambda i: f"im{i}.png"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        f = folder / name(i)
        Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).save(f)
        files.append(str(f))
    return files


def test_score_json_names_files_and_summarises_heatmaps(tiny, tmp_path, capsys):
    tiny("tiny-rahf")
    files = _images(tmp_path / "in")
    assert main(["score", *files, "--reward", "rich", "--prompt", "a cat", "--model", "rich_feedback=tiny-rahf",
                 "--device", "cpu", "--json"]) == 0
    got = _strict(capsys.readouterr().out)
    assert got["files"] == files and got["prompts"] == ["a cat", "a cat"]
    assert [s["name"] for s in got["scores"]] == ["plausibility", "alignment", "aesthetics", "overall"]
    heat = got["scores"][0]["details"][0]["implausibility_heatmap"]
    assert heat["shape"] == [24, 32] and 0 <= heat["min"] <= heat["mean"] <= heat["max"] <= 1


def test_json_helpers_never_write_nan():
    from rewardloop.rewards.report import dumps, scores_json
    from rewardloop.rewards.types import RewardScores
    text = scores_json([RewardScores("r", [1.0, float("nan")], details=[{"p": float("inf")}, {"p": 0.5}])],
                       ["a.png", "b.png"])
    got = _strict(text)
    assert got["scores"][0]["values"] == [1.0, None] and got["scores"][0]["details"][0]["p"] is None
    assert _strict(dumps({"x": np.float32(2.5), "m": np.ones((2, 3))})) == {
        "x": 2.5, "m": {"shape": [2, 3], "min": 1.0, "max": 1.0, "mean": 1.0}}


def test_judge_json_is_strict_in_paper_mode(tiny, capsys):
    """Paper mode has no digit probability mass (NaN inside): the JSON says null, never NaN."""
    assert main(["judge", "cat", "tree", "--prompt", "a cat", "--llm", tiny("tiny-llm"), "--mode", "paper",
                 "--device", "cpu", "--json"]) == 0
    got = _strict(capsys.readouterr().out)
    assert [lab["label"] for lab in got["labels"]] == ["cat", "tree"]
    assert all(lab["digit_mass"] is None for lab in got["labels"])


def test_workflows_check_says_what_it_checked(capsys):
    assert main(["workflows", "--check"]) == 0
    out = capsys.readouterr().out
    from rewardloop.workflows.graph import api_files, ui_files
    for f in api_files() + ui_files():
        assert f"ok      {f.name}" in out
    assert f"checked {len(api_files())} API and {len(ui_files())} editor workflow(s)" in out
    assert "0 problem(s)" in out.splitlines()[-1]


def test_progress_bars_stay_off_pipes(monkeypatch, capsys):
    """Bars go to stderr and only on a terminal, so a piped table or log never gets bar fragments."""
    from rewardloop import bridge
    monkeypatch.setenv("REWARDLOOP_NO_TQDM", "0")
    with bridge.Progress(5, "piped") as bar:
        for _ in range(5):
            bar.update(1)
    got = capsys.readouterr()
    assert "piped" not in got.err and "piped" not in got.out


def test_long_input_names_give_outputs_the_file_system_takes(tiny, tmp_path, capsys):
    """A 250-character input name is legal; the ranked copy derived from it is cut to fit (not an error)."""
    for key in ("tiny-blip", "tiny-minilm"):
        tiny(key)
    files = _images(tmp_path / "in", 2, name=lambda i: f"{i}" + "x" * 245 + ".png")
    assert all(len(os.path.basename(f)) == 250 for f in files)
    out = tmp_path / "ranked"
    assert main(["rank", *files, "--rewards", "caption", "--prompt", "a cat", "--model", "captioner=tiny-blip",
                 "--model", "text_encoder=tiny-minilm", "--device", "cpu", "--out", str(out)]) == 0, \
        capsys.readouterr().err
    names = sorted(p.name for p in (out / "ranked").iterdir())
    assert len(names) == 2 and all(len(n) <= 130 and n.endswith(".png") for n in names), names
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
