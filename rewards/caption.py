"""Captioning (the first half of FineRewards' caption reward).

``caption_images`` is the one captioning entry point of the pack (caption reward, crop labelling, CLI).

How a prompt reaches each model family, and how it is taken off the output again:

* ``blip`` (BLIP, e.g. BLIP large): the prompt is a caption *prefix*; BLIP's ``generate`` returns the prefix
  tokens (without the final [SEP]) followed by the continuation, so the first ``len(input_ids) - 1`` tokens
  are dropped.
* ``blip-2`` and other decoder-only models (LLaVA-like chat models, …): ``generate`` returns the whole
  input (image placeholder tokens + prompt) followed by the new tokens; the first ``len(input_ids)`` are
  dropped. Chat models (a processor with a chat template) get the prompt wrapped in their template with
  an image entry.
* encoder–decoder models (e.g. Florence-2): the output holds only new tokens; nothing is dropped. Florence-2
  is given its task tokens (``<CAPTION>`` / ``<MORE_DETAILED_CAPTION>``).

:func:`caption_prompt` gives the prompt for a caption ``mode``: ``"short"`` is FineRewards' setting
(unconditional BLIP/BLIP-2, greedy, library-default length); ``"detailed"`` prompts for a longer
description.
"""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from .. import bridge
from ..weights.loaders import ModelHandle

MODES = ("short", "detailed")

# Prompts per model family and mode (None = unconditional captioning).
_PROMPTS: dict[str, dict[str, str | None]] = {
    "blip": {"short": None, "detailed": "a detailed picture of"},
    "blip-2": {"short": None, "detailed": "Question: Describe this image in detail. Answer:"},
    "florence2": {"short": "<CAPTION>", "detailed": "<MORE_DETAILED_CAPTION>"},
    "chat": {"short": "Describe this image in one short sentence.",
             "detailed": "Describe this image in detail."},
    "other": {"short": None, "detailed": "a detailed description of"},
}


def model_family(captioner: ModelHandle) -> str:
    """``blip`` | ``blip-2`` | ``florence2`` | ``chat`` (processor with a chat template) | ``other``."""
    mt = (captioner.extra or {}).get("model_type") or getattr(getattr(captioner.model, "config", None),
                                                               "model_type", "")
    if mt in ("blip", "blip-2", "florence2"):
        return mt
    if getattr(captioner.processor, "chat_template", None):
        return "chat"
    return "other"


def caption_prompt(captioner: ModelHandle, mode: str = "short") -> str | None:
    """The prompt that :func:`caption_images` should get for ``mode`` ("short" or "detailed")."""
    if mode not in MODES:
        raise ValueError(f"Unknown caption mode {mode!r}: use 'short' (the paper's) or 'detailed'.")
    return _PROMPTS[model_family(captioner)][mode]


def _is_encoder_decoder(model) -> bool:
    cfg = getattr(model, "config", None)
    return bool(getattr(cfg, "is_encoder_decoder", False))


def _model_text(captioner: ModelHandle, family: str, prompt: str) -> str:
    if family == "chat":
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return captioner.processor.apply_chat_template(msgs, add_generation_prompt=True)
    return prompt


def _strip_prompt_tokens(ids: torch.Tensor, input_ids: torch.Tensor | None, family: str, model) -> torch.Tensor:
    """Drop the echoed prompt tokens from ``generate``'s output (see the module docstring)."""
    if input_ids is None:
        return ids
    n = input_ids.shape[1]
    if family == "blip":
        return ids[:, max(n - 1, 0):]
    if family == "florence2" or _is_encoder_decoder(model):
        return ids
    if ids.shape[1] >= n and torch.equal(ids[:, :n].cpu(), input_ids.cpu()):
        return ids[:, n:]
    return ids


@torch.no_grad()
def caption_images(captioner: ModelHandle, images: Sequence[Image.Image], prompt: str | None = None,
                   max_new_tokens: int = 30, batch_size: int = 8, num_beams: int = 1) -> list[str]:
    """One caption per image, greedy by default, ``batch_size`` images per ``generate`` call.

    ``prompt`` (optional) conditions the captioner, e.g. "a detailed description of" for longer captions
    (see :func:`caption_prompt`); it is removed from the returned captions. A caption may be the empty string
    (a model that stops at once). The model is used on the device it is on.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1.")
    model, proc = captioner.model, captioner.processor
    family = model_family(captioner)
    if family == "chat" and not prompt:
        prompt = _PROMPTS["chat"]["short"]
    text = _model_text(captioner, family, prompt) if prompt else None
    if text is None and family == "blip-2":
        text = ""  # BLIP-2's image tokens come from its processor with a text (transformers < 4.47 adds none)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out: list[str] = []
    with bridge.Progress(len(images), "captioning") as bar:
        for start in range(0, len(images), batch_size):
            chunk = list(images[start:start + batch_size])
            kwargs = {"images": chunk, "return_tensors": "pt"}
            if text is not None:
                kwargs["text"] = [text] * len(chunk)
                if family in ("chat", "other") and not _is_encoder_decoder(model):
                    kwargs["padding"] = True  # image token counts may differ per image: pad on the left
            tok = getattr(proc, "tokenizer", None)
            old_side = getattr(tok, "padding_side", None)
            if kwargs.get("padding") and tok is not None:
                tok.padding_side = "left"
            try:
                inputs = proc(**kwargs).to(device)
            finally:
                if tok is not None and old_side is not None:
                    tok.padding_side = old_side
            if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
                inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            inputs.pop("token_type_ids", None)  # some processors return it (transformers 4.x); generate refuses it
            input_ids = inputs["input_ids"].clone() if "input_ids" in inputs else None  # BLIP edits it in place
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams)
            ids = _strip_prompt_tokens(ids, input_ids, family, model)
            texts = proc.batch_decode(ids, skip_special_tokens=True)
            if prompt:  # a tokenizer round trip that differs from the ids check: strip the text as well
                texts = [t.strip()[len(prompt):] if t.strip().lower().startswith(prompt.lower()) else t for t in texts]
            out += [" ".join(t.split()) for t in texts]
            bar.update(len(chunk))  # also checks for an interrupt
    return out
