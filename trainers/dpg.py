"""DPG personalization ("Powerful and Flexible", ECCV 2024) as a LoRA objective on the shared core.

Terms, each weighted by its own flag (0 turns it off):

* ``dreambooth``   noise MSE on the reference (instance) images; ``prior`` weights the prior-preservation MSE on
                   class images generated once by the base model (the DreamBooth baseline).
* ``look_forward`` one-step x̂0 = (x_t − sqrt(1−ᾱ_t)·ε̂)/sqrt(ᾱ_t) in fp32, E = (x̂0 − x0)², per-sample
                   γ^{t_i}·mean(E_i) (what the released code reduces to; the author's "direct LF").
* ``critic``       the paper's Q-network over the error map E (conv 3×3 C→1, LeakyReLU, flatten (sized from the
                   latent), 64, ReLU, 1; non-negative uniform init), fp32, outside the UNet graph; the actor
                   minimises γ^{t_i}·Q(E_i); after each actor step Q(E.detach()) is regressed to mean(E) with
                   SGD lr 0.01. Checkpointed with the run (the released code does not).
* ``dino``         decode x̂0 through the VAE, DINO ViT CLS features, λ·γ^{t_i}·(1 − cos) to the features of the
                   reference image the sample came from; differentiable end to end.

Per-sample γ^t for batches > 1 (the released code indexes ``timesteps[0]``).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from .. import bridge
from ..fileio import atomic_save, atomic_write_text, safe_output_path
from . import lora as L
from . import run_folder

log = logging.getLogger("rewardloop")

GAMMA = 0.9986          # the released code's discount; the authors' own comment and ablation favour 1.0
CRITIC_LR = 0.01
LOSS_MODES = ("dreambooth", "look_forward", "critic", "dino", "look_forward+dino", "critic+dino", "custom")


# ====================================================================== formulas
def discount(t: torch.Tensor, gamma: float = GAMMA) -> torch.Tensor:
    """γ^t per sample (fp32)."""
    return torch.pow(torch.tensor(float(gamma), dtype=torch.float64), t.double().cpu()).float().to(t.device)


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """One-step look-forward x̂0 = (x_t − sqrt(1−ᾱ)·ε̂)/sqrt(ᾱ), computed in fp32."""
    a = alpha_bar.float()
    while a.dim() < x_t.dim():
        a = a.view(*a.shape, *([1] * (x_t.dim() - a.dim())))
    return (x_t.float() - (1 - a).sqrt() * eps.float()) / a.sqrt()


def effective_weight(t: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float = GAMMA) -> torch.Tensor:
    """w(t) = γ^t·(1−ᾱ_t)/ᾱ_t: the look-forward loss as a reweighted ε-MSE (paper notes §1.2 table)."""
    a = alphas_cumprod.double()[t.long().cpu()]
    return (discount(t.cpu(), gamma).double() * (1 - a) / a).float()


# ====================================================================== critic
class Critic(torch.nn.Module):
    """The paper's FullyConvRegressionModel with the flatten sized from the latent (C×H×W error map → scalar)."""

    def __init__(self, channels: int = 4, height: int = 64, width: int = 64, hidden: int = 64):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 1, 3, padding=1)
        self.fc1 = torch.nn.Linear(height * width, hidden)
        self.fc2 = torch.nn.Linear(hidden, 1)
        self.shape = (channels, height, width)
        with torch.no_grad():  # non-negative uniform init, as released: Q starts ≈ weighted mean of E
            for m, hi in ((self.conv, 1 / 9), (self.fc1, 1 / (height * width)), (self.fc2, 1 / hidden)):
                m.weight.uniform_(0, hi)
                m.bias.uniform_(0, hi)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv(e.float()), 0.01).flatten(1)
        return self.fc2(F.relu(self.fc1(h))).squeeze(1)


