"""DPG with rewards through the learned critic, and the paper's full fine-tuning preset, on tiny-sd.

The reward is a fake deterministic scorer with a known optimum (tests/_fake_rewards.py: brightness of the
top-left quadrant), registered only here.
"""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

import _fake_rewards as FR
from rewardloop import bridge
from rewardloop.trainers import dpg as D
from rewardloop.trainers import lora as L
from rewardloop.trainers import reward_critic as RC

PROMPT = "a photo of sks dog"


def refs(n=2, size=16):
    return [Image.fromarray((np.random.RandomState(i).rand(size, size, 3) * 255).astype(np.uint8)) for i in range(n)]


@pytest.fixture
def fake_registry(monkeypatch):
    """``brightness`` in the scorer registry for this test only."""
    from rewardloop.rewards import scoring
    monkeypatch.setitem(scoring.SCORER_FACTORIES, "brightness", "_fake_rewards:make_scorer")


def fifths(vals):
    n = len(vals) // 5
    return [float(np.mean(vals[i * n:(i + 1) * n])) for i in range(5)]


# ---------------------------------------------------------------- the optimisation test
@pytest.mark.slow
def test_reward_critic_raises_a_reward_the_no_reward_run_does_not(tiny, tmp_path):
    """250 steps at 16 px, same seed: DreamBooth alone vs DreamBooth + the brightness reward through the critic.

    The critic's loss falls, the reward of the scored x̂0 rises over the run, and images sampled from the trained
    LoRA are brighter where the reward looks than those of the no-reward run."""
    data = [(im, PROMPT) for im in refs(2)]
    steps = 250

    def run(with_reward):
        comps = L.load_base(tiny("tiny-sd"), device="cpu")
        cfg = RC.RewardCriticConfig(rewards=[RC.RewardSpec("brightness", 5.0, scorer=FR.make_scorer())],
                                    iters=2, minibatch=16) if with_reward else None
        obj = D.DPGObjective(D.DPGWeights.for_mode("dreambooth"), reward=cfg)
        res = L.train_lora(comps, data, obj, L.LoraConfig(rank=4),
                           L.TrainConfig(steps=steps, lr=3e-3, resolution=16, save_every=0, seed=0, batch_size=2),
                           tmp_path / str(with_reward))
        images = L.generate(comps, [PROMPT] * 4, [0, 1, 2, 3], steps=10, width=16, height=16)
        return float(np.mean(FR.brightness(images))), L.read_log(res.log_csv), obj

    plain, _, _ = run(False)
    rewarded, rows, obj = run(True)
    assert len(rows) == steps and obj.reward.rounds == steps
    critic_loss = fifths([float(r["reward_critic_loss"]) for r in rows])
    reward = fifths([float(r["reward_brightness"]) for r in rows])
    print(f"\ncritic loss by fifth {[round(v, 3) for v in critic_loss]}; scored x̂0 reward by fifth "
          f"{[round(v, 3) for v in reward]}; samples: reward run {rewarded:.3f}, no-reward run {plain:.3f}")
    assert critic_loss[-1] < 0.5 * critic_loss[0], critic_loss
    assert reward[-1] > reward[0] + 0.015 and reward[-1] > reward[2], reward
    assert rewarded > plain + 0.02, (rewarded, plain)
    # the costs are logged separately, every row
    assert all(float(r["reward_s"]) > 0 and float(r["critic_s"]) > 0 for r in rows)
    assert float(rows[0]["reward_q"]) == 0.0 and float(rows[-1]["reward_q"]) != 0.0   # actor on after warm-up


