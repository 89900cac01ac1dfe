"""What the trusted preference rewards share: image pre-processing, CLIP features, batching, options.

The five rewards people already use to pick the best of N (PickScore, HPS v2.1, ImageReward, the LAION aesthetic
predictor and CLIPScore) are single-number, higher-is-better scores of (image, prompt) pairs. Each lives in its own
module (``pickscore``, ``hps``, ``image_reward``, ``aesthetic``, ``clip_score``) and is a
:class:`PreferenceScorer`: it scores a whole batch in chunks of ``batch_size`` images, encodes each distinct prompt
once per call, moves its models to their device for the call and gives the memory back afterwards unless
``keep_loaded``. Batched and one-image-at-a-time calls give the same numbers (tested).

Pre-processing follows each reward's reference implementation:

* :func:`center_crop_pixels` — OpenAI CLIP's and BLIP's eval transform (ImageReward): resize the short side to
  ``size`` with bicubic resampling on the PIL image, centre-crop a square, scale to 0..1, normalise;
* :func:`pad_square_pixels` — HPS v2's eval transform: to a 0..1 tensor, resize the *long* side to ``size``
  (bicubic, antialiased), pad to a square with zeros (centred), normalise;
* HF CLIP folders (PickScore, CLIPScore, the aesthetic predictor's CLIP) use the image processor saved with them.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from .. import bridge
from .images import as_pil_list, broadcast_prompts, to_rgb
from .types import RewardScores

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------- image pre-processing
def _to_unit_tensor(im: Image.Image) -> torch.Tensor:
    """PIL → float ``[3,H,W]`` in 0..1 (torchvision's ``ToTensor``)."""
    return torch.from_numpy(np.asarray(to_rgb(im), dtype=np.float32) / 255.0).permute(2, 0, 1)


def _normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype)[:, None, None]
    s = torch.tensor(std, dtype=x.dtype)[:, None, None]
    return (x - m) / s


def center_crop_pixels(images: Sequence[Image.Image], size: int, mean=OPENAI_CLIP_MEAN,
                       std=OPENAI_CLIP_STD) -> torch.Tensor:
    """``[B,3,size,size]``: short side → ``size`` (PIL bicubic), centre crop, normalise."""
    out = []
    for im in images:
        im = to_rgb(im)
        w, h = im.size
        if (w <= h and w != size) or (h < w and h != size):
            nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
            im = im.resize((nw, nh), Image.BICUBIC)
            w, h = nw, nh
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        im = im.crop((left, top, left + size, top + size))
        out.append(_normalize(_to_unit_tensor(im), mean, std))
    return torch.stack(out)


def pad_square_pixels(images: Sequence[Image.Image], size: int, mean=OPENAI_CLIP_MEAN,
                      std=OPENAI_CLIP_STD) -> torch.Tensor:
    """``[B,3,size,size]``: long side → ``size`` (bicubic, antialiased, on the 0..1 tensor), zero-pad to a square
    (the extra column/row goes right/bottom), normalise."""
    out = []
    for im in images:
        x = _to_unit_tensor(im)
        h, w = x.shape[1:]
        scale = size / float(max(h, w))
        if scale != 1.0:
            nh, nw = round(h * scale), round(w * scale)
            x = torch.nn.functional.interpolate(x[None], size=(nh, nw), mode="bicubic", align_corners=False,
                                                antialias=True)[0]
            h, w = nh, nw
        ph, pw = size - h, size - w
        x = torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)
        out.append(_normalize(x, mean, std))
    return torch.stack(out)