# ====================================================================== objective
@dataclass
class DPGWeights:
    dreambooth: float = 1.0      # instance noise-MSE
    prior: float = 1.0           # prior preservation (only when class images are given)
    look_forward: float = 0.0
    critic: float = 0.0
    dino: float = 0.0            # λ
    gamma: float = GAMMA
    critic_lr: float = CRITIC_LR

    @classmethod
    def for_mode(cls, mode: str, **overrides) -> "DPGWeights":
        """Preset weights per loss mode (the released LF recipe drops the instance ε-MSE)."""
        table = {
            "dreambooth": dict(dreambooth=1.0),
            "look_forward": dict(dreambooth=0.0, look_forward=1.0),
            "critic": dict(dreambooth=0.0, critic=1.0),
            "dino": dict(dreambooth=1.0, dino=1.0),
            "look_forward+dino": dict(dreambooth=0.0, look_forward=1.0, dino=1.0),
            "critic+dino": dict(dreambooth=0.0, critic=1.0, dino=1.0),
            "custom": {},
        }
        if mode not in table:
            raise ValueError(f"Unknown loss mode {mode!r}: choose one of {', '.join(LOSS_MODES)}.")
        w = cls(**table[mode])
        return replace(w, **{k: v for k, v in overrides.items() if v is not None})

    def validate(self) -> None:
        for k in ("dreambooth", "prior", "look_forward", "critic", "dino", "gamma", "critic_lr"):
            if not math.isfinite(float(getattr(self, k))):
                raise ValueError(f"Loss weight {k} must be a finite number (got {getattr(self, k)}).")
        for k in ("dreambooth", "prior", "look_forward", "critic", "dino"):
            if getattr(self, k) < 0:
                raise ValueError(f"Loss weight {k} must be >= 0 (got {getattr(self, k)}).")
        if self.dreambooth + self.look_forward + self.critic + self.dino <= 0:
            raise ValueError("All instance loss weights are 0: turn on dreambooth, look_forward, critic or dino.")
        if not (0 < self.gamma <= 1):
            raise ValueError(f"gamma must be in (0, 1] (got {self.gamma}).")


class DINOFeatures:
    """Differentiable DINO CLS features of images in [-1,1] (resize + ImageNet normalisation inside the graph)."""

    def __init__(self, name: str = "dino-vits16", device=None):
        from ..weights.loaders import load_dino
        self.handle = load_dino(name, dtype="fp32", device=device)
        self.model = self.handle.model
        if any(p.is_inference() for p in self.model.parameters()):
            # loaded (and cached) under ComfyUI's inference_mode: a private copy with ordinary tensors
            import copy
            with torch.inference_mode(False):
                model = copy.deepcopy(self.model)
            L.normalize_inference_tensors(model)
            self.model = model
        self.model.requires_grad_(False)
        proc = self.handle.processor
        size = getattr(proc, "size", None) or {"height": 224, "width": 224}
        if "height" in size:
            self.size = (int(size["height"]), int(size["width"]))
        else:
            s = int(size.get("shortest_edge", 224))
            self.size = (s, s)
        mean = getattr(proc, "image_mean", None) or [0.485, 0.456, 0.406]
        std = getattr(proc, "image_std", None) or [0.229, 0.224, 0.225]
        dev = next(self.model.parameters()).device
        self.mean = torch.tensor(mean, device=dev).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=dev).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = ((images.float() + 1) / 2).clamp(0, 1).to(self.mean.device)
        x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=False)
        x = (x - self.mean) / self.std
        out = self.model(pixel_values=x)
        return out.last_hidden_state[:, 0].float()


