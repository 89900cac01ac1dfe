"""Auto-fix: inpaint the flagged region K times, re-score, keep the best (RAHF paper B.6).

A :class:`Sampler` makes K inpainted candidates of one image. Two implementations:

- :class:`DiffusersInpaintSampler` — any diffusers Stable Diffusion pipeline (``weights.loaders.load_sd_pipeline``;
  ``tiny-sd`` works), run as ``StableDiffusionInpaintPipeline.from_pipe(pipe)``: with an ordinary 4-channel UNet
  diffusers re-noises the original latents outside the mask at every step (latent noise-mask blending).
- :class:`ComfySampler` — used by the ComfyUI node: VAE-encode, ``latent["noise_mask"]``, ComfyUI's own
  ``comfy.sample.sample`` (the call ``KSampler`` makes), VAE-decode. ComfyUI is imported inside the method only.

:func:`auto_fix` always blends every candidate back into the original with the *feathered* mask, so pixels
where the mask is exactly 0 are the original's, bit for bit, whatever the sampler returns. An empty mask skips
the image (the original is returned); a candidate replaces the original only when its score beats the
original's by more than ``margin``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import torch

from .images import image_to_pil, mask_to_batch, resize_map
from .types import RewardScores

PREFERRED_SCORES = ("plausibility", "rich_plausibility", "rahf_plausibility")


class Sampler(Protocol):
    """``sampler(image [1,H,W,C] 0..1, mask [1,H,W] 0..1 (1 = repaint), k, seed) -> [K,H,W,3] 0..1``.

    The result must be deterministic for a given ``seed`` (the diffusers sampler seeds candidate ``i`` with
    ``seed + i``; ComfyUI's sampler draws the batch noise from ``seed`` like ``KSampler``).
    """

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, k: int, seed: int) -> torch.Tensor: ...


@dataclass
class AutoFixResult:
    images: torch.Tensor                  # [B,H,W,C] best per image (the original where nothing won)
    candidates: torch.Tensor              # [sum_b K_b, H,W,C] blended candidates (the original for skipped images)
    mask: torch.Tensor                    # [B,H,W] the feathered mask used
    chosen: list[int] = field(default_factory=list)        # per image: candidate index, -1 = original kept
    scores: list[list[float]] = field(default_factory=list)  # per image: [original, cand_0, ...] ([] if skipped)
    skipped: list[bool] = field(default_factory=list)
    score_name: str = ""
    higher_is_better: bool = True

    def summary(self) -> str:
        lines = [f"auto-fix re-scored by {self.score_name or '-'} ({'↑' if self.higher_is_better else '↓'})"]
        for b, (c, s, sk) in enumerate(zip(self.chosen, self.scores, self.skipped)):
            if sk:
                lines.append(f"image {b}: mask empty, skipped (original kept)")
                continue
            cands = ", ".join(f"{v:.4f}" for v in s[1:])
            what = "original kept (no candidate beat it)" if c < 0 else f"candidate {c} chosen"
            lines.append(f"image {b}: original {s[0]:.4f}; candidates {cands}; {what}")
        return "\n".join(lines)


def blend(original: torch.Tensor, candidates: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``original`` [1|K,H,W,C], ``candidates`` [K,H,W,C], ``mask`` [H,W] (0..1) → blended [K,H,W,C].

    Where ``mask == 0`` the result *is* the original (bit for bit); elsewhere ``orig·(1-m) + cand·m``.
    """
    c = original.shape[-1]
    cand = candidates[..., :c].to(original.dtype)
    if cand.shape[-1] < c:  # e.g. RGBA original: keep its alpha
        cand = torch.cat([cand, original[..., cand.shape[-1]:].expand(cand.shape[0], -1, -1, -1)], -1)
    m = mask.to(original.dtype)[None, :, :, None]
    mixed = original * (1 - m) + cand * m
    return torch.where(m > 0, mixed, original.expand_as(mixed))


def pick_score(scores: list[RewardScores], name: str | None = None) -> RewardScores:
    if not scores:
        raise ValueError("The re-scoring reward returned no scores.")
    if name:
        for s in scores:
            if s.name == name:
                return s
        raise ValueError(f"The re-scoring reward has no score named {name!r}; it gives "
                         f"{', '.join(s.name for s in scores)}.")
    for pref in PREFERRED_SCORES:
        for s in scores:
            if s.name == pref:
                return s
    for s in scores:  # e.g. "rahf.plausibility", but never an implausibility map's score
        low = s.name.lower()
        if "plausib" in low and "implausib" not in low:
            return s
    return scores[0]


def default_scorer(**options):
    """RAHF plausibility (the paper's re-scorer), when the rich-feedback reward and its weights are available."""
    from .scoring import make_scorer
    try:
        return make_scorer("rich", **options)
    except ImportError as e:
        raise RuntimeError("Auto-fix re-scores with the rich-feedback (RAHF) reward by default, but it is not "
                           f"available ({e}): connect another scorer, or pass one (e.g. make_scorer('caption')).") \
            from e


def auto_fix(image: torch.Tensor, mask: torch.Tensor, sampler: Sampler, scorer=None, k: int = 4, seed: int = 0,
             prompt: str | Sequence[str] = "", score_name: str | None = None, margin: float = 0.0,
             progress=None) -> AutoFixResult:
    """Inpaint each image's masked region ``k`` times, re-score, keep the best (or the original).

    ``image``: IMAGE ``[B,H,W,C]``; ``mask``: ``[B,H,W]`` or one ``[H,W]`` for all (resized to the image);
    ``scorer``: a rewards.scoring scorer (default: RAHF plausibility); ``score_name``: which of its scores decides
    (default: plausibility when present, else its first); ``prompt``: one prompt or one per image, for the
    scorer. Candidate ``i`` of image ``b`` uses seed ``seed + b·k + i``.
    """
    if k < 1:
        raise ValueError(f"K must be ≥ 1 candidates, got {k}.")
    img = image if image.ndim == 4 else image.unsqueeze(0)
    b, h, w, _ = img.shape
    masks = resize_map(mask_to_batch(mask).cpu(), (h, w)).clamp(0, 1)
    if masks.shape[0] not in (1, b):
        raise ValueError(f"{masks.shape[0]} masks for {b} images: give one mask, or one per image.")
    if masks.shape[0] == 1 and b > 1:
        masks = masks.expand(b, -1, -1)
    prompts = [prompt] * b if isinstance(prompt, str) else [str(p) for p in prompt]
    if len(prompts) != b:
        raise ValueError(f"{len(prompts)} prompts for {b} images: give one prompt, or one per image.")
    res = AutoFixResult(img.clone(), img[:0].clone(), masks.clone())
    cand_all = []
    for i in range(b):
        orig = img[i:i + 1]
        m = masks[i]
        if float(m.max()) <= 0:
            res.chosen.append(-1)
            res.scores.append([])
            res.skipped.append(True)
            cand_all.append(orig.clone())
            if progress is not None:
                progress.update(1)
            continue
        if scorer is None:
            scorer = default_scorer()
        raw = sampler(orig, m[None], k, seed + i * k)
        if raw.ndim != 4 or raw.shape[0] != k or tuple(raw.shape[1:3]) != (h, w):
            raise RuntimeError(f"The sampler returned shape {tuple(raw.shape)}; expected [{k},{h},{w},3].")
        cands = blend(orig, raw.to(orig.device).float(), m.to(orig.device))
        cand_all.append(cands)
        pils = image_to_pil(torch.cat([orig, cands]))
        picked = pick_score(scorer(pils, [prompts[i]] * len(pils)), score_name)
        if len(picked) != k + 1:
            raise RuntimeError(f"The scorer returned {len(picked)} values for {k + 1} images.")
        if picked.has_nan():
            raise ValueError(f"Score {picked.name!r} is NaN for some candidates; cannot choose.")
        res.score_name, res.higher_is_better = picked.name, picked.higher_is_better
        o = np.array(picked.oriented())
        best = int(np.argmax(o[1:]))  # first maximum: lowest index wins ties
        chosen = best if o[1 + best] > o[0] + margin else -1
        res.chosen.append(chosen)
        res.scores.append(list(picked.values))
        res.skipped.append(False)
        if chosen >= 0:
            res.images[i] = cands[chosen]
        if progress is not None:
            progress.update(1)
    res.candidates = torch.cat(cand_all)
    return res


def _crop8(h: int, w: int, m: int = 8) -> tuple[int, int]:
    h8, w8 = h - h % m, w - w % m
    if h8 < m or w8 < m:
        raise ValueError(f"The image is {w}×{h}; inpainting needs at least {m}×{m} pixels.")
    return h8, w8


def _paste(original: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Put [K,h8,w8,3] results into a copy of the original's full size (the cropped border stays original)."""
    k = out.shape[0]
    full = original[..., :3].expand(k, -1, -1, -1).clone()
    full[:, :out.shape[1], :out.shape[2]] = out.to(full.dtype)
    return full


class DiffusersInpaintSampler:
    """Inpaint with a diffusers SD pipeline (a ``weights.loaders`` handle, a pipeline, or a model key/path)."""

    def __init__(self, pipeline, prompt: str, negative_prompt: str = "", steps: int = 20, cfg: float = 7.5,
                 denoise: float = 1.0, device=None, dtype=None):
        if isinstance(pipeline, str):
            from ..weights.loaders import load_sd_pipeline
            pipeline = load_sd_pipeline(pipeline, dtype=dtype, device=device)
        pipe = getattr(pipeline, "model", pipeline)
        from diffusers import StableDiffusionInpaintPipeline
        self.pipe = pipe if isinstance(pipe, StableDiffusionInpaintPipeline) else \
            StableDiffusionInpaintPipeline.from_pipe(pipe)
        self.pipe.set_progress_bar_config(disable=True)
        if not 0.0 < denoise <= 1.0:
            raise ValueError(f"denoise must be in (0, 1], got {denoise}.")
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.steps, self.cfg, self.denoise = int(steps), float(cfg), float(denoise)
        self.progress = None  # a bridge.Progress advanced once per denoising step (long waits show progress)

    def _step(self, pipe, step, timestep, kwargs):
        if self.progress is not None:
            self.progress.update(1)
        return kwargs

    def __call__(self, image, mask, k, seed):
        from PIL import Image
        h, w = image.shape[1:3]
        h8, w8 = _crop8(h, w)
        pil = image_to_pil(image[:, :h8, :w8])[0]
        binm = ((mask[0, :h8, :w8] > 0).cpu().numpy().astype(np.uint8) * 255)
        gens = [torch.Generator(device="cpu").manual_seed(int(seed) + j) for j in range(k)]
        with torch.no_grad():
            out = self.pipe(prompt=self.prompt, negative_prompt=self.negative_prompt or None, image=pil,
                            mask_image=Image.fromarray(binm, "L"), height=h8, width=w8, strength=self.denoise,
                            num_inference_steps=self.steps, guidance_scale=self.cfg, num_images_per_prompt=k,
                            generator=gens, output_type="np",
                            callback_on_step_end=self._step if self.progress is not None else None).images
        return _paste(image, torch.from_numpy(np.asarray(out, dtype=np.float32)))


class ComfySampler:
    """Inpaint inside ComfyUI with its own sampler (what ``SetLatentNoiseMask`` + ``KSampler`` do)."""

    def __init__(self, model, positive, negative, vae, steps: int = 20, cfg: float = 7.0,
                 sampler_name: str = "euler", scheduler: str = "normal", denoise: float = 1.0):
        self.model, self.positive, self.negative, self.vae = model, positive, negative, vae
        self.steps, self.cfg, self.denoise = int(steps), float(cfg), float(denoise)
        self.sampler_name, self.scheduler = sampler_name, scheduler

    def __call__(self, image, mask, k, seed):
        import comfy.sample  # noqa: WPS433 - ComfyUI only, imported on use
        import comfy.utils
        ratio = int(getattr(self.vae, "downscale_ratio", 8)) if isinstance(
            getattr(self.vae, "downscale_ratio", 8), int) else 8
        h, w = image.shape[1:3]
        h8, w8 = _crop8(h, w, ratio)
        latent = self.vae.encode(image[:, :h8, :w8, :3])
        latent = latent.repeat(k, *([1] * (latent.ndim - 1)))
        if hasattr(comfy.sample, "fix_empty_latent_channels"):
            latent = comfy.sample.fix_empty_latent_channels(self.model, latent)
        noise = comfy.sample.prepare_noise(latent, int(seed), None)
        noise_mask = mask[:, :h8, :w8].reshape((-1, 1, h8, w8)).float()
        callback = None
        try:
            import latent_preview
            callback = latent_preview.prepare_callback(self.model, self.steps)
        except Exception:
            callback = None
        samples = comfy.sample.sample(self.model, noise, self.steps, self.cfg, self.sampler_name, self.scheduler,
                                      self.positive, self.negative, latent, denoise=self.denoise,
                                      noise_mask=noise_mask, callback=callback,
                                      disable_pbar=not getattr(comfy.utils, "PROGRESS_BAR_ENABLED", True),
                                      seed=int(seed))
        out = self.vae.decode(samples)
        out = out.reshape((-1,) + tuple(out.shape[-3:]))[..., :3].float().cpu()
        return _paste(image.cpu().float(), out)
