"""Text–text similarity: embeddings from a text-encoder handle and cosine similarity.

Two encoder families come from :func:`weights.loaders.load_text_encoder` (``handle.extra["family"]``):

* ``"clip"``: a CLIP model folder; the text tower's projected features (``get_text_features``), texts
  truncated at the tokenizer's max length (77 tokens for OpenAI CLIP). FineRewards uses CLIP ViT-L/14 with
  the HPS-v1 weights (``hpc.pt``); :func:`load_text_encoder` applies such a file over the CLIP model.
* ``"sentence"``: a sentence-transformers folder (e.g. all-MiniLM-L6-v2); mean or CLS pooling of the last
  hidden state as its ``1_Pooling`` config says, truncated at ``max_seq_length``.

Embeddings are always returned L2-normalised (float32, on the CPU), so a dot product is the cosine.
Repeated texts in one call are encoded once.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Sequence

import torch

from ..weights.cache import cached
from ..weights.hf_compat import transformers_dtype
from ..weights.loaders import ModelHandle, _dtype_device, is_sentence_transformers_dir
from ..weights.loaders import load_text_encoder as _load_text_encoder
from ..weights.registry import resolve
from ..weights.safe_load import load_state_dict

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


# ---------------------------------------------------------------- loading (with optional HPS-v1 weights)
def load_text_encoder(name: str, dtype=None, device=None, weights: str | os.PathLike | None = None) -> ModelHandle:
    """A text encoder handle; ``weights`` optionally overwrites a CLIP model's text tower.

    ``weights`` is a ``.pt``/``.pth``/``.safetensors`` file holding a CLIP state dict, either in OpenAI-CLIP
    key layout (``transformer.resblocks.N.…``, ``token_embedding``, ``ln_final``, ``text_projection``; the
    HPS-v1 checkpoint ``hpc.pt`` of FineRewards, stored as ``{"state_dict": …}``, possibly with ``module.``
    prefixes) or in Hugging Face ``CLIPModel`` layout. It is loaded weights-only (never runs pickled code).
    Only the text tower (and ``logit_scale``) is applied; vision weights in the file are ignored because
    only text embeddings are used. The result is cached separately from the plain model.
    """
    if weights in (None, "", "none"):
        return _load_text_encoder(name, dtype=dtype, device=device)
    r = resolve(name, folder="clip")
    wpath = _resolve_weights(weights)
    if is_sentence_transformers_dir(r.path):
        raise ValueError(f"Extra CLIP weights ({wpath.name}) apply only to a CLIP text encoder, but {name!r} is a "
                         "sentence-transformers model: pick a CLIP model (e.g. clip-vit-large-patch14) or no "
                         "weights file.")
    dtype, device = _dtype_device(dtype, device)
    st = wpath.stat()

    def load():
        from transformers import AutoTokenizer, CLIPModel
        model = CLIPModel.from_pretrained(r.path, local_files_only=True, **transformers_dtype(torch.float32))
        n = apply_clip_text_weights(model, load_state_dict(wpath))
        model = model.to(device=device, dtype=dtype).eval()
        tok = AutoTokenizer.from_pretrained(r.path, local_files_only=True)
        return ModelHandle("text_encoder", f"{name}+{wpath.name}", r.path, model, tok, dtype, device,
                           {"family": "clip", "weights": str(wpath), "weights_tensors": n})

    return cached("text_encoder", r.path, load, dtype, device, weights=f"{wpath}:{st.st_size}:{st.st_mtime_ns}")


def _resolve_weights(weights: str | os.PathLike) -> Path:
    p = Path(weights).expanduser()
    if p.is_file():
        return p
    from .. import bridge
    for base in bridge.folder_search_paths("clip"):
        if (base / str(weights)).is_file():
            return base / str(weights)
    raise FileNotFoundError(f"CLIP weights file {str(weights)!r} not found (give a path, or put it into models/clip/; "
                            "FineRewards' HPS-v1 file is hpc.pt).")


def openai_clip_text_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an OpenAI-CLIP (``clip`` package / HPS-v1) state dict's text tower to ``CLIPModel`` keys."""
    out: dict[str, torch.Tensor] = {}
    simple = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
              "positional_embedding": "text_model.embeddings.position_embedding.weight",
              "ln_final.weight": "text_model.final_layer_norm.weight",
              "ln_final.bias": "text_model.final_layer_norm.bias",
              "logit_scale": "logit_scale"}
    sub = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
           "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for k, v in sd.items():
        if k in simple:
            out[simple[k]] = v
        elif k == "text_projection":
            out["text_projection.weight"] = v.t().contiguous()  # OpenAI: x @ P; HF Linear: x @ W.T
        elif m := re.match(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", k):
            i, kind = m.groups()
            base = f"text_model.encoder.layers.{i}.self_attn"
            q, kk, vv = v.chunk(3, dim=0)
            out[f"{base}.q_proj.{kind}"], out[f"{base}.k_proj.{kind}"], out[f"{base}.v_proj.{kind}"] = q, kk, vv
        elif m := re.match(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$", k):
            i, mod, kind = m.groups()
            if mod in sub:
                out[f"text_model.encoder.layers.{i}.{sub[mod]}.{kind}"] = v
    return out


def apply_clip_text_weights(model, sd: dict[str, torch.Tensor]) -> int:
    """Copy a CLIP state dict's text tower over ``model`` (a ``CLIPModel``); returns the tensors applied.

    Raises a clear error when the file is no CLIP checkpoint or its shapes do not match the model.
    """
    sd = {re.sub(r"^(module\.|model\.)", "", k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("transformer.resblocks.") for k in sd):
        sd = openai_clip_text_to_hf(sd)
    own = model.state_dict()
    wanted = [k for k in own if k.startswith(("text_model.", "text_projection."))]
    new = {k: v for k, v in sd.items() if k in own and (k in wanted or k == "logit_scale")}
    missing = [k for k in wanted if k not in new and not k.endswith("position_ids")]
    if not new or len(missing) > len(wanted) // 2:
        raise ValueError(f"The weights file holds no CLIP text tower matching this model ({len(missing)} of "
                         f"{len(wanted)} text tensors missing, e.g. {missing[:2]}).")
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in new.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"The weights file does not fit this CLIP model (e.g. {bad[0]}): ViT-L/14 weights such "
                         "as HPS-v1's hpc.pt need the clip-vit-large-patch14 model.")
    with torch.no_grad():
        for k, v in new.items():
            own[k].copy_(v.to(own[k].dtype))
    return len(new)


# ---------------------------------------------------------------- embeddings
def _max_length(encoder: ModelHandle) -> int:
    tok = encoder.processor
    limits = []
    if getattr(tok, "model_max_length", None) and tok.model_max_length < 100_000:
        limits.append(int(tok.model_max_length))
    if encoder.extra.get("family") == "sentence":
        cfg = Path(encoder.path) / "sentence_bert_config.json"
        if cfg.is_file():
            try:
                limits.append(int(json.loads(cfg.read_text()).get("max_seq_length") or 0) or 10**9)
            except (ValueError, TypeError):
                pass
    text_cfg = getattr(encoder.model.config, "text_config", encoder.model.config)
    if getattr(text_cfg, "max_position_embeddings", None):
        limits.append(int(text_cfg.max_position_embeddings))
    return min(limits) if limits else 512


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def _encode_batch(encoder: ModelHandle, texts: list[str], max_length: int) -> torch.Tensor:
    model, tok = encoder.model, encoder.processor
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    enc = {k: v.to(_model_device(model)) for k, v in enc.items()}
    if encoder.extra.get("family") == "sentence":
        hidden = model(**enc).last_hidden_state.float()
        if encoder.extra.get("pooling") == "cls":
            emb = hidden[:, 0]
        else:
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    else:
        feats = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc.get("attention_mask"))
        emb = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
        emb = emb.float()
    return emb.cpu()


def embed_texts(encoder: ModelHandle, texts: Sequence[str], batch_size: int = 64,
                normalize: bool = True) -> torch.Tensor:
    """``[N, D]`` float32 CPU embeddings of ``texts`` (L2-normalised by default), ``batch_size`` per forward.

    Identical texts are encoded once. The empty string is a valid text (it encodes the special tokens only).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    texts = [str(t) for t in texts]
    if not texts:
        return torch.zeros(0, 0)
    unique = list(dict.fromkeys(texts))
    max_len = _max_length(encoder)
    parts = [_encode_batch(encoder, unique[i:i + batch_size], max_len) for i in range(0, len(unique), batch_size)]
    emb = torch.cat(parts)
    if normalize:
        emb = torch.nn.functional.normalize(emb, dim=-1)
    index = {t: i for i, t in enumerate(unique)}
    return emb[[index[t] for t in texts]]


def _unit(x) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float32)
    return torch.nn.functional.normalize(x, dim=-1)


def cosine_matrix(a, b) -> torch.Tensor:
    """``[N, M]`` cosine similarities between the rows of ``a`` ``[N, D]`` and ``b`` ``[M, D]``."""
    return _unit(a) @ _unit(b).T


def paired_cosine(a, b) -> torch.Tensor:
    """``[N]`` cosine similarity of row ``i`` of ``a`` with row ``i`` of ``b``."""
    a, b = _unit(a), _unit(b)
    if a.shape != b.shape:
        raise ValueError(f"Paired cosine needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}.")
    return (a * b).sum(-1)


def text_similarity(encoder: ModelHandle, texts_a: Sequence[str], texts_b: Sequence[str],
                    batch_size: int = 64) -> torch.Tensor:
    """Cosine similarity of ``texts_a[i]`` and ``texts_b[i]`` under ``encoder`` (all texts embedded together)."""
    if len(texts_a) != len(texts_b):
        raise ValueError(f"Got {len(texts_a)} and {len(texts_b)} texts: they are compared pairwise.")
    emb = embed_texts(encoder, list(texts_a) + list(texts_b), batch_size=batch_size)
    n = len(texts_a)
    return paired_cosine(emb[:n], emb[n:])