class DPGObjective:
    """The DPG objective (see module docstring). Carries the critic; its state is checkpointed with the run."""

    def __init__(self, weights: DPGWeights | None = None, dino_model: str = "dino-vits16",
                 vae_checkpointing: bool = False):
        self.w = weights or DPGWeights()
        self.w.validate()
        self.dino_model = dino_model
        self.vae_checkpointing = vae_checkpointing
        self.critic: Critic | None = None
        self.critic_opt: torch.optim.Optimizer | None = None
        self.dino: DINOFeatures | None = None
        self.ref_feats: torch.Tensor | None = None
        self._pending: torch.Tensor | None = None
        self._pending_state: dict | None = None

    @property
    def name(self) -> str:
        on = [k for k in ("dreambooth", "look_forward", "critic", "dino") if getattr(self.w, k) > 0]
        return "dpg:" + "+".join(on)

    @property
    def needs_pixels(self) -> bool:
        return False

    def settings(self) -> dict:
        """What a resumed run must share (see ``loop.run_settings``)."""
        return {"weights": asdict(self.w), "dino_model": self.dino_model if self.w.dino > 0 else None}

    # -------------------------------------------------------------- setup (called by the core before step 1)
    def setup(self, trainer: L.Trainer) -> None:
        c = trainer.c
        res = int(trainer.cfg.resolution)
        down = 2 ** (len(c.vae.config.block_out_channels) - 1)
        ch = int(c.unet.config.in_channels)
        if self.w.critic > 0 and self.critic is None:
            g = torch.random.get_rng_state()
            torch.manual_seed(int(trainer.cfg.seed) + 1)
            self.critic = Critic(ch, res // down, res // down).to(trainer.device)
            torch.random.set_rng_state(g)
            self.critic_opt = torch.optim.SGD(self.critic.parameters(), lr=float(self.w.critic_lr))
            if self._pending_state is not None:
                self.load_state_dict(self._pending_state)
        if self.w.dino > 0 and self.dino is None:
            self.dino = DINOFeatures(self.dino_model, device=trainer.device)
            with torch.no_grad():
                self.ref_feats = self.dino(trainer.ref_pixels.to(trainer.device))
            if self.vae_checkpointing and hasattr(c.vae, "enable_gradient_checkpointing"):
                c.vae.enable_gradient_checkpointing()

    # -------------------------------------------------------------- the actor loss
    def __call__(self, trainer: L.Trainer, batch: L.Batch):
        out = trainer.predict(batch)
        w = self.w
        inst, prior = batch.instance, batch.is_prior
        per = ((out["pred"].float() - out["target"].float()) ** 2).flatten(1).mean(1)
        metrics: dict[str, float] = {}
        loss = out["pred"].new_zeros((), dtype=torch.float32)
        mse = per[inst].mean()
        metrics["mse"] = float(mse.detach())
        if w.dreambooth > 0:
            loss = loss + w.dreambooth * mse
        if prior.any() and w.prior > 0:
            lp = per[prior].mean()
            loss = loss + w.prior * lp
            metrics["prior"] = float(lp.detach())
        if w.look_forward > 0 or w.critic > 0 or w.dino > 0:
            eps = trainer.eps_from_pred(out)
            x0_hat = x0_from_eps(out["noisy"][inst], eps[inst], out["alpha_bar"][inst])
            err = (x0_hat - out["x0"][inst].float()) ** 2
            g = discount(out["t"][inst], w.gamma)
            lf = (g * err.flatten(1).mean(1)).mean()
            metrics["look_forward"] = float(lf.detach())
            if w.look_forward > 0:
                loss = loss + w.look_forward * lf
            if w.critic > 0:
                self.critic.requires_grad_(False)
                q = self.critic(err)
                lq = (g * q).mean()
                loss = loss + w.critic * lq
                metrics["critic_q"] = float(lq.detach())
                self._pending = err.detach()
            if w.dino > 0:
                img = trainer.decode(x0_hat)
                feats = self.dino(img)
                ref = self.ref_feats[batch.ref_index[inst].to(self.ref_feats.device)]
                dist = 1 - F.cosine_similarity(feats, ref, dim=-1)
                ld = (g.to(dist.device) * dist).mean()
                loss = loss + w.dino * ld.to(loss.device)
                metrics["dino_dist"] = float(dist.mean().detach())
        return loss, metrics

    # -------------------------------------------------------------- critic regression after the actor step
    def after_step(self, trainer: L.Trainer, batch: L.Batch) -> dict[str, float]:
        if self.critic is None or self._pending is None:
            return {}
        e = self._pending
        self._pending = None
        self.critic.requires_grad_(True)
        with torch.enable_grad():
            q = self.critic(e)
            target = e.flatten(1).mean(1)
            lc = ((q - target) ** 2).mean()
            self.critic_opt.zero_grad(set_to_none=True)
            lc.backward()
            acc = trainer.accelerator
            if acc.num_processes > 1:  # one critic for all processes
                for p in self.critic.parameters():
                    p.grad = acc.reduce(p.grad, reduction="mean")
            torch.nn.utils.clip_grad_norm_(self.critic.parameters(), 1.0)
            self.critic_opt.step()
        self.critic.requires_grad_(False)
        return {"critic_loss": float(lc.detach())}

    # -------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict:
        if self.critic is None:
            return {}
        return {"critic": {k: v.detach().cpu().clone() for k, v in self.critic.state_dict().items()},
                "critic_opt": self.critic_opt.state_dict()}

    def load_state_dict(self, sd: dict) -> None:
        if not sd:
            return
        if self.critic is None:  # restored before setup: apply then
            self._pending_state = sd
            return
        self.critic.load_state_dict(sd["critic"])
        self.critic_opt.load_state_dict(sd["critic_opt"])
        self._pending_state = None


# ====================================================================== class prior images
def class_images(components: L.SDComponents, class_prompt: str, n: int, cache_dir: Path, seed: int = 0,
                 resolution: int = 512, steps: int = 25, cfg: float = 7.5, negative: str = "",
                 progress=None) -> list[tuple[Image.Image, str]]:
    """Prior-preservation images of ``class_prompt`` from the base model, generated once and cached.

    Call before :func:`lora.add_lora` (or with adapters disabled) so they come from the base model.
    """
    if not class_prompt or not class_prompt.strip():
        raise ValueError("The class prompt is empty: give the subject's class, e.g. 'a photo of a dog'.")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"prompt": class_prompt, "base": components.source, "resolution": int(resolution),
                "steps": int(steps), "cfg": float(cfg), "seed": int(seed), "negative": negative}
    mf = cache_dir / "manifest.json"
    if mf.is_file():
        try:
            old = json.loads(mf.read_text())
        except ValueError:
            old = {}
        if old != manifest:  # different prompt/base/settings: start this cache afresh
            for p in cache_dir.glob("class_*.png"):
                p.unlink()
    atomic_write_text(mf, json.dumps(manifest))
    out = []
    todo = sum(not (cache_dir / f"class_{i:04d}.png").is_file() for i in range(int(n)))
    bar = bridge.Progress(todo, "class images") if todo and progress is None else None  # a long wait: show it
    try:
        for i in range(int(n)):
            p = cache_dir / f"class_{i:04d}.png"
            if not p.is_file():
                bridge.check_interrupt()
                img = L.generate(components, [class_prompt], [int(seed) * 1000 + i], steps=steps, cfg=cfg,
                                 width=resolution, height=resolution, negative=negative)[0]
                atomic_save(p, lambda tmp, im=img: im.save(tmp, format="PNG"))
                if progress is not None:
                    progress(i + 1, n)
                if bar is not None:
                    bar.update(1)
            with Image.open(p) as im:
                out.append((im.convert("RGB"), class_prompt))
    finally:
        if bar is not None:
            bar.close()
    return out


