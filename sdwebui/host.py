"""What the A1111/Forge extension does with the WebUI's own objects.

The WebUI modules (``modules.processing``, ``modules.shared`` …) are imported inside the functions, never at
import time, so this module loads anywhere. :func:`run_batch` is the whole ``postprocess_batch_list`` step:
auto-fix (the library's :func:`rewards.inpaint.auto_fix` with the WebUI's img2img as its sampler: K
candidates, re-scored, a fix kept only when it scores higher, unmasked pixels bit for bit the original's), then
best-of-N ranking of the final images, keeping every per-image list in step (:class:`logic.BatchBook`).

The nested img2img job (:class:`WebUIInpaintSampler`) is built from the keywords the host's
``StableDiffusionProcessingImg2Img`` dataclass really accepts (:func:`img2img_kwargs`), uses the outer job's
sampler, scheduler, steps, CFG and per-image prompts, and runs inside :func:`outer_job_kept`, which puts back
what a nested ``process_images`` changes for the outer job: the shared condition cache, token merging,
``params.txt``, the progress counters and the model's per-job attributes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..fileio import atomic_write
from . import logic

# keywords every nested job needs (the host must accept them) and those passed only where the host has them
IMG2IMG_REQUIRED = ("sd_model", "prompt", "negative_prompt", "seed", "sampler_name", "steps", "cfg_scale", "width",
                    "height", "init_images", "mask", "mask_blur", "inpainting_fill", "inpaint_full_res",
                    "denoising_strength", "batch_size", "n_iter", "do_not_save_samples", "do_not_save_grid",
                    "override_settings")
IMG2IMG_OPTIONAL = ("scheduler", "distilled_cfg_scale", "eta", "s_min_uncond", "s_churn", "s_tmax", "s_tmin",
                    "s_noise", "tiling", "restore_faces", "outpath_samples", "outpath_grids")
# WebUI options a nested job must not follow (they add mask images to its results)
NESTED_OVERRIDES = {"return_mask": False, "return_mask_composite": False}
STATE_FIELDS = ("job", "job_no", "job_count", "sampling_step", "sampling_steps", "textinfo",
                "current_image_sampling_step")
MODEL_FIELDS = ("forge_objects", "forge_objects_after_applying_lora", "comments", "extra_generation_params")


class FixError(RuntimeError):
    """A problem the user can act on (shown as one line, without a traceback)."""


# ------------------------------------------------------------------ images
def to_pil(img):
    """A WebUI batch image (CHW float tensor 0..1, HWC array or PIL) → the PIL image the WebUI will save:
    it converts with ``(255 * x).astype(uint8)`` (truncation), and so does this, so scores belong to the very
    pixels the user gets."""
    from PIL import Image
    if isinstance(img, Image.Image):
        return img.convert("RGB")
    a = img.detach().float().cpu().numpy() if hasattr(img, "detach") else np.asarray(img, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, 2)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return Image.fromarray((255.0 * np.clip(a[..., :3], 0, 1)).astype(np.uint8))


def like(template, pil):
    """A PIL result back in the type and layout of the batch image it replaces. Tensors get ``(v + 0.5) / 255``
    so that the WebUI's truncating conversion gives back exactly the PIL's pixel values."""
    from PIL import Image
    if isinstance(template, Image.Image):
        return pil
    a = (np.asarray(pil.convert("RGB"), dtype=np.float32) + 0.5) / 255.0
    if hasattr(template, "detach"):
        import torch
        t = torch.from_numpy(a)
        if template.ndim == 3 and template.shape[0] in (1, 3, 4) and template.shape[-1] not in (1, 3, 4):
            t = t.permute(2, 0, 1)
        return t.to(dtype=template.dtype, device=template.device)
    return a


def clean_prompt(prompt: str) -> str:
    """The prompt without extra-network tags (``<lora:name:1>``), as the rewards should read it."""
    try:
        from modules import extra_networks
        return extra_networks.parse_prompt(prompt)[0]
    except Exception:  # outside a WebUI
        return re.sub(r"<[^<>:]+:[^<>]*>", "", prompt)


# ------------------------------------------------------------------ visible errors
def report(p, message: str, exc_info: bool = False) -> None:
    """An error the user must see: the WebUI console (its own ``*** `` error channel) and the generation info."""
    text = f"RewardLoop: {message}" if not message.startswith("RewardLoop") else message
    try:
        from modules import errors
        errors.report(text, exc_info=exc_info)
    except Exception:
        import sys
        import traceback
        print("***", text, file=sys.stderr)
        if exc_info:
            traceback.print_exc()
    params = getattr(p, "extra_generation_params", None)
    if isinstance(params, dict):
        first = text.splitlines()[0] if text else text
        params[logic.INFO_ERROR] = first[:300]


# ------------------------------------------------------------------ the nested img2img job
def init_fields(cls) -> set[str]:
    """The keywords a WebUI processing dataclass accepts (its ``init=True`` fields)."""
    return {f.name for f in dataclasses.fields(cls) if f.init}


def img2img_kwargs(p, image, mask_image, prompt: str, negative_prompt: str, seed: int, k: int, denoise: float,
                   accepted: set[str]) -> dict:
    """Keyword arguments of the nested inpainting job, limited to what this host's dataclass accepts.

    The mask goes in as ``mask`` (``__post_init__`` turns it into ``image_mask``, which is not an ``__init__``
    field); ``scheduler`` (Forge, A1111 ≥ 1.9) and Flux's ``distilled_cfg_scale`` only where they exist.
    """
    wanted = dict(
        sd_model=getattr(p, "sd_model", None), prompt=prompt, negative_prompt=negative_prompt, seed=int(seed),
        sampler_name=getattr(p, "sampler_name", None), steps=int(getattr(p, "steps", 20) or 20),
        cfg_scale=float(getattr(p, "cfg_scale", 7.0)), width=image.width, height=image.height,
        init_images=[image], mask=mask_image, mask_blur=4, inpainting_fill=1, inpaint_full_res=False,
        denoising_strength=float(denoise), batch_size=int(k), n_iter=1, do_not_save_samples=True,
        do_not_save_grid=True, override_settings=dict(NESTED_OVERRIDES),
        scheduler=getattr(p, "scheduler", None), distilled_cfg_scale=getattr(p, "distilled_cfg_scale", None),
        eta=getattr(p, "eta", None), s_min_uncond=getattr(p, "s_min_uncond", None),
        s_churn=getattr(p, "s_churn", None), s_tmax=getattr(p, "s_tmax", None), s_tmin=getattr(p, "s_tmin", None),
        s_noise=getattr(p, "s_noise", None), tiling=getattr(p, "tiling", None), restore_faces=False,
        outpath_samples=getattr(p, "outpath_samples", None), outpath_grids=getattr(p, "outpath_grids", None))
    missing = [name for name in IMG2IMG_REQUIRED if name not in accepted]
    if missing:
        raise FixError(f"auto-fix needs img2img inpainting, but this WebUI's StableDiffusionProcessingImg2Img takes "
                       f"no {', '.join(missing)}; update the WebUI or turn auto-fix off.")
    return {key: value for key, value in wanted.items()
            if key in accepted and (key in IMG2IMG_REQUIRED or value is not None)}


@contextlib.contextmanager
def outer_job_kept(p, processing, shared, sd_models=None, data_path: str | os.PathLike | None = None):
    """Run a nested job without disturbing the outer one; everything below is put back on exit:

    * the shared condition caches (class attributes of the processing classes; ``close()`` resets them);
    * token merging (A1111's ``process_images`` sets it for the nested job and resets it to 0);
    * ``params.txt`` (the nested job would overwrite the outer job's parameters with its own);
    * ``shared.state``'s progress counters (the nested job counts its own batches and steps);
    * the model's per-job attributes (Forge's ``forge_objects``, ``comments``, ``extra_generation_params``).
    """
    caches = []
    for cls in (getattr(processing, "StableDiffusionProcessing", None),
                getattr(processing, "StableDiffusionProcessingTxt2Img", None)):
        for name in ("cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc"):
            if cls is not None and name in vars(cls):
                obj = vars(cls)[name]
                caches.append((cls, name, obj, list(obj) if isinstance(obj, list) else None))
    state = getattr(shared, "state", None)
    state_saved = {k: getattr(state, k) for k in STATE_FIELDS if state is not None and hasattr(state, k)}
    model = getattr(p, "sd_model", None)
    model_saved = {k: getattr(model, k) for k in MODEL_FIELDS if model is not None and hasattr(model, k)}
    tome = getattr(model, "applied_token_merged_ratio", None)
    params = Path(data_path) / "params.txt" if data_path else None
    params_text = params.read_bytes() if params is not None and params.is_file() else None
    try:
        yield
    finally:
        for cls, name, obj, contents in caches:
            setattr(cls, name, obj)
            if contents is not None:
                obj[:] = contents
        for k, v in state_saved.items():
            setattr(state, k, v)
        for k, v in model_saved.items():
            setattr(model, k, v)
        if model is not None and sd_models is not None and hasattr(sd_models, "apply_token_merging") \
                and getattr(model, "applied_token_merged_ratio", None) != tome:
            sd_models.apply_token_merging(model, tome or 0)
        if params is not None:
            if params_text is None:
                params.unlink(missing_ok=True)
            elif not params.is_file() or params.read_bytes() != params_text:
                with atomic_write(params) as f:   # the outer job's params.txt, never left half-written
                    f.write(params_text)


class WebUIInpaintSampler:
    """A :class:`rewards.inpaint.Sampler` that repaints with the WebUI's own img2img inpainting.

    ``sampler(image [1,H,W,C], mask [1,H,W], k, seed)`` runs one nested job of ``k`` images (seeds ``seed`` …
    ``seed + k - 1``) and returns ``[k,H,W,3]`` floats; the nested job is closed and the outer job left as it was.
    """

    def __init__(self, p, prompt: str, negative_prompt: str, denoise: float):
        self.p, self.prompt, self.negative_prompt, self.denoise = p, prompt, negative_prompt, denoise

    def __call__(self, image, mask, k, seed):
        import torch
        from PIL import Image

        from modules import paths, processing, sd_models, shared

        from ..rewards.images import image_to_pil
        pil = image_to_pil(image)[0]
        mask_img = Image.fromarray(((mask[0] > 0).cpu().numpy().astype(np.uint8) * 255), mode="L")
        cls = processing.StableDiffusionProcessingImg2Img
        kwargs = img2img_kwargs(self.p, pil, mask_img, self.prompt, self.negative_prompt, seed, k, self.denoise,
                                init_fields(cls))
        cmd_opts = getattr(shared, "cmd_opts", None)
        data_path = None if getattr(cmd_opts, "no_prompt_history", False) else paths.data_path
        with outer_job_kept(self.p, processing, shared, sd_models, data_path):
            p2 = cls(**kwargs)
            p2.scripts = None  # never re-enter the always-on scripts (ours included)
            for name in ("cached_c", "cached_uc"):  # its own condition cache, not the outer job's
                setattr(p2, name, [None] * len(getattr(processing.StableDiffusionProcessing, name)))
            try:
                res = processing.process_images(p2)
            finally:
                p2.close()
        images = list(res.images[getattr(res, "index_of_first_image", 0):])[:k]
        if len(images) < k:
            if getattr(shared.state, "interrupted", False):
                raise InterruptedError("interrupted")
            raise FixError(f"img2img returned {len(images)} images for {k} candidates.")
        arrays = [np.asarray(im.convert("RGB").resize(pil.size), dtype=np.float32) / 255.0 for im in images]
        return torch.from_numpy(np.stack(arrays))


# ------------------------------------------------------------------ one batch
def _seeds(p, n: int) -> list[int]:
    seeds = list(getattr(p, "seeds", None) or [getattr(p, "seed", -1)] * n)
    return [int(seeds[i % len(seeds)]) for i in range(n)]


def _texts(p, name: str, fallback: str, n: int) -> list[str]:
    lst = list(getattr(p, name, None) or [getattr(p, fallback, "")] * n)[:n]
    return lst + [lst[-1] if lst else ""] * (n - len(lst))


# PNG-info values carry no comma or colon, so the WebUI leaves them unquoted
def autofix_batch(p, images: list, pils: list, prompts: Sequence[str], negatives: Sequence[str], seeds: Sequence[int],
                  scored: dict[str, list], settings: logic.Settings, book: logic.BatchBook, batch_number: int,
                  sampler_cls=WebUIInpaintSampler) -> list[int]:
    """Repair flagged images in place (``images`` / ``pils``); returns the indices whose fix was kept."""
    import torch

    from ..rewards.images import pil_to_image
    from ..rewards.inpaint import auto_fix
    n = len(images)
    masks = logic.flag_masks(scored[settings.fix_reward], n, (pils[0].height, pils[0].width), settings)
    scorer = logic.get_scorer(settings.fix_reward, settings.models_for(settings.fix_reward))
    kept = []
    for i, m in enumerate(masks):
        if m is None:
            book.note(batch_number, i, logic.INFO_FIX_RESULT, "nothing flagged")
            continue
        sampler = sampler_cls(p, prompts[i], negatives[i], settings.denoise)
        res = auto_fix(pil_to_image([pils[i]]), torch.from_numpy(m)[None], sampler, scorer=scorer,
                       k=settings.fix_candidates, seed=seeds[i], prompt=clean_prompt(prompts[i]))
        s = res.scores[0]
        if res.chosen[0] >= 0:
            from ..rewards.images import image_to_pil
            pils[i] = image_to_pil(res.images[:1])[0]
            images[i] = like(images[i], pils[i])
            kept.append(i)
            book.note(batch_number, i, logic.INFO_FIX_RESULT,
                      f"fixed ({res.score_name} {s[0]:.4f} -> {s[1 + res.chosen[0]]:.4f})")
        else:
            book.note(batch_number, i, logic.INFO_FIX_RESULT,
                      f"kept original ({res.score_name} {s[0]:.4f} >= best fix {max(s[1:]):.4f})")
    return kept


def run_batch(p, pp, settings: logic.Settings, batch_number: int) -> None:
    """The ``postprocess_batch_list`` step: auto-fix, then ranking; ``pp.images`` and ``p``'s lists updated."""
    book = logic.BatchBook.of(p)
    images = list(pp.images)
    n = len(images)
    batch_size = int(getattr(p, "batch_size", n) or n)
    pils = [to_pil(im) for im in images]
    prompts = _texts(p, "prompts", "prompt", n)
    score_prompts = [clean_prompt(t) for t in prompts]
    ranked = settings.ranking
    needed = list(dict.fromkeys(ranked + ([settings.fix_reward] if settings.autofix else [])))
    scored = logic.score(pils, score_prompts, needed, settings)
    if settings.autofix:
        fixed = autofix_batch(p, images, pils, prompts, _texts(p, "negative_prompts", "negative_prompt", n),
                              _seeds(p, n), scored, settings, book, batch_number)
        if fixed and ranked:  # rank the images the user gets: re-score the repaired ones
            fresh = logic.score([pils[i] for i in fixed], [score_prompts[i] for i in fixed], ranked, settings)
            scored = logic.splice({r: scored[r] for r in ranked}, fresh, fixed)
    if ranked:
        order = logic.rank_order({r: scored[r] for r in ranked}, settings.weights, settings.mode)
        keep = logic.select(order, settings.keep_top_k)
        notes = {i: book.notes.pop((batch_number, i), {}) for i in range(n)}
        for place, i in enumerate(keep):
            book.notes[(batch_number, place)] = {**notes[i], logic.INFO_PLACE: f"{place + 1}/{n}"}
        book.apply(p, keep, batch_number, batch_size, n)
        images = [images[i] for i in keep]
    else:
        book.keep_all(batch_number, batch_size, n)
    pp.images.clear()
    pp.images.extend(images)


def per_image_info(book: logic.BatchBook, key: str):
    """A value for ``extra_generation_params`` that the WebUI evaluates per image (hosts that call callables)."""
    def value(p=None, index=0, **_):
        return book.notes.get((int(getattr(p, "iteration", 0) or 0), int(index or 0)), {}).get(key)
    return value
