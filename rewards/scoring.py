"""Rewards by name, for the CLI, ranking, auto-fix re-scoring, trainers and the A1111 extension.

A *scorer* is a callable ``scorer(images: list[PIL.Image], prompts: list[str]) -> list[RewardScores]``
with a ``names`` attribute (the reward names it produces, e.g. ``["caption"]`` or the four RAHF scores).
Each reward module provides ``make_scorer(models: dict[str, str], device=None, dtype=None, **options)``,
where ``models`` maps a role (``captioner``, ``text_encoder``, ``sam``, ``clip``, ``llm``, ``rich_feedback``,
``pickscore``, ``hps``, ``clip_tokenizer``, ``image_reward``, ``bert_tokenizer``, ``aesthetic``) to a catalogue
key, a model-folder name or a path; roles left out take the module's defaults.
:func:`make_scorer` hands each reward only its own roles (see :func:`models_for`), so one option set can
drive several rewards.
ComfyUI nodes pass scorers along in the ``REWARDLOOP_SCORER`` socket.
"""
from __future__ import annotations

import importlib
from typing import Callable, Protocol, Sequence

from PIL import Image

from ..errors import UserError
from .types import RewardScores

# reward name -> "module:function" (relative to this package)
SCORER_FACTORIES: dict[str, str] = {
    "caption": ".caption_reward:make_scorer",
    "sam_llm": ".sam_llm:make_scorer",
    "rich": ".rich_feedback.predict:make_scorer",
    "pickscore": ".pickscore:make_scorer",
    "hps": ".hps:make_scorer",
    "image_reward": ".image_reward:make_scorer",
    "aesthetic": ".aesthetic:make_scorer",
    "clip_score": ".clip_score:make_scorer",
}

# one line per reward: what it measures, its range and direction (tooltips, CLI help, README table)
REWARD_INFO: dict[str, str] = {
    "caption": "caption the image, cosine to the prompt; -1..1, higher is better",
    "sam_llm": "segment, label, LLM likelihood (1..3) of each part in the prompted scene, (mean-2)/2; -0.5..0.5, "
               "higher is better",
    "rich": "RAHF plausibility, alignment, aesthetics, overall (+ heatmaps); 0..1 each, higher is better",
    "pickscore": "PickScore: 100·cos(image, prompt) of a Pick-a-Pic CLIP-H; about 18..24, higher is better",
    "hps": "HPS v2.1: cos(image, prompt) of an HPD-v2 CLIP-H; -1..1 (about 0.2..0.35), higher is better",
    "image_reward": "ImageReward: BLIP + MLP, standardised; about -2..2, higher is better",
    "aesthetic": "LAION aesthetic predictor v2 on CLIP ViT-L/14; about 1..10, higher is better (prompt unused)",
    "clip_score": "CLIPScore: 2.5·max(cos(image, 'A photo depicts' + prompt), 0); 0..2.5, higher is better",
}


class Scorer(Protocol):
    names: list[str]

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[RewardScores]: ...


class FunctionScorer:
    """Wrap a plain function as a scorer (handy in tests and for custom rewards)."""

    def __init__(self, names: list[str], fn: Callable[[Sequence[Image.Image], Sequence[str]], list[RewardScores]]):
        self.names = list(names)
        self._fn = fn

    def __call__(self, images, prompts):
        return self._fn(images, prompts)

    def __repr__(self) -> str:
        return f"<scorer {', '.join(self.names)}>"


# the model roles each built-in reward takes; an unscoped ROLE=… goes only to the rewards that take ROLE
# (sam_llm's semantic judge shares the caption reward's text encoder)
REWARD_ROLES: dict[str, set[str]] = {"caption": {"captioner", "text_encoder"}, "sam_llm": {"sam", "clip", "llm", "text_encoder"},
                                     "rich": {"rich_feedback"}, "pickscore": {"pickscore"},
                                     "hps": {"hps", "clip_tokenizer"},
                                     "image_reward": {"image_reward", "bert_tokenizer"},
                                     "aesthetic": {"aesthetic", "clip"}, "clip_score": {"clip"}}


# which catalogue kinds can fill each model role (model pickers: the A1111/Forge extension, nodes)
ROLE_KINDS: dict[str, tuple[str, ...]] = {
    "captioner": ("captioner",), "text_encoder": ("text_encoder", "clip"), "sam": ("sam",), "clip": ("clip",),
    "llm": ("llm",), "rich_feedback": ("rich_feedback",), "pickscore": ("clip",), "hps": ("hps",),
    "clip_tokenizer": ("tokenizer",), "image_reward": ("image_reward",), "bert_tokenizer": ("tokenizer",),
    "aesthetic": ("aesthetic",),
}


def default_models(reward: str) -> dict[str, str]:
    """The models a reward uses for the roles it is not given (its module's ``DEFAULT_MODELS``), without loading."""
    if reward not in SCORER_FACTORIES:
        raise ValueError(f"Unknown reward {reward!r}: choose from {', '.join(available())}.")
    mod = importlib.import_module(SCORER_FACTORIES[reward].split(":")[0], __package__)
    found = getattr(mod, "DEFAULT_MODELS", None)
    if found is None and getattr(mod, "DEFAULT_MODEL", None):
        found = {next(iter(REWARD_ROLES.get(reward, {"model"}))): mod.DEFAULT_MODEL}
    return dict(found or {})


