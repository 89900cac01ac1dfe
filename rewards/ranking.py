"""Assemble ranking of K candidates over any number of rewards (FineRewards A.4 — the intent, not the code).

Modes (``w_j`` = weight of reward ``j``, values *oriented* so that larger is better, i.e. negated when a reward
says ``higher_is_better=False``; everything is computed **within each group**):

- ``rank_sum`` (Borda, the paper): ``rank_j(k)`` = position of candidate ``k`` when sorted by reward ``j``
  best-first, **0 = best**; tied values share the average of their positions (e.g. two best → 0.5 each).
  ``total(k) = Σ_j w_j · rank_j(k)``; **lowest total wins**. Ties in the total are broken by the weighted sum of
  z-scored oriented rewards (higher first), then by the image index (lower first).
- ``zscore``: ``total(k) = Σ_j w_j · z_j(k)`` with ``z = (v - mean) / std`` (population std; a constant reward
  gives z = 0); **highest total wins**; ties → lower index.
- ``raw``: ``total(k) = Σ_j w_j · v_j(k)`` on oriented raw values (only meaningful when the scales match);
  **highest total wins**; ties → lower index.

Ties are ties of the arithmetic as written, not of floating point: totals are summed exactly (each weight taken
as the decimal it prints as, e.g. 0.1 = 1/10, ranks and values exactly), so 0.1·3 ties with 0.3·1 although the
two float products differ in the last bit; z-score sums (irrational in general) count as tied when they differ
by at most 1e-9 relative to their scale.

Groups: ``group_size=N`` makes images ``0..N-1`` group 0, ``N..2N-1`` group 1, … (one prompt per group, the
layout of a batch of several prompts × N samples); ``group_size=0`` uses the rewards' own ``group`` ids when
they carry them, else one group. Each group is ranked on its own; ``order`` lists the groups in order, each
best-first. NaN/inf scores and length mismatches are refused with an error naming the reward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .types import RewardScores

MODES = ("rank_sum", "zscore", "raw")
MODE_ALIASES = {"rank-sum": "rank_sum", "borda": "rank_sum", "ranksum": "rank_sum", "rank_sum": "rank_sum",
                "zscore": "zscore", "z-score": "zscore", "weighted_zscore": "zscore", "raw": "raw",
                "weighted_raw": "raw"}


@dataclass
class Ranking:
    """Result of :func:`assemble_rank` (all per-image lists are in the input image order)."""

    mode: str
    names: list[str]
    weights: list[float]
    order: list[int]                      # best-first within each group, groups in order
    totals: list[float]                   # per image; rank_sum: lower is better, else higher is better
    ranks: dict[str, list[float]]         # per reward, per image: 0 = best within its group
    zsum: list[float]                     # per image: weighted sum of z-scored oriented rewards (tie-break)
    group: list[int]                      # group id per image
    position: list[int]                   # per image: 0 = best of its group
    values: dict[str, list[float]] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)

    @property
    def total_higher_is_better(self) -> bool:
        return self.mode != "rank_sum"

    @property
    def groups(self) -> list[int]:
        return list(dict.fromkeys(self.group))  # in order of first appearance

    def group_order(self, g: int) -> list[int]:
        return [i for i in self.order if self.group[i] == g]

    def best(self) -> list[int]:
        """The winner of each group."""
        return [self.group_order(g)[0] for g in self.groups]

    def top_k(self, k: int) -> list[int]:
        """The best ``k`` of every group (groups in order, each best-first); ``k <= 0`` means all."""
        out = []
        for g in self.groups:
            go = self.group_order(g)
            out += go if k <= 0 else go[:k]
        return out

    def as_scores(self, order: list[int] | None = None) -> RewardScores:
        """The assembled totals as a reward (in ``order``, default: input order), per-image ranks in details."""
        idx = list(range(len(self.totals))) if order is None else list(order)
        lo_hi = None
        if self.mode == "rank_sum" and self.totals:
            n_max = max(sum(1 for x in self.group if x == g) for g in self.groups)
            lo_hi = (0.0, float(sum(self.weights) * (n_max - 1)))
        details = [{"image": i, "group": self.group[i], "position": self.position[i], "zsum": self.zsum[i],
                    **{f"rank_{n}": self.ranks[n][i] for n in self.names}} for i in idx]
        return RewardScores(f"assemble_{self.mode}", [self.totals[i] for i in idx], self.total_higher_is_better,
                            lo_hi, details, [self.group[i] for i in idx])

    def table(self) -> str:
        """Fixed-width table, best-first per group: every reward's value (and rank), the total."""
        arrow = lambda hib: "↑" if hib else "↓"  # noqa: E731
        heads = ["pos", "image", "group"]
        for n in self.names:
            heads += [f"{n} ({arrow(self.higher_is_better[n])})", f"rank {n}"]
        heads.append(f"total ({arrow(self.total_higher_is_better)})")
        rows = []
        for i in self.order:
            row = [str(self.position[i]), str(i), str(self.group[i])]
            for n in self.names:
                row += [f"{self.values[n][i]:.4f}", f"{self.ranks[n][i]:g}"]
            row.append(f"{self.totals[i]:.4f}")
            rows.append(row)
        widths = [max(len(h), *(len(r[c]) for r in rows)) if rows else len(h) for c, h in enumerate(heads)]
        line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
        w = ", ".join(f"{n}×{wt:g}" for n, wt in zip(self.names, self.weights))
        how = {"rank_sum": "rank sum (0 = best; lowest total wins; ties: z-score sum, then index)",
               "zscore": "weighted z-score (highest total wins; ties: index)",
               "raw": "weighted raw values (highest total wins; ties: index)"}[self.mode]
        return "\n".join([f"mode: {how}; weights: {w}", line(heads), line(["-" * x for x in widths])]
                         + [line(r) for r in rows])


