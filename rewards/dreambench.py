"""DreamBench, the DreamBooth paper's personalization benchmark: prompt templates, subject classes, prompts.

Facts (Ruiz et al., CVPR 2023, and the dataset's ``prompts_and_classes.txt``): 30 subjects of 15 classes, 21 objects
and 9 live subjects (cats and dogs), 25 prompts per subject. Objects and live subjects share 10
recontextualisation prompts and 5 property-modification prompts; objects add 10 more recontextualisations, live
subjects 10 accessorisation prompts (hats, outfits, glasses). A prompt names the subject the way the model was
trained: identifier + class noun ("a sks dog in the jungle").

CLIP-T convention: the text the image is compared with is the prompt with the identifier **removed** ("a dog in
the jungle"). The identifier is a rare token that means nothing to the evaluation CLIP, so keeping it only adds
noise; the class noun stays, so the text still says what should be in the picture. ``clip_text="instance"``
keeps the identifier instead, for comparison with papers that did so.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# "{subject}" is the identifier followed by the class noun ("sks dog"), or the class noun alone for CLIP-T.
_SHARED_CONTEXTS = (
    "a {subject} in the jungle",
    "a {subject} in the snow",
    "a {subject} on the beach",
    "a {subject} on a cobblestone street",
    "a {subject} on top of pink fabric",
    "a {subject} on top of a wooden floor",
    "a {subject} with a city in the background",
    "a {subject} with a mountain in the background",
    "a {subject} with a blue house in the background",
    "a {subject} on top of a purple rug in a forest",
)
_OBJECT_CONTEXTS = (
    "a {subject} with a wheat field in the background",
    "a {subject} with a tree and autumn leaves in the background",
    "a {subject} with the Eiffel Tower in the background",
    "a {subject} floating on top of water",
    "a {subject} floating in an ocean of milk",
    "a {subject} on top of green grass with sunflowers around it",
    "a {subject} on top of a mirror",
    "a {subject} on top of the sidewalk in a crowded street",
    "a {subject} on top of a dirt road",
    "a {subject} on top of a white rug",
)
_LIVE_ACCESSORIES = (
    "a {subject} wearing a red hat",
    "a {subject} wearing a santa hat",
    "a {subject} wearing a rainbow scarf",
    "a {subject} wearing a black top hat and a monocle",
    "a {subject} in a chef outfit",
    "a {subject} in a firefighter outfit",
    "a {subject} in a police outfit",
    "a {subject} wearing pink glasses",
    "a {subject} wearing a yellow shirt",
    "a {subject} in a purple wizard outfit",
)
_PROPERTIES = (
    "a red {subject}",
    "a purple {subject}",
    "a shiny {subject}",
    "a wet {subject}",
    "a cube shaped {subject}",
)

OBJECT_TEMPLATES: tuple[str, ...] = _SHARED_CONTEXTS + _OBJECT_CONTEXTS + _PROPERTIES
LIVE_TEMPLATES: tuple[str, ...] = _SHARED_CONTEXTS + _LIVE_ACCESSORIES + _PROPERTIES

# The 30 DreamBench subjects and their class nouns (9 live: cat, cat2, dog, dog2, dog3, dog5-dog8).
SUBJECTS: dict[str, str] = {
    "backpack": "backpack", "backpack_dog": "backpack", "bear_plushie": "stuffed animal", "berry_bowl": "bowl",
    "can": "can", "candle": "candle", "cat": "cat", "cat2": "cat", "clock": "clock", "colorful_sneaker": "sneaker",
    "dog": "dog", "dog2": "dog", "dog3": "dog", "dog5": "dog", "dog6": "dog", "dog7": "dog", "dog8": "dog",
    "duck_toy": "toy", "fancy_boot": "boot", "grey_sloth_plushie": "stuffed animal", "monster_toy": "toy",
    "pink_sunglasses": "glasses", "poop_emoji": "toy", "rc_car": "toy", "red_cartoon": "cartoon",
    "robot_toy": "toy", "shiny_sneaker": "sneaker", "teapot": "teapot", "vase": "vase",
    "wolf_plushie": "stuffed animal",
}

# Classes that get the live-subject prompts (things that can wear a hat or an outfit). DreamBench's own live
# classes are dog and cat; the rest extend the rule to other animals and to people. Matched on the whole class
# phrase or its last word; a word from NOT_ALIVE ("toy dog", "stuffed cat", "robot dog") makes it an object.
LIVE_CLASSES = frozenset({
    "dog", "cat", "puppy", "kitten", "person", "man", "woman", "boy", "girl", "child", "kid", "baby", "people",
    "horse", "pony", "cow", "sheep", "goat", "pig", "rabbit", "bunny", "hamster", "guinea pig", "ferret",
    "bird", "parrot", "owl", "duck", "chicken", "fox", "wolf", "bear", "panda", "lion", "tiger", "monkey",
    "raccoon", "squirrel", "hedgehog", "turtle", "lizard", "frog", "animal",
})
NOT_ALIVE = frozenset({"toy", "stuffed", "plush", "plushie", "teddy", "robot", "cartoon", "statue", "figurine",
                       "ceramic", "wooden", "plastic", "porcelain", "lego", "origami", "paper", "metal"})
KINDS = ("auto", "object", "live")

_CLASS_OK = re.compile(r"^[a-z][a-z' -]*[a-z]$|^[a-z]$")
_IDENT_OK = re.compile(r"^[A-Za-z0-9_<>]+$")


@dataclass(frozen=True)
class EvalPrompt:
    index: int          # position in the template list (0-24)
    template: str       # with the {subject} placeholder
    prompt: str         # what the model is asked for: identifier + class noun
    clip_text: str      # what CLIP-T compares the image with


def resolve_class(name: str) -> str:
    """A class noun ("dog", "stuffed animal") or a DreamBench subject name ("dog6" → "dog"), normalised."""
    text = " ".join(str(name or "").strip().lower().split())
    if not text:
        raise ValueError("The subject class is empty: give its class noun, e.g. --class dog or --class 'stuffed "
                         "animal' (or a DreamBench subject name such as dog6).")
    if text in SUBJECTS:
        return SUBJECTS[text]
    if len(text) > 40 or len(text.split()) > 4 or not _CLASS_OK.match(text):
        raise ValueError(f"Subject class {name!r} is not a class noun: use one to four words of letters, e.g. 'dog', "
                         "'backpack', 'stuffed animal' (or a DreamBench subject name such as wolf_plushie).")
    return text


def subject_kind(class_noun: str, kind: str = "auto") -> str:
    """'live' or 'object': ``kind`` when given, else from the class (see LIVE_CLASSES / NOT_ALIVE)."""
    if kind not in KINDS:
        raise ValueError(f"Unknown subject kind {kind!r}: choose {', '.join(KINDS)}.")
    if kind != "auto":
        return kind
    cls = resolve_class(class_noun)
    words = cls.split()
    if any(w in NOT_ALIVE for w in words):
        return "object"
    return "live" if (cls in LIVE_CLASSES or words[-1] in LIVE_CLASSES) else "object"


def templates_for(kind: str) -> tuple[str, ...]:
    if kind not in ("object", "live"):
        raise ValueError(f"Template set must be 'object' or 'live' (got {kind!r}).")
    return LIVE_TEMPLATES if kind == "live" else OBJECT_TEMPLATES


def check_identifier(identifier: str) -> str:
    ident = str(identifier or "").strip()
    if not ident or not _IDENT_OK.match(ident):
        raise ValueError(f"Identifier {identifier!r} must be one word (letters, digits, _ or <>), e.g. sks: the "
                         "rare token the LoRA was trained with.")
    return ident


def build_prompts(class_noun: str, identifier: str = "sks", kind: str = "auto", limit: int = 0,
                  clip_text: str = "class") -> list[EvalPrompt]:
    """The subject's DreamBench prompts (25; the first ``limit`` when > 0)."""
    cls = resolve_class(class_noun)
    ident = check_identifier(identifier)
    if clip_text not in ("class", "instance"):
        raise ValueError(f"clip_text must be 'class' (identifier removed) or 'instance' (got {clip_text!r}).")
    if int(limit) < 0:
        raise ValueError(f"limit must be >= 0 (got {limit}).")
    temps = templates_for(subject_kind(cls, kind))
    temps = temps[:int(limit)] if limit else temps
    out = []
    for i, t in enumerate(temps):
        prompt = t.format(subject=f"{ident} {cls}")
        out.append(EvalPrompt(i, t, prompt, prompt if clip_text == "instance" else t.format(subject=cls)))
    return out


def strip_identifier(prompt: str, identifier: str) -> str:
    """'a sks dog on the beach' → 'a dog on the beach' (whole-word removal; the text is unchanged otherwise)."""
    ident = str(identifier or "").strip()
    if not ident:
        return prompt.strip()
    words = [w for w in prompt.split() if w != ident]
    return " ".join(words)
