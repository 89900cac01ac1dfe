"""``train-ranked``: reward-ranked LoRA fine-tuning (FineRewards' assemble reward-ranked learning)."""
from __future__ import annotations

from pathlib import Path


def _available() -> list[str]:
    from ..rewards.scoring import available
    return available()


def register(sub):
    from ..trainers.ranked import RUNS_SUBDIR
    p = sub.add_parser("train-ranked", help="reward-ranked LoRA fine-tuning: sample K per prompt, rank by rewards, "
                                            "train on the best, repeat")
    p.add_argument("--base", required=True, help="base model: diffusers folder, single-file checkpoint or name/key")
    p.add_argument("--prompts", required=True, help="prompt file: .txt (one a line, # comments) or MS-COCO captions .json")
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--k", type=int, default=10, help="candidates per prompt per round (paper: 10)")
    p.add_argument("--rounds", type=int, default=2, help="rounds (paper: 2); may grow when resuming")
    p.add_argument("--top", type=int, default=1, help="kept per prompt per round (paper: 1)")
    p.add_argument("--rewards", required=True, help=f"comma-separated rewards: {', '.join(_available())}")
    p.add_argument("--weights", default=None,
                   help="comma-separated weights, one per reward (shared evenly by a reward's scores) or one per score")
    p.add_argument("--mode", default="rank_sum", choices=["rank_sum", "zscore", "raw"],
                   help="assemble ranking: rank_sum (paper, Borda), zscore or raw weighted sums")
    p.add_argument("--model", action="append", metavar="ROLE=MODEL",
                   help="model for a reward role, e.g. captioner=blip-large, llm=smollm2-135m (repeatable)")
    p.add_argument("--out", required=True, help="output name: LoRA <loras>/<out>.safetensors, run dir <output>/"
                                                f"{RUNS_SUBDIR}/<out>")
    p.add_argument("--run-dir", default=None, help="run directory (default: see --out)")
    p.add_argument("--resume", action="store_true", help="continue the run in the run directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing LoRA of the same name and start its run afresh")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank (paper: 4)")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: rank)")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (paper: 9e-6 with many more steps)")
    p.add_argument("--steps", type=int, default=100, help="training steps per round")
    p.add_argument("--batch-size", type=int, default=1, help="training batch size")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--resolution", type=int, default=512, help="training (and default generation) resolution")
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"], help="training precision")
    p.add_argument("--gradient-checkpointing", action="store_true", help="save memory in training")
    p.add_argument("--gen-steps", type=int, default=20, help="sampling steps per candidate")
    p.add_argument("--cfg", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--negative", default="", help="negative prompt for sampling")
    p.add_argument("--gen-batch", type=int, default=8, help="images per generation batch")
    p.add_argument("--seed", type=int, default=0, help="seed of candidates and training")
    p.add_argument("--no-eval", action="store_true", help="skip the final sample/score pass of the trained LoRA")
    p.add_argument("--no-offload", action="store_true", help="keep every model on the device between phases")
    p.add_argument("--save-candidates", action="store_true", help="also write every candidate image")
    p.add_argument("--device", default=None, help="cpu, cuda, … (default: best available)")
    p.add_argument("--dtype", default=None, help="auto, fp32, fp16, bf16 (models)")
    p.set_defaults(func=cmd_train_ranked)


def parse_weights(text: str | None) -> list[float] | None:
    if text is None or not text.strip():
        return None
    try:
        return [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise ValueError(f"--weights takes comma-separated numbers such as 1,1,0.5; got {text!r}.") from None


def build_scorers(names: list[str], models: dict, device=None, dtype=None) -> list:
    from ..rewards.scoring import make_scorer
    if not names:
        raise ValueError(f"--rewards is empty: name at least one reward ({', '.join(_available())}).")
    return [make_scorer(n, models=models, device=device, dtype=dtype) for n in names]


def cmd_train_ranked(args) -> int:
    from .. import bridge
    from ..fileio import safe_output_path
    from ..rewards import scoring
    from ..trainers import run_folder
    from ..trainers.lora import LoraConfig, TrainConfig, check_base
    from ..trainers.prompts import read_prompts
    from ..trainers.ranked import RUNS_SUBDIR, RankedConfig, RankedTrainer, check_run
    from .cmd_score import split_names

    # everything is checked before a reward model or the base is loaded
    names = split_names([args.rewards])
    models = scoring.parse_model_options(args.model)
    scoring.check_scorers(names, models)   # reward names, ROLE= keys, and every model each reward would load
    prompts = read_prompts(args.prompts, args.limit)
    cfg = RankedConfig(k=args.k, rounds=args.rounds, top=args.top, weights=parse_weights(args.weights),
                       mode=args.mode, gen_steps=args.gen_steps, cfg=args.cfg, negative=args.negative,
                       gen_batch=args.gen_batch, seed=args.seed, eval_final=not args.no_eval,
                       offload=not args.no_offload, save_candidates=args.save_candidates)
    cfg.validate()
    lora_cfg = LoraConfig(rank=args.rank, alpha=args.alpha)
    train_cfg = TrainConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
                            mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
                            resolution=args.resolution, seed=args.seed)
    lora_cfg.validate()
    train_cfg.validate()
    dtype = bridge.parse_dtype(args.dtype) if args.dtype else None
    check_base(args.base)
    lora_path = safe_output_path(bridge.loras_dir(), args.out, ".safetensors", overwrite=True)
    run_dir = Path(args.run_dir) if args.run_dir else run_folder.run_dir_for(RUNS_SUBDIR, args.out)
    from .. import distributed
    # one process per run (the other ranks of a torchrun job share it), and nothing left behind by a failed start
    with run_folder.claim(run_dir, main=distributed.is_main()):
        check_run(run_dir, prompts, cfg, lora_cfg, train_cfg, args.base, args.resume, args.overwrite, lora_path)
        scorers = build_scorers(names, models, args.device, args.dtype)
        trainer = RankedTrainer(args.base, prompts, scorers, run_dir, cfg, lora_cfg, train_cfg,
                                resume=args.resume, dtype=dtype, device=args.device, overwrite=args.overwrite)
        distributed.barrier()           # every process has read the run folder before process 0 writes to it
        with bridge.Progress(trainer.units_total(), desc="train-ranked") as progress:
            trainer.progress = progress
            result = trainer.run(lora_path, overwrite=args.overwrite)
    if not distributed.is_main():
        return 0
    print(f"run dir: {result.run_dir}")
    print(result.table_path.read_text().rstrip())
    print(f"plot: {result.plot_path}")
    print(f"LoRA: {result.lora_path}")
    return 0


# ---------------------------------------------------------------- selftest
def _selftest_ranked(ctx) -> str:
    import numpy as np

    from ..rewards.scoring import FunctionScorer
    from ..rewards.types import RewardScores
    from ..trainers.lora import LoraConfig, TrainConfig
    from ..trainers.ranked import RankedConfig, train_ranked

    def bright(images, prompts):
        return [RewardScores("brightness", [float(np.asarray(im).mean() / 255.0) for im in images], True, (0, 1))]

    key = ctx.model("tiny-sd")
    res = train_ranked(key, ["a red car", "a cat"], [FunctionScorer(["brightness"], bright)], ctx.root / "ranked_run",
                       RankedConfig(k=2, rounds=1, gen_steps=2, eval_final=False), LoraConfig(rank=2),
                       TrainConfig(steps=2, resolution=32))
    assert res.lora_path is not None and res.lora_path.is_file(), "no LoRA written"
    return f"1 round, mean brightness {res.rounds[0]['means']['brightness']:.4f}"


SELFTESTS = [("ranked", _selftest_ranked)]
