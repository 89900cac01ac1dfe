"""Caption reward nodes (FineRewards' global-semantics reward): loaders, Caption, Caption Reward, Caption Scorer.

Thin adapters over ``rewards/caption_reward.py`` and ``rewards/similarity.py``.
"""
from __future__ import annotations

from ._common import (CAPTIONER, CATEGORY, DEVICES, DTYPES, SCORER, SCORES, TEXT_ENCODER, device_arg,
                      validated,
                      model_choices)

_CAT = f"{CATEGORY}/caption"
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_MODE_TIP = ("short: one-line caption, unconditional (the paper's setting); detailed: the captioner is prompted "
             "for a longer description.")
_RANGE_TIP = "Cosine similarity of prompt and caption embeddings, -1..1, higher is better (CLIP pairs: ~0.5..1)."


def _captioner_choices() -> list[str]:
    return model_choices("blip", ("captioner",))


def _text_encoder_choices() -> list[str]:
    return [c for c in model_choices("clip", ("clip", "text_encoder")) if not c.lower().endswith(_WEIGHT_SUFFIXES)]


def _weights_choices() -> list[str]:
    from ..bridge import list_folder
    return ["none"] + list_folder("clip", exts=_WEIGHT_SUFFIXES, dirs=False)


def _gen_inputs() -> dict:
    return {
        "mode": (["short", "detailed"], {"default": "short", "tooltip": _MODE_TIP}),
        "max_new_tokens": ("INT", {"default": 30, "min": 1, "max": 512,
                                   "tooltip": "Longest caption in tokens (greedy decoding)."}),
        "batch_size": ("INT", {"default": 8, "min": 1, "max": 256,
                               "tooltip": "Images per generate call; lower it when memory runs out."}),
    }


_KEEP = ("BOOLEAN", {"default": False, "tooltip": "Keep the models on the GPU after the run (faster reruns, "
                                                   "more memory); off: offload to the CPU."})


class RewardLoopCaptionerLoader:
    DESCRIPTION = ("Loads an image captioner: BLIP-2 OPT-2.7b (FineRewards' choice), BLIP large, or any Hugging "
                   "Face image-to-text / image-text-to-text model folder in models/blip.")
    CATEGORY = _CAT
    FUNCTION = "load"
    RETURN_TYPES = (CAPTIONER,)
    RETURN_NAMES = ("captioner",)
    OUTPUT_TOOLTIPS = ("The captioner, for Caption / Caption Reward / Caption Scorer.",)

    @classmethod
    def INPUT_TYPES(cls):
        choices = _captioner_choices()
        return {"required": {
            "model": (choices, {"default": choices[0], "tooltip": "Catalogue key or folder in models/blip "
                                "(blip2-opt-2.7b: the paper's, ~8 GB fp16; blip-large: lighter)."}),
            "dtype": (DTYPES, {"default": "auto", "tooltip": "auto: fp16/bf16 on GPU, fp32 on CPU."}),
            "device": (DEVICES, {"default": "auto", "tooltip": "auto: ComfyUI's device."}),
        }}

    @validated
    def load(self, model, dtype="auto", device="auto"):
        from ..weights.loaders import load_captioner
        return (load_captioner(model, dtype=dtype, device=device_arg(device)),)


class RewardLoopTextEncoderLoader:
    DESCRIPTION = ("Loads a text encoder for caption similarity: a CLIP model's text tower (ViT-L/14 is the paper's; "
                   "optionally with HPS-v1 weights, the paper's hpc.pt) or a sentence-transformers model such as "
                   "all-MiniLM-L6-v2 (light).")
    CATEGORY = _CAT
    FUNCTION = "load"
    RETURN_TYPES = (TEXT_ENCODER,)
    RETURN_NAMES = ("text_encoder",)
    OUTPUT_TOOLTIPS = ("The text encoder, for Caption Reward / Caption Scorer.",)

    @classmethod
    def INPUT_TYPES(cls):
        choices = _text_encoder_choices()
        return {"required": {
            "model": (choices, {"default": choices[0], "tooltip": "Catalogue key or folder in models/clip "
                                "(clip-vit-large-patch14: the paper's; all-MiniLM-L6-v2: light)."}),
            "dtype": (DTYPES, {"default": "auto", "tooltip": "auto: fp16/bf16 on GPU, fp32 on CPU."}),
            "device": (DEVICES, {"default": "auto", "tooltip": "auto: ComfyUI's device."}),
        }, "optional": {
            "hps_weights": (_weights_choices(), {"default": "none", "tooltip": (
                "Optional CLIP state dict (.pt/.safetensors in models/clip) applied over a CLIP text tower: "
                "HPS-v1's hpc.pt gives FineRewards' exact similarity. Loaded weights-only.")}),
        }}

    @validated
    def load(self, model, dtype="auto", device="auto", hps_weights="none"):
        from ..rewards.similarity import load_text_encoder
        return (load_text_encoder(model, dtype=dtype, device=device_arg(device), weights=hps_weights),)


