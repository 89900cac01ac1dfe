"""Reward-ranked LoRA fine-tuning: FineRewards' *assemble reward-ranked learning* (RAFT-style rounds).

Each round (paper notes A.4):

1. **generate** ``k`` candidates per prompt with the current LoRA (batched; each candidate's starting noise
   comes from its own seed, so images do not depend on the batching);
2. **score** every candidate with every reward (scorers built once, reused every round);
3. **select** the best ``top`` candidates per prompt by assemble ranking: per reward, rank the ``k``
   candidates best-first (0 = best, tied values share the mean position), add the ranks weighted per
   reward, keep the smallest sums; ties go to the larger weighted sum of z-scored rewards, then to the
   lower candidate index (``mode="zscore"``/``"raw"`` rank by weighted z-scores / raw values instead);
4. **fine-tune** the LoRA on the kept (image, prompt) pairs with the plain noise-prediction loss.

A run directory holds everything and makes the loop resumable at any point::

    state.json                 round state (written atomically after every phase)
    rounds.csv / rounds.png    mean reward per round (all candidates and kept ones) + seconds per phase
    round_000/kept/*.png       the kept images of round 0
    round_000/scores.csv       every candidate: seed, rewards, per-reward ranks, total, kept
    round_000/lora.safetensors the LoRA after round 0 (kohya names, loadable by ComfyUI / A1111)
    round_000/adapter.safetensors  the trainable adapter weights after round 0 (what a resumed run continues from)
    round_000/train/           the training core's own checkpoints (a stopped training resumes there)
    final/scores.csv           optional evaluation pass of the final LoRA (round 0's seeds, no training)

A finished round is never redone; a round stopped after selection resumes with training, a round stopped
during training resumes from the training core's last checkpoint.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from .. import bridge, distributed
from ..fileio import atomic_save, atomic_write_text, check_finite
from ..rewards.report import compact_details
from ..rewards.types import RewardScores
from . import run_folder

log = logging.getLogger("rewardloop")

STATE_VERSION = 1
MODES = ("rank_sum", "zscore", "raw")
SEED_STRIDE = 1_000_003
RUNS_SUBDIR = "rewardloop_ranked"   # run folders: <output>/rewardloop_ranked/<output name>  # seeds of round r start at seed + r * SEED_STRIDE


# ====================================================================== assemble ranking
def _ranking_module():
    """The pack's shared ranking module (best-of-N issue) when present, else None."""
    try:
        from ..rewards import ranking  # type: ignore
    except ImportError:
        return None
    return ranking


def _check_scores(scores: Sequence[RewardScores], weights: Sequence[float] | None) -> list[float]:
    if not scores:
        raise ValueError("Ranking needs at least one reward.")
    n = len(scores[0])
    for s in scores:
        if len(s) != n:
            raise ValueError(f"Reward {s.name!r} scored {len(s)} candidates but {scores[0].name!r} scored {n}: "
                             "every reward must score the same candidates.")
        bad = [i for i, v in enumerate(s.values) if not math.isfinite(v)]
        if bad:
            raise ValueError(f"Reward {s.name!r} returned NaN or inf for candidate(s) {bad}: fix that reward's "
                             "model or leave the reward out.")
    if weights is None:
        weights = [1.0] * len(scores)
    weights = [float(w) for w in weights]
    if len(weights) != len(scores):
        raise ValueError(f"{len(weights)} weights for {len(scores)} rewards "
                         f"({', '.join(s.name for s in scores)}): give one weight per reward.")
    if any(w < 0 or not math.isfinite(w) for w in weights) or not any(w > 0 for w in weights):
        raise ValueError(f"Reward weights must be finite, >= 0 and not all 0; got {weights}.")
    return weights


def descending_ranks(values: Sequence[float]) -> list[float]:
    """Position of each value when sorted best (largest) first: 0 = best; tied values share their mean position."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    ranks = [0.0] * len(values)
    pos = 0
    while pos < len(order):
        end = pos
        while end + 1 < len(order) and values[order[end + 1]] == values[order[pos]]:
            end += 1
        for q in range(pos, end + 1):
            ranks[order[q]] = (pos + end) / 2.0
        pos = end + 1
    return ranks


def z_scores(values: Sequence[float]) -> list[float]:
    """(v - mean) / std with the population std; all zeros when every value is the same."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    if std <= 1e-12:
        return [0.0] * n
    return [(v - mean) / std for v in values]


def assemble_table(scores: Sequence[RewardScores], weights: Sequence[float] | None = None) -> dict[str, list]:
    """Per-candidate ranks per reward, weighted rank sum, weighted z-score sum and weighted raw sum."""
    weights = _check_scores(scores, weights)
    n = len(scores[0])
    oriented = [s.oriented() for s in scores]
    ranks = [descending_ranks(v) for v in oriented]
    zs = [z_scores(v) for v in oriented]
    rank_sum = [sum(w * r[i] for w, r in zip(weights, ranks)) for i in range(n)]
    z_sum = [sum(w * z[i] for w, z in zip(weights, zs)) for i in range(n)]
    raw_sum = [sum(w * v[i] for w, v in zip(weights, oriented)) for i in range(n)]
    return {"ranks": ranks, "rank_sum": rank_sum, "z_sum": z_sum, "raw_sum": raw_sum}


