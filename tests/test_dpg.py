"""DPG objective: formulas against hand-computed values, every loss mode on tiny-sd, resume, node and bad inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from rewardloop import bridge
from rewardloop.fileio import OutputExistsError, UnsafeNameError
from rewardloop.trainers import dpg as D
from rewardloop.trainers import lora as L




def refs(n=2, size=(40, 48)):
    return [Image.fromarray((np.random.RandomState(i).rand(size[1], size[0], 3) * 255).astype(np.uint8))
            for i in range(n)]


def sd_alphas():
    from diffusers import DDPMScheduler
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod


# ---------------------------------------------------------------- formulas
def test_discount_and_effective_weight_match_the_paper_table():
    t = torch.tensor([0, 100, 250, 500, 750, 900, 999])
    # γ^t with γ = 0.9986, by hand: exp(t·ln 0.9986)
    hand = [math.exp(int(x) * math.log(0.9986)) for x in t]
    assert torch.allclose(D.discount(t), torch.tensor(hand), rtol=1e-6)
    assert [round(float(v), 3) for v in D.discount(t)] == [1.0, 0.869, 0.705, 0.496, 0.35, 0.283, 0.247]
    assert torch.equal(D.discount(t, 1.0), torch.ones(7))
    # w(t) = γ^t (1−ᾱ)/ᾱ, the table in paper_dpg.md §1.2 (SD scaled-linear schedule)
    w = D.effective_weight(t, sd_alphas())
    table = [0.00085, 0.103, 0.341, 1.30, 5.88, 19.7, 52.7]
    for got, want in zip(w.tolist(), table):
        assert abs(got - want) / want < 0.02, (got, want)


def test_x0_from_eps_hand_values_and_round_trip():
    # (2 − sqrt(1−0.64)·1)/sqrt(0.64) = (2 − 0.6)/0.8 = 1.75 ; (1 − 0.8·(−1))/0.6 = 3.0
    x_t = torch.tensor([2.0, 1.0]).view(2, 1, 1, 1).expand(2, 4, 2, 2)
    eps = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1).expand(2, 4, 2, 2)
    got = D.x0_from_eps(x_t, eps, torch.tensor([0.64, 0.36]))
    assert got.dtype == torch.float32
    assert torch.allclose(got[0], torch.full((4, 2, 2), 1.75)) and torch.allclose(got[1], torch.full((4, 2, 2), 3.0))
    # forward-noising with the true ε and looking forward recovers x0 (fp32 even from half inputs)
    a = sd_alphas()[torch.tensor([10, 999])]
    x0, e = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    xt = a.sqrt().view(2, 1, 1, 1) * x0 + (1 - a).sqrt().view(2, 1, 1, 1) * e
    assert torch.allclose(D.x0_from_eps(xt, e, a), x0, atol=1e-3)


class _FakeTrainer:
    """predict() returns fixed tensors so the objective's arithmetic can be checked by hand."""

    def __init__(self, out):
        self.out = out

    def predict(self, batch):
        return self.out

    def eps_from_pred(self, out):
        return out["pred"]


def test_look_forward_uses_per_sample_discount():
    alphas = sd_alphas()
    t = torch.tensor([0, 500, 999])
    a = alphas[t].view(3, 1, 1, 1)
    x0 = torch.zeros(3, 4, 2, 2)
    noise = torch.ones(3, 4, 2, 2)
    noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
    pred = noise + 0.5               # ε̂ off by 0.5 everywhere
    out = {"pred": pred, "target": noise, "noise": noise, "t": t, "noisy": noisy, "x0": x0, "alpha_bar": a}
    batch = L.Batch(latents=x0, cond=torch.zeros(3, 1, 1), is_prior=torch.tensor([False, False, True]),
                    ref_index=torch.tensor([0, 1, 0]))
    obj = D.DPGObjective(D.DPGWeights(dreambooth=0.0, prior=2.0, look_forward=1.0))
    loss, m = obj(_FakeTrainer(out), batch)
    # E_i = ((1−ᾱ_i)/ᾱ_i)·0.25 for the two instance samples; prior MSE = 0.25 (weight 2)
    e = [(1 - float(alphas[i])) / float(alphas[i]) * 0.25 for i in (0, 500)]
    lf = (e[0] * 0.9986 ** 0 + e[1] * 0.9986 ** 500) / 2
    assert m["look_forward"] == pytest.approx(lf, rel=1e-5)
    assert float(loss) == pytest.approx(lf + 2 * 0.25, rel=1e-5)
    assert m["prior"] == pytest.approx(0.25)


def test_critic_is_sized_from_the_latent_and_has_the_papers_size():
    c = D.Critic(4, 64, 64)  # 512 px SD latent
    assert sum(p.numel() for p in c.parameters()) == 262_310  # "0.26M" in the paper
    small = D.Critic(4, 8, 8)
    assert small.fc1.in_features == 64 and all(float(p.detach().min()) >= 0 for p in small.parameters())
    assert small(torch.rand(3, 4, 8, 8)).shape == (3,)