# ---------------------------------------------------------------- resume
def test_reward_critic_run_resumes_bit_identically(tiny, tmp_path, interrupted_then_resumed):
    """Interrupted at step 3 and resumed == uninterrupted: LoRA, critic, its optimizer, the reward cache (td
    target with next states, DINO through the critic next to a scorer), the log."""
    tiny("tiny-dino")
    data = [(im, PROMPT) for im in refs(2)]
    tcfg = L.TrainConfig(steps=5, lr=1e-3, resolution=16, save_every=1, seed=4, batch_size=2)

    def run(d, progress=None):
        cfg = RC.RewardCriticConfig(rewards=[RC.RewardSpec("brightness", 1.0, scorer=FR.make_scorer()),
                                             RC.RewardSpec("dino", 0.5)],
                                    every=2, target="td", td_hop=300, warmup=1, minibatch=4)
        obj = D.DPGObjective(D.DPGWeights.for_mode("dreambooth"), dino_model="tiny-dino", reward=cfg)
        res = L.train_lora(L.load_base(tiny("tiny-sd"), device="cpu"), data, obj, L.LoraConfig(rank=2), tcfg, d,
                           progress=progress)
        return res, obj

    full, obj_full = run(tmp_path / "a")
    res, obj = interrupted_then_resumed(lambda progress: run(tmp_path / "b", progress), at=3)
    assert res.steps_done == 5
    for k in full.state:
        assert torch.equal(full.state[k], res.state[k]), k
    a, b = obj_full.reward.state_dict(), obj.reward.state_dict()
    for k, v in a["critic"].items():
        assert torch.equal(v, b["critic"][k]), k
    for k, v in a["cache"]["data"].items():
        assert torch.equal(v, b["cache"]["data"][k]), k
    assert a["cache"]["size"] == b["cache"]["size"] == 6      # steps 0, 2, 4 scored, 2 samples each
    assert torch.equal(a["generator"], b["generator"]) and a["updates"] == b["updates"] == 3
    assert (a["cache"]["data"]["next_t"][:6] >= -1).all() and (a["cache"]["data"]["next_t"][:6] < 700).all()
    with open(full.log_csv) as f1, open(res.log_csv) as f2:
        r1, r2 = list(csv.DictReader(f1)), list(csv.DictReader(f2))
    skip = {"reward_s", "critic_s"}   # wall-clock costs
    assert [{k: v for k, v in r.items() if k not in skip} for r in r1] == \
        [{k: v for k, v in r.items() if k not in skip} for r in r2]
    assert {"reward_brightness", "reward_dino", "reward_critic_loss", "reward_q"} <= set(r1[0])


