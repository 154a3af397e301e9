"""Membership inference: does a model still behave as if it trained on some records?

Two attacks share one set of shadow models (:mod:`mlflow_amnesia.audit.shadow`):

The paper's attack (Shokri et al. 2017, as Graves et al. 2021 run it): one attack network per
class, fully connected ``K -> 256 -> 128 -> 1`` with ReLU and a sigmoid output, fed a model's
softmax vector for a record of that class and trained to say whether the record was in the
model's training data. Training examples come from the shadow models: shadow ``s`` on pool record
``i`` is a *member* example when ``membership[s, i]`` and a *non-member* example otherwise (the
balanced matrix makes the two kinds equally common in every class).

LiRA (Carlini et al. 2022), a per-record likelihood-ratio test on the logit-scaled confidence
``phi = log(p_y / (1 - p_y))``. For each audited record the shadows that trained on it (IN) and
those that did not (OUT) give two Gaussians of ``phi``; the *online* score is
``log N(phi; mu_in, sd_in) - log N(phi; mu_out, sd_out)``, the *offline* score (OUT shadows only)
is the one-sided ``(phi - mu_out) / sd_out``. Means are per record; standard deviations are per
record only with at least :data:`PER_RECORD_VARIANCE_MIN` shadows on a side, otherwise pooled
over the shadow set (:meth:`ShadowSet.pooled_std`, Carlini et al.'s "fixed variance"). ``auto``
uses the online test when every scored record has IN and OUT shadows (always, with the default
pool), else the offline one for all of them, so scores stay comparable within one audit.

What the metrics are computed on (:func:`membership_audit`): *targets* (labelled member:
records the model trained on at some point, e.g. the forgotten records after a forget, or a
sample of retained training records) against *non-members* (held-out records it never trained
on). After a successful forget the targets look like non-members: AUC near 0.5, recall near the
attack's false-positive rate.

``audit.mia.auc``                ROC AUC of the attack network's member probability, targets vs non-members
``audit.mia.recall``             share of targets the network calls member (probability > 0.5): the paper's metric
``audit.mia.precision``          share of records called member (targets and non-members) that are targets
``audit.mia.tpr_at_1pct_fpr``    share of targets caught at a threshold passing at most 1% of non-members
``audit.mia.tpr_at_0.1pct_fpr``  the same at 0.1%
``audit.lira.auc``, ``audit.lira.tpr_at_1pct_fpr``, ``audit.lira.tpr_at_0.1pct_fpr``  the same for LiRA scores

Every AUC and TPR comes with ``NAME.lo`` / ``NAME.hi`` (95% interval: DeLong for AUCs, a
stratified bootstrap for TPRs), ``NAME.n_members`` and ``NAME.n_nonmembers``
(:meth:`mlflow_amnesia.audit.metrics.Estimate.as_metrics`). With fewer than
:data:`~mlflow_amnesia.audit.metrics.MIN_PER_CLASS` targets none of them is returned: the
per-record statistics are (:func:`per_record`: LiRA's log likelihood ratio and the p-value of the
record's confidence against its OUT shadows). Recall and precision are the paper's metrics, kept
to compare with the paper; the audit's verdict (:mod:`.verdict`) never rests on them.

Rates at low FPR follow :func:`mlflow_amnesia.audit.metrics.tpr_at_fpr` (no interpolation; with
fewer than 1/FPR non-members they are the TPR at zero false positives). With few targets (a
forget of 3 records) the AUC is coarse: with no signal its standard error is
``sqrt((P + N + 1) / (12 P N))`` for P targets and N non-members (0.03 for 100 against 250).

Measured on real MNIST (small CNN overfit on 250 records, 8 shadows over those and 250 held-out
records; tests/audit/test_membership.py): members against held-out, LiRA AUC 0.69 (TPR 0.10 at
1% FPR), the paper's attack 0.64 (recall 0.98, precision 0.55); a model retrained without 100
of the members, on those 100: LiRA 0.53, the paper's attack 0.49 (recall 0.71).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..learning.data import Records
from ..progress import info as say
from .metrics import MIN_PER_CLASS, Estimate, auc_estimate, precision, recall, tpr_estimate
from .shadow import ShadowSet, _write_atomic, logit_confidence, predict_logits

__all__ = [
    "ATTACK_FORMAT",
    "AttackModels",
    "METRIC_NAMES",
    "MembershipScores",
    "PER_RECORD_VARIANCE_MIN",
    "lira_scores",
    "membership_audit",
    "membership_estimates",
    "membership_metrics",
    "per_record",
    "score_records",
]

ATTACK_FORMAT = 1
PER_RECORD_VARIANCE_MIN = 32
HIDDEN = (256, 128)
METRIC_NAMES = (
    "audit.mia.auc",
    "audit.mia.recall",
    "audit.mia.precision",
    "audit.mia.tpr_at_1pct_fpr",
    "audit.mia.tpr_at_0.1pct_fpr",
    "audit.lira.auc",
    "audit.lira.tpr_at_1pct_fpr",
    "audit.lira.tpr_at_0.1pct_fpr",
)
_ATTACK_META = "attack.json"
_ATTACK_WEIGHTS = "attack.pt"
LiraVariant = Literal["auto", "online", "offline"]


# --------------------------------------------------------------------------------------------
# The paper's attack: per-class networks


@contextlib.contextmanager
def _threads(n: int):
    """Run the block with ``n`` torch intra-op threads, restoring the count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def attack_features(logits: torch.Tensor) -> torch.Tensor:
    """The attack network's input: the model's softmax vector (the paper's choice).

    Log-probabilities were measured as the alternative (they keep the 1e-6 vs 1e-3 differences
    float32 rounds away near p = 1): on real MNIST the networks then overfit the shadows and
    scored a lower AUC on the target, so the paper's input stays.
    """
    return torch.softmax(logits.float(), dim=1)


