"""Reward critic (trainers/reward_critic.py): specs, network size, TD target by hand, regression, assemble weights."""
from __future__ import annotations

import _fake_rewards as FR
import pytest
import torch

from rewardloop.rewards.scoring import FunctionScorer
from rewardloop.rewards.types import RewardScores
from rewardloop.trainers import reward_critic as R


# ---------------------------------------------------------------- specs
def test_reward_specs_parse_and_refuse_bad_items_in_one_line():
    specs = R.parse_reward_specs(["caption:0.5", "dino", "rich.overall:2"])
    assert [(s.name, s.output, s.weight) for s in specs] == [("caption", None, 0.5), ("dino", None, 1.0),
                                                             ("rich", "overall", 2.0)]
    with pytest.raises(ValueError, match=r"Unknown reward 'nope'.*choose from") as e:
        R.parse_reward_specs(["nope:1"])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="must be a number"):
        R.parse_reward_specs(["caption:x"])
    with pytest.raises(ValueError, match="finite and >= 0"):
        R.parse_reward_specs(["caption:-1"])
    with pytest.raises(ValueError, match=r"reward rich has no output 'overal'; it gives plausibility"):
        R.parse_reward_specs(["rich.overal"])
    with pytest.raises(ValueError, match="named twice"):
        R.parse_reward_specs(["rich", "rich.overall"])
    assert len(R.parse_reward_specs(["rich.overall", "rich.alignment:0.5"])) == 2
    with pytest.raises(ValueError, match="at least one reward"):
        R.RewardCriticConfig().validate()
    with pytest.raises(ValueError, match="critic target"):
        R.RewardCriticConfig(rewards=specs, target="mc").validate()
    with pytest.raises(ValueError, match="All reward weights are 0"):
        R.RewardCriticConfig(rewards=[R.RewardSpec("caption", 0.0)]).validate()
    assert R.RewardCriticConfig(rewards=specs).uses_reference          # dino: conditioned on the reference
    assert not R.RewardCriticConfig(rewards=specs[:1]).uses_reference


# ---------------------------------------------------------------- network
def test_critic_size_by_hand_and_independent_of_the_latent_size():
    # conv1 (8→32, 3×3) 2336 + conv2 (32→32) 9248 + conv3 (32→64) 18496 + proj (1024→64) 65600
    # + t_proj (32→64) 2112 + fc (64→64) 4160 + head (64→1) 65
    c = R.RewardCritic(4, 1, reference=True)
    assert R.parameter_count(c) == 2336 + 9248 + 18496 + 65600 + 2112 + 4160 + 65 == 102_017
    assert R.parameter_count(R.RewardCritic(4, 1, reference=False)) == 102_017 - 4 * 32 * 9 == 100_865
    for hw in (8, 16, 64):
        x = torch.randn(2, 4, hw, hw)
        assert c(x, torch.tensor([0.0, 999.0]), x).shape == (2, 1)
    assert all(p.dtype == torch.float32 for p in c.parameters())
    assert torch.equal(c(torch.randn(3, 4, 8, 8), torch.ones(3), torch.zeros(3, 4, 8, 8)), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="pass ref"):
        c(torch.randn(1, 4, 8, 8), torch.ones(1))


# ---------------------------------------------------------------- TD target
def test_td_target_against_hand_values():
    # r + γ^{t−t'}·Q(x_{t'}); terminal (t' < 0): r
    r = torch.tensor([[1.0], [2.0], [3.0]])
    q_next = torch.tensor([[10.0], [20.0], [30.0]])
    t = torch.tensor([100.0, 50.0, 0.0])
    t_next = torch.tensor([50.0, 0.0, -1.0])
    y = R.td_targets(r, q_next, t, t_next, gamma=0.9)
    assert torch.allclose(y, torch.tensor([[1 + 0.9 ** 50 * 10], [2 + 0.9 ** 50 * 20], [3.0]]))
    # a chain t = 2, 1, 0 with rewards 1, 2, 4 and γ = 0.5: Q(0) = 4, Q(1) = 2 + 0.5·4 = 4, Q(2) = 1 + 0.5·4 = 3
    assert R.chain_returns([1, 2, 4], [2, 1, 0], 0.5) == [3.0, 4.0, 4.0]
    # hops of 2 timesteps discount by γ²: Q(4) = 1 + 0.25·(2 + 0.25·4) = 1.75
    assert R.chain_returns([1, 2, 4], [4, 2, 0], 0.5) == [1.75, 3.0, 4.0]


