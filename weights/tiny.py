"""Tiny random models in the real on-disk formats, built offline in seconds.

``build_all(root)`` writes every kind under ``root/<folder>/<name>`` exactly where the registry looks for the
``tiny-*`` catalogue entries (see ``weights/catalogue.py``); point ``REWARDLOOP_MODELS`` at ``root`` and the
same loaders that open real checkpoints open these. Used by the tests and by ``python -m rewardloop selftest``.

Formats written:
  * HF folders (``save_pretrained``): BLIP, BLIP-2 (OPT), CLIP, a sentence-transformers BERT (MiniLM layout),
    a Llama-style chat LLM with a chat template, ViT, DINO-style ViT, T5;
  * a segment-anything ``.pth`` state dict (``image_encoder.* / prompt_encoder.* / mask_decoder.*``);
  * a diffusers Stable Diffusion folder.
"""
from __future__ import annotations

import json
import os
import tempfile
from functools import partial
from pathlib import Path

import torch

from .catalogue import get_spec
from .hf_compat import portable_hf_files

WORDS = (
    "a an the of in on with and photo picture image painting drawing of cat dog person man woman child car tree "
    "house sky grass road water beach mountain city street red blue green yellow black white small large big "
    "sks backpack bowl toy table chair flower garden park sitting standing running on top under near field "
    "snow sun cloud boat bird horse bicycle bus train plate food pizza cake cup bottle window door wall floor "
    "likely unlikely certain may appear tag tags score prompt scene assess 1 2 3 yes no caption describe "
    "heatmap implausibility misalignment plausibility aesthetics alignment overall _0 , . : ;"
).split()
CORPUS = [" ".join(WORDS[i:i + 12]) for i in range(0, len(WORDS), 6)] + [
    "a photo of a cat sitting on a table", "a red car on the street", "a dog running in the park",
    "tag:3, tag:1, tag:2", "1 2 3", "USER: hello ASSISTANT: 2", "a yellow_0 cat",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }} {% elif m['role'] == 'user' %}"
    "USER: {{ m['content'] }} {% else %}ASSISTANT: {{ m['content'] }}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def seed_all(seed: int = 0) -> None:
    torch.manual_seed(seed)


# ---------------------------------------------------------------- tokenizers
def bpe_tokenizer(extra_special: tuple[str, ...] = (), vocab_size: int = 600):
    """A byte-level BPE fast tokenizer trained on a small corpus (covers any input text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", *extra_special]
    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", additional_special_tokens=list(extra_special) or None,
                                  model_input_names=["input_ids", "attention_mask"])  # like real LLM tokenizers
    return tok


def clip_tokenizer():
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate(chars)})
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("p", "h"), ("o", "t"), ("ph", "ot")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    # from files: the one constructor transformers 4.x (vocab_file, merges_file) and 5.x (vocab, merges) share
    with tempfile.TemporaryDirectory() as tmp:
        v, m = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        v.write_text(json.dumps(vocab))
        m.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        return CLIPTokenizer(str(v), str(m), model_max_length=77)


def bert_vocab_file(folder: Path, with_dec: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (["[DEC]"] if with_dec else [])
    words += sorted({w.lower() for w in WORDS if w.isalpha()})
    words += list("abcdefghijklmnopqrstuvwxyz0123456789") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    words += list(",.:;!?'\"-_()")
    path = folder / "vocab.txt"
    path.write_text("\n".join(dict.fromkeys(words)) + "\n")
    return path


# ---------------------------------------------------------------- HF models
def _vision_cfg(image_size: int = 32, patch: int = 8, hidden: int = 32) -> dict:
    return dict(hidden_size=hidden, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                image_size=image_size, patch_size=patch)


def build_blip(out: Path) -> Path:
    from transformers import (BertTokenizerFast, BlipConfig, BlipForConditionalGeneration,
                              BlipImageProcessor, BlipProcessor)
    seed_all(1)
    vocab = bert_vocab_file(out / "_vocab", with_dec=True)
    tok = BertTokenizerFast(vocab_file=str(vocab))
    tok.add_special_tokens({"bos_token": "[DEC]"})
    cfg = BlipConfig(vision_config=dict(_vision_cfg(), projection_dim=32),
                     text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37,
                                      num_hidden_layers=2, num_attention_heads=4, encoder_hidden_size=32,
                                      max_position_embeddings=64, bos_token_id=tok.bos_token_id,
                                      pad_token_id=tok.pad_token_id, sep_token_id=tok.sep_token_id),
                     projection_dim=32)
    model = BlipForConditionalGeneration(cfg).eval()
    proc = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    _rm(out / "_vocab")
    return out


def build_blip2(out: Path) -> Path:
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor
    seed_all(2)
    tok = bpe_tokenizer(extra_special=("<image>",))
    v = len(tok)
    cfg = Blip2Config(
        vision_config=_vision_cfg(),
        qformer_config=dict(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37, encoder_hidden_size=32, cross_attention_frequency=1),
        text_config=dict(model_type="opt", vocab_size=v, hidden_size=32, num_hidden_layers=2, ffn_dim=37,
                         num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        num_query_tokens=4, image_token_index=tok.convert_tokens_to_ids("<image>"))
    model = Blip2ForConditionalGeneration(cfg).eval()
    proc = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok,
                          num_query_tokens=4)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def build_clip(out: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor
    seed_all(3)
    tok = clip_tokenizer()
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37,
                                      num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id),
                     vision_config=_vision_cfg(), projection_dim=16)
    model = CLIPModel(cfg).eval()
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32}), tokenizer=tok)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def build_minilm(out: Path) -> Path:
    """A sentence-transformers folder in the same layout as all-MiniLM-L6-v2 (BERT + mean pooling + normalize)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast
    seed_all(4)
    vocab = bert_vocab_file(out)
    tok = BertTokenizerFast(vocab_file=str(vocab))
    model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=37, max_position_embeddings=128)).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    return out


