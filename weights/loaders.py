"""Loaders for every model kind, all through the registry and the shared cache.

Each loader takes a catalogue key, a name inside the kind's ComfyUI folder, or a path, and returns a
:class:`ModelHandle` (what loader nodes pass along the graph). Models are loaded on the CPU (or the device
asked for) and cached by (kind, path, dtype, device); callers move them with ``bridge.to_device_for_use``
and give memory back with ``bridge.offload``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import bridge
from .cache import cached
from .hf_compat import diffusers_dtype, transformers_dtype
from .registry import Resolved, resolve
from .safe_load import load_state_dict

log = logging.getLogger("rewardloop")


@dataclass
class ModelHandle:
    kind: str
    name: str
    path: Path
    model: Any
    processor: Any = None
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    extra: dict = field(default_factory=dict)

    def __repr__(self) -> str:  # shown in ComfyUI tooltips / errors
        return f"<{self.kind} {self.name} {str(self.dtype).replace('torch.', '')} on {self.device}>"


def _resolve(name: str | os.PathLike, folder: str) -> Resolved:
    return resolve(name, folder=folder)


def _dtype_device(dtype, device) -> tuple[torch.dtype, torch.device]:
    device = torch.device(device) if device else bridge.get_device()
    dtype = bridge.parse_dtype(dtype, device)
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32  # fp16 matmuls are slow or missing on CPUs
    return dtype, device


def _hf_kwargs(dtype: torch.dtype) -> dict:
    if os.environ.get("REWARDLOOP_VERBOSE_LOADS") != "1":
        quiet_transformers()
    return {"local_files_only": True, **transformers_dtype(dtype)}


def _place(model, device: torch.device):
    """Move a freshly loaded model to its device (asking ComfyUI to free memory first) in eval mode."""
    return bridge.to_device_for_use(model, device).eval()


def quiet_transformers() -> None:
    """No per-load progress bars or load reports of transformers / diffusers in node/CLI output (errors still
    show)."""
    try:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
    try:
        from diffusers.utils import logging as df_logging
        df_logging.set_verbosity_error()
        df_logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass


def _read_json(p: Path) -> dict:
    return json.loads(p.read_text()) if p.is_file() else {}


# ---------------------------------------------------------------- captioners
def load_captioner(name: str, dtype=None, device=None) -> ModelHandle:
    r = _resolve(name, "blip")
    dtype, device = _dtype_device(dtype, device)

    def load():
        from transformers import AutoProcessor
        model_type = _read_json(r.path / "config.json").get("model_type", "")
        if model_type == "blip":
            from transformers import BlipForConditionalGeneration as cls
        elif model_type == "blip-2":
            from transformers import Blip2ForConditionalGeneration as cls
        else:
            from transformers import AutoModelForImageTextToText as cls
        model = _place(cls.from_pretrained(r.path, **_hf_kwargs(dtype)), device)
        proc = AutoProcessor.from_pretrained(r.path, local_files_only=True)
        return ModelHandle("captioner", str(name), r.path, model, proc, dtype, device, {"model_type": model_type})

    return cached("captioner", r.path, load, dtype, device)


# ---------------------------------------------------------------- text encoders
def is_sentence_transformers_dir(path: Path) -> bool:
    return (path / "modules.json").is_file() or (path / "1_Pooling").is_dir()


def load_text_encoder(name: str, dtype=None, device=None) -> ModelHandle:
    """A CLIP model folder (text tower used) or a sentence-transformers folder (mean pooling)."""
    r = _resolve(name, "clip")
    dtype, device = _dtype_device(dtype, device)

    def load():
        from transformers import AutoTokenizer
        if is_sentence_transformers_dir(r.path):
            from transformers import AutoModel
            pool = _read_json(r.path / "1_Pooling" / "config.json")
            modules = json.dumps(_read_json(r.path / "modules.json")) if (r.path / "modules.json").is_file() else ""
            model = _place(AutoModel.from_pretrained(r.path, **_hf_kwargs(dtype)), device)
            tok = AutoTokenizer.from_pretrained(r.path, local_files_only=True)
            return ModelHandle("text_encoder", str(name), r.path, model, tok, dtype, device, {
                "family": "sentence", "pooling": "cls" if pool.get("pooling_mode_cls_token") else "mean",
                "normalize": "Normalize" in modules})
        from transformers import CLIPModel
        model = _place(CLIPModel.from_pretrained(r.path, **_hf_kwargs(dtype)), device)
        tok = AutoTokenizer.from_pretrained(r.path, local_files_only=True)
        return ModelHandle("text_encoder", str(name), r.path, model, tok, dtype, device, {"family": "clip"})

    return cached("text_encoder", r.path, load, dtype, device)


def load_clip(name: str, dtype=None, device=None) -> ModelHandle:
    """A full CLIP model (image + text) with its processor, for zero-shot labels."""
    r = _resolve(name, "clip")
    dtype, device = _dtype_device(dtype, device)

    def load():
        from transformers import AutoProcessor, CLIPModel
        model = _place(CLIPModel.from_pretrained(r.path, **_hf_kwargs(dtype)), device)
        proc = AutoProcessor.from_pretrained(r.path, local_files_only=True)
        return ModelHandle("clip", str(name), r.path, model, proc, dtype, device)

    return cached("clip", r.path, load, dtype, device)


def load_tokenizer(name: str, folder: str = "clip", dtype=None, device=None) -> ModelHandle:
    """A tokenizer-only folder (e.g. the CLIP BPE tokenizer HPS needs, BERT's for ImageReward); cached."""
    r = _resolve(name, folder)

    def load():
        from transformers import AutoTokenizer
        quiet_transformers()
        tok = AutoTokenizer.from_pretrained(r.path, local_files_only=True)
        return ModelHandle("tokenizer", str(name), r.path, tok, tok)

    return cached("tokenizer", r.path, load)


@contextlib.contextmanager
def empty_init(dtype: torch.dtype = torch.float32):
    """Build a transformers model without random initialisation (weights are loaded right after), with
    parameters created in ``dtype`` so a large model never exists in fp32 first."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point else torch.float32)
    try:
        with no_init_weights():
            yield
    finally:
        torch.set_default_dtype(old)


def load_weights_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """Copy ``sd`` into ``model``: every parameter must be there with its shape (buffers such as position ids may
    be missing); extra keys are an error too. One line names what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("position_ids")]
    extra = [k for k in sd if k not in own and not k.endswith("position_ids")]
    bad = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or extra or bad:
        parts = ([f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []) + \
                ([f"{len(extra)} unexpected (e.g. {extra[0]})"] if extra else []) + \
                ([f"shape mismatch {bad[0]}"] if bad else [])
        raise ValueError(f"{what}: the checkpoint does not fit: {'; '.join(parts)}.")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)


