"""Make an API workflow runnable on tiny random models (``workflows/api/tiny_models.json``), for integration tests."""
from __future__ import annotations

import copy
import json
from pathlib import Path

from .graph import API_DIR

TINY_MODELS_PATH = API_DIR / "tiny_models.json"


def load_plan(path: str | Path = TINY_MODELS_PATH) -> dict:
    p = Path(path)
    if not p.is_file():
        return {}
    return {k: v for k, v in json.loads(p.read_text()).items() if not k.startswith("_")}


def entry_for(name: str, plan: dict) -> tuple[bool, str]:
    """(runnable, reason) for workflow ``name`` (file stem without ``.api``)."""
    e = plan.get(name)
    if e is None:
        return False, f"no entry for {name!r} in workflows/api/tiny_models.json"
    if not e.get("runnable", False):
        return False, e.get("reason") or "marked not runnable on tiny models"
    return True, ""


def apply(prompt: dict, entry: dict, files: dict[str, str]) -> dict:
    """A copy of ``prompt`` with ``entry['replace']`` and ``entry['set']`` applied.

    ``files`` maps each model alias to the name ComfyUI sees ('@alias' values). Unknown node ids in ``set``
    are an error (the plan went stale).
    """
    out = copy.deepcopy(prompt)
    repl = entry.get("replace", {})
    for node in out.values():
        for k, v in list(node.get("inputs", {}).items()):
            if isinstance(v, str) and v in repl:
                node["inputs"][k] = repl[v]
    for nid, values in entry.get("set", {}).items():
        if nid not in out:
            raise KeyError(f"tiny_models.json sets inputs of node {nid}, which the workflow does not have")
        for k, v in values.items():
            if isinstance(v, str) and v.startswith("@"):
                if v[1:] not in files:
                    raise KeyError(f"tiny_models.json: model alias {v!r} is not built ({sorted(files)})")
                v = files[v[1:]]
            out[nid]["inputs"][k] = v
    return out