def test_td_regression_converges_to_the_chain_returns():
    """The term's own regression with bootstrapped targets learns Q = [3, 4, 4] on the hand-computed chain."""
    torch.manual_seed(0)
    states = torch.randn(3, 4, 4, 4)          # x̂0 at t = 2, 1, 0 (distinct inputs)
    cfg = R.RewardCriticConfig(rewards=[R.RewardSpec("chain")], target="td", standardize=False, gamma=0.5,
                               minibatch=3, iters=1, lr=1e-2, reference=False)
    term = R.RewardCriticTerm(cfg, sources=[R.ScorerSource(cfg.rewards[0], FunctionScorer(["chain"], None))])
    term.setup(4, "cpu", seed=0)
    term.cache.push(x0_hat=states, t=torch.tensor([2.0, 1.0, 0.0]),
                    reward=torch.tensor([[1.0], [2.0], [4.0]]),
                    next_x0_hat=torch.stack([states[1], states[2], states[2]]),
                    next_t=torch.tensor([1.0, 0.0, -1.0]))
    for _ in range(300):
        term._regress("cpu", None)
    with torch.no_grad():
        q = term.critic(states, torch.tensor([2.0, 1.0, 0.0]))[:, 0]
    assert torch.allclose(q, torch.tensor([3.0, 4.0, 4.0]), atol=0.05), q
    # the plain regression target would have learnt the immediate rewards instead
    assert abs(float(q[0]) - 1.0) > 1.5


# ---------------------------------------------------------------- sources, cache, regression, assemble weights
def decode_identity(x):
    return x[:, :3].clamp(-1, 1)


def test_scorer_source_orients_selects_and_explains():
    pix = torch.full((2, 3, 8, 8), -1.0)
    pix[1, :, :4, :4] = 1.0                   # second image: bright top-left quadrant
    sb = R.ScoringBatch(pix, ["p", "p"], torch.tensor([0, 1]))
    assert sb.images[1].getpixel((0, 0)) == (255, 255, 255) and sb.images[0].getpixel((0, 0)) == (0, 0, 0)
    up = R.ScorerSource(R.RewardSpec("b"), FR.make_scorer())(sb)
    down = R.ScorerSource(R.RewardSpec("b"), FR.make_scorer(name="dark", higher_is_better=False))(sb)
    assert up.tolist() == [[0.0], [1.0]] and down.tolist() == [[-1.0], [0.0]]   # "dark" = 1 − b, lower is better
    multi = FunctionScorer(["a", "b"], lambda ims, ps: [RewardScores("a", [1.0] * len(ims)),
                                                        RewardScores("b", [2.0] * len(ims))])
    assert R.ScorerSource(R.RewardSpec("m", output="b"), multi)(sb).tolist() == [[2.0], [2.0]]
    with pytest.raises(ValueError, match="no output 'c': it gives a, b"):
        R.ScorerSource(R.RewardSpec("m", output="c"), multi)


def test_regression_learns_a_reward_and_logs_every_column():
    torch.manual_seed(1)
    spec = R.RewardSpec("brightness", scorer=FR.make_scorer())
    cfg = R.RewardCriticConfig(rewards=[spec], iters=6, minibatch=16, lr=3e-3)
    term = R.RewardCriticTerm(cfg, R.build_sources([spec]))
    term.setup(4, "cpu", seed=0)
    assert term.names == ["brightness"] and not term.active
    keys = None
    losses = []
    for step in range(40):
        x = torch.randn(4, 4, 8, 8) * 0.7
        assert term.wants_rewards(step)
        term.stash(x, torch.randint(0, 1000, (4,)), x, ["p"] * 4, torch.zeros(4, dtype=torch.long))
        out = term.update(decode_identity, "cpu")
        keys = keys or set(out)
        assert set(out) == keys == {"reward_s", "critic_s", "reward_critic_loss", "reward_brightness"}
        losses.append(out["reward_critic_loss"])
        assert out["reward_s"] > 0 and out["critic_s"] > 0
    assert len(term.cache) == 160 and term.active
    # cached rewards are the scorer's values; standardization is the cache's population z-score
    r = term.cache.data["reward"][: len(term.cache), 0].double()
    mean, std = term.cache.stats()
    assert torch.allclose(mean, r.mean()[None]) and torch.allclose(std, r.std(unbiased=False)[None])
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5, losses
    # nothing stashed: the same columns, no cost, the latest update's values carried (finite: trainers check them)
    assert term.update(decode_identity, "cpu") == {"reward_s": 0.0, "critic_s": 0.0, "reward_critic_loss": losses[-1],
                                                  "reward_brightness": out["reward_brightness"]}
    # the learnt Q ranks a bright top-left above a dark one (the known optimum)
    bright, dark = torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)
    bright[:, :3, :4, :4], dark[:, :3, :4, :4] = 1.0, -1.0
    with torch.no_grad():
        assert float(term.critic(bright, torch.zeros(1), bright)) > float(term.critic(dark, torch.zeros(1), dark))


def test_actor_weights_rewards_like_assemble_and_discounts():
    a = R.RewardSpec("a", 3.0, scorer=FunctionScorer(["a"], None))
    b = R.RewardSpec("b", 1.0, scorer=FunctionScorer(["b"], None))
    cfg = R.RewardCriticConfig(rewards=[a, b], warmup=1)
    term = R.RewardCriticTerm(cfg, R.build_sources([a, b]))
    term.setup(4, "cpu", seed=0)
    x = torch.zeros(2, 4, 8, 8, requires_grad=True)
    loss, m = term.actor(x, torch.tensor([0.0, 10.0]), torch.tensor([1.0, 0.5]))
    assert float(loss) == 0.0 and m == {"reward_q": 0.0}             # not active before the first update
    term.cache.push(x0_hat=x.detach(), t=torch.zeros(2), reward=torch.ones(2, 2))
    term.updates = 1
    with torch.no_grad():   # Q_a ≡ 1, Q_b ≡ 5 (z-units)
        term.critic.head.weight.zero_()
        term.critic.head.bias.copy_(torch.tensor([1.0, 5.0]))
    loss, m = term.actor(x, torch.tensor([0.0, 10.0]), torch.tensor([1.0, 0.5]))
    per = 3 * 1 + 1 * 5                                               # Σ_k w_k·Q_k = 8 (assemble's weighted z-sum)
    assert m["reward_q"] == pytest.approx((1.0 * per + 0.5 * per) / 2)   # γ^{t_i}-weighted mean over samples
    assert float(loss.detach()) == pytest.approx(-m["reward_q"])
    loss.backward()                                                   # gradient reaches x̂0, not the critic
    assert x.grad is not None and all(p.grad is None for p in term.critic.parameters())


def test_cache_is_a_ring_and_round_trips():
    c = R.RewardCache(3)
    for i in range(5):
        c.push(x0_hat=torch.full((1, 2), float(i)), t=torch.tensor([float(i)]), reward=torch.tensor([[float(i)]]))
    assert len(c) == 3 and sorted(c.data["t"].tolist()) == [2.0, 3.0, 4.0]
    d = R.RewardCache(1)
    d.load_state_dict(c.state_dict())
    assert (d.size, d.pos, d.capacity) == (3, 2, 3) and torch.equal(d.data["reward"], c.data["reward"])
