"""Keyword differences across the transformers / diffusers versions RewardLoop supports (requirements.txt).

Both libraries renamed ``from_pretrained(torch_dtype=...)`` to ``dtype=``: transformers in 4.56 (older versions
pass an unknown ``dtype`` on to the model's ``__init__`` and fail; newer ones warn on ``torch_dtype``), diffusers
together with its ``_resolve_dtype`` helper. Forge pins transformers 4.46.1 and diffusers 0.31, so loaders
ask here which name to use instead of hard-coding either.
"""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=None)
def _transformers_takes_dtype() -> bool:
    import transformers
    from packaging.version import Version
    return Version(transformers.__version__).release >= (4, 56)


@lru_cache(maxsize=None)
def _diffusers_takes_dtype() -> bool:
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401  (came with the rename)
        return True
    except ImportError:
        return False


def transformers_dtype(dtype) -> dict:
    """``{"dtype": d}`` or ``{"torch_dtype": d}`` for a transformers ``from_pretrained`` call."""
    return {"dtype": dtype} if _transformers_takes_dtype() else {"torch_dtype": dtype}


def diffusers_dtype(dtype) -> dict:
    """``{"dtype": d}`` or ``{"torch_dtype": d}`` for a diffusers ``from_pretrained`` / ``from_single_file`` call."""
    return {"dtype": dtype} if _diffusers_takes_dtype() else {"torch_dtype": dtype}


# transformers 5 saves tokenizers built from a `tokenizers` object under the class name "TokenizersBackend", which
# transformers 4.x does not know; "PreTrainedTokenizerFast" names the same class in both.
_PORTABLE_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def portable_hf_files(folder) -> int:
    """Make a model folder written by transformers 5 loadable by 4.x too; returns how many files were written.

    * ``tokenizer_config.json``: the class name ``TokenizersBackend`` becomes ``PreTrainedTokenizerFast``;
    * ``processor_config.json`` with an ``image_processor`` section (5.x keeps it there) and no
      ``preprocessor_config.json`` (where 4.x looks for it, and 5.x too when the section is absent): the section
      moves to the latter.
    """
    import json
    from pathlib import Path
    changed = 0
    for cfg in Path(folder).rglob("tokenizer_config.json"):
        data = json.loads(cfg.read_text())
        new = _PORTABLE_TOKENIZER_CLASSES.get(data.get("tokenizer_class"))
        if new is not None:
            data["tokenizer_class"] = new
            _write_json(cfg, data)
            changed += 1
    for cfg in Path(folder).rglob("processor_config.json"):
        pre = cfg.with_name("preprocessor_config.json")
        data = json.loads(cfg.read_text())
        if isinstance(data.get("image_processor"), dict) and not pre.exists():
            image = data.pop("image_processor")
            _write_json(pre, {**image, **({"processor_class": data["processor_class"]} if "processor_class" in data
                                         else {})})
            _write_json(cfg, data)  # 4.x would pass the section on to the processor as a second image_processor
            changed += 2
    return changed


def _write_json(path, data) -> None:
    import json
    import os
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