def test_weights_for_modes_and_validation():
    assert D.DPGWeights.for_mode("look_forward").dreambooth == 0 and D.DPGWeights.for_mode("look_forward").look_forward == 1
    assert D.DPGWeights.for_mode("dino", dino=0.1).dino == 0.1
    with pytest.raises(ValueError, match="Unknown loss mode"):
        D.DPGWeights.for_mode("nope")
    with pytest.raises(ValueError, match="All instance loss weights"):
        D.DPGWeights(dreambooth=0).validate()
    with pytest.raises(ValueError, match="gamma"):
        D.DPGWeights(gamma=1.5).validate()
    assert D._instance_from_class("a photo of a dog", "sks") == "a photo of sks dog"


# ---------------------------------------------------------------- every loss mode trains on tiny-sd
@pytest.mark.parametrize("mode,metric", [("dreambooth", "loss"), ("look_forward", "loss"),
                                         ("critic", "look_forward"), ("dino", "loss")])
def test_each_loss_mode_reduces_its_loss(mode, metric, tiny, tmp_path):
    tiny("tiny-dino")
    data = [(im, "a photo of sks dog") for im in refs(2)]
    obj = D.DPGObjective(D.DPGWeights.for_mode(mode), dino_model="tiny-dino")
    res = L.train_lora(L.load_base(tiny("tiny-sd"), device="cpu"), data, obj, L.LoraConfig(rank=4),
                       L.TrainConfig(steps=4, lr=1e-2, resolution=32, save_every=0, batch_size=2, fixed_draw=True),
                       tmp_path)
    rows = L.read_log(res.log_csv)
    vals = [float(r[metric]) for r in rows]
    assert vals[-1] < vals[0], vals
    if mode == "critic":  # the critic regresses mean(E): its own loss falls too
        cl = [float(r["critic_loss"]) for r in rows]
        assert cl[-1] < cl[0], cl
    if mode == "dino":
        assert "dino_dist" in rows[0]


def test_critic_run_resumes_exactly_including_the_critic(tiny, tmp_path, interrupted_then_resumed):
    data = [(im, "a photo of sks dog") for im in refs(2)]
    cls = [(refs(1)[0], "a photo of dog")]
    tcfg = L.TrainConfig(steps=3, lr=1e-3, resolution=32, save_every=1, seed=3)

    def run(d, progress=None):
        obj = D.DPGObjective(D.DPGWeights.for_mode("critic"))
        res = L.train_lora(L.load_base(tiny("tiny-sd"), device="cpu"), data, obj, L.LoraConfig(rank=2), tcfg, d,
                           progress=progress, class_dataset=cls)
        return res, obj

    full, obj_full = run(tmp_path / "a")
    res, obj = interrupted_then_resumed(lambda progress: run(tmp_path / "b", progress), at=2)
    assert res.steps_done == 3
    for k in full.state:
        assert torch.equal(full.state[k], res.state[k]), k
    for k, v in obj_full.critic.state_dict().items():
        assert torch.equal(v, obj.critic.state_dict()[k]), k


# ---------------------------------------------------------------- class images, personalize, node
def test_class_images_are_generated_once_and_cached(tiny, tmp_path):
    c = L.load_base(tiny("tiny-sd"), device="cpu")
    items = D.class_images(c, "a photo of a dog", 2, tmp_path, resolution=32, steps=2)
    files = sorted(tmp_path.glob("class_*.png"))
    assert len(items) == 2 and len(files) == 2 and items[0][1] == "a photo of a dog"
    stamps = [f.stat().st_mtime_ns for f in files]
    D.class_images(c, "a photo of a dog", 2, tmp_path, resolution=32, steps=2)
    assert [f.stat().st_mtime_ns for f in files] == stamps          # cached: not regenerated
    with pytest.raises(ValueError, match="class prompt is empty"):
        D.class_images(c, " ", 1, tmp_path)


def test_node_trains_from_a_gray_single_file_batch_inside_inference_mode(tiny, out_env, fresh_cache):
    import rewardloop
    tiny("tiny-sd")
    tiny("tiny-dino")
    node = rewardloop.NODE_CLASS_MAPPINGS["RewardLoopPersonalizeDPG"]()
    spec = node.INPUT_TYPES()
    assert "tiny-sd-single" in spec["required"]["checkpoint"][0]
    gray = torch.rand(2, 40, 36, 1)   # 1-channel IMAGE batch: converted to RGB
    with torch.inference_mode():
        out = node.train(tiny("tiny-sd-single"), gray, "sks", "a photo of a dog", steps=2, lr=1e-3, rank=2,
                         loss_mode="critic+dino", resolution=32, seed=0, output_name="people/rex", overwrite=False,
                         preset="cpu", num_class_images=1, dino_model="tiny-dino", sample_steps=2)
    name, samples, plot = out["result"]
    assert name == "people/rex.safetensors"
    lora_file = bridge.loras_dir() / name
    assert lora_file.is_file()
    assert samples.shape == (2, 32, 32, 3) and plot.ndim == 4 and plot.shape[-1] == 3
    assert out["ui"]["images"][0]["type"] == "temp"
    from safetensors import safe_open
    with safe_open(str(lora_file), "pt") as f:
        meta = f.metadata()
        assert all(k.startswith("lora_unet_") for k in f.keys())
    assert meta["modelspec.trigger_phrase"] == "sks" and meta["ss_steps"] == "2"
    assert meta["objective"] == "dpg:critic+dino"

    # existing output without overwrite: refused before any training, the file is untouched
    before = lora_file.read_bytes()
    with pytest.raises(OutputExistsError, match="overwrite"):
        node.train("tiny-sd", gray, "sks", "a photo of a dog", steps=2, lr=1e-3, rank=2, loss_mode="dreambooth",
                   resolution=32, seed=0, output_name="people/rex", overwrite=False, preset="cpu")
    assert lora_file.read_bytes() == before