def _local_rank(scores: Sequence[RewardScores], weights, mode: str) -> list[int]:
    t = assemble_table(scores, weights)
    r9 = lambda x: round(x, 9)  # noqa: E731  (float sums of weights must tie exactly)
    n = len(scores[0])
    if mode == "rank_sum":
        key = lambda i: (r9(t["rank_sum"][i]), -r9(t["z_sum"][i]), i)  # noqa: E731
    elif mode == "zscore":
        key = lambda i: (-r9(t["z_sum"][i]), r9(t["rank_sum"][i]), i)  # noqa: E731
    else:
        key = lambda i: (-r9(t["raw_sum"][i]), -r9(t["z_sum"][i]), i)  # noqa: E731
    return sorted(range(n), key=key)


def rank_candidates(scores: Sequence[RewardScores], weights: Sequence[float] | None = None,
                    mode: str = "rank_sum") -> list[int]:
    """Candidate indices best-first by assemble ranking (the one entry point the selection uses).

    Uses the pack's shared ``rewards.ranking.assemble_rank`` (best-of-N issue) when it is installed, else the
    local implementation above; both implement the same definition (paper A.4 intent, rank-sum ties broken by
    the weighted z-score sum, then the lower index).
    """
    if mode not in MODES:
        raise ValueError(f"Unknown ranking mode {mode!r}: use one of {', '.join(MODES)}.")
    _check_scores(scores, weights)
    shared = _ranking_module()
    fn = getattr(shared, "assemble_rank", None) if shared is not None else None
    if fn is not None:
        ranking = fn([_ungrouped(s) for s in scores], weights=None if weights is None else list(weights), mode=mode)
        return [int(i) for i in ranking.order]
    return _local_rank(scores, weights, mode)


def _ungrouped(s: RewardScores) -> RewardScores:
    """The candidates passed in are one group: drop any group ids a scorer attached."""
    if s.group is None:
        return s
    return RewardScores(s.name, s.values, s.higher_is_better, s.value_range, s.details, None)


def subset(scores: Sequence[RewardScores], idx: Sequence[int]) -> list[RewardScores]:
    """The same rewards restricted to candidates ``idx`` (for ranking one prompt's group)."""
    out = []
    for s in scores:
        det = [s.details[i] for i in idx] if s.details else []
        out.append(RewardScores(s.name, [s.values[i] for i in idx], s.higher_is_better, s.value_range, det))
    return out


def select_per_prompt(scores: Sequence[RewardScores], groups: Sequence[int], top: int,
                      weights: Sequence[float] | None = None, mode: str = "rank_sum") -> dict[int, list[int]]:
    """For each prompt group: the global candidate indices in ranked order (best first); keep ``[:top]``."""
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(int(g), []).append(i)
    out = {}
    for g, idx in by_group.items():
        order = rank_candidates(subset(scores, idx), weights, mode)
        out[g] = [idx[j] for j in order]
    return out


def expand_weights(scorers: Sequence[Any], weights: Sequence[float] | None) -> list[float]:
    """Weights per reward *name*: one per scorer (shared evenly by the scores it returns) or one per name."""
    names = [n for s in scorers for n in s.names]
    if weights is None or len(weights) == 0:
        weights = [1.0] * len(scorers)
    weights = [float(w) for w in weights]
    if len(weights) == len(names):
        return weights
    if len(weights) == len(scorers):
        return [w / len(s.names) for w, s in zip(weights, scorers) for _ in s.names]
    raise ValueError(f"{len(weights)} weights for {len(scorers)} rewards ({', '.join(names)}): give one weight "
                     "per reward (a reward with several scores shares its weight evenly) or one per score.")


# ====================================================================== configuration
@dataclass
class RankedConfig:
    k: int = 10                 # candidates per prompt per round (paper: 10)
    rounds: int = 2             # sample/score/select/train rounds (paper: 2)
    top: int = 1                # kept per prompt (paper: best 1)
    weights: list[float] | None = None  # per scorer or per reward name; None = equal
    mode: str = "rank_sum"      # rank_sum (paper), zscore, raw
    gen_steps: int = 20
    cfg: float = 7.5
    width: int | None = None    # default: the training resolution
    height: int | None = None
    negative: str = ""
    gen_batch: int = 8          # images per generation call
    seed: int = 0
    eval_final: bool = True     # paper: a last sample/score pass after the final round (no training)
    offload: bool = True        # SD off the device while scoring, scorer models off while generating/training
    save_candidates: bool = False  # also write every candidate image (not only the kept ones)

    def validate(self) -> None:
        if self.k < 1:
            raise ValueError(f"k (candidates per prompt) must be at least 1, got {self.k}.")
        if not 1 <= self.top <= self.k:
            raise ValueError(f"top (kept per prompt) must be between 1 and k={self.k}, got {self.top}.")
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}.")
        if self.mode not in MODES:
            raise ValueError(f"Unknown ranking mode {self.mode!r}: use one of {', '.join(MODES)}.")
        if self.gen_batch < 1 or self.gen_steps < 1:
            raise ValueError("gen_batch and gen_steps must be at least 1.")


