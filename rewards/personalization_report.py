"""Reports of a personalization evaluation: a CSV per image, a CSV per prompt, summary.json and an HTML contact sheet.

Everything is written into a fresh folder that replaces ``out`` in one rename (``fileio.atomic_folder``): a run
that fails leaves nothing half-written, and an existing report is never replaced without ``overwrite``.
"""
from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..fileio import atomic_folder
from .images import to_rgb
from .personalization import LABELS, METRICS, PAPER_NUMBERS, PersonalizationScores

REF_SIZE = 512


def _csv(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


def _fmt(v) -> str:
    return "" if v is None else f"{v:.6f}"


def write_report(out: str | Path, scores: PersonalizationScores, images: Sequence[Image.Image],
                 references: Sequence[Image.Image], seeds: Sequence[int] | None = None,
                 settings: dict | None = None, overwrite: bool = False) -> dict[str, Path]:
    """Write ``out/`` with images/, references/, scores.csv, prompts.csv, summary.json, table.txt, index.html."""
    if len(images) != len(scores):
        raise ValueError(f"{len(images)} images for {len(scores)} scores.")
    seeds = list(seeds) if seeds is not None else [None] * len(scores)
    sample = _sample_index(scores.group)
    names = [f"images/p{g:02d}_s{s:02d}.png" for g, s in zip(scores.group, sample)]
    ref_names = [f"references/ref{i:02d}.png" for i in range(len(references))]
    out = Path(out)
    with atomic_folder(out, overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "references").mkdir()
        for im, name in zip(images, names):
            to_rgb(im).save(tmp / name, format="PNG")
        for im, name in zip(references, ref_names):
            th = to_rgb(im).copy()
            th.thumbnail((REF_SIZE, REF_SIZE))
            th.save(tmp / name, format="PNG")
        rows = [["prompt_index", "sample", "seed", "prompt", "clip_text", "file", *METRICS]]
        for i in range(len(scores)):
            rows.append([scores.group[i], sample[i], "" if seeds[i] is None else seeds[i], scores.prompts[i],
                         scores.clip_texts[i], names[i], *(_fmt(scores.values(m)[i]) for m in METRICS)])
        (tmp / "scores.csv").write_text(_csv(rows))
        per = scores.per_prompt()
        means = scores.means()
        prow = [["prompt_index", "prompt", "clip_text", "n", *METRICS]]
        prow += [[r["group"], r["prompt"], r["clip_text"], r["n"], *(_fmt(r[m]) for m in METRICS)] for r in per]
        prow.append(["mean", "", "", len(scores), *(_fmt(means[m]) for m in METRICS)])
        (tmp / "prompts.csv").write_text(_csv(prow))
        summary = {"means": means, "images": len(scores), "prompts": len(per), "references": scores.n_references,
                   "references_vs_each_other": {"dino": scores.reference_dino, "clip_i": scores.reference_clip_i},
                   "models": scores.extra, "settings": settings or {},
                   "paper_dreambench_sd14": {k: dict(zip(METRICS, v)) for k, v in PAPER_NUMBERS.items()}}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        (tmp / "table.txt").write_text(scores.table() + "\n")
        (tmp / "index.html").write_text(_html(scores, names, ref_names, seeds, settings or {}))
    return {"folder": out, "csv": out / "scores.csv", "prompts_csv": out / "prompts.csv",
            "html": out / "index.html", "summary": out / "summary.json"}


def _sample_index(group: Sequence[int]) -> list[int]:
    seen: dict[int, int] = {}
    out = []
    for g in group:
        out.append(seen.get(g, 0))
        seen[g] = out[-1] + 1
    return out


def _html(scores: PersonalizationScores, names, ref_names, seeds, settings: dict) -> str:
    e = html.escape
    means = scores.means()
    per = scores.per_prompt()
    setting_rows = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in settings.items())
    if not settings:  # the node / library without a plan: at least name the models
        setting_rows = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in scores.extra.items())
    mean_cells = "".join(f"<td>{means[m]:.3f}</td>" for m in METRICS)
    ref_line = ""
    if scores.reference_dino is not None:
        ref_line = (f"<tr><td>references vs each other ({scores.n_references})</td><td>{scores.reference_dino:.3f}</td>"
                    f"<td>{scores.reference_clip_i:.3f}</td><td></td></tr>")
    paper = "".join(f"<tr><td>paper: {e(k)} (SD 1.4, DreamBench)</td>" + "".join(f"<td>{x:.3f}</td>" for x in v)
                    + "</tr>" for k, v in PAPER_NUMBERS.items())
    refs = "".join(f"<figure><img src='{e(n)}'><figcaption>{e(Path(n).stem)}</figcaption></figure>" for n in ref_names)
    body = []
    for r in per:
        idx = [i for i, g in enumerate(scores.group) if g == r["group"]]
        figs = "".join(
            f"<figure><a href='{e(names[i])}'><img src='{e(names[i])}'></a><figcaption>"
            + (f"seed {seeds[i]}<br>" if seeds[i] is not None else "")
            + " · ".join(f"{LABELS[m]} {scores.values(m)[i]:.3f}" for m in METRICS) + "</figcaption></figure>"
            for i in idx)
        stats = "<br>".join(f"{LABELS[m]} {r[m]:.3f}" for m in METRICS)
        body.append(f"<tr><td>{r['group']}</td><td><b>{e(r['prompt'])}</b><br><small>CLIP-T text: "
                    f"{e(r['clip_text'])}</small><br>{stats}</td><td class='strip'>{figs}</td></tr>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>RewardLoop personalization evaluation</title>"
            "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px;vertical-align:top;"
            "text-align:left}table{border-collapse:collapse;margin-bottom:1em}img{width:160px;height:auto}"
            "figure{display:inline-block;margin:2px;font-size:11px;text-align:center}.refs{background:#f4f4f4;"
            "padding:4px;position:sticky;top:0;z-index:1}.refs img{width:96px}</style></head><body>"
            "<h1>Personalization evaluation (DreamBench protocol)</h1>"
            f"<table>{setting_rows}</table>"
            "<table><tr><th></th><th>DINO ↑</th><th>CLIP-I ↑</th><th>CLIP-T ↑</th></tr>"
            f"<tr><td><b>this run: mean over {len(scores)} images</b></td>{mean_cells}</tr>{ref_line}{paper}</table>"
            f"<div class='refs'><b>References</b> (stay in view while scrolling)<br>{refs}</div>"
            "<h2>Generated, per prompt</h2><table><tr><th>#</th><th>prompt and means</th><th>images "
            "(scores against the references / the CLIP-T text; cosine, −1..1, higher is better)</th></tr>"
            + "".join(body) + "</table></body></html>")