# ---------------------------------------------------------------- LLM
def _cache_root() -> Path:
    return Path(os.environ.get("REWARDLOOP_CACHE", Path.home() / ".cache" / "rewardloop"))


def gguf_to_hf_dir(gguf: Path) -> Path:
    """Dequantise a GGUF file once into an fp16 safetensors folder (reloads take ~1 s instead of ~20 s)."""
    st = gguf.stat()
    tag = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = _cache_root() / "gguf" / f"{gguf.stem}-{tag}"
    if (out / ".complete").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer
    log.info("Converting %s to a transformers folder (once) at %s", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    m = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True,
                                             **transformers_dtype(torch.float32))
    cfg = m.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    clean = type(m)(cfg)
    clean.load_state_dict(m.state_dict())
    tmp = out.with_name(out.name + ".tmp")
    clean.to(torch.float16).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / ".complete").write_text("ok")
    if out.exists():
        import shutil
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_llm(name: str, dtype=None, device=None) -> ModelHandle:
    """Any HF causal chat LM folder, or a ``.gguf`` file (dequantised once through transformers + gguf)."""
    r = _resolve(name, "LLM")
    dtype, device = _dtype_device(dtype, device)

    def load():
        from transformers import AutoModelForCausalLM, AutoTokenizer
        path = gguf_to_hf_dir(r.path) if r.path.suffix.lower() == ".gguf" else r.path
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model = _place(AutoModelForCausalLM.from_pretrained(path, **_hf_kwargs(dtype)), device)
        return ModelHandle("llm", str(name), r.path, model, tok, dtype, device, {"hf_dir": path})

    return cached("llm", r.path, load, dtype, device)