@dataclass
class RankedResult:
    run_dir: Path
    lora_path: Path | None          # the exported final LoRA (or the last round's checkpoint)
    rounds: list[dict]              # one record per finished round (means, kept files, seconds, loss)
    eval: dict | None               # evaluation pass of the final LoRA, when run
    table_path: Path
    plot_path: Path
    kept_images: list[Image.Image] = field(default_factory=list)  # last round's kept images (or eval best)

    def mean_rewards(self) -> list[dict[str, float]]:
        return [r["means"] for r in self.rounds]


def candidate_seed(base_seed: int, round_index: int, prompt_index: int, j: int, k: int) -> int:
    return int(base_seed) + round_index * SEED_STRIDE + prompt_index * k + j


# ====================================================================== helpers: files
def _save_png(path: Path, img: Image.Image) -> None:
    atomic_save(path, lambda tmp: img.save(tmp, format="PNG"))


def _csv_text(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in r])
    return buf.getvalue()


def _fingerprint(prompts, names, cfg: RankedConfig, lora_cfg, train_cfg, base: str) -> dict:
    """Settings a resumed run must share with the stored one (rounds may grow; output options may change).

    ``names=None`` leaves the reward names out (checked before the reward models are loaded)."""
    keep = {k: v for k, v in asdict(cfg).items() if k not in ("rounds", "offload", "eval_final", "gen_batch",
                                                               "save_candidates")}
    lc = {k: (list(v) if isinstance(v, tuple) else v) for k, v in _as_dict(lora_cfg).items()}
    tc = {k: v for k, v in _as_dict(train_cfg).items() if k in ("steps", "lr", "batch_size", "grad_accum",
                                                                  "resolution", "seed")}
    digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]
    out = {"prompts_sha256": digest, "n_prompts": len(prompts), "rewards": list(names or []), "ranked": keep,
           "lora": lc, "train": tc, "base": str(base)}
    if names is None:
        del out["rewards"]
    return out


def _as_dict(obj) -> dict:
    try:
        return {k: v for k, v in asdict(obj).items() if isinstance(v, (int, float, str, bool, list, tuple, type(None)))}
    except TypeError:
        return {}


# a run's own files, removed when it starts afresh (overwrite)
RUN_ENTRIES = ("state.json", "rounds.csv", "rounds.png", "round_[0-9][0-9][0-9]*", "final")


def check_run(run_dir, prompts: Sequence[str], cfg: RankedConfig, lora_cfg, train_cfg, base, resume: bool = True,
              overwrite: bool = False, final_lora_path=None) -> None:
    """The checks of :class:`RankedTrainer` that need no reward model, for callers (the CLI) that load rewards
    only after them: an existing run without ``resume``, other settings, an existing final LoRA."""
    run_dir = Path(run_dir).resolve()
    prompts = [" ".join(str(p).split()) for p in prompts]
    fp = _fingerprint(prompts, None, cfg, lora_cfg, train_cfg, str(base))
    state = _check_state(run_dir / "state.json", run_dir, fp, resume, overwrite, partial=True)
    final = Path(final_lora_path) if final_lora_path is not None else None
    owned = state is not None and state.get("final_lora") == str(final)
    if final is not None and final.exists() and not overwrite and not owned:
        raise FileExistsError(f"{final} already exists: choose another output name or turn on overwrite "
                              "(--overwrite).")


def _check_state(state_path: Path, run_dir: Path, fp: dict, resume: bool, overwrite: bool,
                 partial: bool = False) -> dict | None:
    """The stored state when the run will resume; ``None`` for a new (or overwritten) run; refusals as one line."""
    if not state_path.is_file() or overwrite:
        return None
    if not resume:
        raise FileExistsError(f"{run_dir} already holds a reward-ranked run: resume it (--resume / 'resume' on), "
                              "start afresh with overwrite (--overwrite), or choose another output name.")
    try:
        state = json.loads(state_path.read_text())
    except ValueError:
        raise ValueError(f"{state_path} is damaged: start afresh with overwrite (--overwrite).") from None
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{state_path} was written by another version: start a new run.")
    changes = run_folder.diff(state["settings"], fp, partial=partial)
    if changes:
        raise ValueError(f"{run_dir} was started with other settings ({'; '.join(changes[:4])}): resume with the "
                         "same settings (only 'rounds' may grow), start afresh with overwrite (--overwrite), or "
                         "choose another name.")
    return state


# ====================================================================== helpers: memory
def _sd_modules(components) -> list[torch.nn.Module]:
    mods = []
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        m = getattr(components, name, None)
        if isinstance(m, torch.nn.Module):
            mods.append(m)
    return mods


def _offload_scorers(scorers) -> None:
    """Move reward models off the compute device: a scorer's own ``offload()``, else its handle attributes."""
    for s in scorers:
        fn = getattr(s, "offload", None)
        if callable(fn):
            fn()
            continue
        for v in list(getattr(s, "__dict__", {}).values()):
            model = getattr(v, "model", v)
            if isinstance(model, torch.nn.Module):
                bridge.offload(model)
    bridge.soft_empty_cache()


