"""Captioning (the first half of FineRewards' caption reward).

``caption_images`` is the one captioning entry point of the pack (caption reward, crop labelling, CLI).
"""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from .. import bridge
from ..weights.loaders import ModelHandle


@torch.no_grad()
def caption_images(captioner: ModelHandle, images: Sequence[Image.Image], prompt: str | None = None,
                   max_new_tokens: int = 30, batch_size: int = 8, num_beams: int = 1) -> list[str]:
    """One caption per image, greedy by default, ``batch_size`` images per ``generate`` call.

    ``prompt`` (optional) conditions the captioner, e.g. "a detailed description of" for longer captions.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    model, proc = captioner.model, captioner.processor
    device = next(model.parameters()).device
    out: list[str] = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        kwargs = {"images": chunk, "return_tensors": "pt"}
        if prompt:
            kwargs["text"] = [prompt] * len(chunk)
        inputs = proc(**kwargs).to(device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(captioner.dtype)
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams)
        texts = proc.batch_decode(ids, skip_special_tokens=True)
        if prompt:
            texts = [t[len(prompt):].strip() if t.lower().startswith(prompt.lower()) else t.strip() for t in texts]
        out += [t.strip() for t in texts]
        bridge.check_interrupt()
    return out
