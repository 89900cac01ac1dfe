"""The LoRA itself: configuration, peft adapters on the UNet / text encoders, kohya key names, export to a
``.safetensors`` that ComfyUI and A1111 load, and merging a LoRA file into base weights.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import bridge
from ..fileio import NonFiniteError, atomic_save, check_finite, first_non_finite, safe_output_path
from .base_model import SDComponents


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: float | None = None          # None = rank (scale 1.0)
    targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    train_text_encoder: bool = False
    text_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    dropout: float = 0.0
    full: bool = False                  # no LoRA: train every UNet (+ text-encoder) weight (trainers/full_finetune.py)

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)

    def validate(self) -> None:
        if self.full:
            return
        if int(self.rank) < 1:
            raise ValueError(f"LoRA rank must be >= 1 (got {self.rank}).")
        if not self.targets:
            raise ValueError("LoRA targets are empty: name at least one UNet module, e.g. to_q.")


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
    from . import full_finetune
    if full_finetune.is_full(components):
        return list(full_finetune.trainable_named(components).values())
    out = []
    for m in (components.unet, components.text_encoder, components.text_encoder_2):
        if m is None:
            continue
        for n, p in m.named_parameters():
            if "lora_" in n:
                p.requires_grad_(True)
                out.append(p)
    return out


def _te_prefix_names(components: SDComponents) -> dict[str, str]:
    """diffusers component name → kohya prefix of the text encoders this model has."""
    if components.is_sdxl:
        return {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    return {"text_encoder": "lora_te_"}


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
    """Merge a LoRA (file, peft adapter folder or dict) into the base weights with ``scale``; returns patched names.

    Reads kohya files (what :func:`export_lora` writes, ComfyUI / A1111 LoRAs) and diffusers / peft ones (see
    :mod:`.lora_formats`). Refuses a LoRA with keys that match no module (names them), like ComfyUI's loader
    would warn.
    """
    from .lora_formats import is_kohya, read_lora_file, to_kohya
    if isinstance(path_or_sd, dict):
        sd, meta = path_or_sd, {}
    else:
        sd, meta = read_lora_file(path_or_sd)
    if not is_kohya(sd):
        sd = to_kohya(sd, meta, _te_prefix_names(components))
    bad = first_non_finite(sd)
    if bad is not None:
        raise NonFiniteError(f"The LoRA holds NaN or infinite values ({bad}): it was saved from a diverged run.")
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
    check_finite(sd, f"the LoRA {target.name}")
    meta = lora_metadata(components, metadata or {})
    return atomic_save(target, lambda tmp: save_file(sd, tmp, metadata=meta))
