"""FineRewards' caption reward (global semantics): caption each image, compare the caption with the prompt.

    r_cap = cos( normalize(E_txt(prompt)), normalize(E_txt(caption)) )        in [-1, 1], higher is better

The paper captions with BLIP-2 OPT-2.7b (unconditional, greedy) and embeds both texts with the CLIP ViT-L/14
text tower carrying the HPS-v1 weights; any captioner / text-encoder pair from the loaders works here
(BLIP large and all-MiniLM-L6-v2 are the light defaults of :func:`make_scorer`).

An empty caption (a captioner that stops at once) is scored like any other text: the cosine between the
prompt and the embedding of the empty string (the encoder's special tokens only). It never raises.
"""
from __future__ import annotations

from typing import Sequence

from .. import bridge
from ..weights.loaders import ModelHandle, load_captioner
from . import similarity
from .caption import MODES, caption_images, caption_prompt
from .images import as_pil_list, broadcast_prompts
from .scoring import FunctionScorer
from .types import RewardScores

NAME = "caption"
SCORE_NAMES = [NAME]  # the scores this reward produces, in order
VALUE_RANGE = (-1.0, 1.0)
DEFAULT_MODELS = {"captioner": "blip-large", "text_encoder": "all-MiniLM-L6-v2"}
MODEL_ROLES = {"captioner": "blip", "text_encoder": "clip"}  # role -> model folder


def needed_models(models: dict[str, str] | None = None) -> tuple[dict[str, str], dict]:
    """The model each role loads (defaults filled in; keys meant for other rewards ignored), and no options."""
    return {**DEFAULT_MODELS, **{k: v for k, v in (models or {}).items() if k in MODEL_ROLES and v}}, {}


def scores_from_captions(text_encoder: ModelHandle, captions: Sequence[str], prompts: Sequence[str],
                         batch_size: int = 64) -> RewardScores:
    """The reward for given captions: cosine of the L2-normalised prompt and caption embeddings."""
    captions = [str(c) for c in captions]
    if len(captions) != len(prompts):
        raise ValueError(f"Got {len(captions)} captions for {len(prompts)} prompts.")
    if not captions:
        return RewardScores(NAME, [], True, VALUE_RANGE, [])
    emb = similarity.embed_texts(text_encoder, list(prompts) + captions, batch_size=batch_size)
    n = len(captions)
    values = similarity.paired_cosine(emb[:n], emb[n:]).clamp(-1.0, 1.0).tolist()
    return RewardScores(NAME, values, True, VALUE_RANGE, [{"caption": c} for c in captions])


def _on_device(handle: ModelHandle):
    bridge.to_device_for_use(handle.model, handle.device)


def caption(captioner: ModelHandle, images, mode: str = "short", max_new_tokens: int = 30, batch_size: int = 8,
            keep_loaded: bool = False) -> list[str]:
    """Caption an image batch (IMAGE tensor, PIL images or files) with ``mode`` "short" or "detailed".

    The captioner is moved to its device for the call and offloaded afterwards unless ``keep_loaded``.
    """
    pils = as_pil_list(images)
    if not pils:
        raise ValueError("No images to caption.")
    prompt = caption_prompt(captioner, mode)
    _on_device(captioner)
    try:
        return caption_images(captioner, pils, prompt=prompt, max_new_tokens=max_new_tokens, batch_size=batch_size)
    finally:
        bridge.offload(captioner.model, keep_loaded)


def caption_reward(captioner: ModelHandle, text_encoder: ModelHandle, images, prompts, mode: str = "short",
                   max_new_tokens: int = 30, batch_size: int = 8, keep_loaded: bool = False) -> RewardScores:
    """FineRewards' caption reward of an image batch.

    ``images``: an IMAGE tensor ``[B,H,W,C]`` (1, 3 or 4 channels), PIL images or files. ``prompts``: one
    prompt for all images, one per image (a list), or one per line (a string with exactly B lines).
    Returns ``RewardScores`` named "caption" (higher is better, range -1..1) with
    ``details[i] = {"caption": ...}``.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown caption mode {mode!r}: use 'short' (the paper's) or 'detailed'.")
    pils = as_pil_list(images)
    if not pils:
        raise ValueError("No images to score.")
    prompt_list = broadcast_prompts(prompts, len(pils))  # clear errors before any model runs
    captions = caption(captioner, pils, mode, max_new_tokens, batch_size, keep_loaded)
    _on_device(text_encoder)
    try:
        return scores_from_captions(text_encoder, captions, prompt_list)
    finally:
        bridge.offload(text_encoder.model, keep_loaded)


def scorer_from_handles(captioner: ModelHandle, text_encoder: ModelHandle, mode: str = "short",
                        max_new_tokens: int = 30, batch_size: int = 8, keep_loaded: bool = False) -> FunctionScorer:
    """A registry scorer (``scorer(images, prompts) -> [RewardScores]``) over loaded handles."""
    if mode not in MODES:
        raise ValueError(f"Unknown caption mode {mode!r}: use 'short' (the paper's) or 'detailed'.")

    def score(images, prompts):
        return [caption_reward(captioner, text_encoder, images, list(prompts) if not isinstance(prompts, str)
                               else prompts, mode=mode, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               keep_loaded=keep_loaded)]

    scorer = FunctionScorer([NAME], score)
    scorer.captioner, scorer.text_encoder = captioner, text_encoder
    return scorer


def make_scorer(models: dict[str, str] | None = None, device=None, dtype=None, mode: str = "short",
                max_new_tokens: int = 30, batch_size: int = 8, keep_loaded: bool = False,
                text_encoder_weights: str | None = None, **_ignored) -> FunctionScorer:
    """Scorer-registry factory. Roles: ``captioner`` (default blip-large), ``text_encoder`` (default
    all-MiniLM-L6-v2); other roles (meant for other rewards) are ignored. ``text_encoder_weights`` applies
    a CLIP state dict (e.g. HPS-v1 ``hpc.pt``) over a CLIP text encoder."""
    models, _ = needed_models(models)
    cap = load_captioner(models["captioner"], dtype=dtype, device=device)
    enc = similarity.load_text_encoder(models["text_encoder"], dtype=dtype, device=device,
                                       weights=text_encoder_weights)
    return scorer_from_handles(cap, enc, mode=mode, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               keep_loaded=keep_loaded)
