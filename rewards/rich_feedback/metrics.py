"""The RichHF / RAHF evaluation metrics (paper Tables 1-4, re-implementation ``metrics.py`` semantics).

Scores: PLCC (Pearson) and SRCC (Spearman, average ranks for ties) per score type; a constant input has no
defined correlation and gives NaN.

Heatmaps, per image then averaged (maps in 0..1, any size, prediction and GT the same size):

* ``mse_all``: mean squared error over every image; ``mse_gt0``: over images whose GT map is all zero
  (false alarms);
* on images with a non-empty GT only: ``cc`` (pixel Pearson, ``1e-8`` in the denominator: a constant map
  gives 0), ``kld`` = Σ G·log(G/(P+ε)+ε) with P, G normalised to sum 1 (ε = 1e-8), ``sim`` = Σ min(P, G) with
  the same normalisation, ``nss`` = mean over GT>0 pixels of the prediction z-scored with the unbiased std
  (+ε; a constant prediction gives 0), ``auc_judd``: GT>0 pixels are fixations, thresholds at the (min-max
  normalised) prediction values at the fixations, ROC integrated with trapezoids. The re-implementation adds
  random 1e-7 jitter to break ties; we use a seeded jitter (deterministic) and return 0.5 (chance) for a
  constant prediction. Its false-positive count uses ``above - i`` with a 0-based ``i`` (a MATLAB port
  off-by-one); we count fixations and non-fixation pixels at or above each threshold exactly, which also
  keeps tied values (e.g. a binary prediction without jitter) correct.

Misaligned keywords: the generated tagged sequence is compared word by word with the GT tagged sequence (a
predicted word that does not equal the GT word at its position is an error); precision / recall / F1 of the
misaligned class per sample (0 where undefined, as sklearn's ``zero_division=0``), averaged over samples; the
micro-averaged values over all words are reported too.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

EPS = 1e-8


# ---------------------------------------------------------------- scores
def _as1d(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def plcc(pred, gt) -> float:
    p, g = _as1d(pred), _as1d(gt)
    if p.size != g.size:
        raise ValueError(f"{p.size} predictions for {g.size} ground-truth values.")
    if p.size < 2:
        return float("nan")
    pc, gc = p - p.mean(), g - g.mean()
    den = math.sqrt(float((pc ** 2).sum()) * float((gc ** 2).sum()))
    return float((pc * gc).sum() / den) if den > 0 else float("nan")


def rankdata(x) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as scipy.stats.rankdata(method='average'))."""
    x = _as1d(x)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def srcc(pred, gt) -> float:
    return plcc(rankdata(pred), rankdata(gt))


def score_metrics(preds: dict[str, Sequence[float]], gts: dict[str, Sequence[float]]) -> dict[str, dict]:
    return {k: {"plcc": plcc(preds[k], gts[k]), "srcc": srcc(preds[k], gts[k]), "n": len(_as1d(gts[k]))}
            for k in gts if k in preds}


# ---------------------------------------------------------------- heatmaps (one image)
def _pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if p.shape != g.shape:
        raise ValueError(f"Prediction {p.shape} and ground truth {g.shape} must have the same shape: resize "
                         "the prediction to the GT size first.")
    return p, g


def mse(pred, gt) -> float:
    p, g = _pair(pred, gt)
    return float(((p - g) ** 2).mean())


def cc(pred, gt) -> float:
    p, g = _pair(pred, gt)
    pc, gc = p - p.mean(), g - g.mean()
    return float((pc * gc).sum() / (math.sqrt((pc ** 2).sum()) * math.sqrt((gc ** 2).sum()) + EPS))


def _dist(x: np.ndarray) -> np.ndarray:
    return x / (x.sum() + EPS)


def kld(pred, gt) -> float:
    p, g = _pair(pred, gt)
    P, G = _dist(p), _dist(g)
    return float((G * np.log(G / (P + EPS) + EPS)).sum())


def sim(pred, gt) -> float:
    p, g = _pair(pred, gt)
    return float(np.minimum(_dist(p), _dist(g)).sum())


def nss(pred, gt) -> float:
    p, g = _pair(pred, gt)
    fix = g > 0
    if not fix.any():
        return float("nan")
    std = p.std(ddof=1) if p.size > 1 else 0.0
    z = (p - p.mean()) / (std + EPS)
    return float(z[fix].mean())


def auc_judd(pred, gt, jitter: bool = True, seed: int = 0) -> float:
    p, g = _pair(pred, gt)
    fix = (g > 0).reshape(-1)
    if not fix.any():
        return float("nan")
    s = p.reshape(-1)
    if s.max() == s.min():
        return 0.5
    if jitter:
        s = s + np.random.default_rng(seed).random(s.shape) / 1e7
    s = (s - s.min()) / (s.max() - s.min())
    n_pix, n_fix = s.size, int(fix.sum())
    if n_fix == n_pix:
        return float("nan")
    fix_sorted = np.sort(s[fix])
    th = fix_sorted[::-1]
    above = n_pix - np.searchsorted(np.sort(s), th, side="left")             # pixels >= threshold
    fix_above = n_fix - np.searchsorted(fix_sorted, th, side="left")         # fixations >= threshold
    tp = np.concatenate([[0.0], fix_above / n_fix, [1.0]])
    fp = np.concatenate([[0.0], (above - fix_above) / (n_pix - n_fix), [1.0]])
    return float(np.sum((fp[1:] - fp[:-1]) * (tp[1:] + tp[:-1]) / 2.0))


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


