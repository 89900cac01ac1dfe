"""DPG personalization ("Powerful and Flexible", ECCV 2024) as a LoRA objective on the shared core.

Terms, each weighted by its own flag (0 turns it off):

* ``dreambooth``   noise MSE on the reference (instance) images; ``prior`` weights the prior-preservation MSE on
                   class images generated once by the base model (the DreamBooth baseline).
* ``look_forward`` one-step x̂0 = (x_t − sqrt(1−ᾱ_t)·ε̂)/sqrt(ᾱ_t) in fp32, E = (x̂0 − x0)², per-sample
                   γ^{t_i}·mean(E_i) (what the released code reduces to; the author's "direct LF").
* ``critic``       the paper's Q-network over the error map E (conv 3×3 C→1, LeakyReLU, flatten (sized from the
                   latent), 64, ReLU, 1; non-negative uniform init), fp32, outside the UNet graph; the actor
                   minimises γ^{t_i}·Q(E_i); after each actor step Q(E.detach()) is regressed to mean(E) with
                   SGD lr 0.01. Checkpointed with the run (the released code does not).
* ``dino``         decode x̂0 through the VAE, DINO ViT CLS features, λ·γ^{t_i}·(1 − cos) to the features of the
                   reference image the sample came from; differentiable end to end.
* rewards          any scorer (and DINO similarity) through a learned critic Q(x̂0, t, x0): see
                   :mod:`.reward_critic`; on beside any mode when ``reward=`` names rewards.

Per-sample γ^t for batches > 1 (the released code indexes ``timesteps[0]``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from .. import bridge
from ..fileio import atomic_save, atomic_write_text, safe_output_path
from . import lora as L
from . import reward_critic as RC
from . import run_folder
from .dpg_objective import (CRITIC_LR, GAMMA, LOSS_MODES, Critic, DINOFeatures, DPGWeights,  # noqa: F401
                            critic_regression, discount, effective_weight, instance_loss, prior_loss,
                            x0_from_eps)

log = logging.getLogger("rewardloop")


class DPGObjective:
    """The DPG objective (see module docstring). Carries the critic; its state is checkpointed with the run."""

    def __init__(self, weights: DPGWeights | None = None, dino_model: str = "dino-vits16",
                 vae_checkpointing: bool = False, reward: RC.RewardCriticConfig | None = None,
                 reward_sources: list | None = None):
        self.w = weights or DPGWeights()
        self.w.validate()
        self.reward = RC.RewardCriticTerm(replace(reward, gamma=self.w.gamma if reward.gamma is None else reward.gamma),
                                          reward_sources) if reward is not None else None
        self.dino_model = dino_model
        self.vae_checkpointing = vae_checkpointing
        self.critic: Critic | None = None
        self.critic_opt: torch.optim.Optimizer | None = None
        self.dino: DINOFeatures | None = None
        self.ref_feats: torch.Tensor | None = None
        self._pending: torch.Tensor | None = None
        self._pending_state: dict | None = None

    @property
    def name(self) -> str:
        on = [k for k in ("dreambooth", "look_forward", "critic", "dino") if getattr(self.w, k) > 0]
        if self.reward is not None:
            on.append(f"reward({','.join(s.label for s in self.reward.cfg.rewards)})")
        return "dpg:" + "+".join(on)

    @property
    def needs_pixels(self) -> bool:
        return False

    def settings(self) -> dict:
        """What a resumed run must share (see ``loop.run_settings``)."""
        out = {"weights": asdict(self.w), "dino_model": self.dino_model if self.w.dino > 0 else None}
        if self.reward is not None:
            out["reward"] = self.reward.settings()
            if any(s.name == RC.DINO for s in self.reward.cfg.rewards):
                out["dino_model"] = self.dino_model
        return out

    # -------------------------------------------------------------- setup (called by the core before step 1)
    def setup(self, trainer: L.Trainer) -> None:
        c = trainer.c
        res = int(trainer.cfg.resolution)
        down = 2 ** (len(c.vae.config.block_out_channels) - 1)
        ch = int(c.unet.config.in_channels)
        if self.w.critic > 0 and self.critic is None:
            g = torch.random.get_rng_state()
            torch.manual_seed(int(trainer.cfg.seed) + 1)
            self.critic = Critic(ch, res // down, res // down).to(trainer.device)
            torch.random.set_rng_state(g)
            self.critic_opt = torch.optim.SGD(self.critic.parameters(), lr=float(self.w.critic_lr))
            if self._pending_state is not None:
                self.load_state_dict(self._pending_state)
        dino_reward = self.reward is not None and any(s.name == RC.DINO for s in self.reward.cfg.rewards)
        if (self.w.dino > 0 or dino_reward) and self.dino is None:
            self.dino = DINOFeatures(self.dino_model, device=trainer.device)
            with torch.no_grad():
                self.ref_feats = self.dino(trainer.ref_pixels.to(trainer.device))
            if self.w.dino > 0 and self.vae_checkpointing and hasattr(c.vae, "enable_gradient_checkpointing"):
                c.vae.enable_gradient_checkpointing()
        if self.reward is not None:
            if self.reward.sources is None:
                self.reward.sources = RC.build_sources(self.reward.cfg.rewards, device=trainer.device)
            for src in self.reward.sources:
                if isinstance(src, RC.DinoSource):
                    src.features, src.ref_feats = self.dino, self.ref_feats
            self.reward.setup(ch, trainer.device, int(trainer.cfg.seed))

    # -------------------------------------------------------------- the actor loss
    def __call__(self, trainer: L.Trainer, batch: L.Batch):
        out = trainer.predict(batch)
        inst, prior = batch.instance, batch.is_prior
        per = ((out["pred"].float() - out["target"].float()) ** 2).flatten(1).mean(1)
        x0_hat = x0 = t = None
        if self.w.look_forward > 0 or self.w.critic > 0 or self.w.dino > 0 or self.reward is not None:
            eps = trainer.eps_from_pred(out)
            x0_hat = x0_from_eps(out["noisy"][inst], eps[inst], out["alpha_bar"][inst])
            x0, t = out["x0"][inst], out["t"][inst]
        ref = self.ref_feats[batch.ref_index[inst].to(self.ref_feats.device)] if self.w.dino > 0 else None
        terms = instance_loss(self.w, per[inst], x0_hat, x0, t, critic=self.critic,
                              decode=trainer.decode if self.w.dino > 0 else None,
                              dino=self.dino, ref_feats=ref)
        self._pending = terms.critic_input
        loss, metrics = terms.loss, dict(terms.metrics)
        if prior.any() and self.w.prior > 0:
            pt = prior_loss(self.w, per[prior])
            loss = loss + pt.loss
            metrics.update(pt.metrics)
        if self.reward is not None:   # any reward through the learned critic (trainers/reward_critic.py)
            lr_, m = self.reward.actor(x0_hat, t, discount(t, self.w.gamma), ref=x0)
            loss = loss + lr_.to(loss.device)
            metrics.update(m)
            if self.reward.wants_rewards(trainer.step):
                self._stash_rewards(trainer, batch, out, eps, x0_hat)
        return loss, metrics

    def _stash_rewards(self, trainer: L.Trainer, batch: L.Batch, out: dict, eps: torch.Tensor,
                       x0_hat: torch.Tensor) -> None:
        """Keep this step's reference samples for scoring after the optimizer step (and, for the td target, a
        way to their next state on the deterministic denoising chain)."""
        inst = batch.instance
        idx = batch.ref_index[inst]
        prompts = getattr(trainer, "ref_prompts", None) or []
        prompts = [prompts[i] if i < len(prompts) else "" for i in idx.tolist()]
        t = out["t"][inst]
        nxt = None
        if self.reward.cfg.target == "td":
            sub = L.Batch(latents=batch.latents[inst], cond=batch.cond[inst].detach(), is_prior=batch.is_prior[inst],
                          ref_index=idx, added_cond=None if batch.added_cond is None else
                          {k: v[inst].detach() for k, v in batch.added_cond.items()})
            x0d, epsd, hop = x0_hat.detach(), eps[inst].detach().float(), int(self.reward.cfg.td_hop)

            def nxt():
                t2 = (t - hop).clamp(min=0)
                a2 = trainer.alphas_cumprod[t2].view(-1, 1, 1, 1)
                x_next = a2.sqrt() * x0d + (1 - a2).sqrt() * epsd
                with torch.no_grad():
                    pred = trainer.unet(x_next, t2, sub).float()
                e2 = trainer.eps_from_pred({"pred": pred, "alpha_bar": a2, "noisy": x_next})
                return x0_from_eps(x_next, e2, a2), torch.where(t - hop >= 0, t2.float(), torch.full_like(t2, -1.0,
                                                                                               dtype=torch.float32))
        self.reward.stash(x0_hat, t, out["x0"][inst], prompts, idx, nxt)

    # -------------------------------------------------------------- critic regression after the actor step
    def after_step(self, trainer: L.Trainer, batch: L.Batch) -> dict[str, float]:
        out = {}
        if self.reward is not None:
            acc = trainer.accelerator
            multi = acc.num_processes > 1
            with torch.no_grad():
                out = self.reward.update(trainer.decode, trainer.device, gather=acc.gather if multi else None,
                                         reduce_grads=(lambda g: acc.reduce(g, reduction="mean")) if multi else None)
        return {**out, **self._critic_step(trainer)}

    def _critic_step(self, trainer: L.Trainer) -> dict[str, float]:
        if self.critic is None or self._pending is None:
            return {}
        e, self._pending = self._pending, None
        acc = trainer.accelerator
        reduce = (lambda g: acc.reduce(g, reduction="mean")) if acc.num_processes > 1 else None
        return {"critic_loss": critic_regression(self.critic, self.critic_opt, e, reduce)}

    # -------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict:
        sd = {}
        if self.critic is not None:
            sd = {"critic": {k: v.detach().cpu().clone() for k, v in self.critic.state_dict().items()},
                  "critic_opt": self.critic_opt.state_dict()}
        if self.reward is not None and self.reward.critic is not None:
            sd["reward"] = self.reward.state_dict()
        return sd

    def load_state_dict(self, sd: dict) -> None:
        if not sd:
            return
        if self.reward is not None and "reward" in sd:
            self.reward.load_state_dict(sd["reward"])   # before its setup: applied there
        if "critic" not in sd:
            return
        if self.critic is None:  # restored before setup: apply then
            self._pending_state = sd
            return
        self.critic.load_state_dict(sd["critic"])
        self.critic_opt.load_state_dict(sd["critic_opt"])
        self._pending_state = None


# ====================================================================== class prior images
def class_images(components: L.SDComponents, class_prompt: str, n: int, cache_dir: Path, seed: int = 0,
                 resolution: int = 512, steps: int = 25, cfg: float = 7.5, negative: str = "",
                 progress=None) -> list[tuple[Image.Image, str]]:
    """Prior-preservation images of ``class_prompt`` from the base model, generated once and cached.

    Call before :func:`lora.add_lora` (or with adapters disabled) so they come from the base model.
    """
    if not class_prompt or not class_prompt.strip():
        raise ValueError("The class prompt is empty: give the subject's class, e.g. 'a photo of a dog'.")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"prompt": class_prompt, "base": components.source, "resolution": int(resolution),
                "steps": int(steps), "cfg": float(cfg), "seed": int(seed), "negative": negative}
    mf = cache_dir / "manifest.json"
    if mf.is_file():
        try:
            old = json.loads(mf.read_text())
        except ValueError:
            old = {}
        if old != manifest:  # different prompt/base/settings: start this cache afresh
            for p in cache_dir.glob("class_*.png"):
                p.unlink()
    atomic_write_text(mf, json.dumps(manifest))
    out = []
    todo = sum(not (cache_dir / f"class_{i:04d}.png").is_file() for i in range(int(n)))
    bar = bridge.Progress(todo, "class images") if todo and progress is None else None  # a long wait: show it
    try:
        for i in range(int(n)):
            p = cache_dir / f"class_{i:04d}.png"
            if not p.is_file():
                bridge.check_interrupt()
                img = L.generate(components, [class_prompt], [int(seed) * 1000 + i], steps=steps, cfg=cfg,
                                 width=resolution, height=resolution, negative=negative)[0]
                atomic_save(p, lambda tmp, im=img: im.save(tmp, format="PNG"))
                if progress is not None:
                    progress(i + 1, n)
                if bar is not None:
                    bar.update(1)
            with Image.open(p) as im:
                out.append((im.convert("RGB"), class_prompt))
    finally:
        if bar is not None:
            bar.close()
    return out


# ====================================================================== one-call personalization
@dataclass
class Preset:
    """Which memory features a VRAM preset turns on (README: DPG personalization → presets)."""
    name: str
    mixed_precision: str
    weights_dtype: str
    gradient_checkpointing: bool
    cache_latents: bool
    rank: int
    train_text_encoder: bool
    batch_size: int
    vae_checkpointing: bool
    note: str = ""
    full: bool = False           # full fine-tuning (no LoRA): every UNet (+ text-encoder) weight
    lr: float | None = None      # the preset's own learning rate / steps, when the caller gives none
    steps: int | None = None


PRESETS: dict[str, Preset] = {
    "8GB": Preset("8GB", "fp16", "fp16", True, True, 4, False, 1, True,
                  "SD1.x at 512 px: half-precision frozen weights, gradient checkpointing (UNet and, for the DINO "
                  "term, the VAE decoder), cached latents, rank 4, UNet-only LoRA, batch 1. SDXL: use 768 px."),
    "12GB": Preset("12GB", "bf16", "bf16", True, True, 8, False, 1, True,
                   "bf16 (fp16 on cards without bf16), gradient checkpointing, cached latents, rank 8, UNet LoRA."),
    "24GB": Preset("24GB", "bf16", "bf16", False, True, 16, True, 2, False,
                   "bf16, no checkpointing (faster), cached latents, rank 16, UNet + text-encoder LoRA, batch 2."),
    "cpu": Preset("cpu", "no", "fp32", False, True, 4, False, 1, False, "fp32 on the CPU (tests, tiny models)."),
    "paper": Preset("paper", "no", "fp32", False, True, 0, True, 1, False,
                    "The DPG paper's recipe: full fine-tuning of the UNet and text encoder in fp32, AdamW lr 1e-6, "
                    "1000 steps, batch 1 + 1 class image, γ = 0.9986; exports a checkpoint to models/checkpoints. "
                    "About 16 GB of weights, gradients and AdamW states for SD 1.x before activations: 24 GB+ cards.",
                    full=True, lr=1e-6, steps=1000),
}
FULL_LR_LIMIT = 1e-5  # a LoRA learning rate on every weight of the model wrecks it


def resolve_preset(name: str | None, device: torch.device) -> Preset:
    if name in (None, "", "auto"):
        if device.type != "cuda":
            return PRESETS["cpu"]
        gb = torch.cuda.get_device_properties(device).total_memory / 2 ** 30
        name = "8GB" if gb < 11 else ("12GB" if gb < 20 else "24GB")
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}: choose one of auto, {', '.join(PRESETS)}.")
    p = PRESETS[name]
    if p.mixed_precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        p = replace(p, mixed_precision="fp16", weights_dtype="fp16")
    if device.type == "cpu" and p.mixed_precision == "fp16":
        p = replace(p, mixed_precision="no", weights_dtype="fp32")
    return p


@dataclass
class PersonalizeResult:
    lora_file: Path              # the LoRA in models/loras (the paper preset: the checkpoint in models/checkpoints)
    lora_name: str               # its name inside that folder
    samples: list[Image.Image]
    sample_files: list[Path]
    loss_plot: Path | None
    train: L.TrainResult
    run_dir: Path


RUNS_SUBDIR = "rewardloop_runs"


def run_dir_for(name: str) -> Path:
    """Working folder of a named run (checkpoints, class images, log, plot, samples): ``<output>/rewardloop_runs/``
    + the whole output name, sub-folders included (``dogs/rex`` and ``cats/rex`` are two runs)."""
    return run_folder.run_dir_for(RUNS_SUBDIR, name)


def personalize(base: str, references: list[Image.Image], trigger: str, class_prompt: str,
                instance_prompt: str | None = None, out_name: str = "dpg_lora", overwrite: bool = False,
                mode: str = "look_forward", weights: DPGWeights | None = None, steps: int | None = None,
                lr: float | None = None,
                rank: int | None = None, resolution: int = 512, seed: int = 0, preset: str | None = "auto",
                num_class_images: int = 8, sample_prompts: tuple[str, ...] | None = None, sample_every: int = 0,
                save_every: int = 100, resume: bool = True, run_dir: Path | None = None, progress=None,
                dino_model: str = "dino-vits16", center_crop: bool = True, device=None, config=None,
                train_overrides: dict | None = None, sample_steps: int = 20,
                reward: RC.RewardCriticConfig | None = None, reward_models: dict | None = None) -> PersonalizeResult:
    """Reference photos → a personalized LoRA in ``loras`` (the node's and the CLI's entry point).

    Everything is checked before a model is loaded: the inputs, the output name, the model names and the run
    folder (its lock and, when resuming, its settings). ``overwrite`` replaces an existing LoRA of that name and
    starts the run afresh; ``resume`` (default) continues an interrupted run of the same name and settings.
    ``steps`` / ``lr`` default to the preset's (the ``paper`` preset: 1000, 1e-6, full fine-tuning exported to
    ``checkpoints``), else 500 / 1e-4. ``reward``: rewards through the learned critic (:mod:`.reward_critic`);
    its scorers load (``reward_models`` as ROLE → model) before the base model.
    Leaves ``torch.inference_mode`` (ComfyUI runs nodes inside it) for loading, training and export.
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _personalize(**{k: v for k, v in locals().items()})


