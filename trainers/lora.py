"""The shared LoRA training core (ComfyUI-free): base-model loading, peft LoRA, the training loop, export.

Used by DPG personalization (``trainers/dpg.py``) and reward-ranked fine-tuning. Public API (stable):

* :class:`LoraConfig`, :class:`TrainConfig`
* :func:`load_base` → :class:`SDComponents` (diffusers folder, catalogue key / name, or a single-file
  SD1.x / SD2.x / SDXL checkpoint, offline with the configs bundled in ``weights/configs``)
* :func:`add_lora`, :func:`lora_state_dict` (kohya names), :func:`load_lora_into`, :func:`export_lora`
* :class:`Objective` protocol, :class:`NoiseMSE`
* :func:`train_lora` → :class:`TrainResult`; :func:`generate`

The loop runs single-process or under ``accelerate launch`` unchanged (``accelerate.Accelerator``), leaves
``torch.inference_mode`` itself, saves resumable checkpoints (LoRA + optimizer + lr scheduler + RNG + step +
objective state) atomically, and stops cleanly on an interrupt (saving a checkpoint first).
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import bridge
from ..fileio import atomic_save, atomic_write_text, safe_output_path

log = logging.getLogger("rewardloop")

CONFIG_DIR = Path(__file__).resolve().parent.parent / "weights" / "configs"


# ====================================================================== configs
@dataclass
class LoraConfig:
    rank: int = 8
    alpha: float | None = None          # None = rank (scale 1.0)
    targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    train_text_encoder: bool = False
    text_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    dropout: float = 0.0

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)

    def validate(self) -> None:
        if int(self.rank) < 1:
            raise ValueError(f"LoRA rank must be >= 1 (got {self.rank}).")
        if not self.targets:
            raise ValueError("LoRA targets are empty: name at least one UNet module, e.g. to_q.")


@dataclass
class TrainConfig:
    steps: int = 500
    lr: float = 1e-4
    batch_size: int = 1
    grad_accum: int = 1
    mixed_precision: str = "no"         # no | fp16 | bf16
    gradient_checkpointing: bool = False
    resolution: int = 512
    seed: int = 0
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    save_every: int = 100
    sample_every: int = 0
    sample_prompts: tuple[str, ...] = ()
    max_grad_norm: float = 1.0
    cache_latents: bool = True
    # extras (all optional)
    weight_decay: float = 1e-2
    sample_steps: int = 20
    sample_cfg: float = 7.5
    keep_checkpoints: int = 2
    center_crop: bool = True
    eval_seed: int | None = None        # when set: objective loss on a fixed draw before and after training
    timestep_range: tuple[int, int] | None = None  # (lo, hi) inclusive, default: all training timesteps
    fixed_draw: bool = False            # every step the same batch/noise/t (overfit checks in tests)

    def validate(self) -> None:
        if int(self.steps) < 1:
            raise ValueError(f"steps must be >= 1 (got {self.steps}).")
        if not (self.lr > 0):
            raise ValueError(f"learning rate must be > 0 (got {self.lr}).")
        if int(self.batch_size) < 1 or int(self.grad_accum) < 1:
            raise ValueError("batch_size and grad_accum must be >= 1.")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16 (got {self.mixed_precision!r}).")
        if int(self.resolution) < 8 or int(self.resolution) % 8:
            raise ValueError(f"resolution must be a multiple of 8 (got {self.resolution}).")


# ====================================================================== base model
@dataclass
class SDComponents:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    is_sdxl: bool = False
    source: str = ""                 # path the base was loaded from
    family: str = "sd1"              # sd1 | sd2 | sdxl
    sample_scheduler: Any = None
    extra: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def vae_scale(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))

    def text_encoders(self) -> list:
        return [t for t in (self.text_encoder, self.text_encoder_2) if t is not None]

    def to(self, device=None, dtype=None) -> "SDComponents":
        for m in (self.unet, self.vae, self.text_encoder, self.text_encoder_2):
            if m is not None:
                m.to(device=device, dtype=dtype)
        return self

    def pipeline(self):
        """A diffusers pipeline sharing these modules (LoRA adapters included)."""
        from diffusers import DDIMScheduler
        sched = self.sample_scheduler or DDIMScheduler.from_config(self.noise_scheduler.config)
        if self.is_sdxl:
            from diffusers import StableDiffusionXLPipeline
            pipe = StableDiffusionXLPipeline(vae=self.vae, text_encoder=self.text_encoder,
                                             text_encoder_2=self.text_encoder_2, tokenizer=self.tokenizer,
                                             tokenizer_2=self.tokenizer_2, unet=self.unet, scheduler=sched)
        else:
            from diffusers import StableDiffusionPipeline
            pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                           unet=self.unet, scheduler=sched, safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def base_hash(self) -> str:
        """sha256 of the base checkpoint file (single file) or of the UNet weights (diffusers folder)."""
        if "hash" in self.extra:
            return self.extra["hash"]
        p = Path(self.source) if self.source else None
        files: list[Path] = []
        if p is not None and p.is_file():
            files = [p]
        elif p is not None and p.is_dir():
            files = sorted((p / "unet").glob("*.safetensors")) or sorted((p / "unet").glob("*.bin"))
        h = hashlib.sha256()
        for f in files:
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        self.extra["hash"] = h.hexdigest() if files else ""
        return self.extra["hash"]


def _resolve_base(base: str | os.PathLike) -> Path:
    from ..weights.registry import ModelNotFoundError, resolve
    text = str(base).strip()
    p = Path(text).expanduser()
    if p.exists():
        return p
    try:
        return resolve(text).path
    except (ModelNotFoundError, KeyError):
        pass
    errors = []
    for folder in ("checkpoints", "diffusers"):
        try:
            return resolve(text, folder=folder).path
        except ModelNotFoundError as e:
            errors.append(str(e))
    raise ModelNotFoundError(
        f"Base model {text!r} not found: give a diffusers folder, a .safetensors/.ckpt checkpoint, or a name in "
        f"models/checkpoints or models/diffusers. ({errors[0]})")


def _family_from_keys(keys) -> str:
    keys = set(keys)
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    return "sd1"


def _load_diffusers_folder(path: Path, dtype, device) -> SDComponents:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection
    idx = json.loads((path / "model_index.json").read_text()) if (path / "model_index.json").is_file() else {}
    is_sdxl = "text_encoder_2" in idx or (path / "text_encoder_2").is_dir()
    kw = dict(local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **kw)
    te = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw)
    tok = AutoTokenizer.from_pretrained(path, subfolder="tokenizer", **kw)
    te2 = tok2 = None
    if is_sdxl:
        te2 = CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2", **kw)
        tok2 = AutoTokenizer.from_pretrained(path, subfolder="tokenizer_2", **kw)
    sched_cfg = path / "scheduler" / "scheduler_config.json"
    cfg = json.loads(sched_cfg.read_text()) if sched_cfg.is_file() else {}
    noise = DDPMScheduler.from_config(cfg) if cfg else DDPMScheduler(beta_start=0.00085, beta_end=0.012,
                                                                         beta_schedule="scaled_linear")
    sample = None
    if cfg:
        from diffusers import DDIMScheduler
        sample = DDIMScheduler.from_config(cfg)
    family = "sdxl" if is_sdxl else ("sd2" if getattr(te.config, "hidden_size", 768) == 1024 else "sd1")
    comps = SDComponents(unet=unet, vae=vae, text_encoder=te, tokenizer=tok, noise_scheduler=noise,
                         text_encoder_2=te2, tokenizer_2=tok2, is_sdxl=is_sdxl, source=str(path), family=family,
                         sample_scheduler=sample)
    return _finish(comps, dtype, device)


def _finish(comps: SDComponents, dtype, device) -> SDComponents:
    device = torch.device(device) if device is not None else bridge.get_device()
    dtype = bridge.parse_dtype(dtype, device) if dtype is not None else torch.float32
    for m in (comps.unet, comps.vae, comps.text_encoder, comps.text_encoder_2):
        if m is not None:
            m.requires_grad_(False)
            m.eval()
    for m in (comps.unet, comps.vae, comps.text_encoder, comps.text_encoder_2):
        if m is None:
            continue
        p = next(m.parameters())
        if p.dtype != dtype:
            m.to(dtype=dtype)
        if p.device != device:
            m.to(device=device)
    return comps


def _read_single_file_keys(path: Path) -> list[str]:
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            return list(f.keys())
    from ..weights.safe_load import load_state_dict
    sd = load_state_dict(path)
    sd = sd.get("state_dict", sd)
    return list(sd.keys())


def _load_single_file(path: Path, dtype, device, config: str | os.PathLike | None) -> SDComponents:
    """Single-file checkpoint → components, offline: ``config`` (a diffusers folder) or a bundled config."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    family = _family_from_keys(_read_single_file_keys(path))
    config = config or _config_hint(path)
    if config and (CONFIG_DIR / str(config) / "model_index.json").is_file():
        cfg_dir = CONFIG_DIR / str(config)            # a bundled config by name: sd1, sd2, sd2-base, sdxl
    else:
        cfg_dir = _resolve_base(config) if config else _bundled_config(family)
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    kw: dict[str, Any] = dict(config=str(cfg_dir), local_files_only=True)
    if family != "sdxl":
        kw.update(safety_checker=None, requires_safety_checker=False)
    tok_kw = _tokenizers_for(cfg_dir, family)
    kw.update(tok_kw)
    try:
        pipe = cls.from_single_file(str(path), **kw)
    except Exception as e:
        raise ValueError(f"Could not load {path.name} as a {family.upper()} checkpoint: {e}") from e
    from diffusers import DDIMScheduler, DDPMScheduler
    noise = DDPMScheduler.from_config(pipe.scheduler.config)
    comps = SDComponents(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                         noise_scheduler=noise, text_encoder_2=getattr(pipe, "text_encoder_2", None),
                         tokenizer_2=getattr(pipe, "tokenizer_2", None), is_sdxl=family == "sdxl",
                         source=str(path), family=family,
                         sample_scheduler=DDIMScheduler.from_config(pipe.scheduler.config))
    return _finish(comps, dtype, device)


