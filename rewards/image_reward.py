"""ImageReward (Xu et al. 2023), reward ``image_reward``.

    image_reward(image, prompt) = ( MLP( T(prompt | V(image))[CLS] ) − μ ) / σ       ≈ N(0, 1), higher is better

``V`` is BLIP's ViT-L/16 (224 px; all patch tokens after the final LayerNorm), ``T`` BLIP's BERT-base text encoder
whose every layer cross-attends to ``V``'s tokens (bidirectional self-attention, no [ENC] token swap: the prompt is
tokenised by bert-base-uncased with [CLS] first, padded to 35 tokens); the [CLS] feature goes through an MLP head with
the aesthetic predictor's layout (768→1024→128→64→16→1, dropouts, no activations) and is standardised with the
released constants μ = 0.16717362830052426, σ = 1.0333394966054072. Images: short side to 224 (bicubic), centre crop,
OpenAI CLIP normalisation (:func:`~rewardloop.rewards.preference.center_crop_pixels`).

The release (``THUDM/ImageReward``: ``ImageReward.pt`` + ``med_config.json``) is loaded weights-only and mapped onto
transformers' ``BlipVisionModel`` (``blip.visual_encoder.*``: timm ViT keys → BLIP vision keys, the fused qkv kept)
and ``BlipTextModel`` (``blip.text_encoder.*``: BLIP's med.py names, which transformers kept); the other ``blip.*``
parts (``vision_proj`` / ``text_proj``, unused for the score) are dropped. Vision sizes come from the tensors
(heads = width/64, as in BLIP's ViT-B and ViT-L), text sizes from ``med_config.json``.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ..weights.cache import cached
from ..weights.loaders import (ModelHandle, _dtype_device, _place, _resolve, empty_init, load_tokenizer,
                               load_weights_strict)
from ..weights.safe_load import load_state_dict
from .aesthetic import ScoreMLP
from .preference import COMMON_OPTIONS, PreferenceScorer, center_crop_pixels, model_device_dtype, needed

NAME = "image_reward"
DEFAULT_MODELS = {"image_reward": "imagereward-v1.0", "bert_tokenizer": "bert-base-uncased-tokenizer"}
MODEL_ROLES = {"image_reward": "rewards", "bert_tokenizer": "rewards"}  # role -> model folder
OPTION_KEYS = dict(COMMON_OPTIONS)
SCORE_NAMES = [NAME]  # the scores this reward produces


def needed_models(models: dict | None = None) -> tuple[dict[str, str], dict]:
    """The model each role loads (defaults filled in) and the typed options, checked before loading."""
    return needed(NAME, models, DEFAULT_MODELS, OPTION_KEYS)
MEAN = 0.16717362830052426
STD = 1.0333394966054072
MAX_TOKENS = 35
CHECKPOINT_NAMES = ("ImageReward.pt", "ImageReward.safetensors", "model.safetensors")


class ImageRewardModel(torch.nn.Module):
    """BLIP vision tower + cross-attending BERT + MLP head; ``forward`` returns standardised rewards ``[B]``."""

    def __init__(self, vision, text, mlp: ScoreMLP, mean: float = MEAN, std: float = STD):
        super().__init__()
        self.vision, self.text, self.mlp = vision, text, mlp
        self.mean, self.std = float(mean), float(std)

    @property
    def image_size(self) -> int:
        return int(self.vision.config.image_size)

    def forward(self, pixel_values, input_ids, attention_mask):
        image_embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
                        encoder_attention_mask=image_atts)
        cls = out.last_hidden_state[:, 0, :]
        return ((self.mlp(cls.to(next(self.mlp.parameters()).dtype)).float() - self.mean) / self.std)[:, 0]


# ---------------------------------------------------------------- key maps
_VISION_SUB = [("patch_embed.proj.", "embeddings.patch_embedding."), ("norm1.", "layer_norm1."),
               ("norm2.", "layer_norm2."), ("attn.qkv.", "self_attn.qkv."), ("attn.proj.", "self_attn.projection.")]


def blip_vision_to_hf(sd: dict[str, torch.Tensor], prefix: str = "blip.visual_encoder.") -> dict[str, torch.Tensor]:
    """BLIP's timm-style ViT (``cls_token``, ``pos_embed``, ``blocks.N.*``, ``norm``) → ``BlipVisionModel`` keys."""
    out = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        k = k[len(prefix):]
        if k == "cls_token":
            out["embeddings.class_embedding"] = v
        elif k == "pos_embed":
            out["embeddings.position_embedding"] = v
        elif k in ("norm.weight", "norm.bias"):
            out["post_layernorm." + k.split(".")[1]] = v
        elif k.startswith("patch_embed."):
            out[k.replace("patch_embed.proj.", "embeddings.patch_embedding.")] = v
        elif m := re.match(r"blocks\.(\d+)\.(.+)$", k):
            i, rest = m.groups()
            for a, b in _VISION_SUB:
                if rest.startswith(a):
                    rest = b + rest[len(a):]
                    break
            out[f"encoder.layers.{i}.{rest}"] = v
        else:
            out[k] = v  # unknown: reported by the strict load
    return out


