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

import math
from dataclasses import dataclass, field, replace
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


LOSS_MODES = ("dreambooth", "look_forward", "critic", "dino", "look_forward+dino", "critic+dino", "custom")


# ====================================================================== formulas
def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """One-step look-forward x̂0 = (x_t − sqrt(1−ᾱ)·ε̂)/sqrt(ᾱ), computed in fp32."""
    a = alpha_bar.float()
    while a.dim() < x_t.dim():
        a = a.view(*a.shape, *([1] * (x_t.dim() - a.dim())))
    return (x_t.float() - (1 - a).sqrt() * eps.float()) / a.sqrt()


def effective_weight(t: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float = GAMMA) -> torch.Tensor:
    """w(t) = γ^t·(1−ᾱ_t)/ᾱ_t: the look-forward loss as a reweighted ε-MSE (paper notes §1.2 table)."""
    a = alphas_cumprod.double()[t.long().cpu()]
    return (discount(t.cpu(), gamma).double() * (1 - a) / a).float()


# ====================================================================== critic
class Critic(torch.nn.Module):
    """The paper's FullyConvRegressionModel with the flatten sized from the latent (C×H×W error map → scalar)."""

    def __init__(self, channels: int = 4, height: int = 64, width: int = 64, hidden: int = 64):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 1, 3, padding=1)
        self.fc1 = torch.nn.Linear(height * width, hidden)
        self.fc2 = torch.nn.Linear(hidden, 1)
        self.shape = (channels, height, width)
        with torch.no_grad():  # non-negative uniform init, as released: Q starts ≈ weighted mean of E
            for m, hi in ((self.conv, 1 / 9), (self.fc1, 1 / (height * width)), (self.fc2, 1 / hidden)):
                m.weight.uniform_(0, hi)
                m.bias.uniform_(0, hi)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv(e.float()), 0.01).flatten(1)
        return self.fc2(F.relu(self.fc1(h))).squeeze(1)


# ====================================================================== objective
@dataclass
class DPGWeights:
    dreambooth: float = 1.0      # instance noise-MSE
    prior: float = 1.0           # prior preservation (only when class images are given)
    look_forward: float = 0.0
    critic: float = 0.0
    dino: float = 0.0            # λ
    gamma: float = GAMMA
    critic_lr: float = CRITIC_LR

    @classmethod
    def for_mode(cls, mode: str, **overrides) -> "DPGWeights":
        """Preset weights per loss mode (the released LF recipe drops the instance ε-MSE)."""
        table = {
            "dreambooth": dict(dreambooth=1.0),
            "look_forward": dict(dreambooth=0.0, look_forward=1.0),
            "critic": dict(dreambooth=0.0, critic=1.0),
            "dino": dict(dreambooth=1.0, dino=1.0),
            "look_forward+dino": dict(dreambooth=0.0, look_forward=1.0, dino=1.0),
            "critic+dino": dict(dreambooth=0.0, critic=1.0, dino=1.0),
            "custom": {},
        }
        if mode not in table:
            raise ValueError(f"Unknown loss mode {mode!r}: choose one of {', '.join(LOSS_MODES)}.")
        w = cls(**table[mode])
        return replace(w, **{k: v for k, v in overrides.items() if v is not None})

    def validate(self) -> None:
        for k in ("dreambooth", "prior", "look_forward", "critic", "dino", "gamma", "critic_lr"):
            if not math.isfinite(float(getattr(self, k))):
                raise ValueError(f"Loss weight {k} must be a finite number (got {getattr(self, k)}).")
        for k in ("dreambooth", "prior", "look_forward", "critic", "dino"):
            if getattr(self, k) < 0:
                raise ValueError(f"Loss weight {k} must be >= 0 (got {getattr(self, k)}).")
        if self.dreambooth + self.look_forward + self.critic + self.dino <= 0:
            raise ValueError("All instance loss weights are 0: turn on dreambooth, look_forward, critic or dino.")
        if not (0 < self.gamma <= 1):
            raise ValueError(f"gamma must be in (0, 1] (got {self.gamma}).")


class DINOFeatures:
    """Differentiable DINO CLS features of images in [-1,1] (resize + ImageNet normalisation inside the graph)."""

    def __init__(self, name: str = "dino-vits16", device=None):
        from ..weights.loaders import load_dino
        self.handle = load_dino(name, dtype="fp32", device=device)
        self.model = self.handle.model
        if any(p.is_inference() for p in self.model.parameters()):
            # loaded (and cached) under ComfyUI's inference_mode: a private copy with ordinary tensors
            import copy
            with torch.inference_mode(False):
                model = copy.deepcopy(self.model)
            from .loop import normalize_inference_tensors
            normalize_inference_tensors(model)
            self.model = model
        self.model.requires_grad_(False)
        proc = self.handle.processor
        size = getattr(proc, "size", None) or {"height": 224, "width": 224}
        if "height" in size:
            self.size = (int(size["height"]), int(size["width"]))
        else:
            s = int(size.get("shortest_edge", 224))
            self.size = (s, s)
        mean = getattr(proc, "image_mean", None) or [0.485, 0.456, 0.406]
        std = getattr(proc, "image_std", None) or [0.229, 0.224, 0.225]
        dev = next(self.model.parameters()).device
        self.mean = torch.tensor(mean, device=dev).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=dev).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = ((images.float() + 1) / 2).clamp(0, 1).to(self.mean.device)
        x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=False)
        x = (x - self.mean) / self.std
        out = self.model(pixel_values=x)
        return out.last_hidden_state[:, 0].float()


# ====================================================================== the terms, shared by both back-ends
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