# ---------------------------------------------------------------- ViT / DINO / T5
def load_vision_encoder(name: str, folder: str = "dino", dtype=None, device=None, kind: str = "dino") -> ModelHandle:
    r = _resolve(name, folder)
    dtype, device = _dtype_device(dtype, device)

    def load():
        from transformers import AutoImageProcessor, AutoModel
        model = _place(AutoModel.from_pretrained(r.path, **_hf_kwargs(dtype)), device)
        proc = AutoImageProcessor.from_pretrained(r.path, local_files_only=True)
        return ModelHandle(kind, str(name), r.path, model, proc, dtype, device)

    return cached(kind, r.path, load, dtype, device)


def load_dino(name: str, dtype=None, device=None) -> ModelHandle:
    return load_vision_encoder(name, "dino", dtype, device, "dino")


def load_t5(name: str, folder: str = "rich_feedback", dtype=None, device=None) -> ModelHandle:
    r = _resolve(name, folder)
    dtype, device = _dtype_device(dtype, device)

    def load():
        from transformers import AutoTokenizer, T5ForConditionalGeneration
        model = _place(T5ForConditionalGeneration.from_pretrained(r.path, **_hf_kwargs(dtype)), device)
        tok = AutoTokenizer.from_pretrained(r.path, local_files_only=True)
        return ModelHandle("t5", str(name), r.path, model, tok, dtype, device)

    return cached("t5", r.path, load, dtype, device)


# ---------------------------------------------------------------- SAM
def sam_config_from_state_dict(sd: dict[str, torch.Tensor]) -> dict:
    """Infer segment-anything sizes (ViT-B/L/H or any tiny variant) from the weights themselves."""
    try:
        embed_dim, _, patch, _ = sd["image_encoder.patch_embed.proj.weight"].shape
        pos = sd["image_encoder.pos_embed"].shape  # [1, H/p, W/p, C]
        depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k)))
        head_dim = sd["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
        grid = pos[1]
        global_idx = tuple(i for i in range(depth)
                           if sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] == 2 * grid - 1)
        local = [i for i in range(depth) if i not in global_idx]
        window = (sd[f"image_encoder.blocks.{local[0]}.attn.rel_pos_h"].shape[0] + 1) // 2 if local else 14
        out_chans = sd["image_encoder.neck.0.weight"].shape[0]
        dec_depth = 1 + max(int(m.group(1)) for k in sd
                            if (m := re.match(r"mask_decoder\.transformer\.layers\.(\d+)\.", k)))
        mlp_dim = sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]
        mask_in = sd["prompt_encoder.mask_downscaling.3.weight"].shape[0]
        iou_hidden = sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]
    except (KeyError, ValueError, IndexError) as e:
        raise ValueError(f"Not a segment-anything SAM checkpoint (missing or odd key: {e}).") from None
    return dict(embed_dim=int(embed_dim), depth=depth, num_heads=int(embed_dim) // int(head_dim),
                img_size=int(grid * patch), patch_size=int(patch), window_size=int(window),
                global_attn_indexes=global_idx, out_chans=int(out_chans), decoder_depth=dec_depth,
                decoder_mlp_dim=int(mlp_dim), decoder_heads=8, mask_in_chans=int(mask_in),
                iou_head_hidden_dim=int(iou_hidden))


# the largest sizes a segment-anything model has (ViT-H; the tiny test models are far below)
SAM_LIMITS = {"embed_dim": 1280, "depth": 32, "img_size": 1024, "grid": 64, "out_chans": 256, "decoder_depth": 2,
              "decoder_mlp_dim": 2048, "mask_in_chans": 16, "iou_head_hidden_dim": 256}


