"""The RAHF network (Rich Automatic Human Feedback), built from transformers' ViT and T5 modules.

Image → ViT (default ViT-L/16 at 384 px) → Linear to T5's d_model → T5 encoder over
``[image tokens ; prompt token embeddings]``. The fused outputs of the image *patch* tokens (CLS dropped) are
reshaped to a ``d_model × n × n`` feature map that feeds

* heatmap heads: two 3x3 conv stem layers, then ``ceil(log2(patch))`` stages of [transposed conv ×2 upsampling +
  residual conv block], two output convs and a sigmoid → a map at the model's image size (0..1);
* score heads: six 3x3 conv layers, flatten, three dense layers and a sigmoid → one score in (0, 1);

and the T5 decoder, reading the encoder outputs of the text tokens, rewrites the prompt with misaligned words
tagged ``_0``. ``multi_head=True``: one heatmap head per heatmap type and one score head per score type (the
re-implementation's released variant). ``multi_head=False`` ("augmented prompt"): one shared heatmap head and
one shared score head; the requested output is written into the text input
(``<output> SCORE: plausibility </output> …``), one encoder pass per output.

Normalisation inside the heads is T5-style RMS norm over channels (no mean, no bias), as in the paper's
re-implementation. A model folder holds ``config.json`` (:class:`RAHFConfig`), ``model.safetensors`` and the
tokenizer files (in ``tokenizer/``); :func:`load_rich_feedback` opens one through the registry (ComfyUI folder ``rich_feedback``)
and the shared model cache.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import HEATMAP_TYPES, SCORE_TYPES

log = logging.getLogger("rewardloop")

MODEL_TYPE = "rewardloop-rahf"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_DIR = "tokenizer"   # tokenizer files live in a sub-folder so AutoTokenizer never reads our config.json
NC_LICENSE_NOTE = ("Licence: the RichHF RAHF weights by Youwei Liang are CC BY-NC 4.0 - non-commercial use only "
                   "(https://github.com/youweiliang/RichHF).")


def _vit_l16_384() -> dict:
    return dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                image_size=384, patch_size=16, qkv_bias=True, layer_norm_eps=1e-12)


def _t5_base() -> dict:
    return dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12,
                num_heads=12, relative_attention_num_buckets=32, dropout_rate=0.1, feed_forward_proj="relu",
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=True)


def upsample_stages(patch_size: int) -> int:
    """Number of ×2 transposed-conv stages that bring the n×n patch grid back to (at least) image size."""
    return max(0, math.ceil(math.log2(max(1, int(patch_size)))))


@dataclass
class RAHFConfig:
    """Everything needed to rebuild the network; stored as ``config.json`` next to the weights."""

    vit: dict = field(default_factory=_vit_l16_384)          # transformers ViTConfig kwargs
    t5: dict = field(default_factory=_t5_base)               # transformers T5Config kwargs
    multi_head: bool = True
    score_types: tuple = SCORE_TYPES
    heatmap_types: tuple = HEATMAP_TYPES
    heatmap_stem: tuple | None = None       # channels of the two stem convs; None = (d, d/2)
    heatmap_up: tuple | None = None         # channels per upsampling stage; None = derived from d and patch
    heatmap_last: int | None = None         # channels of the first output conv; None = last stage's
    score_convs: tuple | None = None        # channels of the six score convs; None = d, d/2, d/4, d/8, d/16, d/64
    score_fc: tuple = (512, 128)            # hidden sizes of the dense layers
    image_mean: tuple = (0.5, 0.5, 0.5)
    image_std: tuple = (0.5, 0.5, 0.5)
    max_text_tokens: int = 128
    max_new_tokens: int = 100
    license: str = ""
    source: str = ""

    # ------------------------------------------------------------ derived sizes
    @property
    def image_size(self) -> int:
        return int(self.vit.get("image_size", 224))

    @property
    def patch_size(self) -> int:
        return int(self.vit.get("patch_size", 16))

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def d_model(self) -> int:
        return int(self.t5.get("d_model", 512))

    def resolved(self) -> "RAHFConfig":
        """A copy with every ``None`` channel list filled in from d_model and the patch size."""
        d = self.d_model
        c = dataclasses.replace(self)
        if c.heatmap_stem is None:
            c.heatmap_stem = (d, max(4, d // 2))
        if c.heatmap_up is None:
            n = upsample_stages(self.patch_size)
            c.heatmap_up = tuple(max(4, d >> min(2, (i + 1) // 2)) for i in range(n))
        if c.heatmap_last is None:
            c.heatmap_last = (c.heatmap_up[-1] if c.heatmap_up else c.heatmap_stem[-1])
        if c.score_convs is None:
            c.score_convs = tuple(max(1, d // k) for k in (1, 2, 4, 8, 16, 64))
        c.heatmap_stem, c.heatmap_up = tuple(c.heatmap_stem), tuple(c.heatmap_up)
        c.score_convs, c.score_fc = tuple(c.score_convs), tuple(c.score_fc)
        c.score_types, c.heatmap_types = tuple(c.score_types), tuple(c.heatmap_types)
        return c

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
        return {"model_type": MODEL_TYPE, **d}

    @classmethod
    def from_dict(cls, d: dict) -> "RAHFConfig":
        if d.get("model_type") not in (None, MODEL_TYPE):
            raise ValueError(f"config.json has model_type {d.get('model_type')!r}, not a RewardLoop RAHF model "
                             f"({MODEL_TYPE!r}). Convert a RichHF checkpoint with "
                             "`python -m rewardloop convert-rich-feedback`.")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)

    def save(self, folder: str | os.PathLike) -> None:
        Path(folder, CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "RAHFConfig":
        p = Path(folder, CONFIG_NAME)
        if not p.is_file():
            raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}: it is not a RAHF model folder.")
        return cls.from_dict(json.loads(p.read_text()))


# ---------------------------------------------------------------- heads
class RMSNorm2d(nn.Module):
    """T5-style layer norm over the channels of a feature map: x / rms(x) * scale (no mean, no bias)."""

    def __init__(self, channels: int, eps: float = 1e-8):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().square().mean(dim=1, keepdim=True)
        return (x * (var + self.eps).rsqrt().to(x.dtype)) * self.scale


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1)


class UpBlock(nn.Module):
    """×2 transposed conv + norm + ReLU, then a residual block of two conv3x3 + norm."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(cin, cout, kernel_size=3, stride=2, padding=1, output_padding=1)
        self.norm = RMSNorm2d(cout)
        self.conv1, self.norm1 = _conv(cout, cout), RMSNorm2d(cout)
        self.conv2, self.norm2 = _conv(cout, cout), RMSNorm2d(cout)

    def forward(self, x):
        x = torch.relu(self.norm(self.deconv(x)))
        y = self.norm2(self.conv2(torch.relu(self.norm1(self.conv1(x)))))
        return torch.relu(x + y)


