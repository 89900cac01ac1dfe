"""The LoRA training loop: :class:`TrainConfig`, the :class:`Trainer` state objectives call into, and
:func:`train_lora`.

The loop runs single-process or under ``accelerate launch`` unchanged (``accelerate.Accelerator``), leaves
``torch.inference_mode`` itself, saves resumable checkpoints (LoRA + optimizer + lr scheduler + RNG + step +
objective state) atomically, and stops cleanly on an interrupt (saving a checkpoint first).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import bridge
from ..fileio import NonFiniteError, atomic_save, check_finite
from .base_model import SDComponents
from .batches import Batch, _build_pixels, check_dataset, encode_images, encode_prompts, sample_latents
from .checkpoints import (_append_csv, _save_rank_rng, latest_checkpoint, load_checkpoint, save_checkpoint,
                          truncate_log)
from .lora_weights import LoraConfig, _lora_modules, add_lora, lora_metadata, lora_state_dict, trainable_parameters
from .run_folder import RUN_FILE, check_settings, claim, wipe, write_settings
from .sampling import _save_samples, plot_loss

log = logging.getLogger("rewardloop")


@dataclass
class TrainConfig:
    steps: int = 500
    lr: float = 1e-4
    batch_size: int = 1
    grad_accum: int = 1
    mixed_precision: str = "no"         # no | fp16 | bf16
    gradient_checkpointing: bool = False
    resolution: int = 512
    seed: int = 0
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    save_every: int = 100
    sample_every: int = 0
    sample_prompts: tuple[str, ...] = ()
    max_grad_norm: float = 1.0
    cache_latents: bool = True
    # extras (all optional)
    weight_decay: float = 1e-2
    sample_steps: int = 20
    sample_cfg: float = 7.5
    keep_checkpoints: int = 2
    center_crop: bool = True
    eval_seed: int | None = None        # when set: objective loss on a fixed draw before and after training
    timestep_range: tuple[int, int] | None = None  # (lo, hi) inclusive, default: all training timesteps
    fixed_draw: bool = False            # every step the same batch/noise/t (overfit checks in tests)

    def validate(self) -> None:
        if int(self.steps) < 1:
            raise ValueError(f"steps must be >= 1 (got {self.steps}).")
        if not (0 < self.lr < torch.finfo(torch.float32).max):
            raise ValueError(f"learning rate must be a finite number > 0 (got {self.lr}).")
        if int(self.seed) < 0:
            raise ValueError(f"seed must be >= 0 (got {self.seed}).")
        for k in ("save_every", "sample_every", "warmup_steps"):
            if int(getattr(self, k)) < 0:
                raise ValueError(f"{k} must be >= 0 (got {getattr(self, k)}).")
        if int(self.keep_checkpoints) < 1 or int(self.sample_steps) < 1:
            raise ValueError("keep_checkpoints and sample_steps must be >= 1.")
        if not (self.max_grad_norm >= 0 and math.isfinite(self.max_grad_norm)):
            raise ValueError(f"max_grad_norm must be a finite number >= 0 (got {self.max_grad_norm}).")
        if int(self.batch_size) < 1 or int(self.grad_accum) < 1:
            raise ValueError("batch_size and grad_accum must be >= 1.")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16 (got {self.mixed_precision!r}).")
        if int(self.resolution) < 8 or int(self.resolution) % 8:
            raise ValueError(f"resolution must be a multiple of 8 (got {self.resolution}).")


@dataclass
class TrainResult:
    lora_path: Path | None
    state: dict[str, torch.Tensor]
    steps_done: int
    log_csv: Path
    loss_plot_png: Path | None
    samples: list[Path]
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None


def _make_accelerator(train_cfg: TrainConfig, cpu: bool):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    mp = train_cfg.mixed_precision
    if cpu and mp == "fp16":
        log.warning("fp16 mixed precision needs a GPU: training in fp32 on the CPU.")
        mp = "no"
    kw = dict(mixed_precision=mp, gradient_accumulation_steps=int(train_cfg.grad_accum), cpu=cpu)
    try:
        return Accelerator(**kw)
    except Exception:
        # a previous run in this process (ComfyUI, tests) initialised the shared state differently
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        return Accelerator(**kw)


class Trainer:
    """The state of one training run; objectives call :meth:`predict` and read the schedule from here."""

    def __init__(self, components: SDComponents, train_cfg: TrainConfig, accelerator, generator: torch.Generator):
        self.c = components
        self.cfg = train_cfg
        self.accelerator = accelerator
        self.generator = generator
        self.device = components.device
        sched = components.noise_scheduler
        self.alphas_cumprod = sched.alphas_cumprod.to(torch.float32).to(self.device)
        self.num_train_timesteps = int(sched.config.num_train_timesteps)
        self.prediction_type = sched.config.get("prediction_type", "epsilon")
        self.step = 0
        self.dataset_latents = None
        self.ref_pixels: torch.Tensor | None = None
        self.class_pixels: torch.Tensor | None = None

    # -------------------------------------------------------------- randomness (all from self.generator)
    def randn(self, shape, dtype=torch.float32) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, dtype=dtype).to(self.device)

    def sample_timesteps(self, n: int) -> torch.Tensor:
        lo, hi = self.cfg.timestep_range or (0, self.num_train_timesteps - 1)
        return torch.randint(int(lo), int(hi) + 1, (n,), generator=self.generator).to(self.device).long()

    # -------------------------------------------------------------- model calls
    def unet(self, noisy: torch.Tensor, t: torch.Tensor, batch: Batch) -> torch.Tensor:
        unet = getattr(self, "unet_model", None) or self.c.unet
        dtype = self.c.unet.dtype
        kw = {}
        if batch.added_cond is not None:
            kw["added_cond_kwargs"] = {k: v.to(dtype) for k, v in batch.added_cond.items()}
        with self.accelerator.autocast():
            return unet(noisy.to(dtype), t, encoder_hidden_states=batch.cond.to(dtype), **kw).sample

    def predict(self, batch: Batch, noise: torch.Tensor | None = None, timesteps: torch.Tensor | None = None) -> dict:
        """Forward-noise the batch latents at per-sample t and run the UNet: pred, target, noise, t, noisy."""
        x0 = batch.latents.float()
        b = x0.shape[0]
        noise = self.randn(x0.shape) if noise is None else noise
        t = self.sample_timesteps(b) if timesteps is None else timesteps.to(self.device).long()
        a = self.alphas_cumprod[t].view(b, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = self.unet(noisy, t, batch).float()
        if self.prediction_type == "v_prediction":
            target = a.sqrt() * noise - (1 - a).sqrt() * x0
        else:
            target = noise
        return {"pred": pred, "target": target, "noise": noise, "t": t, "noisy": noisy, "x0": x0, "alpha_bar": a}

    def eps_from_pred(self, out: dict) -> torch.Tensor:
        """ε̂ from the model output (ε-prediction as is, v-prediction converted)."""
        if self.prediction_type == "v_prediction":
            a = out["alpha_bar"]
            return a.sqrt() * out["pred"] + (1 - a).sqrt() * out["noisy"]
        return out["pred"]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents → images in [-1,1] (differentiable)."""
        vae = self.c.vae
        dtype = next(vae.parameters()).dtype
        with self.accelerator.autocast():
            return vae.decode((latents / self.c.vae_scale).to(dtype)).sample.float()


