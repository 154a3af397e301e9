"""Attack metrics against hand-computed cases and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score, roc_curve

from mlflow_amnesia.audit.metrics import precision, recall, roc_auc, roc_points, tpr_at_fpr

# A hand example: P = 5 members, N = 5 non-members, scores all distinct.
# threshold: 10  9  8  7  6  5  4  3  2  1
# label:      1  1  0  1  1  0  0  1  0  0
# (tp, fp):  1,0 2,0 2,1 3,1 4,1 4,2 4,3 5,3 5,4 5,5
HAND_S = np.array([10, 9, 8, 7, 6, 5, 4, 3, 2, 1], float)
HAND_L = np.array([1, 1, 0, 1, 1, 0, 0, 1, 0, 0])


def test_auc_of_a_known_ranking():
    assert roc_auc([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.1, 0.3, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    # members 0.35 and 0.8, non-members 0.1 and 0.4: 3 of 4 pairs ordered right
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # hand example: members 10, 9, 7, 6, 3 beat 5 + 5 + 4 + 4 + 2 = 20 of the 25 pairs
    pos, neg = HAND_S[HAND_L == 1], HAND_S[HAND_L == 0]
    assert roc_auc(HAND_S, HAND_L) == pytest.approx(sum(p > n for p in pos for n in neg) / 25) == 0.8


def test_auc_counts_ties_as_one_half():
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0]) == 0.5
    # pairs: 1>0.5, 1>0, 0.5=0.5 (1/2), 0.5>0  -> 3.5 / 4
    assert roc_auc([1.0, 0.5, 0.5, 0.0], [1, 1, 0, 0]) == 0.875


def test_auc_needs_both_classes():
    assert math.isnan(roc_auc([0.2, 0.3], [1, 1]))
    assert math.isnan(roc_auc([0.2, 0.3], [0, 0]))


def test_tpr_at_fpr_on_the_hand_example():
    assert tpr_at_fpr(HAND_S, HAND_L, 0.0) == 0.4  # thresholds 10, 9 have no false positive
    assert tpr_at_fpr(HAND_S, HAND_L, 0.1) == 0.4  # 0.1 * 5 = 0.5 false positives: still none allowed
    assert tpr_at_fpr(HAND_S, HAND_L, 0.2) == 0.8  # one false positive: threshold 6 -> 4 of 5
    assert tpr_at_fpr(HAND_S, HAND_L, 0.6) == 1.0  # three: threshold 3
    assert tpr_at_fpr(HAND_S, HAND_L, 1.0) == 1.0


def test_tpr_at_fpr_does_not_split_ties():
    # member and non-member tie at the top: the only threshold below +inf costs a false positive
    assert tpr_at_fpr([1.0, 1.0, 0.0], [1, 0, 0], 0.0) == 0.0
    assert tpr_at_fpr([1.0, 1.0, 0.0], [1, 0, 0], 0.5) == 1.0


def test_tpr_at_fpr_boundary_is_inclusive_without_float_surprises():
    # 100 non-members, 1% FPR = exactly one false positive allowed (0.01 * 100 is 1.0000000000000002)
    s = np.r_[np.arange(100.0), 1000.0, 99.5, 50.0]
    lab = np.r_[np.zeros(100), 1, 1, 1]
    # order: 1000 (m), 99.5 (m), 99 (n), 98 (n) ... with one fp allowed: tp=2
    assert tpr_at_fpr(s, lab, 0.01) == pytest.approx(2 / 3)
    assert tpr_at_fpr(s, lab, 0.0) == pytest.approx(2 / 3)
    assert tpr_at_fpr(s, lab, 0.49) == pytest.approx(2 / 3)  # 49.5 is under 50: 49 fps not enough
    assert tpr_at_fpr(s, lab, 0.50) == 1.0


def test_recall_and_precision_by_hand():
    pred = [1, 1, 0, 0, 1]
    lab = [1, 0, 1, 0, 1]
    assert recall(pred, lab) == pytest.approx(2 / 3)
    assert precision(pred, lab) == pytest.approx(2 / 3)
    assert recall([True, False], [True, True]) == 0.5
    assert precision([0, 0], [1, 0]) == 0.0  # nothing called a member
    assert math.isnan(recall([1, 0], [0, 0]))


@pytest.mark.parametrize("bad", [
    lambda: roc_auc([0.1, 0.2], [1]),
    lambda: roc_auc([[0.1, 0.2]], [[1, 0]]),
    lambda: roc_auc([0.1, float("nan")], [1, 0]),
    lambda: roc_auc([0.1, 0.2], [2, 0]),
    lambda: tpr_at_fpr([0.1, 0.2], [1, 0], 1.5),
    lambda: recall([0.3, 1], [1, 0]),
])
def test_malformed_inputs_raise(bad):
    with pytest.raises(ValueError):
        bad()


def _random_case(rng, n, ties):
    s = rng.normal(size=n)
    if ties:
        s = np.round(s, 1)
    lab = rng.random(n) < 0.4
    lab[0], lab[1] = True, False
    return s, lab


@pytest.mark.parametrize("ties", [False, True])
def test_agrees_with_sklearn(ties):
    rng = np.random.default_rng(7)
    for n in (2, 5, 37, 500):
        s, lab = _random_case(rng, n, ties)
        assert roc_auc(s, lab) == pytest.approx(roc_auc_score(lab, s), abs=1e-12)
        fpr, tpr, thr = roc_points(s, lab)
        f2, t2, th2 = roc_curve(lab, s, drop_intermediate=False)
        np.testing.assert_allclose(fpr, f2)
        np.testing.assert_allclose(tpr, t2)
        np.testing.assert_array_equal(thr[1:], th2[1:])
        for f in (0.0, 0.001, 0.01, 0.1, 0.5, 1.0):
            assert tpr_at_fpr(s, lab, f) == pytest.approx(t2[f2 <= f + 1e-12].max())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 5), st.booleans()), min_size=2, max_size=40))
def test_auc_is_symmetric_and_rank_based(pairs):
    s = np.array([p[0] for p in pairs], float)
    lab = np.array([p[1] for p in pairs])
    a = roc_auc(s, lab)
    if lab.all() or not lab.any():
        assert math.isnan(a)
        return
    assert a == pytest.approx(roc_auc_score(lab, s))
    assert roc_auc(-s, lab) == pytest.approx(1 - a)  # reversing the ranking reflects the AUC
    assert roc_auc(np.exp(s), lab) == pytest.approx(a)  # only the order matters


# --- sizes and intervals -----------------------------------------------------------------------

from math import erf, sqrt  # noqa: E402

from mlflow_amnesia.audit.metrics import MIN_PER_CLASS, auc_estimate, tpr_estimate  # noqa: E402


def test_delong_variance_matches_the_hand_computed_example():
    # members 0.9, 0.6; non-members 0.7, 0.1: AUC 3/4. V10 = (1, 1/2), V01 = (1/2, 0);
    # var = var(V10)/2 + var(V01)/2 = 0.125/2 + 0.125/2 = 0.125.
    e = auc_estimate([0.9, 0.6, 0.7, 0.1], [1, 1, 0, 0])
    assert e.value == pytest.approx(0.75)
    half = 1.959963984540054 * sqrt(0.125)
    assert e.lo == pytest.approx(max(0.0, 0.75 - half)) and e.hi == pytest.approx(1.0)
    assert (e.n_members, e.n_nonmembers) == (2, 2) and not e.reportable


def test_delong_interval_covers_the_true_auc_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    true = 0.5 * (1 + erf(0.5 / 2))  # P(X > Y), X ~ N(0.5, 1), Y ~ N(0, 1)
    hits = 0
    for _ in range(300):
        s = np.r_[rng.normal(0.5, 1, 40), rng.normal(0, 1, 60)]
        e = auc_estimate(s, np.r_[np.ones(40), np.zeros(60)])
        hits += e.lo <= true <= e.hi
    assert 0.90 <= hits / 300 <= 0.99


def test_an_estimate_below_the_minimum_count_is_not_reportable():
    s = np.arange(MIN_PER_CLASS * 2, dtype=float)
    lab = np.r_[np.ones(MIN_PER_CLASS - 1), np.zeros(MIN_PER_CLASS + 1)]
    assert not auc_estimate(s, lab).reportable
    lab = np.r_[np.ones(MIN_PER_CLASS), np.zeros(MIN_PER_CLASS)]
    e = auc_estimate(s, lab)
    assert e.reportable and set(e.as_metrics("audit.lira.auc")) == {
        "audit.lira.auc",
        "audit.lira.auc.lo",
        "audit.lira.auc.hi",
        "audit.lira.auc.n_members",
        "audit.lira.auc.n_nonmembers",
    }


def test_tpr_estimate_brackets_its_value_and_is_reproducible():
    rng = np.random.default_rng(3)
    s = np.r_[rng.normal(1, 1, 50), rng.normal(0, 1, 200)]
    lab = np.r_[np.ones(50), np.zeros(200)]
    a, b = tpr_estimate(s, lab, 0.05, seed=1), tpr_estimate(s, lab, 0.05, seed=1)
    assert a == b and a.lo <= a.value <= a.hi and a.hi - a.lo > 0


def test_an_estimate_on_too_few_records_is_never_printed_as_a_figure():
    from mlflow_amnesia.audit.metrics import MIN_PER_CLASS, Estimate

    few = Estimate(0.083, 0.0, 0.262, 6, 6)
    assert "0.083" not in str(few) and str(few) == f"not reported, n=6+6 (at least {MIN_PER_CLASS} a side)"
    assert str(Estimate(0.5, 0.4, 0.6, 12, 359)) == "0.500 [0.400, 0.600] (n=12+359)"