class _PerClassMLP(nn.Module):
    """``num_classes`` independent networks ``F -> 256 -> 128 -> 1`` held as stacked weights.

    Stacking lets every class train in the same batched matmul; the networks share nothing
    (the loss is a sum over classes and Adam is per-parameter), so this is exactly K separate
    attack models trained side by side.
    """

    def __init__(self, num_classes: int, n_features: int, hidden: Sequence[int] = HIDDEN) -> None:
        super().__init__()
        dims = [n_features, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(d_in)  # nn.Linear's default initialisation
            self.weights.append(nn.Parameter(torch.empty(num_classes, d_in, d_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_classes, d_out).uniform_(-bound, bound)))

    def forward(self, feats: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Logits: ``feats`` (K, B, F) -> (K, B); or, with ``classes``, ``feats`` (B, F) of one class each."""
        if classes is None:
            h = feats
            for i, (w, b) in enumerate(zip(self.weights, self.biases)):
                h = torch.baddbmm(b.unsqueeze(1), h, w)
                if i < len(self.weights) - 1:
                    h = torch.relu(h)
            return h.squeeze(-1)
        out = torch.empty(len(feats), dtype=feats.dtype)
        for c in torch.unique(classes).tolist():
            rows = classes == c
            h = feats[rows]
            for i, (w, b) in enumerate(zip(self.weights, self.biases)):
                h = torch.addmm(b[c], h, w[c])
                if i < len(self.weights) - 1:
                    h = torch.relu(h)
            out[rows] = h.squeeze(-1)
        return out


@dataclass(eq=False)
class AttackModels:
    """The paper's per-class attack networks, fitted on one :class:`ShadowSet`.

    ``info`` records the shadow set's cache key (an attack is only valid with its own shadows),
    training settings, per-class training accuracy and any class without training examples
    (those records get the uninformative probability 0.5).
    """

    net: _PerClassMLP
    num_classes: int
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        shadows: ShadowSet,
        records: Records,
        *,
        steps: int = 1000,
        batch_size: int = 128,
        lr: float = 1e-3,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> AttackModels:
        """Train one network per class on the shadows' softmax vectors over the pool.

        Runs each shadow once over the pool (inference), then ``steps`` Adam steps in which every
        class draws ``batch_size`` of its examples. Deterministic for a given ``seed``.
        """
        shadows.check_records(records)
        t0 = time.monotonic()
        k = records.num_classes
        pool = shadows.pool
        y_pool = records.y[pool]
        feats, member = [], []
        for s, m in enumerate(shadows.modules(device)):
            feats.append(attack_features(predict_logits(m, records.x[pool], device=device)))
            member.append(torch.from_numpy(shadows.membership[s]))
        x_all = torch.cat(feats)  # (S * P, K)
        t_all = torch.cat(member).float()
        y_all = y_pool.repeat(shadows.n_shadows)
        order = torch.argsort(y_all, stable=True)
        x_all, t_all, y_all = x_all[order], t_all[order], y_all[order]
        counts = torch.bincount(y_all, minlength=k)
        offsets = torch.cumsum(counts, 0) - counts
        n_member = torch.zeros(k).index_add_(0, y_all, t_all)
        trainable = (n_member > 0) & (n_member < counts)
        untrained = [int(c) for c in torch.nonzero(~trainable).flatten()]
        if untrained:
            say(
                f"membership attack: class(es) {untrained} have no member/non-member examples in the shadow pool; "
                "their records get the uninformative score 0.5"
            )
        threads = torch.get_num_threads()
        with torch.random.fork_rng(devices=[]), _threads(1 if torch.device(device).type == "cpu" else threads):
            # the batches are tiny (k x 128 x k): one thread is faster, and on shared cores up to
            # 15x faster than two that contend (measured while building the UI test)
            torch.manual_seed(int(seed))
            net = _PerClassMLP(k, x_all.shape[1]).to(device)
            opt = torch.optim.Adam(net.parameters(), lr=lr)
            weight = trainable.float().to(device)
            safe_counts = counts.clamp_min(1).float()
            x_dev, t_dev = x_all.to(device), t_all.to(device)
            for _ in range(int(steps)):
                pick = (torch.rand(k, batch_size) * safe_counts[:, None]).long() + offsets[:, None]
                pick = pick.clamp_max(len(x_all) - 1).to(device)
                logits = net(x_dev[pick])
                loss = F.binary_cross_entropy_with_logits(logits, t_dev[pick], reduction="none").mean(1)
                loss = (loss * weight).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        net = net.cpu().eval()
        with torch.no_grad():
            hit = ((net(x_all, y_all) > 0).float() == t_all).float()
        acc = torch.zeros(k).index_add_(0, y_all, hit) / counts.clamp_min(1)
        info = {
            "shadow_key": shadows.cache_key,
            "features": "softmax",
            "hidden": list(HIDDEN),
            "steps": int(steps),
            "batch_size": int(batch_size),
            "lr": float(lr),
            "seed": int(seed),
            "train_accuracy": [float(a) if t else None for a, t in zip(acc.tolist(), trainable.tolist())],
            "untrained_classes": untrained,
            "fit_seconds": time.monotonic() - t0,
        }
        return cls(net=net, num_classes=k, info=info)

    @torch.no_grad()
    def member_probability(self, logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
        """P(member) (float64) for records with these model ``logits`` and true ``labels``."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise InputError(
                f"the attack models expect {self.num_classes} classes; the model gives logits {tuple(logits.shape)}."
            )
        self.net.eval()
        labels = labels.to(torch.int64).cpu()
        p = torch.sigmoid(self.net(attack_features(logits.cpu()), labels)).double()
        untrained = torch.tensor(self.info.get("untrained_classes", []), dtype=torch.int64)
        if len(untrained):
            p[torch.isin(labels, untrained)] = 0.5
        return p.numpy()

    def check_shadows(self, shadows: ShadowSet) -> None:
        if self.info.get("shadow_key") != shadows.cache_key:
            raise InputError(
                "these attack models were fitted on a different shadow set (cache key "
                f"{self.info.get('shadow_key')}, given {shadows.cache_key}): fit them on the shadows you audit with."
            )

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``attack.json`` + ``attack.pt`` (state dict) to ``directory``; may share a shadow set's directory."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(self.net.state_dict(), buf)
        digest = _write_atomic(d / _ATTACK_WEIGHTS, buf.getvalue())
        meta = {
            "format": ATTACK_FORMAT,
            "num_classes": self.num_classes,
            "n_features": int(self.net.weights[0].shape[1]),
            "weights_sha256": digest,
            "info": self.info,
        }
        _write_atomic(d / _ATTACK_META, json.dumps(meta, indent=1, sort_keys=True).encode())
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> AttackModels:
        """Read what :meth:`save` wrote, checking the weights' sha256."""
        d = Path(directory)
        redo = "delete it so the attack models are fitted again"
        try:
            meta = json.loads((d / _ATTACK_META).read_text())
            data = (d / _ATTACK_WEIGHTS).read_bytes()
        except (OSError, ValueError) as e:
            raise InputError(f"{d} holds no readable attack models ({e}); {redo}.") from None
        if int(meta.get("format", -1)) != ATTACK_FORMAT:
            raise InputError(
                f"{d / _ATTACK_META} is attack format {meta.get('format')!r}; this mlflow-amnesia reads {ATTACK_FORMAT}; {redo}."
            )
        if "sha256:" + hashlib.sha256(data).hexdigest() != meta.get("weights_sha256"):
            raise InputError(f"{d / _ATTACK_WEIGHTS} does not match its recorded sha256: it is damaged; {redo}.")
        net = _PerClassMLP(int(meta["num_classes"]), int(meta["n_features"]))
        net.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), strict=True)
        return cls(net=net.eval(), num_classes=int(meta["num_classes"]), info=meta.get("info", {}))


