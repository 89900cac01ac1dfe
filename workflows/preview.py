"""Render a UI-format workflow as a PNG graph preview (node boxes, widget values, typed links) for the README.

    python -m rewardloop workflows --previews   # writes workflows/previews/<use>.png next to the UI files
"""
from __future__ import annotations

from pathlib import Path

TYPE_COLOURS = {"MODEL": "#b39ddb", "CLIP": "#ffd54f", "VAE": "#ef9a9a", "CONDITIONING": "#ffab91",
                "LATENT": "#f48fb1", "IMAGE": "#80cbc4", "MASK": "#a5d6a7", "STRING": "#90caf9"}


def _short(v) -> str:
    s = str(v)
    return s if len(s) <= 34 else s[:31] + "…"


def _widget_labels(spec: dict | None) -> list[str]:
    from .graph import input_entries, is_widget, widget_slots
    if spec is None:
        return []
    out = []
    for name, t, opts, _c, _r in input_entries(spec):
        if is_widget(t, opts):
            out.append(name)
            out += ["control after generate" if t == "INT" else "upload"][:widget_slots(name, t, opts) - 1]
    return out


def render(ui: dict, out: str | Path, title: str = "", specs: dict | None = None) -> Path:
    """``specs`` (optional) labels each widget value with its input name."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    nodes = {n["id"]: n for n in ui["nodes"]}
    if not nodes:
        raise ValueError("workflow has no nodes to draw")
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes.values()) + 40
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes.values()) + 40
    scale = 1 / 100
    fig, ax = plt.subplots(figsize=(max(6, x1 * scale), max(3, y1 * scale)), dpi=80)
    ax.set_xlim(0, x1)
    ax.set_ylim(y1, 0)
    ax.axis("off")
    fig.patch.set_facecolor("#202020")
    for lk in ui.get("links", []):
        _lid, a, aslot, b, bslot, t = lk
        na, nb = nodes[a], nodes[b]
        xa, ya = na["pos"][0] + na["size"][0], na["pos"][1] + 40 + 22 * aslot
        xb, yb = nb["pos"][0], nb["pos"][1] + 40 + 22 * bslot
        ax.plot([xa, (xa + xb) / 2, (xa + xb) / 2, xb], [ya, ya, yb, yb], color=TYPE_COLOURS.get(t, "#cccccc"),
                lw=2, zorder=1)
    for n in nodes.values():
        x, y = n["pos"]
        w, h = n["size"]
        ours = n["type"].startswith("RewardLoop")
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=8", zorder=2,
                                    fc="#2e3b4e" if ours else "#353535", ec="#7aa2f7" if ours else "#555555"))
        ax.text(x + 10, y + 18, n.get("title") or n["type"], color="white", fontsize=10, weight="bold", zorder=3)
        for i, inp in enumerate(n.get("inputs", [])):
            ax.text(x + 10, y + 44 + 22 * i, "● " + inp["name"], color=TYPE_COLOURS.get(inp["type"], "#ccc"),
                    fontsize=8, zorder=3)
        for i, o in enumerate(n.get("outputs", [])):
            ax.text(x + w - 10, y + 44 + 22 * i, o["name"] + " ●", color=TYPE_COLOURS.get(o["type"], "#ccc"),
                    fontsize=8, ha="right", zorder=3)
        rows = max(len(n.get("inputs", [])), len(n.get("outputs", [])))
        labels = _widget_labels(specs.get(n["type"])) if specs else []
        for j, v in enumerate(n.get("widgets_values") or []):
            text = f"{labels[j]}: {_short(v)}" if j < len(labels) else _short(v)
            ax.text(x + 10, y + 50 + 22 * rows + 22 * j, text, color="#bbbbbb", fontsize=8, zorder=3)
    if title:
        ax.set_title(title, color="white")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, facecolor=fig.get_facecolor(), metadata={"Software": None})
    plt.close(fig)
    tmp.replace(out)
    return out