def _module_device(components) -> torch.device:
    try:
        return next(components.unet.parameters()).device
    except (StopIteration, AttributeError):
        return bridge.get_device()


# ====================================================================== helpers: generation and LoRA state
def _vae_factor(components) -> int:
    return 2 ** (len(components.vae.config.block_out_channels) - 1)


def generate_batch(components, prompts: Sequence[str], seeds: Sequence[int], steps: int = 20, cfg: float = 7.5,
                   width: int = 512, height: int = 512, negative: str = "") -> list[Image.Image]:
    """One image per (prompt, seed) in ONE pipeline call.

    Each image's initial latent is drawn from its own seed (fp32, CPU generator), so an image does not depend on
    which batch it was generated in. Runs outside inference mode with the modules in eval mode (restored after).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds.")
    f = _vae_factor(components)
    if width % f or height % f:
        raise ValueError(f"Width and height must be multiples of {f} for this model (got {width}x{height}).")
    pipe = components.pipeline()
    unet = components.unet
    param = next(unet.parameters())
    shape = (1, int(unet.config.in_channels), height // f, width // f)
    latents = torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(s))) for s in seeds])
    modules = _sd_modules(components)
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        with torch.inference_mode(False), torch.no_grad():
            out = pipe(list(prompts), negative_prompt=[negative] * len(prompts) if negative else None,
                       num_inference_steps=int(steps), guidance_scale=float(cfg), width=width, height=height,
                       latents=latents.to(param.device, param.dtype), output_type="pil").images
    finally:
        for m, t in zip(modules, modes):
            m.train(t)
    return [im.convert("RGB") for im in out]


def adapter_state(components) -> dict[str, torch.Tensor]:
    """The trainable LoRA adapter weights (peft ``lora_`` parameters of the UNet and text encoders), CPU copies."""
    out = {}
    for prefix in ("unet", "text_encoder", "text_encoder_2"):
        m = getattr(components, prefix, None)
        if isinstance(m, torch.nn.Module):
            for n, p in m.named_parameters():
                if "lora_" in n:
                    out[f"{prefix}.{n}"] = p.detach().to("cpu", torch.float32).contiguous().clone()
    return out


def restore_adapter(components, sd: dict[str, torch.Tensor]) -> None:
    """Copy saved adapter weights back into the (freshly added) adapters; every key must match."""
    have = {}
    for prefix in ("unet", "text_encoder", "text_encoder_2"):
        m = getattr(components, prefix, None)
        if isinstance(m, torch.nn.Module):
            have.update({f"{prefix}.{n}": p for n, p in m.named_parameters() if "lora_" in n})
    missing, extra = sorted(set(have) - set(sd)), sorted(set(sd) - set(have))
    if missing or extra:
        raise ValueError(f"The saved LoRA does not fit this model's adapters ({len(missing)} missing, {len(extra)} "
                         f"unexpected, e.g. {(missing + extra)[:2]}): resume with the same base and LoRA settings.")
    with torch.no_grad():
        for k, p in have.items():
            p.copy_(sd[k].to(p.device, p.dtype))


# ====================================================================== plots and grids
def plot_rounds(records: list[dict], eval_record: dict | None, names: list[str]) -> Image.Image:
    """Mean reward per round, one panel per reward: all candidates (solid) and kept ones (dashed)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = max(len(names), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.8), squeeze=False)
    xs = [r["round"] for r in records]
    for ax, name in zip(axes[0], names):
        ax.plot(xs, [r["means"][name] for r in records], "o-", label="candidates")
        ax.plot(xs, [r["kept_means"][name] for r in records], "s--", label="kept")
        if eval_record is not None:
            ax.plot([eval_record["round"]], [eval_record["means"][name]], "D", color="C2", label="final LoRA")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        ticks = xs + ([eval_record["round"]] if eval_record is not None else [])
        ax.set_xticks(ticks)
    axes[0][0].set_ylabel("mean reward")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def image_grid(images: Sequence[Image.Image], cols: int | None = None) -> Image.Image:
    """Images (resized to the first one's size) in a grid, left to right, top to bottom."""
    if not images:
        raise ValueError("No images for the grid.")
    w, h = images[0].size
    cols = cols or min(len(images), 4)
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * w, rows * h), (0, 0, 0))
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB").resize((w, h)), ((i % cols) * w, (i // cols) * h))
    return grid