# ====================================================================== one-call personalization
@dataclass
class Preset:
    """Which memory features a VRAM preset turns on (README: DPG personalization → presets)."""
    name: str
    mixed_precision: str
    weights_dtype: str
    gradient_checkpointing: bool
    cache_latents: bool
    rank: int
    train_text_encoder: bool
    batch_size: int
    vae_checkpointing: bool
    note: str = ""


PRESETS: dict[str, Preset] = {
    "8GB": Preset("8GB", "fp16", "fp16", True, True, 4, False, 1, True,
                  "SD1.x at 512 px: half-precision frozen weights, gradient checkpointing (UNet and, for the DINO "
                  "term, the VAE decoder), cached latents, rank 4, UNet-only LoRA, batch 1. SDXL: use 768 px."),
    "12GB": Preset("12GB", "bf16", "bf16", True, True, 8, False, 1, True,
                   "bf16 (fp16 on cards without bf16), gradient checkpointing, cached latents, rank 8, UNet LoRA."),
    "24GB": Preset("24GB", "bf16", "bf16", False, True, 16, True, 2, False,
                   "bf16, no checkpointing (faster), cached latents, rank 16, UNet + text-encoder LoRA, batch 2."),
    "cpu": Preset("cpu", "no", "fp32", False, True, 4, False, 1, False, "fp32 on the CPU (tests, tiny models)."),
}


def resolve_preset(name: str | None, device: torch.device) -> Preset:
    if name in (None, "", "auto"):
        if device.type != "cuda":
            return PRESETS["cpu"]
        gb = torch.cuda.get_device_properties(device).total_memory / 2 ** 30
        name = "8GB" if gb < 11 else ("12GB" if gb < 20 else "24GB")
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}: choose one of auto, {', '.join(PRESETS)}.")
    p = PRESETS[name]
    if p.mixed_precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        p = replace(p, mixed_precision="fp16", weights_dtype="fp16")
    if device.type == "cpu" and p.mixed_precision == "fp16":
        p = replace(p, mixed_precision="no", weights_dtype="fp32")
    return p


