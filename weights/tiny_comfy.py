"""Tiny single-file checkpoints that ComfyUI itself detects, loads and samples on the CPU, per architecture.

Built from ComfyUI's own model classes (UNetModel, MMDiT, its CLIP text towers, TAESD) with tiny configs, and
written through the model config's own ``process_*_state_dict_for_saving`` (the same key layout ComfyUI's
CheckpointSave writes), so CheckpointLoaderSimple recognises each file as its architecture:

==========  ==========================================  =========================================  ==============
arch        diffusion model (ComfyUI detects it as)      text encoders                              latent / VAE
==========  ==========================================  =========================================  ==============
``sdxl``    UNet 320 ch ×3 levels, depth [0,2,5],       CLIP-L + CLIP-G (fixed sizes: 123 M +      4 ch, TAESD
            context 2048, adm 2816 (KOALA_700M: the      695 M; random, stored in fp16)
            SDXL model class and conditioning, ε)
``sd35``    MMDiT depth 2 (hidden 128), RMS q/k norm     CLIP-L only (SD3 pads the missing CLIP-G    16 ch, TAESD
            like SD3.5 (SD3, rectified flow, shift 3)    and T5 with zeros)
==========  ==========================================  =========================================  ==============

ComfyUI builds text encoders from fixed configs, so they cannot be shrunk; the diffusion models are a few to
~60 M parameters. Weights are random (seeded): images are noise, but every node of a graph really runs.

Run with ComfyUI's Python (it imports ComfyUI's model classes)::

    python -m rewardloop.weights.tiny_comfy COMFYUI_PATH ARCH OUT.safetensors
    python weights/tiny_comfy.py COMFYUI_PATH ARCH OUT.safetensors
"""
from __future__ import annotations

import sys

ARCHES = ("sdxl", "sd35")  # SD1.5: the shared ``tiny-sd15-single`` of weights/tiny.py
FILE_NAMES = {a: f"comfy-tiny-{a}.safetensors" for a in ARCHES}


def _fill(sd: dict, generator, dtype, he: bool = False) -> dict:
    """Random weights of the right shapes: norms 1, biases 0, the rest N(0, 0.02²) (``he``: N(0, 2/fan_in), so a
    random decoder still gives images with visible contrast); integer buffers kept."""
    import torch
    out = {}
    for k, v in sd.items():
        if not v.is_floating_point():
            out[k] = torch.zeros(v.shape, dtype=v.dtype) if v.device.type == "meta" else v.clone()
        elif k.endswith("vae_scale") or ("norm" in k and k.endswith("weight")) or k.endswith(".ln_q.weight") \
                or k.endswith(".ln_k.weight"):
            out[k] = torch.ones(v.shape, dtype=dtype)
        elif k.endswith("bias") or k.endswith("vae_shift"):
            out[k] = torch.zeros(v.shape, dtype=dtype)
        else:
            std = (2.0 / max(1, v.shape[1:].numel())) ** 0.5 if he and v.dim() > 1 else 0.02
            out[k] = (torch.randn(v.shape, generator=generator) * std).to(dtype)
    return out


def state_dict(arch: str, seed: int = 0) -> dict:
    """The checkpoint's tensors (ComfyUI must be importable: call :func:`setup_comfy` first)."""
    import torch

    import comfy.ops
    import comfy.supported_models as sm
    from comfy.taesd.taesd import TAESD

    if arch not in ARCHES:
        raise ValueError(f"Unknown tiny ComfyUI architecture {arch!r}: choose one of {', '.join(ARCHES)}.")
    g = torch.Generator().manual_seed(seed)
    ops = comfy.ops.disable_weight_init
    if arch == "sdxl":
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
        kw = dict(num_res_blocks=[1, 1, 1], channel_mult=(1, 1, 1), num_head_channels=64,
                  transformer_depth=[0, 2, 5], transformer_depth_output=[0, 0, 0, 0, 1, 1],
                  context_dim=2048, use_linear_in_transformer=True, adm_in_channels=2816, num_classes="sequential")
        config = sm.KOALA_700M(dict(sm.KOALA_700M.unet_config))
        net = UNetModel(image_size=32, in_channels=4, model_channels=320, out_channels=4,
                        use_spatial_transformer=True, transformer_depth_middle=1, legacy=False, device="meta",
                        operations=ops, **kw)
        latent_channels = 4
    else:
        from comfy.ldm.modules.diffusionmodules.mmdit import MMDiT
        net = MMDiT(input_size=None, patch_size=2, in_channels=16, out_channels=16, depth=2, adm_in_channels=2048,
                    context_embedder_config={"target": "torch.nn.Linear",
                                             "params": {"in_features": 4096, "out_features": 128}},
                    pos_embed_max_size=16, num_patches=256, qk_norm="rms", device="meta", operations=ops)
        config = sm.SD3({"in_channels": 16, "pos_embed_scaling_factor": None})
        latent_channels = 16
    sd = config.process_unet_state_dict_for_saving(_fill(net.state_dict(), g, torch.float16))
    clip = _clip_model(arch)
    sd.update(config.process_clip_state_dict_for_saving(_fill(clip.state_dict(), g, torch.float16)))
    sd.update(config.process_vae_state_dict_for_saving(
        _fill(TAESD(latent_channels=latent_channels).state_dict(), g, torch.float32, he=True)))
    return {k: v.contiguous() for k, v in sd.items()}


def _clip_model(arch: str):
    """ComfyUI's own text-encoder module for the architecture, on the meta device (shapes only)."""
    if arch == "sdxl":
        from comfy.sdxl_clip import SDXLClipModel
        return SDXLClipModel(device="meta")
    from comfy.text_encoders.sd3_clip import sd3_clip
    return sd3_clip(clip_l=True, clip_g=False, t5=False)(device="meta")


def setup_comfy(comfy_path: str) -> None:
    """Make ComfyUI importable in this process, on the CPU (before comfy.model_management is imported)."""
    if comfy_path not in sys.path:
        sys.path.insert(0, comfy_path)
    from comfy.cli_args import args
    args.cpu = True


def write(comfy_path: str, arch: str, out: str, seed: int = 0) -> str:
    from safetensors.torch import save_file
    setup_comfy(comfy_path)
    sd = state_dict(arch, seed)
    save_file(sd, out, metadata={"rewardloop_tiny": arch})
    return out


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python weights/tiny_comfy.py COMFYUI_PATH {sdxl,sd35} OUT.safetensors")
    write(sys.argv[1], sys.argv[2], sys.argv[3])