def normalize_mode(mode: str) -> str:
    key = str(mode).strip().lower()
    if key not in MODE_ALIASES:
        raise ValueError(f"Unknown ranking mode {mode!r}: choose rank_sum (Borda), zscore or raw.")
    return MODE_ALIASES[key]


def average_ranks(oriented: np.ndarray) -> np.ndarray:
    """0-based ranks, best (largest) = 0; tied values get the mean of the positions they span."""
    n = len(oriented)
    order = np.argsort(-oriented, kind="stable")
    ranks = np.empty(n, dtype=np.float64)
    s = oriented[order]
    i = 0
    while i < n:
        j = i
        while j + 1 < n and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def zscores(oriented: np.ndarray) -> np.ndarray:
    sd = oriented.std()
    if not np.isfinite(sd) or sd <= 1e-12 * max(1.0, float(np.abs(oriented).max(initial=0.0))):
        return np.zeros_like(oriented)
    return (oriented - oriented.mean()) / sd


ZSUM_TIE = 1e-9  # z-score sums this close (relative to their scale) are tied


def exact_weighted_sums(weights: list[float], values: np.ndarray) -> list[Fraction]:
    """Σ_j w_j · values[j, k] for each k, exactly: weights as the decimals they print as (``str(0.1)`` → 1/10),
    values as the exact binary numbers they are (ranks are halves, so exact either way)."""
    w = [Fraction(str(x)) for x in weights]
    cols = [[Fraction(float(v)) for v in row] for row in values]
    return [sum((wj * col[k] for wj, col in zip(w, cols)), Fraction(0)) for k in range(values.shape[1])]


def _tied_runs(order: list[int], same) -> list[list[int]]:
    """Split ``order`` into runs of neighbours for which ``same(prev, cur)`` holds."""
    runs: list[list[int]] = []
    for i in order:
        if runs and same(runs[-1][-1], i):
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def order_group(idx: list[int], totals: list[Fraction], lower_wins: bool, zsum: np.ndarray | None,
                z_tol: float) -> list[int]:
    """Best-first order of one group: by the exact total; ties by the z-score sum (higher first, sums within
    ``z_tol`` tied) when ``zsum`` is given; remaining ties by the lower index."""
    sign = 1 if lower_wins else -1
    order = sorted(idx, key=lambda i: (sign * totals[i], i))
    out: list[int] = []
    for run in _tied_runs(order, lambda a, b: totals[a] == totals[b]):
        if zsum is None or len(run) == 1:
            out += run
            continue
        by_z = sorted(run, key=lambda i: (-zsum[i], i))
        for tie in _tied_runs(by_z, lambda a, b: zsum[a] - zsum[b] <= z_tol):
            out += sorted(tie)
    return out