def test_personalize_refuses_bad_inputs_before_training(tiny, out_env):
    base = tiny("tiny-sd")
    with pytest.raises(ValueError, match="No reference images"):
        D.personalize(base, [], "sks", "a photo of a dog", out_name="x")
    with pytest.raises(UnsafeNameError):
        D.personalize(base, refs(1), "sks", "a photo of a dog", out_name="../evil")
    with pytest.raises(ValueError, match="must contain the trigger"):
        D.personalize(base, refs(1), "sks", "a photo of a dog", instance_prompt="a photo of a dog", out_name="x")
    with pytest.raises(ValueError, match="one word"):
        D.personalize(base, refs(1), "two words", "a photo of a dog", out_name="x")
    import rewardloop
    node = rewardloop.NODE_CLASS_MAPPINGS["RewardLoopPersonalizeDPG"]()
    with pytest.raises(ValueError, match="No reference images"):
        node.train(base, torch.zeros(0, 32, 32, 3), "sks", "a photo of a dog", 2, 1e-3, 2, "dreambooth", 32, 0,
                   "x", False, "cpu")
    assert not (bridge.loras_dir().parent / "evil.safetensors").exists()
    assert not list(bridge.output_dir().glob("rewardloop_runs/*"))   # nothing was started


@pytest.mark.slow
def test_two_processes_under_torchrun_train_and_export_once(tiny, tmp_path, models_root):
    """The CLI runs unchanged as a 2-process (gloo, CPU) job: rank 0 exports; rank 1 keeps its own RNG state."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    tiny("tiny-sd")
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.is_file():
        pytest.skip("torchrun not installed")
    refs_dir = tmp_path / "refs"
    refs_dir.mkdir()
    for i, im in enumerate(refs(2)):
        im.save(refs_dir / f"{i}.png")
    pack_parent = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([pack_parent, os.environ.get("PYTHONPATH", "")]),
               REWARDLOOP_MODELS=str(models_root), REWARDLOOP_OUTPUT=str(tmp_path / "out"), OMP_NUM_THREADS="1",
               REWARDLOOP_DEVICE="cpu", REWARDLOOP_NO_TQDM="1", HF_HUB_OFFLINE="1")
    import socket
    with socket.socket() as s:  # a free port: a fixed one collides with any other run on the machine
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", port, "-m", "rewardloop", "train-dpg",
           "--base", "tiny-sd", "--refs", str(refs_dir), "--trigger", "sks", "--class-prompt", "a photo of a dog",
           "--out", "ddp_test", "--steps", "2", "--resolution", "32", "--preset", "cpu", "--num-class-images", "1",
           "--sample-steps", "1", "--save-every", "1", "--mode", "look_forward"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (models_root / "loras" / "ddp_test.safetensors").is_file()
    ck = tmp_path / "out" / "rewardloop_runs" / "ddp_test" / "checkpoints"
    assert (ck / "step_0000002").is_dir() and (ck / "rng_rank1_step_0000002.pt").is_file()


def test_presets_turn_on_the_documented_features():
    p8, p12, p24 = D.PRESETS["8GB"], D.PRESETS["12GB"], D.PRESETS["24GB"]
    assert (p8.mixed_precision, p8.gradient_checkpointing, p8.rank, p8.train_text_encoder) == ("fp16", True, 4, False)
    assert (p12.mixed_precision, p12.gradient_checkpointing, p12.rank) == ("bf16", True, 8)
    assert (p24.gradient_checkpointing, p24.rank, p24.train_text_encoder, p24.batch_size) == (False, 16, True, 2)
    assert all(p.cache_latents for p in D.PRESETS.values())
    cpu = torch.device("cpu")
    assert D.resolve_preset("auto", cpu).name == "cpu"
    assert D.resolve_preset("8GB", cpu).mixed_precision == "no"   # fp16 needs a GPU
    with pytest.raises(ValueError, match="Unknown preset"):
        D.resolve_preset("4GB", cpu)