# ---------------------------------------------------------------- CLI and node
def test_cli_refuses_an_unknown_reward_before_loading_anything(capsys, out_env, tmp_path):
    from rewardloop.cli import main
    (tmp_path / "refs").mkdir()
    refs(1)[0].save(tmp_path / "refs" / "a.png")
    rc = main(["train-dpg", "--base", "no-such-base", "--refs", str(tmp_path / "refs"), "--trigger", "sks",
               "--class-prompt", "a photo of a dog", "--reward", "pickscore-typo:0.5"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.count("\n") == 0
    assert "Unknown reward 'pickscore-typo'" in err and "dino" in err    # about the reward, not the missing base
    rc = main(["train-dpg", "--base", "no-such-base", "--refs", str(tmp_path / "refs"), "--trigger", "sks",
               "--class-prompt", "a photo of a dog", "--critic-target", "td"])
    assert rc == 1 and "need --reward" in capsys.readouterr().err


def test_cli_trains_with_a_registered_reward(tiny, fake_registry, out_env, tmp_path, capsys):
    from safetensors import safe_open

    from rewardloop.cli import main
    base = tiny("tiny-sd")
    (tmp_path / "refs").mkdir()
    for i, im in enumerate(refs(2)):
        im.save(tmp_path / "refs" / f"{i}.png")
    rc = main(["train-dpg", "--base", base, "--refs", str(tmp_path / "refs"), "--trigger", "sks", "--class-prompt",
               "a photo of a dog", "--out", "cli_reward", "--steps", "4", "--resolution", "16", "--preset", "cpu",
               "--num-class-images", "0", "--sample-steps", "1", "--mode", "look_forward", "--reward",
               "brightness:2", "--critic-every", "2", "--run-dir", str(tmp_path / "run")])
    assert rc == 0, capsys.readouterr().err
    rows = L.read_log(tmp_path / "run" / "log.csv")
    assert [float(r["reward_s"]) > 0 for r in rows] == [True, False, True, False]     # every 2nd step scored
    with safe_open(str(bridge.loras_dir() / "cli_reward.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["objective"] == "dpg:look_forward+reward(brightness)"
    assert '"brightness": 2.0' in meta["rewards"]


def test_node_takes_scorer_sockets_appended_after_the_old_inputs(tiny, out_env, fresh_cache):
    import rewardloop
    tiny("tiny-sd")
    node_cls = rewardloop.NODE_CLASS_MAPPINGS["RewardLoopPersonalizeDPG"]
    opt = list(node_cls.INPUT_TYPES()["optional"])
    old = ["instance_prompt", "crop", "num_class_images", "dreambooth_weight", "prior_weight", "look_forward_weight",
           "critic_weight", "dino_weight", "gamma", "dino_model", "resume", "sample_steps"]
    assert opt[:len(old)] == old                       # saved workflows keep their widget positions
    assert opt[len(old):] == ["reward", "reward_weight", "reward_2", "reward_2_weight", "dino_reward_weight",
                              "critic_update_every", "critic_target"]
    assert node_cls.INPUT_TYPES()["optional"]["reward"][0] == "REWARDLOOP_SCORER"
    imgs = torch.rand(2, 20, 20, 3)
    with torch.inference_mode():
        out = node_cls().train("tiny-sd", imgs, "sks", "a photo of a dog", steps=2, lr=1e-3, rank=2,
                               loss_mode="dreambooth", resolution=16, seed=0, output_name="node_reward",
                               overwrite=False, preset="cpu", num_class_images=0, sample_steps=1,
                               reward=FR.make_scorer(), reward_weight=0.5, reward_2=FR.make_scorer(name="dark", higher_is_better=False),
                               critic_update_every=1)
    assert out["result"][0] == "node_reward.safetensors"
    assert out["ui"]["text"][0].startswith("node_reward.safetensors (2 steps); rewards (last scored): brightness ")
    assert "dark -" in out["ui"]["text"][0] and "; critic loss " in out["ui"]["text"][0]
    rows = L.read_log(bridge.output_dir() / "rewardloop_runs" / "node_reward" / "log.csv")
    assert {"reward_brightness", "reward_dark"} <= set(rows[0])
    # "dark" reports 1 − brightness, lower is better: oriented (higher is better) it is brightness − 1
    assert float(rows[0]["reward_brightness"]) - float(rows[0]["reward_dark"]) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="critic target"):
        node_cls().train("tiny-sd", imgs, "sks", "a photo of a dog", 2, 1e-3, 2, "dreambooth", 16, 0, "x", False,
                         "cpu", reward=FR.make_scorer(), critic_target="mc")


# ---------------------------------------------------------------- the paper's recipe: full fine-tuning
def test_paper_preset_fine_tunes_every_weight_and_exports_a_checkpoint(tiny, out_env):
    base = tiny("tiny-sd")
    p = D.PRESETS["paper"]
    assert (p.full, p.lr, p.steps, p.train_text_encoder, p.mixed_precision, p.weights_dtype) == \
        (True, 1e-6, 1000, True, "no", "fp32")
    with pytest.raises(ValueError, match=r"learning rate <= 1e-05 \(the paper's is 1e-6\)"):
        D.personalize(base, refs(1), "sks", "a photo of a dog", out_name="x", preset="paper", lr=1e-4)
    before = L.load_base(base, device="cpu")
    res = D.personalize(base, refs(2), "sks", "a photo of a dog", out_name="paper/rex", preset="paper", steps=2,
                        lr=1e-4 / 20, resolution=16, num_class_images=1, sample_steps=1, save_every=0)
    ckpt = bridge.model_output_dir("checkpoints") / "paper" / "rex.safetensors"
    assert res.lora_file == ckpt.resolve() and res.lora_name == "paper/rex.safetensors"
    assert not (bridge.loras_dir() / "paper" / "rex.safetensors").exists()
    after = L.load_base(str(ckpt), device="cpu", config=str(before.source))   # original-layout single file
    for name, a, b in (("unet", before.unet, after.unet), ("text_encoder", before.text_encoder, after.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        changed = [k for k in sa if not torch.equal(sa[k].half().float(), sb[k].float())]
        assert len(changed) > 0.5 * len(sa), (name, len(changed), len(sa))   # most moved by 2 steps even in fp16
    va, vb = before.vae.state_dict(), after.vae.state_dict()
    assert all(torch.equal(va[k].half().float(), vb[k].float()) for k in va)   # the VAE stays frozen
    from safetensors import safe_open
    with safe_open(str(ckpt), "pt") as f:
        assert f.metadata()["objective"] == "dpg:look_forward" and f.metadata()["preset"] == "paper"


def test_full_fine_tuning_resumes_exactly(tiny, tmp_path, interrupted_then_resumed):
    data = [(im, PROMPT) for im in refs(2)]
    tcfg = L.TrainConfig(steps=3, lr=1e-4, resolution=16, save_every=1, seed=1)

    def run(d, progress=None):
        comps = L.load_base(tiny("tiny-sd"), device="cpu")
        L.train_lora(comps, data, D.DPGObjective(D.DPGWeights.for_mode("look_forward")),
                     L.LoraConfig(full=True, train_text_encoder=True), tcfg, d, progress=progress)
        return comps

    full = run(tmp_path / "a")
    resumed = interrupted_then_resumed(lambda progress: run(tmp_path / "b", progress), at=2)
    for a, b in ((full.unet, resumed.unet), (full.text_encoder, resumed.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_paper_preset_refuses_non_sd1_bases_before_loading(tmp_path):
    from rewardloop.trainers import full_finetune as FF
    folder = tmp_path / "xl"
    (folder / "text_encoder_2").mkdir(parents=True)
    (folder / "unet").mkdir()
    with pytest.raises(ValueError, match="SDXL: use a LoRA preset"):
        FF.check_base_family(str(folder))
    assert math.isclose(FF.BYTES_PER_PARAM * (859.5e6 + 123.1e6) / 1e9, 15.7, abs_tol=0.05)


COMFY_LOAD_SCRIPT = r"""
import json, logging, sys
sys.path.insert(0, sys.argv[1])
from comfy.cli_args import args
args.cpu = True
import torch
from safetensors.torch import load_file
import comfy.sd
lines = []
class Grab(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger().addHandler(Grab())
logging.getLogger().setLevel(logging.INFO)
model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(sys.argv[2], output_vae=True, output_clip=True)
sd = load_file(sys.argv[2])
parts = {"model.diffusion_model.": model.model.diffusion_model.state_dict(),
         "first_stage_model.": vae.first_stage_model.state_dict(),
         "cond_stage_model.transformer.": {k[len("clip_l.transformer."):]: v
                                           for k, v in clip.cond_stage_model.state_dict().items()
                                           if k.startswith("clip_l.transformer.")}}
out = {"config": type(model.model.model_config).__name__, "checked": {}, "mismatch": {}, "absent": {}}
for prefix, loaded in parts.items():
    keys = [k for k in sd if k.startswith(prefix)]
    absent = [k for k in keys if k[len(prefix):] not in loaded]
    bad = [k for k in keys if k[len(prefix):] in loaded and not torch.equal(
        loaded[k[len(prefix):]].float(), sd[k].float().reshape(loaded[k[len(prefix):]].shape))]
    out["checked"][prefix], out["mismatch"][prefix], out["absent"][prefix] = len(keys), bad[:3], absent[:3]
out["warnings"] = [ln for ln in lines if "left over" in ln or "missing" in ln.lower()]
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.realhost
def test_paper_checkpoint_loads_in_the_real_comfyui(tiny, out_env):
    """The paper preset on the SD1.5-format tiny checkpoint: ComfyUI's own loader detects SD15 and holds exactly the
    fine-tuned UNet, text encoder and VAE weights of the exported file (which differ from the base's)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    from rewardloop.weights.registry import resolve
    comfy_dir = Path(os.environ.get("COMFYUI_PATH", "/nonexistent"))
    if not (comfy_dir / "comfy" / "sd.py").is_file():
        pytest.skip("no ComfyUI checkout: set COMFYUI_PATH / COMFYUI_PYTHON (bash .ci/run does)")
    base = tiny("tiny-sd15-single")
    res = D.personalize(base, refs(2, 64), "sks", "a photo of a dog", out_name="paper_sd15", preset="paper",
                        steps=1, lr=1e-5, resolution=64, num_class_images=0, sample_steps=1, save_every=0,
                        sample_prompts=())
    py = os.environ.get("COMFYUI_PYTHON", sys.executable)
    proc = subprocess.run([py, "-c", COMFY_LOAD_SCRIPT, str(comfy_dir), str(res.lora_file)], capture_output=True,
                          text=True, timeout=600, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["config"] == "SD15", got
    for prefix in ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."):
        assert got["checked"][prefix] > 10 and not got["mismatch"][prefix] and not got["absent"][prefix], got
    assert not got["warnings"], got["warnings"]
    before, after = load_file(str(resolve(base).path)), load_file(str(res.lora_file))
    moved = [k for k in before if k.startswith(("model.diffusion_model.", "cond_stage_model."))
             and not torch.equal(before[k].half(), after[k])]
    assert len(moved) > 100            # ComfyUI loaded the fine-tuned weights, not the base's