class HeatmapHead(nn.Module):
    """Feature map ``[B, d, n, n]`` → heatmap ``[B, out, out]`` in 0..1 (sigmoid)."""

    def __init__(self, cin: int, stem: tuple, up: tuple, last: int, out_size: int):
        super().__init__()
        self.stem_conv1, self.stem_norm1 = _conv(cin, stem[0]), RMSNorm2d(stem[0])
        self.stem_conv2, self.stem_norm2 = _conv(stem[0], stem[1]), RMSNorm2d(stem[1])
        chans = [stem[1], *up]
        self.up = nn.ModuleList(UpBlock(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.out_conv1 = _conv(chans[-1], last)
        self.out_conv2 = _conv(last, 1)
        self.out_size = int(out_size)

    def forward(self, x):
        x = self.stem_norm1(torch.relu(self.stem_conv1(x)))
        x = self.stem_norm2(torch.relu(self.stem_conv2(x)))
        for block in self.up:
            x = block(x)
        x = self.out_conv2(torch.relu(self.out_conv1(x)))
        if x.shape[-1] != self.out_size or x.shape[-2] != self.out_size:  # patch size not a power of two
            x = nn.functional.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear",
                                          align_corners=False)
        return torch.sigmoid(x)[:, 0]


class ConvNormReLU(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv, self.norm = _conv(cin, cout), RMSNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.norm(self.conv(x)))


class ScoreHead(nn.Module):
    """Feature map ``[B, d, n, n]`` → score ``[B]`` in (0, 1) (sigmoid)."""

    def __init__(self, cin: int, convs: tuple, fc: tuple, grid: int):
        super().__init__()
        chans = [cin, *convs]
        self.convs = nn.Sequential(*(ConvNormReLU(a, b) for a, b in zip(chans[:-1], chans[1:])))
        self.fc1 = nn.Linear(chans[-1] * grid * grid, fc[0])
        self.fc2 = nn.Linear(fc[0], fc[1])
        self.fc3 = nn.Linear(fc[1], 1)

    def forward(self, x):
        x = self.convs(x).flatten(1)
        x = self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
        return torch.sigmoid(x)[:, 0]


# ---------------------------------------------------------------- the model
class RAHF(nn.Module):
    def __init__(self, config: RAHFConfig, image_encoder: nn.Module | None = None, t5: nn.Module | None = None):
        super().__init__()
        from transformers import T5Config, T5ForConditionalGeneration, ViTConfig, ViTModel
        self.config = config = config.resolved()
        if image_encoder is None:
            image_encoder = ViTModel(ViTConfig(**config.vit), add_pooling_layer=False)
        if t5 is None:
            t5 = T5ForConditionalGeneration(T5Config(**config.t5))
        self.image_encoder = image_encoder
        self.t5 = t5
        d = config.d_model
        self.image_proj = nn.Linear(int(image_encoder.config.hidden_size), d)
        names_hm = config.heatmap_types if config.multi_head else ("shared",)
        names_sc = config.score_types if config.multi_head else ("shared",)
        self.heatmap_heads = nn.ModuleDict({n: HeatmapHead(d, config.heatmap_stem, config.heatmap_up,
                                                           config.heatmap_last, config.image_size)
                                            for n in names_hm})
        self.score_heads = nn.ModuleDict({n: ScoreHead(d, config.score_convs, config.score_fc, config.grid)
                                          for n in names_sc})

    # ------------------------------------------------------------ building blocks
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.image_encoder(pixel_values=pixel_values.to(self.image_proj.weight.dtype))
        return self.image_proj(out.last_hidden_state)            # [B, 1 + n*n, d]

    def fuse(self, image_tokens, input_ids, attention_mask):
        """T5 encoder over [image tokens ; text embeddings]; returns hidden states [B, I + T, d]."""
        text = self.t5.get_input_embeddings()(input_ids)
        mask = torch.cat([torch.ones(image_tokens.shape[:2], dtype=attention_mask.dtype,
                                     device=attention_mask.device), attention_mask], dim=1)
        return self.t5.encoder(inputs_embeds=torch.cat([image_tokens, text], dim=1),
                               attention_mask=mask).last_hidden_state

    def feature_map(self, fused: torch.Tensor, n_image_tokens: int) -> torch.Tensor:
        patches = fused[:, n_image_tokens - self.config.grid ** 2:n_image_tokens]   # drop CLS
        b, n, d = patches.shape
        return patches.transpose(1, 2).reshape(b, d, self.config.grid, self.config.grid)

    def forward(self, pixel_values, input_ids, attention_mask, labels=None, task_inputs=None) -> dict[str, Any]:
        """Heatmaps ``{type: [B,S,S]}``, scores ``{type: [B]}``, and ``seq_loss`` when ``labels`` are given.

        ``task_inputs`` (augmented-prompt variant only): ``{output_name: (input_ids, attention_mask)}`` of the
        prompt with the task written in front (see :meth:`augmented_texts`).
        """
        img = self.encode_image(pixel_values)
        n_img = img.shape[1]
        fused = self.fuse(img, input_ids, attention_mask)
        out: dict[str, Any] = {"encoder_text": fused[:, n_img:], "text_mask": attention_mask}
        if labels is not None:
            from transformers.modeling_outputs import BaseModelOutput
            res = self.t5(encoder_outputs=BaseModelOutput(last_hidden_state=fused[:, n_img:]),
                          attention_mask=attention_mask, labels=labels)
            out["seq_loss"] = res.loss
        if self.config.multi_head:
            fmap = self.feature_map(fused, n_img)
            out["heatmaps"] = {k: h(fmap) for k, h in self.heatmap_heads.items()}
            out["scores"] = {k: h(fmap) for k, h in self.score_heads.items()}
        else:
            if task_inputs is None:
                raise ValueError("The augmented-prompt RAHF needs task_inputs (the prompt with each task written "
                                 "in front); use rewards.rich_feedback.predict or the trainer's collate.")
            out["heatmaps"], out["scores"] = {}, {}
            for name in (*self.config.heatmap_types, *self.config.score_types):
                ids, mask = task_inputs[name]
                fmap = self.feature_map(self.fuse(img, ids, mask), n_img)
                if name in self.config.heatmap_types:
                    out["heatmaps"][name] = self.heatmap_heads["shared"](fmap)
                else:
                    out["scores"][name] = self.score_heads["shared"](fmap)
        return out

    @staticmethod
    def task_text(name: str) -> str:
        kind = "HEATMAP" if name in HEATMAP_TYPES else "SCORE"
        return f"<output> {kind}: {name} </output>"

    def augmented_texts(self, prompts: list[str]) -> dict[str, list[str]]:
        return {n: [f"{self.task_text(n)} {p}" for p in prompts]
                for n in (*self.config.heatmap_types, *self.config.score_types)}

    @torch.no_grad()
    def generate_tags(self, encoder_text: torch.Tensor, text_mask: torch.Tensor,
                      max_new_tokens: int | None = None) -> torch.Tensor:
        """Greedy T5 decoding of the tagged prompt from the text part of the fused encoder outputs."""
        from transformers.modeling_outputs import BaseModelOutput
        return self.t5.generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_text),
                                attention_mask=text_mask, max_new_tokens=max_new_tokens or
                                self.config.max_new_tokens, do_sample=False, num_beams=1)