def _config_hint(path: Path) -> str | None:
    """A checkpoint may name its diffusers config in its metadata (the tiny test checkpoints do)."""
    if path.suffix.lower() != ".safetensors":
        return None
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return meta.get("rewardloop.diffusers_config")


def _bundled_config(family: str) -> Path:
    d = CONFIG_DIR / family
    if not (d / "model_index.json").is_file():
        raise FileNotFoundError(f"No bundled config for {family} in {CONFIG_DIR}: pass config= a diffusers folder.")
    return d


def _tokenizers_for(cfg_dir: Path, family: str) -> dict:
    """Tokenizers are passed explicitly when the config folder has none (bundled configs): found offline."""
    out = {}
    names = ["tokenizer"] + (["tokenizer_2"] if family == "sdxl" else [])
    for name in names:
        if (cfg_dir / name / "tokenizer_config.json").is_file():
            continue
        out[name] = find_clip_tokenizer(pad_token="!" if (family == "sd2" or name == "tokenizer_2") else None)
    return out


def find_clip_tokenizer(pad_token: str | None = None):
    """The CLIP BPE tokenizer from files already on this machine, cut at 77 tokens (``weights/clip_tokenizer.py``)."""
    from ..weights.clip_tokenizer import find_clip_tokenizer as find
    return find(pad_token)