# ====================================================================== the trainer
class RankedTrainer:
    """Runs (and resumes) the round loop in ``run_dir``; see the module docstring."""

    def __init__(self, base, prompts: Sequence[str], scorers: Sequence[Any], run_dir, cfg: RankedConfig | None = None,
                 lora_cfg=None, train_cfg=None, resume: bool = True, progress=None, dtype=None, device=None,
                 overwrite: bool = False):
        from . import lora as core
        self.core = core
        self.cfg = cfg or RankedConfig()
        self.cfg.validate()
        self.overwrite = bool(overwrite)    # a fresh run: the run folder's previous rounds are removed by run()
        self.prompts = [" ".join(str(p).split()) for p in prompts]
        if not self.prompts or any(not p for p in self.prompts):
            raise ValueError("No prompts (or an empty one): give at least one non-empty prompt.")
        if not scorers:
            raise ValueError("No rewards: give at least one scorer (any reward of rewards.scoring.available()).")
        self.scorers = list(scorers)
        self.names = [n for s in self.scorers for n in s.names]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"Two rewards have the same name ({', '.join(self.names)}): use each reward once.")
        self.weights = expand_weights(self.scorers, self.cfg.weights)
        self.lora_cfg = lora_cfg or core.LoraConfig()
        self.train_cfg = train_cfg or core.TrainConfig(steps=100)
        for c in (self.lora_cfg, self.train_cfg):   # before any generation: bad settings fail in a second
            if hasattr(c, "validate"):
                c.validate()
        self.run_dir = Path(run_dir).resolve()
        self.progress = progress
        self.base_name = base if isinstance(base, (str, Path)) else getattr(base, "name", "components")
        self.state_path = self.run_dir / "state.json"
        fp = _fingerprint(self.prompts, self.names, self.cfg, self.lora_cfg, self.train_cfg, str(self.base_name))
        self.state = self._open_state(fp, resume, self.overwrite)
        self._base = base
        self._dtype, self._device = dtype, device
        self.components = None

    # ---------------------------------------------------------------- state
    def _open_state(self, fp: dict, resume: bool, overwrite: bool) -> dict:
        state = _check_state(self.state_path, self.run_dir, fp, resume, overwrite)
        if state is not None:
            return state
        return {"version": STATE_VERSION, "settings": fp, "prompts": self.prompts, "reward_names": self.names,
                "weights": self.weights, "rounds": [], "eval": None, "final_lora": None}

    def _write_state(self) -> None:
        if not distributed.is_main():
            return
        atomic_write_text(self.state_path, json.dumps(self.state, indent=1))

    def _round_record(self, r: int) -> dict | None:
        for rec in self.state["rounds"]:
            if rec["round"] == r:
                return rec
        return None

    def done_rounds(self) -> list[dict]:
        return [r for r in self.state["rounds"] if r.get("phase") == "done"]

    # ---------------------------------------------------------------- progress
    def units_total(self) -> int:
        n = len(self.prompts) * self.cfg.k
        todo = 0
        for r in range(self.cfg.rounds):
            rec = self._round_record(r)
            if rec is None:
                todo += 2 * n + self.train_cfg.steps
            elif rec["phase"] != "done":
                todo += self.train_cfg.steps
        if self.cfg.eval_final and not self._eval_current():
            todo += 2 * n
        return max(todo, 1)

    def _tick(self, n: int = 1) -> None:
        if self.progress is not None:
            self.progress.update(n)
        else:
            bridge.check_interrupt()

    # ---------------------------------------------------------------- model
    def _ensure_components(self):
        if self.components is not None:
            return self.components
        base = self._base
        if isinstance(base, (str, Path)):
            self.components = self.core.load_base(str(base), dtype=self._dtype, device=self._device)
        else:
            self.components = base
        torch.manual_seed(int(self.cfg.seed))  # the adapters' random init
        self.core.add_lora(self.components, self.lora_cfg)
        done = self.done_rounds()
        if done:  # continue from the last finished round's adapter weights
            from safetensors.torch import load_file
            restore_adapter(self.components, load_file(str(self.run_dir / done[-1]["adapter"])))
        self._device_home = _module_device(self.components)
        return self.components

    def _sd_to_device(self) -> None:
        if self.cfg.offload:
            for m in _sd_modules(self.components):
                bridge.to_device_for_use(m, self._device_home)

    def _sd_offload(self) -> None:
        if self.cfg.offload:
            for m in _sd_modules(self.components):
                bridge.offload(m)

    # ---------------------------------------------------------------- phases
    def _jobs(self, round_index: int) -> list[tuple[int, int, int]]:
        return [(p, j, candidate_seed(self.cfg.seed, round_index, p, j, self.cfg.k))
                for p in range(len(self.prompts)) for j in range(self.cfg.k)]

    def _batches(self, n_jobs: int) -> list[int]:
        """Start of every generation batch this process makes (all of them with one process; under ``torchrun``
        every ``world``-th one, so each batch — and so each image — is made exactly as one process makes it)."""
        return distributed.shard(list(range(0, n_jobs, self.cfg.gen_batch)))

    def generate(self, round_index: int) -> tuple[list[Image.Image], list[int], list[int], list[int]]:
        """This process's candidates of a round (all of them with one process): images, prompt index, candidate
        index and seed of each, batch by batch in job order."""
        comps = self._ensure_components()
        if self.cfg.offload:
            _offload_scorers(self.scorers)
        self._sd_to_device()
        jobs = self._jobs(round_index)
        mine = [jobs[i] for start in self._batches(len(jobs)) for i in range(start, min(start + self.cfg.gen_batch,
                                                                                         len(jobs)))]
        res = self.train_cfg.resolution
        images: list[Image.Image] = []
        for start in range(0, len(mine), self.cfg.gen_batch):
            chunk = mine[start:start + self.cfg.gen_batch]
            bridge.check_interrupt()
            out = generate_batch(comps, [self.prompts[p] for p, _, _ in chunk], [s for _, _, s in chunk],
                                 steps=self.cfg.gen_steps, cfg=self.cfg.cfg, width=self.cfg.width or res,
                                 height=self.cfg.height or res, negative=self.cfg.negative)
            if len(out) != len(chunk):
                raise RuntimeError(f"The generator returned {len(out)} images for {len(chunk)} prompts.")
            images += [im.convert("RGB") for im in out]
            self._tick(len(chunk))
        return images, [p for p, _, _ in mine], [j for _, j, _ in mine], [s for _, _, s in mine]

    def score(self, images: list[Image.Image], prompt_idx: list[int]) -> list[RewardScores]:
        """Scores of ``images``, one scorer call per generation batch (the same calls whichever process makes
        the batch, so several processes score exactly as one)."""
        self._sd_offload()
        prompts = [self.prompts[p] for p in prompt_idx]
        parts = []
        for start in range(0, len(images), self.cfg.gen_batch):
            ims, ps = images[start:start + self.cfg.gen_batch], prompts[start:start + self.cfg.gen_batch]
            got_all: list[RewardScores] = []
            for scorer in self.scorers:
                bridge.check_interrupt()
                got = list(scorer(ims, ps))
                if [s.name for s in got] != list(scorer.names):
                    raise RuntimeError(f"Scorer {scorer!r} returned {[s.name for s in got]}, expected {scorer.names}.")
                for s in got:
                    if len(s) != len(ims):
                        raise RuntimeError(f"Reward {s.name!r} returned {len(s)} scores for {len(ims)} images.")
                got_all += got
            parts.append(got_all)
        if self.cfg.offload:
            _offload_scorers(self.scorers)
        self._tick(len(images))
        return [RewardScores.concat([p[k] for p in parts]) for k in range(len(parts[0]))] if parts else []

    def _means(self, scores: list[RewardScores], idx: Sequence[int] | None = None) -> dict[str, float]:
        out = {}
        for s in scores:
            vals = s.values if idx is None else [s.values[i] for i in idx]
            out[s.name] = sum(vals) / len(vals)
        return out

    def _scores_csv(self, path: Path, prompt_idx, cand_idx, seeds, scores, orders: dict[int, list[int]],
                    kept: set[int], files: dict[int, str]) -> None:
        t = {"ranks": [], "rank_sum": [None] * len(seeds), "z_sum": [None] * len(seeds)}
        per_cand_ranks = [[None] * len(scores) for _ in seeds]
        position = [None] * len(seeds)
        for g, order in orders.items():
            idx = sorted(order)
            tab = assemble_table(subset(scores, idx), self.weights)
            for local, gi in enumerate(idx):
                t["rank_sum"][gi] = tab["rank_sum"][local]
                t["z_sum"][gi] = tab["z_sum"][local]
                for j in range(len(scores)):
                    per_cand_ranks[gi][j] = tab["ranks"][j][local]
            for pos, gi in enumerate(order):
                position[gi] = pos
        header = (["prompt_index", "prompt", "candidate", "seed"] + [s.name for s in scores]
                  + [f"rank_{s.name}" for s in scores] + ["rank_sum", "z_sum", "position", "kept", "file"])
        rows = []
        for i in range(len(seeds)):
            rows.append([prompt_idx[i], self.prompts[prompt_idx[i]], cand_idx[i], seeds[i]]
                        + [s.values[i] for s in scores] + [float(x) for x in per_cand_ranks[i]]
                        + [float(t["rank_sum"][i]), float(t["z_sum"][i]), position[i], int(i in kept),
                           files.get(i, "")])
        atomic_write_text(path, _csv_text(header, rows))

    def _sample_and_select(self, r: int, label: str, top: int) -> dict:
        """Generate + score + select for round ``r`` (or the eval pass); write kept images and the scores CSV.

        Under ``torchrun`` / ``accelerate launch`` each process generates and scores its share of the batches;
        the scores are gathered, every process makes the same selection, each saves the kept images it made, and
        process 0 writes the tables."""
        d = self.run_dir / label
        self._ensure_components()  # loading the base is not part of the generation time
        t0 = time.perf_counter()
        images, prompt_idx, cand_idx, seeds = self.generate(r)
        t1 = time.perf_counter()
        scores = self.score(images, prompt_idx)
        t2 = time.perf_counter()
        jobs = self._jobs(r)
        mine = [i for start in self._batches(len(jobs)) for i in range(start, min(start + self.cfg.gen_batch,
                                                                                   len(jobs)))]
        own = dict(zip(mine, images))                          # job index -> the image this process made
        if distributed.world_size() > 1:
            got = distributed.gather({i: [(s.values[k], compact_details(s.details[k] if s.details else {}))
                                          for s in scores] for k, i in enumerate(mine)})
            scores = [RewardScores(s.name, [got[i][n][0] for i in range(len(jobs))], s.higher_is_better,
                                   s.value_range, [got[i][n][1] for i in range(len(jobs))])
                      for n, s in enumerate(scores)]
            prompt_idx, cand_idx, seeds = [p for p, _, _ in jobs], [j for _, j, _ in jobs], [x for _, _, x in jobs]
        orders = select_per_prompt(scores, prompt_idx, top, self.weights, self.cfg.mode)
        kept = sorted(i for order in orders.values() for i in order[:top])
        files: dict[int, str] = {}
        for i in kept:
            rel = f"{label}/kept/p{prompt_idx[i]:04d}_c{cand_idx[i]:03d}.png"
            if i in own:
                _save_png(self.run_dir / rel, own[i])
            files[i] = rel
        if self.cfg.save_candidates:
            for i, im in own.items():
                _save_png(d / "candidates" / f"p{prompt_idx[i]:04d}_c{cand_idx[i]:03d}.png", im)
        if distributed.is_main():
            self._scores_csv(d / "scores.csv", prompt_idx, cand_idx, seeds, scores, orders, set(kept), files)
        distributed.barrier()                                  # every kept image is on disk for every process
        t3 = time.perf_counter()
        return {"means": self._means(scores), "kept_means": self._means(scores, kept),
                "kept": [{"file": files[i], "prompt": self.prompts[prompt_idx[i]], "prompt_index": prompt_idx[i],
                          "candidate": cand_idx[i], "seed": seeds[i]} for i in kept],
                "candidates": len(jobs),
                "seconds": {"generate": t1 - t0, "score": t2 - t1, "select": t3 - t2}}

    def _train_round(self, r: int, rec: dict) -> None:
        from .lora import NoiseMSE
        comps = self._ensure_components()
        if self.cfg.offload:
            _offload_scorers(self.scorers)
        self._sd_to_device()
        dataset = []
        for item in rec["kept"]:
            with Image.open(self.run_dir / item["file"]) as im:
                dataset.append((im.convert("RGB").copy(), item["prompt"]))
        tc = _replace(self.train_cfg, seed=int(self.train_cfg.seed) + r)
        t0 = time.perf_counter()  # (the training core may add its own set-up here: latents, optimizer)
        result = self.core.train_lora(comps, dataset, NoiseMSE(), self.lora_cfg, tc, self.run_dir / rec["label"] / "train",
                                      resume=True, progress=_SharedBar(self.progress) if self.progress else None)
        rec["seconds"]["train"] = time.perf_counter() - t0
        rec["loss"] = _final_loss(result)
        meta = {"rewardloop_trainer": "ranked", "round": str(r), "rewards": ",".join(self.names),
                "weights": ",".join(f"{w:g}" for w in self.weights), "mode": self.cfg.mode, "k": str(self.cfg.k),
                "top": str(self.cfg.top), "base": str(self.base_name)}
        rel = f"{rec['label']}/lora.safetensors"
        from safetensors.torch import save_file
        adapter = f"{rec['label']}/adapter.safetensors"
        adapter_sd = adapter_state(comps)
        check_finite(adapter_sd, f"the adapter of round {r}")
        if distributed.is_main():   # every process holds the same adapter (gradients are averaged)
            self.core.export_lora(comps, self.run_dir / rel, meta, overwrite=True)
            atomic_save(self.run_dir / adapter, lambda tmp: save_file(adapter_sd, tmp))
        distributed.barrier()
        rec["lora"], rec["adapter"] = rel, adapter
        rec["meta"] = meta

    def _eval_current(self) -> bool:
        ev = self.state.get("eval")
        return bool(ev) and ev.get("after_rounds") == len(self.done_rounds()) and len(self.done_rounds()) >= self.cfg.rounds

    # ---------------------------------------------------------------- main loop
    def run(self, final_lora_path: str | Path | None = None, overwrite: bool | None = None) -> RankedResult:
        """Do every round not done yet (and the eval pass); export the final LoRA to ``final_lora_path``.

        One process at a time per run folder; ``overwrite`` (default: the trainer's) also replaces an existing
        final LoRA."""
        overwrite = self.overwrite if overwrite is None else bool(overwrite)
        with torch.inference_mode(False), torch.enable_grad():  # callable from ComfyUI's inference mode
            with run_folder.claim(self.run_dir, main=distributed.is_main()) as claim:
                return self._run(final_lora_path, overwrite, claim)

    def _run(self, final_lora_path, overwrite: bool, claim) -> RankedResult:
        final = Path(final_lora_path) if final_lora_path is not None else None
        if final is not None and final.exists() and not overwrite and self.state.get("final_lora") != str(final):
            raise FileExistsError(f"{final} already exists: choose another output name or turn on overwrite.")
        if self.overwrite:
            if distributed.is_main():
                run_folder.wipe(self.run_dir, RUN_ENTRIES)
            distributed.barrier()
            self.overwrite = False          # once: a second run() of this trainer continues
        if self.state["rounds"]:
            claim.started()                 # resuming: whatever fails now, the finished rounds stay
        self._write_state()
        for r in range(self.cfg.rounds):
            rec = self._round_record(r)
            if rec is not None and rec["phase"] == "done":
                continue  # a finished round is never redone
            if rec is None:
                label = f"round_{r:03d}"
                log.info("round %d: generating %d x %d candidates", r, len(self.prompts), self.cfg.k)
                rec = {"round": r, "label": label, "phase": "selected", **self._sample_and_select(r, label, self.cfg.top)}
                self.state["rounds"].append(rec)
                self._write_state()
                claim.started()
            log.info("round %d: training on %d kept images", r, len(rec["kept"]))
            self._train_round(r, rec)
            rec["phase"] = "done"
            self._write_state()
            self._write_tables()
        if self.cfg.eval_final and not self._eval_current():
            ev = self._sample_and_select(0, "final", self.cfg.top)  # round 0's seeds: paired with round 0
            ev.update({"round": len(self.done_rounds()), "label": "final", "after_rounds": len(self.done_rounds())})
            self.state["eval"] = ev
            self._write_state()
        self._write_tables()
        lora_path = self.run_dir / self.done_rounds()[-1]["lora"]
        if final is not None:
            if self.state.get("final_lora") != str(final) or self.state.get("final_after") != len(self.done_rounds()) \
                    or not final.is_file():
                meta = dict(self.done_rounds()[-1].get("meta", {}))
                comps = self._ensure_components()
                if distributed.is_main():
                    self.core.export_lora(comps, final, meta,
                                          overwrite=overwrite or self.state.get("final_lora") == str(final))
                distributed.barrier()
                self.state["final_lora"], self.state["final_after"] = str(final), len(self.done_rounds())
                self._write_state()
            lora_path = final
        return self.result(lora_path)

    def _write_tables(self) -> None:
        done = self.done_rounds()
        if not distributed.is_main():
            return
        if not done:
            return
        ev = self.state.get("eval") if self._eval_current() else None
        header = ["round", "kind", "candidates", "kept"] + [f"mean_{n}" for n in self.names] + \
                 [f"kept_mean_{n}" for n in self.names] + ["train_loss", "generate_s", "score_s", "train_s"]
        rows = []
        for rec, kind in [(r, "train") for r in done] + ([(ev, "eval")] if ev else []):
            sec = rec.get("seconds", {})
            rows.append([rec["round"], kind, rec["candidates"], len(rec["kept"])]
                        + [rec["means"][n] for n in self.names] + [rec["kept_means"][n] for n in self.names]
                        + [rec.get("loss", ""), sec.get("generate", ""), sec.get("score", ""), sec.get("train", "")])
        atomic_write_text(self.run_dir / "rounds.csv", _csv_text(header, rows))
        img = plot_rounds(done, ev, self.names)
        _save_png(self.run_dir / "rounds.png", img)

    def result(self, lora_path: Path | None = None) -> RankedResult:
        done = self.done_rounds()
        ev = self.state.get("eval") if self._eval_current() else None
        last = ev or (done[-1] if done else None)
        kept = []
        if last is not None:
            for item in last["kept"]:
                with Image.open(self.run_dir / item["file"]) as im:
                    kept.append(im.convert("RGB").copy())
        return RankedResult(self.run_dir, lora_path, done, ev, self.run_dir / "rounds.csv",
                            self.run_dir / "rounds.png", kept)