# --------------------------------------------------------------------------------------------
# LiRA


def _normal_logpdf(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi)


def _side_stats(phi: np.ndarray, mask: np.ndarray, pooled: float, per_record: bool) -> tuple[np.ndarray, np.ndarray]:
    n = mask.sum(0)
    mean = np.where(mask, phi, 0.0).sum(0) / np.maximum(n, 1)
    if per_record:
        var = np.where(mask, (phi - mean) ** 2, 0.0).sum(0) / np.maximum(n - 1, 1)
        sd = np.sqrt(var)
    else:
        sd = np.full(phi.shape[1], pooled)
    return mean, np.maximum(sd, 1e-6)


def lira_scores(
    target_phi: np.ndarray,
    shadow_phi: np.ndarray,
    in_mask: np.ndarray,
    *,
    online: bool,
    pooled_std: tuple[float, float],
    per_record_variance: bool | None = None,
) -> np.ndarray:
    """LiRA membership scores (higher = member), one per record; see the module docstring.

    ``target_phi`` (n,), ``shadow_phi`` (S, n), ``in_mask`` (S, n) True where the shadow trained on
    the record; ``pooled_std`` = (IN, OUT) standard deviations used unless
    ``per_record_variance`` (default: when every record has at least
    :data:`PER_RECORD_VARIANCE_MIN` shadows on each side it uses).
    """
    t = np.asarray(target_phi, dtype=np.float64)
    phi = np.asarray(shadow_phi, dtype=np.float64)
    m_in = np.asarray(in_mask, dtype=bool)
    if phi.shape != m_in.shape or phi.shape[1:] != t.shape:
        raise ValueError(f"target_phi {t.shape}, shadow_phi {phi.shape} and in_mask {m_in.shape} do not line up")
    m_out = ~m_in
    need = [m_out] + ([m_in] if online else [])
    lacking = np.zeros(len(t), bool)
    for m in need:
        lacking |= m.sum(0) == 0
    if lacking.any():
        side = "IN and OUT" if online else "OUT"
        raise InputError(
            f"{int(lacking.sum())} record(s) have no {side} shadow model: use the offline test or a pool and shadow count that cover them."
        )
    if per_record_variance is None:
        per_record_variance = all(int(m.sum(0).min()) >= PER_RECORD_VARIANCE_MIN for m in need)
    mu_out, sd_out = _side_stats(phi, m_out, pooled_std[1], per_record_variance)
    if not online:
        return (t - mu_out) / sd_out
    mu_in, sd_in = _side_stats(phi, m_in, pooled_std[0], per_record_variance)
    return _normal_logpdf(t, mu_in, sd_in) - _normal_logpdf(t, mu_out, sd_out)


