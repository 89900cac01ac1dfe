"""Loading checkpoints without running code: safetensors first, ``torch.load(weights_only=True)`` otherwise."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from ..errors import UserError, first_line

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class UnsafeCheckpointError(RuntimeError):
    pass


def refusal(path: str | os.PathLike, exc: BaseException) -> UnsafeCheckpointError:
    """The one-line refusal of a pickle that holds more than tensors (names the offending global, never suggests
    turning the safety off)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    why = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln or "unsupported" in ln),
               lines[0] if lines else type(exc).__name__)
    if why.startswith("Weights only load failed"):
        why = "not a weights-only file"
    return UnsafeCheckpointError(
        f"Refusing to load {Path(path).name}: it contains Python objects beyond plain tensors ({why.rstrip('.')}). "
        f"Only weights-only checkpoints are loaded; convert it to .safetensors with a tool you trust.")


def damaged(path: str | os.PathLike, exc: BaseException) -> UserError:
    return UserError(f"Model file {path} is damaged or incomplete ({first_line(exc)}): download it again or "
                     f"replace it.")


def check_safetensors(path: str | os.PathLike) -> None:
    """Read only the header of a ``.safetensors`` file (safetensors' own parser checks that the tensors cover the
    file exactly), so a truncated or foreign file is refused before any model is built."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:  # SafetensorError, OSError
        raise damaged(path, e) from None


def check_pickle(path: str | os.PathLike) -> None:
    """Refuse a pickle-based checkpoint that carries code, without reading its tensors (memory-mapped,
    weights-only unpickling). Files in the old non-zip format are checked when they are loaded."""
    try:
        torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise refusal(path, e) from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        if "mmap" in str(e) or "zip" in str(e).lower():
            return  # old format: checked (weights-only) when loaded
        raise damaged(path, e) from None


def check_model_files(path: str | os.PathLike, depth: int = 2) -> None:
    """Cheap integrity checks of a model file or folder before loading it: safetensors headers and pickles."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = [f for d in range(depth + 1) for f in sorted(path.glob("/".join(["*"] * (d + 1))))
                 if f.is_file()]
    else:
        return
    for f in files:
        suffix = f.suffix.lower()
        if suffix == ".safetensors":
            check_safetensors(f)
        elif suffix in PICKLE_SUFFIXES:
            check_pickle(f)


def load_state_dict(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a pickle-based file, refusing pickles that carry code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device=device)
        except Exception as e:  # SafetensorError (truncated, foreign header), OSError
            if isinstance(e, MemoryError):
                raise
            raise damaged(path, e) from None
    try:
        sd = torch.load(str(path), map_location=device, weights_only=True)
    except (pickle.UnpicklingError, AttributeError, TypeError) as e:
        raise refusal(path, e) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:  # truncated zip, not a checkpoint at all
        if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e) or "Weights only" in str(e):
            raise refusal(path, e) from None
        raise damaged(path, e) from None
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