class _SharedBar:
    """Lends the run's progress bar to the training core without letting it close the bar."""

    def __init__(self, bar):
        self._bar = bar

    def update(self, n: int = 1, postfix=None, preview=None):
        if postfix is None and preview is None:
            return self._bar.update(n)
        return self._bar.update(n, postfix=postfix, preview=preview)

    def close(self):
        pass


def _replace(cfg, **changes):
    import dataclasses
    return dataclasses.replace(cfg, **changes) if dataclasses.is_dataclass(cfg) else cfg


def _final_loss(result) -> float | None:
    """Mean training loss of the round (from the core's loss log), else a loss the result carries."""
    log_csv = getattr(result, "log_csv", None)
    if log_csv is not None and Path(log_csv).is_file():
        with open(log_csv, newline="") as f:
            losses = [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss") not in (None, "")]
        if losses:
            return sum(losses) / len(losses)
    metrics = getattr(result, "metrics", None) or {}
    for name in ("final_loss", "loss", "last_loss", "mean_loss"):
        v = getattr(result, name, metrics.get(name))
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def train_ranked(base, prompts: Sequence[str], scorers: Sequence[Any], run_dir, cfg: RankedConfig | None = None,
                 lora_cfg=None, train_cfg=None, resume: bool = True, progress: Callable | None = None,
                 final_lora_path=None, overwrite: bool = False, dtype=None, device=None) -> RankedResult:
    """Run (or resume) reward-ranked LoRA fine-tuning; see :class:`RankedTrainer`. ``overwrite`` starts the run
    afresh and replaces an existing final LoRA."""
    trainer = RankedTrainer(base, prompts, scorers, run_dir, cfg, lora_cfg, train_cfg, resume, progress, dtype, device,
                            overwrite=overwrite)
    return trainer.run(final_lora_path, overwrite)
