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
