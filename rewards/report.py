"""Readable tables of reward scores (for the graph, the CLI and reports)."""
from __future__ import annotations

import json

from .types import RewardScores


def _fmt(v: float) -> str:
    return f"{v:.4f}"


def scores_table(scores: list[RewardScores], order: list[int] | None = None) -> str:
    """A fixed-width table: one row per image, one column per reward, with direction and range in the header."""
    if not scores:
        return "(no scores)"
    n = len(scores[0])
    for s in scores:
        if len(s) != n:
            raise ValueError(f"Reward {s.name!r} has {len(s)} values but {scores[0].name!r} has {n}: "
                             "all rewards must score the same images.")
    heads = ["image"] + [f"{s.name} ({'↑' if s.higher_is_better else '↓'})" for s in scores]
    rows = [[str(i)] + [_fmt(s.values[i]) for s in scores] for i in (order if order is not None else range(n))]
    widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(heads)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [line(heads), line(["-" * w for w in widths])] + [line(r) for r in rows]
    ranges = [f"{s.name}: {s.value_range[0]:g}..{s.value_range[1]:g}" for s in scores if s.value_range]
    if ranges:
        out.append("ranges: " + "; ".join(ranges))
    return "\n".join(out)


def json_safe(obj):
    """Plain JSON values only: NaN/inf → null, numpy/torch scalars → numbers, arrays (heatmaps) → a summary
    ``{"shape", "min", "max", "mean"}``, anything else unknown → its text."""
    import math

    import numpy as np
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "detach"):  # torch tensor
        obj = obj.detach().float().cpu().numpy()
    if isinstance(obj, np.ndarray):
        if obj.size == 1:
            return json_safe(obj.reshape(()).item())
        a = obj.astype(np.float64)
        fin = a[np.isfinite(a)]
        return {"shape": list(a.shape), "min": json_safe(float(fin.min()) if fin.size else None),
                "max": json_safe(float(fin.max()) if fin.size else None),
                "mean": json_safe(float(fin.mean()) if fin.size else None)}
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, int):
        return obj
    return str(obj)


def compact_details(details: dict | None) -> dict:
    """Per-image details without their bulk: arrays and tensors (heatmaps) become ``{shape, min, max, mean}``."""
    return {k: (json_safe(v) if hasattr(v, "shape") else v) for k, v in (details or {}).items()}


def dumps(obj, indent: int | None = 2) -> str:
    """Strict JSON (never NaN / Infinity) of any report object."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False, ensure_ascii=False)


def scores_json(scores: list[RewardScores], files: list | None = None, prompts: list[str] | None = None) -> str:
    """``{"files": [...], "prompts": [...], "scores": [{name, values, higher_is_better, range, details, group}]}``:
    ``scores[k]["values"][i]`` belongs to ``files[i]``. Strict JSON: a NaN score is ``null``; heatmaps in the
    details are summarised (shape, min, max, mean)."""
    n = len(scores[0]) if scores else len(files or [])
    return dumps({"files": [str(f) for f in files] if files is not None else list(range(n)),
                  "prompts": list(prompts) if prompts is not None else None,
                  "scores": [s.to_dict() for s in scores]})
