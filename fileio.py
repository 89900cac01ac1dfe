"""Safe file handling shared by every writer in the pack: atomic writes and names that stay in their folder.

Atomic writes go to a hidden temporary sibling (``.<name>.<pid>-<random>.tmp`` or with the target's suffix) that
is renamed into place only when complete; it gets the permissions an ordinary file would (the umask), and
temporaries left behind by a killed process are removed by the next write of the same file. Output names are
checked up front against that temporary name's length, so a name too long for the file system is refused before
any work, like a name that would leave its folder.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import shutil
import threading
from pathlib import Path

_BAD = re.compile(r"[^A-Za-z0-9._ -]")
_PID_WIDTH = 10            # temp names carry the writer's pid: room for any pid
_RAND_WIDTH = 8
NAME_MAX_DEFAULT = 255     # bytes per file name on ext4, NTFS, APFS, btrfs, xfs


class UnsafeNameError(ValueError):
    pass


class OutputExistsError(FileExistsError):
    pass


class NonFiniteError(ValueError):
    """A loss, parameter or tensor about to be written is NaN or infinite."""


# ---------------------------------------------------------------- names
def name_max(folder: str | os.PathLike) -> int:
    """The longest file name (in bytes) the file system holding ``folder`` accepts."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return int(os.pathconf(p, "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):
        return NAME_MAX_DEFAULT


def _temp_overhead(suffix: str) -> int:
    """Extra characters of the longest temporary name around the final name (see :func:`_temp_path`)."""
    return len(".") + len(".") + _PID_WIDTH + len("-") + _RAND_WIDTH + max(len(suffix), len(".tmp"))


def max_name_length(folder: str | os.PathLike, suffix: str = "") -> int:
    """Longest final file name (suffix included) whose temporary sibling still fits the file system."""
    return name_max(folder) - _temp_overhead(suffix)


def safe_output_path(folder: str | os.PathLike, name: str, suffix: str = "", overwrite: bool = False) -> Path:
    """Resolve ``name`` inside ``folder``; refuse names that escape it, are too long, or already exist.

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
    nmax = name_max(folder)
    added = len(path.name.encode()) - len(parts[-1].encode())       # the suffix appended to the name
    allowed = max_name_length(folder, path.suffix) - added
    too_long = [p for p in parts[:-1] if len(p.encode()) > nmax]
    if too_long or len(parts[-1].encode()) > allowed:
        limit = nmax if too_long else allowed
        raise UnsafeNameError(
            f"Output name {_short(name)} is too long ({len(raw)} characters): use at most {limit} characters "
            f"for the {'sub-folder' if too_long else 'file'} name.")
    path = path.resolve()
    if folder != path and folder not in path.parents:
        raise UnsafeNameError(f"Output name {name!r} would leave {folder}.")
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} already exists: choose another name or turn on 'overwrite' to replace it.")
    return path


def _short(name: str, keep: int = 40) -> str:
    return repr(name) if len(name) <= keep else repr(name[:keep] + "…")


# ---------------------------------------------------------------- permissions
_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), else set and restored."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _umask_lock:
        old = os.umask(0o022)
        os.umask(old)
    return old


def _plain_permissions(path: str | os.PathLike, directory: bool = False) -> None:
    """What ``open(..., 'w')`` / ``mkdir`` would have given: 0666 / 0777 minus the umask."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


# ---------------------------------------------------------------- temporaries
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{%d}(\.[^.]*)?$" % _RAND_WIDTH)


def pid_alive(pid: int) -> bool:
    try:
        import psutil
        return psutil.pid_exists(int(pid))
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        if os.name == "nt":
            return True   # cannot tell: keep the file
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _temp_path(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(_RAND_WIDTH // 2)}{suffix or '.tmp'}")


def clean_orphans(path: str | os.PathLike) -> list[Path]:
    """Remove temporaries of ``path`` left by processes that no longer run (a kill during an atomic write)."""
    path = Path(path)
    return _remove_dead_temporaries(path.parent, path.name)


def clean_orphans_in(folder: str | os.PathLike) -> list[Path]:
    """Remove every temporary in ``folder`` left by a dead writer (for folders whose file names change from
    write to write, such as ``checkpoints/step_N``)."""
    return _remove_dead_temporaries(Path(folder), None)


def _remove_dead_temporaries(folder: Path, name: str | None) -> list[Path]:
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    prefix = f".{name}." if name is not None else "."
    for p in folder.iterdir():
        if not p.name.startswith(prefix):
            continue
        m = _TMP_RE.match(p.name)
        if not m or (name is not None and m.group("name") != name):
            continue
        pid = int(m.group("pid"))
        if pid == os.getpid() or pid_alive(pid):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Write to a temporary file next to ``path`` and rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_orphans(path)
    tmp = _temp_path(path, ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)  # umask applies
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
    clean_orphans(path)
    tmp = _temp_path(path, path.suffix)
    try:
        writer(str(tmp))
        _plain_permissions(tmp)   # a library may create the file itself with other modes
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
    The folder gets the permissions ``mkdir`` would give (the umask); temporaries of a killed writer are removed.
    """
    out = check_output_folder(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_orphans(out)
    tmp = _temp_path(out, ".tmp")
    tmp.mkdir()
    try:
        yield tmp
        check_output_folder(out, overwrite)  # still free (another run may have written it meanwhile)
        if out.exists():
            old = _temp_path(out, ".old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------- finite values
def first_non_finite(tensors) -> str | None:
    """Name of the first tensor (of a dict, possibly nested) holding NaN or ±inf; ``None`` when all are finite."""
    import torch

    def walk(obj, prefix):
        if isinstance(obj, torch.Tensor):
            if (obj.is_floating_point() or obj.is_complex()) and not bool(torch.isfinite(obj).all()):
                return prefix or "tensor"
            return None
        if isinstance(obj, float):
            return None if math.isfinite(obj) else prefix
        if isinstance(obj, dict):
            items = obj.items()
        elif isinstance(obj, (list, tuple)):
            items = enumerate(obj)
        else:
            return None
        for k, v in items:
            bad = walk(v, f"{prefix}.{k}" if prefix else str(k))
            if bad is not None:
                return bad
        return None

    return walk(tensors, "")


def check_finite(tensors, what: str) -> None:
    """Refuse to write non-finite values: raise :class:`NonFiniteError` naming the first bad tensor."""
    bad = first_non_finite(tensors)
    if bad is not None:
        raise NonFiniteError(f"Not writing {what}: {bad} holds NaN or infinite values.")
