"""A fake deterministic reward with a known optimum, registered only by tests (monkeypatched into the registry)."""
from __future__ import annotations

import numpy as np

from rewardloop.rewards.scoring import FunctionScorer
from rewardloop.rewards.types import RewardScores


def brightness(images) -> list[float]:
    """Mean brightness (0..1) of each image's top-left quadrant: 1.0 (white there) is the optimum."""
    out = []
    for im in images:
        a = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
        h, w = a.shape[:2]
        out.append(float(a[: h // 2, : w // 2].mean()))
    return out


def make_scorer(models=None, device=None, dtype=None, name: str = "brightness", higher_is_better: bool = True, **_):
    def fn(images, prompts):
        vals = brightness(images)
        return [RewardScores(name, vals if higher_is_better else [1 - v for v in vals], higher_is_better, (0.0, 1.0))]
    return FunctionScorer([name], fn)
