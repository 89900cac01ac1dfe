"""DPG loss modes vs plain DreamBooth-LoRA: step time and peak memory, side by side in one run.

    PYTHONPATH=.. python benchmarks/dpg_bench.py [--sizes tiny,sd15] [--steps 2] [--resolution 64] [--quick]
        [--reward clip_score|caption|…] [--critic-every 1]

Models (random weights, nothing downloaded):
  * tiny  : the tiny-sd test model (+ tiny-dino) at 32 px;
  * sd15  : an SD1.5-sized UNet (859.5M), VAE (83.7M) and CLIP-L text encoder (123M) from the bundled config,
            with a ViT-S/16-sized DINO (21.7M), at low resolution (default 64 px) — CPU-feasible.
Each mode trains the same LoRA (rank 4, UNet attention) with batch 1 + 1 prior image (the paper's setting).
``reward_critic`` is DreamBooth + a real (tiny) registry scorer through the learned critic (``trainers/reward_critic.py``),
scored and updated every ``--critic-every`` steps; its costs (``reward_s``: decode + score, ``critic_s``: critic
steps, from the run's log.csv) are printed beside it, and the critic's parameter count; the scorer's own weights
are not in the activation figure (they are frozen weights, like the UNet's).
Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the peak bytes of tensors saved for
backward (activation memory, measured with saved-tensor hooks, weights excluded) — the part that differs
between modes.
Step time: each run trains ``--steps`` + 1 steps and reports the mean of the steps after the first (set-up and the
first step are not timed); runs follow the shared method (``_method.py``: a warm-up run of every mode, modes in
alternating order, ``--repeats`` runs, min and median, load beside each figure). ``--quick``: tiny only.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from _method import Seconds, compare, header, parse, parser

MODES = ["dreambooth", "look_forward", "critic", "dino", "reward_critic"]
# a real scorer of the registry on tiny models: model roles per reward
TINY_SCORER_MODELS = {"clip_score": {"clip": "tiny-clip"}, "caption": {"captioner": "tiny-blip",
                                                                       "text_encoder": "tiny-minilm"}}


class Measured:
    """Wraps an objective: per-step wall time (via the progress callback) and saved-activation bytes."""

    def __init__(self, inner):
        self.inner = inner
        self.saved_peak = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, trainer, batch):
        total = [0]
        if not hasattr(self, "_weights"):  # frozen weights saved for backward are references, not activations
            mods = [m for m in (trainer.c.unet, trainer.c.vae, trainer.c.text_encoder) if m is not None]
            dino = getattr(self.inner, "dino", None)
            if dino is not None:
                mods.append(dino.model)
            reward = getattr(self.inner, "reward", None)
            if reward is not None and reward.critic is not None:
                mods.append(reward.critic)
            self._weights = {p.untyped_storage().data_ptr() for m in mods for p in m.parameters()}

        def pack(t):
            if t.untyped_storage().data_ptr() not in self._weights:
                total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = self.inner(trainer, batch)
        self.saved_peak = max(self.saved_peak, total[0])
        return out


def sd15_components(device):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from rewardloop.trainers import lora as L
    from rewardloop.weights.tiny import clip_tokenizer
    d = L.CONFIG_DIR / "sd1"
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(d / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(d / "vae"))
    te = CLIPTextModel(CLIPTextConfig.from_pretrained(d / "text_encoder"))
    sched = DDPMScheduler.from_config(DDPMScheduler.load_config(d / "scheduler"))
    c = L.SDComponents(unet=unet, vae=vae, text_encoder=te, tokenizer=clip_tokenizer(), noise_scheduler=sched,
                       source="", family="sd1")
    return L._finish(c, "fp32", device)


def build_vits16(root: Path) -> str:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel
    out = root / "dino" / "dino-vits16-random"
    if not (out / "config.json").is_file():
        torch.manual_seed(1)
        ViTModel(ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                           image_size=224, patch_size=16), add_pooling_layer=False).save_pretrained(out)
        ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.485, 0.456, 0.406],
                          image_std=[0.229, 0.224, 0.225]).save_pretrained(out)
    return "dino-vits16-random"


def bench(name, make_components, dino, resolution, steps, work: Path, device, repeats, warmup, scorer, every):
    import numpy as np
    from PIL import Image
    from rewardloop.trainers import dpg as D
    from rewardloop.trainers import lora as L
    from rewardloop.trainers import reward_critic as RC
    comps = make_components()
    refs = [(Image.fromarray((np.random.RandomState(i).rand(resolution, resolution, 3) * 255).astype(np.uint8)),
             "a photo of sks dog") for i in range(2)]
    cls = [(Image.fromarray((np.random.RandomState(9).rand(resolution, resolution, 3) * 255).astype(np.uint8)),
            "a photo of dog")]
    mem = {m: 0 for m in MODES}
    runs = [0]
    costs = {"reward_s": [], "critic_s": []}
    critic_params = [0]

    def objective(mode):
        if mode != "reward_critic":
            return D.DPGObjective(D.DPGWeights.for_mode(mode), dino_model=dino)
        # warmup 1: the actor's critic term is on from the second step, the first timed one
        cfg = RC.RewardCriticConfig(rewards=[RC.RewardSpec(scorer.names[0], 1.0, scorer=scorer)], every=every,
                                    warmup=1)
        return D.DPGObjective(D.DPGWeights.for_mode("dreambooth"), dino_model=dino, reward=cfg)

    def variant(mode):
        def run():
            obj = Measured(objective(mode))
            stamps = []
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            runs[0] += 1
            # steps + 1 steps: the first one (data, optimizer and LoRA set-up) is not timed
            L.train_lora(comps, refs, obj, L.LoraConfig(rank=4),
                         L.TrainConfig(steps=steps + 1, lr=1e-4, resolution=resolution, save_every=0, seed=0),
                         work / f"{name}_{mode}_{runs[0]}", resume=False, class_dataset=cls,
                         progress=lambda info: stamps.append(time.perf_counter()))
            peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else obj.saved_peak
            mem[mode] = max(mem[mode], peak)
            if mode == "reward_critic":
                rows = L.read_log(work / f"{name}_{mode}_{runs[0]}" / "log.csv")[1:]   # the timed steps
                for k in costs:
                    costs[k] += [float(r[k]) for r in rows]
                critic_params[0] = RC.parameter_count(obj.inner.reward.critic)
            return Seconds((stamps[-1] - stamps[0]) / max(len(stamps) - 1, 1))
        return run

    t = compare({m: variant(m) for m in MODES}, repeats, warmup)
    del comps
    base = t["dreambooth"]
    label = "peak VRAM MB" if device.type == "cuda" else "saved-activation MB"
    print(f"\n-- {name} @ {resolution}px, batch 1 + 1 prior, LoRA rank 4, {steps} timed steps per run, device {device}")
    for mode in MODES:
        print(f"{t[mode].line(width=14, unit_name='s/step')}  x DB (min) {t[mode].min / base.min:5.2f}  "
              f"{label} {mem[mode] / 2 ** 20:9.1f} (x DB {mem[mode] / max(mem['dreambooth'], 1):.2f})")
    n = max(len(costs["reward_s"]), 1)
    print(f"reward_critic ({scorer.names[0]} scorer, critic {critic_params[0]:,} params, update every {every}): per "
          f"step, mean over the timed steps of all its runs: reward_s {sum(costs['reward_s']) / n:.4f} s (decode + "
          f"score), critic_s {sum(costs['critic_s']) / n:.4f} s")
    return t


def main(argv=None):
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="tiny,sd15")
    ap.add_argument("--steps", type=int, default=2, help="timed training steps per run (after one untimed step)")
    ap.add_argument("--resolution", type=int, default=64, help="resolution for the SD1.5-sized run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reward", default=None, help="registry scorer of reward_critic, on tiny models "
                                                   f"({', '.join(TINY_SCORER_MODELS)}; default: the first registered)")
    ap.add_argument("--critic-every", type=int, default=1, help="critic update interval of reward_critic")
    args = parse(ap, argv)
    if args.quick:
        args.sizes = "tiny"
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="dpg-bench-"))
    os.environ["REWARDLOOP_MODELS"] = str(work / "models")
    from rewardloop import bridge
    from rewardloop.trainers import lora as L
    from rewardloop.weights import tiny
    device = bridge.get_device()
    from rewardloop.rewards.scoring import available, make_scorer
    reward = args.reward or next(r for r in TINY_SCORER_MODELS if r in available())
    if reward not in TINY_SCORER_MODELS or reward not in available():
        sys.exit(f"--reward {reward}: choose one of {', '.join(r for r in TINY_SCORER_MODELS if r in available())}")
    for key in TINY_SCORER_MODELS[reward].values():
        tiny.build(key, work / "models")
    scorer = make_scorer(reward, models=TINY_SCORER_MODELS[reward], device=device)
    header("DPG loss modes vs DreamBooth-LoRA: step time and memory", device=device, sizes=args.sizes,
           reward=f"{reward} on {', '.join(TINY_SCORER_MODELS[reward].values())}")
    for size in args.sizes.split(","):
        if size == "tiny":
            tiny.build("tiny-sd", work / "models")
            tiny.build("tiny-dino", work / "models")
            bench("tiny-sd", lambda: L.load_base("tiny-sd", dtype="fp32", device=device), "tiny-dino", 32,
                  args.steps, work, device, args.repeats, args.warmup, scorer, args.critic_every)
        elif size == "sd15":
            dino = build_vits16(work / "models")
            bench("sd15-sized", lambda: sd15_components(device), dino, args.resolution, args.steps, work, device,
                  args.repeats, args.warmup, scorer, args.critic_every)
        else:
            sys.exit(f"unknown size {size}")


if __name__ == "__main__":
    main()
