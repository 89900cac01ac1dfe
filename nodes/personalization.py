"""Personalization evaluation in the graph: DreamBench prompts as a list, and DINO / CLIP-I / CLIP-T of images.

The graph generates the images itself (the checkpoint and LoRA loaded by the core loaders, the core KSampler):
**DreamBench Prompts** outputs the 25 prompts as a list, so CLIPTextEncode → KSampler → VAEDecode run once per
prompt; **Evaluate Personalization** (``INPUT_IS_LIST``) receives every batch at once and scores them against the
reference photos. No node here generates: sampling stays ComfyUI's, with its model management.
"""
from __future__ import annotations

from ._common import CATEGORY, DEVICES, DTYPES, SCORES, device_arg, model_choices

CAT = f"{CATEGORY}/evaluate"


class RewardLoopDreamBenchPrompts:
    DESCRIPTION = ("The DreamBench prompts of the DreamBooth protocol for your subject (25: live-subject prompts for "
                   "animals and people, object prompts otherwise), as a list: nodes downstream run once per prompt.")
    CATEGORY = CAT
    FUNCTION = "prompts"
    RETURN_TYPES = ("STRING", "STRING", "STRING", "INT")
    RETURN_NAMES = ("prompts", "clip_texts", "all_prompts", "count")
    OUTPUT_IS_LIST = (True, True, False, False)
    OUTPUT_TOOLTIPS = ("One prompt per item (identifier + class noun, 'a sks dog in the jungle'): connect to "
                       "CLIPTextEncode; the sampler chain runs once per prompt.",
                       "The same prompts without the identifier ('a dog in the jungle'), what CLIP-T compares with.",
                       "All prompts, one per line (for the Evaluate Personalization node's prompts input).",
                       "Number of prompts.")

    @classmethod
    def INPUT_TYPES(cls):
        from ..rewards.dreambench import KINDS
        return {"required": {
            "class_noun": ("STRING", {"default": "dog", "tooltip": "The subject's class noun (dog, backpack, "
                                      "stuffed animal) or a DreamBench subject name (dog6, wolf_plushie)."}),
            "identifier": ("STRING", {"default": "sks", "tooltip": "The rare token the LoRA was trained with."}),
            "kind": (list(KINDS), {"default": "auto", "tooltip": "Prompt set: auto (live for animals and people, "
                                                                 "object otherwise), object or live."}),
            "limit": ("INT", {"default": 0, "min": 0, "max": 25, "tooltip": "Only the first N prompts (0 = all 25)."}),
        }}

    def prompts(self, class_noun, identifier="sks", kind="auto", limit=0):
        from ..rewards.dreambench import build_prompts
        ps = build_prompts(class_noun, identifier, kind, limit)
        return ([p.prompt for p in ps], [p.clip_text for p in ps], "\n".join(p.prompt for p in ps), len(ps))


def _flatten_images(batches) -> list:
    """A list of IMAGE batches (one per prompt under list execution) → per-batch PIL lists."""
    from ..rewards.images import image_to_pil
    return [image_to_pil(b) for b in batches]


def pair_prompts(batch_sizes: list[int], prompts: list[str]) -> list[str]:
    """One prompt per image from what the graph gives (lists and multi-line texts alike, one prompt per line).

    One prompt → every image; one per batch (list execution: DreamBench Prompts feeding one KSampler batch per
    prompt) → every image of that batch; one per image → as given. Anything else is refused.
    """
    n = sum(batch_sizes)
    items = [line.strip() for p in prompts for line in str(p).splitlines() if line.strip()]
    if not items:
        raise ValueError("The prompts are empty: connect DreamBench Prompts (or type one prompt per line).")
    if len(items) == 1:
        return items * n
    if len(batch_sizes) > 1 and len(items) == len(batch_sizes):
        return [p for p, b in zip(items, batch_sizes) for _ in range(b)]
    if len(items) == n:
        return items
    raise ValueError(f"Got {len(items)} prompts for {len(batch_sizes)} image batch(es) of {n} images in all: give one "
                     "prompt for all, one per batch or one per image.")


class RewardLoopEvaluatePersonalization:
    DESCRIPTION = ("DreamBooth-protocol personalization metrics of generated images against the subject's reference "
                   "photos: DINO (ViT-S/16 CLS cosine, averaged over references), CLIP-I (CLIP image-image cosine) "
                   "and CLIP-T (CLIP image-prompt cosine, identifier removed). All -1..1, higher is better.")
    CATEGORY = CAT
    FUNCTION = "evaluate"
    OUTPUT_NODE = True
    INPUT_IS_LIST = True
    RETURN_TYPES = (SCORES, SCORES, SCORES, "FLOAT", "FLOAT", "FLOAT", "STRING")
    RETURN_NAMES = ("dino", "clip_i", "clip_t", "mean_dino", "mean_clip_i", "mean_clip_t", "table")
    OUTPUT_TOOLTIPS = ("Per-image DINO similarity to the references (-1..1, higher is better).",
                       "Per-image CLIP-I similarity to the references (-1..1, higher is better).",
                       "Per-image CLIP-T similarity to its prompt (-1..1, higher is better).",
                       "Mean DINO over all images.", "Mean CLIP-I over all images.", "Mean CLIP-T over all images.",
                       "Table: one row per prompt, then the means and the references' similarity to each other.")

    @classmethod
    def INPUT_TYPES(cls):
        from ..rewards.personalization import DEFAULT_CLIP, DEFAULT_DINO
        dinos = model_choices("dino", ("dino",))
        clips = model_choices("clip", ("clip",))
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Generated images: one batch, or one batch per prompt (list execution "
                                            "from DreamBench Prompts)."}),
            "references": ("IMAGE", {"tooltip": "Photos of the subject (the LoRA's training images)."}),
            "prompts": ("STRING", {"multiline": True, "default": "", "tooltip": "The prompts the images were "
                                   "generated from: connect DreamBench Prompts' 'prompts' (one per batch), or type "
                                   "one prompt for all images or one line per image."}),
            "identifier": ("STRING", {"default": "sks", "tooltip": "Removed from the prompts for CLIP-T (empty: the "
                                      "prompts are used as they are)."}),
            "dino_model": (dinos, {"default": DEFAULT_DINO if DEFAULT_DINO in dinos else dinos[0],
                                   "tooltip": "DINO ViT (models/dino); the protocol uses dino-vits16."}),
            "clip_model": (clips, {"default": DEFAULT_CLIP if DEFAULT_CLIP in clips else clips[0],
                                   "tooltip": "CLIP for CLIP-I and CLIP-T (models/clip)."}),
            "dtype": (DTYPES, {"default": "auto", "tooltip": "Precision of DINO and CLIP."}),
            "device": (DEVICES, {"default": "auto", "tooltip": "Where to run (auto = ComfyUI's choice)."}),
        }}

    def evaluate(self, images, references, prompts, identifier=("sks",), dino_model=("dino-vits16",),
                 clip_model=("clip-vit-base-patch32",), dtype=("auto",), device=("auto",)):
        from ..rewards.dreambench import strip_identifier
        from ..rewards.personalization import PersonalizationScorer
        one = lambda v: v[0] if isinstance(v, (list, tuple)) else v  # noqa: E731 - widgets arrive as lists
        images = images if isinstance(images, (list, tuple)) else [images]
        references = references if isinstance(references, (list, tuple)) else [references]
        prompts = prompts if isinstance(prompts, (list, tuple)) else [prompts]
        batches = _flatten_images(images)
        gen = [im for b in batches for im in b]
        refs = [im for b in _flatten_images(references) for im in b]
        per_image = pair_prompts([len(b) for b in batches], list(prompts))
        ident = str(one(identifier) or "").strip()
        clip_texts = [strip_identifier(p, ident) for p in per_image]
        scorer = PersonalizationScorer(one(dino_model), one(clip_model), device=device_arg(one(device)),
                                       dtype=one(dtype))
        s = scorer.score(gen, refs, clip_texts, per_image)
        table = s.table()
        m = s.means()
        d, ci, ct = s.reward_scores()
        return {"ui": {"text": [table]}, "result": (d, ci, ct, m["dino"], m["clip_i"], m["clip_t"], table)}


NODE_CLASS_MAPPINGS = {"RewardLoopDreamBenchPrompts": RewardLoopDreamBenchPrompts,
                       "RewardLoopEvaluatePersonalization": RewardLoopEvaluatePersonalization}
NODE_DISPLAY_NAME_MAPPINGS = {"RewardLoopDreamBenchPrompts": "DreamBench Prompts (RewardLoop)",
                              "RewardLoopEvaluatePersonalization": "Evaluate Personalization (RewardLoop)"}
