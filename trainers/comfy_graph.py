"""DPG LoRA training on ComfyUI's own MODEL, inside the graph: any architecture ComfyUI loads.

The in-graph back-end of the DPG objective (``trainers/dpg_objective.py``; the file-based back-end is
``trainers/dpg.py``). It trains on the MODEL/CLIP/VAE objects the graph hands over, the way ComfyUI's core
``TrainLoraNode`` does: a clone of the model patcher gets trainable LoRA modules as weight wrappers
(``ModelPatcher.add_weight_wrapper``, adapters made by ``comfy.weight_adapter``), so the model other nodes hold is
never touched, and the forward pass runs through ComfyUI's own sampling machinery (a ``CFGGuider`` with a
training "sampler"), so every architecture's conditioning (SDXL's size embedding, SD3/Flux pooled vectors …)
is prepared by ComfyUI itself.

Noise follows the model's own schedule (``model_sampling``): a sigma is drawn uniformly from the model's sigma
table (for SD1.x/SDXL exactly the paper's "t uniform in {0..999}"), ``x_t = noise_scaling(σ, ε, x0)``, and the
model's output is turned into the look-forward x̂0 by ``calculate_denoised`` (ε, v, flow/CONST, EDM alike).
The DreamBooth term is the MSE in the model's own prediction space, recovered from x̂0 without knowing the type:
``calculate_denoised`` is affine in the output, x̂0 = A(σ)·x_t + B(σ)·out, so out − target = (x̂0 − x0)/B(σ) with
B(σ) = calculate_denoised(σ, 1, 0).

γ^t: the sampled sigma's timestep ``model_sampling.timestep(σ)`` is normalised between the timesteps of the
model's smallest and largest sigma and put on the paper's 1000-step scale, t = 999·frac (see README,
"Personalize in Graph": ε/v discrete models t is the DDPM index itself; flow models t ≈ 999·σ).

Rewards through the learned critic (``trainers/reward_critic.py``, the same term as the file-based back-end): x̂0
is decoded by a copy of the graph's VAE (no gradient) and scored every K steps; the td target's next state on the
deterministic chain is t' = t − hop on the same 1000-step scale, σ' its sigma (:func:`sigma_at`), ε̂ from x_t and
x̂0 through the model's own (linear) ``noise_scaling``, and x̂0 at σ' from one more no-grad model call
(:func:`chain_step`).

ComfyUI is imported only when training runs (``import comfy`` inside the functions).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .. import bridge
from ..fileio import atomic_save, atomic_write_text, safe_output_path
from . import dpg_objective as O
from . import reward_critic as RC
from . import run_folder

log = logging.getLogger("rewardloop")

TARGETS = ("attention", "linear", "all")
TE_TOWERS = ("clip_l", "clip_g", "clip_h")          # text-encoder LoRA: CLIP towers only (never T5 / LLMs)
TE_LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


# ====================================================================== schedule maths (any model_sampling)
def _t(x, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float32, device=like.device)


def time_fraction(model_sampling, sigma: torch.Tensor) -> torch.Tensor:
    """The sampled sigma's place in the model's schedule, 0 (least noise) … 1 (most), from its own timestep map.

    frac = (timestep(σ) − timestep(σ_min)) / (timestep(σ_max) − timestep(σ_min)).
    """
    sigma = sigma.float()
    lo = model_sampling.timestep(_t(model_sampling.sigma_min, sigma).reshape(1)).float()
    hi = model_sampling.timestep(_t(model_sampling.sigma_max, sigma).reshape(1)).float()
    ts = model_sampling.timestep(sigma).float()
    return ((ts - lo) / (hi - lo)).clamp(0, 1)


def paper_timestep(model_sampling, sigma: torch.Tensor) -> torch.Tensor:
    """t on the paper's 1000-step scale (what γ^t discounts): 999·time_fraction(σ)."""
    return time_fraction(model_sampling, sigma) * (O.PAPER_TIMESTEPS - 1)


