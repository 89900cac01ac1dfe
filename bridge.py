"""The one place that talks to ComfyUI's services, with plain fallbacks when ComfyUI is absent.

Everything else in the pack (library, trainers, CLI, nodes) asks this module for:
devices, offloading, freeing memory, interrupt checks, progress bars and model folders.
Inside ComfyUI these map to ``comfy.model_management``, ``comfy.utils.ProgressBar`` and
``folder_paths``; outside (CLI, tests, A1111) to torch, tqdm and the pack's own folders.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Iterable

import torch

log = logging.getLogger("rewardloop")

PACK_DIR = Path(__file__).resolve().parent

# Our model folder names, registered with ComfyUI's folder_paths (and used under any models root).
MODEL_FOLDERS: dict[str, tuple[str, ...]] = {
    "blip": (),            # captioners (HF folders)
    "clip": (),            # text encoders / CLIP models (HF folders)
    "sams": (".pth", ".pt", ".safetensors"),
    "LLM": (),             # chat LLMs (HF folders or .gguf)
    "rich_feedback": (),   # RAHF checkpoints (our format: folder with config.json + safetensors)
    "dino": (),            # DINO ViT (HF folders)
    "checkpoints": (".safetensors", ".ckpt", ".pt", ".pth"),
    "diffusers": (),
    "loras": (".safetensors",),
}


class Interrupted(Exception):
    """Raised when the user asked to stop (ComfyUI's interrupt button, Ctrl-C in the CLI)."""


def _comfy():
    try:
        import comfy.model_management as mm  # type: ignore
        return mm
    except Exception:
        return None


def _folder_paths():
    try:
        import folder_paths  # type: ignore
        return folder_paths
    except Exception:
        return None


def in_comfyui() -> bool:
    return _comfy() is not None and _folder_paths() is not None


# ---------------------------------------------------------------- devices and memory
def get_device() -> torch.device:
    """The device to compute on: ComfyUI's choice, else CUDA/MPS when present, else the CPU."""
    forced = os.environ.get("REWARDLOOP_DEVICE")
    if forced:
        return torch.device(forced)
    mm = _comfy()
    if mm is not None:
        return mm.get_torch_device()
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def offload_device() -> torch.device:
    mm = _comfy()
    if mm is not None:
        return mm.unet_offload_device()
    return torch.device("cpu")


def default_dtype(device: torch.device | None = None) -> torch.dtype:
    """fp16 on CUDA (bf16 where supported), fp32 on the CPU."""
    device = device or get_device()
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def parse_dtype(name: str | torch.dtype | None, device: torch.device | None = None) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "", "auto"):
        return default_dtype(device)
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"Unknown dtype {name!r}: use one of auto, fp32, fp16, bf16.")
    return table[name]


def free_memory(num_bytes: int, device: torch.device | None = None) -> None:
    """Ask ComfyUI to evict its own models so that ``num_bytes`` fit on ``device``."""
    device = device or get_device()
    mm = _comfy()
    if mm is not None and device.type != "cpu":
        try:
            mm.free_memory(int(num_bytes * 1.3), device)
        except Exception as e:  # pragma: no cover - depends on ComfyUI version
            log.warning("ComfyUI free_memory failed: %s", e)


def soft_empty_cache() -> None:
    mm = _comfy()
    if mm is not None:
        mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def model_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers())


def to_device_for_use(model: torch.nn.Module, device: torch.device | None = None) -> torch.nn.Module:
    """Move a foreign (non-ComfyUI) model to the compute device, freeing ComfyUI memory first."""
    device = device or get_device()
    if device.type != "cpu":
        free_memory(model_bytes(model), device)
    return model.to(device)


def offload(model: torch.nn.Module, keep_loaded: bool = False) -> torch.nn.Module:
    """After use: move back to the offload device unless the user keeps it loaded."""
    if keep_loaded:
        return model
    target = offload_device()
    model.to(target)
    if target.type == "cpu":
        soft_empty_cache()
    return model


# ---------------------------------------------------------------- interrupts
_interrupt = threading.Event()


def request_interrupt() -> None:
    """Fallback interrupt flag (CLI Ctrl-C handler, tests)."""
    _interrupt.set()


def clear_interrupt() -> None:
    _interrupt.clear()


def check_interrupt() -> None:
    """Raise if the user asked to stop. Call inside every long loop."""
    mm = _comfy()
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()
    if _interrupt.is_set():
        _interrupt.clear()
        raise Interrupted("Interrupted by the user.")


