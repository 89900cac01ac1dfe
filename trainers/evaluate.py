"""Evaluate a personalized LoRA with the DreamBooth protocol: generate DreamBench prompts, score DINO/CLIP-I/CLIP-T.

Two phases, so that bad input costs nothing:

1. :func:`plan_evaluation` checks every input without loading a model (references readable, class valid, LoRA
   file a kohya LoRA, base / DINO / CLIP names resolvable, output folder free) and fixes the prompts and seeds;
2. :func:`run_evaluation` loads the base, merges the LoRA, generates ``samples`` images per prompt (sample ``j`` of
   every prompt uses seed ``seed + j``: the same starting noise for every prompt and for every LoRA compared on the
   same seed) and scores them against the references.

Defaults a RewardLoop LoRA carries in its metadata are used when not given: the identifier (``trigger``), the base
(``ss_sd_model_name``) and the resolution.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..rewards.dreambench import EvalPrompt, build_prompts, check_identifier, resolve_class, subject_kind
from ..rewards.images import open_image, to_rgb
from ..rewards.personalization import DEFAULT_CLIP, DEFAULT_DINO, PersonalizationScorer, PersonalizationScores

LORA_SUFFIXES = (".safetensors",)


@dataclass
class EvalPlan:
    """Validated inputs (nothing loaded yet)."""

    base: Path
    lora: Path | None
    references: list[Image.Image]
    reference_files: list[str]
    class_noun: str
    kind: str
    identifier: str
    prompts: list[EvalPrompt]
    samples: int
    seed: int
    steps: int
    cfg: float
    resolution: int | None
    lora_scale: float
    negative: str
    dino: str
    clip: str
    out: Path | None = None
    overwrite: bool = False
    lora_metadata: dict = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return [self.seed + j for _ in self.prompts for j in range(self.samples)]

    @property
    def generation_prompts(self) -> list[str]:
        return [p.prompt for p in self.prompts for _ in range(self.samples)]

    @property
    def clip_texts(self) -> list[str]:
        return [p.clip_text for p in self.prompts for _ in range(self.samples)]

    @property
    def group(self) -> list[int]:
        return [p.index for p in self.prompts for _ in range(self.samples)]

    def settings(self) -> dict:
        return {"base": str(self.base), "lora": str(self.lora) if self.lora else "(none: the base model)",
                "lora_scale": self.lora_scale, "class": self.class_noun, "kind": self.kind,
                "identifier": self.identifier, "prompts": len(self.prompts), "samples_per_prompt": self.samples,
                "seeds": f"{self.seed}..{self.seed + self.samples - 1} per prompt", "steps": self.steps,
                "cfg": self.cfg, "resolution": self.resolution or "(the model's)", "negative": self.negative,
                "references": len(self.references), "dino_model": self.dino, "clip_model": self.clip}


@dataclass
class EvalResult:
    plan: EvalPlan
    scores: PersonalizationScores
    images: list[Image.Image]
    report: dict | None = None


def read_lora_header(path: Path) -> dict:
    """The LoRA's metadata, after checking that it is a readable kohya LoRA (keys ``*.lora_down.weight``)."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
            meta = dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - any parse failure is the same user error
        raise ValueError(f"LoRA {path} cannot be read as safetensors ({type(e).__name__}: {e}).") from None
    if not any(k.endswith(".lora_down.weight") for k in keys):
        raise ValueError(f"{path} is not a kohya-style LoRA (no '*.lora_down.weight' tensors): give the file that "
                         "train-dpg / the Personalize node wrote.")
    return meta


def resolve_lora(name: str | os.PathLike) -> Path:
    from ..weights.registry import ModelNotFoundError, resolve
    text = str(name).strip()
    p = Path(text).expanduser()
    if not p.exists():
        for cand in (text, text + ".safetensors"):
            try:
                p = resolve(cand, folder="loras").path
                break
            except ModelNotFoundError:
                continue
        else:
            raise FileNotFoundError(f"LoRA {text!r} not found: give a .safetensors file or a name in models/loras.")
    if not p.is_file() or p.suffix.lower() not in LORA_SUFFIXES:
        raise ValueError(f"LoRA {p} must be a .safetensors file.")
    return p


def read_references(refs: Sequence) -> tuple[list[Image.Image], list[str]]:
    """Open every reference (paths or PIL images) now, so an unreadable file fails before any model loads."""
    if not refs:
        raise ValueError("No reference images: give the folder of subject photos the LoRA was trained on.")
    images, names = [], []
    for r in refs:
        if isinstance(r, Image.Image):
            images.append(to_rgb(r))
            names.append(f"image {len(names)}")
            continue
        p = Path(r)
        images.append(open_image(p))  # the shared checks: missing, not an image, truncated, decompression bomb
        names.append(str(p))
    return images, names


