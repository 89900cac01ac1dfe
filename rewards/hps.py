"""Human Preference Score v2.1 (Wu et al. 2023, "HPS v2"), reward ``hps``.

    hps(image, prompt) = cos( E_img(image), E_txt(prompt) )         -1..1 (typically 0.2..0.35), higher is better

HPS v2/v2.1 is OpenCLIP ViT-H/14 (laion2B) fine-tuned on the HPD v2 preference pairs; the official
``hpsv2.score`` returns exactly this cosine (``image_features @ text_features.T`` of the normalised features,
no logit scale). The release is an open_clip state dict, ``{"state_dict": …}`` in fp16
(``HPS_v2.1_compressed.pt``), loaded weights-only.

**Loaded into transformers' CLIP by a key map, not through open-clip-torch.** The map is mechanical (open_clip's
ViT and text transformer are OpenAI CLIP's, which ``CLIPModel`` reproduces; LAION publishes the same ViT-H/14 in
``CLIPModel`` layout), the architecture is read from the tensor shapes, and the model then shares one code path —
batching, dtype/device handling, the model cache — with PickScore, CLIPScore and the aesthetic predictor. open-clip-
torch would add open_clip, timm and ftfy to every host for one reward, and its factory wants a model-config name
and a pretrained tag where we only have a checkpoint. The test suite checks the map against an independent
computation on the raw open_clip tensors (and against open_clip itself when it is installed).

Details kept from the reference: pre-processing is HPS's eval transform (long side to 224, bicubic, zero-pad to a
square, OpenAI CLIP normalisation; :func:`~rewardloop.rewards.preference.pad_square_pixels`); the text is the CLIP
BPE tokenisation truncated at 77 tokens with the end-of-text token last; text features come from the end-of-text
position (open_clip takes the highest token id; ``eos_token_id = 2`` selects the same rule in ``CLIPModel``); GELU
activations (ViT-H/14 does not use QuickGELU); LayerNorm eps 1e-5. Attention heads are not stored in a state
dict: text heads are width/64 (every OpenCLIP text tower), vision heads are 16 for widths ≥ 1280 (ViT-H/g/bigG)
and width/64 below; override with the ``vision_heads`` / ``text_heads`` options.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ..weights.cache import cached
from ..weights.loaders import (ModelHandle, _dtype_device, _place, _resolve, empty_init, load_tokenizer,
                               load_weights_strict)
from ..weights.safe_load import load_state_dict
from .preference import (COMMON_OPTIONS, PreferenceScorer, clip_text_embeds, encode_distinct, model_device_dtype,
                         needed, pad_square_pixels, unit, _as_tensor)
from .similarity import openai_clip_text_to_hf, openai_resblocks_to_hf

NAME = "hps"
DEFAULT_MODELS = {"hps": "hps-v2.1"}  # clip_tokenizer: found on the machine unless given (find_clip_tokenizer)
MODEL_ROLES = {"hps": "rewards", "clip_tokenizer": "clip"}  # role -> model folder
OPTION_KEYS = {**COMMON_OPTIONS, "vision_heads": int, "text_heads": int}
SCORE_NAMES = [NAME]  # the scores this reward produces


def needed_models(models: dict | None = None) -> tuple[dict[str, str], dict]:
    """The model each role loads (defaults filled in) and the typed options, checked before loading."""
    return needed(NAME, models, DEFAULT_MODELS, OPTION_KEYS, MODEL_ROLES)


# ---------------------------------------------------------------- open_clip → CLIPModel
def _vision_heads(width: int) -> int:
    return 16 if width >= 1280 else max(1, width // 64)


def open_clip_config(sd: dict[str, torch.Tensor], vision_heads: int | None = None,
                     text_heads: int | None = None) -> dict:
    """``CLIPConfig`` arguments of an open_clip ViT CLIP state dict, read from the tensor shapes."""
    try:
        w, _, patch, _ = sd["visual.conv1.weight"].shape
        n_pos = sd["visual.positional_embedding"].shape[0]
        embed = sd["visual.proj"].shape[1]
        v_layers = 1 + max(int(m.group(1)) for k in sd
                           if (m := re.match(r"visual\.transformer\.resblocks\.(\d+)\.", k)))
        v_mlp = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        vocab, tw = sd["token_embedding.weight"].shape
        ctx = sd["positional_embedding"].shape[0]
        t_layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k)))
        t_mlp = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise ValueError(f"Not an open_clip ViT CLIP checkpoint (missing or odd key: {e}); HPS v2/v2.1 files "
                         "(HPS_v2.1_compressed.pt) hold one under 'state_dict'.") from None
    grid = int(round((n_pos - 1) ** 0.5))
    if grid * grid != n_pos - 1:
        raise ValueError(f"visual.positional_embedding has {n_pos} rows: not a square patch grid plus a class token.")
    return dict(
        projection_dim=int(embed),
        vision_config=dict(hidden_size=int(w), intermediate_size=int(v_mlp), num_hidden_layers=v_layers,
                           num_attention_heads=int(vision_heads or _vision_heads(int(w))), image_size=grid * int(patch),
                           patch_size=int(patch), hidden_act="gelu", layer_norm_eps=1e-5, projection_dim=int(embed)),
        text_config=dict(vocab_size=int(vocab), hidden_size=int(tw), intermediate_size=int(t_mlp),
                         num_hidden_layers=t_layers, num_attention_heads=int(text_heads or max(1, int(tw) // 64)),
                         max_position_embeddings=int(ctx), hidden_act="gelu", layer_norm_eps=1e-5,
                         projection_dim=int(embed), eos_token_id=2, bos_token_id=0, pad_token_id=1))


def open_clip_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip (= OpenAI CLIP) ViT CLIP keys → ``CLIPModel`` keys, both towers."""
    out = openai_clip_text_to_hf(sd)
    simple = {"visual.class_embedding": "vision_model.embeddings.class_embedding",
              "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
              "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
              "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
              "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
              "visual.ln_post.weight": "vision_model.post_layernorm.weight",
              "visual.ln_post.bias": "vision_model.post_layernorm.bias"}
    out.update({simple[k]: v for k, v in sd.items() if k in simple})
    if "visual.proj" in sd:
        out["visual_projection.weight"] = sd["visual.proj"].t().contiguous()  # open_clip: x @ proj
    out.update(openai_resblocks_to_hf(sd, "visual.transformer.resblocks.", "vision_model.encoder.layers."))
    return out