def prediction_scale(model_sampling, sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """B(σ) per sample, with x̂0 = A(σ)·x_t + B(σ)·output (``calculate_denoised`` is affine in the output)."""
    one = torch.ones_like(like[:, :1, ...], dtype=torch.float32)
    b = model_sampling.calculate_denoised(sigma.float(), one, torch.zeros_like(one))
    return b.flatten(1)[:, 0]


def native_mse(model_sampling, sigma: torch.Tensor, x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE in the model's prediction space (ε, v, flow velocity …) from x̂0: mean((x̂0−x0)²)/B(σ)²."""
    b = prediction_scale(model_sampling, sigma, x0).to(x0_hat.device)
    return O.per_sample_mse(x0_hat, x0) / (b.float() ** 2).clamp_min(1e-12)


def sigma_at(model_sampling, t: torch.Tensor, iters: int = 60) -> torch.Tensor:
    """The inverse of :func:`paper_timestep`: σ at paper timestep t (0 … 999) of the model's own schedule.

    Through ``model_sampling.sigma`` where it inverts ``timestep`` on the model's own sigma table (discrete ε/v
    models: σ of a table index, log-interpolated between; EDM), else by bisection on log σ against ``timestep``
    (flow models: ComfyUI's ``sigma(timestep)`` applies the shift a second time, so it is not the inverse)."""
    t = t.float()
    s_min = _t(model_sampling.sigma_min, t).reshape(1)
    s_max = _t(model_sampling.sigma_max, t).reshape(1)
    lo_ts, hi_ts = model_sampling.timestep(s_min).float(), model_sampling.timestep(s_max).float()
    want = lo_ts + (t / (O.PAPER_TIMESTEPS - 1)).clamp(0, 1) * (hi_ts - lo_ts)
    table = model_sampling.sigmas.float().to(t.device)
    if torch.allclose(model_sampling.sigma(model_sampling.timestep(table)).float(), table, rtol=1e-4):
        return model_sampling.sigma(want).float()
    lo, hi = s_min.log().expand_as(want).clone(), s_max.log().expand_as(want).clone()
    for _ in range(int(iters)):
        mid = (lo + hi) / 2
        below = model_sampling.timestep(mid.exp()).float() < want
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return ((lo + hi) / 2).exp()


def chain_step(model_sampling, sigma: torch.Tensor, x_t: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor,
               hop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One deterministic (DDIM, η = 0) step back along the denoising chain, for any prediction type.

    ``noise_scaling`` is linear, x_t = a(σ)·ε + b(σ)·x0, so ε̂ = (x_t − b(σ)·x̂0)/a(σ); the next state is
    x_{t'} = noise_scaling(σ', ε̂, x̂0) with t' = t − hop. Returns (σ', ε̂, t'), t' = −1 where the chain ends."""
    like = x0_hat.float()
    sig = sigma.float().to(like.device)
    one, zero = torch.ones_like(like[:, :1]), torch.zeros_like(like[:, :1])
    a = model_sampling.noise_scaling(sig, one, zero, False)
    b = model_sampling.noise_scaling(sig, zero, one, False)
    eps_hat = (x_t.float() - b * like) / a
    t2 = t.float() - float(hop)
    sig2 = sigma_at(model_sampling, t2.clamp(min=0).to(like.device))
    return sig2, eps_hat, torch.where(t2 >= 0, t2, torch.full_like(t2, -1.0))


def sample_sigmas(model_sampling, n: int, generator: torch.Generator) -> torch.Tensor:
    """n sigmas drawn uniformly from the model's own sigma table (SD: t uniform in {0..999})."""
    table = model_sampling.sigmas
    idx = torch.randint(0, int(table.shape[0]), (int(n),), generator=generator)
    return table.detach().float().cpu()[idx]


# ====================================================================== configuration
@dataclass
class GraphTrainConfig:
    steps: int = 500
    lr: float = 1e-4
    rank: int = 8
    alpha: float | None = None          # None = rank (scale 1)
    targets: str = "attention"          # attention | linear | all (every ≥2-D weight, the core trainer's set)
    batch_size: int = 1
    gradient_checkpointing: bool = True
    training_dtype: str = "fp32"        # fp32 | bf16 | fp16 (autocast; LoRA weights stay fp32)
    offload: bool = False               # let ComfyUI load the model partially (low-VRAM streaming)
    train_text_encoder: bool = False
    seed: int = 0
    save_every: int = 100
    grad_clip: float = 1.0
    save_dtype: str = "fp16"
    sample_steps: int = 20
    sample_cfg: float = 5.0

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1 (got {self.steps}).")
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1 (got {self.rank}).")
        if not (self.lr > 0):
            raise ValueError(f"lr must be > 0 (got {self.lr}).")
        if self.targets not in TARGETS:
            raise ValueError(f"targets must be one of {', '.join(TARGETS)} (got {self.targets!r}).")
        if self.training_dtype not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"training dtype must be fp32, bf16 or fp16 (got {self.training_dtype!r}).")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1 (got {self.batch_size}).")


def config_from_preset(preset_name: str | None, device: torch.device, **overrides) -> GraphTrainConfig:
    """The file-based node's VRAM presets (``dpg.PRESETS``) mapped to the in-graph switches; 8GB also offloads."""
    from .dpg import resolve_preset
    p = resolve_preset(preset_name, device)
    dtype = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}[p.mixed_precision]
    cfg = GraphTrainConfig(rank=p.rank, batch_size=p.batch_size, gradient_checkpointing=p.gradient_checkpointing,
                           training_dtype=dtype, offload=p.name == "8GB", train_text_encoder=p.train_text_encoder)
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


# ====================================================================== LoRA modules on a model patcher
class _Fresh(torch.nn.Module):
    """Identity weight wrapper: makes ComfyUI cast (copy) a frozen weight, so autograd never holds the graph's
    inference-mode tensors (ComfyUI loads models under ``torch.inference_mode``)."""

    def __call__(self, w):
        return w

    def passive_memory_usage(self):
        return 0

    def move_to(self, device):
        return 0


class _LoraWrapper(torch.nn.Module):
    """w + (α/r)·up·down, computed on the weight's device and dtype (offloaded weights arrive on the GPU)."""

    def __init__(self, diff):
        super().__init__()
        self.diff = diff  # comfy.weight_adapter.lora.LoraDiff: lora_up, lora_down, alpha

    def __call__(self, w):
        d = self.diff
        delta = (d.lora_up.weight @ d.lora_down.weight) * (d.alpha / d.rank)
        return (w.float() + delta.to(w.device).reshape(w.shape).float()).to(w.dtype)

    def passive_memory_usage(self):
        return sum(p.numel() * p.element_size() for p in self.diff.parameters())

    def move_to(self, device):
        return self.passive_memory_usage()  # LoRA weights stay where the optimizer holds them


def _is_target(name: str, module, targets: str) -> bool:
    w = getattr(module, "weight", None)
    if w is None or w.dim() < 2 or isinstance(module, torch.nn.Embedding):
        return False
    linear = isinstance(module, torch.nn.Linear)
    if targets == "all":
        return True
    if targets == "linear":
        return linear
    return linear and ("attn" in name or "attention" in name)


def _te_target(name: str, module) -> bool:
    return (name.split(".")[0] in TE_TOWERS and any(name.endswith(s) for s in TE_LAYERS)
            and isinstance(module, torch.nn.Linear))


class LoraSet:
    """Trainable LoRA adapters on one model patcher (UNet/DiT or CLIP), saved under ``prefix`` (ComfyUI's generic
    LoRA keys: ``diffusion_model.<module>`` / ``text_encoders.<module>``, which core LoraLoader maps 1:1)."""

    def __init__(self, patcher, root: torch.nn.Module, select, rank: int, alpha: float, file_prefix: str,
                 fresh_scope=None, device=None):
        from comfy.weight_adapter.lora import LoRAAdapter
        self.diffs: dict[str, torch.nn.Module] = {}
        self.file_prefix = file_prefix
        for name, m in root.named_modules():
            if not hasattr(m, "weight_function"):
                continue
            if select(name, m):
                diff = LoRAAdapter.create_train(torch.empty(m.weight.shape), rank=int(rank), alpha=float(alpha))
                diff = diff.to(device or "cpu", torch.float32)
                diff.alpha.requires_grad_(False)
                self.diffs[name] = diff
                patcher.add_weight_wrapper(f"{name}.weight", _LoraWrapper(diff))
            elif (fresh_scope is None or fresh_scope(name)) and getattr(m, "weight", None) is not None:
                patcher.add_weight_wrapper(f"{name}.weight", _Fresh())
            if (fresh_scope is None or fresh_scope(name)) and getattr(m, "bias", None) is not None:
                patcher.add_weight_wrapper(f"{name}.bias", _Fresh())
        if not self.diffs:
            raise ValueError("No layer of this model matches the LoRA targets: choose targets 'linear' or 'all'.")

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for d in self.diffs.values() for p in (d.lora_up.weight, d.lora_down.weight)]

    def state_dict(self, dtype=torch.float32) -> dict[str, torch.Tensor]:
        """The LoRA in ComfyUI's file format: ``<prefix><module>.lora_up.weight / .lora_down.weight / .alpha``."""
        out = {}
        for name, d in self.diffs.items():
            key = self.file_prefix + name
            out[f"{key}.lora_up.weight"] = d.lora_up.weight.detach().to("cpu", dtype).contiguous()
            out[f"{key}.lora_down.weight"] = d.lora_down.weight.detach().to("cpu", dtype).contiguous()
            out[f"{key}.alpha"] = d.alpha.detach().to("cpu", torch.float32).reshape(())
        return out

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        want = {k for k in self.state_dict() if not k.endswith(".alpha")}
        have = {k for k in sd if k.startswith(self.file_prefix) and not k.endswith(".alpha")}
        if want != have:
            raise ValueError("The checkpoint's LoRA does not match this setup (different model, rank, targets or "
                             "text-encoder switch): train under a new output name, or set resume off.")
        with torch.no_grad():
            for name, d in self.diffs.items():
                key = self.file_prefix + name
                d.lora_up.weight.copy_(sd[f"{key}.lora_up.weight"])
                d.lora_down.weight.copy_(sd[f"{key}.lora_down.weight"])


