"""RewardLoop for Automatic1111 / Forge: best-of-N by the assembled reward, and auto-fix of flagged regions.

An always-visible accordion in txt2img and img2img. After each batch, ``postprocess_batch_list`` scores the
images with the selected rewards, orders them best-first (optionally keeping only the top k) and keeps the
prompt/seed lists in step; with auto-fix on, regions a reward flags (its heatmap at or above the threshold,
dilated) are repainted through img2img inpainting. The logic lives in ``scripts/_logic.py`` (tested without a
WebUI); this file only talks to gradio and ``modules``. The WebUI imports it; ComfyUI never does.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path

import gradio as gr  # provided by the WebUI
from modules import scripts  # provided by the WebUI

log = logging.getLogger("rewardloop")
PACK_ROOT = Path(__file__).resolve().parents[1]


def _import_pack():
    """The pack as ``rewardloop`` (pip-installed, or this extension folder, whatever it is called)."""
    try:
        import rewardloop  # noqa: F401
        return importlib.import_module("rewardloop")
    except ImportError:
        pass
    spec = importlib.util.spec_from_file_location("rewardloop", PACK_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(PACK_ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["rewardloop"] = mod
    spec.loader.exec_module(mod)
    return mod


_import_pack()
from rewardloop.scripts import _logic  # noqa: E402


def _to_pil(img):
    """A WebUI batch image (CHW float tensor 0..1, HWC array or PIL) → PIL."""
    from PIL import Image
    if isinstance(img, Image.Image):
        return img
    import numpy as np
    a = img.detach().float().cpu().numpy() if hasattr(img, "detach") else np.asarray(img, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(1, 2, 0)
    if a.max() <= 1.0 + 1e-6:
        a = a * 255.0
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype("uint8")[..., :3])


def _like(template, pil):
    """A PIL result converted back to the type/layout of the batch image it replaces."""
    from PIL import Image
    if isinstance(template, Image.Image):
        return pil
    import numpy as np
    a = np.asarray(pil.convert("RGB"), dtype=np.float32) / 255.0
    if hasattr(template, "detach"):
        import torch
        t = torch.from_numpy(a)
        if template.ndim == 3 and template.shape[0] in (1, 3, 4) and template.shape[-1] not in (1, 3, 4):
            t = t.permute(2, 0, 1)
        return t.to(dtype=template.dtype, device=template.device)
    return a


class RewardLoopScript(scripts.Script):
    sorting_priority = 20

    def title(self):
        return "RewardLoop"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with gr.Accordion("RewardLoop: best-of-N and auto-fix", open=False):
            enabled = gr.Checkbox(label="Enable best-of-N by reward", value=False)
            rewards = gr.CheckboxGroup(label="Rewards", choices=list(_logic.REWARDS), value=["caption"])
            with gr.Row():
                w_caption = gr.Slider(label="caption weight", minimum=0.0, maximum=5.0, step=0.1, value=1.0)
                w_sam_llm = gr.Slider(label="sam_llm weight", minimum=0.0, maximum=5.0, step=0.1, value=1.0)
                w_rich = gr.Slider(label="rich weight", minimum=0.0, maximum=5.0, step=0.1, value=1.0)
            with gr.Row():
                keep = gr.Slider(label="Keep top k of each batch (0 = keep all, best first)", minimum=0,
                                 maximum=16, step=1, value=0)
                mode = gr.Dropdown(label="Ranking", choices=list(_logic.MODES), value="rank_sum")
            autofix = gr.Checkbox(label="Auto-fix flagged regions (img2img inpainting)", value=False)
            with gr.Row():
                threshold = gr.Slider(label="flag threshold (heatmap 0..1)", minimum=0.05, maximum=1.0,
                                      step=0.05, value=0.5)
                dilation = gr.Slider(label="mask dilation (% of short side)", minimum=0.0, maximum=20.0,
                                     step=0.5, value=3.0)
                denoise = gr.Slider(label="repair denoising strength", minimum=0.05, maximum=1.0, step=0.05,
                                    value=0.5)
        comps = [enabled, rewards, w_caption, w_sam_llm, w_rich, keep, mode, autofix, threshold, dilation, denoise]
        self.infotext_fields = [(enabled, "RewardLoop best-of-N"), (keep, "RewardLoop top k")]
        return comps

    # ------------------------------------------------------------ hooks
    def postprocess_batch_list(self, p, pp, *args, **kwargs):
        settings = _logic.parse_args(*args)
        if not settings.active or not getattr(pp, "images", None):
            return
        batch_number = int(kwargs.get("batch_number", 0))
        images = list(pp.images)
        n = len(images)
        pils = [_to_pil(im) for im in images]
        prompts = list(getattr(p, "prompts", None) or [getattr(p, "prompt", "")] * n)[:n]
        if len(prompts) < n:
            prompts += [prompts[-1] if prompts else ""] * (n - len(prompts))
        ranked = settings.rewards if settings.enabled else []
        needed = list(ranked)
        if settings.autofix and not any(r in ("rich", "sam_llm") for r in needed):
            needed.append("rich")
        scored = _logic.score(pils, prompts, needed)
        if settings.autofix:
            h, w = pils[0].height, pils[0].width
            masks = _logic.flag_masks(scored, n, (h, w), settings)
            seeds = list(getattr(p, "seeds", None) or [getattr(p, "seed", -1)] * n)

            def inpaint(img, mask, i):
                return _like(images[i], self._inpaint(p, pils[i], mask, prompts[i], seeds[i % len(seeds)],
                                                      settings))

            images, fixed = _logic.autofix(images, prompts, masks, inpaint)
            if fixed:
                log.info("RewardLoop: repaired images %s of batch %d", fixed, batch_number)
        if ranked:
            order = _logic.rank_order({r: scored[r] for r in ranked}, settings.weights, settings.mode)
            keep = _logic.select(order, settings.keep_top_k)
            _logic.BatchBook.apply(p, keep, batch_number, int(getattr(p, "batch_size", n) or n), n)
            images = [images[i] for i in keep]
        pp.images.clear()
        pp.images.extend(images)

    def _inpaint(self, p, pil, mask, prompt, seed, settings):
        """Repaint ``mask`` (1 = repaint) of ``pil`` with the WebUI's img2img at ``settings.denoise``."""
        import numpy as np
        from PIL import Image

        from modules import processing
        mask_img = Image.fromarray((np.asarray(mask) * 255).astype("uint8"), mode="L")
        neg = (getattr(p, "negative_prompts", None) or [getattr(p, "negative_prompt", "")])[0]
        p2 = processing.StableDiffusionProcessingImg2Img(
            sd_model=getattr(p, "sd_model", None), outpath_samples=getattr(p, "outpath_samples", None),
            outpath_grids=getattr(p, "outpath_grids", None), prompt=prompt, negative_prompt=neg, seed=seed,
            sampler_name=getattr(p, "sampler_name", None), steps=getattr(p, "steps", 20),
            cfg_scale=getattr(p, "cfg_scale", 7.0), width=pil.width, height=pil.height, init_images=[pil],
            image_mask=mask_img, mask_blur=4, inpainting_fill=1, inpaint_full_res=True,
            inpaint_full_res_padding=32, denoising_strength=settings.denoise, n_iter=1, batch_size=1,
            do_not_save_samples=True, do_not_save_grid=True)
        p2.scripts = None  # never re-enter our own (or any) always-on script
        res = processing.process_images(p2)
        if not res.images:
            raise RuntimeError("RewardLoop auto-fix: img2img returned no image")
        return res.images[0]
