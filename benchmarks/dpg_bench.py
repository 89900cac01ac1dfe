"""DPG loss modes vs plain DreamBooth-LoRA: step time and peak memory, side by side in one run.

    PYTHONPATH=.. python benchmarks/dpg_bench.py [--sizes tiny,sd15] [--steps 2] [--resolution 64] [--quick]

Models (random weights, nothing downloaded):
  * tiny  : the tiny-sd test model (+ tiny-dino) at 32 px;
  * sd15  : an SD1.5-sized UNet (859.5M), VAE (83.7M) and CLIP-L text encoder (123M) from the bundled config,
            with a ViT-S/16-sized DINO (21.7M), at low resolution (default 64 px) — CPU-feasible.
Each mode trains the same LoRA (rank 4, UNet attention) with batch 1 + 1 prior image (the paper's setting).
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

MODES = ["dreambooth", "look_forward", "critic", "dino"]


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


def bench(name, make_components, dino, resolution, steps, work: Path, device, repeats, warmup):
    import numpy as np
    from PIL import Image
    from rewardloop.trainers import dpg as D
    from rewardloop.trainers import lora as L
    comps = make_components()
    refs = [(Image.fromarray((np.random.RandomState(i).rand(resolution, resolution, 3) * 255).astype(np.uint8)),
             "a photo of sks dog") for i in range(2)]
    cls = [(Image.fromarray((np.random.RandomState(9).rand(resolution, resolution, 3) * 255).astype(np.uint8)),
            "a photo of dog")]
    mem = {m: 0 for m in MODES}
    runs = [0]

    def variant(mode):
        def run():
            obj = Measured(D.DPGObjective(D.DPGWeights.for_mode(mode), dino_model=dino))
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
    return t


def main(argv=None):
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="tiny,sd15")
    ap.add_argument("--steps", type=int, default=2, help="timed training steps per run (after one untimed step)")
    ap.add_argument("--resolution", type=int, default=64, help="resolution for the SD1.5-sized run")
    ap.add_argument("--threads", type=int, default=1)
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
    header("DPG loss modes vs DreamBooth-LoRA: step time and memory", device=device, sizes=args.sizes)
    for size in args.sizes.split(","):
        if size == "tiny":
            tiny.build("tiny-sd", work / "models")
            tiny.build("tiny-dino", work / "models")
            bench("tiny-sd", lambda: L.load_base("tiny-sd", dtype="fp32", device=device), "tiny-dino", 32,
                  args.steps, work, device, args.repeats, args.warmup)
        elif size == "sd15":
            dino = build_vits16(work / "models")
            bench("sd15-sized", lambda: sd15_components(device), dino, args.resolution, args.steps, work, device,
                  args.repeats, args.warmup)
        else:
            sys.exit(f"unknown size {size}")


if __name__ == "__main__":
    main()