def _checkpointing(root: torch.nn.Module, on: bool) -> None:
    """Gradient checkpointing on the model's top-level blocks (each block recomputed in backward)."""
    import torch.utils.checkpoint as cp
    blocks = []

    def walk(m):
        for child in m.children():
            if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential, torch.nn.ModuleDict)):
                walk(child)
            else:
                blocks.append(child)
    walk(root)
    for b in blocks:
        if on and not hasattr(b, "_rl_forward"):
            fwd = b.forward
            b._rl_forward = fwd
            b.forward = (lambda f: (lambda *a, **k: cp.checkpoint(lambda a, k: f(*a, **k), a, k,
                                                                   use_reentrant=False)))(fwd)
        elif not on and hasattr(b, "_rl_forward"):
            b.forward = b._rl_forward
            del b._rl_forward


def _clone_norm_inputs(root: torch.nn.Module, scope) -> list:
    """ComfyUI's CLIP adds residuals in place (``x += attn(norm(x))``), which autograd refuses once ``norm`` saved
    ``x``: give each norm in ``scope`` a copy of its input while the text encoder trains. Returns the hook handles."""
    hooks = []
    for name, m in root.named_modules():
        if scope(name) and isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
            hooks.append(m.register_forward_pre_hook(lambda _m, args: tuple(
                a.clone() if isinstance(a, torch.Tensor) and a.requires_grad else a for a in args)))
    return hooks


def _swap_inference_vectors(root: torch.nn.Module) -> list:
    """Norm scales of modules outside ComfyUI's ops (no ``weight_function``, e.g. MMDiT's q/k RMSNorm) are used
    as they are, and autograd refuses inference-mode tensors: swap each such 1-D inference parameter for an equal
    ordinary copy while training. Returns what :func:`_restore` puts back (values never change)."""
    swapped = []
    with torch.inference_mode(False):
        for m in root.modules():
            if hasattr(m, "weight_function"):
                continue
            for name, p in list(m._parameters.items()):
                if p is not None and p.dim() <= 1 and p.is_inference():
                    m._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
                    swapped.append((m, name, p))
    return swapped


def _restore(swapped: list) -> None:
    for m, name, p in swapped:
        m._parameters[name] = p


def _trainable_copy(module: torch.nn.Module, device) -> torch.nn.Module:
    """A frozen private copy of a ComfyUI module (the VAE for the DINO term) that autograd can run through."""
    import copy

    from .loop import normalize_inference_tensors
    with torch.inference_mode(False):
        m = copy.deepcopy(module)
    normalize_inference_tensors(m)
    return m.requires_grad_(False).to(device)


