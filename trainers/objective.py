"""The DPG objective as plain tensor maths, shared by both model back-ends.

One objective module, two back-ends: ``trainers/dpg.py`` (diffusers models loaded from files) and
``trainers/comfy_graph.py`` (ComfyUI's own MODEL in the graph, any architecture). Neither back-end computes a
loss term itself: each one produces, per sample,

* ``x0_hat``  the one-step look-forward prediction x̂0 (fp32) in the model's latent space,
* ``x0``      the clean latent it came from,
* ``t``       the sampled noise level as a timestep on the paper's 1000-step scale (0 = clean, 999 = pure noise;
              what γ^t discounts), and
* ``native``  the per-sample MSE in the model's own prediction space (ε for ε-models, v for v-models, the
              velocity for flow models): the DreamBooth term,

and calls :func:`instance_loss` / :func:`prior_loss` / :func:`critic_regression` here. The terms:

* ``dreambooth``   mean(native) on the reference images; ``prior`` weights mean(native) on class images.
* ``look_forward`` E = (x̂0 − x0)², per-sample γ^{t_i}·mean(E_i) (what the released code reduces to).
* ``critic``       the paper's Q-network on E; the actor minimises γ^{t_i}·Q(E_i); afterwards Q(E.detach()) is
                   regressed to mean(E) (SGD, lr 0.01).
* ``dino``         λ·γ^{t_i}·(1 − cos(DINO(decode(x̂0)), DINO(reference_i))).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

GAMMA = 0.9986          # the released code's discount; the authors' own comment and ablation favour 1.0
CRITIC_LR = 0.01
PAPER_TIMESTEPS = 1000  # γ = 0.9986 is calibrated on SD's 1000 training timesteps


def discount(t: torch.Tensor, gamma: float = GAMMA) -> torch.Tensor:
    """γ^t per sample (fp32; t may be fractional)."""
    return torch.pow(torch.tensor(float(gamma), dtype=torch.float64), t.double().cpu()).float().to(t.device)


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean((a − b)²) over every axis but the batch, in fp32."""
    return ((a.float() - b.float()) ** 2).flatten(1).mean(1)


@dataclass
class Terms:
    """The actor loss of one batch, its logged parts, and the error map the critic regresses on afterwards."""
    loss: torch.Tensor
    metrics: dict = field(default_factory=dict)
    critic_input: torch.Tensor | None = None


def instance_loss(w, native: torch.Tensor, x0_hat: torch.Tensor | None = None, x0: torch.Tensor | None = None,
                  t: torch.Tensor | None = None, critic: torch.nn.Module | None = None,
                  decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  dino: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  ref_feats: torch.Tensor | None = None) -> Terms:
    """The instance (reference-image) part of the DPG actor loss for weights ``w`` (a ``DPGWeights``).

    ``native``: per-sample prediction-space MSE; ``x0_hat``/``x0``/``t`` are needed when any of look_forward,
    critic or dino is on; ``decode`` maps x̂0 to pixels in [-1, 1] and ``dino`` pixels to features (dino term);
    ``ref_feats`` are the DINO features of each sample's own reference image.
    """
    mse = native.float().mean()
    loss = mse.new_zeros(())
    metrics = {"mse": float(mse.detach())}
    if w.dreambooth > 0:
        loss = loss + w.dreambooth * mse
    err = None
    if w.look_forward > 0 or w.critic > 0 or w.dino > 0:
        if x0_hat is None or x0 is None or t is None:
            raise ValueError("look_forward / critic / dino need x0_hat, x0 and t")
        err = (x0_hat.float() - x0.float()) ** 2
        g = discount(t, w.gamma).to(err.device)
        lf = (g * err.flatten(1).mean(1)).mean()
        metrics["look_forward"] = float(lf.detach())
        if w.look_forward > 0:
            loss = loss + w.look_forward * lf
        if w.critic > 0:
            if critic is None:
                raise ValueError("the critic term needs a critic")
            critic.requires_grad_(False)
            lq = (g * critic(err)).mean()
            loss = loss + w.critic * lq
            metrics["critic_q"] = float(lq.detach())
        if w.dino > 0:
            if decode is None or dino is None or ref_feats is None:
                raise ValueError("the dino term needs decode, dino and ref_feats")
            feats = dino(decode(x0_hat))
            dist = 1 - F.cosine_similarity(feats, ref_feats.to(feats.device), dim=-1)
            ld = (g.to(dist.device) * dist).mean()
            loss = loss + w.dino * ld.to(loss.device)
            metrics["dino_dist"] = float(dist.mean().detach())
    return Terms(loss, metrics, err.detach() if (err is not None and w.critic > 0) else None)


def prior_loss(w, native: torch.Tensor) -> Terms:
    """Prior preservation: ``w.prior``·mean(native) over the class images."""
    lp = native.float().mean()
    return Terms(w.prior * lp, {"prior": float(lp.detach())})


def critic_regression(critic: torch.nn.Module, optimizer: torch.optim.Optimizer, err: torch.Tensor,
                      reduce_grads: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """One critic step after the actor step: regress Q(E) onto mean(E) (E detached); returns the critic loss."""
    critic.requires_grad_(True)
    with torch.enable_grad():
        q = critic(err)
        lc = ((q - err.flatten(1).mean(1)) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        lc.backward()
        if reduce_grads is not None:  # one critic for all processes
            for p in critic.parameters():
                p.grad = reduce_grads(p.grad)
        torch.nn.utils.clip_grad_norm_(critic.parameters(), 1.0)
        optimizer.step()
    critic.requires_grad_(False)
    return float(lc.detach())
