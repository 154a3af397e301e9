"""Dual view: what someone holding the parent *and* the child learns about which records went.

A difference attack: for a record, ``d = phi_parent - phi_child``, the drop in the logit-scaled
confidence of its true class (:func:`mlflow_amnesia.audit.shadow.logit_confidence`). A forgotten
record's confidence tends to fall more than a kept record's. The attack is *calibrated on shadow
pairs*: each shadow before and after the same unlearning (:func:`mlflow_amnesia.audit.ulira.unlearn_member`)
gives ``d`` of the records it unlearned (forgotten) and of a sample of other pool records (kept).
Two Gaussians, one per kind, fitted over all pairs, turn ``d`` into a likelihood ratio.

``audit.dualview.auc``
    The attack on the shadow pairs, each pair scored with Gaussians fitted on the other pairs
    (leave one out): forgotten (pair, record) against kept (pair, record). 0.5: the pair does not
    show which records were forgotten.
``audit.dualview.deployed.auc``
    The attack on the deployed parent and child: the request's records against the kept sample.

Above 0.5 the superseded parent must not stay queryable beside the child: purge it
(``forget --purge`` or ``purge``).
"""

from __future__ import annotations

import numpy as np

from .metrics import Estimate, auc_estimate

__all__ = ["dualview_from_pairs", "dualview_scores"]


def _gauss(x: np.ndarray) -> tuple[float, float]:
    if len(x) == 0:
        return 0.0, 1.0
    return float(x.mean()), max(float(x.std(ddof=1)) if len(x) > 1 else 0.0, 1e-6)


def _lr(d: np.ndarray, f: tuple[float, float], k: tuple[float, float]) -> np.ndarray:
    return (-0.5 * ((d - f[0]) / f[1]) ** 2 - np.log(f[1])) - (-0.5 * ((d - k[0]) / k[1]) ** 2 - np.log(k[1]))


def dualview_scores(
    diff_forgotten: np.ndarray, forgotten: np.ndarray, diff_kept: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-pair-out scores: (scores of forgotten pairs' records, scores of kept ones).

    ``diff_forgotten`` (P, n_f) and its mask ``forgotten`` (P, n_f), True where pair ``p``
    unlearned record ``j``; ``diff_kept`` (P, n_k). Each pair's scores use the Gaussians of the
    other pairs.
    """
    df = np.asarray(diff_forgotten, np.float64)
    m = np.asarray(forgotten, bool)
    dk = np.asarray(diff_kept, np.float64)
    pos, neg = [], []
    for p in range(df.shape[0]):
        keep = np.ones(df.shape[0], bool)
        keep[p] = False
        gf = _gauss(df[keep][m[keep]])
        gk = _gauss(dk[keep].ravel())
        pos.append(_lr(df[p][m[p]], gf, gk))
        neg.append(_lr(dk[p], gf, gk))
    return (np.concatenate(pos) if pos else np.zeros(0)), (np.concatenate(neg) if neg else np.zeros(0))


def dualview_from_pairs(
    diff_forgotten: np.ndarray,
    forgotten: np.ndarray,
    diff_kept: np.ndarray,
    trained_kept: np.ndarray | None = None,
    *,
    deployed: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[Estimate, Estimate | None]:
    """(AUC on the shadow pairs, AUC on the deployed pair or None): see the module doc.

    ``deployed``: ``(d of the request's records, d of the kept sample)`` between the deployed
    parent and child. ``trained_kept`` is accepted for symmetry and unused: every kept record
    counts, trained on or not, as every record is a candidate to whoever holds the pair.
    """
    pos, neg = dualview_scores(diff_forgotten, forgotten, diff_kept)
    shadow = auc_estimate(np.r_[pos, neg], np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)])
    if deployed is None:
        return shadow, None
    df = np.asarray(diff_forgotten, np.float64)
    m = np.asarray(forgotten, bool)
    gf, gk = _gauss(df[m]), _gauss(np.asarray(diff_kept, np.float64).ravel())
    f_d, k_d = (np.asarray(a, np.float64) for a in deployed)
    s = np.r_[_lr(f_d, gf, gk), _lr(k_d, gf, gk)]
    return shadow, auc_estimate(s, np.r_[np.ones(len(f_d), bool), np.zeros(len(k_d), bool)])
