"""Loading checkpoints without running code: safetensors first, ``torch.load(weights_only=True)`` otherwise."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class UnsafeCheckpointError(RuntimeError):
    pass


def load_state_dict(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a pickle-based file, refusing pickles that carry code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path), device=device)
    try:
        sd = torch.load(str(path), map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UnsafeCheckpointError(
            f"Refusing to load {path.name}: it contains Python objects beyond plain tensors ({msg}). Only "
            f"weights-only checkpoints are loaded; convert it to .safetensors with a tool you trust.") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise UnsafeCheckpointError(f"{path.name} does not hold a state dict (got {type(sd).__name__}).")
    return sd


def load_training_state(path: str | os.PathLike) -> dict:
    """A training checkpoint's ``state.pt`` (tensors, numbers, strings only): refused pickles and damaged files
    give one line that says what to do."""
    import zipfile
    path = Path(path)
    try:
        st = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        import re
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"it would call {found.group(1)}" if found else "it holds Python objects beyond plain tensors"
        raise UnsafeCheckpointError(
            f"Refusing to resume from {path}: {what}. Delete that checkpoint folder or start afresh with overwrite "
            "(--overwrite).") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpointError(
            f"Cannot resume from {path}: the file is damaged ({msg[:160]}). Delete that checkpoint folder to resume "
            "from an earlier one, or start afresh with overwrite (--overwrite).") from None
    if not isinstance(st, dict):
        raise UnsafeCheckpointError(f"{path} is not a training checkpoint (got {type(st).__name__}).")
    return st


def save_state_dict(sd: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None):
    """Atomic safetensors save (contiguous CPU tensors)."""
    from safetensors.torch import save_file

    from ..fileio import atomic_save
    clean = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    return atomic_save(path, lambda tmp: save_file(clean, tmp, metadata=metadata))