def hps_state_dict(path) -> dict[str, torch.Tensor]:
    sd = load_state_dict(path)
    return {re.sub(r"^module\.", "", k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def load_hps(name: str | os.PathLike, dtype=None, device=None, vision_heads: int | None = None,
             text_heads: int | None = None) -> ModelHandle:
    """An HPS v2/v2.1 (any open_clip ViT CLIP) checkpoint as a ``CLIPModel`` handle (no tokenizer)."""
    r = _resolve(name, "rewards")
    dtype, device = _dtype_device(dtype, device)

    def load():
        from transformers import CLIPConfig, CLIPModel
        sd = hps_state_dict(r.path)
        cfg = CLIPConfig(**open_clip_config(sd, vision_heads, text_heads))
        with empty_init(dtype):
            model = CLIPModel(cfg)
        hf = open_clip_to_hf(sd)
        hf.setdefault("logit_scale", torch.tensor(4.6052))
        load_weights_strict(model, hf, f"HPS checkpoint {r.path.name}")
        return ModelHandle("hps", str(name), r.path, _place(model.to(dtype), device), None, dtype, device,
                           {"image_size": cfg.vision_config.image_size})

    return cached("hps", r.path, load, dtype, device, heads=f"{vision_heads}/{text_heads}")


# ---------------------------------------------------------------- scorer
class HPSScorer(PreferenceScorer):
    name = NAME
    value_range = (-1.0, 1.0)

    def __init__(self, hps: ModelHandle, tokenizer: ModelHandle, batch_size: int = 16, keep_loaded: bool = False):
        super().__init__([hps], batch_size, keep_loaded)
        self.hps, self.tokenizer = hps, tokenizer.processor
        vocab = int(hps.model.config.text_config.vocab_size)
        if len(self.tokenizer) > vocab:
            raise ValueError(f"The tokenizer {tokenizer.name} has {len(self.tokenizer)} tokens but {hps.name} knows "
                             f"{vocab}: HPS needs the CLIP BPE tokenizer (clip-l-tokenizer).")

    def prepare(self, prompts):
        return encode_distinct(prompts, lambda texts: clip_text_embeds(self.hps.model, self.tokenizer, texts))

    def score_batch(self, images, prompts, prepared):
        model = self.hps.model
        device, dtype = model_device_dtype(model)
        px = pad_square_pixels(images, int(model.config.vision_config.image_size))
        img = unit(_as_tensor(model.get_image_features(pixel_values=px.to(device, dtype))))
        txt = torch.stack([prepared[p] for p in prompts]).to(img.device)
        return (img * txt).sum(-1)


def make_scorer(models: dict | None = None, device=None, dtype=None, batch_size: int = 16, keep_loaded: bool = False,
                vision_heads: int | None = None, text_heads: int | None = None, **_ignored) -> HPSScorer:
    """Registry factory. Roles: ``hps`` (an open_clip checkpoint, default hps-v2.1; hps-v2.0 also catalogued),
    ``clip_tokenizer`` (a CLIP BPE tokenizer folder; default: the one already on the machine, see
    :func:`machine_clip_tokenizer`). Options: batch_size, keep_loaded, vision_heads, text_heads."""
    roles, given = needed_models(models)
    opts = {"batch_size": batch_size, "keep_loaded": keep_loaded, "vision_heads": vision_heads,
            "text_heads": text_heads, **given}
    hps = load_hps(roles["hps"], dtype=dtype, device=device, vision_heads=opts.pop("vision_heads"),
                   text_heads=opts.pop("text_heads"))
    tok = load_tokenizer(roles["clip_tokenizer"], "clip") if roles.get("clip_tokenizer") else machine_clip_tokenizer()
    return HPSScorer(hps, tok, **opts)


def machine_clip_tokenizer() -> ModelHandle:
    """The CLIP BPE tokenizer already on this machine (ComfyUI's / Forge's copy, models/clip/clip-l-tokenizer, the HF
    cache or open_clip's BPE file; ``weights.clip_tokenizer``), cached: open_clip's ViT-H/14 tokenizer is this one."""
    from ..weights.cache import cached
    from ..weights.clip_tokenizer import find_clip_tokenizer

    def load():
        tok = find_clip_tokenizer()
        return ModelHandle("tokenizer", "CLIP BPE (found on this machine)", Path("."), tok, tok)

    return cached("tokenizer", "machine-clip-bpe", load)