# ---------------------------------------------------------------- CLIP features
def _as_tensor(out) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output with ``pooler_output`` (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


def clip_image_embeds(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """L2-normalised projected image embeddings (float32) of a CLIPModel."""
    device, dtype = model_device_dtype(model)
    return unit(_as_tensor(model.get_image_features(pixel_values=pixel_values.to(device, dtype))))


def clip_text_embeds(model, tokenizer, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """L2-normalised projected text embeddings (float32) of a CLIPModel, truncated at its context length."""
    device, _ = model_device_dtype(model)
    limit = int(model.config.text_config.max_position_embeddings)
    if getattr(tokenizer, "model_max_length", None) and tokenizer.model_max_length < limit:
        limit = int(tokenizer.model_max_length)
    parts = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=limit,
                        return_tensors="pt")
        parts.append(unit(_as_tensor(model.get_text_features(input_ids=enc["input_ids"].to(device),
                                                             attention_mask=enc["attention_mask"].to(device)))))
    return torch.cat(parts)


def clip_processor_pixels(processor, images: Sequence[Image.Image]) -> torch.Tensor:
    """Pixels from the image processor saved with an HF CLIP folder (resize, crop, normalise as it says)."""
    proc = getattr(processor, "image_processor", processor)
    return proc(images=list(images), return_tensors="pt")["pixel_values"]


def tokenizer_of(processor):
    return getattr(processor, "tokenizer", processor)


# ---------------------------------------------------------------- the batched scorer
class PreferenceScorer:
    """``scorer(images, prompts) -> [RewardScores]`` for a single-number reward, batched.

    Subclasses set ``name``, ``value_range`` and implement :meth:`score_batch` (and :meth:`prepare` for work done
    once per call, e.g. encoding the distinct prompts). ``handles`` are the :class:`ModelHandle` objects whose
    models are moved to their device for a call and offloaded afterwards unless ``keep_loaded``.
    """

    name = "reward"
    value_range: tuple[float, float] | None = None
    needs_prompt = True

    def __init__(self, handles: Sequence[Any], batch_size: int = 16, keep_loaded: bool = False):
        if int(batch_size) < 1:
            raise ValueError(f"{self.name}: batch_size must be at least 1, got {batch_size}.")
        self.handles = [h for h in handles if h is not None]
        self.batch_size = int(batch_size)
        self.keep_loaded = bool(keep_loaded)
        self.names = [self.name]

    def prepare(self, prompts: list[str]) -> Any:
        return None

    def score_batch(self, images: list[Image.Image], prompts: list[str], prepared: Any) -> torch.Tensor:
        raise NotImplementedError

    def _prompts(self, prompts, n: int) -> list[str]:
        if self.needs_prompt:
            return broadcast_prompts(prompts, n)
        if prompts is None or isinstance(prompts, str):
            return [prompts or ""] * n
        prompts = [str(p) for p in prompts]
        return prompts * n if len(prompts) == 1 else (prompts if len(prompts) == n else [""] * n)

    def __call__(self, images, prompts=None) -> list[RewardScores]:
        pils = as_pil_list(images)
        if not pils:
            raise ValueError(f"{self.name}: no images to score.")
        prompts = self._prompts(prompts, len(pils))
        models = [h.model for h in self.handles if isinstance(getattr(h, "model", None), torch.nn.Module)]
        for h in self.handles:
            if isinstance(getattr(h, "model", None), torch.nn.Module):
                bridge.to_device_for_use(h.model, h.device)
        values: list[float] = []
        try:
            with torch.inference_mode(), bridge.Progress(len(pils), self.name) as bar:
                prepared = self.prepare(prompts)
                for i in range(0, len(pils), self.batch_size):
                    chunk = pils[i:i + self.batch_size]
                    v = self.score_batch(chunk, prompts[i:i + self.batch_size], prepared)
                    values += [float(x) for x in v.detach().float().cpu().reshape(-1)]
                    bar.update(len(chunk))
        finally:
            for m in models:
                bridge.offload(m, self.keep_loaded)
        if any(not math.isfinite(v) for v in values):
            raise ValueError(f"{self.name}: the model returned NaN/inf scores (fp16 overflow? try dtype fp32 or bf16).")
        details = [{"prompt": p} if self.needs_prompt else {} for p in prompts]
        return [RewardScores(self.name, values, True, self.value_range, details)]

    def __repr__(self) -> str:
        models = ", ".join(str(getattr(h, "name", h)) for h in self.handles)
        return f"<scorer {self.name} ({models})>"


def encode_distinct(prompts: list[str], encode) -> dict[str, torch.Tensor]:
    """``{prompt: embedding}`` with each distinct prompt encoded once (``encode(list) -> [N, D]``)."""
    distinct = list(dict.fromkeys(prompts))
    emb = encode(distinct)
    return {p: emb[i] for i, p in enumerate(distinct)}


# ---------------------------------------------------------------- roles and options (the registry's preflight)
def _to_bool(v) -> bool:
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"Expected true/false, got {v!r}.")


COMMON_OPTIONS = {"batch_size": int, "keep_loaded": _to_bool}
_KINDS = {int: "a whole number", float: "a number", str: "text", _to_bool: "true or false"}


def needed(reward: str, models: dict | None, defaults: dict[str, str], option_types: dict,
           roles=None) -> tuple[dict, dict]:
    """A reward's ``needed_models``: the model each role loads (``defaults`` filled in; ``roles`` may add optional
    ones without a default) and the typed options passed in
    ``models`` (the CLI's ``--model batch_size=8``), checked without loading anything (unknown roles, option values
    of the wrong type, a batch size below 1 are one :class:`~rewardloop.errors.UserError`)."""
    from ..errors import UserError
    models, options = dict(models or {}), {}
    for key in list(models):
        if key in option_types:
            raw = models.pop(key)
            try:
                options[key] = option_types[key](raw)
            except (TypeError, ValueError):
                raise UserError(f"{reward} option {key}={raw!r}: expected {_KINDS.get(option_types[key], 'a value')}."
                                ) from None
    roles = set(roles or defaults)
    unknown = sorted(set(models) - roles)
    if unknown:
        raise UserError(f"{reward} has no model role {unknown}: its roles are {', '.join(sorted(roles))} "
                        f"(options: {', '.join(sorted(option_types))}).")
    if options.get("batch_size", 1) < 1:
        raise UserError(f"{reward} option batch_size must be at least 1.")
    return {**defaults, **{k: v for k, v in models.items() if v not in (None, "")}}, options