def build_llm(out: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM
    seed_all(5)
    tok = bpe_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_vit(out: Path, seed: int = 6, image_size: int = 32, patch: int = 8) -> Path:
    """A ViT encoder folder (also the DINO stand-in: facebook/dino-vits16 is a ViTModel)."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel
    seed_all(seed)
    model = ViTModel(ViTConfig(**_vision_cfg(image_size, patch)), add_pooling_layer=False).eval()
    model.save_pretrained(out)
    ViTImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(out)
    return out


def build_dino(out: Path) -> Path:
    from transformers import ViTImageProcessor
    build_vit(out, seed=7)
    # DINO uses ImageNet normalisation
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(out)
    return out


def build_t5(out: Path) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration
    seed_all(8)
    tok = bpe_tokenizer()
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_decoder_layers=2,
                   num_heads=4, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id)
    T5ForConditionalGeneration(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ---------------------------------------------------------------- SAM (.pth, segment-anything layout)
TINY_SAM = dict(embed_dim=64, depth=2, num_heads=2, img_size=256, patch_size=16, window_size=4,
                global_attn_indexes=(1,), out_chans=32, decoder_depth=2, decoder_mlp_dim=64, decoder_heads=8,
                mask_in_chans=16, iou_head_hidden_dim=32)


def make_sam(embed_dim: int, depth: int, num_heads: int, img_size: int = 1024, patch_size: int = 16,
             window_size: int = 14, global_attn_indexes=(2, 5, 8, 11), out_chans: int = 256,
             decoder_depth: int = 2, decoder_mlp_dim: int = 2048, decoder_heads: int = 8,
             mask_in_chans: int = 16, iou_head_hidden_dim: int = 256):
    """Build a segment-anything ``Sam`` with any sizes (the official builders fix them to ViT-B/L/H)."""
    from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                           TwoWayTransformer)
    emb = img_size // patch_size
    return Sam(
        image_encoder=ImageEncoderViT(depth=depth, embed_dim=embed_dim, img_size=img_size, mlp_ratio=4,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=num_heads,
                                      patch_size=patch_size, qkv_bias=True, use_rel_pos=True,
                                      global_attn_indexes=tuple(global_attn_indexes), window_size=window_size,
                                      out_chans=out_chans),
        prompt_encoder=PromptEncoder(embed_dim=out_chans, image_embedding_size=(emb, emb),
                                     input_image_size=(img_size, img_size), mask_in_chans=mask_in_chans),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=decoder_depth, embedding_dim=out_chans,
                                                               mlp_dim=decoder_mlp_dim, num_heads=decoder_heads),
                                 transformer_dim=out_chans, iou_head_depth=3,
                                 iou_head_hidden_dim=iou_head_hidden_dim),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


def build_sam(out_file: Path) -> Path:
    seed_all(9)
    sam = make_sam(**TINY_SAM)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam.state_dict(), out_file)
    return out_file


# ---------------------------------------------------------------- Stable Diffusion (diffusers folder)
def make_sd_pipeline(seed: int = 10):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    seed_all(seed)
    tok = clip_tokenizer()
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=32, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4, norm_num_groups=32, sample_size=16)
    te = CLIPTextModel(CLIPTextConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id, hidden_size=32, intermediate_size=37,
                                      num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tok),
                                      max_position_embeddings=77, projection_dim=32))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def build_sd(out: Path) -> Path:
    make_sd_pipeline().save_pretrained(out, safe_serialization=True)
    return out


def make_sdxl_pipeline(seed: int = 11):
    """A tiny SDXL pipeline (two CLIP text encoders, text_time added conditioning), in memory."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    seed_all(seed)
    tok = clip_tokenizer()
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
                                norm_num_groups=32, attention_head_dim=(2, 4), use_linear_projection=True,
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4, norm_num_groups=32, sample_size=16)
    kw = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
              hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=len(tok),
              max_position_embeddings=77, projection_dim=32, hidden_act="gelu")
    te = CLIPTextModel(CLIPTextConfig(**kw))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**kw))
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                                     unet=unet, scheduler=sched)


# ---------------------------------------------------------------- Stable Diffusion (single file, LDM layout)
def _unet_to_ldm(sd: dict, cfg) -> dict:
    """diffusers UNet2DConditionModel keys → original LDM ``model.diffusion_model.*`` keys.

    General in ``layers_per_block`` and the number of levels (SD1.x/2.x/SDXL layout rules).
    """
    L = cfg.layers_per_block
    L = list(L) if isinstance(L, (list, tuple)) else [int(L)] * len(cfg.block_out_channels)
    res_map = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    # diffusers block prefix → LDM block prefix
    blocks: dict[str, str] = {}
    n_levels = len(cfg.block_out_channels)
    for i in range(n_levels):
        for j in range(L[i]):
            base = 1 + sum(x + 1 for x in L[:i]) + j
            blocks[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{base}.0."
            blocks[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{base}.1."
        if i < n_levels - 1:
            blocks[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{sum(x + 1 for x in L[:i + 1])}.0.op."
    up_L = list(reversed(L))
    for i in range(n_levels):
        has_attn = any(k.startswith(f"up_blocks.{i}.attentions.") for k in sd)
        for j in range(up_L[i] + 1):
            base = sum(x + 1 for x in up_L[:i]) + j
            blocks[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{base}.0."
            blocks[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{base}.1."
        if i < n_levels - 1:
            last = sum(x + 1 for x in up_L[:i]) + up_L[i]
            blocks[f"up_blocks.{i}.upsamplers.0.conv."] = f"output_blocks.{last}.{2 if has_attn else 1}.conv."
    blocks["mid_block.resnets.0."] = "middle_block.0."
    blocks["mid_block.attentions.0."] = "middle_block.1."
    blocks["mid_block.resnets.1."] = "middle_block.2."
    out = {}
    for k, v in sd.items():
        new = None
        for src, dst in fixed.items():
            if k.startswith(src + "."):
                new = dst + k[len(src):]
        if new is None:
            for src, dst in blocks.items():
                if k.startswith(src):
                    rest = k[len(src):]
                    if ".resnets." in src:
                        head, _, tail = rest.partition(".")
                        rest = res_map.get(head, head) + "." + tail
                    new = dst + rest
                    break
        if new is None:
            raise KeyError(f"No LDM name for UNet key {k}")
        out["model.diffusion_model." + new] = v
    return out


def _vae_to_ldm(sd: dict, cfg) -> dict:
    """diffusers AutoencoderKL keys → LDM ``first_stage_model.*`` keys (attention linears → 1×1 convs)."""
    n = len(cfg.block_out_channels)
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for k, v in sd.items():
        new = k
        new = new.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        for part in ("encoder", "decoder"):
            new = new.replace(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.")
            new = new.replace(f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.")
            if new.startswith(f"{part}.mid_block.attentions.0."):
                rest = new[len(f"{part}.mid_block.attentions.0."):]
                name, _, tail = rest.rpartition(".")
                new = f"{part}.mid.attn_1.{attn.get(name, name)}.{tail}"
                if name in ("to_q", "to_k", "to_v", "to_out.0") and v.dim() == 2:
                    v = v[:, :, None, None]
        parts = new.split(".")
        if parts[1] == "down_blocks":
            i = parts[2]
            if parts[3] == "resnets":
                new = ".".join([parts[0], "down", i, "block", *parts[4:]])
            else:  # downsamplers.0.conv
                new = ".".join([parts[0], "down", i, "downsample", *parts[5:]])
        elif parts[1] == "up_blocks":
            i = str(n - 1 - int(parts[2]))
            if parts[3] == "resnets":
                new = ".".join([parts[0], "up", i, "block", *parts[4:]])
            else:  # upsamplers.0.conv
                new = ".".join([parts[0], "up", i, "upsample", *parts[5:]])
        out["first_stage_model." + new] = v
    return out


def sd_to_ldm_state_dict(pipe) -> dict:
    """A diffusers SD1.x pipeline → one original-layout (CompVis/LDM) state dict."""
    out = {}
    out.update(_unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config))
    out.update(_vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    for k, v in pipe.text_encoder.state_dict().items():
        if k.split(".", 1)[0] in ("embeddings", "encoder", "final_layer_norm"):
            k = "text_model." + k  # transformers 5 flattens CLIPTextModel; the LDM layout keeps text_model.
        out["cond_stage_model.transformer." + k] = v
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def build_sd_single(out_file: Path) -> Path:
    """The tiny SD as one ``.safetensors`` in the original layout; the metadata names its diffusers config."""
    from safetensors.torch import save_file
    build("tiny-sd", out_file.parent.parent)  # its config (named in the metadata) lives in the diffusers folder
    sd = sd_to_ldm_state_dict(make_sd_pipeline())
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out_file), metadata={"rewardloop.diffusers_config": "tiny-sd", "format": "pt"})
    return out_file


# ---------------------------------------------------------------- one SD1.5-format base for trainer and hosts
# What every ComfyUI / Forge user has: one original-layout (LDM) .safetensors, no tokenizer or config beside it.
# The hosts build the text encoder and the VAE from fixed SD1.5 configs, so those two are full size (CLIP-L text
# tower: 12 layers, width 768; KL VAE: ch 128, mult 1,2,4,4); they recognise SD1.5 from the UNet's widths
# (model_channels 320, context 768), so the UNet keeps those widths but has one level with one res block and one
# transformer block. Weights are random (seeded) and stored in fp16: about 420 MB, built in seconds.
SD15_CONFIG_NAME = "tiny-sd15"  # weights/configs/tiny-sd15: the diffusers config the trainers load it with


def make_sd15_tiny_modules(seed: int = 12) -> dict:
    """The UNet (shallow, SD1.5 widths), full-size KL VAE and CLIP-L text tower, as diffusers/transformers modules."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    cfg_dir = Path(__file__).resolve().parent / "configs" / SD15_CONFIG_NAME
    seed_all(seed)
    unet = UNet2DConditionModel.from_config(json.loads((cfg_dir / "unet" / "config.json").read_text()))
    vae = AutoencoderKL.from_config(json.loads((cfg_dir / "vae" / "config.json").read_text()))
    te_cfg = {k: v for k, v in json.loads((cfg_dir / "text_encoder" / "config.json").read_text()).items()
              if not k.startswith("_") and k not in ("architectures", "transformers_version")}
    te = CLIPTextModel(CLIPTextConfig(**te_cfg))
    # A trained CLIP's final layer norm has a bias; with the init's zero bias every token's features average to
    # exactly zero, and Forge's prompt emphasis ("Original": z * mean(z) / mean(z * weights)) turns some prompts
    # into 0 / 0 = NaN images. A seeded random bias, like a trained model's, keeps the mean away from zero.
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        getattr(te, "text_model", te).final_layer_norm.bias.copy_(0.5 * torch.randn(te.config.hidden_size, generator=g) + 0.1)
    return {"unet": unet, "vae": vae, "text_encoder": te}


def build_sd15_single(out_file: Path) -> Path:
    """``tiny-sd15-single``: the shallow SD1.5-format checkpoint that ComfyUI, Forge and the trainers all load."""
    from types import SimpleNamespace

    from safetensors.torch import save_file
    m = make_sd15_tiny_modules()
    sd = sd_to_ldm_state_dict(SimpleNamespace(**m))
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(out_file.name + ".tmp")
    save_file(sd, str(tmp), metadata={"rewardloop.diffusers_config": SD15_CONFIG_NAME, "format": "pt",
                                      "rewardloop.note": "random weights, for tests only"})
    tmp.replace(out_file)
    return out_file


# ---------------------------------------------------------------- all
BUILDERS = {
    "tiny-blip": build_blip, "tiny-blip2": build_blip2, "tiny-clip": build_clip, "tiny-minilm": build_minilm,
    "tiny-llm": build_llm, "tiny-dino": build_dino, "tiny-vit": build_vit, "tiny-t5": build_t5,
    "tiny-sam": build_sam, "tiny-sd": build_sd, "tiny-rahf": lambda out: build_rahf(out),
    "tiny-sd-single": build_sd_single, "tiny-sd15-single": build_sd15_single,
}


def build_rahf(out: Path) -> Path:
    """A tiny RAHF folder (tiny-vit + tiny-t5 sizes) in RewardLoop's rich-feedback format."""
    from ..rewards.rich_feedback.model import build_tiny_rahf
    return build_tiny_rahf(out)


def build(key: str, root: str | os.PathLike) -> Path:
    """Build one tiny model under ``root/<folder>/<name>`` (skipped when already there)."""
    spec = get_spec(key)
    out = Path(root) / spec.folder / spec.name
    done = out.is_file() if spec.is_file else (out / ".complete").exists()
    if done:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    BUILDERS[key](out)
    if not spec.is_file:
        portable_hf_files(out)  # loadable by every transformers version the pack supports
        (out / ".complete").write_text("ok")
    return out


def build_all(root: str | os.PathLike, keys=None) -> dict[str, Path]:
    return {k: build(k, root) for k in (keys or BUILDERS)}


def _rm(p: Path) -> None:
    import shutil
    shutil.rmtree(p, ignore_errors=True)
