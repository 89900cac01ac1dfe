"""Training runs are what they say they are: run folders from the whole output name, recorded settings, a fresh
start for overwrite, one process per run (real second processes), log.csv after a real SIGKILL, failed starts
that leave nothing behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rewardloop import bridge
from rewardloop.trainers import dpg as D
from rewardloop.trainers import lora as L
from rewardloop.trainers import run_folder

TINY = dict(steps=2, lr=1e-3, rank=2, resolution=32, preset="cpu", num_class_images=0, sample_steps=1,
            save_every=0, mode="look_forward")


def refs(n=2, seed=0):
    return [Image.fromarray((np.random.RandomState(seed + i).rand(40, 40, 3) * 255).astype(np.uint8))
            for i in range(n)]


def log_steps(run_dir: Path) -> list[int]:
    return [int(r["step"]) for r in L.read_log(run_dir / "log.csv")]


def lora_tensors(path: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path))


def no_model_load(monkeypatch):
    """Anything that gets past the up-front checks would load the base model: make that fail loudly."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded although the run should have been refused up front")
    monkeypatch.setattr(L, "load_base", refuse)


def sub_env(models_root: Path, out: Path) -> dict:
    return dict(os.environ, REWARDLOOP_MODELS=str(models_root), REWARDLOOP_OUTPUT=str(out), OMP_NUM_THREADS="1",
                REWARDLOOP_DEVICE="cpu", REWARDLOOP_NO_TQDM="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


# ---------------------------------------------------------------- run identity
def test_subfolders_with_the_same_basename_are_two_runs(tiny, out_env, fresh_cache):
    base = tiny("tiny-sd")
    dogs = D.personalize(base, refs(2, seed=0), "sks", "a photo of a dog", out_name="runs_a/dogs/shared", **TINY)
    cats = D.personalize(base, refs(2, seed=10), "sks", "a photo of a cat", out_name="runs_a/cats/shared", **TINY)
    root = bridge.output_dir() / "rewardloop_runs" / "runs_a"
    assert dogs.run_dir == (root / "dogs" / "shared").resolve() and cats.run_dir == (root / "cats" / "shared").resolve()
    # the second run trained its own steps from scratch instead of resuming the first one's finished checkpoint
    assert cats.train.steps_done == 2 and log_steps(cats.run_dir) == [1, 2]
    a, b = lora_tensors(dogs.lora_file), lora_tensors(cats.lora_file)
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    sa, sb = (json.loads((r / "run.json").read_text())["settings"] for r in (dogs.run_dir, cats.run_dir))
    assert sa["data"] != sb["data"] and sa["lora"] == sb["lora"]
    # a name that would put a run inside another run's folder is refused
    with pytest.raises(ValueError, match="inside the run folder"):
        D.personalize(base, refs(1), "sks", "a photo of a dog", out_name="runs_a/dogs/shared/checkpoints", **TINY)


def test_overwrite_after_a_finished_run_trains_the_requested_steps(tiny, out_env, fresh_cache):
    base = tiny("tiny-sd")
    first = D.personalize(base, refs(2), "sks", "a photo of a dog", out_name="runs_b/rex", **TINY)
    old = lora_tensors(first.lora_file)
    args = {**TINY, "steps": 3, "seed": 1}
    again = D.personalize(base, refs(2), "sks", "a photo of a dog", out_name="runs_b/rex", overwrite=True, **args)
    assert again.train.steps_done == 3 and log_steps(again.run_dir) == [1, 2, 3]
    new = lora_tensors(again.lora_file)
    assert any(not torch.equal(old[k], new[k]) for k in old)
    from safetensors import safe_open
    with safe_open(str(again.lora_file), "pt") as f:
        assert f.metadata()["ss_steps"] == "3"
    # the new weights are those of a fresh run with the same settings (nothing carried over from the old run)
    fresh = D.personalize(base, refs(2), "sks", "a photo of a dog", out_name="runs_b/fresh", **args)
    ref = lora_tensors(fresh.lora_file)
    assert all(torch.equal(ref[k], new[k]) for k in ref)


def test_rank_change_is_refused_on_resume(tiny, out_env, fresh_cache, monkeypatch):
    base = tiny("tiny-sd")

    def stop_at_2(info):
        if info["step"] == 2:
            bridge.request_interrupt()

    args = {**TINY, "steps": 4, "save_every": 1}
    with pytest.raises(bridge.Interrupted):
        D.personalize(base, refs(2), "sks", "a photo of a dog", out_name="runs_c/rex", progress=stop_at_2, **args)
    run_dir = D.run_dir_for("runs_c/rex")
    assert L.latest_checkpoint(run_dir).name == "step_0000002"
    with monkeypatch.context() as m:
        no_model_load(m)
        with pytest.raises(run_folder.SettingsMismatchError, match=r"lora\.rank: 2 -> 4.*--overwrite"):
            D.personalize(base, refs(2), "sks", "a photo of a dog", out_name="runs_c/rex", **{**args, "rank": 4})
        with pytest.raises(run_folder.SettingsMismatchError, match="lr: 0.001 -> 0.01"):
            D.personalize(base, refs(2), "sks", "a photo of a dog", out_name="runs_c/rex", **{**args, "lr": 1e-2})
    # the core refuses it too, and a checkpoint without recorded settings still cannot be copied into rank 4
    data = [(im, "a photo of sks dog") for im in refs(2)]
    comps = L.load_base(base, device="cpu")
    tcfg = L.TrainConfig(steps=4, lr=1e-3, resolution=32, save_every=1)
    with pytest.raises(run_folder.SettingsMismatchError, match="rank"):
        L.train_lora(comps, data, D.DPGObjective(D.DPGWeights.for_mode("look_forward")), L.LoraConfig(rank=4),
                     tcfg, run_dir)
    (run_dir / "run.json").unlink()
    with pytest.raises(ValueError, match="does not match this LoRA setup"):
        L.train_lora(L.load_base(base, device="cpu"), data, D.DPGObjective(D.DPGWeights.for_mode("look_forward")),
                     L.LoraConfig(rank=4), tcfg, run_dir)
    # the same settings resume where the run stopped
    res = D.personalize(base, refs(2), "sks", "a photo of a dog", out_name="runs_c/rex", **args)
    assert res.train.steps_done == 4 and log_steps(res.run_dir) == [1, 2, 3, 4]


HOLDER = r"""
import sys, time
from pathlib import Path
from PIL import Image
from rewardloop.trainers import dpg
refs = [Image.open(p).convert("RGB") for p in sorted(Path(sys.argv[2]).glob("*.png"))]
def hold(info):
    if info["step"] == 3:                  # after the checkpoint of step 2, before the next one
        print("holding", flush=True)
        time.sleep(600)
dpg.personalize("tiny-sd", refs, "sks", "a photo of a dog", out_name=sys.argv[1], steps=6, lr=1e-3, rank=2,
                resolution=32, preset="cpu", num_class_images=0, sample_steps=1, save_every=2, progress=hold,
                mode="look_forward")
"""


@pytest.mark.slow
def test_second_process_refused_then_sigkill_leaves_a_clean_log(tiny, models_root, tmp_path, monkeypatch):
    """A real process trains and holds the run; a second run (here, and through the CLI in a third process) is
    refused up front; the holder is SIGKILLed between checkpoints; the next run is not blocked by its stale lock
    and log.csv has every step once."""
    tiny("tiny-sd")
    out = tmp_path / "out"
    monkeypatch.setenv("REWARDLOOP_OUTPUT", str(out))
    refs_dir = tmp_path / "refs"
    refs_dir.mkdir()
    for i, im in enumerate(refs(2)):
        im.save(refs_dir / f"{i}.png")
    env = sub_env(models_root, out)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, "pets/rex", str(refs_dir)], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline()
        assert line.strip() == "holding", holder.stderr.read()[-3000:]
        run_dir = D.run_dir_for("pets/rex")
        assert log_steps(run_dir) == [1, 2, 3] and L.latest_checkpoint(run_dir).name == "step_0000002"
        lock = json.loads((run_dir / "run.lock").read_text())
        assert lock["pid"] == holder.pid
        my_refs = [Image.open(p).convert("RGB") for p in sorted(refs_dir.glob("*.png"))]
        with monkeypatch.context() as m:
            no_model_load(m)
            t0 = time.perf_counter()
            with pytest.raises(run_folder.RunBusyError, match=rf"process {holder.pid} is already training"):
                D.personalize("tiny-sd", my_refs, "sks", "a photo of a dog", out_name="pets/rex",
                              **{**TINY, "steps": 6, "save_every": 2})
            assert time.perf_counter() - t0 < 5
        cli = subprocess.run([sys.executable, "-m", "rewardloop", "train-dpg", "--base", "tiny-sd", "--refs",
                              str(refs_dir), "--trigger", "sks", "--class-prompt", "a photo of a dog", "--out",
                              "pets/rex", "--steps", "6", "--resolution", "32", "--preset", "cpu",
                              "--num-class-images", "0"], env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=240)
        err = [ln for ln in cli.stderr.splitlines() if ln.strip()]
        assert cli.returncode == 1 and len(err) == 1 and err[0].startswith("error: "), cli.stderr[-2000:]
        assert f"process {holder.pid} is already training" in err[0] and "Traceback" not in cli.stderr
        assert log_steps(run_dir) == [1, 2, 3]            # the refused runs wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    assert (run_dir / "run.lock").is_file()               # left behind by the killed process
    res = D.personalize("tiny-sd", my_refs, "sks", "a photo of a dog", out_name="pets/rex",
                        **{**TINY, "steps": 6, "save_every": 2})
    assert res.train.steps_done == 6
    assert log_steps(run_dir) == [1, 2, 3, 4, 5, 6]       # row 3 of the killed run was cut, not repeated
    assert not (run_dir / "run.lock").exists()
    assert not [p for p in run_dir.rglob(".*") if p.name != "run.lock"]   # no temporaries left


