"""In-graph DPG back-end (trainers/comfy_graph.py).

* cheap checks without ComfyUI: bad input gets one clear line before any model work; VRAM presets map to the
  in-graph switches;
* ``realhost``: the trainer's own look-forward step on a real ComfyUI model (tests/comfyui_graph_checks.py, run with
  ComfyUI's Python) for ε, v and flow sampling: x_t, x̂0, the prediction-space MSE and γ's timestep equal the
  formulas computed here by hand from the diffusion model's raw output.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from rewardloop.trainers import comfy_graph as G
from rewardloop.trainers.dpg_objective import x0_from_eps

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kw, msg", [
    (dict(references=None), "No reference images"),
    (dict(trigger="two words"), "must be one word"),
    (dict(class_prompt=" "), "class prompt is empty"),
    (dict(instance_prompt="a photo of a dog"), "must contain the trigger"),
    (dict(resolution=100), "multiple of 64"),
    (dict(out_name="../escape"), "would leave"),
])
def test_bad_input_fails_with_one_line_before_any_model_work(kw, msg, out_env, monkeypatch):
    monkeypatch.setenv("REWARDLOOP_MODELS", str(out_env / "models"))
    args = dict(references=torch.rand(1, 8, 8, 3), trigger="sks", class_prompt="a photo of a dog",
                instance_prompt="", resolution=64, out_name="dpg/x", overwrite=False)
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        G.check_inputs(**args)


def test_existing_lora_is_not_overwritten_unless_asked(out_env, monkeypatch):
    monkeypatch.setenv("REWARDLOOP_MODELS", str(out_env / "models"))
    f = out_env / "models" / "loras" / "dpg" / "x.safetensors"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"old")
    args = (torch.rand(1, 8, 8, 3), "sks", "a photo of a dog", "", 64, "dpg/x")
    with pytest.raises(Exception, match="already exists"):
        G.check_inputs(*args, False)
    trigger, prompt, target = G.check_inputs(*args, True)
    assert (trigger, prompt, target.name) == ("sks", "a photo of sks dog", "x.safetensors")


def test_presets_map_to_in_graph_switches():
    cpu = G.config_from_preset("auto", torch.device("cpu"), steps=7)
    assert (cpu.training_dtype, cpu.offload, cpu.steps, cpu.rank) == ("fp32", False, 7, 4)
    low = G.config_from_preset("8GB", torch.device("cpu"))  # fp16 on the CPU falls back to fp32
    assert low.training_dtype == "fp32" and low.offload and low.gradient_checkpointing
    big = G.config_from_preset("24GB", torch.device("cpu"), rank=32)
    assert big.rank == 32 and big.train_text_encoder and big.batch_size == 2 and not big.offload
    with pytest.raises(ValueError, match="targets"):
        G.GraphTrainConfig(targets="everything").validate()


def test_in_graph_node_takes_reward_sockets_after_its_old_inputs(monkeypatch, out_env):
    """Saved workflows keep their widget positions; connected scorers become one RewardCriticConfig (checked
    before any model work) handed to the trainer."""
    import rewardloop
    from _fake_rewards import make_scorer
    node_cls = rewardloop.NODE_CLASS_MAPPINGS["RewardLoopPersonalizeInGraphDPG"]
    opt = list(node_cls.INPUT_TYPES()["optional"])
    i = opt.index("sample_steps") + 1
    assert opt[i:] == ["reward", "reward_weight", "reward_2", "reward_2_weight", "dino_reward_weight",
                       "critic_update_every", "critic_target"]
    got = {}

    def fake(*a, **k):
        got.update(k)
        raise RuntimeError("stop before training")
    monkeypatch.setattr(G, "personalize_in_graph", fake)
    monkeypatch.setenv("REWARDLOOP_MODELS", str(out_env / "models"))
    args = (None, None, None, torch.rand(1, 64, 64, 3), "sks", "a photo of a dog", 2, 1e-4, 4, "look_forward", 64, 0,
            "dpg/x", False, "cpu")
    with pytest.raises(RuntimeError, match="stop before training"):
        node_cls().train(*args, reward=make_scorer(), reward_weight=0.5, dino_reward_weight=1.0,
                         critic_update_every=3, critic_target="td")
    rc = got["reward"]
    assert [(s.label, s.weight) for s in rc.rewards] == [("brightness", 0.5), ("dino", 1.0)]
    assert (rc.every, rc.target) == (3, "td")
    got.clear()
    with pytest.raises(RuntimeError, match="stop before training"):
        node_cls().train(*args)
    assert got["reward"] is None                       # nothing connected: no reward critic
    with pytest.raises(ValueError, match="critic target"):
        node_cls().train(*args, reward=make_scorer(), critic_target="mc")


# ---------------------------------------------------------------------------------------------- real ComfyUI
def _run_checks(tmp: Path, *extra: str) -> dict:
    """tests/comfyui_graph_checks.py with ComfyUI's Python on tiny-sd15-single; its JSON.

    Callers request the session ``comfy`` fixture first: it installs the pack into ComfyUI's Python the
    ComfyUI-Manager way (install.py), which is what puts the pack's requirements (opencv, matplotlib, …) there."""
    comfy = os.environ.get("COMFYUI_PATH")
    if not comfy:
        pytest.skip("COMFYUI_PATH is not set: run `bash .ci/run` or set COMFYUI_PATH and COMFYUI_PYTHON")
    from rewardloop.weights import tiny
    ckpt = tiny.build("tiny-sd15-single", tmp / "models")
    link = tmp / "path"
    link.mkdir(exist_ok=True)
    if not (link / "rewardloop").exists():
        (link / "rewardloop").symlink_to(ROOT, target_is_directory=True)
    out = tmp / f"checks{'_'.join(extra)}.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(link), HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1", REWARDLOOP_NO_TQDM="1")
    py = os.environ.get("COMFYUI_PYTHON", "python3")
    r = subprocess.run([py, str(ROOT / "tests" / "comfyui_graph_checks.py"), comfy, str(ckpt), str(out), *extra],
                       capture_output=True, text=True, timeout=1200, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def graph_checks(tmp_path_factory, comfy):
    res = _run_checks(tmp_path_factory.mktemp("graph_checks"))
    return {k: {kk: (np.asarray(vv, dtype=np.float64) if isinstance(vv, list) else vv) for kk, vv in v.items()}
            for k, v in res.items()}


@pytest.fixture(scope="module")
def resume_checks(tmp_path_factory, comfy):
    return _run_checks(tmp_path_factory.mktemp("resume_checks"), "resume")


@pytest.mark.realhost
@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_lora_and_leaves_the_model_untouched(resume_checks):
    r = resume_checks
    assert r["interrupted"] and r["checkpoints"] == ["ingraph_step_0000002.pt"], r["checkpoints"]
    assert r["resumed_steps"] == 3 and len(r["losses_resumed"]) == 3
    assert r["losses_resumed"] == pytest.approx(r["losses_straight"], rel=1e-5)
    assert r["lora_keys"] > 0 and r["lora_max_diff"] < 1e-5   # critics, reward cache, optimizer and RNG restored too
    assert r["model_max_change"] == 0.0                        # the graph's MODEL weights are exactly as loaded


@pytest.mark.realhost
@pytest.mark.slow
def test_a_reward_through_the_critic_trains_in_graph(resume_checks):
    """A deterministic brightness scorer through the reward critic (td target) on the real ComfyUI model: scored
    every step (cost logged), the critic regressed, the actor term on, and the LoRA differs from the same run
    without the reward."""
    r = resume_checks
    log = r["log"]
    assert len(log) == 3
    for row in log:
        assert 0.0 <= float(row["reward_brightness"]) <= 1.0 and float(row["reward_s"]) > 0, row
        assert float(row["critic_s"]) > 0 and np.isfinite(float(row["reward_critic_loss"])), row
    # one cached sample z-scores to 0, which the critic's zero-initialised head already predicts: the regression
    # has something to learn from the second sample on, and the actor term moves the LoRA from the third step
    assert float(log[0]["reward_critic_loss"]) == 0.0 and all(float(x["reward_critic_loss"]) > 0 for x in log[1:])
    assert float(log[0]["reward_q"]) == 0.0 and float(log[-1]["reward_q"]) != 0.0
    assert r["reward_vs_plain_max_diff"] > 1e-6


def _col(a):
    return a.reshape(-1, *([1] * 3))


@pytest.mark.realhost
@pytest.mark.slow
def test_look_forward_x0_is_calculate_denoised_for_eps(graph_checks):
    c = graph_checks["eps"]
    s = _col(c["sigma"])
    assert c["type"].startswith("ModelSampling") and np.allclose(c["x_t"], c["x0"] + s * c["noise"], atol=1e-5)
    x0_hand = c["x_t"] - s * c["raw"]                                    # ε: x̂0 = x_t − σ·ε̂
    assert np.allclose(c["x0_hat"], x0_hand, atol=1e-4)
    # the file-based back-end's formula gives the same x̂0: ᾱ = 1/(1+σ²), x_t(DDPM) = sqrt(ᾱ)·x_t(ComfyUI)
    ab = 1 / (1 + c["sigma"] ** 2)
    fb = x0_from_eps(torch.tensor(c["x_t"] * np.sqrt(_col(ab))), torch.tensor(c["raw"]), torch.tensor(ab))
    assert np.allclose(fb.numpy(), c["x0_hat"], atol=1e-4)
    assert np.allclose(c["native"], ((c["raw"] - c["noise"]) ** 2).reshape(2, -1).mean(1), rtol=1e-4)
    assert np.allclose(c["t"], c["index"])                                # γ^t: t is the DDPM index itself


@pytest.mark.realhost
@pytest.mark.slow
def test_look_forward_x0_is_calculate_denoised_for_v(graph_checks):
    c = graph_checks["v"]
    s, sd = _col(c["sigma"]), c["sigma_data"]
    x0_hand = c["x_t"] * sd ** 2 / (s ** 2 + sd ** 2) - c["raw"] * s * sd / np.sqrt(s ** 2 + sd ** 2)
    assert np.allclose(c["x0_hat"], x0_hand, atol=1e-4)
    target = (c["x_t"] * sd ** 2 / (s ** 2 + sd ** 2) - c["x0"]) * np.sqrt(s ** 2 + sd ** 2) / (s * sd)
    assert np.allclose(c["native"], ((c["raw"] - target) ** 2).reshape(2, -1).mean(1), rtol=1e-3)
    assert np.allclose(c["t"], c["index"])


@pytest.mark.realhost
@pytest.mark.slow
def test_look_forward_x0_is_calculate_denoised_for_flow(graph_checks):
    c = graph_checks["flow"]
    s = _col(c["sigma"])
    assert c["sigma_max"] == pytest.approx(1.0)
    assert np.allclose(c["x_t"], s * c["noise"] + (1 - s) * c["x0"], atol=1e-5)  # rectified flow noising
    assert np.allclose(c["x0_hat"], c["x_t"] - s * c["raw"], atol=1e-4)           # x̂0 = x_t − σ·v̂
    target = c["noise"] - c["x0"]                                                  # the velocity
    assert np.allclose(c["native"], ((c["raw"] - target) ** 2).reshape(2, -1).mean(1), rtol=1e-3)
    t_hand = 999 * (c["sigma"] - c["sigma_min"]) / (1 - c["sigma_min"])          # shifted σ on 0..999
    assert np.allclose(c["t"], t_hand, atol=1e-3)
    assert not np.allclose(c["t"], c["index"], atol=1)  # shift 3: not the table index


@pytest.mark.realhost
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["eps", "v", "flow"])
def test_td_chain_step_follows_the_models_own_schedule(graph_checks, kind):
    """The td target's next state (comfy_graph.chain_step) from the true x0: ε̂ is the noise that made x_t (ε, v
    and flow noising alike), t' = t − 150 with −1 where the chain ends, and σ' is σ of that timestep — for the
    discrete models the table's σ at index − 150; sigma_at inverts paper_timestep for every type (for flow too,
    where ComfyUI's own ``sigma(timestep)`` would apply the shift a second time)."""
    c = graph_checks[kind]
    assert np.allclose(c["chain_eps"], c["noise"], atol=1e-4)
    assert np.allclose(c["sigma_roundtrip"], c["sigma"], rtol=1e-4)
    want_t = c["t"] - 150
    assert np.allclose(c["chain_t"], np.where(want_t >= 0, want_t, -1), atol=1e-3)
    live = want_t >= 0
    assert live.tolist() == ([False, True] if kind != "flow" else [c["t"][0] >= 150, True])
    if kind != "flow":
        assert np.allclose(c["chain_sigma"][live], c["table_sigma_minus_150"][live], rtol=1e-4)
    else:   # flow (shift 3): σ' is the σ whose timestep sits 150/999 of the way lower, t = 999·(σ−σmin)/(1−σmin)
        s_hand = c["sigma_min"] + (want_t[live] / 999) * (1 - c["sigma_min"])
        assert np.allclose(c["chain_sigma"][live], s_hand, rtol=1e-4)
