"""ComfyUI node classes. Every module here exports NODE_CLASS_MAPPINGS (and NODE_DISPLAY_NAME_MAPPINGS).

Modules are discovered automatically; one that fails to import (a missing optional backend) is logged in
IMPORT_ERRORS and never stops the others from loading.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil

log = logging.getLogger("rewardloop")

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
IMPORT_ERRORS: dict[str, str] = {}

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _m.name.startswith("_"):
        continue
    try:
        _mod = importlib.import_module(f".{_m.name}", __name__)
    except Exception as _e:  # isolation: one broken backend never blocks the pack
        IMPORT_ERRORS[_m.name] = f"{type(_e).__name__}: {_e}"
        log.warning("RewardLoop: nodes.%s not loaded: %s", _m.name, IMPORT_ERRORS[_m.name])
        continue
    for _k, _cls in getattr(_mod, "NODE_CLASS_MAPPINGS", {}).items():
        if _k in NODE_CLASS_MAPPINGS:
            raise RuntimeError(f"Duplicate RewardLoop node id {_k!r} in nodes.{_m.name}")
        NODE_CLASS_MAPPINGS[_k] = _cls
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_mod, "NODE_DISPLAY_NAME_MAPPINGS", {}))
