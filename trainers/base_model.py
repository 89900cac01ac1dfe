"""Loading a Stable Diffusion base for training (ComfyUI-free): diffusers folder, catalogue key / name, or a
single-file SD1.x / SD2.x / SDXL checkpoint, offline with the configs bundled in ``weights/configs``; the CLIP
tokenizer lookup the bundled configs need.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import bridge

CONFIG_DIR = Path(__file__).resolve().parent.parent / "weights" / "configs"


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
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), "pt") as f:
                return list(f.keys())
        except SafetensorError as e:
            raise ValueError(f"{path.name} is not a readable .safetensors checkpoint ({_first_line(e)}): download "
                             "it again.") from None
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
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except SafetensorError as e:
        raise ValueError(f"{path.name} is not a readable .safetensors checkpoint ({_first_line(e)}): download it "
                         "again.") from None
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
    path = check_base(base)
    from safetensors import SafetensorError
    try:
        if path.is_dir():
            return _load_diffusers_folder(path, dtype, device)
        return _load_single_file(path, dtype, device, config)
    except FileNotFoundError:
        raise                        # already says what is missing and how to get it
    except (SafetensorError, OSError) as e:   # damaged weights, incomplete folders
        raise ValueError(f"Could not load the base model {path}: {_first_line(e)}") from None


def check_base(base: str | os.PathLike) -> Path:
    """Where the base is, checked without loading it (a single file's header is read): one line when it is
    missing, not a Stable Diffusion folder, not a checkpoint file or not a readable .safetensors."""
    path = _resolve_base(base)
    if path.is_dir():
        if not (path / "unet").is_dir():
            raise ValueError(f"{path} is not a diffusers Stable Diffusion folder (no unet/ sub-folder).")
        return path
    if path.suffix.lower() not in (".safetensors", ".ckpt", ".pt", ".pth"):
        raise ValueError(f"{path.name}: single-file checkpoints must be .safetensors or .ckpt.")
    if path.suffix.lower() == ".safetensors":
        _config_hint(path)            # reads (only) the header
    return path


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]
