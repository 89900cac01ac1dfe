"""Safe file handling shared by every writer in the pack: atomic writes and names that stay in their folder."""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

_BAD = re.compile(r"[^A-Za-z0-9._ -]")


class UnsafeNameError(ValueError):
    pass


class OutputExistsError(FileExistsError):
    pass


def safe_output_path(folder: str | os.PathLike, name: str, suffix: str = "", overwrite: bool = False) -> Path:
    """Resolve ``name`` inside ``folder``; refuse names that escape it or that already exist.

    ``name`` may contain sub-folders (``people/alice``) but no ``..``, absolute paths or drive letters.
    """
    if not name or not name.strip():
        raise UnsafeNameError("The output name is empty: give a file name such as 'my_lora'.")
    raw = name.strip().replace("\\", "/")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw) or any(p in ("..", ".") for p in raw.split("/")):
        raise UnsafeNameError(
            f"Output name {name!r} would leave the output folder: use a plain name without '..' or '/' at the start.")
    parts = [p for p in raw.split("/") if p]
    for p in parts:
        if _BAD.search(p):
            raise UnsafeNameError(
                f"Output name {name!r} has characters that are not allowed: use letters, digits, '.', '_', '-' and spaces.")
    folder = Path(folder).resolve()
    path = folder.joinpath(*parts)
    if suffix and not path.name.lower().endswith(suffix.lower()):
        path = path.with_name(path.name + suffix)
    path = path.resolve()
    if folder != path and folder not in path.parents:
        raise UnsafeNameError(f"Output name {name!r} would leave {folder}.")
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} already exists: choose another name or turn on 'overwrite' to replace it.")
    return path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Write to a temporary file next to ``path`` and rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_save(path: str | os.PathLike, writer) -> Path:
    """Call ``writer(tmp_path)`` (any library's save function) and move the result to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def check_output_folder(out: str | os.PathLike, overwrite: bool = False, flag: str = "--out") -> Path:
    """Refuse a folder that is a file, or that exists with files in it (unless ``overwrite``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} is a file: give a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out} exists and is not empty: choose a new {flag} folder or add --overwrite.")
    return out


@contextlib.contextmanager
def atomic_folder(out: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary sibling folder to fill; on success it replaces ``out`` in one rename.

    On failure the temporary folder is removed and ``out`` is untouched. An existing non-empty ``out`` is
    refused unless ``overwrite``; then the old folder is moved aside and deleted only after the new one is in place.
    """
    import shutil
    out = check_output_folder(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        check_output_folder(out, overwrite)  # still free (another run may have written it meanwhile)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

