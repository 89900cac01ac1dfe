"""``eval-personalization``: the DreamBooth protocol (DINO, CLIP-I, CLIP-T over DreamBench prompts) for a LoRA.

    python -m rewardloop eval-personalization --lora dogs/rex --refs photos/rex --class dog --samples 4 --out eval/rex

Prints a table (one row per prompt, then the means), writes ``--out``: scores.csv (per image), prompts.csv (per
prompt), summary.json, table.txt, images/, references/ and index.html (the contact sheet).
"""
from __future__ import annotations

import json


def register(sub):
    from ..rewards.dreambench import KINDS
    from ..rewards.personalization import DEFAULT_CLIP, DEFAULT_DINO
    p = sub.add_parser("eval-personalization",
                       help="DINO / CLIP-I / CLIP-T of a personalized LoRA over the DreamBench prompts")
    p.add_argument("--lora", required=True,
                   help="the LoRA (.safetensors file or name in models/loras); 'none' evaluates the base model alone")
    p.add_argument("--refs", required=True, nargs="+", help="reference photos of the subject (files or folders)")
    p.add_argument("--class", dest="class_noun", required=True,
                   help="the subject's class noun (dog, backpack, 'stuffed animal') or a DreamBench subject name "
                        "(dog6, wolf_plushie); picks the live-subject or the object prompts")
    p.add_argument("--base", default=None,
                   help="base checkpoint (file, diffusers folder or name); default: the one the LoRA's metadata names")
    p.add_argument("--identifier", default=None,
                   help="the subject's rare token (default: the LoRA's trigger, else sks)")
    p.add_argument("--kind", default="auto", choices=KINDS, help="prompt set: auto (from the class), object or live")
    p.add_argument("--samples", type=int, default=4, help="images per prompt (DreamBooth: 4; the DPG script: 8)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N of the 25 prompts (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="sample j of every prompt uses seed + j")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (DDIM)")
    p.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--resolution", type=int, default=None, help="image size (default: the LoRA's, else the model's)")
    p.add_argument("--lora-scale", type=float, default=1.0, help="LoRA strength")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--clip-text", default="class", choices=["class", "instance"],
                   help="CLIP-T text: the prompt without the identifier (class, default) or with it (instance)")
    p.add_argument("--dino", default=DEFAULT_DINO, help=f"DINO model (models/dino; default {DEFAULT_DINO})")
    p.add_argument("--clip", default=DEFAULT_CLIP, help=f"CLIP model for CLIP-I/CLIP-T (models/clip; default "
                                                        f"{DEFAULT_CLIP})")
    p.add_argument("--out", default=None, help="report folder (refused when it exists and is not empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--batch-size", type=int, default=16, help="images per DINO/CLIP forward")
    p.add_argument("--dry-run", action="store_true", help="check the inputs and print the prompts; load nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    p.add_argument("--device", default=None, help="cpu, cuda, … (default: best available)")
    p.add_argument("--dtype", default=None, help="fp32, fp16, bf16 (default: fp32 generation, auto for DINO/CLIP)")
    p.set_defaults(func=cmd_eval_personalization)


def cmd_eval_personalization(args) -> int:
    try:
        return _run(args)
    except FileExistsError as e:  # an existing report: say what to change, on one line
        raise ValueError(str(e)) from None


def _run(args) -> int:
    from ..trainers.evaluate import plan_dict, plan_evaluation, run_evaluation
    from .cmd_score import collect_images
    refs = collect_images(args.refs)
    plan = plan_evaluation(args.lora, refs, args.class_noun, base=args.base, identifier=args.identifier,
                           samples=args.samples, seed=args.seed, steps=args.steps, cfg=args.cfg,
                           resolution=args.resolution, lora_scale=args.lora_scale, kind=args.kind, limit=args.limit,
                           clip_text=args.clip_text, negative=args.negative, dino=args.dino, clip=args.clip,
                           out=args.out, overwrite=args.overwrite)
    if args.dry_run:
        print(json.dumps(plan_dict(plan), indent=2))
        return 0
    res = run_evaluation(plan, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    if args.json:
        print(json.dumps({"means": res.scores.means(), "per_prompt": res.scores.per_prompt(),
                          "report": {k: str(v) for k, v in (res.report or {}).items()}}, indent=2))
        return 0
    print(f"{plan.kind} prompts for '{plan.identifier} {plan.class_noun}', {plan.samples} sample(s) each, "
          f"{len(plan.references)} reference(s); DINO {plan.dino}, CLIP {plan.clip}")
    print(res.scores.table())
    if res.report:
        print(f"report: {res.report['html']}  (CSV: {res.report['csv']}, per prompt: {res.report['prompts_csv']})")
    return 0


# ---------------------------------------------------------------- selftest
def _selftest_eval(ctx) -> str:
    import numpy as np
    from PIL import Image
    from ..trainers.evaluate import plan_evaluation, run_evaluation
    base = ctx.model("tiny-sd")
    ctx.model("tiny-dino")
    ctx.model("tiny-clip")
    refs = [Image.fromarray((np.random.RandomState(i).rand(40, 40, 3) * 255).astype(np.uint8)) for i in range(2)]
    plan = plan_evaluation(None, refs, "dog", base=base, samples=1, steps=2, limit=3, dino="tiny-dino",
                           clip="tiny-clip", out=ctx.root / "eval_personalization")
    res = run_evaluation(plan, device="cpu", progress=False)
    assert len(res.scores) == 3 and res.report["html"].is_file()
    m = res.scores.means()
    return f"3 prompts: DINO {m['dino']:.3f}, CLIP-I {m['clip_i']:.3f}, CLIP-T {m['clip_t']:.3f}"


SELFTESTS = [("eval-personalization: DreamBench metrics on tiny-sd", _selftest_eval)]
