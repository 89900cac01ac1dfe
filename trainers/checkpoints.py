"""Resumable checkpoints of a LoRA run (adapter weights, optimizer, lr scheduler, every RNG, step, objective
state; loadable with ``torch.load(weights_only=True)``) and the run folder's ``log.csv``.
"""
from __future__ import annotations

import csv
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_folder, atomic_save, atomic_write, check_finite, clean_orphans_in
from .base_model import SDComponents


def _rng_state(gen: torch.Generator) -> dict:
    """Every RNG as tensors / plain ints, so the checkpoint loads with ``torch.load(weights_only=True)``."""
    key, pos_arr, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {"gen": gen.get_state(), "torch": torch.get_rng_state(),
            "numpy": {"key": key, "state": torch.from_numpy(pos_arr.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": [int(version), list(py_state), gauss],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(gen: torch.Generator, st: dict) -> None:
    gen.set_state(st["gen"])
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, py_state, gauss = st["python"]
    random.setstate((version, tuple(py_state), gauss))
    if st.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _trainable_named(components: SDComponents) -> dict[str, torch.nn.Parameter]:
    from . import full_finetune
    if full_finetune.is_full(components):
        return full_finetune.trainable_named(components)
    out = {}
    for prefix, m in (("unet.", components.unet), ("te.", components.text_encoder), ("te2.", components.text_encoder_2)):
        if m is None:
            continue
        for n, p in m.named_parameters():
            if "lora_" in n:
                out[prefix + n] = p
    return out


def _save_rank_rng(run_dir: Path, step: int, generator: torch.Generator, rank: int) -> None:
    """Ranks > 0 of a multi-process run keep their own noise generator next to rank 0's checkpoint."""
    p = run_dir / "checkpoints" / f"rng_rank{rank}_step_{step:07d}.pt"
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(p, lambda tmp: torch.save(generator.get_state(), tmp))


def save_checkpoint(run_dir: Path, step: int, components, optimizer, lr_sched, generator, objective,
                    keep: int = 2) -> Path:
    """Write ``checkpoints/step_<n>`` atomically (temp folder + rename): LoRA, optimizer, scheduler, RNG, step.

    Refuses (:class:`~..fileio.NonFiniteError`) to write NaN/inf weights, optimizer or objective state."""
    ck_root = run_dir / "checkpoints"
    ck_root.mkdir(parents=True, exist_ok=True)
    final = ck_root / f"step_{step:07d}"
    params = {k: v.detach().cpu().clone() for k, v in _trainable_named(components).items()}
    state = {"params": params, "optimizer": optimizer.state_dict(), "lr_scheduler": lr_sched.state_dict(),
             "rng": _rng_state(generator), "step": step,
             "objective": objective.state_dict() if hasattr(objective, "state_dict") else {}}
    check_finite({"params": params, "optimizer": state["optimizer"], "objective": state["objective"]},
                 f"the checkpoint of step {step}")
    clean_orphans_in(ck_root)               # a checkpoint write killed half-way (another step's name)
    with atomic_folder(final, overwrite=True) as tmp:
        torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, "time": time.time()}))
    done = sorted(p for p in ck_root.glob("step_*") if (p / "meta.json").is_file())
    for old in done[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    kept = {p.name for p in done[-max(1, keep):]}
    for f in ck_root.glob("rng_rank*_step_*.pt"):  # other ranks' generators of pruned checkpoints
        if "step_" + f.stem.split("_step_")[-1] not in kept and f.stem.split("_step_")[-1] < f"{step:07d}":
            f.unlink(missing_ok=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(p for p in (Path(run_dir) / "checkpoints").glob("step_*") if (p / "meta.json").is_file())
    return done[-1] if done else None


def load_checkpoint(ck: Path, components, optimizer, lr_sched, generator, objective) -> int:
    from ..weights.safe_load import load_training_state
    st = load_training_state(ck / "state.pt")
    named = _trainable_named(components)
    missing = set(named) ^ set(st["params"])
    wrong = [k for k in named if k in st["params"] and tuple(st["params"][k].shape) != tuple(named[k].shape)]
    if missing or wrong:
        raise ValueError(f"Checkpoint {ck} does not match this LoRA setup (different rank/targets?): "
                         f"{sorted(missing | set(wrong))[:3]}. Use a new run folder or the same settings.")
    with torch.no_grad():
        for k, p in named.items():
            p.copy_(st["params"][k].to(p.device, p.dtype))
    optimizer.load_state_dict(st["optimizer"])
    lr_sched.load_state_dict(st["lr_scheduler"])
    _set_rng_state(generator, st["rng"])
    if hasattr(objective, "load_state_dict"):
        objective.load_state_dict(st.get("objective", {}))
    return int(st["step"])


def _append_csv(path: Path, row: dict) -> None:
    new = not path.is_file()
    header = None
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), None)
    keys = header or list(row)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in keys})


def read_log(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def truncate_log(path: Path, step: int) -> None:
    """Keep only the complete rows up to ``step`` (a run resumed from the checkpoint of ``step``)."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, keep = rows[0], [rows[0]]
    for r in rows[1:]:
        try:
            ok = len(r) == len(header) and int(r[0]) <= step
        except ValueError:
            ok = False
        if ok:
            keep.append(r)
    if len(keep) == len(rows):
        return
    import io
    buf = io.StringIO()
    csv.writer(buf).writerows(keep)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue().encode("utf-8"))