def _groups(scores: list[RewardScores], n: int, group_size: int) -> list[int]:
    if group_size and group_size > 0:
        if n % group_size:
            raise ValueError(f"{n} images do not split into groups of {group_size}: set group size to a divisor "
                             f"of the batch (images per prompt), or 0 for one group.")
        return [i // group_size for i in range(n)]
    for s in scores:
        if s.group is not None:
            return [int(g) for g in s.group]
    return [0] * n


def assemble_rank(scores: list[RewardScores], weights: list[float] | None = None, mode: str = "rank_sum",
                  group_size: int = 0) -> Ranking:
    """Rank the images scored by ``scores`` (one :class:`RewardScores` per reward, same images, same order)."""
    mode = normalize_mode(mode)
    scores = [s for s in scores if s is not None]
    if not scores:
        raise ValueError("No scores to rank: connect at least one reward.")
    n = len(scores[0])
    if n == 0:
        raise ValueError(f"Reward {scores[0].name!r} has no values: there are no images to rank.")
    for s in scores:
        if len(s) != n:
            raise ValueError(f"Reward {s.name!r} has {len(s)} values but {scores[0].name!r} has {n}: all rewards "
                             "must score the same images.")
        bad = [i for i, v in enumerate(s.values) if not math.isfinite(v)]
        if bad:
            raise ValueError(f"Reward {s.name!r} has NaN/infinite scores for images {bad}: fix or drop that reward "
                             "before ranking (a missing score cannot be ranked).")
    names, seen = [], {}
    for s in scores:  # keep duplicate names apart in the table
        seen[s.name] = seen.get(s.name, 0) + 1
        names.append(s.name if seen[s.name] == 1 else f"{s.name}#{seen[s.name]}")
    if weights is None:
        weights = [1.0] * len(scores)
    weights = [float(w) for w in weights]
    if len(weights) != len(scores):
        raise ValueError(f"{len(weights)} weights for {len(scores)} rewards ({', '.join(names)}): give one weight "
                         "per reward.")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"Weights must be finite and ≥ 0 (got {weights}); to reverse a reward's direction, use its "
                         "higher_is_better flag, not a negative weight.")
    if sum(weights) <= 0:
        raise ValueError("All weights are 0: give at least one reward a positive weight.")
    group = _groups(scores, n, group_size)
    if len(group) != n:
        raise ValueError(f"{len(group)} group ids for {n} images.")
    oriented = np.array([s.oriented() for s in scores], dtype=np.float64)  # [R, N]
    wv = np.array(weights, dtype=np.float64)
    ranks = np.zeros_like(oriented)
    z = np.zeros_like(oriented)
    gids = np.array(group)
    for g in dict.fromkeys(group):
        idx = np.nonzero(gids == g)[0]
        for j in range(len(scores)):
            ranks[j, idx] = average_ranks(oriented[j, idx])
            z[j, idx] = zscores(oriented[j, idx])
    zsum = (wv[:, None] * z).sum(0)
    z_tol = ZSUM_TIE * max(1.0, float((wv[:, None] * np.abs(z)).sum(0).max(initial=0.0)))
    if mode == "rank_sum":
        exact = exact_weighted_sums(weights, ranks)
        tie_z = zsum
    elif mode == "raw":
        exact = exact_weighted_sums(weights, oriented)
        tie_z = None
    else:  # zscore: the total is the z-score sum itself; near-equal sums are tied, then the index decides
        exact = [Fraction(0)] * n
        tie_z = zsum
    totals = [float(t) for t in exact] if mode != "zscore" else [float(v) for v in zsum]
    order = []
    for g in dict.fromkeys(group):  # groups in order of first appearance
        idx = [i for i in range(n) if group[i] == g]
        order += order_group(idx, exact, mode == "rank_sum", tie_z, z_tol)
    position = [0] * n
    counter: dict[int, int] = {}
    for i in order:
        position[i] = counter.get(group[i], 0)
        counter[group[i]] = position[i] + 1
    return Ranking(mode, names, weights, order, [float(t) for t in totals],
                   {nm: [float(r) for r in ranks[j]] for j, nm in enumerate(names)},
                   [float(v) for v in zsum], group, position,
                   {nm: list(s.values) for nm, s in zip(names, scores)},
                   {nm: s.higher_is_better for nm, s in zip(names, scores)})