def _clone_tensors(obj):
    """Copies of every tensor in a (nested) cond structure: ComfyUI made them under inference mode."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _clone_tensors(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone_tensors(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_clone_tensors(v) for v in obj)
    if hasattr(obj, "cond") and isinstance(getattr(obj, "cond"), torch.Tensor):  # comfy.conds.CONDRegular & co
        import copy
        o = copy.copy(obj)
        o.cond = obj.cond.clone()
        return o
    return obj


# ====================================================================== images, prompts, fingerprints
def fit_images(images: torch.Tensor, resolution: int, center_crop: bool = True) -> torch.Tensor:
    """IMAGE [B,H,W,C] → [B,res,res,C]: centre crop to square (or squash), then resize (antialiased)."""
    import torch.nn.functional as F
    x = images[..., :3].movedim(-1, 1).float()
    if center_crop:
        h, w = x.shape[-2:]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        x = x[..., top:top + s, left:left + s]
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1).movedim(1, -1)


def encode_prompt(clip, text: str):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def model_fingerprint(model) -> str:
    """Identifies the graph's model (architecture, a few weights, the LoRA/merge patches on it) for caches."""
    h = hashlib.sha1()
    m = model.model
    h.update(type(m).__name__.encode())
    h.update(json.dumps(getattr(m.model_config, "unet_config", {}), sort_keys=True, default=str).encode())
    sd = [(k, v) for k, v in m.diffusion_model.state_dict().items() if v.is_floating_point()]
    for k, v in sd[:3] + sd[-3:]:
        h.update(f"{k}:{float(v.float().sum()):.6e}".encode())
    for k in sorted(model.patches):
        h.update(f"{k}:{[(p[0], p[2]) for p in model.patches[k]]}".encode())
    return h.hexdigest()[:16]