def _check_model_names(base, config, weights: DPGWeights, dino_model: str,
                       reward: RC.RewardCriticConfig | None = None) -> Path:
    """Resolve every model the run will load (no loading): the base's path, or one line saying what is missing."""
    base_path = L.check_base(base)
    if config and not (L.CONFIG_DIR / str(config) / "model_index.json").is_file():
        L._resolve_base(config)
    if weights.dino > 0 or (reward is not None and any(s.name == RC.DINO for s in reward.rewards)):
        from ..weights.registry import resolve
        resolve(dino_model, folder="dino")
    return base_path


def _personalize(base, references, trigger, class_prompt, instance_prompt, out_name, overwrite, mode, weights, steps,
                 lr, rank, resolution, seed, preset, num_class_images, sample_prompts, sample_every, save_every,
                 resume, run_dir, progress, dino_model, center_crop, device, config, train_overrides,
                 sample_steps, reward, reward_models) -> PersonalizeResult:
    refs = list(references or [])
    if not refs:
        raise ValueError("No reference images were given: connect at least one photo of the subject.")
    trigger, instance_prompt = check_prompts(trigger, class_prompt, instance_prompt)
    for what, value, low in (("num_class_images", num_class_images, 0), ("sample_every", sample_every, 0),
                             ("save_every", save_every, 0), ("sample_steps", sample_steps, 1)):
        if int(value) < low:
            raise ValueError(f"{what} must be >= {low} (got {value}).")
    if rank is not None and int(rank) < 1:
        raise ValueError(f"LoRA rank must be >= 1 (got {rank}).")
    if preset not in (None, "", "auto") and preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}: choose one of auto, {', '.join(PRESETS)}.")
    full = preset == "paper"
    # fail now, not after training: the output name must be valid and free
    out_folder = bridge.model_output_dir("checkpoints") if full else bridge.loras_dir()
    lora_target = safe_output_path(out_folder, out_name, ".safetensors", overwrite)
    weights = weights or DPGWeights.for_mode(mode)
    weights.validate()
    if full:
        steps, lr = steps or PRESETS["paper"].steps, lr or PRESETS["paper"].lr
        if float(lr) > FULL_LR_LIMIT:
            raise ValueError(f"The paper preset fine-tunes every weight of the model: use a learning rate <= "
                             f"{FULL_LR_LIMIT:g} (the paper's is 1e-6), not {lr:g}.")
        from .full_finetune import check_base_family
        check_base_family(base, config)
    steps, lr = int(steps or 500), float(lr or 1e-4)
    if reward is not None:
        reward.validate()
    from accelerate import PartialState
    import os
    cpu = str(device or os.environ.get("REWARDLOOP_DEVICE", "")).startswith("cpu") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)  # under `accelerate launch`/torchrun: one process per GPU (or CPU worker)
    dev = torch.device(device) if device else (state.device if state.num_processes > 1 else bridge.get_device())
    pre = resolve_preset(preset, dev)
    lcfg = L.LoraConfig(rank=int(rank or pre.rank or 1), train_text_encoder=pre.train_text_encoder, full=pre.full)
    samples = tuple(sample_prompts) if sample_prompts is not None else (
        instance_prompt, f"{instance_prompt} on the beach")
    tcfg = L.TrainConfig(steps=int(steps), lr=float(lr), batch_size=pre.batch_size,
                         mixed_precision=pre.mixed_precision, gradient_checkpointing=pre.gradient_checkpointing,
                         resolution=int(resolution), seed=int(seed), save_every=int(save_every),
                         sample_every=int(sample_every), sample_prompts=samples, cache_latents=pre.cache_latents,
                         center_crop=center_crop, sample_steps=sample_steps)
    if train_overrides:
        tcfg = replace(tcfg, **train_overrides)
    tcfg.validate()
    lcfg.validate()
    base_path = _check_model_names(base, config, weights, dino_model, reward)
    reward_sources = RC.build_sources(reward.rewards, models=reward_models, device=device) if reward else None
    objective = DPGObjective(weights, dino_model=dino_model, vae_checkpointing=pre.vae_checkpointing, reward=reward,
                             reward_sources=reward_sources)
    dataset = [(img, instance_prompt) for img in refs]
    run_dir = Path(run_dir) if run_dir else run_dir_for(out_name)
    resume = bool(resume) and not overwrite          # overwrite: a fresh run, never the finished checkpoint
    with run_folder.claim(run_dir, main=state.is_main_process):
        if state.is_main_process:
            L.check_resume(run_dir, L.run_settings(lcfg, tcfg, objective, base_path, dataset), resume,
                           partial=True)
        bridge.free_memory(int(6 * 2 ** 30), dev)
        comps = L.load_base(base, dtype=pre.weights_dtype, device=dev, config=config)
        if comps.vae.dtype != torch.float32 and (weights.dino > 0 or getattr(comps.vae.config, "force_upcast", False)):
            comps.vae.to(torch.float32)  # the SDXL VAE overflows in fp16; the DINO reward decodes in fp32
        class_items = []
        if num_class_images > 0 and weights.prior > 0:
            def make_class():
                return class_images(comps, class_prompt, num_class_images, run_dir / "class_images", seed=seed,
                                    resolution=resolution, steps=sample_steps)
            if state.is_main_process:  # generated once, by rank 0; the other processes read the cache
                class_items = make_class()
            state.wait_for_everyone()
            if not state.is_main_process:
                class_items = make_class()
        result = L.train_lora(comps, dataset, objective, lcfg, tcfg, run_dir, resume=resume, progress=progress,
                              class_dataset=class_items or None)
        meta = {"trigger": trigger, "instance_prompt": instance_prompt, "class_prompt": class_prompt,
                "steps": str(result.steps_done), "objective": objective.name, "weights": asdict(weights),
                "resolution": str(resolution), "seed": str(seed), "preset": pre.name, "lr": str(lr),
                "ss_output_name": Path(out_name).name, "ss_steps": str(result.steps_done)}
        if reward is not None:
            meta["rewards"] = json.dumps({s.label: s.weight for s in reward.rewards})
            meta["critic"] = json.dumps({"target": reward.target, "every": reward.every})
        if not state.is_main_process:  # rank 0 exports and samples; the others return its file name
            state.wait_for_everyone()
            return PersonalizeResult(lora_file=lora_target, lora_name=Path(out_name).name, samples=[], sample_files=[],
                                     loss_plot=result.loss_plot_png, train=result, run_dir=run_dir)
        if pre.full:
            from .full_finetune import export_checkpoint
            lora_file = export_checkpoint(comps, out_folder, out_name, meta, overwrite=overwrite)
        else:
            lora_file = L.export_lora(comps, lora_target, meta, overwrite=overwrite)
        imgs, files = L.save_samples(comps, samples, seed, sample_steps, 7.5, resolution, run_dir / "samples", "final")
        rel = lora_file.relative_to(Path(out_folder).resolve()).as_posix()
        state.wait_for_everyone()
        return PersonalizeResult(lora_file=lora_file, lora_name=rel, samples=imgs, sample_files=files,
                                 loss_plot=result.loss_plot_png, train=result, run_dir=run_dir)


