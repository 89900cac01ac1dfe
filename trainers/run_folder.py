"""A training run's folder: named after the full output name, holding the settings it was started with, used by one
process at a time. Shared by every trainer (LoRA core / DPG, reward-ranked, rich feedback).

* :func:`run_dir_for` — ``<output>/<subdir>/<name>`` from the whole output name (``dogs/rex`` and ``cats/rex`` are
  two runs), refusing names that would place a run inside another run's folder.
* :func:`claim` — a lock file (``run.lock``) held for the run: a second process training the same output is
  refused at once; the OS releases the lock when its holder dies, so a killed run never blocks the next one (the
  pid in the file names the holder). A run that fails before it starts training leaves nothing behind.
* :func:`read_settings` / :func:`write_settings` / :func:`check_settings` — ``run.json`` records what a run was
  started with; resuming with other settings is refused with one line naming the differences.
* :func:`wipe` — a fresh start (``overwrite``) removes the run's own files, never anything else in the folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import atomic_write_text, safe_output_path

RUN_FILE = "run.json"
LOCK_FILE = "run.lock"


class RunBusyError(RuntimeError):
    """Another process is training into the same run folder."""


class SettingsMismatchError(ValueError):
    """A run would resume a folder started with other settings."""


# ---------------------------------------------------------------- where runs live
def run_dir_for(subdir: str, name: str) -> Path:
    """The run folder of output ``name`` (sub-folders included) under ``<output>/<subdir>``."""
    from .. import bridge
    root = (bridge.output_dir() / subdir).resolve()
    path = safe_output_path(root, name, "", overwrite=True)
    for parent in path.parents:
        if parent == root or root not in parent.parents:
            break
        if (parent / RUN_FILE).is_file() or (parent / "state.json").is_file():
            raise ValueError(f"Output name {name!r} would put its run inside the run folder {parent}: choose a name "
                             f"that does not start with {parent.relative_to(root).as_posix()}/.")
    return path


# ---------------------------------------------------------------- settings
def read_settings(run_dir: str | os.PathLike) -> dict | None:
    p = Path(run_dir) / RUN_FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_settings(run_dir: str | os.PathLike, kind: str, settings: dict, info: dict | None = None) -> None:
    atomic_write_text(Path(run_dir) / RUN_FILE, json.dumps(
        {"kind": kind, "settings": settings, "info": info or {}}, indent=1, default=str))


def diff(old: dict, new: dict, prefix: str = "", partial: bool = False) -> list[str]:
    """``key: old -> new`` for every differing leaf; ``partial``: keys missing from ``new`` are not compared."""
    out = []
    for k in sorted(set(old) | set(new)):
        if partial and k not in new:
            continue
        va, vb = old.get(k), new.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff(va, vb, f"{prefix}{k}.", partial)
        elif _plain(va) != _plain(vb):
            out.append(f"{prefix}{k}: {_show(va)} -> {_show(vb)}")
    return out


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def _show(v) -> str:
    text = repr(_plain(v))
    return text if len(text) <= 40 else text[:37] + "..."


def check_settings(run_dir: str | os.PathLike, kind: str, settings: dict, partial: bool = False) -> None:
    """Refuse (one line) when ``run_dir`` was started with other ``settings``; silent for a new or unmarked run."""
    old = read_settings(run_dir)
    if old is None or not isinstance(old.get("settings"), dict):
        return
    if old.get("kind") not in (None, kind):
        raise SettingsMismatchError(f"{run_dir} holds a {old.get('kind')} run, not a {kind} run: choose another "
                                    "output name (or run folder).")
    changes = diff(old["settings"], settings, partial=partial)
    if changes:
        more = f" (+{len(changes) - 3} more)" if len(changes) > 3 else ""
        raise SettingsMismatchError(
            f"{run_dir} was started with other settings ({'; '.join(changes[:3])}{more}): resume with the same "
            "settings, start afresh with overwrite (--overwrite), or choose another output name.")


def wipe(run_dir: str | os.PathLike, entries) -> None:
    """Remove a run's own files (``entries``: names or glob patterns) for a fresh start."""
    run_dir = Path(run_dir)
    for pattern in entries:
        for p in run_dir.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)