# --------------------------------------------------------------------------------------------
# Scoring a model and the audit's metrics


@dataclass
class MembershipScores:
    """Per-record attack output for one audited model (arrays aligned with ``positions``)."""

    positions: np.ndarray
    mia: np.ndarray  # the per-class networks' P(member)
    lira: np.ndarray  # LiRA score, higher = member
    lira_variant: str  # "online" | "offline"
    phi: np.ndarray  # the audited model's logit-scaled confidence of the true class
    #: one-sided p-value of ``phi`` against the record's OUT shadows' Gaussian: the probability that
    #: a model which never trained on the record is at least this confident on it
    p_out: np.ndarray | None = None

    def take(self, positions: np.ndarray) -> MembershipScores:
        """The scores of ``positions`` (each must have been scored)."""
        where = {int(p): i for i, p in enumerate(self.positions.tolist())}
        try:
            rows = np.fromiter((where[int(p)] for p in positions), dtype=np.int64, count=len(positions))
        except KeyError as e:
            raise InputError(f"record position {e.args[0]} was not scored in this membership audit.") from None
        return MembershipScores(
            self.positions[rows],
            self.mia[rows],
            self.lira[rows],
            self.lira_variant,
            self.phi[rows],
            None if self.p_out is None else self.p_out[rows],
        )