def models_for(reward: str, models: dict[str, str]) -> dict[str, str]:
    """Split model options between rewards: ``reward.role=X`` goes to that reward only (e.g.
    ``sam_llm.captioner=blip-large``, ``sam_llm.points_per_side=8``); a plain ``key=X`` goes to the built-in rewards
    that take that role or option (``llm=…`` only to sam_llm, ``clip=…`` to sam_llm, aesthetic and clip_score,
    ``weight=…`` only to clip_score). A reward that does not declare its keys (a custom one) gets every plain key."""
    takes = set(accepted_keys(reward) or ()) if reward in SCORER_FACTORIES else set()
    roles = set().union(*REWARD_ROLES.values())
    out = {}
    for key, value in models.items():
        if "." in key:
            scope, role = key.split(".", 1)
            if scope == reward:
                out[role] = value
        elif key in takes if takes else (key not in roles or key in REWARD_ROLES.get(reward, roles)):
            out[key] = value
    return out


def available() -> list[str]:
    return sorted(SCORER_FACTORIES)


def _reward_module(name: str):
    if name not in SCORER_FACTORIES:
        raise UserError(f"Unknown reward {name!r}: choose from {', '.join(available())}.")
    return importlib.import_module(SCORER_FACTORIES[name].split(":")[0], __package__)


def accepted_keys(name: str) -> list[str] | None:
    """The model roles and options a built-in reward takes inside ``models`` (None: a custom reward that does not
    declare them, which takes any key)."""
    mod = _reward_module(name)
    if not hasattr(mod, "MODEL_ROLES"):
        return None
    return sorted(set(mod.MODEL_ROLES) | set(getattr(mod, "OPTION_KEYS", {})))


def score_names(name: str) -> list[str]:
    """The scores a built-in reward produces, in order (known before any model loads)."""
    return list(getattr(_reward_module(name), "SCORE_NAMES", [name]))


def check_reward_names(names: Sequence[str]) -> list[str]:
    """Known, non-empty, each once."""
    names = [n.strip() for n in names if n and n.strip()]
    if not names:
        raise UserError(f"No reward was named: choose from {', '.join(available())}.")
    for n in names:
        _reward_module(n)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"Reward {twice[0]!r} is named twice: name each reward once.")
    return names


def check_model_keys(names: Sequence[str], models: dict[str, str]) -> None:
    """Every ``ROLE=…`` / ``REWARD.ROLE=…`` key must be a role or option of a chosen reward (none is ignored)."""
    takes = {n: accepted_keys(n) for n in names}
    if any(keys is None for keys in takes.values()):
        return  # a custom reward takes keys we cannot list
    for key, value in models.items():
        if not str(value).strip():
            raise UserError(f"Model option {key}= has no value: give a model name (e.g. {key}=NAME) or drop it.")
        if "." in key:
            scope, role = key.split(".", 1)
            if scope not in takes:
                raise UserError(f"Model option {key}=…: {scope!r} is not one of the chosen rewards "
                                f"({', '.join(names)}).")
            if role not in takes[scope]:
                raise UserError(f"Model option {key}=…: reward {scope} has no role or option {role!r}; it takes "
                                f"{', '.join(takes[scope])}.")
        elif not any(key in keys for keys in takes.values()):
            what = "; ".join(f"{n}: {', '.join(keys)}" for n, keys in takes.items())
            raise UserError(f"Model option {key}=…: no chosen reward takes {key!r} ({what}).")


def check_scorers(names: Sequence[str], models: dict[str, str] | None = None, trusted: bool = True,
                  check_files: bool = True) -> dict[str, dict[str, str]]:
    """Validate a reward set before any model loads: names, model roles and options, and that every model each
    reward would load (defaults included) is found on disk with intact safetensors headers and no code-carrying
    pickles. Returns ``{reward: {role: resolved path}}``. ``trusted=False`` (names typed into a shared workflow)
    accepts only catalogue keys and names inside the model folders, never a host path."""
    from ..weights.registry import resolve
    from ..weights.safe_load import check_model_files
    names = check_reward_names(list(names))
    models = dict(models or {})
    check_model_keys(names, models)
    plan: dict[str, dict[str, str]] = {}
    for n in names:
        mod = _reward_module(n)
        if not hasattr(mod, "needed_models"):  # a custom reward: it checks its own models
            plan[n] = {}
            continue
        need, _ = mod.needed_models(models_for(n, models))
        roles = getattr(mod, "MODEL_ROLES", {})
        plan[n] = {}
        for role, value in need.items():
            r = resolve(value, folder=roles[role], trusted=trusted)
            if check_files:
                check_model_files(r.path)
            plan[n][role] = str(r.path)
    return plan


def make_scorer(name: str, models: dict[str, str] | None = None, **options) -> Scorer:
    mod = _reward_module(name)
    own = accepted_keys(name)
    if own is not None:  # a plain key no built-in reward takes is a typo, not another reward's option
        declared = set().union(*(accepted_keys(n) or () for n in SCORER_FACTORIES))
        bogus = sorted(k for k in (models or {}) if "." not in k and k not in declared)
        if bogus:
            raise UserError(f"Model option {bogus[0]}=…: no reward has a model role or option {bogus[0]!r}; {name} "
                            f"takes {', '.join(own)}.")
    return getattr(mod, SCORER_FACTORIES[name].split(":")[1])(models=models_for(name, dict(models or {})), **options)


def parse_model_options(items: Sequence[str] | None) -> dict[str, str]:
    """``["captioner=blip-large", "llm=/path/to/model"]`` → ``{"captioner": "blip-large", ...}``."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--model takes ROLE=MODEL (e.g. captioner=blip-large), got {item!r}.")
        role, value = item.split("=", 1)
        if not role.strip():
            raise UserError(f"--model {item!r} has no role: write ROLE=MODEL (e.g. captioner=blip-large).")
        if role.strip() in out:
            raise UserError(f"--model gives {role.strip()!r} twice: give each role once.")
        out[role.strip()] = value.strip()
    return out
