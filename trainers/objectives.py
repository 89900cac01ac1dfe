"""Training objectives for the LoRA loop: the :class:`Objective` protocol and the plain noise MSE.

An objective is called with the loop's :class:`~.loop.Trainer` and a :class:`~.batches.Batch` and returns
``(loss, metrics)``; optional hooks: ``setup(trainer)`` before step 1, ``after_step(trainer, batch)`` after each
optimizer step, ``state_dict()`` / ``load_state_dict()`` for state checkpointed with the run, ``needs_pixels``,
``settings()`` (a JSON-able dict of what the objective computes: a run resumes only with the same settings).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from .batches import Batch

if TYPE_CHECKING:
    from .loop import Trainer


class Objective(Protocol):
    def __call__(self, trainer: "Trainer", batch: Batch) -> tuple[torch.Tensor, dict[str, float]]: ...


class NoiseMSE:
    """Plain text-to-image / DreamBooth loss: MSE to the noise (or v) target, + prior preservation."""
    name = "noise_mse"
    needs_pixels = False

    def __init__(self, prior_weight: float = 1.0):
        self.prior_weight = float(prior_weight)

    def __call__(self, trainer: "Trainer", batch: Batch):
        out = trainer.predict(batch)
        per = ((out["pred"].float() - out["target"].float()) ** 2).flatten(1).mean(1)
        inst, prior = batch.instance, batch.is_prior
        loss_inst = per[inst].mean()
        metrics = {"mse": float(loss_inst.detach())}
        loss = loss_inst
        if prior.any():
            loss_prior = per[prior].mean()
            loss = loss + self.prior_weight * loss_prior
            metrics["prior"] = float(loss_prior.detach())
        return loss, metrics

    def settings(self) -> dict:
        return {"prior_weight": self.prior_weight}

    # objectives may carry state (a critic) that is checkpointed with the run
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass
