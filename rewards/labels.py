"""Open-vocabulary labels for segments: CLIP zero-shot on masked crops, or captions of the crops.

Vocabulary = the prompt's nouns (rule below) ∪ a built-in general vocabulary (COCO things + ADE20K-style stuff
and objects, written as plain English names). Prompt nouns come first, so on an exact probability tie the
prompt's word wins; the rest keep the order of :data:`GENERAL_VOCABULARY`.

Noun extraction rule (no tagger, no downloads; documented so it can be predicted):
  1. lower-case the prompt, keep letters, digits, spaces, hyphens and apostrophes;
  2. every vocabulary phrase of two or three words found in the prompt is taken as is ("traffic light");
  3. single words: drop stop words (articles, pronouns, prepositions, conjunctions, auxiliaries, common
     verbs, colours, sizes and other frequent adjectives/adverbs), words shorter than 3 letters, numbers,
     words ending in "ly", and words ending in "ing"/"ed" unless they are vocabulary words ("painting",
     "building");
  4. plurals are singularised when the singular is a vocabulary word ("dogs" → "dog", "benches" → "bench",
     "puppies" → "puppy"); otherwise the word is kept as written;
  5. order of first appearance, duplicates removed.

Crops: the segment's box grown by ``pad`` (fraction of the box size, default 10 %), pixels outside the mask
filled with mid-gray, padded to a square with the same gray (so CLIP's centre crop cuts nothing).
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .. import bridge
from ..weights.loaders import ModelHandle
from .types import Segments

COCO = (
    "person, bicycle, car, motorcycle, airplane, bus, train, truck, boat, traffic light, fire hydrant, stop sign, "
    "parking meter, bench, bird, cat, dog, horse, sheep, cow, elephant, bear, zebra, giraffe, backpack, umbrella, "
    "handbag, tie, suitcase, frisbee, skis, snowboard, ball, kite, baseball bat, baseball glove, skateboard, "
    "surfboard, tennis racket, bottle, wine glass, cup, fork, knife, spoon, bowl, banana, apple, sandwich, orange, "
    "broccoli, carrot, hot dog, pizza, donut, cake, chair, couch, potted plant, bed, dining table, toilet, "
    "television, laptop, mouse, remote, keyboard, cell phone, microwave, oven, toaster, sink, refrigerator, book, "
    "clock, vase, scissors, teddy bear, hair drier, toothbrush"
)
ADE = (
    "wall, building, sky, floor, tree, ceiling, road, bed, window, grass, cabinet, sidewalk, earth, door, table, "
    "mountain, plant, curtain, chair, water, painting, sofa, shelf, house, sea, mirror, rug, field, armchair, "
    "seat, fence, desk, rock, wardrobe, lamp, bathtub, railing, cushion, box, column, signboard, "
    "chest of drawers, counter, sand, skyscraper, fireplace, grandstand, path, stairs, runway, pool table, pillow, "
    "screen door, river, bridge, bookcase, blinds, coffee table, flower, hill, countertop, stove, palm tree, "
    "kitchen island, computer, swivel chair, bar, arcade machine, hut, towel, light, tower, chandelier, awning, "
    "street lamp, booth, pole, land, bannister, escalator, ottoman, buffet, poster, stage, van, ship, fountain, "
    "conveyor belt, canopy, washing machine, toy, swimming pool, stool, barrel, basket, waterfall, tent, bag, "
    "cradle, step, tank, brand name, pot, animal, lake, dishwasher, screen, blanket, sculpture, hood, sconce, "
    "tray, trash can, fan, pier, plate, monitor, bulletin board, shower, radiator, glass, flag"
)
EXTRA = (
    "man, woman, child, boy, girl, baby, face, hand, hair, eye, cloud, sun, moon, snow, ice, beach, forest, "
    "street, city, park, garden, leaf, fruit, food, table cloth, text, logo, window pane, wheel, roof, bush, "
    "puppy, kitten, fish, duck, chicken, butterfly, insect, statue, castle, church, background"
)


def _split(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


GENERAL_VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys(_split(COCO) + _split(ADE) + _split(EXTRA)))

STOP_WORDS = frozenset("""
a an the this that these those some any each every all both either neither no not none one two three four five
six seven eight nine ten many much more most few several lots lot of in on at to from by with without into onto
upon over under above below between among through during before after behind beside besides near next inside
outside around across along against toward towards up down off out about as like than then there here where when
while who whom whose which what why how and or but nor so yet for if because although though i me my mine we us
our ours you your yours he him his she her hers it its they them their theirs is are was were be been being am
do does did done doing have has had having will would shall should can could may might must get gets got make
makes made take takes took show shows showing look looks looking stand stands sit sits hold holds holding wear
wears wearing very really quite just only also too even still again ever never always often sometimes
photo photograph picture image painting drawing illustration render rendering style art artwork shot view scene
closeup close-up portrait highly detailed detail details quality high low best 4k 8k hd uhd realistic
photorealistic hyperrealistic cinematic lighting trending artstation digital concept beautiful pretty cute ugly
big small large tiny huge little tall short long wide narrow old young new first last other same different
red orange yellow green blue purple pink brown black white gray grey golden silver dark light bright colorful
happy sad good bad nice great wooden metallic plastic furry fluffy shiny ancient modern vintage elegant
""".split())
# "painting" / "light" are vocabulary words too: they are kept when they are part of a vocabulary phrase or
# when the prompt uses them as the only noun candidates (see ``prompt_nouns``).


def _singular(w: str, vocab: set[str]) -> str:
    if w in vocab:
        return w
    for suffix, repl in (("ies", "y"), ("ves", "f"), ("ves", "fe"), ("es", ""), ("s", "")):
        if w.endswith(suffix) and len(w) > len(suffix) + 1:
            cand = w[: -len(suffix)] + repl
            if cand in vocab:
                return cand
    return w


def prompt_nouns(prompt: str, vocabulary: Sequence[str] = GENERAL_VOCABULARY) -> list[str]:
    """Candidate nouns of a prompt, by the rule in the module docstring."""
    vocab = {v.lower() for v in vocabulary}
    text = re.sub(r"[^a-z0-9'\- ]+", " ", prompt.lower())
    words = [w.strip("'-") for w in text.split()]
    words = [w for w in words if w]
    found: list[tuple[int, str]] = []
    used = set()
    for n in (3, 2):
        for i in range(len(words) - n + 1):
            if any(j in used for j in range(i, i + n)):
                continue
            phrase = " ".join(words[i:i + n])
            phrase_s = " ".join(words[i:i + n - 1] + [_singular(words[i + n - 1], vocab)])
            for cand in (phrase, phrase_s):
                if cand in vocab:
                    found.append((i, cand))
                    used.update(range(i, i + n))
                    break
    for i, w in enumerate(words):
        if i in used or len(w) < 3 or w.isdigit() or w.endswith("ly"):
            continue
        s = _singular(w, vocab)
        if w in STOP_WORDS and s not in vocab - STOP_WORDS:
            continue
        if (w.endswith("ing") or w.endswith("ed")) and s not in vocab:
            continue
        if s in STOP_WORDS and s not in vocab:
            continue
        found.append((i, s))
    found.sort(key=lambda t: t[0])
    return list(dict.fromkeys(w for _, w in found))


def label_vocabulary(prompt: str | None, extra: Sequence[str] = (), general: bool = True) -> list[str]:
    """Prompt nouns, then ``extra`` words, then the general vocabulary (duplicates removed, order kept)."""
    words = (prompt_nouns(prompt) if prompt else []) + [e.strip().lower() for e in extra if e.strip()]
    if general:
        words += list(GENERAL_VOCABULARY)
    out = list(dict.fromkeys(words))
    if not out:
        raise ValueError("The label vocabulary is empty: give a prompt with nouns, extra words, or allow the "
                         "general vocabulary.")
    return out


def masked_crops(image: Image.Image, seg: Segments, pad: float = 0.1, fill: int = 128) -> list[Image.Image]:
    """One square RGB crop per segment: box grown by ``pad``, outside-mask pixels set to ``fill`` gray."""
    arr = np.asarray(image.convert("RGB"))
    h, w = arr.shape[:2]
    if (h, w) != tuple(seg.image_size):
        raise ValueError(f"Segments are for {seg.image_size[0]}x{seg.image_size[1]} images but the image is "
                         f"{h}x{w}: segment and label the same images.")
    out = []
    masks = seg.masks.bool().cpu().numpy()
    for k in range(len(seg)):
        m = masks[k]
        ys, xs = np.nonzero(m)
        if len(xs) == 0:
            x1, y1, x2, y2 = 0, 0, w - 1, h - 1
        else:
            x1, x2, y1, y2 = xs.min(), xs.max(), ys.min(), ys.max()
        bw, bh = x2 - x1 + 1, y2 - y1 + 1
        px, py = int(round(bw * pad)), int(round(bh * pad))
        x1, y1 = max(0, x1 - px), max(0, y1 - py)
        x2, y2 = min(w - 1, x2 + px), min(h - 1, y2 + py)
        crop = np.where(m[y1:y2 + 1, x1:x2 + 1, None], arr[y1:y2 + 1, x1:x2 + 1], np.uint8(fill))
        ch, cw = crop.shape[:2]
        side = max(ch, cw)
        sq = np.full((side, side, 3), fill, dtype=np.uint8)
        oy, ox = (side - ch) // 2, (side - cw) // 2
        sq[oy:oy + ch, ox:ox + cw] = crop
        out.append(Image.fromarray(sq, "RGB"))
    return out


_TEXT_CACHE: dict[tuple, torch.Tensor] = {}


@torch.no_grad()
def _text_features(clip: ModelHandle, words: Sequence[str], template: str, batch: int = 256) -> torch.Tensor:
    key = (str(clip.path), str(clip.dtype), str(clip.device), template, tuple(words))
    if key in _TEXT_CACHE:
        return _TEXT_CACHE[key]
    model, proc = clip.model, clip.processor
    tok = getattr(proc, "tokenizer", proc)
    device = next(model.parameters()).device
    feats = []
    for s in range(0, len(words), batch):
        texts = [template.format(w) for w in words[s:s + batch]]
        enc = tok(texts, padding=True, truncation=True, return_tensors="pt").to(device)
        f = model.get_text_features(**enc)
        f = getattr(f, "pooler_output", f) if not isinstance(f, torch.Tensor) else f
        feats.append(torch.nn.functional.normalize(f.float(), dim=-1))
    out = torch.cat(feats)
    if len(_TEXT_CACHE) > 64:
        _TEXT_CACHE.clear()
    _TEXT_CACHE[key] = out
    return out


@torch.no_grad()
def clip_label_crops(clip: ModelHandle, crops: Sequence[Image.Image], vocabulary: Sequence[str],
                     template: str = "a photo of a {}.", batch_size: int = 32) -> list[tuple[str, float]]:
    """Zero-shot: softmax over the vocabulary (CLIP's logit scale); returns (best label, its probability)."""
    if not crops:
        return []
    if not vocabulary:
        raise ValueError("The label vocabulary is empty.")
    model, proc = clip.model, clip.processor
    device = next(model.parameters()).device
    text = _text_features(clip, list(vocabulary), template)
    scale = float(model.logit_scale.exp()) if hasattr(model, "logit_scale") else 100.0
    out = []
    image_proc = getattr(proc, "image_processor", proc)
    for s in range(0, len(crops), batch_size):
        px = image_proc(images=list(crops[s:s + batch_size]), return_tensors="pt")["pixel_values"]
        f = model.get_image_features(pixel_values=px.to(device, clip.dtype))
        f = getattr(f, "pooler_output", f) if not isinstance(f, torch.Tensor) else f
        f = torch.nn.functional.normalize(f.float(), dim=-1)
        probs = (scale * f @ text.T).softmax(dim=-1)
        best = probs.argmax(dim=-1)  # first maximum on ties: prompt nouns come first
        for b, i in enumerate(best.tolist()):
            out.append((vocabulary[i], float(probs[b, i])))
        bridge.check_interrupt()
    return out


@torch.no_grad()
def caption_label_crops(captioner: ModelHandle, crops: Sequence[Image.Image], max_new_tokens: int = 12,
                        batch_size: int = 8) -> list[tuple[str, float]]:
    """Caption each crop (greedy); confidence = geometric-mean token probability of the caption under the
    captioner (teacher-forced), NaN where the model's forward does not give per-token logits for the text."""
    from .caption import caption_images
    if not crops:
        return []
    caps = caption_images(captioner, list(crops), max_new_tokens=max_new_tokens, batch_size=batch_size)
    caps = [c if c.strip() else "object" for c in caps]
    confs = []
    try:
        model, proc = captioner.model, captioner.processor
        device = next(model.parameters()).device
        for s in range(0, len(crops), batch_size):
            enc = proc(images=list(crops[s:s + batch_size]), text=caps[s:s + batch_size], return_tensors="pt",
                       padding=True).to(device)
            if "pixel_values" in enc:
                enc["pixel_values"] = enc["pixel_values"].to(captioner.dtype)
            logits = model(**enc).logits.float()
            ids, att = enc["input_ids"], enc["attention_mask"]
            logits = logits[:, -ids.shape[1]:]
            lp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
            m = att[:, 1:].float()
            confs += (torch.exp((lp * m).sum(1) / m.sum(1).clamp(min=1))).tolist()
    except Exception:
        confs = [math.nan] * len(caps)
    return list(zip(caps, confs))


def label_segments(images, segments: Sequence[Segments], prompts: Sequence[str] | None = None, *,
                   clip: ModelHandle | None = None, captioner: ModelHandle | None = None,
                   mode: str = "clip", extra_vocabulary: Sequence[str] = (), general_vocabulary: bool = True,
                   template: str = "a photo of a {}.", pad: float = 0.1) -> list[Segments]:
    """Fill ``labels`` and ``label_scores`` of each image's segments (in place; also returned).

    ``mode="clip"``: zero-shot over :func:`label_vocabulary` of that image's prompt. ``mode="caption"``:
    the caption of the crop is the label.
    """
    from .images import as_pil_list
    pils = as_pil_list(images)
    if len(pils) != len(segments):
        raise ValueError(f"{len(segments)} segment sets for {len(pils)} images: label the images you segmented.")
    prompts = list(prompts) if prompts is not None else [None] * len(pils)
    if mode == "clip" and clip is None:
        raise ValueError("CLIP labelling needs a CLIP model: connect a RewardLoop CLIP loader (or use "
                         "mode='caption' with a captioner).")
    if mode == "caption" and captioner is None:
        raise ValueError("Caption labelling needs a captioner: connect a RewardLoop captioner loader.")
    if mode not in ("clip", "caption"):
        raise ValueError(f"Unknown label mode {mode!r}: use 'clip' or 'caption'.")
    # one labelling call for all images that share a vocabulary (best-of-N: every image of a prompt)
    groups: dict[tuple, list[int]] = {}
    for i, prompt in enumerate(prompts):
        key = tuple(label_vocabulary(prompt, extra_vocabulary, general_vocabulary)) if mode == "clip" else ()
        groups.setdefault(key, []).append(i)
    for vocab, idx in groups.items():
        crops = [masked_crops(pils[i], segments[i], pad=pad) for i in idx]
        flat = [c for cs in crops for c in cs]
        got = iter(clip_label_crops(clip, flat, list(vocab), template) if mode == "clip" else
                   caption_label_crops(captioner, flat))
        for i, cs in zip(idx, crops):
            labelled = [next(got) for _ in cs]
            segments[i].labels = [g[0] for g in labelled]
            segments[i].label_scores = [g[1] for g in labelled]
    return list(segments)
