"""Checks the commands run before they load a model or write a file: a failed start costs seconds, leaves
nothing behind and says in one line what to change."""
from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
# output names derived from input names are cut to this many characters (file systems allow 255 bytes and the
# atomic writer adds a temporary prefix and suffix)
MAX_DERIVED_NAME = 120


def split_names(values) -> list[str]:
    """``["caption,rich", "sam_llm"]`` → ``["caption", "rich", "sam_llm"]``."""
    return [n.strip() for v in values or [] for n in str(v).split(",") if n.strip()]


def collect_images(items, what: str = "Image") -> list[Path]:
    """Image files from files and folders (folders: their .png/.jpg/.jpeg/.webp/.bmp files, sorted)."""
    files: list[Path] = []
    for item in items:
        p = Path(item)
        try:
            files += _images_of(p, what)
        except OSError as e:  # a name too long, a folder that cannot be listed, …
            raise UserError(f"{what} {p}: {e.strerror or e}.") from None
    if not files:
        raise UserError("No images found: pass image files or folders with .png/.jpg/.webp files.")
    return files


def _images_of(p: Path, what: str) -> list[Path]:
    """One command-line item: an image file, or a folder's image files."""
    if p.is_symlink() and not p.exists():
        raise UserError(f"{what} {p} is a broken symbolic link: point it at a file or remove it.")
    if p.is_dir():
        found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.is_dir())
        if not found:
            raise UserError(f"Folder {p} holds no images: add .png/.jpg/.jpeg/.webp/.bmp files.")
        return found
    if p.is_file():
        return [p]
    if p.exists():
        raise UserError(f"{what} {p} is not a regular file: give image files or folders of them.")
    raise UserError(f"{what} {p} does not exist.")


def load_images(files):
    """Decode every image now (one clear line for a bad one) so nothing fails after the models loaded."""
    from ..rewards.images import as_pil_list
    return as_pil_list(files)


def _name_max(path: Path) -> int:
    try:
        return int(os.pathconf(path, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _existing_ancestor(p: Path) -> Path:
    p = p.absolute()
    for q in [p, *p.parents]:
        try:
            if q.exists() or q.is_symlink():
                return q
        except OSError:  # a name too long for the file system: look further up
            continue
    return Path(p.anchor)


def check_out_dir(out: str, overwrite: bool, flag: str = "--out") -> Path:
    """An output folder that can be created (or is empty, or ``overwrite`` is on): checked without creating it."""
    if not str(out).strip():
        raise UserError(f"{flag} is empty: give an output folder.")
    p = Path(out)
    limit = _name_max(_existing_ancestor(p))
    for part in p.parts:
        if len(os.fsencode(part)) > limit:
            raise UserError(f"{flag}: the name {part[:40]!r}… is {len(os.fsencode(part))} bytes long; the file "
                            f"system allows {limit}: choose a shorter name.")
    if p.is_symlink() and not p.exists():
        raise UserError(f"{flag} {p} is a broken symbolic link: remove it or give another folder.")
    if p.exists():
        if not p.is_dir():
            raise UserError(f"{flag} {p} is a file: give a folder.")
        if any(p.iterdir()) and not overwrite:
            raise UserError(f"{flag} {p} exists and is not empty: choose a new {flag} folder or add --overwrite.")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {p} is not writable: choose another folder.")
        return p
    anc = _existing_ancestor(p)
    if not anc.is_dir():
        raise UserError(f"{flag} {p} cannot be created: {anc} is a file.")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {p} cannot be created: {anc} is not writable.")
    return p


def derived_name(stem: str, suffix: str, limit: int = MAX_DERIVED_NAME) -> str:
    """``stem + suffix`` with the stem cut so the name stays at most ``limit`` characters."""
    keep = max(1, limit - len(suffix))
    return (stem if len(stem) <= keep else stem[:keep]) + suffix


def check_int(flag: str, value: int, minimum: int | None = None, maximum: int | None = None) -> int:
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        rng = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise UserError(f"{flag} must be {rng}, got {value}.")
    return value


def check_float(flag: str, value: float, minimum: float | None = None, maximum: float | None = None,
                above: bool = False) -> float:
    """A finite number in ``[minimum, maximum]`` (``above``: strictly above ``minimum``)."""
    bad = not math.isfinite(value)
    if minimum is not None:
        bad = bad or (value <= minimum if above else value < minimum)
    if maximum is not None:
        bad = bad or value > maximum
    if bad:
        lo = "" if minimum is None else f"{'above' if above else 'at least'} {minimum:g}"
        hi = "" if maximum is None else f"at most {maximum:g}"
        raise UserError(f"{flag} must be a number {' and '.join(x for x in (lo, hi) if x)}, got {value}.")
    return value


def check_model(name: str, folder: str, flag: str):
    """Resolve a model (catalogue key, name in models/<folder>, or path) and check its files, without loading."""
    from ..weights.registry import resolve
    from ..weights.safe_load import check_model_files
    if not str(name).strip():
        raise UserError(f"{flag} is empty: give a model name or path.")
    r = resolve(name, folder=folder)
    check_model_files(r.path)
    return r


def check_prompts(values, n: int, flag: str = "--prompt") -> list[str]:
    from ..rewards.images import broadcast_prompts
    if any(not str(v).strip() for v in values):
        raise UserError(f"{flag} is empty: type the text the images were generated from.")
    return broadcast_prompts(values if len(values) > 1 else values[0], n)


DTYPE_CHOICES = ["auto", "fp32", "fp16", "bf16"]


def device_type(text: str) -> str:
    """argparse type of ``--device``: a torch device this machine has (checked when the command line is read)."""
    import argparse

    import torch
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available on this machine (use --device cpu)")
    return text


def add_device_args(p, dtype: bool = True) -> None:
    p.add_argument("--device", default=None, type=device_type, help="cpu, cuda, … (default: best available)")
    if dtype:
        p.add_argument("--dtype", default=None, choices=DTYPE_CHOICES, help="auto, fp32, fp16, bf16")