def check_prompts(trigger: str, class_prompt: str, instance_prompt: str | None) -> tuple[str, str]:
    """(trigger, instance prompt) after the checks both DPG back-ends make before any model work."""
    if not trigger or not trigger.strip() or " " in trigger.strip():
        raise ValueError(f"Trigger word {trigger!r} must be one word (e.g. 'sks'), used in the instance prompt.")
    trigger = trigger.strip()
    if not class_prompt or not class_prompt.strip():
        raise ValueError("The class prompt is empty: give the subject's class, e.g. 'a photo of a dog'.")
    instance_prompt = (instance_prompt or "").strip() or _instance_from_class(class_prompt, trigger)
    if trigger not in instance_prompt.split():
        raise ValueError(f"The instance prompt {instance_prompt!r} must contain the trigger word {trigger!r}.")
    return trigger, instance_prompt


def _instance_from_class(class_prompt: str, trigger: str) -> str:
    """'a photo of a dog' → 'a photo of sks dog' (the DreamBooth pattern: trigger before the class noun)."""
    words = class_prompt.strip().split()
    if len(words) >= 2 and words[-2].lower() in ("a", "an", "the"):
        words = words[:-2] + [trigger, words[-1]]
    else:
        words = words[:-1] + [trigger, words[-1]]
    return " ".join(words)
