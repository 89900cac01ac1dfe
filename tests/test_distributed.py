"""`rank` and `train-ranked` under torchrun (2 CPU processes, gloo) make the same selection as one process."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rewardloop import distributed

PACK_PARENT = str(Path(__file__).resolve().parents[2])


def test_one_process_shards_nothing_and_gathers_its_own(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.world_size() == 1 and distributed.is_main()
    assert distributed.shard([0, 1, 2]) == [0, 1, 2]
    assert distributed.gather({3: "x"}) == {3: "x"}
    distributed.barrier()


def _env(models_root, tmp_path) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([PACK_PARENT, os.environ.get("PYTHONPATH", "")]),
                REWARDLOOP_MODELS=str(models_root), REWARDLOOP_OUTPUT=str(tmp_path / "output"), OMP_NUM_THREADS="1",
                REWARDLOOP_DEVICE="cpu", REWARDLOOP_NO_TQDM="1", HF_HUB_OFFLINE="1")


def _run(args: list[str], nproc: int, env: dict, cwd: Path, port: int) -> subprocess.CompletedProcess:
    if nproc == 1:
        cmd = [sys.executable, "-m", "rewardloop", *args]
    else:
        torchrun = Path(sys.executable).with_name("torchrun")
        if not torchrun.is_file():
            pytest.skip("torchrun not installed")
        cmd = [str(torchrun), "--nproc_per_node", str(nproc), "--master_port", str(port), "-m", "rewardloop", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _images(folder: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image
    folder.mkdir()
    for i in range(n):
        a = np.full((40, 48, 3), 30 + 25 * i, dtype=np.uint8)
        a[5 + i:20 + i, 8:30] = (200, 40 * i % 255, 90)
        Image.fromarray(a).save(folder / f"im{i}.png")
    return folder


@pytest.mark.slow
def test_rank_two_processes_same_selection_as_one(tiny, tmp_path, models_root):
    tiny("tiny-blip")
    tiny("tiny-minilm")
    tiny("tiny-rahf")
    imgs = _images(tmp_path / "imgs", 7)
    env = _env(models_root, tmp_path)
    common = ["rank", str(imgs), "--rewards", "caption,rich", "--prompt", "a red square", "--chunk", "2",
              "--model", "captioner=tiny-blip", "--model", "text_encoder=tiny-minilm", "--model",
              "rich_feedback=tiny-rahf", "--device", "cpu"]
    _run(common + ["--out", str(tmp_path / "one")], 1, env, tmp_path, 29541)
    two = _run(common + ["--out", str(tmp_path / "two")], 2, env, tmp_path, 29542)
    rows = {}
    for name in ("one", "two"):
        with open(tmp_path / name / "report.csv") as f:
            rows[name] = list(csv.DictReader(f))
    assert [r["image_index"] for r in rows["one"]] == [r["image_index"] for r in rows["two"]]   # same order
    for a, b in zip(rows["one"], rows["two"]):
        assert float(a["caption"]) == pytest.approx(float(b["caption"]), abs=1e-6)
        assert float(a["plausibility"]) == pytest.approx(float(b["plausibility"]), abs=1e-6)
    assert sorted(p.name for p in (tmp_path / "two" / "ranked").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one" / "ranked").iterdir())
    assert len(list((tmp_path / "two" / "thumbs").iterdir())) == 7                 # both processes' thumbnails
    assert two.stdout.count("ranked copies:") == 1                                 # one process reports
    assert not list(tmp_path.glob(".two.stage-*"))                                 # the staging folder is gone


@pytest.mark.slow
def test_train_ranked_two_processes_same_selection_as_one(tiny, tmp_path, models_root):
    tiny("tiny-sd")
    tiny("tiny-blip")
    tiny("tiny-minilm")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red car\na cat on a bench\n")
    env = _env(models_root, tmp_path)
    common = ["train-ranked", "--base", "tiny-sd", "--prompts", str(prompts), "--k", "3", "--rounds", "1",
              "--top", "1", "--rewards", "caption", "--model", "captioner=tiny-blip", "--model",
              "text_encoder=tiny-minilm", "--steps", "2", "--resolution", "32", "--gen-steps", "2", "--gen-batch",
              "2", "--no-eval", "--device", "cpu"]
    _run(common + ["--out", "one"], 1, env, tmp_path, 29543)
    _run(common + ["--out", "two"], 2, env, tmp_path, 29544)
    runs = tmp_path / "output"
    state = {}
    for name in ("one", "two"):
        found = [p for p in runs.rglob("state.json") if p.parent.name == name]
        assert len(found) == 1, list(runs.rglob("state.json"))
        state[name] = json.loads(found[0].read_text())
    r1, r2 = state["one"]["rounds"][0], state["two"]["rounds"][0]
    assert r1["candidates"] == r2["candidates"] == 6
    assert [(k["prompt_index"], k["candidate"], k["seed"]) for k in r1["kept"]] == \
        [(k["prompt_index"], k["candidate"], k["seed"]) for k in r2["kept"]]
    assert r1["means"] == pytest.approx(r2["means"], abs=1e-6)
    assert (models_root / "loras" / "two.safetensors").is_file()
