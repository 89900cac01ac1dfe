"""Regenerate ``tests/data/core_nodes.json`` from a running ComfyUI's ``/object_info`` (trimmed).

Only the core nodes a RewardLoop workflow may use are kept, with their input specs (tooltips and other
display-only options dropped). Combos that list installed files (checkpoints, LoRAs, input images) are
replaced by ``[[], {"files": "<folder>"}]``: any file name is valid there, since it depends on the install.

    python -m rewardloop workflows core-nodes --url http://127.0.0.1:8188
    python -m rewardloop workflows core-nodes --object-info object_info.json --commit <sha>
"""
from __future__ import annotations

import json
from pathlib import Path

from .graph import CORE_NODES_PATH

# core nodes a workflow of ours may use (generation, inpainting, images, masks, LoRA, display)
KEEP = [
    "CheckpointLoaderSimple", "CLIPTextEncode", "CLIPSetLastLayer", "ConditioningCombine", "EmptyLatentImage",
    "KSampler", "KSamplerAdvanced", "VAEDecode", "VAEEncode", "VAEEncodeForInpaint", "VAELoader",
    "SetLatentNoiseMask", "InpaintModelConditioning", "LatentUpscale", "LatentUpscaleBy", "RepeatLatentBatch",
    "LoraLoader", "LoraLoaderModelOnly", "SaveImage", "PreviewImage", "LoadImage", "LoadImageMask",
    "ImageScale", "ImageScaleBy", "ImageBatch", "ImageCompositeMasked", "ImageInvert", "ImagePadForOutpaint",
    "RepeatImageBatch", "ImageFromBatch", "EmptyImage", "ImageCrop", "ImageBlend", "ImageBlur",
    "MaskToImage", "ImageToMask", "GrowMask", "InvertMask", "SolidMask", "ThresholdMask", "FeatherMask",
    "MaskComposite", "CropMask", "PreviewAny", "PrimitiveInt", "PrimitiveFloat", "PrimitiveString",
    "PrimitiveStringMultiline", "PrimitiveBoolean", "StringConcatenate", "LoadImageOutput",
    "ImageScaleToTotalPixels", "LatentFromBatch", "LatentComposite", "LatentCompositeMasked", "LatentBatch",
    "ConditioningSetMask", "ConditioningAverage", "ConditioningConcat", "ConditioningZeroOut",
    "ConditioningSetArea", "UpscaleModelLoader", "ImageUpscaleWithModel", "CLIPLoader", "UNETLoader",
    "DualCLIPLoader", "ImageStitch", "SplitImageWithAlpha", "JoinImageWithAlpha", "ImageSharpen", "Morphology",
    "MaskPreview", "SaveLatent", "LoadLatent", "ModelSamplingDiscrete", "ImageQuantize", "ImageRotate",
    "ImageFlip", "ResizeAndPadImage", "GetImageSize", "ImageAddNoise", "RebatchImages", "RebatchLatents",
    "ImageColorToMask", "StringReplace", "StringLength", "ControlNetLoader", "ControlNetApplyAdvanced",
    "CLIPVisionLoader", "CLIPVisionEncode", "TrainLoraNode", "SaveLoRANode", "LoraModelLoader", "LossGraphNode",
    "LoraSave",
]
FILE_INPUTS = {"ckpt_name": "checkpoints", "lora_name": "loras", "vae_name": "vae", "image": "input",
               "config_name": "configs", "clip_name": "text_encoders", "clip_name1": "text_encoders",
               "clip_name2": "text_encoders", "unet_name": "diffusion_models", "model_name": "upscale_models",
               "control_net_name": "controlnet", "latent": "input", "existing_lora": "loras"}
KEEP_OPTS = {"default", "min", "max", "step", "round", "multiline", "forceInput", "image_upload",
             "control_after_generate", "multi_select", "lazy", "rawLink", "options"}


def _trim_entry(node: str, name: str, entry):
    t = entry[0] if isinstance(entry, (list, tuple)) else entry
    opts = dict(entry[1]) if isinstance(entry, (list, tuple)) and len(entry) > 1 and isinstance(entry[1], dict) \
        else {}
    opts = {k: v for k, v in opts.items() if k in KEEP_OPTS}
    is_combo = isinstance(t, list) or t == "COMBO"
    choices = t if isinstance(t, list) else opts.get("options", [])
    if is_combo and (name in FILE_INPUTS or not choices):  # file lists (empty in a bare ComfyUI)
        keep = {k: v for k, v in opts.items() if k in ("image_upload",)}
        return [[], {**keep, "files": FILE_INPUTS.get(name, name)}]
    if t == "COMBO":  # new-style combo: normalise to the classic [choices, opts]
        return [list(opts.pop("options", [])), opts]
    return [t, opts]


def trim(object_info: dict, keep=KEEP) -> dict:
    nodes = {}
    for name in keep:
        info = object_info.get(name)
        if info is None:
            continue
        inp = {sec: {k: _trim_entry(name, k, v) for k, v in (info.get("input", {}).get(sec) or {}).items()}
               for sec in ("required", "optional") if info.get("input", {}).get(sec)}
        nodes[name] = {
            "input": inp,
            "input_order": {s: list(info.get("input_order", {}).get(s) or inp[s].keys()) for s in inp},
            "output": list(info.get("output", [])),
            "output_name": list(info.get("output_name", info.get("output", []))),
            "output_is_list": list(info.get("output_is_list", [])),
            "output_node": bool(info.get("output_node", False)),
        }
    return nodes


def write(object_info: dict, commit: str = "unknown", out: str | Path = CORE_NODES_PATH) -> Path:
    from ..fileio import atomic_write_text
    data = {"comment": "Trimmed /object_info of core ComfyUI nodes our workflows may use; regenerate with "
                       "`python -m rewardloop workflows core-nodes`.",
            "comfyui_commit": commit, "nodes": trim(object_info)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(data, indent=1, sort_keys=False) + "\n")
    return out


def fetch_object_info(url: str, timeout: float = 30) -> dict:
    import urllib.request
    with urllib.request.urlopen(url.rstrip("/") + "/object_info", timeout=timeout) as r:  # noqa: S310
        return json.loads(r.read().decode())
