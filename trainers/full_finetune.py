"""Full fine-tuning (every UNet weight, + the text encoder) for the DPG paper's own recipe, beside the LoRA presets.

The paper (and its released code) trains the whole SD 1.4 UNet and CLIP text encoder in fp32: AdamW
(weight decay 1e-2), lr 1e-6 constant, 1000 steps, batch 1 + 1 class image, gradient clipping 1.0, γ = 0.9986
(``reference/paper_dpg.md`` §3). The shared loop trains whatever :func:`enable` marks trainable; the result is
exported as one original-layout (LDM) ``.safetensors`` checkpoint, the file ComfyUI's Load Checkpoint and
A1111/Forge load.

Memory (fp32 weights + gradients + two AdamW moments = 16 bytes per trained parameter): SD 1.x UNet 859.5M +
text encoder 123.1M → 15.7 GB before activations, so the recipe needs a 24 GB card (with gradient checkpointing)
or more; 8–16 GB cards should use a LoRA preset.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError
from ..fileio import atomic_save, safe_output_path
from .base_model import SDComponents

BYTES_PER_PARAM = 16  # fp32 weight + fp32 gradient + AdamW exp_avg + exp_avg_sq


def enable(components: SDComponents, train_text_encoder: bool = True) -> list[torch.nn.Parameter]:
    """Make every UNet (and text-encoder) weight trainable, in fp32; returns them. The VAE stays frozen."""
    mods = [components.unet] + (components.text_encoders() if train_text_encoder else [])
    params = []
    for m in mods:
        if next(m.parameters()).dtype != torch.float32:
            m.to(torch.float32)
        m.requires_grad_(True)
        params += list(m.parameters())
    components.extra["full_finetune"] = True
    return params


def is_full(components: SDComponents) -> bool:
    return bool(components.extra.get("full_finetune"))


def trainable_named(components: SDComponents) -> dict[str, torch.nn.Parameter]:
    """Every trainable weight by a stable name (``unet.``/``te.``/``te2.`` + the module's parameter name)."""
    out = {}
    for prefix, m in (("unet.", components.unet), ("te.", components.text_encoder), ("te2.", components.text_encoder_2)):
        if m is not None:
            out.update({prefix + n: p for n, p in m.named_parameters() if p.requires_grad})
    return out


def memory_estimate(components: SDComponents, train_text_encoder: bool = True) -> dict[str, float]:
    """Trained parameters and their fixed training memory in GiB (weights, gradients, AdamW states; no activations)."""
    mods = [components.unet] + (components.text_encoders() if train_text_encoder else [])
    n = sum(p.numel() for m in mods for p in m.parameters())
    return {"params": float(n), "static_gib": n * BYTES_PER_PARAM / 2 ** 30}


def _family_error(family: str) -> UserError:
    return UserError(f"The paper preset exports SD 1.x checkpoints (the paper's base is SD 1.4); this base is "
                      f"{family.upper()}: use a LoRA preset (8GB / 12GB / 24GB).")


def check_exportable(components: SDComponents) -> None:
    if components.family != "sd1":
        raise _family_error(components.family)


def check_base_family(base, config=None) -> None:
    """Before anything loads: the base must be SD 1.x (read from the file's keys or the folder's configs)."""
    from .base_model import _family_from_keys, _read_single_file_keys, _resolve_base
    path = _resolve_base(base)
    if path.is_dir():
        te = path / "text_encoder" / "config.json"
        hidden = json.loads(te.read_text()).get("hidden_size", 768) if te.is_file() else 768
        family = "sdxl" if (path / "text_encoder_2").is_dir() else ("sd2" if hidden == 1024 else "sd1")
    else:
        family = _family_from_keys(_read_single_file_keys(path))
    if config and str(config).startswith(("sd2", "sdxl")):
        family = str(config).split("-")[0]
    if family != "sd1":
        raise _family_error(family)


def export_checkpoint(components: SDComponents, folder: Path, name: str, metadata: dict | None = None,
                      overwrite: bool = False, dtype: torch.dtype = torch.float16) -> Path:
    """The fine-tuned model as one LDM-layout ``.safetensors`` (UNet, VAE, text encoder) in ``folder``.

    fp16 by default (the size of the usual SD 1.x downloads, what the paper's inference script loads)."""
    from safetensors.torch import save_file

    from ..weights.tiny import sd_to_ldm_state_dict  # the pack's diffusers → LDM key converter
    check_exportable(components)
    target = safe_output_path(folder, name, ".safetensors", overwrite)
    sd = sd_to_ldm_state_dict(components)
    sd = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    bad = next((k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise ValueError(f"The fine-tuned weights hold NaN or infinite values ({bad}): not writing {target.name}.")
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (metadata or {}).items()}
    meta.setdefault("format", "pt")
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic_save(target, lambda tmp: save_file(sd, tmp, metadata=meta))