def interrupt_exceptions() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the user stopped us' (ours and ComfyUI's)."""
    types: list[type[BaseException]] = [Interrupted, KeyboardInterrupt]
    mm = _comfy()
    if mm is not None and hasattr(mm, "InterruptProcessingException"):
        types.append(mm.InterruptProcessingException)
    return tuple(types)


# ---------------------------------------------------------------- progress
class Progress:
    """ComfyUI ProgressBar when available, tqdm otherwise. Each update also checks interrupts."""

    def __init__(self, total: int, desc: str = "", node_id: str | None = None, console: bool = True):
        self.total = max(int(total), 1)
        self.n = 0
        self._comfy_bar = None
        self._tqdm = None
        try:
            import comfy.utils  # type: ignore
            self._comfy_bar = comfy.utils.ProgressBar(self.total, node_id=node_id) if node_id else \
                comfy.utils.ProgressBar(self.total)
        except Exception:
            self._comfy_bar = None
        if console and os.environ.get("REWARDLOOP_NO_TQDM") != "1":
            try:
                from tqdm.auto import tqdm
                # stderr, and only on a terminal (disable=None): bars never mix into piped tables or logs
                self._tqdm = tqdm(total=self.total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr,
                                  disable=None)
            except Exception:
                self._tqdm = None

    def update(self, n: int = 1, postfix: dict | None = None, preview=None) -> None:
        self.n += n
        if self._comfy_bar is not None:
            if preview is not None:
                self._comfy_bar.update_absolute(self.n, self.total, preview)
            else:
                self._comfy_bar.update(n)
        if self._tqdm is not None:
            if postfix:  # before update(): the line drawn by this update shows this step's values
                self._tqdm.set_postfix(postfix, refresh=False)
            self._tqdm.update(n)
        check_interrupt()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# ---------------------------------------------------------------- folders
def models_roots() -> list[Path]:
    """Extra models roots laid out like ComfyUI's ``models/`` (``REWARDLOOP_MODELS``, ``os.pathsep``-separated)."""
    env = os.environ.get("REWARDLOOP_MODELS", "")
    return [Path(p) for p in env.split(os.pathsep) if p]


def pack_models_dir() -> Path:
    """The pack's own weights folder (``weights/models``), where downloads land outside ComfyUI."""
    return Path(os.environ.get("REWARDLOOP_PACK_MODELS", PACK_DIR / "weights" / "models"))


def register_model_folders() -> None:
    """Register our folder names with ComfyUI's folder_paths (idempotent); no-op outside ComfyUI."""
    fp = _folder_paths()
    if fp is None:
        return
    for name, exts in MODEL_FOLDERS.items():
        default = os.path.join(fp.models_dir, name)
        if name in fp.folder_names_and_paths:
            paths, old_exts = fp.folder_names_and_paths[name]
            if default not in paths:
                paths.append(default)
            if exts and isinstance(old_exts, set):
                old_exts.update(exts)
        else:
            fp.folder_names_and_paths[name] = ([default], set(exts))


def comfy_folder_paths(folder: str) -> list[Path]:
    fp = _folder_paths()
    if fp is None:
        return []
    try:
        return [Path(p) for p in fp.get_folder_paths(folder)]
    except Exception:
        return []


def folder_search_paths(folder: str) -> list[Path]:
    """Where files of ``folder`` are looked for, in order: ComfyUI, REWARDLOOP_MODELS, the pack."""
    paths = comfy_folder_paths(folder)
    paths += [root / folder for root in models_roots()]
    if folder == "loras" and not paths:
        paths.append(loras_dir())          # LoRAs trained outside ComfyUI
    paths.append(pack_models_dir() / folder)
    seen, out = set(), []
    for p in paths:
        if str(p) not in seen:
            seen.add(str(p))
            out.append(p)
    return out


# files that may hold weights in a folder of HF-format models (which otherwise lists only sub-folders)
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".pth", ".pt", ".bin", ".ckpt")


def is_placeholder(name: str) -> bool:
    """ComfyUI's empty marker files (``put_checkpoints_here``, ``put_diffusers_models_here``, ...)."""
    return name.startswith("put_") and name.endswith("_here")


def list_folder(folder: str, exts: Iterable[str] | None = None, dirs: bool = True) -> list[str]:
    """Names (files and, optionally, sub-folders) under every search path of ``folder``, for combos.

    Folders without extensions (HF-format models) list sub-folders and weight files only; ComfyUI's placeholder
    files are never listed."""
    exts = tuple(exts if exts is not None else MODEL_FOLDERS.get(folder, ())) or WEIGHT_SUFFIXES
    names: set[str] = set()
    for base in folder_search_paths(folder):
        if not base.is_dir():
            continue
        for p in base.iterdir():
            if p.name.startswith(".") or is_placeholder(p.name):
                continue
            if p.is_dir() and dirs:
                names.add(p.name)
            elif p.is_file() and p.suffix.lower() in exts:
                names.add(p.name)
    return sorted(names)


def output_dir() -> Path:
    """Where outputs go: ComfyUI's output folder, else ``REWARDLOOP_OUTPUT``, else ``./output`` (never the pack)."""
    fp = _folder_paths()
    if fp is not None:
        return Path(fp.get_output_directory())
    env = os.environ.get("REWARDLOOP_OUTPUT")
    return Path(env).expanduser() if env else Path.cwd() / "output"


def temp_dir() -> Path:
    fp = _folder_paths()
    if fp is not None:
        return Path(fp.get_temp_directory())
    import tempfile
    return Path(tempfile.gettempdir()) / "rewardloop"


def loras_dir() -> Path:
    """Where trained LoRAs are written: ComfyUI's first ``loras`` folder, else the first ``REWARDLOOP_MODELS``
    root's ``loras``, else ``<output>/loras`` (:func:`output_dir`), never the installed pack's folder."""
    return model_output_dir("loras")


def model_output_dir(folder: str) -> Path:
    """Where trained models of ``folder`` (loras, checkpoints) are written: ComfyUI's first such folder, else the
    first ``REWARDLOOP_MODELS`` root's, else ``<output>/<folder>``, never the installed pack's folder."""
    paths = comfy_folder_paths(folder)
    if paths:
        return paths[0]
    roots = models_roots()
    if roots:
        return roots[0] / folder
    return output_dir() / folder