def load_base(base: str | os.PathLike, dtype=None, device=None, config: str | os.PathLike | None = None) -> SDComponents:
    """Load a Stable Diffusion base for training: diffusers folder, catalogue key/name, or single file.

    ``config``: a diffusers folder (or a bundled config name: sd1, sd2, sd2-base, sdxl) describing a single-file
    checkpoint; default: the bundled ``weights/configs/<sd1|sd2|sdxl>`` chosen from the checkpoint's keys
    (SD 2.x defaults to the 768-v model; pass ``config="sd2-base"`` for the 512 epsilon model).
    """
    path = _resolve_base(base)
    if path.is_dir():
        if not (path / "unet").is_dir():
            raise ValueError(f"{path} is not a diffusers Stable Diffusion folder (no unet/ sub-folder).")
        return _load_diffusers_folder(path, dtype, device)
    if path.suffix.lower() not in (".safetensors", ".ckpt", ".pt", ".pth"):
        raise ValueError(f"{path.name}: single-file checkpoints must be .safetensors or .ckpt.")
    return _load_single_file(path, dtype, device, config)


# ====================================================================== LoRA
def add_lora(components: SDComponents, lora_cfg: LoraConfig) -> None:
    """Attach trainable peft LoRA adapters (name ``rewardloop``) to the UNet (and text encoders)."""
    from peft import LoraConfig as PeftLoraConfig
    lora_cfg.validate()
    unet_cfg = PeftLoraConfig(r=int(lora_cfg.rank), lora_alpha=lora_cfg.lora_alpha, lora_dropout=lora_cfg.dropout,
                              init_lora_weights="gaussian", target_modules=list(lora_cfg.targets))
    _check_targets(components.unet, lora_cfg.targets, "UNet")
    components.unet.add_adapter(unet_cfg, adapter_name="rewardloop")
    if lora_cfg.train_text_encoder:
        for te in components.text_encoders():
            _check_targets(te, lora_cfg.text_targets, "text encoder")
            te_cfg = PeftLoraConfig(r=int(lora_cfg.rank), lora_alpha=lora_cfg.lora_alpha,
                                    lora_dropout=lora_cfg.dropout, init_lora_weights="gaussian",
                                    target_modules=list(lora_cfg.text_targets))
            from peft import inject_adapter_in_model  # works on any module (transformers' add_adapter needs newer peft)
            inject_adapter_in_model(te_cfg, te, adapter_name="rewardloop")
    for p in trainable_parameters(components):
        p.data = p.data.float()
    components.extra["lora_cfg"] = lora_cfg


def _check_targets(model, targets, what) -> None:
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(f"LoRA target(s) {missing} match no module of the {what}: check the target names.")


def trainable_parameters(components: SDComponents) -> list[torch.nn.Parameter]:
    out = []
    for m in (components.unet, components.text_encoder, components.text_encoder_2):
        if m is None:
            continue
        for n, p in m.named_parameters():
            if "lora_" in n:
                p.requires_grad_(True)
                out.append(p)
    return out


def _te_prefixes(components: SDComponents) -> list[tuple[str, Any]]:
    if components.is_sdxl:
        return [("lora_te1_", components.text_encoder), ("lora_te2_", components.text_encoder_2)]
    return [("lora_te_", components.text_encoder)]


_TE_ROOTS = ("embeddings", "encoder", "final_layer_norm")


def canonical_te_path(module_path: str) -> str:
    """transformers 5 flattens CLIPTextModel (``encoder.layers.0…``); kohya names use ``text_model.encoder…``."""
    head = module_path.split(".", 1)[0]
    return "text_model." + module_path if head in _TE_ROOTS else module_path


def kohya_name(prefix: str, module_path: str) -> str:
    """``lora_unet_`` + ``down_blocks.1.attentions.0…to_q`` with dots → underscores (kohya / A1111 / ComfyUI).

    Text encoders: ``lora_te_text_model_encoder_layers_0_self_attn_q_proj`` (``lora_te1_``/``lora_te2_`` for SDXL).
    """
    if prefix.startswith("lora_te"):
        module_path = canonical_te_path(module_path)
    return prefix + module_path.replace(".", "_")


def _lora_modules(model):
    """(clean module path, peft LoRA layer) for every adapter-wrapped module of ``model``."""
    from peft.tuners.lora import LoraLayer
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer) and "rewardloop" in getattr(mod, "lora_A", {}):
            yield name, mod


