"""Write a tiny single-file SD1.x checkpoint that ComfyUI's CheckpointLoaderSimple detects and runs.

Run with ComfyUI's own Python (it uses ComfyUI's model classes, so the keys match the original SD layout
exactly):  ``python tests/comfyui_tiny_sd15.py COMFYUI_PATH OUT.safetensors``.

ComfyUI recognises SD1.x from the UNet's shape (model_channels 320, context 768), so the UNet keeps those
widths but has one level, one res block and one transformer block (about 8 M parameters); the VAE is a
TAESD (tiny autoencoder, recognised by its ``taesd_decoder.*`` keys); the text encoder must be the full
CLIP-L text tower ComfyUI builds for SD1.x (123 M parameters, stored in fp16). Weights are random
(seeded): images are noise, but every node of a txt2img graph really runs.
"""
from __future__ import annotations

import sys


def main(comfy_path: str, out: str) -> None:
    sys.path.insert(0, comfy_path)
    import torch
    from safetensors.torch import save_file

    from comfy.cli_args import args
    args.cpu = True  # before comfy.model_management is imported: no GPU probing
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.taesd.taesd import TAESD
    import comfy.ops

    g = torch.Generator().manual_seed(0)

    def fill(sd: dict, prefix: str, dtype=torch.float16) -> dict:
        out = {}
        for k, v in sd.items():
            if not v.is_floating_point():
                out[prefix + k] = v.clone()
            elif "norm" in k and k.endswith("weight"):
                out[prefix + k] = torch.ones(v.shape, dtype=dtype)
            elif k.endswith("bias"):
                out[prefix + k] = torch.zeros(v.shape, dtype=dtype)
            else:
                out[prefix + k] = (torch.randn(v.shape, generator=g) * 0.02).to(dtype)
        return out

    unet = UNetModel(image_size=32, in_channels=4, model_channels=320, out_channels=4, num_res_blocks=[1],
                     channel_mult=(1,), num_heads=8, use_spatial_transformer=True, transformer_depth=[1],
                     transformer_depth_middle=1, transformer_depth_output=[1, 1], context_dim=768,
                     use_linear_in_transformer=False, legacy=False, device="meta",
                     operations=comfy.ops.disable_weight_init)
    sd = fill(unet.state_dict(), "model.diffusion_model.")
    sd.update(fill(TAESD().state_dict(), "first_stage_model.", dtype=torch.float32))
    # CLIP-L text tower in the original checkpoint layout (cond_stage_model.transformer.text_model.*)
    from transformers import CLIPTextConfig, CLIPTextModel
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, projection_dim=768)
    with torch.device("meta"):
        te = CLIPTextModel(cfg)
    te_sd = {k: v for k, v in te.state_dict().items() if "position_ids" not in k}
    sd.update(fill(te_sd, "cond_stage_model.transformer."))
    save_file({k: v.contiguous() for k, v in sd.items()}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
