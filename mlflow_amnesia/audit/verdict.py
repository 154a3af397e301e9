"""The audit's verdict on a version: ``pass``, ``fail``, ``inconclusive`` (a forget) or ``n/a`` (a
version ``train`` registered), with a one-line reason. A pure function of the figures the audit
logged, so a re-run, a later ``audit`` or a reader of the run's metrics gets the same verdict.

The rule (README, "The privacy audit"; the figures are :class:`~.metrics.Estimate`: value, 95%
interval, n members and n non-members):

*Detectable.* Membership is detectable on a set of records when its figure is reportable (at
least :data:`~.metrics.MIN_PER_CLASS` records on each side) and its 95% interval lies above 0.5
(``lo > 0.5``).

A forget's verdict, in this order (the first that applies):

1. fewer than ``MIN_PER_CLASS`` forgotten records (or non-members): ``inconclusive``, too few
   records for an AUC; the per-record statistics (``audit/per_record.json``) are the evidence;
2. the parent's LiRA on the forgotten records (``audit.parent.lira.auc``: the same records, the
   same non-members, the same shadow models as the child's figure) is not detectable:
   ``inconclusive``, the test had no power: nothing was there to remove;
3. with U-LiRA (``audit.ulira.auc``, reportable): ``fail`` when it is detectable (the child can
   be told from models that never trained on the records); ``inconclusive`` when its interval
   reaches the parent's LiRA AUC (it could not have told the parent's level from chance);
   else ``pass``;
4. without it, on LiRA: ``fail`` when the child's LiRA on the forgotten records
   (``audit.lira.auc``) is detectable; ``inconclusive`` when the retained-records control
   (``audit.retain.lira.auc``) is not detectable (the attack has no power on the child, so its
   silence on the forgotten records says nothing), or when the child's interval reaches the
   parent's AUC (the child cannot be told from the parent either); else ``pass``.

With the dual view (``audit.dualview.auc``, an attacker holding parent and child) detectable, the
reason adds that the parent must not stay queryable and names ``forget --purge`` / ``purge``; the
outcome is the one above (it is about the child alone).

A train version's verdict is ``n/a`` (nothing was forgotten); its reason says whether membership
of its training records is detectable at all (``audit.lira.auc`` on a sample of them), that is,
whether a forget's audit on this model can come out other than ``inconclusive``.

The paper's attack (``audit.mia.*``, recall and precision) is reported for the paper comparison;
no verdict rests on it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .metrics import MIN_PER_CLASS, Estimate

__all__ = [
    "FAIL",
    "INCONCLUSIVE",
    "NOT_APPLICABLE",
    "PASS",
    "Verdict",
    "detectable",
    "estimate_from_metrics",
    "forget_verdict",
    "parent_metric",
    "train_verdict",
    "verdict_from_metrics",
]

PASS, FAIL, INCONCLUSIVE, NOT_APPLICABLE = "pass", "fail", "inconclusive", "n/a"

# the figures the verdict reads (metric names, README's table)
CHILD = "audit.lira.auc"
PARENT = "audit.parent.lira.auc"  # parent_metric(CHILD)
RETAIN = "audit.retain.lira.auc"
ULIRA = "audit.ulira.auc"
DUALVIEW = "audit.dualview.auc"
N_TARGETS = "audit.n_targets"
N_NONMEMBERS = "audit.n_nonmembers"
#: the first paragraph of a version's description: ``**Audit verdict: pass** — reason``
VERDICT_START = "**Audit verdict:"


def parent_metric(name: str) -> str:
    """The name of figure ``name`` measured on a forget's parent in the child's own audit, on the
    same records: ``parent`` after the first component (``audit.lira.auc`` ->
    ``audit.parent.lira.auc``, ``acc.forget`` -> ``acc.parent.forget``)."""
    head, _, rest = name.partition(".")
    return f"{head}.parent.{rest}"


@dataclass(frozen=True)
class Verdict:
    outcome: str  # pass | fail | inconclusive | n/a
    reason: str  # one line

    @property
    def line(self) -> str:
        """``outcome: reason``: the tag-free one-line form (CLI summary, first line of the description)."""
        return f"{self.outcome}: {self.reason}"

    def __str__(self) -> str:
        return self.line


def _fmt(e: Estimate) -> str:
    return f"{e.value:.2f} [{e.lo:.2f}, {e.hi:.2f}], {e.n_members} vs {e.n_nonmembers} records"


def detectable(e: Estimate | None) -> bool:
    """Reportable (``MIN_PER_CLASS`` records a side) with its 95% interval above 0.5."""
    return e is not None and e.reportable and not math.isnan(e.lo) and e.lo > 0.5


def estimate_from_metrics(metrics: Mapping[str, float], name: str) -> Estimate | None:
    """The :class:`Estimate` logged as ``name``, ``name.lo``, ``name.hi``, ``name.n_members``,
    ``name.n_nonmembers`` (:meth:`Estimate.as_metrics`); None when any part is missing."""
    parts = (name, f"{name}.lo", f"{name}.hi", f"{name}.n_members", f"{name}.n_nonmembers")
    if not all(p in metrics for p in parts):
        return None
    v, lo, hi, m, n = (float(metrics[p]) for p in parts)
    return Estimate(v, lo, hi, int(m), int(n))


def _purge_advice(dualview: Estimate | None, parent_ref: str | None) -> str:
    if not detectable(dualview):
        return ""
    assert dualview is not None
    how = (
        f"`mlflow-amnesia purge {parent_ref}`" if parent_ref else "`mlflow-amnesia purge --model NAME --version PARENT`"
    )
    return (
        f"; parent and child side by side single out the forgotten records (dual-view AUC {_fmt(dualview)}): "
        f"the parent must not stay queryable: purge it ({how}, or `mlflow-amnesia forget --purge` next time)"
    )


def forget_verdict(
    *,
    parent: Estimate | None,
    child: Estimate | None,
    retain: Estimate | None,
    n_forgotten: int,
    n_nonmembers: int,
    ulira: Estimate | None = None,
    dualview: Estimate | None = None,
    parent_ref: str | None = None,
) -> Verdict:
    """The verdict on a forget's child (the rule in the module doc). ``parent``, ``child``,
    ``retain``: LiRA AUCs (the parent and the child on the forgotten records, matched; the child on
    retained records); ``ulira``, ``dualview``: None until measured; ``parent_ref`` (e.g.
    ``--model m --version 1``) completes the purge advice."""
    advice = _purge_advice(dualview, parent_ref)
    if n_forgotten < MIN_PER_CLASS or n_nonmembers < MIN_PER_CLASS:
        return Verdict(
            INCONCLUSIVE,
            f"{n_forgotten} forgotten record(s) against {n_nonmembers} non-members are too few for an AUC "
            f"(at least {MIN_PER_CLASS} a side); the per-record LiRA statistics are in audit/per_record.json" + advice,
        )
    if parent is None or child is None:
        return Verdict(
            INCONCLUSIVE,
            "no matched privacy audit of the parent and this version on the forgotten records "
            "(run `mlflow-amnesia audit` on this version)" + advice,
        )
    if not detectable(parent):
        return Verdict(
            INCONCLUSIVE,
            f"the parent shows no detectable membership on these records (LiRA AUC {_fmt(parent)}): "
            "the test could not have failed" + advice,
        )
    if ulira is not None and ulira.reportable:
        if detectable(ulira):
            return Verdict(
                FAIL,
                f"this version can be told from models that never trained on the forgotten records "
                f"(U-LiRA AUC {_fmt(ulira)}; the parent's LiRA AUC {_fmt(parent)})" + advice,
            )
        if ulira.hi >= parent.value:
            return Verdict(
                INCONCLUSIVE,
                f"U-LiRA's interval reaches the parent's LiRA AUC (U-LiRA {_fmt(ulira)}; parent {_fmt(parent)}): "
                "too few records to tell" + advice,
            )
        return Verdict(
            PASS,
            f"this version cannot be told from models that never trained on the forgotten records "
            f"(U-LiRA AUC {_fmt(ulira)}), while the parent showed membership on them (LiRA AUC {_fmt(parent)})"
            + advice,
        )
    if detectable(child):
        return Verdict(
            FAIL,
            f"the forgotten records still look like members (LiRA AUC {_fmt(child)}; the parent's {_fmt(parent)})"
            + advice,
        )
    if not detectable(retain):
        shown = f"LiRA AUC {_fmt(retain)}" if retain is not None else "not measured"
        return Verdict(
            INCONCLUSIVE,
            f"the retained-records control shows no membership in this version ({shown}): the attack has no "
            f"power on it, so its silence on the forgotten records (LiRA AUC {_fmt(child)}) says nothing" + advice,
        )
    if child.hi >= parent.value:
        return Verdict(
            INCONCLUSIVE,
            f"on the forgotten records this version's interval reaches the parent's AUC (LiRA AUC {_fmt(child)}; "
            f"parent {_fmt(parent)}): too few records to tell it from the parent" + advice,
        )
    return Verdict(
        PASS,
        f"the forgotten records look like non-members (LiRA AUC {_fmt(child)}); the parent showed membership "
        f"on them ({_fmt(parent)}) and retained records still do ({_fmt(retain)})" + advice,  # type: ignore[arg-type]
    )


def train_verdict(lira: Estimate | None) -> Verdict:
    """``n/a`` (nothing forgotten), saying whether membership of the training records is detectable."""
    if lira is None or not lira.reportable:
        return Verdict(NOT_APPLICABLE, "nothing forgotten; no membership audit of the training records ran")
    if detectable(lira):
        return Verdict(
            NOT_APPLICABLE,
            f"nothing forgotten; membership of its training records is detectable (LiRA AUC {_fmt(lira)}), "
            "so a forget's audit can pass or fail",
        )
    return Verdict(
        NOT_APPLICABLE,
        f"nothing forgotten; membership of its training records is not detectable (LiRA AUC {_fmt(lira)}), "
        "so a forget's audit will likely be inconclusive",
    )


def verdict_from_metrics(
    metrics: Mapping[str, float],
    *,
    forget: bool,
    ulira: Estimate | None = None,
    dualview: Estimate | None = None,
    parent_ref: str | None = None,
) -> Verdict:
    """The verdict of a version from the figures its audit logged (``forget``: a forget's child).
    ``ulira`` / ``dualview`` override the logged ``audit.ulira.auc`` / ``audit.dualview.auc``."""
    if not forget:
        return train_verdict(estimate_from_metrics(metrics, CHILD))
    if N_TARGETS not in metrics:
        return Verdict(
            INCONCLUSIVE, "no privacy audit of this version ran (run `mlflow-amnesia audit` on this version)"
        )
    return forget_verdict(
        parent=estimate_from_metrics(metrics, PARENT),
        child=estimate_from_metrics(metrics, CHILD),
        retain=estimate_from_metrics(metrics, RETAIN),
        n_forgotten=int(metrics[N_TARGETS]),
        n_nonmembers=int(metrics.get(N_NONMEMBERS, 0)),
        ulira=ulira if ulira is not None else estimate_from_metrics(metrics, ULIRA),
        dualview=dualview if dualview is not None else estimate_from_metrics(metrics, DUALVIEW),
        parent_ref=parent_ref,
    )