HEATMAP_METRICS = ("mse_all", "mse_gt0", "cc", "kld", "sim", "nss", "auc_judd")


def heatmap_metrics(preds, gts, jitter: bool = True) -> dict[str, float]:
    """Averages over a set of maps (``[N,H,W]`` arrays/tensors or lists of ``[H,W]``)."""
    preds = [_np(x) for x in preds]
    gts = [_np(x) for x in gts]
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predicted heatmaps for {len(gts)} ground-truth heatmaps.")
    rows = {k: [] for k in HEATMAP_METRICS}
    n_gt0 = 0
    for p, g in zip(preds, gts):
        m = mse(p, g)
        rows["mse_all"].append(m)
        if not (g > 0).any():
            rows["mse_gt0"].append(m)
            n_gt0 += 1
            continue
        rows["cc"].append(cc(p, g))
        rows["kld"].append(kld(p, g))
        rows["sim"].append(sim(p, g))
        rows["nss"].append(nss(p, g))
        rows["auc_judd"].append(auc_judd(p, g, jitter=jitter))
    out = {k: (float(np.nanmean(v)) if v and not np.all(np.isnan(v)) else float("nan")) for k, v in rows.items()}
    out["n"], out["n_gt0"] = len(gts), n_gt0
    return out


# ---------------------------------------------------------------- misaligned keywords
def sequence_labels(pred_text: str, gt_text: str) -> tuple[list[int], list[int]]:
    """Per GT word: (gt label 1 = misaligned, pred label 1 = tagged, 0 = untagged, -1 = wrong word)."""
    pred, gt = pred_text.strip().split(), gt_text.strip().split()
    pred = pred + [""] * max(0, len(gt) - len(pred))
    gl, pl = [], []
    for p, g in zip(pred, gt):
        tagged_g = g.endswith("_0")
        g = g[:-2] if tagged_g else g
        gl.append(int(tagged_g))
        if p.endswith("_0"):
            pl.append(1 if p[:-2] == g else -1)
        else:
            pl.append(0 if p == g else -1)
    return gl, pl


def _prf(tp: int, n_pred: int, n_gt: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gt if n_gt else 0.0
    f = 2 * p * r / (p + r) if (p + r) else 0.0
    return p, r, f


def keyword_metrics(pred_texts: Sequence[str], gt_texts: Sequence[str]) -> dict[str, float]:
    """Precision / recall / F1 of the misaligned class (tagged ``_0``), per sample averaged and micro."""
    if len(pred_texts) != len(gt_texts):
        raise ValueError(f"{len(pred_texts)} predicted sequences for {len(gt_texts)} ground-truth sequences.")
    per = []
    TP = NP = NG = 0
    for pt, gtxt in zip(pred_texts, gt_texts):
        gl, pl = sequence_labels(pt, gtxt)
        tp = sum(1 for a, b in zip(gl, pl) if a == 1 and b == 1)
        n_pred, n_gt = sum(1 for b in pl if b == 1), sum(gl)
        per.append(_prf(tp, n_pred, n_gt))
        TP, NP, NG = TP + tp, NP + n_pred, NG + n_gt
    arr = np.array(per, dtype=np.float64).reshape(-1, 3)
    mp, mr, mf = _prf(TP, NP, NG)
    mean = arr.mean(axis=0) if len(arr) else np.full(3, np.nan)
    return {"precision": float(mean[0]), "recall": float(mean[1]), "f1": float(mean[2]),
            "micro_precision": mp, "micro_recall": mr, "micro_f1": mf, "n": len(per)}


# ---------------------------------------------------------------- the paper's table
def format_table(scores: dict | None = None, heatmaps: dict[str, dict] | None = None,
                 keywords: dict | None = None) -> str:
    """Plain-text tables in the paper's layout (scores; heatmaps; keywords)."""
    f = lambda v, d=3: "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"  # noqa
    out = []
    if scores:
        names = list(scores)
        out.append("Scores   " + "".join(f"{n:>14}" for n in names))
        out.append("PLCC     " + "".join(f"{f(scores[n]['plcc']):>14}" for n in names))
        out.append("SRCC     " + "".join(f"{f(scores[n]['srcc']):>14}" for n in names))
        out.append("")
    if heatmaps:
        cols = [("MSE all", "mse_all", 5), ("MSE GT=0", "mse_gt0", 5), ("CC", "cc", 3), ("KLD", "kld", 3),
                ("SIM", "sim", 3), ("NSS", "nss", 3), ("AUC-Judd", "auc_judd", 3)]
        out.append(f"{'Heatmap':<16}" + "".join(f"{c[0]:>10}" for c in cols) + f"{'n':>6}{'n GT=0':>8}")
        for name, m in heatmaps.items():
            out.append(f"{name:<16}" + "".join(f"{f(m.get(k), d):>10}" for _, k, d in cols)
                       + f"{m.get('n', 0):>6}{m.get('n_gt0', 0):>8}")
        out.append("")
    if keywords:
        out.append("Misaligned keywords   precision  recall      F1   (micro: P / R / F1)")
        out.append(f"{'':22}{100 * keywords['precision']:>9.1f}{100 * keywords['recall']:>8.1f}"
                   f"{100 * keywords['f1']:>8.1f}   ({100 * keywords['micro_precision']:.1f} / "
                   f"{100 * keywords['micro_recall']:.1f} / {100 * keywords['micro_f1']:.1f})")
    return "\n".join(out).rstrip()