def score_records(
    target_module: nn.Module,
    records: Records,
    shadows: ShadowSet,
    attack: AttackModels,
    positions: Sequence[int] | np.ndarray,
    *,
    lira: LiraVariant = "auto",
    device: str | torch.device = "cpu",
) -> MembershipScores:
    """Run both attacks on ``target_module`` (already on ``device``) for the records at ``positions``.

    Inference only: the target runs once over the records; shadow confidences come from the
    shadow set (stored for pool records, computed for others); nothing is trained.
    """
    shadows.check_records(records)
    attack.check_shadows(shadows)
    pos = np.asarray(positions, dtype=np.int64)
    if len(pos) and (pos.min() < 0 or pos.max() >= len(records)):
        raise InputError(
            f"audited positions must lie in 0..{len(records) - 1} of data set {records.spec.get('spec')!r}."
        )
    logits = predict_logits(target_module, records.x[pos], device=device)
    y = records.y[pos]
    phi_t = logit_confidence(logits, y)
    mia = attack.member_probability(logits, y)
    in_mask = shadows.in_mask(pos)
    if lira == "auto":
        both = bool(in_mask.any(0).all() and (~in_mask).any(0).all())
        lira = "online" if both else "offline"
    if lira not in ("online", "offline"):
        raise InputError(f"LiRA variant {lira!r}: use auto, online or offline.")
    shadow_phi = shadows.shadow_phi(records, pos, device=device)
    scores = lira_scores(phi_t, shadow_phi, in_mask, online=lira == "online", pooled_std=shadows.pooled_std())
    z = (
        scores
        if lira == "offline"
        else lira_scores(phi_t, shadow_phi, in_mask, online=False, pooled_std=shadows.pooled_std())
    )
    p_out = 0.5 * np.vectorize(math.erfc)(np.asarray(z, np.float64) / math.sqrt(2.0)) if len(z) else np.zeros(0)
    return MembershipScores(pos, mia, scores, lira, phi_t, np.asarray(p_out, np.float64))


_ESTIMATED = ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")
_FPR = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}


def membership_estimates(
    targets: MembershipScores, nonmembers: MembershipScores, *, prefix: str = "audit"
) -> dict[str, Estimate]:
    """``{prefix}.mia.auc``, ``{prefix}.lira.auc`` and their TPRs at 1% / 0.1% FPR as
    :class:`~mlflow_amnesia.audit.metrics.Estimate` (value, 95% interval, n members and non-members):
    AUCs with DeLong's interval, TPRs with the stratified bootstrap's."""
    if targets.lira_variant != nonmembers.lira_variant:
        raise InputError("targets and non-members were scored with different LiRA variants; score them in one call.")
    labels = np.r_[np.ones(len(targets.positions), bool), np.zeros(len(nonmembers.positions), bool)]
    out: dict[str, Estimate] = {}
    for attack, scores in (("mia", np.r_[targets.mia, nonmembers.mia]), ("lira", np.r_[targets.lira, nonmembers.lira])):
        out[f"{prefix}.{attack}.auc"] = auc_estimate(scores, labels)
        for name, fpr in _FPR.items():
            out[f"{prefix}.{attack}.{name}"] = tpr_estimate(scores, labels, fpr)
    return out