def lora_state_dict(components: SDComponents) -> dict[str, torch.Tensor]:
    """The trained LoRA as kohya-style tensors: ``<name>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``."""
    out: dict[str, torch.Tensor] = {}
    parts = [("lora_unet_", components.unet)] + [(p, m) for p, m in _te_prefixes(components) if m is not None]
    for prefix, model in parts:
        for name, mod in _lora_modules(model):
            key = kohya_name(prefix, name)
            down = mod.lora_A["rewardloop"].weight.detach().float().cpu().contiguous()
            up = mod.lora_B["rewardloop"].weight.detach().float().cpu().contiguous()
            out[key + ".lora_down.weight"] = down.clone()
            out[key + ".lora_up.weight"] = up.clone()
            alpha = float(mod.lora_alpha["rewardloop"]) if hasattr(mod, "lora_alpha") else float(down.shape[0])
            out[key + ".alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return out


def module_map(components: SDComponents) -> dict[str, torch.nn.Module]:
    """kohya name → the base nn.Module it patches, for every Linear / Conv2d in UNet and text encoders."""
    table: dict[str, torch.nn.Module] = {}
    parts = [("lora_unet_", components.unet)] + [(p, m) for p, m in _te_prefixes(components) if m is not None]
    for prefix, model in parts:
        for name, mod in model.named_modules():
            if name.endswith(".base_layer"):
                continue
            base = getattr(mod, "base_layer", mod)
            if isinstance(base, (torch.nn.Linear, torch.nn.Conv2d)):
                table[kohya_name(prefix, name)] = base
    return table


def load_lora_into(components: SDComponents, path_or_sd, scale: float = 1.0) -> list[str]:
    """Merge a kohya-style LoRA (file or dict) into the base weights with ``scale``; returns patched names.

    Refuses a LoRA with keys that match no module (names them), like ComfyUI's loader would warn.
    """
    sd = path_or_sd
    if not isinstance(sd, dict):
        from safetensors.torch import load_file
        sd = load_file(str(path_or_sd))
    table = module_map(components)
    names = sorted({k.split(".")[0] for k in sd})
    unmatched = [n for n in names if n not in table]
    if unmatched:
        raise ValueError(f"{len(unmatched)} LoRA key(s) match no module of this model, e.g. {unmatched[:3]}: "
                         "the LoRA was trained for another model family.")
    done = []
    with torch.no_grad():
        for n in names:
            down, up = sd.get(n + ".lora_down.weight"), sd.get(n + ".lora_up.weight")
            if down is None or up is None:
                raise ValueError(f"LoRA entry {n} lacks lora_down/lora_up weights.")
            rank = down.shape[0]
            alpha = float(sd[n + ".alpha"]) if n + ".alpha" in sd else float(rank)
            mod = table[n]
            w = mod.weight
            d, u = down.float().flatten(1), up.float().flatten(1)
            delta = (u @ d).reshape(w.shape) if w.dim() == 2 or down.shape[2:] == (1, 1) else \
                F.conv2d(down.float().permute(1, 0, 2, 3), up.float()).permute(1, 0, 2, 3)
            w.add_((scale * alpha / rank * delta).to(device=w.device, dtype=w.dtype))
            done.append(n)
    return done


def lora_metadata(components: SDComponents, metadata: dict) -> dict[str, str]:
    cfg: LoraConfig | None = components.extra.get("lora_cfg")
    src = Path(components.source) if components.source else None
    meta = {
        "ss_network_module": "networks.lora",
        "ss_base_model_version": {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}.get(components.family,
                                                                                                 components.family),
        "ss_sd_model_name": src.name if src else "",
        "ss_new_sd_model_hash": components.base_hash(),
        "modelspec.architecture": {"sd1": "stable-diffusion-v1/lora", "sd2": "stable-diffusion-v2-512/lora",
                                   "sdxl": "stable-diffusion-xl-v1-base/lora"}.get(components.family, ""),
        "rewardloop.format": "kohya",
    }
    if cfg is not None:
        meta.update({"ss_network_dim": str(cfg.rank), "ss_network_alpha": str(cfg.lora_alpha),
                     "rewardloop.targets": ",".join(cfg.targets),
                     "rewardloop.train_text_encoder": str(bool(cfg.train_text_encoder))})
    for k, v in (metadata or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    if "trigger" in (metadata or {}):
        meta.setdefault("modelspec.trigger_phrase", str(metadata["trigger"]))
    return meta


def export_lora(components: SDComponents, path, metadata: dict | None = None, overwrite: bool = False) -> Path:
    """Write the LoRA as a kohya-style .safetensors (ComfyUI LoraLoader / A1111 loadable), atomically.

    ``path``: a plain name (lands in :func:`bridge.loras_dir`, i.e. ComfyUI's ``models/loras`` inside ComfyUI)
    or an absolute file path. Never overwrites unless ``overwrite``.
    """
    from safetensors.torch import save_file
    p = Path(str(path))
    if p.is_absolute():
        target = safe_output_path(p.parent, p.name, ".safetensors", overwrite)
    else:
        target = safe_output_path(bridge.loras_dir(), str(path), ".safetensors", overwrite)
    sd = lora_state_dict(components)
    if not sd:
        raise ValueError("There is no LoRA to export: call add_lora (and train) first.")
    meta = lora_metadata(components, metadata or {})
    return atomic_save(target, lambda tmp: save_file(sd, tmp, metadata=meta))


# ====================================================================== data
def prepare_image(img: Image.Image, resolution: int, center_crop: bool = True) -> torch.Tensor:
    """PIL (any mode / size) → [3,R,R] in [-1,1]: RGB, shorter side resized to R, centre crop (or squash)."""
    if not isinstance(img, Image.Image):
        raise TypeError(f"Training images must be PIL images (got {type(img).__name__}).")
    if img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "LA") else img.convert("RGB")
    w, h = img.size
    if w < 1 or h < 1:
        raise ValueError("An image has zero size.")
    if center_crop:
        s = resolution / min(w, h)
        nw, nh = max(resolution, round(w * s)), max(resolution, round(h * s))
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - resolution) // 2, (nh - resolution) // 2
        img = img.crop((left, top, left + resolution, top + resolution))
    else:
        img = img.resize((resolution, resolution), Image.BICUBIC)
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return arr * 2 - 1


def check_dataset(dataset, what: str = "reference images") -> list[tuple[Image.Image, str]]:
    items = list(dataset or [])
    if not items:
        raise ValueError(f"No {what} were given: add at least one image.")
    for i, it in enumerate(items):
        if not (isinstance(it, (tuple, list)) and len(it) == 2):
            raise ValueError(f"{what} item {i} must be (PIL image, prompt).")
        if not isinstance(it[1], str) or not it[1].strip():
            raise ValueError(f"{what} item {i} has an empty prompt.")
    return items


@dataclass
class Batch:
    """One training batch. Instance samples first, then prior (class) samples when present."""
    latents: torch.Tensor            # [B,C,h,w], scaled VAE latents (x0)
    cond: torch.Tensor               # encoder hidden states [B,T,D]
    is_prior: torch.Tensor           # [B] bool
    ref_index: torch.Tensor          # [B] index into the dataset (instance) or class dataset (prior)
    added_cond: dict | None = None   # SDXL: text_embeds, time_ids
    pixels: torch.Tensor | None = None  # [B,3,R,R] in [-1,1] (only when the objective needs them)

    @property
    def instance(self) -> torch.Tensor:
        return ~self.is_prior


