"""The CLIP BPE tokenizer (SD1.x / SDXL text encoders), found offline on the user's machine.

A single-file checkpoint (what every ComfyUI / Forge user has) carries no tokenizer, and the tokenizer is 1.6 MB
of vocabulary that every host already ships. Looked for, in order:

1. ``models/clip/clip-vit-large-patch14`` or ``models/clip/clip-l-tokenizer`` (any ``clip`` search path): a folder
   with ``vocab.json`` + ``merges.txt`` (or a fast ``tokenizer.json``) (``python -m rewardloop download clip-l-tokenizer`` fetches only those);
2. the Hugging Face cache (``openai/clip-vit-large-patch14``, or an SD1.5 repo's ``tokenizer/``);
3. the host's own copy: ComfyUI's ``comfy/sd1_tokenizer``, Forge's
   ``backend/huggingface/runwayml/stable-diffusion-v1-5/tokenizer`` (also found through ``COMFYUI_PATH`` /
   ``FORGE_PATH`` when the host is not running);
4. an installed PyPI package that ships CLIP's original BPE merges (``open_clip``, ``clip``): the vocabulary is
   rebuilt from them exactly as CLIP does.

Prompts are always cut at 77 tokens (``model_max_length``): ComfyUI's copy says 8192.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import tempfile
from pathlib import Path

CLIP_MAX_LENGTH = 77
FOLDER_NAMES = ("clip-vit-large-patch14", "clip-l-tokenizer")
SD15_REPOS = ("stable-diffusion-v1-5/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5",
              "CompVis/stable-diffusion-v1-4")
FORGE_SD15_TOKENIZER = Path("backend") / "huggingface" / "runwayml" / "stable-diffusion-v1-5" / "tokenizer"
BPE_PACKAGES = (("open_clip", "bpe_simple_vocab_16e6.txt.gz"), ("clip", "bpe_simple_vocab_16e6.txt.gz"))
N_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48894 merges of its BPE file


def _has_files(d: Path) -> bool:
    """A slow-tokenizer pair (vocab.json + merges.txt) or a fast tokenizer.json (what transformers 5 saves)."""
    return ((d / "vocab.json").is_file() and (d / "merges.txt").is_file()) or (d / "tokenizer.json").is_file()


def _package_dirs(name: str) -> list[Path]:
    """Folders of an importable package without importing it (``comfy`` is a namespace package: no __file__)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    return [Path(p) for p in (spec.submodule_search_locations or [])]


def _hf_cache_dirs() -> list[Path]:
    out = []
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return out
    for repo, sub in [("openai/clip-vit-large-patch14", "")] + [(r, "tokenizer") for r in SD15_REPOS]:
        pattern = f"{sub}/*" if sub else "*.json"
        try:
            snap = Path(snapshot_download(repo, local_files_only=True, allow_patterns=[pattern, "*.txt"]))
        except Exception:
            continue
        out.append(snap / sub if sub else snap)
    return out


def _host_dirs() -> list[Path]:
    out = [d / "sd1_tokenizer" for d in _package_dirs("comfy")]
    if os.environ.get("COMFYUI_PATH"):
        out.append(Path(os.environ["COMFYUI_PATH"]) / "comfy" / "sd1_tokenizer")
    out += [d.parent / FORGE_SD15_TOKENIZER for d in _package_dirs("backend")]
    if os.environ.get("FORGE_PATH"):
        out.append(Path(os.environ["FORGE_PATH"]) / FORGE_SD15_TOKENIZER)
    return out


def candidate_dirs() -> list[Path]:
    """Every folder where a CLIP tokenizer is looked for, in order (see the module docstring)."""
    from .. import bridge
    cands = [base / n for base in bridge.folder_search_paths("clip") for n in FOLDER_NAMES]
    return cands + _hf_cache_dirs() + _host_dirs()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable character table, in CLIP's order (printable bytes first)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in keep}
    for i, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + i)
    return table


def files_from_bpe(bpe_gz: Path, out_dir: Path) -> Path:
    """Write ``vocab.json`` + ``merges.txt`` from CLIP's original ``bpe_simple_vocab_16e6.txt.gz``."""
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(m.split()) for m in lines[1:1 + N_MERGES]]
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                        encoding="utf-8")
    return out_dir


def package_bpe_files() -> list[Path]:
    out = []
    for pkg, fname in BPE_PACKAGES:
        out += [d / fname for d in _package_dirs(pkg) if (d / fname).is_file()]
    return out


def _load(folder: Path, pad_token: str | None):
    from transformers import CLIPTokenizer
    kw = {"pad_token": pad_token} if pad_token else {}
    if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, model_max_length=CLIP_MAX_LENGTH,
                                             **kw)
    return CLIPTokenizer(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"),
                         model_max_length=CLIP_MAX_LENGTH, **kw)


def find_clip_tokenizer(pad_token: str | None = None):
    """The CLIP tokenizer from files already on this machine (model_max_length 77), or one actionable error."""
    for d in candidate_dirs():
        if _has_files(d):
            return _load(d, pad_token)
    for bpe in package_bpe_files():
        with tempfile.TemporaryDirectory(prefix="rewardloop-clip-tok-") as tmp:
            return _load(files_from_bpe(bpe, Path(tmp)), pad_token)
    raise FileNotFoundError(
        "No CLIP tokenizer found offline (a single-file checkpoint has none): run `python -m rewardloop download "
        "clip-l-tokenizer` (1.6 MB), or copy vocab.json + merges.txt from ComfyUI's comfy/sd1_tokenizer or any SD1.x "
        "diffusers model's tokenizer/ folder into models/clip/clip-l-tokenizer.")