class RewardLoopCaption:
    DESCRIPTION = "Captions every image of a batch (greedy, batched): one caption per image, also joined as text."
    CATEGORY = _CAT
    FUNCTION = "caption"
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("captions", "text")
    OUTPUT_IS_LIST = (True, False)
    OUTPUT_TOOLTIPS = ("One caption per image (a list).", "All captions, one per line.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "captioner": (CAPTIONER, {"tooltip": "From Captioner Loader."}),
            "images": ("IMAGE", {"tooltip": "Images to caption (RGB, RGBA or grayscale; any size)."}),
            **_gen_inputs(),
        }, "optional": {"keep_loaded": _KEEP}}

    @validated
    def caption(self, captioner, images, mode="short", max_new_tokens=30, batch_size=8, keep_loaded=False):
        from ..rewards.caption_reward import caption
        caps = caption(captioner, images, mode, max_new_tokens, batch_size, keep_loaded)
        return (caps, "\n".join(caps))


class RewardLoopCaptionReward:
    DESCRIPTION = ("FineRewards' caption reward: captions each image and scores the cosine similarity between the "
                   "prompt and the caption (normalised text embeddings). " + _RANGE_TIP)
    CATEGORY = _CAT
    FUNCTION = "score"
    RETURN_TYPES = (SCORES, "STRING")
    RETURN_NAMES = ("scores", "captions")
    OUTPUT_TOOLTIPS = ("caption reward per image: " + _RANGE_TIP + " Details hold each caption.",
                       "The captions, one per line.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "captioner": (CAPTIONER, {"tooltip": "From Captioner Loader."}),
            "text_encoder": (TEXT_ENCODER, {"tooltip": "From Text Encoder Loader."}),
            "images": ("IMAGE", {"tooltip": "Generated images to score (RGB, RGBA or grayscale; any size)."}),
            "prompt": ("STRING", {"multiline": True, "default": "",
                                  "tooltip": "The prompt the images were generated from; or one prompt per line, "
                                             "one line per image."}),
            **_gen_inputs(),
        }, "optional": {"keep_loaded": _KEEP}}

    @validated
    def score(self, captioner, text_encoder, images, prompt, mode="short", max_new_tokens=30, batch_size=8,
              keep_loaded=False):
        from ..rewards.caption_reward import caption_reward
        scores = caption_reward(captioner, text_encoder, images, prompt, mode, max_new_tokens, batch_size,
                                keep_loaded)
        return (scores, "\n".join(d["caption"] for d in scores.details))


class RewardLoopCaptionScorer:
    DESCRIPTION = ("Makes the caption reward a scorer for ranking, auto-fix and training nodes (reward name "
                   "'caption'). " + _RANGE_TIP)
    CATEGORY = _CAT
    FUNCTION = "make"
    RETURN_TYPES = (SCORER,)
    RETURN_NAMES = ("scorer",)
    OUTPUT_TOOLTIPS = ("A scorer producing the 'caption' reward: " + _RANGE_TIP,)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "captioner": (CAPTIONER, {"tooltip": "From Captioner Loader."}),
            "text_encoder": (TEXT_ENCODER, {"tooltip": "From Text Encoder Loader."}),
            **_gen_inputs(),
        }, "optional": {"keep_loaded": _KEEP}}

    @validated
    def make(self, captioner, text_encoder, mode="short", max_new_tokens=30, batch_size=8, keep_loaded=False):
        from ..rewards.caption_reward import scorer_from_handles
        return (scorer_from_handles(captioner, text_encoder, mode, max_new_tokens, batch_size, keep_loaded),)


NODE_CLASS_MAPPINGS = {
    "RewardLoopCaptionerLoader": RewardLoopCaptionerLoader,
    "RewardLoopTextEncoderLoader": RewardLoopTextEncoderLoader,
    "RewardLoopCaption": RewardLoopCaption,
    "RewardLoopCaptionReward": RewardLoopCaptionReward,
    "RewardLoopCaptionScorer": RewardLoopCaptionScorer,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RewardLoopCaptionerLoader": "Captioner Loader (RewardLoop)",
    "RewardLoopTextEncoderLoader": "Text Encoder Loader (RewardLoop)",
    "RewardLoopCaption": "Caption (RewardLoop)",
    "RewardLoopCaptionReward": "Caption Reward (RewardLoop)",
    "RewardLoopCaptionScorer": "Caption Scorer (RewardLoop)",
}
