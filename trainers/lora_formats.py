"""LoRA files in the formats people share, read as kohya-named tensors (what :func:`.lora_weights.load_lora_into`
merges): kohya (``lora_unet_…lora_down.weight`` + ``.alpha``), diffusers (``unet.…lora_A.weight`` /
``text_encoder.…`` with ``lora_adapter_metadata``; older ``…to_q_lora.down.weight`` / ``lora_linear_layer``
names, converted with diffusers' own converters) and peft adapters (``base_model.model.…lora_A.weight`` with the
``adapter_config.json`` saved next to them).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

PEFT_FILE = "adapter_model.safetensors"
_AB = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$")   # optional adapter name


def read_lora_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a LoRA ``.safetensors`` file (or a peft adapter folder); damaged files give one line."""
    from safetensors import SafetensorError, safe_open
    path = Path(path)
    if path.is_dir():
        if not (path / PEFT_FILE).is_file():
            raise FileNotFoundError(f"{path} is a folder without {PEFT_FILE}: give a LoRA .safetensors file.")
        path = path / PEFT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file {path} does not exist.")
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path.name} is not a readable .safetensors LoRA ({str(e).splitlines()[0][:160]}): "
                         "download or export it again.") from None
    cfg = path.parent / "adapter_config.json"
    if cfg.is_file() and path.name == PEFT_FILE:
        try:
            meta["peft_config"] = json.loads(cfg.read_text(encoding="utf-8"))
        except ValueError:
            pass
    return sd, meta


def is_kohya(sd: dict) -> bool:
    return any(k.endswith((".lora_down.weight", ".lora_up.weight")) and k.startswith("lora_") for k in sd)


def to_kohya(sd: dict[str, torch.Tensor], meta: dict, te_prefixes: dict[str, str]) -> dict[str, torch.Tensor]:
    """A diffusers / peft LoRA state dict → kohya names (``te_prefixes``: ``text_encoder`` → ``lora_te_`` …).

    Alphas come from diffusers' ``lora_adapter_metadata`` or the peft config (``lora_alpha`` / ``r``, with their
    per-module patterns); without them alpha = rank (scale 1), as diffusers loads such files.
    """
    from .lora_weights import kohya_name
    if any("lora_magnitude_vector" in k for k in sd):
        raise ValueError("This is a DoRA file (lora_magnitude_vector): only plain LoRA files can be merged.")
    if not any(_AB.match(k) for k in sd):
        from diffusers.utils.state_dict_utils import convert_all_state_dict_to_peft
        try:
            sd = convert_all_state_dict_to_peft(dict(sd))
        except Exception as e:
            raise ValueError(f"Not a LoRA in a known format (kohya, diffusers or peft): {e}") from None
    alphas = _alpha_table(meta)
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        m = _AB.match(key)
        if m is None:
            continue
        component, module = _split(m.group("module"))
        prefix = "lora_unet_" if component == "unet" else te_prefixes.get(component)
        if prefix is None:
            raise ValueError(f"LoRA key {key!r} is for a {component} this model does not have.")
        name = kohya_name(prefix, module)
        out[f"{name}.lora_{'down' if m.group('ab') == 'A' else 'up'}.weight"] = t
        if m.group("ab") == "A":
            alpha = _alpha_for(alphas, component, module, rank=int(t.shape[0]))
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    if not out:
        raise ValueError("The file holds no LoRA weights (no lora_A/lora_B or lora_down/lora_up tensors).")
    return out


def _split(module: str) -> tuple[str, str]:
    """(component, module path inside it) from a diffusers / peft key."""
    for comp in ("text_encoder_2", "text_encoder", "unet"):
        if module.startswith(comp + "."):
            return comp, module[len(comp) + 1:]
    if module.startswith("base_model.model."):
        module = module[len("base_model.model."):]
    head = module.split(".", 1)[0]
    if head in ("text_model", "encoder", "embeddings", "final_layer_norm"):
        return "text_encoder", module
    return "unet", module


def _alpha_table(meta: dict) -> dict[str, dict]:
    """component → {"r", "lora_alpha", "rank_pattern", "alpha_pattern"} from the file's metadata."""
    table: dict[str, dict] = {}
    raw = meta.get("lora_adapter_metadata")
    if raw:
        try:
            flat = json.loads(raw) if isinstance(raw, str) else dict(raw)
        except ValueError:
            flat = {}
        for k, v in flat.items():
            comp, _, field = k.partition(".")
            if field:
                table.setdefault(comp, {})[field] = v
    peft = meta.get("peft_config")
    if isinstance(peft, dict):
        for comp in ("unet", "text_encoder"):
            table.setdefault(comp, dict(peft))
    return table


def _alpha_for(table: dict, component: str, module: str, rank: int) -> float:
    cfg = table.get(component)
    if not cfg:
        return float(rank)
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        if module == pattern or module.endswith("." + pattern) or re.fullmatch(pattern, module):
            return float(value)
    if cfg.get("lora_alpha") is None:
        return float(rank)
    alpha = float(cfg["lora_alpha"])   # the merge scales by alpha / (this module's rank), as peft does
    return alpha * rank ** 0.5 if cfg.get("use_rslora") else alpha
