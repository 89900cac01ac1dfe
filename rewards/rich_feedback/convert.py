"""Convert the first author's public RAHF checkpoint (github.com/youweiliang/RichHF) into our model folder.

The released file is a plain PyTorch ``state_dict`` of the re-implementation's ``RAHF`` module
(``torch.save(model.state_dict())``, read back there into ``RAHF.load_state_dict``). Its key
names follow that module's attributes, read from the public ``model.py`` (facts only, no code copied):

* ``vit.*``: a transformers ``ViTModel`` (``google/vit-large-patch16-384``, created with its pooling layer;
  the pooler is unused and dropped here);
* ``t5.*``: a transformers ``T5ForConditionalGeneration`` (``t5-base``);
* ``visual_token_projection``: the Linear ViT hidden → T5 d_model;
* ``heatmap_predictor.<type>.*`` / ``score_predictor.<type>.*`` (multi-head) or ``heatmap_predictor.*`` /
  ``score_predictor.*`` (augmented prompt, one shared head), whose layers sit in ``nn.Sequential`` containers
  (indices below; ReLU / Sigmoid entries have no weights).

The mapping is the table :data:`KEY_RULES` (regular expression on their key → replacement in ours), easy to
correct if a future checkpoint differs. Sizes (ViT width / depth / patch / image size, T5 sizes, head channels)
are read from tensor shapes; the one thing shapes cannot tell, the ViT attention-head count, comes from a
table by width (1024 → 16, 768 → 12, ...) or ``vit_heads``.

Licence: the checkpoint is CC BY-NC 4.0 (non-commercial); the converted folder records it in config.json,
and loading it prints the note.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import torch

from .model import NC_LICENSE_NOTE, RAHF, RAHFConfig, save_rahf

log = logging.getLogger("rewardloop")

LICENSE = "CC BY-NC 4.0 (non-commercial) - RichHF RAHF weights by Youwei Liang"
SOURCE = "youweiliang/RichHF (multi-head ViT-L/16-384 + T5-base), converted by RewardLoop"

# Inside a heatmap head: their Sequential indices -> our attribute names.
_HEATMAP = [
    (r"conv_layers\.0\.", "stem_conv1."), (r"conv_layers\.2\.", "stem_norm1."),
    (r"conv_layers\.3\.", "stem_conv2."), (r"conv_layers\.5\.", "stem_norm2."),
    (r"deconv_layers\.(\d+)\.0\.", r"up.\1.deconv."), (r"deconv_layers\.(\d+)\.1\.", r"up.\1.norm."),
    (r"conv_layers2\.(\d+)\.0\.", r"up.\1.conv1."), (r"conv_layers2\.(\d+)\.1\.", r"up.\1.norm1."),
    (r"conv_layers2\.(\d+)\.3\.", r"up.\1.conv2."), (r"conv_layers2\.(\d+)\.4\.", r"up.\1.norm2."),
    (r"last_conv1\.", "out_conv1."), (r"last_conv2\.", "out_conv2."),
]
# Inside a score head: conv k sits at index 3k, its norm at 3k+1 (ReLU at 3k+2); dense layers at 0, 2, 4.
_SCORE = [
    (r"conv_layers\.(\d+)\.", None),  # handled by _score_conv (index arithmetic)
    (r"linear_layers\.0\.", "fc1."), (r"linear_layers\.2\.", "fc2."), (r"linear_layers\.4\.", "fc3."),
]
# Top level: (their prefix regex, our prefix, inner table).
KEY_RULES = [
    (r"vit\.pooler\.", None, None),                       # unused pooling layer: dropped
    (r"vit\.", "image_encoder.", None),
    (r"t5\.", "t5.", None),
    (r"visual_token_projection\.", "image_proj.", None),
    (r"heatmap_predictor\.(conv_layers2|conv_layers|deconv_layers|last_conv1|last_conv2)",
     "heatmap_heads.shared.", "heatmap"),                 # augmented prompt: one shared head
    (r"heatmap_predictor\.([A-Za-z_]+)\.", r"heatmap_heads.\1.", "heatmap"),
    (r"score_predictor\.(conv_layers|linear_layers)", "score_heads.shared.", "score"),
    (r"score_predictor\.([A-Za-z_]+)\.", r"score_heads.\1.", "score"),
]
_VIT_HEADS = {1280: 16, 1024: 16, 768: 12, 384: 6, 192: 3}

# The checkpoint was written with transformers 4.x, whose ViT names differ from transformers 5.x. Applied (after
# the prefix rules) only when the installed ViTModel uses the new names.
VIT_V4_TO_V5 = [
    (r"image_encoder\.encoder\.layer\.(\d+)\.", r"image_encoder.layers.\1."),
    (r"(image_encoder\.layers\.\d+)\.attention\.attention\.query\.", r"\1.attention.q_proj."),
    (r"(image_encoder\.layers\.\d+)\.attention\.attention\.key\.", r"\1.attention.k_proj."),
    (r"(image_encoder\.layers\.\d+)\.attention\.attention\.value\.", r"\1.attention.v_proj."),
    (r"(image_encoder\.layers\.\d+)\.attention\.output\.dense\.", r"\1.attention.o_proj."),
    (r"(image_encoder\.layers\.\d+)\.intermediate\.dense\.", r"\1.mlp.fc1."),
    (r"(image_encoder\.layers\.\d+)\.output\.dense\.", r"\1.mlp.fc2."),
]


def vit_v4_to_v5(key: str) -> str:
    for pat, rep in VIT_V4_TO_V5:
        key = re.sub("^" + pat, rep, key)
    return key


def _inner(rest: str, table: str) -> str | None:
    if table == "heatmap":
        for pat, rep in _HEATMAP:
            m = re.match(pat, rest)
            if m:
                return m.expand(rep) + rest[m.end():]
        return None
    m = re.match(r"conv_layers\.(\d+)\.", rest)
    if m:
        i = int(m.group(1))
        if i % 3 == 2:
            return None
        return f"convs.{i // 3}.{'conv' if i % 3 == 0 else 'norm'}." + rest[m.end():]
    for pat, rep in _SCORE[1:]:
        m = re.match(pat, rest)
        if m:
            return rep + rest[m.end():]
    return None


def map_key(key: str) -> str | None:
    """Their key → our key; ``None`` for keys that are dropped on purpose; raises KeyError for unknown keys."""
    for pat, rep, table in KEY_RULES:
        m = re.match(pat, key)
        if not m:
            continue
        if rep is None:
            return None
        if table is None:
            return m.expand(rep) + key[m.end():]
        if rep.endswith("shared."):            # the shared-head rules keep the matched inner prefix
            prefix, rest = rep, key[len(key.split(".")[0]) + 1:]
        else:
            prefix, rest = m.expand(rep), key[m.end():]
        inner = _inner(rest, table)
        if inner is None:
            raise KeyError(key)
        return prefix + inner
    raise KeyError(key)


def unwrap_checkpoint(obj) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or one wrapped in {'model' | 'state_dict' | 'model_state_dict': ...}; strip
    the ``module.`` prefix that DistributedDataParallel adds."""
    if isinstance(obj, dict):
        for k in ("model", "state_dict", "model_state_dict"):
            if k in obj and isinstance(obj[k], dict):
                obj = obj[k]
                break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ValueError("The checkpoint holds no tensors: is this the RichHF RAHF model file (model.pt)?")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def convert_state_dict(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """``(our_state_dict, unmatched_keys, dropped_keys)``."""
    out, unmatched, dropped = {}, [], []
    for k, v in sd.items():
        try:
            nk = map_key(k)
        except KeyError:
            unmatched.append(k)
            continue
        if nk is None:
            dropped.append(k)
        else:
            out[nk] = v
    return out, unmatched, dropped


def _count(sd, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd for m in [rx.match(k)] if m})