LOCK_HOLDER = r"""
import sys, time
from rewardloop.trainers.run_folder import claim
with claim(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(600)
"""


def test_lock_is_held_across_processes_and_released_by_death(tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run)], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ))
    try:
        assert p.stdout.readline().strip() == "holding"
        with pytest.raises(run_folder.RunBusyError, match=f"process {p.pid} is already training into"):
            with run_folder.claim(run):
                pass
    finally:
        p.kill()
        p.wait(timeout=30)
    with run_folder.claim(run):                      # the dead holder's lock file does not block
        with run_folder.claim(run):                  # re-entrant within a process
            assert json.loads((run / "run.lock").read_text())["pid"] == os.getpid()
    assert run.is_dir() and not (run / "run.lock").exists()


def test_failed_start_leaves_nothing_behind(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    with pytest.raises(RuntimeError, match="boom"):
        with run_folder.claim(root / "a" / "b" / "c"):
            (root / "a" / "b" / "c" / "log.csv").write_text("x")
            raise RuntimeError("boom")
    assert list(root.iterdir()) == []                # sub-folders created for the name are gone too
    existing = root / "kept"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        with run_folder.claim(existing):
            (existing / "run.json").write_text("{}")
            raise RuntimeError("boom")
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]
    with pytest.raises(RuntimeError):                # once training started, what it made is kept
        with run_folder.claim(existing) as c:
            (existing / "log.csv").write_text("step\n1\n")
            c.started()
            raise RuntimeError("diverged")
    assert (existing / "log.csv").is_file()


