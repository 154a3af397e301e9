"""Attack metrics as pure functions: arrays in, floats out.

The functional core of the privacy audit (the shape of ``torchmetrics.functional``): every
membership attack produces one *score* per record (higher = "more likely a training member")
and the audit knows which records really are members (``labels``: 1 member, 0 non-member).

Definitions (``P`` = number of members, ``N`` = number of non-members):

``roc_auc(scores, labels)``
    Area under the ROC curve = the probability that a random member scores higher than a random
    non-member, ties counting one half (Mann-Whitney U / (P*N), computed from average ranks).
    0.5 is chance. ``nan`` when ``P == 0`` or ``N == 0``.
``roc_points(scores, labels)``
    The ROC curve's operating points: the rule "member iff score >= t" for every distinct score
    ``t`` (highest first), after the point (0, 0) of the threshold ``+inf``.
``tpr_at_fpr(scores, labels, fpr)``
    The largest true-positive rate among those operating points whose false-positive rate is at
    most ``fpr`` (``fp <= floor(fpr * N)``). No interpolation between points: every reported
    value is achieved by a real threshold. With ``fpr < 1 / N`` it is the TPR at *zero* false
    positives, so TPR at 0.1% FPR needs at least 1,000 non-members to mean what it says.
    ``nan`` when ``P == 0`` or ``N == 0``.
``recall(predicted, labels)`` / ``precision(predicted, labels)``
    For hard decisions (``predicted`` boolean): recall = TP / P (``nan`` when ``P == 0``);
    precision = TP / (TP + FP), 0.0 when nothing is predicted a member (scikit-learn's
    ``zero_division`` default).

Sizes and intervals (every figure the audit logs carries them):

``Estimate``
    A figure with its sample: ``value``, 95% interval ``lo``/``hi``, ``n_members`` and
    ``n_nonmembers``. ``reportable`` is False below :data:`MIN_PER_CLASS` records on either side:
    such an AUC is a percentile of a handful of records, not an AUC, and is not logged as one.
``auc_estimate(scores, labels)``
    ROC AUC with DeLong's 95% interval (DeLong, DeLong & Clarke-Pearson 1988; the fast
    structural-components form of Sun & Xu 2014), clipped to [0, 1]. With one side constant
    the variance is estimated as 0 and the interval collapses to the point: at least
    :data:`MIN_PER_CLASS` records per side are required before it is reported.
``tpr_estimate(scores, labels, fpr, *, seed)``
    ``tpr_at_fpr`` with a stratified percentile-bootstrap 95% interval (members and non-members
    resampled separately, :data:`BOOTSTRAP` resamples, fixed seed so re-audits agree).

Inputs are 1-D and of equal length; scores must be finite. Shape or value errors are programming
errors here (the audit builds these arrays) and raise ``ValueError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "BOOTSTRAP",
    "MIN_PER_CLASS",
    "Estimate",
    "auc_estimate",
    "precision",
    "recall",
    "roc_auc",
    "roc_points",
    "tpr_at_fpr",
    "tpr_estimate",
]

# Fewer records than this on either side (members or non-members) and an AUC or TPR is not
# reported as one: the per-record statistics are (see the audit).
MIN_PER_CLASS = 10
BOOTSTRAP = 1000
_Z95 = 1.959963984540054


def _check(scores: ArrayLike, labels: ArrayLike, what: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores)
    lab = np.asarray(labels)
    if s.ndim != 1 or lab.ndim != 1 or len(s) != len(lab):
        raise ValueError(f"{what} {s.shape} and labels {lab.shape} must be 1-D arrays of the same length")
    if lab.dtype != bool:
        if len(lab) and not np.isin(lab, (0, 1)).all():
            raise ValueError("labels must be 0/1 or boolean (1 = member)")
        lab = lab.astype(bool)
    if what == "scores":
        s = s.astype(np.float64, copy=False)
        if not np.isfinite(s).all():
            raise ValueError(f"scores hold {int((~np.isfinite(s)).sum())} non-finite value(s)")
    else:
        if s.dtype != bool and len(s) and not np.isin(s, (0, 1)).all():
            raise ValueError("predictions must be 0/1 or boolean (1 = predicted member)")
        s = s.astype(bool)
    return s, lab


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """ROC AUC of ``scores`` for ``labels`` (1 = member); ties count one half; nan without both classes."""
    s, lab = _check(scores, labels)
    n_pos = int(lab.sum())
    n_neg = len(lab) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = (ends - counts + 1 + ends) / 2.0  # ranks start..end of each tie group, averaged
    rank_sum = float(average_rank[inverse][lab].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _operating_counts(s: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tp, fp, thresholds) of "member iff score >= t" for t = +inf then each distinct score, descending."""
    order = np.argsort(-s, kind="stable")
    s_sorted, lab_sorted = s[order], lab[order]
    last_of_group = np.r_[s_sorted[1:] != s_sorted[:-1], True] if len(s) else np.zeros(0, bool)
    tp = np.r_[0, np.cumsum(lab_sorted)[last_of_group]]
    fp = np.r_[0, np.cumsum(~lab_sorted)[last_of_group]]
    return tp, fp, np.r_[np.inf, s_sorted[last_of_group]]


