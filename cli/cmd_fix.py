"""``fix``: auto-fix flagged regions of image files with a diffusers SD pipeline and keep the best re-scored result.

    python -m rewardloop fix img.png --prompt "a red fox" --sd path/to/sd15-diffusers --out fixed/
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..fileio import atomic_save, atomic_write_text
from ..rewards.images import image_to_pil, open_image, pil_to_image
from ..rewards.scoring import available, check_scorers, make_scorer, parse_model_options, score_names
from ._checks import (add_device_args, check_float, check_int, check_model, check_out_dir, check_prompts,
                      collect_images, derived_name, load_images)


def register(sub):
    p = sub.add_parser("fix", help="inpaint flagged regions K times, re-score, keep the best (auto-fix)")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--prompt", action="append", required=True, help="the prompt (once, or once per image)")
    p.add_argument("--sd", required=True, help="diffusers SD pipeline: catalogue key, models/diffusers name or path")
    p.add_argument("--mask", default=None,
                   help="mask image (white = repaint) for all images, dilated/feathered like a heatmap; default: the "
                        "re-scorer's heatmap → mask")
    p.add_argument("--reward", default="rich", help=f"re-scoring reward ({', '.join(available())}); default rich")
    p.add_argument("--score-name", default=None, help="which of its scores decides (default: plausibility/first)")
    p.add_argument("--model", action="append", metavar="ROLE=MODEL", help="model for a role of the re-scorer")
    p.add_argument("--k", type=int, default=4, help="candidates per image")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--denoise", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--relative", type=float, default=0.5, help="heatmap threshold, fraction of the peak")
    p.add_argument("--floor", type=float, default=0.1, help="absolute heat floor (clean images are skipped)")
    p.add_argument("--dilate", type=float, default=3.0, help="dilation, %% of the short side")
    p.add_argument("--feather", type=float, default=1.0, help="feather, %% of the short side")
    p.add_argument("--min-area", type=float, default=0.1, help="minimum region, %% of the image area")
    p.add_argument("--out", required=True, help="output folder (refused when not empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true")
    add_device_args(p)
    p.set_defaults(func=cmd_fix)


def _save(path: Path, pil, overwrite: bool = False) -> None:
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists (two inputs with the same name?): rename one or add --overwrite.")
    atomic_save(path, lambda tmp: pil.save(tmp, format="PNG"))


def check_fix_args(args) -> None:
    check_int("--k", args.k, 1, 64)
    check_int("--steps", args.steps, 1, 10000)
    check_float("--cfg", args.cfg, 0.0, 100.0)
    check_float("--denoise", args.denoise, 0.0, 1.0, above=True)
    check_float("--relative", args.relative, 0.0, 1.0)
    check_float("--floor", args.floor, 0.0, 1.0)
    for flag, v in (("--dilate", args.dilate), ("--feather", args.feather)):
        check_float(flag, v, 0.0, 50.0)  # % of the short side; larger kernels would allocate gigabytes
    check_float("--min-area", args.min_area, 0.0, 100.0)


def output_names(files: list[Path], candidates: int) -> list[str]:
    """Stems of every input's outputs (cut to a safe length); two inputs with one name are refused up front."""
    stems = [derived_name(f.stem, "", 100) for f in files]
    seen: dict[str, Path] = {}
    for f, stem in zip(files, stems):
        if stem in seen:
            raise UserError(f"{seen[stem]} and {f} would both be written as {stem}_fixed.png: rename one "
                            f"(outputs are named after the inputs).")
        seen[stem] = f
    return stems


def cmd_fix(args) -> int:
    import numpy as np
    import torch

    from .. import bridge
    from ..rewards.inpaint import DiffusersInpaintSampler, auto_fix
    from ..rewards.regions import detail_heatmaps, heatmap_to_mask
    out = check_out_dir(args.out, args.overwrite)
    check_fix_args(args)
    models = parse_model_options(args.model)
    check_scorers([args.reward], models)
    if args.score_name and args.score_name not in score_names(args.reward):
        raise UserError(f"--score-name {args.score_name!r}: reward {args.reward} gives "
                        f"{', '.join(score_names(args.reward))}.")
    check_model(args.sd, "diffusers", "--sd")
    files = collect_images(args.images)
    stems = output_names(files, args.k)
    pils = load_images(files)
    sizes = {p.size for p in pils}
    if len(sizes) > 1:
        raise UserError(f"All images must share one size for one run; got {sorted(sizes)}: run fix once per size.")
    if min(next(iter(sizes))) < 8:
        raise UserError(f"Images of {next(iter(sizes))} pixels are too small to inpaint (at least 8×8).")
    prompts = check_prompts(args.prompt, len(pils))
    mask_pil = open_image(args.mask) if args.mask else None
    images = pil_to_image(pils)
    h, w = images.shape[1:3]
    scorer = make_scorer(args.reward, models=models, device=args.device, dtype=args.dtype)
    mk = dict(relative=args.relative, floor=args.floor, dilate=args.dilate, feather=args.feather,
              min_area=args.min_area)
    if mask_pil is not None:
        m = np.asarray(mask_pil.convert("L"), dtype=np.float32) / 255.0
        masks = heatmap_to_mask(torch.from_numpy(m), (h, w), blur=0.0, **dict(mk, relative=0.5, floor=0.5)).mask
    else:
        heats = []
        for s in scorer(pils, prompts):
            maps = [detail_heatmaps(d) for d in (s.details or [])]
            if len(maps) == len(pils) and all(maps):
                heats = [torch.from_numpy(next(iter(m.values()))) for m in maps]
                break
        if not heats:
            raise UserError(f"Reward {args.reward!r} reports no heatmap to build a mask from: pass --mask FILE.")
        masks = torch.cat([heatmap_to_mask(hm, (h, w), **mk).mask for hm in heats])
    sampler = DiffusersInpaintSampler(args.sd, prompts[0], args.negative, args.steps, args.cfg, args.denoise,
                                      device=args.device, dtype=args.dtype)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    per_image = max(1, int(args.steps * args.denoise))
    with bridge.Progress(len(files) * per_image, desc=f"inpainting {len(files)}×{args.k}") as bar:
        sampler.progress = bar
        for i, f in enumerate(files):  # one image at a time: the sampler takes that image's prompt
            sampler.prompt = prompts[i]
            res = auto_fix(images[i:i + 1], masks[i if len(masks) > 1 else 0], sampler, scorer, args.k,
                           args.seed + i * args.k, prompts[i], args.score_name)
            if res.skipped[0]:
                bar.update(per_image)
            _save(out / f"{stems[i]}_fixed.png", image_to_pil(res.images)[0], args.overwrite)
            _save(out / f"{stems[i]}_mask.png", image_to_pil(res.mask[..., None].expand(-1, -1, -1, 3))[0],
                  args.overwrite)
            if not res.skipped[0]:
                for c, pil in enumerate(image_to_pil(res.candidates)):
                    _save(out / f"{stems[i]}_cand{c}.png", pil, args.overwrite)
            lines.append(f"{f}: " + res.summary().splitlines()[-1].split(": ", 1)[1])
    text = f"re-scored by {res.score_name or args.reward}\n" + "\n".join(lines) + "\n"
    atomic_write_text(out / "report.txt", text)
    print(text.rstrip())
    print(f"written to {out}")
    return 0