def plan_evaluation(lora, references: Sequence, class_noun: str, base: str | None = None,
                    identifier: str | None = None, samples: int = 4, seed: int = 0, steps: int = 50,
                    cfg: float = 7.5, resolution: int | None = None, lora_scale: float = 1.0, kind: str = "auto",
                    limit: int = 0, clip_text: str = "class", negative: str = "", dino: str = DEFAULT_DINO,
                    clip: str = DEFAULT_CLIP, out: str | os.PathLike | None = None,
                    overwrite: bool = False) -> EvalPlan:
    """Check everything and fix prompts/seeds; loads no model. ``lora=None`` evaluates the base model itself."""
    from ..fileio import check_output_folder
    from ..weights.registry import resolve
    from .base_model import _resolve_base  # resolves names and paths without loading
    if out is not None:
        check_output_folder(out, overwrite)
    cls = resolve_class(class_noun)
    kind = subject_kind(cls, kind)
    if int(samples) < 1:
        raise ValueError(f"samples must be >= 1 (got {samples}).")
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1 (got {steps}).")
    if resolution is not None and (int(resolution) < 8 or int(resolution) % 8):
        raise ValueError(f"resolution must be a multiple of 8 (got {resolution}).")
    lora_path, meta = None, {}
    if lora is not None and str(lora).strip().lower() not in ("", "none"):
        lora_path = resolve_lora(lora)
        meta = read_lora_header(lora_path)
    ident = check_identifier(identifier or meta.get("trigger") or meta.get("modelspec.trigger_phrase") or "sks")
    prompts = build_prompts(cls, ident, kind, limit, clip_text)
    base = base or meta.get("ss_sd_model_name")
    if not base:
        raise ValueError("No base model: give --base (the checkpoint the LoRA was trained on); this LoRA's metadata "
                         "does not name it.")
    base_path = _resolve_base(str(base))
    resolve(dino, folder="dino")
    resolve(clip, folder="clip")
    if resolution is None and str(meta.get("resolution", "")).isdigit():
        resolution = int(meta["resolution"])
    images, names = read_references(references)
    return EvalPlan(base_path, lora_path, images, names, cls, kind, ident, prompts, int(samples), int(seed),
                    int(steps), float(cfg), int(resolution) if resolution else None, float(lora_scale), negative,
                    str(dino), str(clip), Path(out) if out is not None else None, overwrite, meta)


def generate_images(plan: EvalPlan, device=None, dtype=None, progress: bool = True) -> list[Image.Image]:
    """Load the base, merge the LoRA (strength ``lora_scale``), generate every prompt × sample on fixed seeds."""
    from .. import bridge
    from .lora import generate, load_base, load_lora_into
    comps = load_base(plan.base, dtype=dtype, device=device)
    if plan.lora is not None:
        load_lora_into(comps, plan.lora, scale=plan.lora_scale)
    prompts, seeds = plan.generation_prompts, plan.seeds
    out: list[Image.Image] = []
    bar = bridge.Progress(len(prompts), "generating") if progress else None
    try:
        for p, s in zip(prompts, seeds):
            bridge.check_interrupt()
            out += generate(comps, [p], [s], steps=plan.steps, cfg=plan.cfg, width=plan.resolution,
                            height=plan.resolution, negative=plan.negative)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        del comps
        bridge.soft_empty_cache()
    return out


def run_evaluation(plan: EvalPlan, device=None, dtype=None, batch_size: int = 16, progress: bool = True,
                   write: bool = True) -> EvalResult:
    """Generate, score and (when the plan has an ``out`` folder and ``write``) write the report."""
    images = generate_images(plan, device=device, dtype=dtype, progress=progress)
    scorer = PersonalizationScorer(plan.dino, plan.clip, device=device, dtype=dtype, batch_size=batch_size)
    scores = scorer.score(images, plan.references, plan.clip_texts, plan.generation_prompts, plan.group)
    result = EvalResult(plan, scores, images)
    if write and plan.out is not None:
        from ..rewards.personalization_report import write_report
        result.report = write_report(plan.out, scores, images, plan.references, plan.seeds, plan.settings(),
                                     overwrite=plan.overwrite)
    return result


def plan_dict(plan: EvalPlan) -> dict:
    """A JSON-friendly view of the plan (prompts included), e.g. for --dry-run."""
    d = plan.settings()
    d["prompts"] = [asdict(p) for p in plan.prompts]
    return d
