"""A learned reward critic for DPG: any reward — differentiable or not — steers the UNet through Q_φ.

The DPG paper's claim is that a critic lets "objectives, differential or even non-differential" train the
policy. Here the critic is a small fp32 conv net ``Q_φ(x̂0, t [, x0_ref]) → K values`` that lives outside the UNet
graph:

1. **Rewards** are computed every ``every`` actor steps (the *critic update interval*) on the look-forward
   predictions x̂0 of the current batch's reference samples: x̂0 is decoded by the VAE (no gradient), turned into
   images, and scored by any scorer of :mod:`rewards.scoring` (one batched call per scorer), or by DINO similarity
   to the sample's own reference image (``dino``). Several rewards are weighted together the way FineRewards'
   assemble ranking does it: each oriented reward (higher is better) is z-scored over the reward cache, then
   ``Σ_k w_k·z_k``.
2. The scored samples go into a **reward cache** (a ring buffer of x̂0, t, reference latent, raw rewards and, for
   the TD target, the next state on the denoising chain). It is checkpointed with the run, so a resumed run
   continues bit-identically.
3. The **critic** takes ``iters`` Adam steps on random minibatches of the cache (its own generator), with one of
   two targets:

   * ``regression`` (default): Q_k(x̂0_t, t) ← z_k(D(x̂0_t)), the standardized reward of the decoded look-forward
     image. This is the paper's immediate-reward critic with a real reward in place of mean(E).
   * ``td``: the paper's cumulative target, Q(x_t) ← r(x_t) + γ^{t−t'}·Q(x_{t'}), a TD(0) target along the
     deterministic (DDIM) denoising chain: x_{t'} = √ᾱ_{t'}·x̂0_t + √(1−ᾱ_{t'})·ε̂_t with t' = t − ``td_hop``
     (``td_hop`` = 1 is the paper's per-timestep chain), x̂0_{t'} from one more no-grad UNet call, and
     Q(x_{t'}) from the current critic, detached; states with t' < 0 are terminal (target r).

   **What the released code does** (wfanyue/DPG-T2I-Personalization, see ``reference/paper_dpg.md`` §1.2): no
   TD/Bellman target and no next state; its critic regresses mean((x̂0 − x0)²) of the sampled t (SGD, lr 0.01),
   so it is close to an identity map and the method reduces to a γ^t-weighted look-forward loss
   (:mod:`trainers.dpg`'s ``critic`` and ``look_forward`` modes). The ``td`` option implements the formula the
   paper writes, not code the authors released.
4. The **actor** (the UNet LoRA) ascends ``Σ_k w_k·γ^{t_i}·Q_k(x̂0_i, t_i)`` through x̂0 (the critic's own
   parameters are frozen for it; each weight w_k is that reward's λ, the paper's ablation uses 0.1 and 1). It
   starts once the cache holds ``warmup`` samples and the critic has been updated once.

Costs: ``reward_s`` (decode + score + TD next state) and ``critic_s`` (critic regression) are logged per step in
the run's ``log.csv``, beside ``reward_<name>`` (mean raw reward of the latest scored samples) and
``reward_critic_loss`` (apart from the paper critic's ``critic_loss``: both can be on).

:class:`RewardCritic` (:func:`parameter_count`) has 100,865 parameters (0.10M; the paper's critic has 0.26M) for
one reward on 4-channel latents, 102,017 when it also takes the reference latent (the dino reward), at any latent
size: three 3×3 convs (32, 32, 64 channels, the last two stride 2), a 4×4 adaptive average pool, a 1024 → 64
projection, a sinusoidal timestep embedding added to it, and a 64 → 64 → K head.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import UserError

TARGETS = ("regression", "td")
DINO = "dino"  # the DINO-similarity reward (needs the reference images), next to the scorer registry's names


# ====================================================================== reward specs (CLI / node input)
@dataclass
class RewardSpec:
    """One reward of the mix: a registry name (``pickscore``), optionally one of its outputs (``rich.overall``),
    and its weight; or a ready scorer object (ComfyUI's REWARDLOOP_SCORER socket, tests)."""
    name: str
    weight: float = 1.0
    output: str | None = None
    scorer: Any = None

    @property
    def label(self) -> str:
        return self.name + (f".{self.output}" if self.output else "")


def known_rewards() -> list[str]:
    from ..rewards.scoring import available
    return sorted(set(available()) | {DINO})


def parse_reward_specs(items: Sequence[str] | None) -> list[RewardSpec]:
    """``["pickscore:0.5", "dino", "rich.overall:2"]`` → specs; one clear error for a bad item, before any load."""
    from ..rewards.scoring import score_names
    out = []
    known = known_rewards()
    for item in items or []:
        text = str(item).strip()
        name, _, w = text.partition(":")
        name = name.strip()
        base, _, output = name.partition(".")
        if base not in known:
            raise UserError(f"Unknown reward {base!r} in --reward {text!r}: choose from {', '.join(known)} "
                             f"(NAME[.OUTPUT][:WEIGHT], e.g. pickscore:0.5).")
        try:
            weight = float(w) if w.strip() else 1.0
        except ValueError:
            raise UserError(f"--reward {text!r}: the weight after ':' must be a number (e.g. {base}:0.5).") from None
        if not math.isfinite(weight) or weight < 0:
            raise UserError(f"--reward {text!r}: the weight must be finite and >= 0.")
        spec = RewardSpec(base, weight, output.strip() or None)
        if spec.output and base != DINO and spec.output not in score_names(base):
            raise UserError(f"--reward {text!r}: reward {base} has no output {spec.output!r}; it gives "
                            f"{', '.join(score_names(base))}.")
        if any(s.label == spec.label or (s.name == base and not (s.output and spec.output)) for s in out):
            raise UserError(f"--reward {text!r}: reward {spec.label} is named twice: name each reward once.")
        out.append(spec)
    return out


# ====================================================================== reward sources
@dataclass
class ScoringBatch:
    """What a reward source sees: decoded look-forward images (tensor in [-1, 1] and PIL), prompts, references."""
    pixels: torch.Tensor
    prompts: list[str]
    ref_index: torch.Tensor
    _pil: list | None = None

    @property
    def images(self) -> list:
        if self._pil is None:
            from PIL import Image
            arr = ((self.pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            arr = arr.permute(0, 2, 3, 1).cpu().numpy()
            self._pil = [Image.fromarray(a) for a in arr]
        return self._pil


class ScorerSource:
    """A scorer of :mod:`rewards.scoring` (or any object with its interface): one batched call per scoring round;
    each selected output becomes one critic head, oriented so that higher is better."""

    def __init__(self, spec: RewardSpec, scorer):
        self.spec = spec
        self.scorer = scorer
        names = list(getattr(scorer, "names", []) or [spec.name])
        if spec.output is not None:
            if spec.output not in names:
                raise UserError(f"Reward {spec.name!r} has no output {spec.output!r}: it gives {', '.join(names)}.")
            names = [spec.output]
        self.names = names

    def __call__(self, sb: ScoringBatch) -> torch.Tensor:
        got = {s.name: s for s in self.scorer(sb.images, sb.prompts)}
        cols = []
        for n in self.names:
            if n not in got:
                raise UserError(f"Reward {self.spec.name!r} did not return {n!r} (it returned {', '.join(got)}).")
            cols.append(torch.tensor(got[n].oriented(), dtype=torch.float64))
        return torch.stack(cols, 1)


class DinoSource:
    """DINO similarity of the decoded x̂0 to the sample's own reference image: cos(DINO(D(x̂0)), DINO(ref)).

    ``features`` (images in [-1, 1] → CLS features) and ``ref_feats`` (one row per reference image) are set by the
    back-end once it has the references (``DPGObjective.setup``)."""

    def __init__(self, spec: RewardSpec, features: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 ref_feats: torch.Tensor | None = None):
        self.spec = spec
        self.features = features
        self.ref_feats = ref_feats
        self.names = [DINO]

    def __call__(self, sb: ScoringBatch) -> torch.Tensor:
        if self.features is None or self.ref_feats is None:
            raise UserError("The dino reward has no reference features: the trainer did not set them up.")
        f = self.features(sb.pixels)
        ref = self.ref_feats[sb.ref_index.to(self.ref_feats.device)].to(f.device)
        return F.cosine_similarity(f.float(), ref.float(), dim=-1).double().cpu()[:, None]


# ====================================================================== the critic network
def timestep_embedding(t: torch.Tensor, dim: int = 32, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps on the 0..1000 scale, fp32 [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class RewardCritic(torch.nn.Module):
    """Q_φ(x̂0, t [, x0_ref]) → [B, K] (fp32; any latent size, any channel count)."""

    def __init__(self, channels: int = 4, outputs: int = 1, reference: bool = True, width: int = 32,
                 hidden: int = 64, t_dim: int = 32, pool: int = 4):
        super().__init__()
        self.reference = bool(reference)
        cin = channels * (2 if reference else 1)
        self.conv1 = torch.nn.Conv2d(cin, width, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.conv3 = torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(pool)
        self.proj = torch.nn.Linear(2 * width * pool * pool, hidden)
        self.t_dim = t_dim
        self.t_proj = torch.nn.Linear(t_dim, hidden)
        self.fc = torch.nn.Linear(hidden, hidden)
        self.head = torch.nn.Linear(hidden, outputs)
        torch.nn.init.zeros_(self.head.weight)  # Q starts at 0 (the cache mean in z-units)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, x0_hat: torch.Tensor, t: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        x = x0_hat.float()
        if self.reference:
            if ref is None:
                raise UserError("this critic is conditioned on the reference latent: pass ref")
            x = torch.cat([x, ref.float().to(x.device)], 1)
        h = F.silu(self.conv1(x))
        h = F.silu(self.conv2(h))
        h = F.silu(self.conv3(h))
        h = self.proj(self.pool(h).flatten(1)) + self.t_proj(timestep_embedding(t.to(x.device), self.t_dim))
        return self.head(F.silu(self.fc(F.silu(h))))


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ====================================================================== targets
def td_targets(reward: torch.Tensor, q_next: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
               gamma: float) -> torch.Tensor:
    """The paper's cumulative target r + γ^{t−t'}·Q(x_{t'}) per sample; ``t_next < 0`` marks a terminal state
    (target r). ``reward``/``q_next`` are [N, K]; ``t``/``t_next`` [N]."""
    live = (t_next >= 0).to(reward.dtype)[:, None]
    disc = torch.pow(torch.tensor(float(gamma), dtype=torch.float64),
                     (t - t_next.clamp(min=0)).double().cpu()).to(reward.dtype).to(reward.device)[:, None]
    return reward + live * disc * q_next.to(reward.dtype)


def chain_returns(rewards: Sequence[float], timesteps: Sequence[int], gamma: float) -> list[float]:
    """Monte-Carlo returns along one chain (timesteps descending, the last one terminal): what ``td`` converges to."""
    out = [0.0] * len(rewards)
    acc = 0.0
    for i in range(len(rewards) - 1, -1, -1):
        if i == len(rewards) - 1:
            acc = float(rewards[i])
        else:
            acc = float(rewards[i]) + gamma ** (timesteps[i] - timesteps[i + 1]) * acc
        out[i] = acc
    return out


# ====================================================================== the reward cache
class RewardCache:
    """Ring buffer of scored look-forward samples (CPU, fp32); checkpointed with the run.

    Fields: ``x0_hat``, ``t``, ``reward`` (raw, oriented), and ``ref`` (reference latent, when the critic takes it),
    ``next_x0_hat`` / ``next_t`` (td target)."""

    def __init__(self, capacity: int = 256):
        self.capacity = int(capacity)
        self.data: dict[str, torch.Tensor] = {}
        self.size = 0
        self.pos = 0

    def __len__(self) -> int:
        return self.size

    def push(self, **items: torch.Tensor) -> None:
        n = int(items["t"].shape[0])
        if not self.data:
            self.data = {k: torch.zeros((self.capacity, *v.shape[1:]), dtype=v.dtype) for k, v in items.items()}
        for i in range(n):
            for k, v in items.items():
                self.data[k][self.pos] = v[i].detach().cpu()
            self.pos = (self.pos + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def get(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[idx] for k, v in self.data.items()}

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and population std of each raw reward over the cache (std 1 where a reward is constant)."""
        r = self.data["reward"][:self.size].double()
        mean, std = r.mean(0), r.std(0, unbiased=False)
        return mean, torch.where(std > 1e-12 * torch.clamp(mean.abs(), min=1.0), std, torch.ones_like(std))

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "size": self.size, "pos": self.pos,
                "data": {k: v.clone() for k, v in self.data.items()}}

    def load_state_dict(self, sd: dict) -> None:
        self.capacity, self.size, self.pos = int(sd["capacity"]), int(sd["size"]), int(sd["pos"])
        self.data = {k: v.clone() for k, v in sd["data"].items()}


# ====================================================================== the term
@dataclass
class RewardCriticConfig:
    rewards: list[RewardSpec] = field(default_factory=list)   # each with its weight λ_k
    every: int = 1               # critic update interval: score + regress every K actor steps
    target: str = "regression"   # regression | td
    iters: int = 4               # critic steps per update
    lr: float = 1e-3             # Adam
    capacity: int = 256          # reward cache size (samples)
    minibatch: int = 32
    warmup: int = 8              # cached samples before the actor term turns on
    td_hop: int = 50             # timesteps per chain step of the td target (1 = the paper's chain)
    reference: bool | None = None  # condition Q on the reference latent (None: only with the dino reward)
    standardize: bool = True     # z-score rewards over the cache (off: raw rewards, e.g. hand-computed tests)
    gamma: float | None = None   # discount of the td target (None: the DPG objective's γ)

    def validate(self) -> None:
        if not self.rewards:
            raise UserError("The reward critic needs at least one reward (e.g. --reward pickscore).")
        for s in self.rewards:
            if not math.isfinite(float(s.weight)) or s.weight < 0:
                raise UserError(f"Reward {s.label!r}: weight must be finite and >= 0 (got {s.weight}).")
        if sum(float(s.weight) for s in self.rewards) <= 0:
            raise UserError("All reward weights are 0: give at least one reward a positive weight.")
        if self.target not in TARGETS:
            raise UserError(f"Unknown critic target {self.target!r}: choose {' or '.join(TARGETS)}.")
        for k, what in (("every", "critic update interval (every)"), ("iters", "iters"), ("capacity", "capacity"),
                        ("minibatch", "minibatch"), ("td_hop", "td_hop")):
            if int(getattr(self, k)) < 1:
                raise UserError(f"reward critic: the {what} must be >= 1 (got {getattr(self, k)}).")
        if int(self.warmup) < 0 or not (0 < float(self.lr) < math.inf):
            raise UserError(f"reward critic: warmup must be >= 0 and lr a finite number > 0 "
                             f"(got {self.warmup}, {self.lr}).")
        if self.gamma is not None and not (0 < float(self.gamma) <= 1):
            raise UserError(f"reward critic: gamma must be in (0, 1] (got {self.gamma}).")

    @property
    def uses_reference(self) -> bool:
        return any(s.name == DINO for s in self.rewards) if self.reference is None else bool(self.reference)


class RewardCriticTerm:
    """The reward-critic part of the DPG objective, back-end independent (tensors and callables in, loss out).

    A back-end calls :meth:`actor` inside its loss (with gradients through ``x0_hat``), :meth:`stash` with the
    same samples on the steps :meth:`wants_rewards` says, and :meth:`update` after its optimizer step.
    """

    def __init__(self, config: RewardCriticConfig, sources: list | None = None):
        config.validate()
        self.cfg = config
        self.sources = sources          # built by build_sources (or given: tests)
        self.critic: RewardCritic | None = None
        self.opt: torch.optim.Optimizer | None = None
        self.cache = RewardCache(config.capacity)
        self.generator = torch.Generator("cpu")
        self.updates = 0
        self.rounds = 0                 # scoring rounds done
        self._stash: list[dict] = []
        self._pending_state: dict | None = None
        self.last: dict[str, Any] = {"rewards": None, "critic_loss": 0.0}   # carried into log rows between updates

    # -------------------------------------------------------------- setup
    @property
    def names(self) -> list[str]:
        return [s.spec.name if (len(s.names) == 1 and s.spec.output is None) else f"{s.spec.name}.{x}"
                for s in self.sources for x in s.names]

    @property
    def head_weights(self) -> torch.Tensor:
        return torch.tensor([float(s.spec.weight) for s in self.sources for _ in s.names], dtype=torch.float32)

    def setup(self, channels: int, device, seed: int) -> None:
        if self.sources is None:
            raise UserError("reward critic: call build_sources first")
        if self.critic is None:
            g = torch.random.get_rng_state()
            torch.manual_seed(int(seed) + 2)
            self.critic = RewardCritic(channels, len(self.head_weights), self.cfg.uses_reference).to(device)
            torch.random.set_rng_state(g)
            self.critic.requires_grad_(False)
            self.opt = torch.optim.Adam(self.critic.parameters(), lr=float(self.cfg.lr))
            self.generator.manual_seed(int(seed) + 3)
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)

    # -------------------------------------------------------------- actor
    @property
    def active(self) -> bool:
        return self.critic is not None and self.updates > 0 and len(self.cache) >= max(1, int(self.cfg.warmup))

    def actor(self, x0_hat: torch.Tensor, t: torch.Tensor, discount: torch.Tensor,
              ref: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """−mean_i Σ_k w_k·γ^{t_i}·Q_k(x̂0_i, t_i): minimise it to ascend the critic's reward estimate."""
        if not self.active:
            return x0_hat.new_zeros((), dtype=torch.float32), {"reward_q": 0.0}
        self.critic.requires_grad_(False)
        q = self.critic(x0_hat, t.float(), ref if self.critic.reference else None)      # [B, K] z-units
        per = (q * self.head_weights.to(q.device)).sum(1)
        value = (discount.to(q.device).float() * per).mean()
        return -value, {"reward_q": float(value.detach())}

    # -------------------------------------------------------------- rewards
    def wants_rewards(self, step: int) -> bool:
        return torch.is_grad_enabled() and int(step) % int(self.cfg.every) == 0

    def stash(self, x0_hat: torch.Tensor, t: torch.Tensor, ref: torch.Tensor, prompts: list[str],
              ref_index: torch.Tensor, next_state: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None
              ) -> None:
        """Keep this step's samples for scoring after the optimizer step. ``next_state()`` (td target) returns
        (x̂0 at t', t') for the same samples, t' < 0 where the chain ends."""
        self._stash.append({"x0_hat": x0_hat.detach().float(), "t": t.detach().float(), "ref": ref.detach().float(),
                            "prompts": list(prompts), "ref_index": ref_index.detach(), "next_state": next_state})

    def _score(self, decode: Callable[[torch.Tensor], torch.Tensor], gather: Callable | None) -> dict:
        items = self._stash
        self._stash = []
        x0_hat = torch.cat([s["x0_hat"] for s in items])
        with torch.no_grad():
            sb = ScoringBatch(decode(x0_hat).float(), [p for s in items for p in s["prompts"]],
                              torch.cat([s["ref_index"] for s in items]))
            reward = torch.cat([src(sb) for src in self.sources], 1).float()
            new = {"x0_hat": x0_hat, "t": torch.cat([s["t"] for s in items]), "reward": reward}
            if self.cfg.uses_reference:
                new["ref"] = torch.cat([s["ref"] for s in items])
            if self.cfg.target == "td":
                nxt = [s["next_state"]() for s in items]
                new["next_x0_hat"] = torch.cat([n[0] for n in nxt]).float()
                new["next_t"] = torch.cat([n[1] for n in nxt]).float()
        if gather is not None:  # several processes: every process caches everyone's samples (one critic)
            new = {k: gather(v.contiguous()) for k, v in new.items()}
        ok = torch.isfinite(new["reward"]).all(1)
        new = {k: v[ok.to(v.device)] for k, v in new.items()}
        if len(new["t"]):
            self.cache.push(**new)
        self.rounds += 1
        return {"scored": int(ok.sum()), "raw": new["reward"]}

    def _regress(self, device, reduce_grads: Callable | None) -> float:
        mean, std = self.cache.stats() if self.cfg.standardize else (None, None)
        total = 0.0
        self.critic.requires_grad_(True)
        with torch.enable_grad():
            for _ in range(int(self.cfg.iters)):
                idx = torch.randint(0, len(self.cache), (min(int(self.cfg.minibatch), len(self.cache)),),
                                    generator=self.generator)
                b = {k: v.to(device) for k, v in self.cache.get(idx).items()}
                r = b["reward"].double()
                if mean is not None:
                    r = (r - mean.to(device)) / std.to(device)
                y = r.float()
                ref = b["ref"] if self.critic.reference else None
                if self.cfg.target == "td":
                    live = b["next_t"] >= 0
                    q_next = torch.zeros_like(y)
                    if live.any():
                        with torch.no_grad():
                            q_next[live] = self.critic(b["next_x0_hat"][live], b["next_t"][live],
                                                       None if ref is None else ref[live])
                    y = td_targets(y, q_next, b["t"], b["next_t"], self.gamma)
                loss = F.mse_loss(self.critic(b["x0_hat"], b["t"], ref), y)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if reduce_grads is not None:
                    for p in self.critic.parameters():
                        p.grad = reduce_grads(p.grad)
                self.opt.step()
                total += float(loss.detach())
        self.critic.requires_grad_(False)
        self.updates += 1
        return total / int(self.cfg.iters)

    @property
    def gamma(self) -> float:
        return 1.0 if self.cfg.gamma is None else float(self.cfg.gamma)

    def update(self, decode: Callable[[torch.Tensor], torch.Tensor], device, gather: Callable | None = None,
               reduce_grads: Callable | None = None) -> dict:
        """After the actor step: score what was stashed (cost ``reward_s``), then regress the critic (``critic_s``).

        Always returns the same finite numbers, so every row of ``log.csv`` has every column: the costs are 0 on
        steps without an update; ``reward_<name>`` and ``reward_critic_loss`` are those of the latest update."""
        out: dict[str, float] = {"reward_s": 0.0, "critic_s": 0.0}
        if self._stash:
            t0 = time.perf_counter()
            got = self._score(decode, gather)
            out["reward_s"] = time.perf_counter() - t0
            if got["scored"]:
                self.last["rewards"] = [float(got["raw"][:, j].double().mean()) for j in range(len(self.names))]
            if len(self.cache):
                t1 = time.perf_counter()
                self.last["critic_loss"] = self._regress(device, reduce_grads)
                out["critic_s"] = time.perf_counter() - t1
        out["reward_critic_loss"] = float(self.last["critic_loss"])
        rewards = self.last["rewards"] or [0.0] * len(self.names)
        out.update({f"reward_{n}": float(v) for n, v in zip(self.names, rewards)})
        return out

    # -------------------------------------------------------------- checkpointing
    def settings(self) -> dict:
        """What a resumed run must share: the rewards and weights, the critic's shape and its training."""
        cfg = {k: v for k, v in asdict(self.cfg).items() if k != "rewards"}
        cfg["rewards"] = [[s.label, float(s.weight)] for s in self.cfg.rewards]
        return cfg

    def state_dict(self) -> dict:
        if self.critic is None:
            return {}
        return {"critic": {k: v.detach().cpu().clone() for k, v in self.critic.state_dict().items()},
                "opt": self.opt.state_dict(), "cache": self.cache.state_dict(),
                "generator": self.generator.get_state(), "updates": self.updates, "rounds": self.rounds,
                "last_rewards": torch.tensor(self.last["rewards"] or [], dtype=torch.float64),
                "last_critic_loss": float(self.last["critic_loss"])}

    def load_state_dict(self, sd: dict) -> None:
        if not sd:
            return
        if self.critic is None:
            self._pending_state = sd
            return
        self.critic.load_state_dict(sd["critic"])
        self.opt.load_state_dict(sd["opt"])
        self.cache.load_state_dict(sd["cache"])
        self.generator.set_state(sd["generator"])
        self.updates, self.rounds = int(sd["updates"]), int(sd["rounds"])
        self.last = {"rewards": sd["last_rewards"].tolist() or None, "critic_loss": float(sd["last_critic_loss"])}
        self._pending_state = None


def build_sources(specs: list[RewardSpec], models: dict[str, str] | None = None, device=None) -> list:
    """Scorers for the specs: registry names through :func:`rewards.scoring.make_scorer` (``models`` as for
    ``score --model``; loaded now, before the base model), ready scorer objects as they are, and ``dino`` as a
    :class:`DinoSource` whose features the trainer sets."""
    from ..rewards.scoring import make_scorer
    out, loaded = [], {}
    for s in specs:
        if s.scorer is not None:
            out.append(ScorerSource(s, s.scorer))
        elif s.name == DINO:
            out.append(DinoSource(s))
        else:   # rich.overall and rich.alignment share one scorer
            if s.name not in loaded:
                loaded[s.name] = make_scorer(s.name, models=models, **({} if device is None else {"device": device}))
            out.append(ScorerSource(s, loaded[s.name]))
    return out

