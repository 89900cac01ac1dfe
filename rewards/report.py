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


def scores_json(scores: list[RewardScores]) -> str:
    return json.dumps([s.to_dict() for s in scores], indent=2, default=str)
