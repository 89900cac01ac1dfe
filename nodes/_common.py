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
    """Combo values for a loader: catalogue keys of ``kinds`` plus whatever lies in the ComfyUI folder."""
    from ..bridge import list_folder
    from ..weights.catalogue import CATALOGUE
    keys = [s.key for s in CATALOGUE if s.kind in kinds and s.source != "tiny"]
    names = [n for n in list_folder(folder) if n not in {s.name for s in CATALOGUE if s.kind in kinds}]
    tiny = [s.key for s in CATALOGUE if s.kind in kinds and s.source == "tiny"]
    return keys + names + (extra or []) + tiny


# ---------------------------------------------------------------- input checks shared by every node
def _display_name(node) -> str:
    from . import NODE_DISPLAY_NAME_MAPPINGS
    cls = type(node).__name__
    return NODE_DISPLAY_NAME_MAPPINGS.get(cls, cls)


def check_widgets(node, values: dict) -> None:
    """Refuse widget values outside what the node declares (number type, min/max): the editor enforces them, but
    API calls, scripts and older front ends may not, and an out-of-range value can mean gigabytes or a crash."""
    import math

    from ..errors import UserError
    spec = type(node).INPUT_TYPES()
    for section in ("required", "optional"):
        for name, entry in (spec.get(section) or {}).items():
            v = values.get(name)
            if v is None or not isinstance(entry, (list, tuple)) or entry[0] not in ("INT", "FLOAT"):
                continue
            opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            where = f"{_display_name(node)}: {name}"
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (entry[0] == "INT" and v != int(v)):
                raise UserError(f"{where} must be {'a whole number' if entry[0] == 'INT' else 'a number'}, "
                                f"got {v!r}.")
            if not math.isfinite(v):
                raise UserError(f"{where} must be a finite number, got {v}.")
            lo, hi = opts.get("min"), opts.get("max")
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                rng = (f"{lo}..{hi}" if lo is not None and hi is not None
                       else f"≥ {lo}" if lo is not None else f"≤ {hi}")
                raise UserError(f"{where} = {v} is out of range: set it to {rng}.")


def validated(fn):
    """Decorate a node's FUNCTION so its widget values are checked (:func:`check_widgets`) before any work."""
    import functools
    import inspect
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        check_widgets(self, {k: v for k, v in bound.arguments.items() if k != "self"})
        return fn(self, *args, **kwargs)

    return wrapper


def image_hw(images) -> tuple[int, int]:
    """Check an IMAGE (non-empty, finite, [B,H,W,C]) and return its (H, W)."""
    from ..rewards.images import _check_image
    t = _check_image(images)
    return int(t.shape[1]), int(t.shape[2])


def check_map_fits(what: str, maps, images, allow_one: bool = True) -> None:
    """A MASK / heatmap batch meant for an IMAGE batch: count 1 (when ``allow_one``) or B, and the same aspect ratio
    (a map at another resolution is resized; another shape means it belongs to other images)."""
    from ..errors import UserError
    from ..rewards.images import _check_image
    img = _check_image(images)
    b, h, w = int(img.shape[0]), int(img.shape[1]), int(img.shape[2])
    n, mh, mw = int(maps.shape[0]), int(maps.shape[-2]), int(maps.shape[-1])
    if n != b and not (allow_one and n == 1):
        hint = f"one {what} for all images, or one per image" if allow_one else f"one {what} per image"
        raise UserError(f"{n} {what}s for {b} images: connect {hint} (the same batch).")
    if abs(mh * w - mw * h) > 0.02 * max(mh * w, mw * h):
        raise UserError(f"The {what} is {mw}×{mh} but the image is {w}×{h}: connect the {what} made for these "
                        "images (or make it at the image size).")
