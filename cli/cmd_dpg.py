"""``train-dpg``: personalize a base model from reference photos with the DPG objective (a LoRA).

Single process::

    python -m rewardloop train-dpg --base v1-5-pruned-emaonly.safetensors --refs photos/ --trigger sks \\
        --class-prompt "a photo of a dog" --out dogs/rex --steps 800

Any reward through the learned critic (weights are each reward's λ; ``dino`` = similarity to the references)::

    python -m rewardloop train-dpg … --mode dreambooth --reward pickscore:0.5 dino:1 --critic-every 4

The paper's own recipe (full fine-tuning of UNet + text encoder, lr 1e-6, 1000 steps; a checkpoint out)::

    python -m rewardloop train-dpg … --preset paper

Several GPUs (or one, with accelerate's mixed precision config), unchanged::

    accelerate launch -m rewardloop train-dpg --base … --refs photos/ --trigger sks --class-prompt "a photo of a dog"
"""
from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def register(sub):
    from ..trainers.dpg import GAMMA, LOSS_MODES, PRESETS
    from ..trainers.reward_critic import TARGETS
    p = sub.add_parser("train-dpg", help="train a personalized LoRA from reference photos (DPG)")
    p.add_argument("--base", required=True, help="checkpoint file/name (models/checkpoints), diffusers folder, or key")
    p.add_argument("--refs", required=True, help="folder (or file) of reference photos of the subject")
    p.add_argument("--trigger", required=True, help="one rare word standing for the subject, e.g. sks")
    p.add_argument("--class-prompt", required=True, help="the subject's class, e.g. 'a photo of a dog'")
    p.add_argument("--instance-prompt", default=None, help="default: class prompt with the trigger before the noun")
    p.add_argument("--out", default=None, help="LoRA name inside models/loras (default: dpg_<trigger>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing LoRA of that name")
    p.add_argument("--mode", default="look_forward", choices=LOSS_MODES, help="loss mode (default look_forward)")
    p.add_argument("--weight", action="append", metavar="TERM=W", default=[],
                   help="override a term weight: dreambooth, prior, look_forward, critic, dino, gamma (repeatable)")
    p.add_argument("--steps", type=int, default=None, help="default: the preset's (paper: 1000), else 500")
    p.add_argument("--lr", type=float, default=None, help="default: the preset's (paper: 1e-6), else 1e-4")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (default: the preset's)")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="auto", choices=["auto", *PRESETS],
                   help="VRAM preset (default: from the GPU); paper = the paper's full fine-tuning recipe")
    p.add_argument("--reward", nargs="+", action="extend", default=[], metavar="NAME[:WEIGHT]",
                   help="rewards through the learned critic, e.g. pickscore:0.5 dino rich.overall:2 (NAME from the "
                        "scorer registry or dino; WEIGHT = its λ, default 1)")
    p.add_argument("--reward-model", action="append", default=[], metavar="ROLE=MODEL",
                   help="models of the reward scorers, as for `score --model` (repeatable)")
    p.add_argument("--critic-every", type=int, default=1, metavar="K",
                   help="critic update interval: score x̂0 and update the critic every K steps (default 1)")
    p.add_argument("--critic-target", default="regression", choices=TARGETS,
                   help="regression: the immediate reward; td: the paper's r + γ·Q(next state) along the chain")
    p.add_argument("--td-hop", type=int, default=50, help="timesteps per chain step of the td target (1 = paper)")
    p.add_argument("--num-class-images", type=int, default=8, help="prior images from the base model (0 = none)")
    p.add_argument("--dino-model", default="dino-vits16", help="DINO ViT for the dino reward (models/dino)")
    p.add_argument("--config", default=None, help="diffusers folder or sd1/sd2/sd2-base/sdxl for a single file")
    p.add_argument("--run-dir", default=None, help="checkpoints/log folder (default: output/rewardloop_runs/<out>)")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--sample-every", type=int, default=0)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start afresh (default: resume)")
    p.add_argument("--resume", dest="resume", action="store_true", help="continue from the last checkpoint (default)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_train_dpg, resume=True, gamma_default=GAMMA)


def collect_images(path: str) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    elif p.is_file():
        files = [p]
    else:
        raise FileNotFoundError(f"Reference folder {p} does not exist.")
    if not files:
        raise ValueError(f"No reference images in {p}: add .png/.jpg/.webp photos of the subject.")
    return files


def parse_weights(items, mode: str):
    from ..trainers.dpg import DPGWeights
    over = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"--weight {it!r}: use TERM=VALUE, e.g. dino=0.1.")
        k, v = it.split("=", 1)
        k = k.strip().replace("-", "_")
        if k not in ("dreambooth", "prior", "look_forward", "critic", "dino", "gamma", "critic_lr"):
            raise ValueError(f"--weight: unknown term {k!r}.")
        try:
            over[k] = float(v)
        except ValueError:
            raise ValueError(f"--weight {it!r}: the value must be a number, e.g. {k}=0.1.") from None
    return DPGWeights.for_mode(mode, **over)