def test_dpg_bad_settings_fail_before_loading_and_leave_nothing(tiny, out_env, monkeypatch):
    base = tiny("tiny-sd")
    no_model_load(monkeypatch)
    bad = [({"steps": -2}, "steps must be >= 1"), ({"lr": float("nan")}, "learning rate"),
           ({"rank": -1}, "rank must be >= 1"), ({"resolution": 30}, "multiple of 8"),
           ({"seed": -1}, "seed must be >= 0"), ({"save_every": -1}, "save_every"),
           ({"dino_model": "no-such-dino", "mode": "dino"}, "no-such-dino")]
    for over, match in bad:
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            D.personalize(base, refs(1), "sks", "a photo of a dog", out_name="runs_d/x", **{**TINY, **over})
    with pytest.raises(FileNotFoundError, match="not found"):
        D.personalize("no-such-base.safetensors", refs(1), "sks", "a photo of a dog", out_name="runs_d/x", **TINY)
    assert not (bridge.output_dir() / "rewardloop_runs" / "runs_d").exists()


def test_train_ranked_bad_input_fails_fast_and_leaves_nothing(tiny, models_root, tmp_path, monkeypatch, capsys):
    """`train-ranked --steps -2` used to fail after generating and scoring, leaving a run that could be neither
    rerun nor resumed: now one line before any model loads, and no run folder."""
    from rewardloop.cli import main
    from rewardloop.rewards import scoring
    monkeypatch.setenv("REWARDLOOP_OUTPUT", str(tmp_path / "out"))
    built = []
    import types
    fake = types.ModuleType("rl_fake_trainhard_rewards")

    def make(models=None, **options):
        built.append(1)
        from rewardloop.rewards.scoring import FunctionScorer
        from rewardloop.rewards.types import RewardScores
        return FunctionScorer(["bright"], lambda ims, ps: [RewardScores("bright", [float(np.asarray(i).mean())
                                                                                    for i in ims], True, (0, 255))])
    fake.make = make
    monkeypatch.setitem(sys.modules, "rl_fake_trainhard_rewards", fake)
    monkeypatch.setattr(scoring, "SCORER_FACTORIES", {"bright": "rl_fake_trainhard_rewards:make"})
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    key = tiny("tiny-sd")
    argv = ["train-ranked", "--base", key, "--prompts", str(prompts), "--k", "2", "--rounds", "1", "--rewards",
            "bright", "--out", "ranked_bad", "--resolution", "32", "--gen-steps", "1", "--no-eval", "--device", "cpu"]
    cases = [(["--steps", "-2"], "steps must be >= 1"), (["--lr", "0"], "learning rate"),
             (["--rank", "0"], "rank must be >= 1"), (["--resolution", "30"], "multiple of 8"),
             (["--rewards", "bright,nosuch"], "Unknown reward"), (["--base", "nope.safetensors"], "not found"),
             (["--out", "x" * 250], "too long")]
    for extra, match in cases:
        t0 = time.perf_counter()
        assert main(argv + extra) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
        assert time.perf_counter() - t0 < 10
    assert built == [] and not (tmp_path / "out" / "rewardloop_ranked").exists()
    # a good start after all that, then --overwrite starts afresh (other steps are fine then)
    assert main(argv + ["--steps", "1"]) == 0
    run = tmp_path / "out" / "rewardloop_ranked" / "ranked_bad"
    first = (run / "round_000" / "adapter.safetensors").read_bytes()
    assert main(argv + ["--steps", "2"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--steps", "2", "--overwrite"]) == 0
    state = json.loads((run / "state.json").read_text())
    assert state["settings"]["train"]["steps"] == 2 and state["rounds"][0]["phase"] == "done"
    assert (run / "round_000" / "adapter.safetensors").read_bytes() != first
    assert L.read_log(run / "round_000" / "train" / "log.csv")[-1]["step"] == "2"


def test_ranked_overwrite_starts_afresh_and_rank_change_is_refused(tiny, tmp_path):
    from rewardloop.rewards.scoring import FunctionScorer
    from rewardloop.rewards.types import RewardScores
    from rewardloop.trainers import ranked

    calls = []

    def bright(ims, ps):
        calls.append(len(ims))
        return [RewardScores("bright", [float(np.asarray(i).mean()) for i in ims], True, (0, 255))]

    key = tiny("tiny-sd")
    cfg = ranked.RankedConfig(k=2, rounds=1, gen_steps=1, eval_final=False)
    lcfg, tcfg = L.LoraConfig(rank=2), L.TrainConfig(steps=1, lr=1e-3, resolution=32)
    run = tmp_path / "run"
    ranked.train_ranked(key, ["a cat"], [FunctionScorer(["bright"], bright)], run, cfg, lcfg, tcfg)
    assert calls == [2]
    ranked.train_ranked(key, ["a cat"], [FunctionScorer(["bright"], bright)], run, cfg, lcfg, tcfg)
    assert calls == [2]                               # finished: resumed, nothing redone
    ranked.train_ranked(key, ["a cat"], [FunctionScorer(["bright"], bright)], run, cfg, lcfg, tcfg, overwrite=True)
    assert calls == [2, 2]                            # overwrite: generated, scored and trained again
    with pytest.raises(ValueError, match=r"other settings \(lora\.rank: 2 -> 4\)"):
        ranked.train_ranked(key, ["a cat"], [FunctionScorer(["bright"], bright)], run, cfg,
                            L.LoraConfig(rank=4), tcfg)