@dataclass
class PersonalizeResult:
    lora_file: Path
    lora_name: str
    samples: list[Image.Image]
    sample_files: list[Path]
    loss_plot: Path | None
    train: L.TrainResult
    run_dir: Path


RUNS_SUBDIR = "rewardloop_runs"


def run_dir_for(name: str) -> Path:
    """Working folder of a named run (checkpoints, class images, log, plot, samples): ``<output>/rewardloop_runs/``
    + the whole output name, sub-folders included (``dogs/rex`` and ``cats/rex`` are two runs)."""
    return run_folder.run_dir_for(RUNS_SUBDIR, name)


def personalize(base: str, references: list[Image.Image], trigger: str, class_prompt: str,
                instance_prompt: str | None = None, out_name: str = "dpg_lora", overwrite: bool = False,
                mode: str = "look_forward", weights: DPGWeights | None = None, steps: int = 500, lr: float = 1e-4,
                rank: int | None = None, resolution: int = 512, seed: int = 0, preset: str | None = "auto",
                num_class_images: int = 8, sample_prompts: tuple[str, ...] | None = None, sample_every: int = 0,
                save_every: int = 100, resume: bool = True, run_dir: Path | None = None, progress=None,
                dino_model: str = "dino-vits16", center_crop: bool = True, device=None, config=None,
                train_overrides: dict | None = None, sample_steps: int = 20) -> PersonalizeResult:
    """Reference photos → a personalized LoRA in ``loras`` (the node's and the CLI's entry point).

    Everything is checked before a model is loaded: the inputs, the output name, the model names and the run
    folder (its lock and, when resuming, its settings). ``overwrite`` replaces an existing LoRA of that name and
    starts the run afresh; ``resume`` (default) continues an interrupted run of the same name and settings.
    Leaves ``torch.inference_mode`` (ComfyUI runs nodes inside it) for loading, training and export.
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _personalize(**{k: v for k, v in locals().items()})


def _check_model_names(base, config, weights: DPGWeights, dino_model: str) -> Path:
    """Resolve every model the run will load (no loading): the base's path, or one line saying what is missing."""
    base_path = L.check_base(base)
    if config and not (L.CONFIG_DIR / str(config) / "model_index.json").is_file():
        L._resolve_base(config)
    if weights.dino > 0:
        from ..weights.registry import resolve
        resolve(dino_model, folder="dino")
    return base_path


