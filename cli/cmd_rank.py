"""``rank``: best-of-N over image files with several rewards → a ranked folder, a CSV report and an HTML page.

    python -m rewardloop rank --rewards caption,sam_llm,rich --weights 1,1,1 --prompt "a red car" imgs/ --out ranked/
"""
from __future__ import annotations

import contextlib
import csv
import html
import io
import os
import shutil
from pathlib import Path

from .. import distributed
from ..errors import UserError
from ..fileio import atomic_save, atomic_write_text
from ..rewards.images import broadcast_prompts
from ..rewards.ranking import MODE_ALIASES, assemble_rank
from ..rewards.scoring import available, check_scorers, make_scorer, parse_model_options, score_names
from ._checks import add_device_args, check_int, check_out_dir, collect_images, derived_name, split_names
from ._stream import DEFAULT_CHUNK, check_images, stream_scores

THUMB = 256


def register(sub):
    p = sub.add_parser("rank", help="rank images by several rewards (best-of-N) into a folder with a report")
    p.add_argument("images", nargs="+", help="image files or folders (in order; groups of --group-size per prompt)")
    p.add_argument("--rewards", action="append", required=True,
                   help=f"comma-separated rewards: {', '.join(available())}")
    p.add_argument("--weights", default=None,
                   help="comma-separated weights: one per reward (a reward giving several scores shares its weight "
                        "equally among them) or one per score; default 1 each")
    p.add_argument("--prompt", action="append", required=True,
                   help="the prompt: once for all, once per group (with --group-size) or once per image")
    p.add_argument("--mode", default="rank_sum", choices=sorted(MODE_ALIASES),
                   help="rank_sum (Borda, paper; default), zscore or raw")
    p.add_argument("--group-size", type=int, default=0,
                   help="images per prompt; each group is ranked on its own (0 = one group)")
    p.add_argument("--out", required=True, help="output folder (refused when it exists and is not empty)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out folder")
    p.add_argument("--model", action="append", metavar="ROLE=MODEL",
                   help="model for a role, e.g. captioner=blip-large, llm=…, rich_feedback=…; given only to the "
                        "rewards that take that role; REWARD.ROLE=MODEL (e.g. sam_llm.captioner=…) for one reward")
    p.add_argument("--chunk", type=int, default=DEFAULT_CHUNK,
                   help=f"images loaded and scored at a time (memory is bounded by the chunk, not the folder; "
                        f"default {DEFAULT_CHUNK})")
    add_device_args(p)
    p.set_defaults(func=cmd_rank)


def expand_prompts(prompts: list[str], n: int, group_size: int) -> list[str]:
    if any(not str(p).strip() for p in prompts):
        raise UserError("--prompt is empty: type the text the images were generated from.")
    if group_size and group_size > 0 and len(prompts) > 1 and len(prompts) * group_size == n:
        return [p for p in prompts for _ in range(group_size)]
    return broadcast_prompts(prompts if len(prompts) > 1 else prompts[0], n)


def parse_weights(text: str | None) -> list[float] | None:
    """``--weights 1,0.5`` → finite, non-negative numbers, not all zero."""
    if text is None:
        return None
    try:
        weights = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise UserError(f"--weights must be comma-separated numbers, got {text!r}.") from None
    if not weights:
        raise UserError("--weights is empty: give comma-separated numbers such as 1,1,0.5 (or leave it out).")
    if any(not (w >= 0 and w < float("inf")) for w in weights):
        raise UserError(f"--weights must be finite and ≥ 0, got {text!r}.")
    if not any(weights):
        raise UserError("--weights are all 0: give at least one reward a positive weight.")
    return weights


def check_weight_count(reward_names: list[str], weights: list[float] | None) -> None:
    """One weight per reward or one per score, known before any model loads."""
    if weights is None:
        return
    n_scores = sum(len(score_names(n)) for n in reward_names)
    if len(weights) not in (len(reward_names), n_scores):
        raise UserError(f"--weights has {len(weights)} values: give one per reward ({len(reward_names)}: "
                        f"{', '.join(reward_names)}) or one per score ({n_scores}).")


def score_weights(reward_names: list[str], per_reward: list[list], weights: list[float] | None) -> list[float]:
    """Weights per produced score: one per reward (shared equally by its scores) or one per score."""
    n_scores = sum(len(s) for s in per_reward)
    if weights is None:
        weights = [1.0] * len(reward_names)
    if len(weights) == len(reward_names):
        return [w / len(scores) for w, scores in zip(weights, per_reward) for _ in scores]
    if len(weights) == n_scores:
        return list(weights)
    raise ValueError(f"--weights has {len(weights)} values: give one per reward ({len(reward_names)}: "
                     f"{', '.join(reward_names)}) or one per score ({n_scores}).")


def _save_png(path: Path, pil) -> None:
    def writer(tmp):
        pil.save(tmp, format="PNG")
    atomic_save(path, writer)


