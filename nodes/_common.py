"""Shared bits for node classes: socket type names, the menu root, and small input helpers."""
from __future__ import annotations

CATEGORY = "RewardLoop"

# Custom socket types (prefixed, public API: never rename).
SCORES = "REWARDLOOP_SCORES"
SEGMENTS = "REWARDLOOP_SEGMENTS"
CAPTIONER = "REWARDLOOP_CAPTIONER"
TEXT_ENCODER = "REWARDLOOP_TEXT_ENCODER"
CLIP_MODEL = "REWARDLOOP_CLIP"
SAM_MODEL = "REWARDLOOP_SAM"
LLM_MODEL = "REWARDLOOP_LLM"
RICH_FEEDBACK_MODEL = "REWARDLOOP_RICH_FEEDBACK"
SCORER = "REWARDLOOP_SCORER"  # a callable reward (rewards.scoring.Scorer) for ranking / auto-fix / training
DINO_MODEL = "REWARDLOOP_DINO"

DTYPES = ["auto", "fp32", "fp16", "bf16"]
DEVICES = ["auto", "cpu", "cuda"]


def device_arg(device: str):
    """Node widget value → torch device or None (= ComfyUI's / the bridge's choice)."""
    return None if device in (None, "", "auto") else device


def model_choices(folder: str, kinds: tuple[str, ...], extra: list[str] | None = None) -> list[str]:
    """Combo values for a loader: catalogue keys of ``kinds`` plus whatever else lies in the ComfyUI folder (files
    and folders the catalogue knows as another kind, e.g. a tokenizer next to CLIP models, are left out)."""
    from ..bridge import list_folder
    from ..weights.catalogue import CATALOGUE
    keys = [s.key for s in CATALOGUE if s.kind in kinds and s.source != "tiny"]
    names = [n for n in list_folder(folder) if n not in {s.name for s in CATALOGUE if s.folder == folder}]
    tiny = [s.key for s in CATALOGUE if s.kind in kinds and s.source == "tiny"]
    return keys + names + (extra or []) + tiny