# ====================================================================== objectives
class Objective(Protocol):
    def __call__(self, trainer: "Trainer", batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...


class NoiseMSE:
    """Plain text-to-image / DreamBooth loss: MSE to the noise (or v) target, + prior preservation."""
    name = "noise_mse"
    needs_pixels = False

    def __init__(self, prior_weight: float = 1.0):
        self.prior_weight = float(prior_weight)

    def __call__(self, trainer: "Trainer", batch: Batch):
        out = trainer.predict(batch)
        per = ((out["pred"].float() - out["target"].float()) ** 2).flatten(1).mean(1)
        inst, prior = batch.instance, batch.is_prior
        loss_inst = per[inst].mean()
        metrics = {"mse": float(loss_inst.detach())}
        loss = loss_inst
        if prior.any():
            loss_prior = per[prior].mean()
            loss = loss + self.prior_weight * loss_prior
            metrics["prior"] = float(loss_prior.detach())
        return loss, metrics

    # objectives may carry state (a critic) that is checkpointed with the run
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass


# ====================================================================== trainer
@dataclass
class TrainResult:
    lora_path: Path | None
    state: dict[str, torch.Tensor]
    steps_done: int
    log_csv: Path
    loss_plot_png: Path | None
    samples: list[Path]
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None


def _make_accelerator(train_cfg: TrainConfig, cpu: bool):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    mp = train_cfg.mixed_precision
    if cpu and mp == "fp16":
        log.warning("fp16 mixed precision needs a GPU: training in fp32 on the CPU.")
        mp = "no"
    kw = dict(mixed_precision=mp, gradient_accumulation_steps=int(train_cfg.grad_accum), cpu=cpu)
    try:
        return Accelerator(**kw)
    except Exception:
        # a previous run in this process (ComfyUI, tests) initialised the shared state differently
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        return Accelerator(**kw)


class Trainer:
    """The state of one training run; objectives call :meth:`predict` and read the schedule from here."""

    def __init__(self, components: SDComponents, train_cfg: TrainConfig, accelerator, generator: torch.Generator):
        self.c = components
        self.cfg = train_cfg
        self.accelerator = accelerator
        self.generator = generator
        self.device = components.device
        sched = components.noise_scheduler
        self.alphas_cumprod = sched.alphas_cumprod.to(torch.float32).to(self.device)
        self.num_train_timesteps = int(sched.config.num_train_timesteps)
        self.prediction_type = sched.config.get("prediction_type", "epsilon")
        self.step = 0
        self.dataset_latents = None
        self.ref_pixels: torch.Tensor | None = None
        self.class_pixels: torch.Tensor | None = None

    # -------------------------------------------------------------- randomness (all from self.generator)
    def randn(self, shape, dtype=torch.float32) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, dtype=dtype).to(self.device)

    def sample_timesteps(self, n: int) -> torch.Tensor:
        lo, hi = self.cfg.timestep_range or (0, self.num_train_timesteps - 1)
        return torch.randint(int(lo), int(hi) + 1, (n,), generator=self.generator).to(self.device).long()

    # -------------------------------------------------------------- model calls
    def unet(self, noisy: torch.Tensor, t: torch.Tensor, batch: Batch) -> torch.Tensor:
        unet = getattr(self, "unet_model", None) or self.c.unet
        dtype = self.c.unet.dtype
        kw = {}
        if batch.added_cond is not None:
            kw["added_cond_kwargs"] = {k: v.to(dtype) for k, v in batch.added_cond.items()}
        with self.accelerator.autocast():
            return unet(noisy.to(dtype), t, encoder_hidden_states=batch.cond.to(dtype), **kw).sample

    def predict(self, batch: Batch, noise: torch.Tensor | None = None, timesteps: torch.Tensor | None = None) -> dict:
        """Forward-noise the batch latents at per-sample t and run the UNet: pred, target, noise, t, noisy."""
        x0 = batch.latents.float()
        b = x0.shape[0]
        noise = self.randn(x0.shape) if noise is None else noise
        t = self.sample_timesteps(b) if timesteps is None else timesteps.to(self.device).long()
        a = self.alphas_cumprod[t].view(b, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = self.unet(noisy, t, batch).float()
        if self.prediction_type == "v_prediction":
            target = a.sqrt() * noise - (1 - a).sqrt() * x0
        else:
            target = noise
        return {"pred": pred, "target": target, "noise": noise, "t": t, "noisy": noisy, "x0": x0, "alpha_bar": a}

    def eps_from_pred(self, out: dict) -> torch.Tensor:
        """ε̂ from the model output (ε-prediction as is, v-prediction converted)."""
        if self.prediction_type == "v_prediction":
            a = out["alpha_bar"]
            return a.sqrt() * out["pred"] + (1 - a).sqrt() * out["noisy"]
        return out["pred"]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents → images in [-1,1] (differentiable)."""
        vae = self.c.vae
        dtype = next(vae.parameters()).dtype
        with self.accelerator.autocast():
            return vae.decode((latents / self.c.vae_scale).to(dtype)).sample.float()


# ---------------------------------------------------------------------- text / latents
def _tokenize(tok, prompts: list[str], device) -> torch.Tensor:
    return tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids.to(device)


def encode_prompts(components: SDComponents, prompts: list[str], size: int | None = None):
    """Prompts → (encoder hidden states, SDXL added_cond or None). Gradients flow when the TE is trained."""
    dev = components.device
    if not components.is_sdxl:
        te = components.text_encoder
        ids = _tokenize(components.tokenizer, prompts, dev)
        return te(ids)[0], None
    hs, pooled = [], None
    for tok, te in ((components.tokenizer, components.text_encoder), (components.tokenizer_2, components.text_encoder_2)):
        out = te(_tokenize(tok, prompts, dev), output_hidden_states=True)
        hs.append(out.hidden_states[-2])
        if te is components.text_encoder_2:
            pooled = out[0]
    size = size or 1024
    time_ids = torch.tensor([[size, size, 0, 0, size, size]] * len(prompts), dtype=torch.float32, device=dev)
    return torch.cat(hs, dim=-1), {"text_embeds": pooled, "time_ids": time_ids}


@torch.no_grad()
def encode_images(components: SDComponents, pixels: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """[N,3,R,R] in [-1,1] → latent posterior parameters [N,2C,h,w] (mean ‖ logvar), for cached sampling."""
    vae = components.vae
    dtype = next(vae.parameters()).dtype
    outs = []
    for i in range(0, pixels.shape[0], batch):
        dist = vae.encode(pixels[i:i + batch].to(components.device, dtype)).latent_dist
        outs.append(torch.cat([dist.mean, dist.logvar], 1).float())
    return torch.cat(outs)


def sample_latents(params: torch.Tensor, trainer: Trainer, scale: float) -> torch.Tensor:
    mean, logvar = params.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30, 20))
    return (mean + std * trainer.randn(mean.shape)) * scale


# ====================================================================== checkpoints
def _rng_state(gen: torch.Generator) -> dict:
    """Every RNG as tensors / plain ints, so the checkpoint loads with ``torch.load(weights_only=True)``."""
    key, pos_arr, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {"gen": gen.get_state(), "torch": torch.get_rng_state(),
            "numpy": {"key": key, "state": torch.from_numpy(pos_arr.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": [int(version), list(py_state), gauss],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(gen: torch.Generator, st: dict) -> None:
    gen.set_state(st["gen"])
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, py_state, gauss = st["python"]
    random.setstate((version, tuple(py_state), gauss))
    if st.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _trainable_named(components: SDComponents) -> dict[str, torch.nn.Parameter]:
    out = {}
    for prefix, m in (("unet.", components.unet), ("te.", components.text_encoder), ("te2.", components.text_encoder_2)):
        if m is None:
            continue
        for n, p in m.named_parameters():
            if "lora_" in n:
                out[prefix + n] = p
    return out


def _save_rank_rng(run_dir: Path, step: int, generator: torch.Generator, rank: int) -> None:
    """Ranks > 0 of a multi-process run keep their own noise generator next to rank 0's checkpoint."""
    p = run_dir / "checkpoints" / f"rng_rank{rank}_step_{step:07d}.pt"
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(p, lambda tmp: torch.save(generator.get_state(), tmp))


def save_checkpoint(run_dir: Path, step: int, components, optimizer, lr_sched, generator, objective,
                    keep: int = 2) -> Path:
    """Write ``checkpoints/step_<n>`` atomically (temp folder + rename): LoRA, optimizer, scheduler, RNG, step."""
    ck_root = run_dir / "checkpoints"
    ck_root.mkdir(parents=True, exist_ok=True)
    final = ck_root / f"step_{step:07d}"
    tmp = ck_root / f".tmp_step_{step:07d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    params = {k: v.detach().cpu().clone() for k, v in _trainable_named(components).items()}
    torch.save({"params": params, "optimizer": optimizer.state_dict(), "lr_scheduler": lr_sched.state_dict(),
                "rng": _rng_state(generator), "step": step,
                "objective": objective.state_dict() if hasattr(objective, "state_dict") else {}},
               tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps({"step": step, "time": time.time()}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    done = sorted(p for p in ck_root.glob("step_*") if (p / "meta.json").is_file())
    for old in done[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    kept = {p.name for p in done[-max(1, keep):]}
    for f in ck_root.glob("rng_rank*_step_*.pt"):  # other ranks' generators of pruned checkpoints
        if "step_" + f.stem.split("_step_")[-1] not in kept and f.stem.split("_step_")[-1] < f"{step:07d}":
            f.unlink(missing_ok=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(p for p in (Path(run_dir) / "checkpoints").glob("step_*") if (p / "meta.json").is_file())
    return done[-1] if done else None


def load_checkpoint(ck: Path, components, optimizer, lr_sched, generator, objective) -> int:
    st = torch.load(ck / "state.pt", map_location="cpu", weights_only=True)
    named = _trainable_named(components)
    missing = set(named) ^ set(st["params"])
    if missing:
        raise ValueError(f"Checkpoint {ck} does not match this LoRA setup (different rank/targets?): "
                         f"{sorted(missing)[:3]}. Use a new run folder or the same settings.")
    with torch.no_grad():
        for k, p in named.items():
            p.copy_(st["params"][k].to(p.device, p.dtype))
    optimizer.load_state_dict(st["optimizer"])
    lr_sched.load_state_dict(st["lr_scheduler"])
    _set_rng_state(generator, st["rng"])
    if hasattr(objective, "load_state_dict"):
        objective.load_state_dict(st.get("objective", {}))
    return int(st["step"])


# ====================================================================== logging
def _append_csv(path: Path, row: dict) -> None:
    new = not path.is_file()
    header = None
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), None)
    keys = header or list(row)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in keys})


def read_log(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


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


# ====================================================================== generation
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


# ====================================================================== the loop
def _eta(start: float, done: int, total: int) -> float:
    if done <= 0:
        return float("nan")
    return (time.time() - start) / done * (total - done)


class _ProgressAdapter:
    def __init__(self, progress, total: int, start_step: int):
        self.cb = None
        self.bar = None
        if progress is None:
            self.bar = bridge.Progress(total - start_step, desc="train")
        elif hasattr(progress, "update"):
            self.bar = progress
        else:
            self.cb = progress

    def __call__(self, info: dict) -> None:
        if self.bar is not None:
            self.bar.update(1, postfix={"loss": f"{info['loss']:.4f}", "eta": f"{info['eta_s']:.0f}s"})
        if self.cb is not None:
            self.cb(info)
            bridge.check_interrupt()

    def close(self):
        if self.bar is not None and hasattr(self.bar, "close"):
            self.bar.close()


def _build_pixels(items, res, center_crop) -> torch.Tensor:
    return torch.stack([prepare_image(img, res, center_crop) for img, _ in items])


def train_lora(components: SDComponents, dataset: list, objective, lora_cfg: LoraConfig, train_cfg: TrainConfig,
               run_dir: Path, resume: bool = True, progress=None, class_dataset: list | None = None) -> TrainResult:
    """Train a LoRA on ``dataset`` [(PIL, prompt)] with ``objective``; resumable from ``run_dir``.

    ``class_dataset`` [(PIL, prompt)]: prior-preservation samples, one per instance sample in each batch.
    Adds the LoRA adapters when ``components`` has none yet.
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _train(components, dataset, objective, lora_cfg, train_cfg, Path(run_dir), resume, progress,
                      class_dataset)


def normalize_inference_tensors(model: torch.nn.Module) -> int:
    """Replace tensors created under ``torch.inference_mode`` (ComfyUI loads) by ordinary copies, in place.

    Autograd refuses inference tensors even as frozen weights; returns how many were replaced.
    """
    n = 0
    with torch.inference_mode(False):
        for mod in model.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None and p.is_inference():
                    mod._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
                    n += 1
            for name, b in list(mod._buffers.items()):
                if b is not None and b.is_inference():
                    mod._buffers[name] = b.clone()
                    n += 1
    return n


def _train(components, dataset, objective, lora_cfg, train_cfg, run_dir, resume, progress, class_dataset):
    from diffusers.optimization import get_scheduler
    train_cfg.validate()
    lora_cfg.validate()
    for m in (components.unet, components.vae, components.text_encoder, components.text_encoder_2):
        if m is not None:
            normalize_inference_tensors(m)
    items = check_dataset(dataset)
    class_items = check_dataset(class_dataset, "class images") if class_dataset else []
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps({
        "lora": asdict(lora_cfg), "train": asdict(train_cfg),
        "objective": getattr(objective, "name", type(objective).__name__), "base": components.source},
        indent=1, default=str))
    device = components.device
    accelerator = _make_accelerator(train_cfg, cpu=device.type == "cpu")
    seed = int(train_cfg.seed)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    rank = accelerator.process_index  # under `accelerate launch` each process draws its own noise / timesteps
    generator = torch.Generator("cpu").manual_seed(seed + 1_000_003 * rank)

    if not any(True for _ in _lora_modules(components.unet)):
        torch.manual_seed(seed)
        add_lora(components, lora_cfg)
    params = trainable_parameters(components)
    if train_cfg.gradient_checkpointing:
        components.unet.enable_gradient_checkpointing()
        if lora_cfg.train_text_encoder:
            for te in components.text_encoders():
                te.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(params, lr=float(train_cfg.lr), weight_decay=float(train_cfg.weight_decay))
    nproc = accelerator.num_processes  # accelerate steps the scheduler once per process
    lr_sched = get_scheduler(train_cfg.lr_scheduler, optimizer=optimizer,
                             num_warmup_steps=int(train_cfg.warmup_steps) * nproc,
                             num_training_steps=int(train_cfg.steps) * nproc)
    trainer = Trainer(components, train_cfg, accelerator, generator)
    # several processes: LoRA gradients (UNet and text encoders) are averaged with accelerator.reduce below
    trainer.unet_model = components.unet
    trainer.objective = objective
    setup = getattr(objective, "setup", None)

    # ---- data: pixels, cached latents, prompt embeddings
    res = int(train_cfg.resolution)
    ref_pixels = _build_pixels(items, res, train_cfg.center_crop)
    cls_pixels = _build_pixels(class_items, res, train_cfg.center_crop) if class_items else None
    trainer.ref_pixels, trainer.class_pixels = ref_pixels, cls_pixels
    ref_params = encode_images(components, ref_pixels) if train_cfg.cache_latents else None
    cls_params = encode_images(components, cls_pixels) if (train_cfg.cache_latents and cls_pixels is not None) else None
    prompts = [p for _, p in items]
    cls_prompts = [p for _, p in class_items]
    text_cache: dict[str, tuple] = {}

    def cond_for(ps: list[str]):
        if lora_cfg.train_text_encoder:
            return encode_prompts(components, ps, res)
        missing = [p for p in dict.fromkeys(ps) if p not in text_cache]
        if missing:
            with torch.no_grad():
                hs, add = encode_prompts(components, missing, res)
            for i, p in enumerate(missing):
                text_cache[p] = (hs[i:i + 1], None if add is None else {k: v[i:i + 1] for k, v in add.items()})
        hs = torch.cat([text_cache[p][0] for p in ps])
        add = None
        if text_cache[ps[0]][1] is not None:
            add = {k: torch.cat([text_cache[p][1][k] for p in ps]) for k in text_cache[ps[0]][1]}
        return hs, add

    def make_batch(idx: torch.Tensor, cidx: torch.Tensor | None) -> Batch:
        lat_parts, pix_parts, ps = [], [], []
        if ref_params is not None:
            lat_parts.append(sample_latents(ref_params[idx], trainer, components.vae_scale))
        else:
            lat_parts.append(sample_latents(encode_images(components, ref_pixels[idx]), trainer, components.vae_scale))
        pix_parts.append(ref_pixels[idx])
        ps += [prompts[i] for i in idx.tolist()]
        n_prior = 0
        if cidx is not None:
            src = cls_params[cidx] if cls_params is not None else encode_images(components, cls_pixels[cidx])
            lat_parts.append(sample_latents(src, trainer, components.vae_scale))
            pix_parts.append(cls_pixels[cidx])
            ps += [cls_prompts[i] for i in cidx.tolist()]
            n_prior = len(cidx)
        hs, add = cond_for(ps)
        b = len(idx)
        is_prior = torch.tensor([False] * b + [True] * n_prior, device=device)
        ref_index = torch.cat([idx, cidx if cidx is not None else idx[:0]]).to(device)
        need_pix = getattr(objective, "needs_pixels", False)
        return Batch(latents=torch.cat(lat_parts), cond=hs, is_prior=is_prior, ref_index=ref_index, added_cond=add,
                     pixels=torch.cat(pix_parts).to(device) if need_pix else None)

    def draw_indices():
        idx = torch.randint(0, len(items), (int(train_cfg.batch_size),), generator=generator)
        cidx = torch.randint(0, len(class_items), (int(train_cfg.batch_size),), generator=generator) \
            if class_items else None
        return idx, cidx

    if setup is not None:
        setup(trainer)

    prepared = accelerator.prepare(optimizer, lr_sched)
    optimizer, lr_sched = prepared

    # ---- resume
    start_step = 0
    ck = latest_checkpoint(run_dir) if resume else None
    if ck is not None:
        start_step = load_checkpoint(ck, components, optimizer, lr_sched, generator, objective)
        rank_rng = ck.parent / f"rng_rank{rank}_step_{start_step:07d}.pt"
        if rank > 0 and rank_rng.is_file():
            generator.set_state(torch.load(rank_rng, weights_only=True))
        log.info("resumed from %s (step %d)", ck, start_step)
    elif not resume and (run_dir / "checkpoints").exists():
        shutil.rmtree(run_dir / "checkpoints")
        (run_dir / "log.csv").unlink(missing_ok=True)
    log_csv = run_dir / "log.csv"
    if start_step == 0:
        log_csv.unlink(missing_ok=True)

    metrics_out: dict[str, float] = {}

    def fixed_eval() -> float:
        g_state = generator.get_state()
        generator.manual_seed(int(train_cfg.eval_seed))
        idx = torch.arange(len(items))
        cidx = torch.arange(min(len(class_items), len(items))) if class_items else None
        with torch.no_grad():
            loss, _ = objective(trainer, make_batch(idx, cidx))
        generator.set_state(g_state)
        return float(loss)

    if train_cfg.eval_seed is not None and start_step == 0:
        metrics_out["eval_loss_start"] = fixed_eval()

    samples: list[Path] = []
    total = int(train_cfg.steps)
    bar = _ProgressAdapter(progress, total, start_step)
    t0 = time.time()
    step = start_step
    modules = [m for m in (components.unet, components.text_encoder, components.text_encoder_2) if m is not None]
    for m in modules:
        m.train()
    try:
        while step < total:
            bridge.check_interrupt()
            if train_cfg.fixed_draw:
                generator.manual_seed(seed)
            loss_acc, mets_acc = 0.0, {}
            for _ in range(int(train_cfg.grad_accum)):
                with accelerator.accumulate(trainer.unet_model):
                    batch = make_batch(*draw_indices())
                    loss, mets = objective(trainer, batch)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"The loss became {float(loss)} at step {step + 1}: lower the "
                                                 "learning rate or use bf16/fp32.")
                    accelerator.backward(loss)
                    if nproc > 1 and accelerator.sync_gradients:
                        for p in params:
                            if p.grad is not None:
                                p.grad = accelerator.reduce(p.grad, reduction="mean")
                    if accelerator.sync_gradients and train_cfg.max_grad_norm:
                        accelerator.clip_grad_norm_(params, float(train_cfg.max_grad_norm))
                    optimizer.step()
                    lr_sched.step()
                    optimizer.zero_grad(set_to_none=True)
                loss_acc += float(loss.detach()) / int(train_cfg.grad_accum)
                for k, v in mets.items():
                    mets_acc[k] = mets_acc.get(k, 0.0) + float(v) / int(train_cfg.grad_accum)
            after = getattr(objective, "after_step", None)
            if after is not None:
                extra = after(trainer, batch) or {}
                mets_acc.update(extra)
            step += 1
            trainer.step = step
            row = {"step": step, "loss": loss_acc, "lr": lr_sched.get_last_lr()[0], **mets_acc}
            if accelerator.is_main_process:
                _append_csv(log_csv, row)
            if train_cfg.save_every and step % int(train_cfg.save_every) == 0 and step < total:
                if accelerator.is_main_process:
                    save_checkpoint(run_dir, step, components, optimizer, lr_sched, generator, objective,
                                    train_cfg.keep_checkpoints)
                else:
                    _save_rank_rng(run_dir, step, generator, rank)
            if train_cfg.sample_every and train_cfg.sample_prompts and step % int(train_cfg.sample_every) == 0:
                samples += _save_samples(components, train_cfg, run_dir, step)
            bar({"step": step, "total": total, "loss": loss_acc, "eta_s": _eta(t0, step - start_step,
                                                                               total - start_step), **mets_acc})
    except bridge.interrupt_exceptions():
        if accelerator.is_main_process and step > start_step:
            save_checkpoint(run_dir, step, components, optimizer, lr_sched, generator, objective,
                            train_cfg.keep_checkpoints)
            plot_loss(log_csv, run_dir / "loss.png")
        elif step > start_step:
            _save_rank_rng(run_dir, step, generator, rank)
        raise
    finally:
        bar.close()
        for m in modules:
            m.eval()
    ck_path = None
    if accelerator.is_main_process:
        ck_path = save_checkpoint(run_dir, step, components, optimizer, lr_sched, generator, objective,
                                  train_cfg.keep_checkpoints)
    else:
        _save_rank_rng(run_dir, step, generator, rank)
    if train_cfg.eval_seed is not None:
        metrics_out["eval_loss_end"] = fixed_eval()
    state = lora_state_dict(components)
    lora_path = None
    plot = None
    if accelerator.is_main_process:
        from safetensors.torch import save_file
        meta = lora_metadata(components, {"steps": str(step), "objective": getattr(objective, "name", "")})
        lora_path = atomic_save(run_dir / "lora.safetensors", lambda tmp: save_file(state, tmp, metadata=meta))
        plot = plot_loss(log_csv, run_dir / "loss.png")
    accelerator.wait_for_everyone()
    return TrainResult(lora_path=lora_path, state=state, steps_done=step, log_csv=log_csv, loss_plot_png=plot,
                       samples=samples, metrics=metrics_out, checkpoint=ck_path)


def save_samples(components, prompts, seed: int, steps: int, cfg: float, resolution: int, folder: Path,
                 stem: str) -> tuple[list, list[Path]]:
    """Generate one image per prompt (seeds ``seed, seed+1, …``) and save them atomically as ``stem_<i>.png``."""
    prompts = list(prompts)
    imgs = generate(components, prompts, [int(seed) + i for i in range(len(prompts))], steps=int(steps),
                    cfg=float(cfg), width=int(resolution), height=int(resolution))
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