def render_chunk(stage: Path, start: int, images, scores, heat_cells: dict) -> None:
    """Thumbnails and heatmap overlays of one scored chunk, written to ``stage`` (so the images can be let go)."""
    import torch

    from ..rewards.images import image_to_pil, pil_to_image
    from ..rewards.regions import detail_heatmaps, overlay
    (stage / "thumbs").mkdir(parents=True, exist_ok=True)
    for j, im in enumerate(images):
        i = start + j
        th = im.copy()
        th.thumbnail((THUMB, THUMB))
        _save_png(stage / "thumbs" / f"{i:04d}.png", th)
        cells, seen = [], set()
        for s in scores:
            for key, hm in detail_heatmaps(s.details[j] if s.details else {}).items():
                if key in seen:  # a reward with several scores (rich) repeats its maps in each score's details
                    continue
                seen.add(key)
                (stage / "heatmaps").mkdir(exist_ok=True)
                rel = f"heatmaps/{i:04d}_{key}.png"
                _save_png(stage / rel, image_to_pil(overlay(pil_to_image(th), torch.from_numpy(hm), "jet", 0.6))[0])
                cells.append((key.replace("_", " "), rel))
        heat_cells[i] = cells


def write_report(out: Path, files: list[Path], stage: Path, scores, ranking, overwrite: bool,
                 heat_cells: dict) -> dict[str, Path]:
    """The ranked copies, ``report.csv`` and ``index.html``; thumbnails and overlays come from ``stage``."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} exists and is not empty: choose a new --out folder or add --overwrite.")
    (out / "ranked").mkdir(parents=True, exist_ok=True)
    multi = len(ranking.groups) > 1
    names: dict[int, str] = {}
    for i in ranking.order:
        stem = f"g{ranking.group[i]:03d}_" if multi else ""
        names[i] = f"{stem}{ranking.position[i] + 1:03d}_{derived_name(files[i].stem, files[i].suffix)}"
        dest = out / "ranked" / names[i]
        if dest.exists() and not overwrite:
            raise ValueError(f"{dest} already exists: add --overwrite to replace it.")
        atomic_save(dest, lambda tmp, src=files[i]: shutil.copyfile(src, tmp))
    for sub in ("thumbs", "heatmaps"):
        if (stage / sub).is_dir():
            (out / sub).mkdir(exist_ok=True)
            for f in (stage / sub).iterdir():
                os.replace(f, out / sub / f.name)
    # CSV
    buf = io.StringIO()
    wr = csv.writer(buf)
    wr.writerow(["group", "position", "image_index", "file", "ranked_file"]
                + [f"{n}" for n in ranking.names] + [f"rank_{n}" for n in ranking.names]
                + [f"total_{ranking.mode}", "zscore_sum"])
    for i in ranking.order:
        wr.writerow([ranking.group[i], ranking.position[i], i, str(files[i]), names[i]]
                    + [f"{ranking.values[n][i]:.6g}" for n in ranking.names]
                    + [f"{ranking.ranks[n][i]:g}" for n in ranking.names]
                    + [f"{ranking.totals[i]:.6g}", f"{ranking.zsum[i]:.6g}"])
    atomic_write_text(out / "report.csv", buf.getvalue())
    # HTML
    e = html.escape
    head = "".join(f"<th>{e(n)} {'↑' if ranking.higher_is_better[n] else '↓'}<br>(rank)</th>" for n in ranking.names)
    body = []
    for i in ranking.order:
        vals = "".join(f"<td>{ranking.values[n][i]:.4f}<br>({ranking.ranks[n][i]:g})</td>" for n in ranking.names)
        heats = "".join(f"<figure><img src='{e(rel)}'><figcaption>{e(cap)}</figcaption></figure>"
                        for cap, rel in heat_cells[i])
        body.append(f"<tr><td>{ranking.group[i]}</td><td>{ranking.position[i] + 1}</td>"
                    f"<td><a href='ranked/{e(names[i])}'><img src='thumbs/{i:04d}.png'></a><br>{e(files[i].name)}</td>"
                    f"{vals}<td>{ranking.totals[i]:.4f}</td><td>{heats}</td></tr>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>RewardLoop ranking</title><style>"
            "body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}"
            "table{border-collapse:collapse}img{max-width:256px}figure{display:inline-block;margin:2px}"
            "</style></head><body><h1>RewardLoop ranking</h1>"
            f"<pre>{e(ranking.table().splitlines()[0])}</pre><table><tr><th>group</th><th>rank</th><th>image</th>"
            f"{head}<th>total {'↑' if ranking.total_higher_is_better else '↓'}</th><th>heatmaps</th></tr>"
            + "".join(body) + "</table></body></html>")
    atomic_write_text(out / "index.html", page)
    return {"csv": out / "report.csv", "html": out / "index.html", "ranked": out / "ranked"}


@contextlib.contextmanager
def _stage(out: Path):
    """A staging folder for thumbnails and overlays, removed at the end: in the temporary folder, or next to ``out``
    when several processes share the run (they all write there)."""
    import tempfile
    base = None
    if distributed.world_size() > 1:
        base = out.absolute().parent
        base.mkdir(parents=True, exist_ok=True)
    path = tempfile.mkdtemp(prefix=f".{out.name}.stage-", dir=base) if distributed.is_main() else None
    path = Path(distributed.gather({0: path} if path else {})[0])
    try:
        yield path
    finally:
        distributed.barrier()
        if distributed.is_main():
            shutil.rmtree(path, ignore_errors=True)


def cmd_rank(args) -> int:
    out = check_out_dir(args.out, args.overwrite)
    reward_names = split_names(args.rewards)
    models = parse_model_options(args.model)
    weights = parse_weights(args.weights)
    check_int("--group-size", args.group_size, 0)
    check_scorers(reward_names, models)  # names, roles, every model on disk: before anything loads
    check_weight_count(reward_names, weights)
    check_int("--chunk", args.chunk, 1)
    files = collect_images(args.images)
    if args.group_size and len(files) % args.group_size:
        raise UserError(f"{len(files)} images do not split into groups of --group-size {args.group_size}: give a "
                        f"divisor of {len(files)} (or 0 for one group).")
    prompts = expand_prompts(args.prompt, len(files), args.group_size)
    check_images(files)  # every file decodes: before any model loads
    scorers = [make_scorer(name, models=models, device=args.device, dtype=args.dtype) for name in reward_names]
    with _stage(out) as stage:
        heat_cells: dict[int, list] = {}
        scores = stream_scores(files, prompts, scorers, args.chunk,
                               lambda start, ims, got: render_chunk(stage, start, ims, got, heat_cells))
        heat_cells = distributed.gather(heat_cells)
        per_reward = [list(sc.names) for sc in scorers]
        ranking = assemble_rank(scores, score_weights(reward_names, per_reward, weights), args.mode, args.group_size)
        if not distributed.is_main():
            return 0
        paths = write_report(out, files, stage, scores, ranking, args.overwrite, heat_cells)
    print("\n".join(f"{i}: {f}" for i, f in enumerate(files)))
    print(ranking.table())
    print(f"ranked copies: {paths['ranked']}{os.sep}\nreport: {paths['csv']}\npage: {paths['html']}")
    return 0


# ---------------------------------------------------------------- selftest
def _check_ranking(ctx) -> str:
    from ..rewards.types import RewardScores
    a = RewardScores("a", [3.0, 1.0, 2.0])
    b = RewardScores("b", [0.1, 0.3, 0.2], higher_is_better=False)
    r = assemble_rank([a, b], [1, 1], "rank_sum")
    assert r.totals == [0.0, 4.0, 2.0] and r.order == [0, 2, 1], r
    g = assemble_rank([a, b], None, "zscore", group_size=1)
    assert g.order == [0, 1, 2]
    return f"rank_sum order {r.order}, totals {r.totals}"


def _check_regions(ctx) -> str:
    import torch

    from ..rewards.regions import heatmap_to_mask
    heat = torch.zeros(64, 64)
    heat[28:36, 28:36] = 1.0
    r = heatmap_to_mask(heat, blur=0, dilate=5, feather=0, min_area=0)
    assert r.counts == [1] and r.binary.sum() > 64
    e = heatmap_to_mask(torch.full((64, 64), 0.05))
    assert e.mask.max() == 0
    return f"one blob → {int(r.binary.sum())} px, clean map → empty mask"


def _check_autofix(ctx) -> str:
    import torch

    from ..rewards.inpaint import DiffusersInpaintSampler, auto_fix
    from ..rewards.regions import heatmap_to_mask
    from ..rewards.scoring import FunctionScorer
    from ..rewards.types import RewardScores
    ctx.model("tiny-sd")
    img = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    heat = torch.zeros(32, 32)
    heat[12:20, 12:20] = 1.0
    mask = heatmap_to_mask(heat, blur=0, dilate=3, feather=2, min_area=0).mask
    sampler = DiffusersInpaintSampler("tiny-sd", "a cat", steps=2, cfg=1.5, device="cpu", dtype="fp32")
    scorer = FunctionScorer(["bright"], lambda ims, ps: [RewardScores(
        "bright", [float(im.convert("L").resize((1, 1)).getpixel((0, 0))) for im in ims])])
    res = auto_fix(img, mask, sampler, scorer, k=2, seed=0, prompt="a cat")
    outside = mask[0] == 0
    assert torch.equal(res.images[0][outside], img[0][outside]), "unmasked pixels changed"
    return f"chosen {res.chosen}, scores {[round(v, 2) for v in res.scores[0]]}, unmasked pixels unchanged"


SELFTESTS = [("rank: assemble ranking math", _check_ranking),
             ("regions: heatmap → mask", _check_regions),
             ("auto-fix: tiny-sd inpaint + re-score", _check_autofix)]
