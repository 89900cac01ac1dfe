"""Sample images with the current (LoRA-patched) modules and the loss plot of a run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import bridge
from ..fileio import atomic_save
from .base_model import SDComponents
from .checkpoints import read_log


def plot_loss(log_csv: Path, out_png: Path, title: str = "training loss") -> Path | None:
    rows = read_log(log_csv)
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    keys = [k for k in rows[0] if k not in ("step", "lr", "time") and rows[0][k] not in ("", None)]
    for k in keys:
        try:
            vals = [float(r[k]) if r.get(k) not in ("", None) else float("nan") for r in rows]
        except ValueError:
            continue
        ax.plot(steps, vals, label=k, linewidth=1.2 if k == "loss" else 0.8)
        if k == "loss" and len(vals) >= 5:
            k5 = max(2, len(vals) // 10)
            sm = np.convolve(np.nan_to_num(vals), np.ones(k5) / k5, mode="valid")
            ax.plot(steps[k5 - 1:], sm, label="loss (smoothed)", linewidth=2)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_save(out_png, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out_png


def generate(components: SDComponents, prompts: list[str], seeds: list[int], steps: int = 20, cfg: float = 7.5,
             width: int | None = None, height: int | None = None, negative: str = "") -> list[Image.Image]:
    """One image per (prompt, seed), deterministic, with the current (LoRA-patched) modules."""
    if len(seeds) == 1 and len(prompts) > 1:
        seeds = list(seeds) * len(prompts)
    if len(seeds) != len(prompts):
        raise ValueError(f"generate: {len(prompts)} prompts but {len(seeds)} seeds.")
    pipe = components.pipeline()
    down = 2 ** (len(components.vae.config.block_out_channels) - 1)   # 8 for SD; 2 for the tiny test VAE
    default = int(components.unet.config.sample_size) * down
    width, height = width or default, height or default
    modules = [m for m in (components.unet, components.text_encoder, components.text_encoder_2) if m is not None]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    out = []
    try:
        with torch.inference_mode(False), torch.no_grad():
            for p, s in zip(prompts, seeds):
                g = torch.Generator("cpu").manual_seed(int(s))
                latents = torch.randn((1, components.unet.config.in_channels, height // down, width // down),
                                      generator=g)
                img = pipe(p, negative_prompt=negative or None, num_inference_steps=int(steps),
                           guidance_scale=float(cfg), width=width, height=height,
                           latents=latents.to(components.device, next(components.unet.parameters()).dtype),
                           output_type="pil").images[0]
                out.append(img)
    finally:
        for m, t in zip(modules, modes):
            m.train(t)
    return out


def save_samples(components, prompts, seed: int, steps: int, cfg: float, resolution: int, folder: Path,
                 stem: str) -> tuple[list, list[Path]]:
    """Generate one image per prompt (seeds ``seed, seed+1, …``) and save them atomically as ``stem_<i>.png``."""
    prompts = list(prompts)
    imgs = []
    with bridge.Progress(len(prompts), "sample images") as bar:  # a long wait on a CPU: show it
        for i, prompt in enumerate(prompts):
            imgs += generate(components, [prompt], [int(seed) + i], steps=int(steps), cfg=float(cfg),
                             width=int(resolution), height=int(resolution))
            bar.update(1)
    out = []
    for i, img in enumerate(imgs):
        p = Path(folder) / f"{stem}_{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(p, lambda tmp, im=img: im.save(tmp, format="PNG"))
        out.append(p)
    return imgs, out


def _save_samples(components, train_cfg, run_dir: Path, step: int) -> list[Path]:
    return save_samples(components, train_cfg.sample_prompts, train_cfg.seed, train_cfg.sample_steps,
                        train_cfg.sample_cfg, train_cfg.resolution, run_dir / "samples", f"step_{step:07d}")[1]