def reward_config(args):
    """``--reward`` & co. → a RewardCriticConfig (None without rewards); one error line for a bad item."""
    from ..rewards.scoring import parse_model_options
    from ..trainers import reward_critic as RC
    from ..rewards.scoring import check_scorers
    specs = RC.parse_reward_specs(args.reward)
    models = parse_model_options(args.reward_model)
    named = list(dict.fromkeys(s.name for s in specs if s.name != RC.DINO))
    if named:   # names, model roles and the models' files, before anything loads
        check_scorers(named, models)
    if not specs:
        if models or args.critic_target != "regression" or args.critic_every != 1:
            raise ValueError("--reward-model / --critic-* need --reward NAME[:WEIGHT] (e.g. --reward pickscore).")
        return None, {}
    cfg = RC.RewardCriticConfig(rewards=specs, every=args.critic_every, target=args.critic_target,
                                td_hop=args.td_hop)
    cfg.validate()
    return cfg, models


def cmd_train_dpg(args) -> int:
    from ..rewards.images import as_pil_list
    from ..trainers.dpg import personalize
    reward, reward_models = reward_config(args)    # before anything loads
    refs = as_pil_list(collect_images(args.refs))
    weights = parse_weights(args.weight, args.mode)
    out = args.out or f"dpg_{args.trigger.strip()}"
    res = personalize(args.base, refs, args.trigger, args.class_prompt, instance_prompt=args.instance_prompt,
                      out_name=out, overwrite=args.overwrite, mode=args.mode, weights=weights, steps=args.steps,
                      lr=args.lr, rank=args.rank, resolution=args.resolution, seed=args.seed, preset=args.preset,
                      num_class_images=args.num_class_images, sample_every=args.sample_every,
                      save_every=args.save_every, resume=args.resume,
                      run_dir=Path(args.run_dir) if args.run_dir else None, dino_model=args.dino_model,
                      device=args.device, config=args.config, sample_steps=args.sample_steps, reward=reward,
                      reward_models=reward_models)
    print(f"{'checkpoint' if args.preset == 'paper' else 'LoRA'}: {res.lora_file}")
    print(f"steps: {res.train.steps_done}  run folder: {res.run_dir}")
    print(f"loss plot: {res.loss_plot}")
    for f in res.sample_files:
        print(f"sample: {f}")
    return 0


# ---------------------------------------------------------------- selftest
def _selftest_dpg(ctx) -> str:
    import os
    import numpy as np
    from PIL import Image
    from .. import bridge
    from ..trainers.dpg import personalize
    base = ctx.model("tiny-sd")
    ctx.model("tiny-dino")
    refs = [Image.fromarray((np.random.RandomState(i).rand(40, 40, 3) * 255).astype(np.uint8)) for i in range(2)]
    old = os.environ.get("REWARDLOOP_OUTPUT")
    os.environ["REWARDLOOP_OUTPUT"] = str(ctx.root / "output")
    try:
        res = personalize(base, refs, "sks", "a photo of a dog", out_name="selftest_dpg", overwrite=True,
                          mode="critic+dino", steps=3, lr=1e-3, rank=2, resolution=32, preset="cpu",
                          num_class_images=1, save_every=0, resume=False, dino_model="tiny-dino", sample_steps=2)
    finally:
        if old is None:
            os.environ.pop("REWARDLOOP_OUTPUT", None)
        else:
            os.environ["REWARDLOOP_OUTPUT"] = old
    assert res.lora_file.is_file() and Path(bridge.loras_dir()).resolve() in res.lora_file.parents
    return f"{res.train.steps_done} steps, {res.lora_name}"


def _selftest_single_file(ctx) -> str:
    import torch
    from ..trainers.lora import load_base
    from ..weights.tiny import make_sd_pipeline
    ctx.model("tiny-sd")
    c = load_base(ctx.model("tiny-sd-single"), device="cpu")
    ref = make_sd_pipeline().unet.state_dict()
    got = c.unet.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    return f"{len(ref)} UNet tensors identical"


SELFTESTS = [("dpg: personalize on tiny-sd (critic+dino)", _selftest_dpg),
             ("dpg: single-file LDM checkpoint loads", _selftest_single_file)]