def membership_metrics(
    targets: MembershipScores,
    nonmembers: MembershipScores,
    *,
    threshold: float = 0.5,
    prefix: str = "audit",
    min_per_class: int = MIN_PER_CLASS,
) -> dict[str, float]:
    """The contract metrics (:data:`METRIC_NAMES`, with ``audit`` replaced by ``prefix``), each AUC
    and TPR with its ``.lo``, ``.hi``, ``.n_members`` and ``.n_nonmembers``
    (:meth:`Estimate.as_metrics`).

    With fewer than :data:`~mlflow_amnesia.audit.metrics.MIN_PER_CLASS` targets or non-members
    none of them is returned (an "AUC" over three records is their percentile, not an AUC): the
    audit reports the per-record statistics instead (:func:`per_record`). ``{prefix}.n_targets``
    and ``{prefix}.n_nonmembers`` are always returned. ``min_per_class`` lowers that floor for an
    analysis that knows what it does (the paper's examples pool per-request figures); the audit never does.
    """
    est = membership_estimates(targets, nonmembers, prefix=prefix)
    n_t, n_n = len(targets.positions), len(nonmembers.positions)
    out = {f"{prefix}.n_targets": float(n_t), f"{prefix}.n_nonmembers": float(n_n)}
    if n_t < min_per_class or n_n < min_per_class:
        return out
    labels = np.r_[np.ones(n_t, bool), np.zeros(n_n, bool)]
    mia = np.r_[targets.mia, nonmembers.mia]
    for name in METRIC_NAMES:
        full = name.replace("audit.", f"{prefix}.", 1)
        if full in est:
            out.update(est[full].as_metrics(full))
        elif name.endswith(".recall"):  # the paper's metric: kept for the paper comparison only
            out[full] = float(recall(mia > threshold, labels))
        elif name.endswith(".precision"):
            out[full] = float(precision(mia > threshold, labels))
    return out


def per_record(scores: MembershipScores) -> list[dict[str, float | None]]:
    """Per audited record, in order: its LiRA score (``lira_log_lr`` for the online test: the log
    likelihood ratio IN vs OUT; None for the offline one), the one-sided p-value of its confidence
    against its OUT shadows (``p_out``), its logit-scaled confidence ``phi``, and the paper's
    attack's member probability ``mia``. What the audit reports where too few records make an AUC."""
    online = scores.lira_variant == "online"
    p_out = scores.p_out if scores.p_out is not None else np.full(len(scores.positions), np.nan)
    return [
        {
            "lira_log_lr": float(scores.lira[i]) if online else None,
            "lira_z_out": None if online else float(scores.lira[i]),
            "p_out": float(p_out[i]),
            "phi": float(scores.phi[i]),
            "mia": float(scores.mia[i]),
        }
        for i in range(len(scores.positions))
    ]


def membership_audit(
    target_module: nn.Module,
    records: Records,
    shadows: ShadowSet,
    attack: AttackModels,
    *,
    targets_idx: Sequence[int] | np.ndarray,
    nonmembers_idx: Sequence[int] | np.ndarray,
    lira: LiraVariant = "auto",
    threshold: float = 0.5,
    prefix: str = "audit",
    device: str | torch.device = "cpu",
    min_per_class: int = MIN_PER_CLASS,
) -> dict[str, float]:
    """Attack ``target_module``: targets (labelled member) against held-out non-members.

    Returns exactly :data:`METRIC_NAMES` (``audit.mia.auc`` ...; another ``prefix`` renames the
    first component, e.g. ``audit.retain`` for a control audit of retained members).
    """
    t = np.asarray(targets_idx, dtype=np.int64)
    n = np.asarray(nonmembers_idx, dtype=np.int64)
    if len(t) == 0 or len(n) == 0:
        raise InputError(f"a membership audit needs target records and non-members; got {len(t)} and {len(n)}.")
    both = np.intersect1d(t, n)
    if len(both):
        raise InputError(
            f"{len(both)} record(s) are both targets and non-members (e.g. {records.ids[both[0]]!r}); "
            "non-members must be held-out records the model never trained on."
        )
    s = score_records(target_module, records, shadows, attack, np.r_[t, n], lira=lira, device=device)
    return membership_metrics(s.take(t), s.take(n), threshold=threshold, prefix=prefix, min_per_class=min_per_class)