# ---------------------------------------------------------------- save / load
def save_rahf(model: RAHF, tokenizer, folder: str | os.PathLike, overwrite: bool = False,
              extra_files: dict[str, str] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` + tokenizer files into ``folder`` atomically.

    Everything goes to a temporary sibling folder that is renamed into place only when complete; an existing
    folder is refused unless ``overwrite`` (then it is replaced only after the new one is complete).
    """
    from safetensors.torch import save_file

    from ...fileio import atomic_folder
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} already exists: choose another name or allow overwriting.")
    with atomic_folder(folder, overwrite=overwrite) as tmp:
        model.config.save(tmp)
        save_file(portable_state_dict(model), str(tmp / WEIGHTS_NAME),
                  metadata={"format": "pt", "model_type": MODEL_TYPE})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
            from ...weights.hf_compat import portable_hf_files
            portable_hf_files(tmp / TOKENIZER_DIR)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        (tmp / ".complete").write_text("ok")
    return folder


# transformers 5 renamed the ViT's modules. Files keep the 4.x names (those of the Hub's ViT checkpoints), so a
# RAHF folder written with either version loads in the other (Forge pins transformers 4.46).
# (4.x name, 5.x name) of each ViT module, "{i}" = the layer
_VIT_NAMES = (("encoder.layer.{i}.attention.attention.query.", "layers.{i}.attention.q_proj."),
              ("encoder.layer.{i}.attention.attention.key.", "layers.{i}.attention.k_proj."),
              ("encoder.layer.{i}.attention.attention.value.", "layers.{i}.attention.v_proj."),
              ("encoder.layer.{i}.attention.output.dense.", "layers.{i}.attention.o_proj."),
              ("encoder.layer.{i}.intermediate.dense.", "layers.{i}.mlp.fc1."),
              ("encoder.layer.{i}.output.dense.", "layers.{i}.mlp.fc2."),
              ("encoder.layer.{i}.layernorm_before.", "layers.{i}.layernorm_before."),
              ("encoder.layer.{i}.layernorm_after.", "layers.{i}.layernorm_after."))


def _vit_rules(to_v5: bool):
    import re
    pairs = [(b, a) if not to_v5 else (a, b) for a, b in _VIT_NAMES]
    return tuple((re.escape(src).replace(re.escape("{i}"), r"(\d+)"), dst.replace("{i}", r"\1")) for src, dst in pairs)


_VIT_V4_TO_V5, _VIT_V5_TO_V4 = _vit_rules(True), _vit_rules(False)


def _rename_vit(sd: dict, rules) -> dict:
    import re
    out = {}
    for k, v in sd.items():
        if k.startswith("image_encoder."):
            rest = k[len("image_encoder."):]
            for pat, rep in rules:
                rest, n = re.subn("^" + pat, rep, rest)
                if n:
                    break
            k = "image_encoder." + rest
        out[k] = v
    return out


def portable_state_dict(model: nn.Module) -> dict:
    """The weights to save: one name per shared tensor (T5's tied embeddings), contiguous, ViT keys in 4.x names."""
    seen, sd = set(), {}
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen:
            continue
        seen.add(v.data_ptr())
        sd[k] = v.detach().contiguous()
    return _rename_vit(sd, _VIT_V5_TO_V4)


def load_portable(model: nn.Module, path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Load weights saved by :func:`portable_state_dict` (or with either ViT naming); ``(missing, unexpected)``."""
    from safetensors.torch import load_file
    sd = load_file(str(path))
    want = model.state_dict()
    for rules in ((), _VIT_V4_TO_V5, _VIT_V5_TO_V4):
        cand = _rename_vit(sd, rules) if rules else sd
        if set(cand) <= set(want):
            sd = cand
            break
    missing, unexpected = model.load_state_dict(sd, strict=False)
    loaded = {want[k].data_ptr() for k in sd if k in want}
    return [k for k in missing if want[k].data_ptr() not in loaded], list(unexpected)


def load_rahf_folder(folder: str | os.PathLike, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu"):
    """``(model, tokenizer, config)`` from a model folder (weights checked: no missing or unexpected keys)."""
    from transformers import AutoTokenizer
    folder = Path(folder)
    cfg = RAHFConfig.load(folder)
    if not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_NAME}.")
    model = RAHF(cfg)
    from safetensors import SafetensorError
    try:
        missing, unexpected = load_portable(model, folder / WEIGHTS_NAME)
    except SafetensorError as e:
        raise ValueError(f"{folder / WEIGHTS_NAME} is not a readable .safetensors file ({str(e)[:160]}): convert "
                         "or download the model again.") from None
    if missing or unexpected:
        raise ValueError(f"{folder / WEIGHTS_NAME} does not fit its config.json: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}.")
    tok_dir = folder / TOKENIZER_DIR if (folder / TOKENIZER_DIR).is_dir() else folder
    tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    if "NC" in (cfg.license or "") or "non-commercial" in (cfg.license or "").lower():
        log.warning(NC_LICENSE_NOTE)  # stderr: stdout stays machine-readable (score --json)
    return model.to(device=device, dtype=dtype).eval(), tok, cfg


def load_rich_feedback(name: str | os.PathLike, dtype=None, device=None):
    """Load a RAHF model folder by catalogue key, name in ``models/rich_feedback`` or path → ModelHandle."""
    from ...weights.cache import cached
    from ...weights.loaders import ModelHandle, _dtype_device, _resolve
    r = _resolve(name, "rich_feedback")
    dtype, device = _dtype_device(dtype, device)
    if dtype == torch.float16:
        dtype = torch.bfloat16 if (device.type != "cuda" or torch.cuda.is_bf16_supported()) else torch.float32
        # T5 overflows in fp16 (known issue); bf16 keeps the range

    def load():
        model, tok, cfg = load_rahf_folder(r.path, dtype, device)
        return ModelHandle("rich_feedback", str(name), r.path, model, tok, dtype, device,
                           {"config": cfg, "license": cfg.license})

    return cached("rich_feedback", r.path, load, dtype, device)


def from_parts(vit: str | os.PathLike, t5: str | os.PathLike, multi_head: bool = True,
               **overrides) -> tuple[RAHF, Any]:
    """A new RAHF initialised from a pretrained ViT folder and a T5 folder (heads random), plus the tokenizer.

    ``vit`` / ``t5`` are HF folders (e.g. google/vit-large-patch16-384 and t5-base, or tiny-vit / tiny-t5),
    catalogue keys or names in ``models/rich_feedback``.
    """
    from transformers import AutoTokenizer, T5ForConditionalGeneration, ViTModel
    from ...weights.registry import resolve
    vp = resolve(vit, folder="rich_feedback").path
    tp = resolve(t5, folder="rich_feedback").path
    enc = ViTModel.from_pretrained(vp, add_pooling_layer=False, local_files_only=True)
    t5m = T5ForConditionalGeneration.from_pretrained(tp, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(tp, local_files_only=True)
    vit_cfg = {k: v for k, v in enc.config.to_dict().items()
               if k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                        "image_size", "patch_size", "qkv_bias", "layer_norm_eps", "num_channels", "hidden_act")}
    t5_cfg = {k: v for k, v in t5m.config.to_dict().items()
              if k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                       "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate",
                       "feed_forward_proj", "pad_token_id", "eos_token_id", "decoder_start_token_id",
                       "tie_word_embeddings", "layer_norm_epsilon")}
    cfg = RAHFConfig(vit=vit_cfg, t5=t5_cfg, multi_head=multi_head, **overrides)
    return RAHF(cfg, image_encoder=enc, t5=t5m), tok


TINY_OVERRIDES = dict(score_fc=(16, 8), max_text_tokens=48, max_new_tokens=24, license="test only",
                      source="tiny random (weights/tiny.py)")


def build_tiny_rahf(out: str | os.PathLike, multi_head: bool = True) -> Path:
    """A tiny random RAHF folder (tiny-vit: 32 px, patch 8; tiny-t5: d_model 32) for tests and selftest.

    ``out`` is the model folder (``<models root>/rich_feedback/<name>``); tiny-vit and tiny-t5 are built in
    the same models root when missing.
    """
    from ...weights import tiny
    out = Path(out)
    root = out.parent.parent
    vit, t5 = tiny.build("tiny-vit", root), tiny.build("tiny-t5", root)
    torch.manual_seed(11)
    model, tok = from_parts(vit, t5, multi_head=multi_head, **TINY_OVERRIDES)
    return save_rahf(model.eval(), tok, out, overwrite=True)