# ====================================================================== sampling with ComfyUI
def sample_images(model, clip, vae, prompts: list[str], seed: int, steps: int, cfg: float, resolution: int,
                  negative: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """txt2img with ComfyUI's own sampler (euler, normal schedule): (IMAGE [B,H,W,3], latents)."""
    import comfy.sample
    neg = encode_prompt(clip, negative)
    ch = model.model.latent_format.latent_channels
    down = 8
    imgs, lats = [], []
    for i, p in enumerate(prompts):
        lat = torch.zeros(1, ch, resolution // down, resolution // down)
        noise = comfy.sample.prepare_noise(lat, int(seed) + i)
        out = comfy.sample.sample(model, noise, int(steps), float(cfg), "euler", "normal", encode_prompt(clip, p),
                                  neg, lat, seed=int(seed) + i, disable_pbar=True)
        lats.append(out)
        imgs.append(vae.decode(out)[..., :3])
    return torch.cat(imgs).float().cpu(), torch.cat(lats).float().cpu()


def class_latents(model, clip, vae, class_prompt: str, n: int, resolution: int, seed: int, steps: int,
                  cache_dir: Path, cfg: float = 5.0) -> torch.Tensor:
    """Prior-preservation latents (VAE space) of ``class_prompt`` from the graph's base model, cached by
    (prompt, n, resolution, seed, steps, model fingerprint)."""
    from safetensors.torch import load_file, save_file
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"prompt": class_prompt, "n": int(n), "resolution": int(resolution), "seed": int(seed),
                "steps": int(steps), "cfg": float(cfg), "model": model_fingerprint(model)}
    f, mf = cache_dir / "class_latents.safetensors", cache_dir / "class_latents.json"
    if f.is_file() and mf.is_file():
        try:
            if json.loads(mf.read_text()) == manifest:
                return load_file(str(f))["latents"]
        except ValueError:
            pass
    lats = []
    for i in range(int(n)):
        bridge.check_interrupt()
        _img, lat = sample_images(model, clip, vae, [class_prompt], seed * 1000 + i, steps, cfg, resolution)
        lats.append(lat)
    out = torch.cat(lats)
    atomic_save(f, lambda tmp: save_file({"latents": out.contiguous()}, tmp))
    atomic_write_text(mf, json.dumps(manifest))
    return out


# ====================================================================== one forward: x_t → x̂0
def look_forward(model_wrap, conds, x0, sigma, noise, extra_args, training_dtype: str = "fp32"):
    """x_t = noise_scaling(σ, ε, x0); x̂0 = the model's denoised output (``calculate_denoised``) through ComfyUI's
    own conditioning path (``model_wrap`` is the guider inside ``sampler.sample``). Returns (x_t, x̂0 fp32, σ)."""
    ms = model_wrap.inner_model.model_sampling
    sig = sigma.to(x0.device)
    x_t = ms.noise_scaling(sig, noise, x0, False)
    model_wrap.conds["positive"] = conds
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(training_dtype)
    if dtype is not None:
        with torch.autocast(x0.device.type, dtype=dtype):
            x0_hat = model_wrap(x_t, sig, **extra_args)
    else:
        x0_hat = model_wrap(x_t, sig, **extra_args)
    return x_t, x0_hat.float(), sig


class _OneForward:
    def __init__(self, sigma, noise):
        self.sigma, self.noise, self.out = sigma, noise, None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        conds = _clone_tensors(model_wrap.conds["positive"])
        with torch.no_grad():
            self.out = look_forward(model_wrap, conds, latent_image, self.sigma, self.noise.to(latent_image),
                                    extra_args)
        return torch.zeros_like(latent_image)


def predict_x0(model, cond, latents: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor):
    """The trainer's look-forward step on its own: (x_t, x̂0, σ) for VAE-space ``latents`` (model space inside)."""
    import comfy.samplers
    guider = comfy.samplers.CFGGuider(model)
    guider.inner_set_conds({"positive": cond})
    runner = _OneForward(sigma, noise)
    with torch.inference_mode(False):
        guider.sample(torch.zeros_like(latents), latents, runner, torch.arange(2, dtype=torch.float32), seed=0)
    return runner.out


# ====================================================================== the training "sampler"
class _TrainingSampler:
    """Runs the DPG training loop where a ComfyUI sampler would run its denoising loop (``sampler.sample``)."""

    def __init__(self, job: "_Job"):
        self.job = job

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        self.job.loop(model_wrap, extra_args, noise, latent_image)
        return torch.zeros_like(latent_image)


@dataclass
class GraphTrainResult:
    model: object
    clip: object
    lora_sd: dict
    lora_file: Path | None
    lora_name: str
    steps_done: int
    losses: list
    log_csv: Path
    loss_plot: Path | None
    run_dir: Path


class _Job:
    """One training run: state shared between the node-side setup and the loop inside ComfyUI's sampler."""

    def __init__(self, mp, clip_tr, cfg: GraphTrainConfig, weights, run_dir: Path, n_inst: int, n_class: int,
                 inst_text: str, class_text: str, unet_lora: LoraSet, te_lora: LoraSet | None, vae,
                 ref_feats_fn, progress, reward: RC.RewardCriticTerm | None = None):
        self.mp, self.clip, self.cfg, self.w, self.run_dir = mp, clip_tr, cfg, weights, run_dir
        self.n_inst, self.n_class = n_inst, n_class
        self.inst_text, self.class_text = inst_text, class_text
        self.unet_lora, self.te_lora, self.vae = unet_lora, te_lora, vae
        self.ref_feats_fn = ref_feats_fn
        self.progress = progress
        self.params = unet_lora.parameters() + (te_lora.parameters() if te_lora else [])
        self.optimizer = torch.optim.AdamW(self.params, lr=float(cfg.lr), betas=(0.9, 0.999), weight_decay=1e-2,
                                           eps=1e-8)
        self.gen = torch.Generator().manual_seed(int(cfg.seed))
        self.step = 0
        self.losses: list[float] = []
        self.critic = None
        self.critic_opt = None
        self.critic_state = None
        self.dino = None
        self.ref_feats = None
        self.reward = reward
        self.log_csv = run_dir / "log.csv"

    # ---------------------------------------------------------------- checkpoints
    def _sig(self) -> dict:
        sig = {"model": type(self.mp.model).__name__, "rank": self.cfg.rank, "targets": self.cfg.targets,
               "te": self.te_lora is not None, "weights": asdict(self.w)}
        if self.reward is not None:  # only then: runs without rewards keep resuming older checkpoints
            sig["reward"] = self.reward.settings()
        return sig

    def save(self) -> Path:
        ck = self.run_dir / "checkpoints"
        ck.mkdir(parents=True, exist_ok=True)
        sd = self.unet_lora.state_dict()
        if self.te_lora:
            sd.update(self.te_lora.state_dict())
        state = {"lora": sd, "optimizer": self.optimizer.state_dict(), "step": self.step,
                 "gen": self.gen.get_state(), "losses": torch.tensor(self.losses, dtype=torch.float64),
                 "critic": ({k: v.detach().cpu().clone() for k, v in self.critic.state_dict().items()}
                            if self.critic is not None else {}),
                 "critic_opt": self.critic_opt.state_dict() if self.critic_opt is not None else {},
                 "reward": self.reward.state_dict() if self.reward is not None else {},
                 "sig": json.dumps(self._sig(), sort_keys=True)}
        p = ck / f"ingraph_step_{self.step:07d}.pt"
        atomic_save(p, lambda tmp: torch.save(state, tmp))
        for old in sorted(ck.glob("ingraph_step_*.pt"))[:-2]:
            old.unlink(missing_ok=True)
        return p

    def resume(self) -> bool:
        cks = sorted((self.run_dir / "checkpoints").glob("ingraph_step_*.pt"))
        if not cks:
            return False
        st = torch.load(cks[-1], map_location="cpu", weights_only=True)
        if st.get("sig") != json.dumps(self._sig(), sort_keys=True):
            raise ValueError(f"The run folder {self.run_dir} holds a checkpoint of different settings (model, rank, "
                             "targets, text-encoder switch, loss weights or rewards): use a new output name, the "
                             "same settings, or resume off.")
        self.unet_lora.load_state_dict(st["lora"])
        if self.te_lora:
            self.te_lora.load_state_dict(st["lora"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.step = int(st["step"])
        self.gen.set_state(st["gen"])
        self.losses = [float(x) for x in st["losses"].tolist()]
        self.critic_state = (st["critic"], st["critic_opt"]) if st.get("critic") else None
        if self.reward is not None:
            self.reward.load_state_dict(st.get("reward") or {})   # applied at its setup (critic, cache, generator)
        log.info("RewardLoop in-graph DPG: resumed %s at step %d", self.run_dir, self.step)
        return True

    # ---------------------------------------------------------------- conditioning
    def _conds(self, model_wrap, noise, latent_image):
        """Processed conds [instance, class] for this step (re-encoded with gradients when the TE is trained)."""
        if self.te_lora is None:
            return self._static
        import comfy.sampler_helpers
        import comfy.samplers
        out = []
        for text in (self.inst_text, self.class_text):
            if text is None:
                out.append(None)
                continue
            raw = comfy.sampler_helpers.convert_cond(encode_prompt(self.clip, text))
            conds = comfy.samplers.process_conds(model_wrap.inner_model, noise, {"positive": raw}, noise.device,
                                                 latent_image, None, int(self.cfg.seed))
            out.append(conds["positive"])
        return out

    def _forward(self, model_wrap, conds, x0, sigma, noise_b, extra_args):
        ms = model_wrap.inner_model.model_sampling
        x_t, x0_hat, sig = look_forward(model_wrap, conds, x0, sigma, noise_b, extra_args, self.cfg.training_dtype)
        self._last = (x_t, sig)
        return x0_hat, native_mse(ms, sig, x0_hat, x0), paper_timestep(ms, sig)

    def _stash_rewards(self, model_wrap, conds, extra_args, x0, x0_hat, t, idx):
        """This step's samples for the reward critic (scored after the optimizer step), with the way to their next
        state on the chain for the td target."""
        nxt = None
        if self.reward.cfg.target == "td":
            ms = model_wrap.inner_model.model_sampling
            x_t, sig = (v.detach() for v in self._last)
            x0d, conds_d, hop = x0_hat.detach(), _clone_tensors(conds), int(self.reward.cfg.td_hop)

            def nxt():
                sig2, eps_hat, t2 = chain_step(ms, sig, x_t, x0d, t.detach(), hop)
                with torch.no_grad():
                    _x, x0_next, _s = look_forward(model_wrap, conds_d, x0d, sig2, eps_hat, extra_args,
                                                   self.cfg.training_dtype)
                return x0_next, t2
        self.reward.stash(x0_hat, t, x0, [self.inst_text] * int(x0.shape[0]), idx, nxt)

    def _setup_critic(self, latent_image):
        from .dpg import Critic
        if self.w.critic > 0 and self.critic is None:
            g = torch.random.get_rng_state()
            torch.manual_seed(int(self.cfg.seed) + 1)
            c, h, w = latent_image.shape[1:4]
            self.critic = Critic(int(c), int(h), int(w)).to(latent_image.device)
            torch.random.set_rng_state(g)
            self.critic_opt = torch.optim.SGD(self.critic.parameters(), lr=float(self.w.critic_lr))
            if self.critic_state:
                self.critic.load_state_dict(self.critic_state[0])
                self.critic_opt.load_state_dict(self.critic_state[1])

    # ---------------------------------------------------------------- the loop
    def loop(self, model_wrap, extra_args, noise, latent_image):
        from . import lora as L
        static = _clone_tensors(model_wrap.conds["positive"])
        n_ic = len(static) // (2 if self.n_class else 1)
        self._static = [static[:n_ic], static[n_ic:] if self.n_class else None]
        latent_image = latent_image.detach().clone()
        inst_lat, class_lat = latent_image[:self.n_inst], latent_image[self.n_inst:]
        self._setup_critic(latent_image)
        decode = None
        dino_reward = self.reward is not None and any(isinstance(s, RC.DinoSource) for s in self.reward.sources)
        if self.w.dino > 0 or dino_reward:
            self.ref_feats = self.ref_feats_fn()
        if self.w.dino > 0 or self.reward is not None:
            fsm = _trainable_copy(self.vae.first_stage_model, latent_image.device)

            def decode(x0_hat):
                z = model_wrap.inner_model.process_latent_out(x0_hat)
                p = next(fsm.parameters())
                return fsm.decode(z.to(p.device, p.dtype)).float()
        if self.reward is not None:
            for src in self.reward.sources:
                if isinstance(src, RC.DinoSource):
                    src.features, src.ref_feats = self.dino, self.ref_feats
            self.reward.setup(int(latent_image.shape[1]), latent_image.device, int(self.cfg.seed))
        bs = int(self.cfg.batch_size)
        start = time.time()
        first = self.step
        if first and self.progress is not None:  # resumed: the bar starts where the checkpoint left off
            self.progress.update(first)
        try:
            while self.step < int(self.cfg.steps):
                conds = self._conds(model_wrap, noise, latent_image)
                idx = torch.randint(0, self.n_inst, (bs,), generator=self.gen)
                x0 = inst_lat[idx]
                eps = torch.randn(x0.shape, generator=self.gen).to(x0.device, x0.dtype)
                sigma = sample_sigmas(model_wrap.inner_model.model_sampling, bs, self.gen)
                x0_hat, native, t = self._forward(model_wrap, conds[0], x0, sigma, eps, extra_args)
                terms = O.instance_loss(self.w, native, x0_hat, x0, t, critic=self.critic,
                                        decode=decode if self.w.dino > 0 else None, dino=self.dino,
                                        ref_feats=(self.ref_feats[idx] if self.ref_feats is not None and self.w.dino > 0
                                                   else None))
                total, metrics = terms.loss, dict(terms.metrics)
                if self.reward is not None:   # any reward through the learned critic
                    r_loss, r_metrics = self.reward.actor(x0_hat, t, O.discount(t, self.w.gamma), ref=x0)
                    total = total + r_loss
                    metrics.update(r_metrics)
                    if self.reward.wants_rewards(self.step):
                        self._stash_rewards(model_wrap, conds[0], extra_args, x0, x0_hat, t, idx)
                if total.requires_grad:
                    total.backward()
                loss = float(total.detach())
                if self.n_class and self.w.prior > 0:
                    cidx = torch.randint(0, self.n_class, (bs,), generator=self.gen)
                    cx0 = class_lat[cidx]
                    ceps = torch.randn(cx0.shape, generator=self.gen).to(cx0.device, cx0.dtype)
                    csig = sample_sigmas(model_wrap.inner_model.model_sampling, bs, self.gen)
                    _xh, cnative, _t = self._forward(model_wrap, conds[1], cx0, csig, ceps, extra_args)
                    pt = O.prior_loss(self.w, cnative)
                    pt.loss.backward()
                    metrics.update(pt.metrics)
                    loss += float(pt.loss.detach())
                if self.cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.params, float(self.cfg.grad_clip))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if terms.critic_input is not None:
                    metrics["critic_loss"] = O.critic_regression(self.critic, self.critic_opt, terms.critic_input)
                if self.reward is not None:
                    with torch.no_grad():
                        metrics.update(self.reward.update(decode, latent_image.device))
                self.step += 1
                self.losses.append(loss)
                L._append_csv(self.log_csv, {"step": self.step, "loss": loss, **metrics,
                                             "time": round(time.time() - start, 3)})
                if self.cfg.save_every and self.step % int(self.cfg.save_every) == 0 and self.step < self.cfg.steps:
                    self.save()
                if self.progress is not None:
                    eta = (time.time() - start) / max(1, self.step - first) * (self.cfg.steps - self.step)
                    self.progress.update(1, postfix={"loss": f"{loss:.4f}", "eta": f"{eta:.0f}s"})
                else:
                    bridge.check_interrupt()
        except bridge.interrupt_exceptions():
            if self.step > first:
                p = self.save()
                log.warning("RewardLoop in-graph DPG interrupted at step %d: checkpoint %s (run again with the same "
                            "output name to resume)", self.step, p)
            raise


# ====================================================================== one call: the node's entry point
def personalize_in_graph(model, clip, vae, references: torch.Tensor, trigger: str, class_prompt: str,
                         instance_prompt: str | None = None, class_images: torch.Tensor | None = None,
                         num_class_images: int = 8, out_name: str = "dpg/in_graph", overwrite: bool = False,
                         mode: str = "look_forward", weights=None, cfg: GraphTrainConfig | None = None,
                         resolution: int = 512, resume: bool = True, progress=None, dino_model: str = "dino-vits16",
                         center_crop: bool = True, sample_prompts: list[str] | None = None,
                         run_dir: Path | None = None, reward: RC.RewardCriticConfig | None = None,
                         reward_models: dict[str, str] | None = None) -> tuple[GraphTrainResult, torch.Tensor | None]:
    """Train a DPG LoRA on the graph's MODEL (+CLIP) and return (result, sample IMAGE batch or None).

    The model/clip/vae passed in are never modified: training uses clones of their patchers, and the returned
    MODEL/CLIP are the inputs with the saved LoRA applied exactly as core LoraLoader applies the file.
    ``reward``: rewards through the learned critic (:mod:`.reward_critic`): scorer objects in its specs (the node's
    SCORER sockets), registry names (loaded with ``reward_models`` as ROLE → model) or ``dino``.
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _personalize_in_graph(model, clip, vae, references, trigger, class_prompt, instance_prompt,
                                     class_images, num_class_images, out_name, overwrite, mode, weights, cfg,
                                     resolution, resume, progress, dino_model, center_crop, sample_prompts, run_dir,
                                     reward, reward_models)


def check_inputs(references, trigger, class_prompt, instance_prompt, resolution, out_name, overwrite):
    """Every cheap check before any model work: one line that says what to change."""
    from .dpg import check_prompts
    from ..rewards.images import check_finite
    if references is None or not isinstance(references, torch.Tensor) or references.shape[0] == 0:
        raise ValueError("No reference images were given: connect a batch of photos of the subject.")
    check_finite(references, "reference IMAGE")
    trigger, instance_prompt = check_prompts(trigger, class_prompt, instance_prompt)
    if int(resolution) < 64 or int(resolution) % 64:
        raise ValueError(f"Resolution {resolution} must be a multiple of 64 (64 … 2048).")
    target = safe_output_path(bridge.loras_dir(), out_name, ".safetensors", overwrite)
    return trigger, instance_prompt, target


def _personalize_in_graph(model, clip, vae, references, trigger, class_prompt, instance_prompt, class_images,
                          num_class_images, out_name, overwrite, mode, weights, cfg, resolution, resume, progress,
                          dino_model, center_crop, sample_prompts, run_dir, reward=None, reward_models=None):
    import comfy.model_management as mm
    import comfy.samplers
    import comfy.sd
    from safetensors.torch import save_file

    from .dpg import DPGWeights, run_dir_for
    trigger, instance_prompt, lora_target = check_inputs(references, trigger, class_prompt, instance_prompt,
                                                         resolution, out_name, overwrite)
    if model is None or clip is None or vae is None:
        raise ValueError("Connect MODEL, CLIP and VAE (e.g. from Load Checkpoint).")
    weights = weights or DPGWeights.for_mode(mode)
    weights.validate()
    cfg = cfg or GraphTrainConfig()
    cfg.validate()
    reward_term = None
    if reward is not None:   # checked, and its registry scorers loaded, before any training work
        reward.validate()
        reward = replace(reward, gamma=weights.gamma if reward.gamma is None else reward.gamma)
        reward_term = RC.RewardCriticTerm(reward, RC.build_sources(reward.rewards, models=reward_models))
    dino_reward = reward is not None and any(s.name == RC.DINO for s in reward.rewards)
    run_dir = Path(run_dir) if run_dir else run_dir_for(Path(out_name).name + "_ingraph")
    with run_folder.claim(run_dir) as claim:  # one run per folder; a failed start leaves nothing behind
        run_dir.mkdir(parents=True, exist_ok=True)
        res = int(resolution)

        # ---- data: reference latents, class latents, prompts (base model, before any LoRA)
        with torch.no_grad():
            pixels = fit_images(references.float(), res, center_crop)
            inst_lat = vae.encode(pixels).float()
            if class_images is not None and isinstance(class_images, torch.Tensor) and class_images.shape[0] > 0:
                class_lat = vae.encode(fit_images(class_images.float(), res, center_crop)).float()
            elif int(num_class_images) > 0 and weights.prior > 0:
                class_lat = class_latents(model, clip, vae, class_prompt, int(num_class_images), res, cfg.seed,
                                          cfg.sample_steps, run_dir / "class_images", cfg.sample_cfg)
            else:
                class_lat = None
            n_class = 0 if class_lat is None else int(class_lat.shape[0])
            inst_cond = encode_prompt(clip, instance_prompt)
            class_cond = encode_prompt(clip, class_prompt) if n_class else []

        # ---- trainable clones: the graph's own objects stay untouched
        mp = model.clone()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.training_dtype)
        if dtype is not None:
            mp.set_model_compute_dtype(dtype)
        alpha = float(cfg.alpha or cfg.rank)
        clip_tr, te_lora = None, None
        with torch.random.fork_rng(devices=[]):  # LoRA init from the seed, without touching the global RNG
            torch.manual_seed(int(cfg.seed))
            unet_lora = LoraSet(mp, mp.model, lambda n, m: n.startswith("diffusion_model.") and
                                _is_target(n, m, cfg.targets), cfg.rank, alpha, "",
                                fresh_scope=lambda n: n.startswith("diffusion_model."), device=mp.load_device)
            if cfg.train_text_encoder:
                clip_tr = clip.clone()
                te_lora = LoraSet(clip_tr.patcher, clip_tr.cond_stage_model, _te_target, cfg.rank, alpha,
                                  "text_encoders.", fresh_scope=lambda n: n.split(".")[0] in TE_TOWERS,
                                  device=clip_tr.patcher.load_device)
        job = _Job(mp, clip_tr, cfg, weights, run_dir, int(inst_lat.shape[0]), n_class, instance_prompt,
                   class_prompt if n_class else None, unet_lora, te_lora, vae, None, progress, reward_term)
        if weights.dino > 0 or dino_reward:
            from .dpg import DINOFeatures
            job.dino = DINOFeatures(dino_model, device=mp.load_device)

            def ref_feats_fn():
                with torch.no_grad():
                    return job.dino((pixels.movedim(-1, 1) * 2 - 1).to(mp.load_device))
            job.ref_feats_fn = ref_feats_fn
        if resume:
            job.resume()
        else:  # a fresh start: an old log or checkpoint of this name must not be resumed later
            (run_dir / "log.csv").unlink(missing_ok=True)
            for old in (run_dir / "checkpoints").glob("ingraph_step_*.pt"):
                old.unlink()

        # ---- while training only: checkpointing, norm-input copies and ordinary norm scales on the shared modules
        te_hooks, swapped = [], []
        try:
            mp.model.requires_grad_(False)  # as core Train LoRA: only the LoRA weights get gradients
            if cfg.gradient_checkpointing:
                _checkpointing(mp.model.diffusion_model, True)
            if te_lora:
                te_hooks = _clone_norm_inputs(clip_tr.cond_stage_model, lambda n: n.split(".")[0] in TE_TOWERS)
                swapped += _swap_inference_vectors(clip_tr.cond_stage_model)
            swapped += _swap_inference_vectors(mp.model.diffusion_model)
            if job.step < cfg.steps:
                load = [mp] + ([vae.patcher] if weights.dino > 0 or reward_term is not None else [])
                if cfg.offload:
                    mm.load_models_gpu(load)
                else:
                    mm.load_models_gpu(load, memory_required=1e20, force_full_load=True)
                guider = comfy.samplers.CFGGuider(mp)
                guider.inner_set_conds({"positive": inst_cond + class_cond})
                guider.set_cfg(1.0)
                data = torch.cat([inst_lat] + ([class_lat] if n_class else []))
                noise = torch.zeros_like(data)
                claim.started()  # from here on, checkpoints are worth keeping
                guider.sample(noise, data, _TrainingSampler(job), torch.arange(2, dtype=torch.float32),
                              seed=int(cfg.seed))
        finally:
            if cfg.gradient_checkpointing:
                _checkpointing(mp.model.diffusion_model, False)
            for h in te_hooks:
                h.remove()
            _restore(swapped)
            # the trainer's clones carry trainable wrappers: take them off the shared models now
            mp.detach()
            if clip_tr is not None:
                clip_tr.patcher.detach()

        # ---- export: ComfyUI's LoRA format in models/loras, atomically
        from . import lora as L
        sdt = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.save_dtype, torch.float32)
        lora_sd = unet_lora.state_dict(sdt)
        if te_lora:
            lora_sd.update(te_lora.state_dict(sdt))
        meta = {"rewardloop_backend": "comfy_graph", "ss_network_dim": str(cfg.rank), "ss_network_alpha": str(alpha),
                "trigger": trigger, "instance_prompt": instance_prompt, "class_prompt": class_prompt,
                "steps": str(job.step), "objective": json.dumps(asdict(weights)), "resolution": str(res),
                "seed": str(cfg.seed), "lr": str(cfg.lr), "targets": cfg.targets, "model": type(model.model).__name__,
                "ss_output_name": Path(out_name).name}
        if reward_term is not None:
            meta["rewards"] = json.dumps(reward_term.settings()["rewards"])
        lora_target = safe_output_path(bridge.loras_dir(), out_name, ".safetensors", overwrite)
        lora_target.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(lora_target, lambda tmp: save_file(lora_sd, tmp, metadata=meta))
        plot = L.plot_loss(job.log_csv, run_dir / "loss.png", title=f"in-graph DPG ({mode})")
        rel = lora_target.resolve().relative_to(Path(bridge.loras_dir()).resolve()).as_posix()

        # ---- the graph's model with the saved LoRA applied, the way core LoraLoader applies the file
        model_out, clip_out = comfy.sd.load_lora_for_models(model, clip if te_lora else None, lora_sd, 1.0, 1.0)
        clip_out = clip_out if te_lora else clip
        samples = None
        if sample_prompts is None:
            sample_prompts = [instance_prompt, f"{instance_prompt} on the beach"]
        if sample_prompts:
            with torch.no_grad():
                samples, _ = sample_images(model_out, clip_out, vae, list(sample_prompts), cfg.seed,
                                           cfg.sample_steps, cfg.sample_cfg, res)
        result = GraphTrainResult(model=model_out, clip=clip_out, lora_sd=lora_sd, lora_file=lora_target, lora_name=rel,
                                  steps_done=job.step, losses=job.losses, log_csv=job.log_csv, loss_plot=plot,
                                  run_dir=run_dir)
        return result, samples
