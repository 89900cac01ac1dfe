"""Auto-Fix node: inpaint the masked region K times with ComfyUI's own sampler, re-score, keep the best."""
from __future__ import annotations

from ..rewards.inpaint import ComfySampler, auto_fix
from ._common import CATEGORY, SCORER, check_map_fits, image_hw, validated

FALLBACK_SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2m",
                     "dpmpp_2m_sde", "dpmpp_sde", "ddim", "uni_pc"]
FALLBACK_SCHEDULERS = ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta"]


def sampler_choices() -> tuple[list[str], list[str]]:
    """ComfyUI's sampler and scheduler names when running inside ComfyUI, a common subset otherwise."""
    try:
        import comfy.samplers  # ComfyUI only
        return list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)
    except Exception:
        return list(FALLBACK_SAMPLERS), list(FALLBACK_SCHEDULERS)


def make_sampler(model, positive, negative, vae, steps, cfg, sampler_name, scheduler, denoise):
    """The sampler the node uses (tests replace this with a fake)."""
    return ComfySampler(model, positive, negative, vae, steps, cfg, sampler_name, scheduler, denoise)


class RewardLoopAutoFix:
    DESCRIPTION = ("One-click repair of flagged regions (RAHF): inpaints only the masked region K times with "
                   "ComfyUI's sampler (latent noise mask), blends each result back with the feathered mask so "
                   "unmasked pixels stay untouched, re-scores the original and the candidates (RAHF plausibility by "
                   "default, or the connected scorer) and keeps the best — the original when no candidate beats it. "
                   "An empty mask skips the image.")
    CATEGORY = f"{CATEGORY}/regions"
    FUNCTION = "fix"
    RETURN_TYPES = ("IMAGE", "IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("image", "candidates", "mask", "report")
    OUTPUT_TOOLTIPS = ("Best image per input image (the original when nothing beat it or the mask was empty).",
                       "All blended candidates, K per image (the original once for skipped images).",
                       "The feathered mask used (1 = repainted).",
                       "Scores of the original and every candidate, and which was chosen.")

    @classmethod
    def INPUT_TYPES(cls):
        samplers, schedulers = sampler_choices()
        return {"required": {
            "model": ("MODEL", {"tooltip": "The diffusion model (from the checkpoint that made the image)."}),
            "positive": ("CONDITIONING", {"tooltip": "Positive prompt conditioning."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt conditioning."}),
            "vae": ("VAE", {"tooltip": "VAE to encode the image and decode the candidates."}),
            "image": ("IMAGE", {"tooltip": "Image(s) to repair."}),
            "mask": ("MASK", {"tooltip": "Region to repaint (1 = repaint), e.g. from Heatmap → Mask; one for all "
                                         "images or one per image."}),
            "k": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Candidates to generate per image."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000, "tooltip": "Sampling steps."}),
            "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1,
                              "tooltip": "Classifier-free guidance scale."}),
            "sampler_name": (samplers, {"default": samplers[0], "tooltip": "ComfyUI sampler."}),
            "scheduler": (schedulers, {"default": schedulers[0], "tooltip": "ComfyUI noise schedule."}),
            "denoise": ("FLOAT", {"default": 0.75, "min": 0.01, "max": 1.0, "step": 0.01,
                                  "tooltip": "How much of the masked region is re-generated (1 = from scratch)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                             "tooltip": "Seed; image b uses seed + b·K."}),
        }, "optional": {
            "scorer": (SCORER, {"tooltip": "Re-scoring reward (e.g. Reward Scorer). Default: RAHF plausibility."}),
            "prompt": ("STRING", {"default": "", "multiline": True,
                                  "tooltip": "Text of the positive prompt, for the re-scorer (one for all images or "
                                             "one line per image)."}),
            "score_name": ("STRING", {"default": "",
                                      "tooltip": "Which of the scorer's scores decides (empty: plausibility when "
                                                 "present, else its first score)."}),
        }}

    @validated
    def fix(self, model, positive, negative, vae, image, mask, k, steps, cfg, sampler_name, scheduler, denoise,
            seed, scorer=None, prompt="", score_name=""):
        from ..bridge import Progress
        from ..errors import UserError
        from ..rewards.images import broadcast_prompts, mask_to_batch
        h, w = image_hw(image)
        b = image.shape[0] if image.ndim == 4 else 1
        masks = mask_to_batch(mask)
        check_map_fits("mask", masks, image)
        if tuple(masks.shape[-2:]) != (h, w):
            raise UserError(f"The mask is {masks.shape[-1]}×{masks.shape[-2]} but the image is {w}×{h}: make the "
                            "mask at the image size (Heatmap → Mask with the image connected).")
        from ..rewards.rich_feedback.predict import SCORE_NAMES  # the default re-scorer's
        names = list(getattr(scorer, "names", []) or []) if scorer is not None else SCORE_NAMES
        if score_name and names and score_name not in names:
            raise UserError(f"score_name {score_name!r} is not a score of the connected scorer: use one of "
                            f"{', '.join(names)} (or leave it empty).")
        prompts = broadcast_prompts(prompt, b) if (prompt or "").strip() else ""
        sampler = make_sampler(model, positive, negative, vae, steps, cfg, sampler_name, scheduler, denoise)
        with Progress(image.shape[0], "auto-fix") as bar:
            res = auto_fix(image, masks, sampler, scorer, k=k, seed=seed, prompt=prompts,
                           score_name=score_name or None, progress=bar)
        report = res.summary()
        return {"ui": {"text": [report]}, "result": (res.images, res.candidates, res.mask, report)}


NODE_CLASS_MAPPINGS = {"RewardLoopAutoFix": RewardLoopAutoFix}
NODE_DISPLAY_NAME_MAPPINGS = {"RewardLoopAutoFix": "Auto-Fix Regions (RewardLoop)"}