def validate_sam_state_dict(sd: dict[str, torch.Tensor], name: str = "checkpoint") -> dict:
    """The SAM sizes of ``sd``, checked before anything is allocated: every size within what SAM models use
    (:data:`SAM_LIMITS`), the checkpoint holding as many bytes as its tensors declare (no zero-stride views of a
    tiny storage), and exactly the keys and shapes of the model those sizes build (built on the meta device,
    so the check itself allocates nothing). Raises ``ValueError`` with one line otherwise."""
    cfg = sam_config_from_state_dict(sd)
    sizes = dict(cfg, grid=cfg["img_size"] // max(cfg["patch_size"], 1))
    for key, limit in SAM_LIMITS.items():
        if sizes[key] > limit:
            raise ValueError(f"{name} is not a SAM checkpoint this pack can run: {key} {sizes[key]} is larger than "
                             f"any SAM model's ({limit}).")
    declared = sum(t.numel() * t.element_size() for t in sd.values() if isinstance(t, torch.Tensor))
    stored = {}
    for t in sd.values():
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            stored[st.data_ptr()] = max(stored.get(st.data_ptr(), 0), st.nbytes())
    if declared > sum(stored.values()) + 4096:
        raise ValueError(f"{name} declares {declared / 2 ** 20:.1f} MiB of tensors but holds only "
                         f"{sum(stored.values()) / 2 ** 20:.1f} MiB: not a real SAM checkpoint.")
    from .tiny import make_sam
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in make_sam(**cfg).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or extra or wrong:
        what = (f"{len(missing)} missing (e.g. {missing[0]})" if missing else
                f"{len(extra)} unexpected (e.g. {extra[0]})" if extra else
                f"{len(wrong)} of another shape (e.g. {wrong[0]} {got[wrong[0]]}, expected {expected[wrong[0]]})")
        raise ValueError(f"{name} does not match the SAM architecture its sizes describe: {what} tensor(s).")
    return cfg


def load_sam(name: str, dtype=None, device=None) -> ModelHandle:
    """A segment-anything checkpoint (``.pth`` or ``.safetensors``), loaded weights-only; its architecture is
    validated against the shapes it declares before the model is allocated (:func:`validate_sam_state_dict`)."""
    r = _resolve(name, "sams")
    dtype, device = _dtype_device(dtype or "fp32", device)

    def load():
        from .tiny import make_sam
        sd = load_state_dict(r.path)
        cfg = validate_sam_state_dict(sd, r.path.name)
        sam = make_sam(**cfg)
        sam.load_state_dict(sd, strict=True)
        sam = _place(sam.to(dtype=dtype), device)
        variant = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}.get(cfg["embed_dim"], "custom")
        return ModelHandle("sam", str(name), r.path, sam, None, dtype, device, {"config": cfg, "variant": variant})

    return cached("sam", r.path, load, dtype, device)


# ---------------------------------------------------------------- Stable Diffusion (diffusers folders)
def load_sd_pipeline(name: str, dtype=None, device=None) -> ModelHandle:
    r = _resolve(name, "diffusers")
    dtype, device = _dtype_device(dtype, device)

    def load():
        if r.path.is_file():  # single-file checkpoint (SD1.x/2.x/SDXL), offline with bundled configs
            from ..trainers.lora import load_base
            pipe = load_base(r.path, dtype=dtype, device=device).pipeline()
            return ModelHandle("sd", str(name), r.path, pipe, None, dtype, device)
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained(r.path, local_files_only=True, **diffusers_dtype(dtype))
        pipe.set_progress_bar_config(disable=True)
        bridge.free_memory(sum(bridge.model_bytes(m) for m in pipe.components.values()
                               if isinstance(m, torch.nn.Module)), device)
        return ModelHandle("sd", str(name), r.path, pipe.to(device), None, dtype, device)

    return cached("sd", r.path, load, dtype, device)


LOADERS = {
    "captioner": load_captioner, "text_encoder": load_text_encoder, "clip": load_clip, "llm": load_llm,
    "dino": load_dino, "vit": lambda n, **k: load_vision_encoder(n, "rich_feedback", kind="vit", **k),
    "t5": load_t5, "sam": load_sam, "sd": load_sd_pipeline,
    "rich_feedback": lambda n, **k: _load_rich_feedback(n, **k),
    "tokenizer": load_tokenizer,
    "hps": lambda n, **k: _reward_loader("hps", "load_hps")(n, **k),
    "image_reward": lambda n, **k: _reward_loader("image_reward", "load_image_reward")(n, **k),
    "aesthetic": lambda n, **k: _reward_loader("aesthetic", "load_aesthetic")(n, **k),
}


def _reward_loader(module: str, fn: str):
    """The loaders of the preference rewards live next to their model code (imported on first use)."""
    import importlib
    return getattr(importlib.import_module(f"..rewards.{module}", __package__), fn)


def _load_rich_feedback(name, **kw):
    from ..rewards.rich_feedback.model import load_rich_feedback
    return load_rich_feedback(name, **kw)
