"""Rich feedback (RAHF) commands: ``convert-rich-feedback``, ``train-rich-feedback``, ``eval-rich-feedback``."""
from __future__ import annotations

import json
from pathlib import Path


def register(sub):
    p = sub.add_parser("convert-rich-feedback",
                       help="convert the public RichHF RAHF checkpoint (youweiliang/RichHF, CC BY-NC 4.0)")
    p.add_argument("src", help="the RichHF checkpoint file (model.pt / model_best.pt)")
    p.add_argument("--name", default="rahf-richhf-multihead",
                   help="output folder name inside models/rich_feedback (default: rahf-richhf-multihead)")
    p.add_argument("--out-dir", default=None, help="models/rich_feedback folder to write into (default: the "
                   "first rich_feedback model folder: ComfyUI's, REWARDLOOP_MODELS' or the pack's)")
    p.add_argument("--tokenizer", default=None, help="t5-base tokenizer folder (default: the HF cache)")
    p.add_argument("--vit-heads", type=int, default=None, help="ViT attention heads (default from width: 16 for ViT-L)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_convert)

    t = sub.add_parser("train-rich-feedback", help="train RAHF on RichHF-18K TFRecords (accelerate launch works)")
    t.add_argument("--train", action="append", required=True, help="train .tfrecord file or folder (repeatable)")
    t.add_argument("--images", default=None, help="folder of Pick-a-Pic images <uid>.png/.jpg (+ prompts.json or "
                   "<uid>.txt when the records carry no caption)")
    t.add_argument("--parquet", action="append", default=[], help="Pick-a-Pic v1 parquet shard (repeatable; "
                   "needs pyarrow)")
    t.add_argument("--out", required=True, help="run folder: checkpoints/ and the final model/")
    t.add_argument("--init", default=None, help="start from a RAHF model folder / name / key")
    t.add_argument("--vit", default=None, help="or: pretrained ViT folder (e.g. google/vit-large-patch16-384)")
    t.add_argument("--t5", default=None, help="and pretrained T5 folder (e.g. t5-base)")
    t.add_argument("--augmented", action="store_true", help="augmented-prompt variant (one shared head of each kind)")
    t.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    t.add_argument("--batch-size", type=int, default=8, help="batch size per process and micro-batch")
    t.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    t.add_argument("--lr", type=float, default=2e-5)
    t.add_argument("--min-lr", type=float, default=1e-5, help="cosine schedule floor")
    t.add_argument("--weight-decay", type=float, default=2e-3)
    t.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    t.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    t.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps")
    t.add_argument("--keep-checkpoints", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", default="auto", help="auto (latest checkpoint in --out), none, or a checkpoint folder")
    t.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    t.add_argument("--skip-missing", action="store_true", help="skip records without image or prompt")
    t.add_argument("--skip-bad-records", action="store_true",
                   help="leave out records without the four finite scores, with bad labels or unreadable heatmaps "
                        "(default: refuse the data); says how many were left out")
    t.add_argument("--overwrite", action="store_true", help="start afresh in --out (its checkpoints and model are "
                   "removed); default: resume an unfinished run there")
    t.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval-rich-feedback", help="RichHF metrics of a RAHF model (the paper's tables)")
    e.add_argument("--model", default="rahf-richhf-multihead", help="RAHF model key, name or folder")
    e.add_argument("--data", action="append", required=True, help="test .tfrecord file or folder (repeatable)")
    e.add_argument("--images", default=None, help="image folder (<uid>.png/.jpg, prompts.json or <uid>.txt)")
    e.add_argument("--parquet", action="append", default=[], help="Pick-a-Pic v1 parquet shard (repeatable)")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--limit", type=int, default=None, help="evaluate only the first N records")
    e.add_argument("--no-keywords", action="store_true", help="skip the T5 decoder (no keyword metrics)")
    e.add_argument("--skip-missing", action="store_true", help="skip records without image or prompt")
    e.add_argument("--skip-bad-records", action="store_true",
                   help="leave out records without the four finite scores, with bad labels or unreadable heatmaps")
    e.add_argument("--device", default=None)
    e.add_argument("--dtype", default=None)
    e.add_argument("--json", action="store_true", help="print JSON instead of tables")
    e.set_defaults(func=cmd_eval)


def _default_out_dir() -> Path:
    from .. import bridge
    paths = bridge.folder_search_paths("rich_feedback")
    return Path(paths[0]) if paths else bridge.pack_models_dir() / "rich_feedback"


def cmd_convert(args) -> int:
    from ..errors import UserError
    from ..fileio import safe_output_path
    from ..rewards.rich_feedback.convert import convert_checkpoint
    from ..weights.safe_load import check_model_files
    from ._checks import check_int, check_out_dir
    src = Path(args.src)
    if not src.is_file():
        raise UserError(f"{src} {'is not a file' if src.exists() else 'does not exist'}: give the RichHF checkpoint "
                        "file (model.pt).")
    check_model_files(src)  # a code-carrying pickle or a damaged file is refused before anything loads
    if args.tokenizer and not Path(args.tokenizer).is_dir():
        raise UserError(f"--tokenizer {args.tokenizer} is not a folder: give the t5-base tokenizer folder.")
    if args.vit_heads is not None:
        check_int("--vit-heads", args.vit_heads, 1, 1024)
    if args.out_dir:
        check_out_dir(args.out_dir, overwrite=True, flag="--out-dir")
    out = safe_output_path(args.out_dir or _default_out_dir(), args.name, overwrite=args.overwrite)
    check_out_dir(str(out), overwrite=True, flag="--name")
    rep = convert_checkpoint(args.src, out, tokenizer=args.tokenizer, vit_heads=args.vit_heads,
                             overwrite=args.overwrite)
    cfg = rep["config"]
    print(f"converted {rep['converted']} tensors ({len(rep['dropped'])} unused dropped, "
          f"{len(rep['unmatched'])} unmatched) -> {out}")
    print(f"ViT {cfg.vit['hidden_size']}x{cfg.vit['num_hidden_layers']} @ {cfg.image_size}px/{cfg.patch_size}, "
          f"T5 d_model {cfg.d_model}, {'multi-head' if cfg.multi_head else 'augmented prompt'}")
    return 0


def cmd_train(args) -> int:
    from ..trainers.rich_feedback import TrainConfig, train
    cfg = TrainConfig(train=args.train, out=args.out, images=args.images, parquet=args.parquet, init=args.init,
                      vit=args.vit, t5=args.t5, multi_head=not args.augmented, steps=args.steps,
                      batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, min_lr=args.min_lr,
                      weight_decay=args.weight_decay, warmup=args.warmup, mixed_precision=args.mixed_precision,
                      save_every=args.save_every, keep_checkpoints=args.keep_checkpoints, seed=args.seed,
                      resume=args.resume, num_workers=args.workers, skip_missing=args.skip_missing, cpu=args.cpu,
                      skip_bad=args.skip_bad_records, overwrite=args.overwrite)
    res = train(cfg)
    _report_skipped(res["skipped_bad"])
    if res["model"]:
        print(f"trained to step {res['step']}: {res['model']} (last loss {res['losses'][-1]:.4f})")
    return 0


def cmd_eval(args) -> int:
    from ..rewards.rich_feedback.metrics import format_table
    from ..rewards.rich_feedback.model import load_rich_feedback
    from ..trainers.rich_feedback import ImageSource, evaluate, read_richhf
    from ..weights.registry import resolve
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise ValueError("--batch-size and --limit must be at least 1.")
    resolve(args.model, folder="rich_feedback")          # a missing model: one line before reading any data
    skipped: list[str] = []
    records = read_richhf(args.data, skip_bad=args.skip_bad_records, skipped=skipped)
    _report_skipped(skipped)
    images = ImageSource(args.images, args.parquet, uids={r.uid for r in records} if args.parquet else None)
    handle = load_rich_feedback(args.model, dtype=args.dtype, device=args.device)
    res = evaluate(handle, records, images, args.batch_size, args.limit, not args.no_keywords,
                   skip_missing=args.skip_missing)
    if args.json:
        print(json.dumps(res, indent=2, default=float))
    else:
        print(f"{res['n']} images, model {handle.name}")
        print(format_table(res["scores"], res["heatmaps"], res["keywords"]))
    return 0


def _report_skipped(skipped: list[str]) -> None:
    import sys
    if skipped:
        print(f"skipped {len(skipped)} bad record(s) (--skip-bad-records), first: {skipped[0]}", file=sys.stderr)


# ---------------------------------------------------------------- selftest
def _check_predict(ctx) -> str:
    from PIL import Image

    from ..rewards.scoring import make_scorer
    scorer = make_scorer("rich", {"rich_feedback": ctx.model("tiny-rahf")}, device="cpu")
    ims = [Image.new("RGB", (40, 24), (200, 30, 30)), Image.new("RGB", (20, 20), (10, 90, 200))]
    out = scorer(ims, ["a red car, on the street", "a blue sky"])
    assert [s.name for s in out] == ["plausibility", "alignment", "aesthetics", "overall"]
    assert all(0 < v < 1 for s in out for v in s.values)
    hm = out[0].details[0]["implausibility_heatmap"]
    assert tuple(hm.shape) == (24, 40) and 0 <= float(hm.min()) and float(hm.max()) <= 1
    return f"4 scores, heatmaps at image size, plausibility {out[0].values[0]:.3f}"


def _check_train(ctx) -> str:
    import tempfile

    from ..trainers.rich_feedback import TrainConfig, train, write_synthetic_richhf
    ctx.model("tiny-rahf")
    tmp = Path(tempfile.mkdtemp(dir=ctx.root))
    rec, img = write_synthetic_richhf(tmp / "data", n=4)
    res = train(TrainConfig(train=[str(rec)], images=str(img), init="tiny-rahf", out=str(tmp / "run"), steps=3,
                            batch_size=2, lr=1e-3, min_lr=1e-3, save_every=0, log_every=0, cpu=True))
    assert res["step"] == 3 and Path(res["model"], "model.safetensors").is_file()
    return f"3 steps on TFRecords, loss {res['losses'][0]:.3f} -> {res['losses'][-1]:.3f}"


def _check_metrics(ctx) -> str:
    import numpy as np

    from ..rewards.rich_feedback import metrics as M
    g = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert abs(M.cc(g, g) - 1) < 1e-6 and abs(M.sim(g, g) - 1) < 1e-6 and M.auc_judd(g, g, jitter=False) == 1.0
    assert abs(M.plcc([1, 2, 3], [2, 4, 6]) - 1) < 1e-12
    return "CC/SIM/AUC/PLCC identities hold"


SELFTESTS = [("rich feedback: predict + scorer", _check_predict),
             ("rich feedback: train on TFRecords", _check_train),
             ("rich feedback: metrics", _check_metrics)]