def config_from_state_dict(sd: dict[str, torch.Tensor], vit_heads: int | None = None) -> RAHFConfig:
    """Rebuild the :class:`RAHFConfig` from tensor shapes of a RichHF-layout state dict."""
    need = ["vit.embeddings.patch_embeddings.projection.weight", "vit.embeddings.position_embeddings",
            "t5.shared.weight", "t5.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise ValueError(f"Not a RichHF RAHF checkpoint: missing {', '.join(missing)}.")
    proj = sd["vit.embeddings.patch_embeddings.projection.weight"]
    hidden, patch = int(proj.shape[0]), int(proj.shape[-1])
    n_pos = int(sd["vit.embeddings.position_embeddings"].shape[1]) - 1
    image_size = int(round(n_pos ** 0.5)) * patch
    vit = dict(hidden_size=hidden, num_hidden_layers=_count(sd, r"vit\.encoder\.layer\.(\d+)\."),
               num_attention_heads=int(vit_heads or _VIT_HEADS.get(hidden, max(1, hidden // 64))),
               intermediate_size=int(sd.get("vit.encoder.layer.0.intermediate.dense.weight",
                                            sd.get("vit.layers.0.mlp.fc1.weight")).shape[0]),
               image_size=image_size, patch_size=patch,
               qkv_bias=("vit.encoder.layer.0.attention.attention.query.bias" in sd
                         or "vit.layers.0.attention.q_proj.bias" in sd), layer_norm_eps=1e-12)
    if not vit["num_hidden_layers"]:
        vit["num_hidden_layers"] = _count(sd, r"vit\.layers\.(\d+)\.")
    rel = sd["t5.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    vocab, d_model = (int(x) for x in sd["t5.shared.weight"].shape)
    heads = int(rel.shape[1])
    gated = "t5.encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in sd
    wi = sd["t5.encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"]
    lm = sd.get("t5.lm_head.weight")
    shared = sd["t5.shared.weight"]
    tied = lm is None or (lm.shape == shared.shape and (lm.is_meta or torch.equal(lm, shared)))
    t5 = dict(vocab_size=vocab, d_model=d_model,
              d_kv=int(sd["t5.encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]) // heads,
              d_ff=int(wi.shape[0]), num_layers=_count(sd, r"t5\.encoder\.block\.(\d+)\."),
              num_decoder_layers=_count(sd, r"t5\.decoder\.block\.(\d+)\."), num_heads=heads,
              relative_attention_num_buckets=int(rel.shape[0]), dropout_rate=0.1,
              feed_forward_proj="gated-gelu" if gated else "relu", pad_token_id=0, eos_token_id=1,
              decoder_start_token_id=0, tie_word_embeddings=bool(tied))
    multi = "heatmap_predictor.conv_layers.0.weight" not in sd
    hm_types = sorted({k.split(".")[1] for k in sd if k.startswith("heatmap_predictor.")}) if multi else []
    sc_types = sorted({k.split(".")[1] for k in sd if k.startswith("score_predictor.")}) if multi else []
    hp = "heatmap_predictor." + (hm_types[0] + "." if multi else "")
    sp = "score_predictor." + (sc_types[0] + "." if multi else "")
    n_up = _count(sd, re.escape(hp) + r"deconv_layers\.(\d+)\.")
    n_sc = _count(sd, re.escape(sp) + r"conv_layers\.(\d+)\.") // 2        # conv + norm per layer
    from . import HEATMAP_TYPES, SCORE_TYPES
    order = lambda found, ref: tuple([t for t in ref if t in found] + [t for t in found if t not in ref])  # noqa
    return RAHFConfig(
        vit=vit, t5=t5, multi_head=multi,
        score_types=order(sc_types, SCORE_TYPES) if multi else SCORE_TYPES,
        heatmap_types=order(hm_types, HEATMAP_TYPES) if multi else HEATMAP_TYPES,
        heatmap_stem=(int(sd[hp + "conv_layers.0.weight"].shape[0]), int(sd[hp + "conv_layers.3.weight"].shape[0])),
        heatmap_up=tuple(int(sd[f"{hp}deconv_layers.{i}.0.weight"].shape[1]) for i in range(n_up)),
        heatmap_last=int(sd[hp + "last_conv1.weight"].shape[0]),
        score_convs=tuple(int(sd[f"{sp}conv_layers.{3 * i}.weight"].shape[0]) for i in range(n_sc)),
        score_fc=(int(sd[sp + "linear_layers.0.weight"].shape[0]), int(sd[sp + "linear_layers.2.weight"].shape[0])),
        max_text_tokens=512, license=LICENSE, source=SOURCE)


def convert_to_model(sd: dict[str, torch.Tensor], vit_heads: int | None = None) -> tuple[RAHF, dict]:
    """Build our RAHF from a RichHF state dict. Raises when any key is unmatched or any weight is missing."""
    sd = unwrap_checkpoint(sd)
    cfg = config_from_state_dict(sd, vit_heads)
    ours, unmatched, dropped = convert_state_dict(sd)
    if unmatched:
        raise ValueError(f"{len(unmatched)} checkpoint keys have no rule in KEY_RULES: {unmatched[:8]}")
    model = RAHF(cfg)
    expected = model.state_dict()
    if any(k.startswith("image_encoder.layers.") for k in expected):
        ours = {vit_v4_to_v5(k): v for k, v in ours.items()}
    shared = ours.get("t5.shared.weight")
    for alias in ("t5.encoder.embed_tokens.weight", "t5.decoder.embed_tokens.weight"):
        if alias in expected and alias not in ours and shared is not None:
            ours[alias] = shared
    if "t5.lm_head.weight" in expected and "t5.lm_head.weight" not in ours and cfg.t5["tie_word_embeddings"]:
        ours["t5.lm_head.weight"] = shared
    bad = [k for k in ours if k in expected and tuple(ours[k].shape) != tuple(expected[k].shape)]
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(set(ours) - set(expected))
    if missing or unexpected or bad:
        raise ValueError(f"Converted weights do not fit the model: missing {missing[:8]}, unexpected "
                         f"{unexpected[:8]}, wrong shape {bad[:8]}.")
    model.load_state_dict(ours, strict=True)
    return model.eval(), {"converted": len(ours), "dropped": dropped, "unmatched": unmatched,
                          "config": cfg}


def load_tokenizer(tokenizer: str | os.PathLike | None):
    from transformers import AutoTokenizer
    tries = [tokenizer] if tokenizer else ["google-t5/t5-base", "t5-base"]
    for t in tries:
        try:
            return AutoTokenizer.from_pretrained(str(t), local_files_only=True)
        except Exception as e:  # noqa: BLE001 - report below
            err = e
    raise FileNotFoundError(
        f"No T5 tokenizer found ({'; '.join(str(t) for t in tries)}): give --tokenizer with the t5-base folder "
        f"(spiece.model or tokenizer.json), e.g. from `huggingface-cli download google-t5/t5-base "
        f"--include 'spiece.model' 'tokenizer*.json' '*config.json'`. ({type(err).__name__})")


def convert_checkpoint(src: str | os.PathLike, out: str | os.PathLike, tokenizer=None,
                       vit_heads: int | None = None, overwrite: bool = False) -> dict:
    """Read the RichHF ``.pt`` / ``.safetensors`` file and write our model folder ``out`` (atomic)."""
    from ...weights.safe_load import load_state_dict
    print(NC_LICENSE_NOTE, file=sys.stderr)
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"{src} does not exist: give the RichHF checkpoint file (model.pt).")
    tok = tokenizer if hasattr(tokenizer, "save_pretrained") else load_tokenizer(tokenizer)
    model, report = convert_to_model(load_state_dict(src), vit_heads)
    if len(tok) > model.config.t5["vocab_size"]:
        raise ValueError(f"The tokenizer has {len(tok)} tokens but the checkpoint's T5 only {model.config.t5['vocab_size']}:"
                         " use the t5-base tokenizer.")
    save_rahf(model, tok, out, overwrite=overwrite,
              extra_files={"LICENSE.txt": NC_LICENSE_NOTE + "\nhttps://creativecommons.org/licenses/by-nc/4.0/\n"})
    report["out"] = str(out)
    return report
