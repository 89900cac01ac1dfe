"""Values that travel between nodes (and between library calls): reward scores and segments."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class RewardScores:
    """One reward for a batch of images (ComfyUI socket type ``REWARDLOOP_SCORES``).

    ``values[i]`` belongs to image ``i``. ``higher_is_better`` tells ranking which way to sort; ``value_range``
    documents the scale (shown in tooltips and reports). ``details[i]`` holds per-image extras (captions,
    per-segment tables, ...). ``group`` optionally assigns each image to a prompt group for ranking.
    """

    name: str
    values: list[float]
    higher_is_better: bool = True
    value_range: tuple[float, float] | None = None
    details: list[dict[str, Any]] = field(default_factory=list)
    group: list[int] | None = None

    def __post_init__(self):
        self.values = [float(v) for v in self.values]
        if self.details and len(self.details) != len(self.values):
            raise ValueError(f"{self.name}: {len(self.details)} detail rows for {len(self.values)} scores.")
        if self.group is not None and len(self.group) != len(self.values):
            raise ValueError(f"{self.name}: {len(self.group)} group ids for {len(self.values)} scores.")

    def __len__(self) -> int:
        return len(self.values)

    def has_nan(self) -> bool:
        return any(math.isnan(v) for v in self.values)

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor(self.values, dtype=torch.float64)

    def oriented(self) -> list[float]:
        """Values with the sign flipped when lower is better, so that larger always means better."""
        return list(self.values) if self.higher_is_better else [-v for v in self.values]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "values": self.values, "higher_is_better": self.higher_is_better,
                "range": list(self.value_range) if self.value_range else None, "details": self.details,
                "group": self.group}

    @staticmethod
    def concat(parts: list["RewardScores"]) -> "RewardScores":
        """Join scores of consecutive image batches (same reward)."""
        if not parts:
            raise ValueError("Nothing to concatenate.")
        first = parts[0]
        vals, det = [], []
        for p in parts:
            if p.name != first.name or p.higher_is_better != first.higher_is_better:
                raise ValueError(f"Cannot join reward {p.name!r} to {first.name!r}.")
            vals += p.values
            det += p.details or [{} for _ in p.values]
        return RewardScores(first.name, vals, first.higher_is_better, first.value_range, det)


@dataclass
class Segments:
    """Segments of a batch of images (ComfyUI socket type ``REWARDLOOP_SEGMENTS``).

    ``masks``: bool ``[N, H, W]`` at image size; ``image_index[n]`` says which image segment ``n`` belongs to.
    ``boxes`` are ``[N, 4]`` XYXY pixels; ``areas`` pixel counts; ``scores`` the segmenter's confidence.
    ``labels`` / ``label_scores`` are filled by the labelling step; ``values`` by a judge (e.g. LLM 1..3).
    """

    masks: torch.Tensor
    boxes: torch.Tensor
    areas: torch.Tensor
    scores: torch.Tensor
    image_index: torch.Tensor
    image_size: tuple[int, int]
    labels: list[str] = field(default_factory=list)
    label_scores: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def for_image(self, i: int) -> "Segments":
        idx = (self.image_index == i).nonzero(as_tuple=True)[0]
        pick = idx.tolist()
        return Segments(self.masks[idx], self.boxes[idx], self.areas[idx], self.scores[idx],
                        self.image_index[idx], self.image_size,
                        [self.labels[j] for j in pick] if self.labels else [],
                        [self.label_scores[j] for j in pick] if self.label_scores else [],
                        [self.values[j] for j in pick] if self.values else [])