def _eta(start: float, done: int, total: int) -> float:
    if done <= 0:
        return float("nan")
    return (time.time() - start) / done * (total - done)


class _ProgressAdapter:
    def __init__(self, progress, total: int, start_step: int):
        self.cb = None
        self.bar = None
        if progress is None:
            self.bar = bridge.Progress(total - start_step, desc="train")
        elif hasattr(progress, "update"):
            self.bar = progress
        else:
            self.cb = progress

    def __call__(self, info: dict) -> None:
        if self.bar is not None:
            self.bar.update(1, postfix={"loss": f"{info['loss']:.4f}", "eta": f"{info['eta_s']:.0f}s"})
        if self.cb is not None:
            self.cb(info)
            bridge.check_interrupt()

    def close(self):
        if self.bar is not None and hasattr(self.bar, "close"):
            self.bar.close()


def train_lora(components: SDComponents, dataset: list, objective, lora_cfg: LoraConfig, train_cfg: TrainConfig,
               run_dir: Path, resume: bool = True, progress=None, class_dataset: list | None = None) -> TrainResult:
    """Train a LoRA on ``dataset`` [(PIL, prompt)] with ``objective``; resumable from ``run_dir``.

    ``class_dataset`` [(PIL, prompt)]: prior-preservation samples, one per instance sample in each batch.
    Adds the LoRA adapters when ``components`` has none yet. ``resume``: continue from the run folder's last
    checkpoint (refused when the run was started with other settings, see :func:`run_settings`); ``False``
    starts afresh, removing the folder's previous checkpoints, log and outputs. One process at a time per run
    folder (see :mod:`.run_folder`); stops with :class:`~..fileio.NonFiniteError` naming the step when the loss
    or the LoRA weights become NaN/inf, and never writes such values.
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _train(components, dataset, objective, lora_cfg, train_cfg, Path(run_dir), resume, progress,
                      class_dataset)


# settings a resumed run may change: its length and what it writes or how it uses memory, not what it learns
RESUMABLE_CHANGES = ("steps", "save_every", "sample_every", "sample_prompts", "sample_steps", "sample_cfg",
                     "keep_checkpoints", "eval_seed", "mixed_precision", "gradient_checkpointing", "cache_latents")
RUN_ENTRIES = (RUN_FILE, "config.json", "log.csv", "checkpoints", "samples", "loss.png", "lora.safetensors")


def data_fingerprint(dataset) -> str:
    """sha256 over every (image mode, size, pixels, prompt) of a dataset [(PIL, prompt)]."""
    h = hashlib.sha256()
    for img, prompt in dataset or []:
        h.update(f"{getattr(img, 'mode', '')}|{getattr(img, 'size', '')}|".encode())
        h.update(img.tobytes() if hasattr(img, "tobytes") else repr(img).encode())
        h.update(b"|" + str(prompt).encode() + b"\n")
    return h.hexdigest()


def run_settings(lora_cfg: LoraConfig, train_cfg: TrainConfig, objective, base: str, dataset,
                 class_dataset=None) -> dict:
    """What a run is: LoRA shape, training settings (less :data:`RESUMABLE_CHANGES`), objective, base, data.

    ``class_dataset=None`` leaves the class images out (checked before they are generated)."""
    settings_fn = getattr(objective, "settings", None)
    out = {"lora": asdict(lora_cfg),
           "train": {k: v for k, v in asdict(train_cfg).items() if k not in RESUMABLE_CHANGES},
           "objective": getattr(objective, "name", type(objective).__name__),
           "objective_settings": settings_fn() if callable(settings_fn) else {},
           "base": str(base), "data": data_fingerprint(dataset)}
    if class_dataset is not None:
        out["class_data"] = data_fingerprint(class_dataset)
    return json.loads(json.dumps(out, default=str))   # tuples → lists, as read back from run.json


def check_resume(run_dir: Path, settings: dict, resume: bool, partial: bool = False) -> None:
    """Before any work: refuse (one line) to resume a run folder holding a checkpoint made with other settings."""
    if resume and latest_checkpoint(Path(run_dir)) is not None:
        check_settings(run_dir, "lora", settings, partial=partial)


def normalize_inference_tensors(model: torch.nn.Module) -> int:
    """Replace tensors created under ``torch.inference_mode`` (ComfyUI loads) by ordinary copies, in place.

    Autograd refuses inference tensors even as frozen weights; returns how many were replaced.
    """
    n = 0
    with torch.inference_mode(False):
        for mod in model.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None and p.is_inference():
                    mod._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
                    n += 1
            for name, b in list(mod._buffers.items()):
                if b is not None and b.is_inference():
                    mod._buffers[name] = b.clone()
                    n += 1
    return n


def _train(components, dataset, objective, lora_cfg, train_cfg, run_dir, resume, progress, class_dataset):
    train_cfg.validate()
    lora_cfg.validate()
    items = check_dataset(dataset)
    class_items = check_dataset(class_dataset, "class images") if class_dataset else []
    settings = run_settings(lora_cfg, train_cfg, objective, components.source, items, class_items)
    device = components.device
    accelerator = _make_accelerator(train_cfg, cpu=device.type == "cpu")
    main = accelerator.is_main_process
    with claim(run_dir, main=main) as run:
        if main:
            check_resume(run_dir, settings, resume)
            if not resume:
                wipe(run_dir, RUN_ENTRIES)
            write_settings(run_dir, "lora", settings, {
                "lora": asdict(lora_cfg), "train": asdict(train_cfg),
                "objective": getattr(objective, "name", type(objective).__name__), "base": components.source})
        accelerator.wait_for_everyone()
        return _train_claimed(run, components, items, class_items, objective, lora_cfg, train_cfg, run_dir,
                              resume, progress, accelerator)


def _train_claimed(run, components, items, class_items, objective, lora_cfg, train_cfg, run_dir, resume, progress,
                   accelerator):
    from diffusers.optimization import get_scheduler
    for m in (components.unet, components.vae, components.text_encoder, components.text_encoder_2):
        if m is not None:
            normalize_inference_tensors(m)
    device = components.device
    seed = int(train_cfg.seed)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    rank = accelerator.process_index  # under `accelerate launch` each process draws its own noise / timesteps
    generator = torch.Generator("cpu").manual_seed(seed + 1_000_003 * rank)

    if lora_cfg.full:
        from . import full_finetune
        full_finetune.enable(components, lora_cfg.train_text_encoder)
    elif not any(True for _ in _lora_modules(components.unet)):
        torch.manual_seed(seed)
        add_lora(components, lora_cfg)
    params = trainable_parameters(components)
    if train_cfg.gradient_checkpointing:
        components.unet.enable_gradient_checkpointing()
        if lora_cfg.train_text_encoder:
            for te in components.text_encoders():
                te.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(params, lr=float(train_cfg.lr), weight_decay=float(train_cfg.weight_decay))
    nproc = accelerator.num_processes  # accelerate steps the scheduler once per process
    lr_sched = get_scheduler(train_cfg.lr_scheduler, optimizer=optimizer,
                             num_warmup_steps=int(train_cfg.warmup_steps) * nproc,
                             num_training_steps=int(train_cfg.steps) * nproc)
    trainer = Trainer(components, train_cfg, accelerator, generator)
    # several processes: LoRA gradients (UNet and text encoders) are averaged with accelerator.reduce below
    trainer.unet_model = components.unet
    trainer.objective = objective
    setup = getattr(objective, "setup", None)

    # ---- data: pixels, cached latents, prompt embeddings
    res = int(train_cfg.resolution)
    ref_pixels = _build_pixels(items, res, train_cfg.center_crop)
    cls_pixels = _build_pixels(class_items, res, train_cfg.center_crop) if class_items else None
    trainer.ref_pixels, trainer.class_pixels = ref_pixels, cls_pixels
    trainer.ref_prompts = [p for _, p in items]
    ref_params = encode_images(components, ref_pixels) if train_cfg.cache_latents else None
    cls_params = encode_images(components, cls_pixels) if (train_cfg.cache_latents and cls_pixels is not None) else None
    prompts = [p for _, p in items]
    cls_prompts = [p for _, p in class_items]
    text_cache: dict[str, tuple] = {}

    def cond_for(ps: list[str]):
        if lora_cfg.train_text_encoder:
            return encode_prompts(components, ps, res)
        missing = [p for p in dict.fromkeys(ps) if p not in text_cache]
        if missing:
            with torch.no_grad():
                hs, add = encode_prompts(components, missing, res)
            for i, p in enumerate(missing):
                text_cache[p] = (hs[i:i + 1], None if add is None else {k: v[i:i + 1] for k, v in add.items()})
        hs = torch.cat([text_cache[p][0] for p in ps])
        add = None
        if text_cache[ps[0]][1] is not None:
            add = {k: torch.cat([text_cache[p][1][k] for p in ps]) for k in text_cache[ps[0]][1]}
        return hs, add

    def make_batch(idx: torch.Tensor, cidx: torch.Tensor | None) -> Batch:
        lat_parts, pix_parts, ps = [], [], []
        if ref_params is not None:
            lat_parts.append(sample_latents(ref_params[idx], trainer, components.vae_scale))
        else:
            lat_parts.append(sample_latents(encode_images(components, ref_pixels[idx]), trainer, components.vae_scale))
        pix_parts.append(ref_pixels[idx])
        ps += [prompts[i] for i in idx.tolist()]
        n_prior = 0
        if cidx is not None:
            src = cls_params[cidx] if cls_params is not None else encode_images(components, cls_pixels[cidx])
            lat_parts.append(sample_latents(src, trainer, components.vae_scale))
            pix_parts.append(cls_pixels[cidx])
            ps += [cls_prompts[i] for i in cidx.tolist()]
            n_prior = len(cidx)
        hs, add = cond_for(ps)
        b = len(idx)
        is_prior = torch.tensor([False] * b + [True] * n_prior, device=device)
        ref_index = torch.cat([idx, cidx if cidx is not None else idx[:0]]).to(device)
        need_pix = getattr(objective, "needs_pixels", False)
        return Batch(latents=torch.cat(lat_parts), cond=hs, is_prior=is_prior, ref_index=ref_index, added_cond=add,
                     pixels=torch.cat(pix_parts).to(device) if need_pix else None)

    def draw_indices():
        idx = torch.randint(0, len(items), (int(train_cfg.batch_size),), generator=generator)
        cidx = torch.randint(0, len(class_items), (int(train_cfg.batch_size),), generator=generator) \
            if class_items else None
        return idx, cidx

    if setup is not None:
        setup(trainer)

    prepared = accelerator.prepare(optimizer, lr_sched)
    optimizer, lr_sched = prepared

    # ---- resume
    start_step = 0
    ck = latest_checkpoint(run_dir) if resume else None
    log_csv = run_dir / "log.csv"
    if ck is not None:
        start_step = load_checkpoint(ck, components, optimizer, lr_sched, generator, objective)
        trainer.step = start_step   # objectives that act every K steps count from here
        rank_rng = ck.parent / f"rng_rank{rank}_step_{start_step:07d}.pt"
        if rank > 0 and rank_rng.is_file():
            generator.set_state(torch.load(rank_rng, weights_only=True))
        log.info("resumed from %s (step %d)", ck, start_step)
        if accelerator.is_main_process:
            truncate_log(log_csv, start_step)    # rows written after that checkpoint by a killed run
    elif accelerator.is_main_process:
        log_csv.unlink(missing_ok=True)

    metrics_out: dict[str, float] = {}

    def fixed_eval() -> float:
        g_state = generator.get_state()
        generator.manual_seed(int(train_cfg.eval_seed))
        idx = torch.arange(len(items))
        cidx = torch.arange(min(len(class_items), len(items))) if class_items else None
        with torch.no_grad():
            loss, _ = objective(trainer, make_batch(idx, cidx))
        generator.set_state(g_state)
        return float(loss)

    if train_cfg.eval_seed is not None and start_step == 0:
        metrics_out["eval_loss_start"] = fixed_eval()

    samples: list[Path] = []
    total = int(train_cfg.steps)
    bar = _ProgressAdapter(progress, total, start_step)
    t0 = time.time()
    step = start_step
    modules = [m for m in (components.unet, components.text_encoder, components.text_encoder_2) if m is not None]
    for m in modules:
        m.train()
    run.started()
    try:
        while step < total:
            bridge.check_interrupt()
            if train_cfg.fixed_draw:
                generator.manual_seed(seed)
            loss_acc, mets_acc = 0.0, {}
            for _ in range(int(train_cfg.grad_accum)):
                with accelerator.accumulate(trainer.unet_model):
                    batch = make_batch(*draw_indices())
                    loss, mets = objective(trainer, batch)
                    if not torch.isfinite(loss):
                        raise NonFiniteError(
                            f"The loss became {float(loss.detach())} at step {step + 1}: lower the learning rate "
                            f"(now {train_cfg.lr:g}) or use bf16/fp32, and start afresh (overwrite).")
                    accelerator.backward(loss)
                    if nproc > 1 and accelerator.sync_gradients:
                        for p in params:
                            if p.grad is not None:
                                p.grad = accelerator.reduce(p.grad, reduction="mean")
                    if accelerator.sync_gradients and train_cfg.max_grad_norm:
                        accelerator.clip_grad_norm_(params, float(train_cfg.max_grad_norm))
                    optimizer.step()
                    lr_sched.step()
                    optimizer.zero_grad(set_to_none=True)
                loss_acc += float(loss.detach()) / int(train_cfg.grad_accum)
                for k, v in mets.items():
                    mets_acc[k] = mets_acc.get(k, 0.0) + float(v) / int(train_cfg.grad_accum)
            if not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
                raise NonFiniteError(
                    f"The LoRA weights became NaN or infinite at step {step + 1}: lower the learning rate "
                    f"(now {train_cfg.lr:g}) or use bf16/fp32, and start afresh (overwrite).")
            after = getattr(objective, "after_step", None)
            if after is not None:
                extra = after(trainer, batch) or {}
                bad = [k for k, v in extra.items() if not math.isfinite(float(v))]
                if bad:
                    raise NonFiniteError(f"The objective's {bad[0]} became {extra[bad[0]]} at step "
                                         f"{step + 1}: lower the learning rate, and start afresh (overwrite).")
                mets_acc.update(extra)
            step += 1
            trainer.step = step
            row = {"step": step, "loss": loss_acc, "lr": lr_sched.get_last_lr()[0], **mets_acc}
            if accelerator.is_main_process:
                _append_csv(log_csv, row)
            if train_cfg.save_every and step % int(train_cfg.save_every) == 0 and step < total:
                if accelerator.is_main_process:
                    save_checkpoint(run_dir, step, components, optimizer, lr_sched, generator, objective,
                                    train_cfg.keep_checkpoints)
                else:
                    _save_rank_rng(run_dir, step, generator, rank)
            if train_cfg.sample_every and train_cfg.sample_prompts and step % int(train_cfg.sample_every) == 0:
                samples += _save_samples(components, train_cfg, run_dir, step)
            bar({"step": step, "total": total, "loss": loss_acc, "eta_s": _eta(t0, step - start_step,
                                                                               total - start_step), **mets_acc})
    except bridge.interrupt_exceptions():
        if accelerator.is_main_process and step > start_step:
            save_checkpoint(run_dir, step, components, optimizer, lr_sched, generator, objective,
                            train_cfg.keep_checkpoints)
            plot_loss(log_csv, run_dir / "loss.png")
        elif step > start_step:
            _save_rank_rng(run_dir, step, generator, rank)
        raise
    finally:
        bar.close()
        for m in modules:
            m.eval()
    ck_path = None
    if accelerator.is_main_process:
        ck_path = save_checkpoint(run_dir, step, components, optimizer, lr_sched, generator, objective,
                                  train_cfg.keep_checkpoints)
    else:
        _save_rank_rng(run_dir, step, generator, rank)
    if train_cfg.eval_seed is not None:
        metrics_out["eval_loss_end"] = fixed_eval()
    state = {} if lora_cfg.full else lora_state_dict(components)   # full fine-tuning: the caller exports the model
    lora_path = None
    plot = None
    if accelerator.is_main_process:
        if state:
            from safetensors.torch import save_file
            meta = lora_metadata(components, {"steps": str(step), "objective": getattr(objective, "name", "")})
            check_finite(state, f"the LoRA of {run_dir.name}")
            lora_path = atomic_save(run_dir / "lora.safetensors", lambda tmp: save_file(state, tmp, metadata=meta))
        plot = plot_loss(log_csv, run_dir / "loss.png")
    accelerator.wait_for_everyone()
    return TrainResult(lora_path=lora_path, state=state, steps_done=step, log_csv=log_csv, loss_plot_png=plot,
                       samples=samples, metrics=metrics_out, checkpoint=ck_path)