# ---------------------------------------------------------------- one process per run
@dataclass
class _Held:
    fd: int
    count: int = 1
    started: bool = False
    created: Path | None = None            # the first folder this claim created (None: the run folder existed)
    before: set = field(default_factory=set)   # entries of the run folder when it was claimed


_HELD: dict[str, _Held] = {}
_HELD_LOCK = threading.Lock()


def _lock_fd(fd: int) -> None:
    if os.name == "nt":  # pragma: no cover - Windows
        import msvcrt
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _holder(path: Path) -> str:
    from ..fileio import pid_alive
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "another process"
    pid = info.get("pid")
    if not isinstance(pid, int):
        return "another process"
    host = info.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    state = "" if where or pid_alive(pid) else ", no longer running here (another host or a shared folder?)"
    return f"process {pid}{where}{state}"


def _acquire(run_dir: Path) -> int:
    path = run_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _lock_fd(fd)
        except OSError:
            os.close(fd)
            raise RunBusyError(f"{_holder(path)} is already training into {run_dir}: wait for it to finish (or stop "
                               "it), or choose another output name.") from None
        try:  # the holder may have removed the file between our open and lock: then lock the new one
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
    return fd


def _release(run_dir: Path, held: _Held) -> None:
    if os.name != "nt":
        with contextlib.suppress(FileNotFoundError):
            (run_dir / LOCK_FILE).unlink()
    os.close(held.fd)


class Claim:
    """What :func:`claim` yields: call :meth:`started` once training (the part worth keeping) begins."""

    def __init__(self, run_dir: Path, key: str | None):
        self.run_dir = run_dir
        self._key = key

    def started(self) -> None:
        if self._key is not None:
            _HELD[self._key].started = True


def _first_missing(path: Path) -> Path | None:
    missing = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing = p
    return missing


def _cleanup(run_dir: Path, held: _Held) -> None:
    """Undo a failed start: remove what the claim created (only entries that were not there before)."""
    if held.created is not None:
        shutil.rmtree(run_dir, ignore_errors=True)
        p = run_dir
        while p != held.created:     # folders created for sub-folder names, if still empty (another run may
            p = p.parent             # have been created beside ours meanwhile)
            try:
                p.rmdir()
            except OSError:
                break
        return
    for p in run_dir.iterdir():
        if p.name not in held.before and p.name != LOCK_FILE:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


@contextlib.contextmanager
def claim(run_dir: str | os.PathLike, main: bool = True):
    """Hold ``run_dir`` for this process (re-entrant); on an error before :meth:`Claim.started`, the outermost
    claim removes what was created. ``main=False`` (other ranks of a multi-process run) takes no lock."""
    run_dir = Path(run_dir).resolve()
    if not main:
        yield Claim(run_dir, None)
        return
    key = str(run_dir)
    with _HELD_LOCK:
        held = _HELD.get(key)
        if held is not None:
            held.count += 1
            outer = False
        else:
            created = _first_missing(run_dir)
            before = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
            run_dir.mkdir(parents=True, exist_ok=True)
            try:
                fd = _acquire(run_dir)
            except BaseException:
                if created is not None:
                    _cleanup(run_dir, _Held(fd=-1, created=created))
                raise
            held = _HELD[key] = _Held(fd=fd, created=created, before=before)
            outer = True
    try:
        yield Claim(run_dir, key)
    except BaseException:
        if outer and not held.started:
            _cleanup(run_dir, held)
        raise
    finally:
        with _HELD_LOCK:
            held.count -= 1
            if held.count == 0:
                _HELD.pop(key, None)
                _release(run_dir, held)