def roc_points(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of "member iff score >= threshold", from (0, 0) at +inf down.

    One point per distinct score (no points dropped), so ``fpr`` and ``tpr`` are non-decreasing.
    Rates are nan when their class is empty.
    """
    s, lab = _check(scores, labels)
    tp, fp, thresholds = _operating_counts(s, lab)
    n_pos, n_neg = int(lab.sum()), int((~lab).sum())
    tpr = tp / n_pos if n_pos else np.full(len(tp), np.nan)
    fpr = fp / n_neg if n_neg else np.full(len(fp), np.nan)
    return fpr.astype(np.float64), tpr.astype(np.float64), thresholds


def tpr_at_fpr(scores: ArrayLike, labels: ArrayLike, fpr: float) -> float:
    """Largest TPR over thresholds whose FPR is at most ``fpr`` (no interpolation; see module doc)."""
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    s, lab = _check(scores, labels)
    n_pos, n_neg = int(lab.sum()), int((~lab).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    tp, fp, _ = _operating_counts(s, lab)
    allowed = math.floor(fpr * n_neg + 1e-9)  # fp / N <= fpr, robust to 0.01 * 100 = 1.0000000000000002
    return float(tp[fp <= allowed].max()) / n_pos


def recall(predicted: ArrayLike, labels: ArrayLike) -> float:
    """TP / P for boolean ``predicted`` (1 = called a member); nan when there are no members."""
    p, lab = _check(predicted, labels, what="predicted")
    n_pos = int(lab.sum())
    return float((p & lab).sum()) / n_pos if n_pos else math.nan


def precision(predicted: ArrayLike, labels: ArrayLike) -> float:
    """TP / (TP + FP) for boolean ``predicted``; 0.0 when nothing is called a member."""
    p, lab = _check(predicted, labels, what="predicted")
    called = int(p.sum())
    return float((p & lab).sum()) / called if called else 0.0


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95% interval and the sample it was measured on."""

    value: float
    lo: float
    hi: float
    n_members: int
    n_nonmembers: int

    @property
    def reportable(self) -> bool:
        return self.n_members >= MIN_PER_CLASS and self.n_nonmembers >= MIN_PER_CLASS and not math.isnan(self.value)

    def as_metrics(self, name: str) -> dict[str, float]:
        """``{name, name.lo, name.hi, name.n_members, name.n_nonmembers}``: the names README defines."""
        return {
            name: self.value,
            f"{name}.lo": self.lo,
            f"{name}.hi": self.hi,
            f"{name}.n_members": float(self.n_members),
            f"{name}.n_nonmembers": float(self.n_nonmembers),
        }

    def __str__(self) -> str:
        if not self.reportable:  # never shown as a figure: too few records on a side (MIN_PER_CLASS)
            return f"not reported, n={self.n_members}+{self.n_nonmembers} (at least {MIN_PER_CLASS} a side)"
        return f"{self.value:.3f} [{self.lo:.3f}, {self.hi:.3f}] (n={self.n_members}+{self.n_nonmembers})"


def _midrank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` with ties given their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse]


def auc_estimate(scores: ArrayLike, labels: ArrayLike) -> Estimate:
    """ROC AUC with DeLong's 95% interval (see the module doc); nan figures without both classes."""
    s, lab = _check(scores, labels)
    pos, neg = s[lab], s[~lab]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return Estimate(math.nan, math.nan, math.nan, m, n)
    rank_all = _midrank(np.r_[pos, neg])
    rank_pos, rank_neg = _midrank(pos), _midrank(neg)
    auc = float((rank_all[:m].sum() - m * (m + 1) / 2.0) / (m * n))
    v10 = (rank_all[:m] - rank_pos) / n  # per member: share of non-members it beats
    v01 = 1.0 - (rank_all[m:] - rank_neg) / m  # per non-member: share of members that beat it
    var = (np.var(v10, ddof=1) / m if m > 1 else 0.0) + (np.var(v01, ddof=1) / n if n > 1 else 0.0)
    half = _Z95 * math.sqrt(max(float(var), 0.0))
    return Estimate(auc, max(0.0, auc - half), min(1.0, auc + half), m, n)


def _tpr_at_allowed(pos: np.ndarray, neg: np.ndarray, allowed: int) -> np.ndarray:
    """``tpr_at_fpr`` of each row of members ``pos`` (B, m) and non-members ``neg`` (B, n) with at
    most ``allowed`` false positives, without sorting: the best threshold lies just above the
    (allowed+1)-th highest non-member score, so the TPR is the share of members strictly above it."""
    if allowed >= neg.shape[-1]:
        return np.ones(pos.shape[:-1])
    k = neg.shape[-1] - allowed - 1
    return np.count_nonzero(pos > np.partition(neg, k, axis=-1)[..., k : k + 1], axis=-1) / pos.shape[-1]


def tpr_estimate(scores: ArrayLike, labels: ArrayLike, fpr: float, *, seed: int = 0) -> Estimate:
    """``tpr_at_fpr`` with a stratified bootstrap 95% interval (see the module doc)."""
    s, lab = _check(scores, labels)
    pos, neg = s[lab], s[~lab]
    m, n = len(pos), len(neg)
    value = tpr_at_fpr(s, lab, fpr)
    if m == 0 or n == 0:
        return Estimate(value, math.nan, math.nan, m, n)
    rng = np.random.default_rng(seed)
    allowed = math.floor(fpr * n + 1e-9)  # as tpr_at_fpr counts it
    rows = max(1, min(BOOTSTRAP, 4_000_000 // (m + n)))  # resamples at once: bounded memory
    draws = np.concatenate(
        [
            _tpr_at_allowed(pos[rng.integers(0, m, (b, m))], neg[rng.integers(0, n, (b, n))], allowed)
            for b in [rows] * (BOOTSTRAP // rows) + ([BOOTSTRAP % rows] if BOOTSTRAP % rows else [])
        ]
    )
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return Estimate(value, float(lo), float(hi), m, n)