def blip_text_to_hf(sd: dict[str, torch.Tensor], prefix: str = "blip.text_encoder.") -> dict[str, torch.Tensor]:
    """BLIP med.py BERT keys are ``BlipTextModel``'s own: strip the prefix (and the pooler, which is unused)."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and ".pooler." not in f".{k}"}


def vision_config_from(vision_sd: dict[str, torch.Tensor]) -> dict:
    try:
        width, _, patch, _ = vision_sd["embeddings.patch_embedding.weight"].shape
        n_pos = vision_sd["embeddings.position_embedding"].shape[1]
        layers = 1 + max(int(m.group(1)) for k in vision_sd if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
        mlp = vision_sd["encoder.layers.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError, IndexError) as e:
        raise ValueError(f"Not an ImageReward/BLIP checkpoint: no BLIP ViT under blip.visual_encoder ({e}).") from None
    grid = int(round((n_pos - 1) ** 0.5))
    return dict(hidden_size=int(width), intermediate_size=int(mlp), num_hidden_layers=layers,
                num_attention_heads=max(1, int(width) // 64), image_size=grid * int(patch), patch_size=int(patch),
                hidden_act="gelu", layer_norm_eps=1e-6)


def text_config_from(med: dict, encoder_width: int) -> dict:
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
            "max_position_embeddings", "layer_norm_eps", "pad_token_id", "hidden_dropout_prob",
            "attention_probs_dropout_prob")
    cfg = {k: med[k] for k in keys if k in med}
    cfg.update(encoder_hidden_size=int(encoder_width), is_decoder=True,  # is_decoder builds the cross-attention
               bos_token_id=None, eos_token_id=None, sep_token_id=None)    # not used for scoring
    return cfg


def _checkpoint_in(path: Path) -> tuple[Path, Path]:
    folder = path if path.is_dir() else path.parent
    ckpt = path if path.is_file() else next((folder / n for n in CHECKPOINT_NAMES if (folder / n).is_file()), None)
    if ckpt is None:
        raise FileNotFoundError(f"No ImageReward checkpoint in {folder} (expected {CHECKPOINT_NAMES[0]}).")
    med = folder / "med_config.json"
    if not med.is_file():
        raise FileNotFoundError(f"{folder} has no med_config.json (ImageReward's text-encoder config; it comes with "
                                f"ImageReward.pt: python -m rewardloop download imagereward-v1.0).")
    return ckpt, med


def build_image_reward(sd: dict[str, torch.Tensor], med: dict, dtype: torch.dtype = torch.float32) -> ImageRewardModel:
    """An :class:`ImageRewardModel` holding the weights of an ``ImageReward.pt`` state dict."""
    from transformers import BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel
    sd = {re.sub(r"^module\.", "", k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    vision_sd, text_sd = blip_vision_to_hf(sd), blip_text_to_hf(sd)
    vcfg = BlipVisionConfig(**vision_config_from(vision_sd))
    tcfg = BlipTextConfig(**text_config_from(med, vcfg.hidden_size))
    stray = [k for k in sd if not k.startswith(("blip.", "mlp."))]  # other blip.* parts (projections) are unused
    if stray:
        raise ValueError(f"Unexpected keys in the ImageReward checkpoint (e.g. {stray[0]}): is it ImageReward.pt?")
    with empty_init(dtype):
        vision = BlipVisionModel(vcfg)
        text = BlipTextModel(tcfg, add_pooling_layer=False)
    load_weights_strict(vision, vision_sd, "ImageReward vision tower")
    load_weights_strict(text, text_sd, "ImageReward text encoder")
    mlp = ScoreMLP.from_state_dict({k: v for k, v in sd.items() if k.startswith("mlp.")})
    if mlp.in_features != tcfg.hidden_size:
        raise ValueError(f"ImageReward head takes {mlp.in_features}-d features but the text encoder gives "
                         f"{tcfg.hidden_size}-d.")
    return ImageRewardModel(vision, text, mlp).to(dtype).eval()


def load_image_reward(name: str | os.PathLike, dtype=None, device=None) -> ModelHandle:
    """ImageReward (a folder with ``ImageReward.pt`` + ``med_config.json``, or the ``.pt`` itself) → handle."""
    r = _resolve(name, "rewards")
    dtype, device = _dtype_device(dtype, device)

    def load():
        ckpt, med = _checkpoint_in(r.path)
        model = build_image_reward(load_state_dict(ckpt), json.loads(med.read_text()), dtype)
        return ModelHandle("image_reward", str(name), r.path, _place(model, device), None, dtype, device,
                           {"checkpoint": str(ckpt)})

    return cached("image_reward", r.path, load, dtype, device)


def blip_tokenizer(handle: ModelHandle):
    """bert-base-uncased plus BLIP's [DEC] (bos) and [ENC] tokens, as ImageReward's ``init_tokenizer`` makes it."""
    tok = handle.processor
    if "[ENC]" not in tok.get_vocab():
        tok.add_special_tokens({"bos_token": "[DEC]"})
        tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


# ---------------------------------------------------------------- scorer
class ImageRewardScorer(PreferenceScorer):
    name = NAME
    value_range = None  # standardised, unbounded

    def __init__(self, model: ModelHandle, tokenizer: ModelHandle, batch_size: int = 16, keep_loaded: bool = False):
        super().__init__([model], batch_size, keep_loaded)
        self.model, self.tokenizer = model, blip_tokenizer(tokenizer)
        vocab = int(model.model.text.config.vocab_size)
        if len(self.tokenizer) > vocab:
            raise ValueError(f"The tokenizer {tokenizer.name} has {len(self.tokenizer)} tokens but ImageReward's text "
                             f"encoder knows {vocab}: use bert-base-uncased (bert-base-uncased-tokenizer).")

    def score_batch(self, images, prompts, prepared):
        m = self.model.model
        device, dtype = model_device_dtype(m)
        enc = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=MAX_TOKENS,
                             return_tensors="pt")
        px = center_crop_pixels(images, m.image_size).to(device, dtype)
        return m(px, enc["input_ids"].to(device), enc["attention_mask"].to(device))


def make_scorer(models: dict | None = None, device=None, dtype=None, batch_size: int = 16, keep_loaded: bool = False,
                **_ignored) -> ImageRewardScorer:
    """Registry factory. Roles: ``image_reward`` (default imagereward-v1.0), ``bert_tokenizer`` (default
    bert-base-uncased-tokenizer). Options: batch_size, keep_loaded."""
    roles, given = needed_models(models)
    opts = {"batch_size": batch_size, "keep_loaded": keep_loaded, **given}
    model = load_image_reward(roles["image_reward"], dtype=dtype, device=device)
    return ImageRewardScorer(model, load_tokenizer(roles["bert_tokenizer"], "rewards"), **opts)
