"""Judge quality on the shipped set of (prompt, label, expected grade) cases (``rewards/data/judge_cases.tsv``).

Grades: 3 = the label is certain to appear in the prompted scene (named or implied), 2 = it may appear,
1 = it does not belong. Any judge with ``judge_many(labels_per_prompt, prompts)`` returning
:class:`~.llm_judge.Judgement` lists is measured by:

* **AUC** (in-scene vs out-of-scene): the probability that a grade-3 case scores above a grade-1 case (ties
  count half; grade-2 cases are left out: "may appear" is neither); 0.5 = chance;
* **Spearman** correlation of the scores with the grades over all cases (ties averaged);
* **accuracy** per grade and overall, the predicted grade being the score rounded to 1, 2 or 3.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

CASES_FILE = Path(__file__).resolve().parent / "data" / "judge_cases.tsv"


@dataclass(frozen=True)
class Case:
    prompt: str
    label: str
    grade: int


def load_cases(path: str | Path = CASES_FILE) -> list[Case]:
    lines = [ln for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
    rows = list(csv.DictReader(lines, delimiter="\t"))
    out = [Case(r["prompt"].strip(), r["label"].strip(), int(r["grade"])) for r in rows]
    bad = [c for c in out if c.grade not in (1, 2, 3) or not c.prompt or not c.label]
    if bad:
        raise ValueError(f"{path}: bad case {bad[0]} (grades are 1, 2 or 3; prompt and label non-empty).")
    return out


def judge_cases(judge, cases: Sequence[Case]) -> list[float]:
    """The judge's score of every case (one ``judge_many`` call: each prompt's labels together, as the reward
    asks them)."""
    prompts = list(dict.fromkeys(c.prompt for c in cases))
    labels = {p: [c.label for c in cases if c.prompt == p] for p in prompts}
    got = judge.judge_many([labels[p] for p in prompts], prompts)
    score = {(j.prompt, j.label): j.score for row in got for j in row}
    return [float(score[(c.prompt, c.label)]) for c in cases]


def auc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    pos = [s for s, t in zip(scores, positive) if t]
    neg = [s for s, t in zip(scores, positive) if not t]
    if not pos or not neg:
        return math.nan
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of the (tie-averaged) ranks."""
    import numpy as np

    from .ranking import average_ranks
    rx, ry = average_ranks(np.asarray(x, dtype=float)).tolist(), average_ranks(np.asarray(y, dtype=float)).tolist()
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    vy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (vx * vy) if vx and vy else math.nan


def metrics(scores: Sequence[float], cases: Sequence[Case]) -> dict:
    grades = [c.grade for c in cases]
    pred = [min(3, max(1, math.floor(s + 0.5))) for s in scores]
    in_out = [(s, g == 3) for s, g in zip(scores, grades) if g != 2]
    acc = {g: (sum(p == g for p, t in zip(pred, grades) if t == g) / max(1, grades.count(g))) for g in (1, 2, 3)}
    return {"auc": auc([s for s, _ in in_out], [t for _, t in in_out]), "spearman": spearman(scores, grades),
            "acc1": acc[1], "acc2": acc[2], "acc3": acc[3],
            "accuracy": sum(p == t for p, t in zip(pred, grades)) / len(grades), "n": len(grades)}