def _personalize(base, references, trigger, class_prompt, instance_prompt, out_name, overwrite, mode, weights, steps,
                 lr, rank, resolution, seed, preset, num_class_images, sample_prompts, sample_every, save_every,
                 resume, run_dir, progress, dino_model, center_crop, device, config, train_overrides,
                 sample_steps) -> PersonalizeResult:
    refs = list(references or [])
    if not refs:
        raise ValueError("No reference images were given: connect at least one photo of the subject.")
    if not trigger or not trigger.strip() or " " in trigger.strip():
        raise ValueError(f"Trigger word {trigger!r} must be one word (e.g. 'sks'), used in the instance prompt.")
    trigger = trigger.strip()
    if not class_prompt or not class_prompt.strip():
        raise ValueError("The class prompt is empty: give the subject's class, e.g. 'a photo of a dog'.")
    instance_prompt = (instance_prompt or "").strip() or _instance_from_class(class_prompt, trigger)
    if trigger not in instance_prompt.split():
        raise ValueError(f"The instance prompt {instance_prompt!r} must contain the trigger word {trigger!r}.")
    for what, value, low in (("num_class_images", num_class_images, 0), ("sample_every", sample_every, 0),
                             ("save_every", save_every, 0), ("sample_steps", sample_steps, 1)):
        if int(value) < low:
            raise ValueError(f"{what} must be >= {low} (got {value}).")
    if rank is not None and int(rank) < 1:
        raise ValueError(f"LoRA rank must be >= 1 (got {rank}).")
    # fail now, not after training: the output name must be valid and free
    lora_target = safe_output_path(bridge.loras_dir(), out_name, ".safetensors", overwrite)
    weights = weights or DPGWeights.for_mode(mode)
    weights.validate()
    from accelerate import PartialState
    import os
    cpu = str(device or os.environ.get("REWARDLOOP_DEVICE", "")).startswith("cpu") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)  # under `accelerate launch`/torchrun: one process per GPU (or CPU worker)
    dev = torch.device(device) if device else (state.device if state.num_processes > 1 else bridge.get_device())
    pre = resolve_preset(preset, dev)
    lcfg = L.LoraConfig(rank=int(rank or pre.rank), train_text_encoder=pre.train_text_encoder)
    samples = tuple(sample_prompts) if sample_prompts is not None else (
        instance_prompt, f"{instance_prompt} on the beach")
    tcfg = L.TrainConfig(steps=int(steps), lr=float(lr), batch_size=pre.batch_size,
                         mixed_precision=pre.mixed_precision, gradient_checkpointing=pre.gradient_checkpointing,
                         resolution=int(resolution), seed=int(seed), save_every=int(save_every),
                         sample_every=int(sample_every), sample_prompts=samples, cache_latents=pre.cache_latents,
                         center_crop=center_crop, sample_steps=sample_steps)
    if train_overrides:
        tcfg = replace(tcfg, **train_overrides)
    tcfg.validate()
    lcfg.validate()
    base_path = _check_model_names(base, config, weights, dino_model)
    objective = DPGObjective(weights, dino_model=dino_model, vae_checkpointing=pre.vae_checkpointing)
    dataset = [(img, instance_prompt) for img in refs]
    run_dir = Path(run_dir) if run_dir else run_dir_for(out_name)
    resume = bool(resume) and not overwrite          # overwrite: a fresh run, never the finished checkpoint
    with run_folder.claim(run_dir, main=state.is_main_process):
        if state.is_main_process:
            L.check_resume(run_dir, L.run_settings(lcfg, tcfg, objective, base_path, dataset), resume,
                           partial=True)
        bridge.free_memory(int(6 * 2 ** 30), dev)
        comps = L.load_base(base, dtype=pre.weights_dtype, device=dev, config=config)
        if comps.vae.dtype != torch.float32 and (weights.dino > 0 or getattr(comps.vae.config, "force_upcast", False)):
            comps.vae.to(torch.float32)  # the SDXL VAE overflows in fp16; the DINO reward decodes in fp32
        class_items = []
        if num_class_images > 0 and weights.prior > 0:
            def make_class():
                return class_images(comps, class_prompt, num_class_images, run_dir / "class_images", seed=seed,
                                    resolution=resolution, steps=sample_steps)
            if state.is_main_process:  # generated once, by rank 0; the other processes read the cache
                class_items = make_class()
            state.wait_for_everyone()
            if not state.is_main_process:
                class_items = make_class()
        result = L.train_lora(comps, dataset, objective, lcfg, tcfg, run_dir, resume=resume, progress=progress,
                              class_dataset=class_items or None)
        meta = {"trigger": trigger, "instance_prompt": instance_prompt, "class_prompt": class_prompt,
                "steps": str(result.steps_done), "objective": objective.name, "weights": asdict(weights),
                "resolution": str(resolution), "seed": str(seed), "preset": pre.name, "lr": str(lr),
                "ss_output_name": Path(out_name).name, "ss_steps": str(result.steps_done)}
        if not state.is_main_process:  # rank 0 exports and samples; the others return its file name
            state.wait_for_everyone()
            return PersonalizeResult(lora_file=lora_target, lora_name=Path(out_name).name, samples=[], sample_files=[],
                                     loss_plot=result.loss_plot_png, train=result, run_dir=run_dir)
        lora_file = L.export_lora(comps, lora_target, meta, overwrite=overwrite)
        imgs, files = L.save_samples(comps, samples, seed, sample_steps, 7.5, resolution, run_dir / "samples", "final")
        rel = lora_file.relative_to(Path(bridge.loras_dir()).resolve()).as_posix()
        state.wait_for_everyone()
        return PersonalizeResult(lora_file=lora_file, lora_name=rel, samples=imgs, sample_files=files,
                                 loss_plot=result.loss_plot_png, train=result, run_dir=run_dir)


def _instance_from_class(class_prompt: str, trigger: str) -> str:
    """'a photo of a dog' → 'a photo of sks dog' (the DreamBooth pattern: trigger before the class noun)."""
    words = class_prompt.strip().split()
    if len(words) >= 2 and words[-2].lower() in ("a", "an", "the"):
        words = words[:-2] + [trigger, words[-1]]
    else:
        words = words[:-1] + [trigger, words[-1]]
    return " ".join(words)
