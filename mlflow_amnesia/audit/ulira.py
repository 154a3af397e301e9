"""U-LiRA: can a model that *unlearned* a record be told from models that never trained on it?

Hayes, Shumailov, Triantafillou, Khalifa, Papernot (2024), "Inexact unlearning needs more
careful evaluations to avoid a false sense of privacy". A membership test of a forget asks the
wrong question when it compares the unlearned model with held-out records in general: what an
exact unlearning must give is a model *distributed like one retrained without the record*. So,
per record, U-LiRA fits two Gaussians to the shadows' logit-scaled confidence
``phi = log(p_y / (1 - p_y))`` (:func:`mlflow_amnesia.audit.shadow.logit_confidence`):

* **IN-unlearned**: the shadows that trained on the record, after unlearning it *by the
  request's method* (:func:`unlearn_member`; with a recorded pool amnesiac is one subtraction
  of the recorded deltas of the steps that saw it, another method costs that method's run);
* **OUT**: the shadows that never trained on it (models retrained without it, in distribution);

and scores a model by the likelihood ratio ``log N(phi; IN-unlearned) - log N(phi; OUT)``.

Figures (:class:`ULiraResult`, metric names from :meth:`ULiraResult.metrics`):

``audit.ulira.auc``
    The test itself, on the pool (Hayes et al.'s evaluation): every shadow in turn plays the
    deployed model, scored with Gaussians fitted on the other shadows (leave one out). Members:
    (unlearned shadow, record) pairs; non-members: (OUT shadow, record) pairs, over the request's
    records. 0.5: the method's result cannot be told from a retrained model on these records;
    1: it always can. An exact retrain gives 0.5 up to noise.
``audit.ulira.deployed.auc``
    The deployed version itself: its score on each forgotten record (members) against the OUT
    shadows' leave-one-out scores on the same records. Reportable from
    :data:`~mlflow_amnesia.audit.metrics.MIN_PER_CLASS` forgotten records up.
``per_record``
    For each forgotten record, by keyed hash (never its id): the deployed version's ``phi``, its
    score and its two-sided p-value against the OUT Gaussian.
``audit.dualview.*``
    The difference attack of :mod:`.dualview`, from the same shadow pairs.

Variances: per record with at least :data:`~mlflow_amnesia.audit.membership.PER_RECORD_VARIANCE_MIN`
shadows on a side, else one standard deviation per side pooled over the records (Carlini et al.'s
fixed variance), as LiRA does. The DeLong interval treats the pairs as independent; the pairs of
one record share its Gaussians, so the interval is somewhat optimistic for few records. Leave-one-out
AUC is biased downward with few shadows a side (the held-out shadow's own side is fitted on one
model fewer): an exact retrain measured 0.432 [0.369, 0.495] on 20 records with 16 shadows
(docs/BENCHMARKS.md, "U-LiRA"), so compare a method with the retrain reference, not with 0.5.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..keys import hash_ids
from ..learning.data import Records
from ..learning.models import build_model
from ..learning.training import Recipe, make_optimizer, run_epochs
from .metrics import Estimate, auc_estimate
from .shadow import (
    ShadowSet,
    _member_orders,
    logit_confidence,
    member_seed,
    open_member_recording,
    predict_logits,
)

__all__ = ["METHODS", "ULiraResult", "UnlearnSpec", "ulira_audit", "ulira_scores", "unlearn_member"]

#: The methods a shadow can be unlearned by (those of ``forget --method``).
METHODS = ("amnesiac", "relabel", "finetune", "retrain")
_SEED_SALT = 104729


@dataclass(frozen=True)
class UnlearnSpec:
    """How the request unlearned: its method and the options that method reads."""

    method: str = "amnesiac"
    repair: str | None = None  # amnesiac: none | finetune (replay is run as finetune, see unlearn_member)
    repair_epochs: int = 1
    epochs: int | None = None  # relabel, finetune (default 1); retrain: the recipe's
    copies: int = 4  # relabel

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> UnlearnSpec:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d and d[k] is not None})

    @classmethod
    def from_params(cls, params: Mapping[str, str], *, method: str | None = None) -> UnlearnSpec:
        """The spec of a forget from its run's parameters (strings; "" or "None" for unset), as
        ``forget`` logs them; ``method`` where the run names none."""
        casts = {"method": str, "repair": str, "repair_epochs": int, "epochs": int, "copies": int}
        got = {k: cast(params[k]) for k, cast in casts.items() if params.get(k) not in (None, "", "None")}
        return cls.of({"method": method, **got})

    def check(self) -> UnlearnSpec:
        if self.method not in METHODS:
            raise InputError(f"U-LiRA cannot unlearn shadows by method {self.method!r}: it knows {', '.join(METHODS)}.")
        return self


def _float_names(state: Mapping[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items() if torch.is_floating_point(v)]


def _train(module: nn.Module, recipe: Recipe, x, y, orders, *, targets=None, label: str) -> None:
    import os

    quiet = os.environ.get("MLFLOW_AMNESIA_QUIET")
    os.environ["MLFLOW_AMNESIA_QUIET"] = "1"
    try:
        run_epochs(
            module,
            make_optimizer(module, recipe),
            x,
            y,
            orders,
            batch_size=recipe.batch_size,
            targets=targets,
            label=label,
        )
    finally:
        if quiet is None:
            os.environ.pop("MLFLOW_AMNESIA_QUIET", None)
        else:
            os.environ["MLFLOW_AMNESIA_QUIET"] = quiet


def _orders(positions: np.ndarray, seed: int, epochs: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(positions) for _ in range(epochs)]) if epochs > 0 else np.zeros((0, 0), np.int64)


def unlearn_member(
    shadows: ShadowSet,
    i: int,
    targets: np.ndarray,
    spec: UnlearnSpec,
    records: Records,
    *,
    key: bytes | None,
) -> nn.Module:
    """Shadow ``i`` after unlearning ``targets`` (record positions it trained on) by ``spec``.

    * ``amnesiac``: its final weights minus the recorded deltas of every step whose batch held a
      target (one :meth:`DeltaStore.sum`; BatchNorm running statistics decayed by
      ``(1 - momentum) ** k`` for the ``k`` later steps that stay, as ``forget`` does), then, with
      ``repair="finetune"`` (or ``replay``, run here as a finetune of the same length),
      ``repair_epochs`` of training on its retained records. Needs a recorded pool and the key.
    * ``finetune``: ``epochs`` (default 1) more epochs on its retained records.
    * ``relabel``: the targets replaced by ``copies`` copies each with a random wrong label,
      ``epochs`` (default 1) on the retained records plus the copies.
    * ``retrain``: the member's own training rerun from its initial weights with its own
      (keyed) batch orders less the targets: exactly what ``forget --method retrain`` does.

    Training methods use a fresh SGD of the pool's recipe and seeds derived from the member.
    """
    spec.check()
    rec = Recipe.from_dict(shadows.recipe)
    trained = shadows.pool[shadows.membership[i]]
    t = np.intersect1d(np.asarray(targets, np.int64), trained)
    retained = np.setdiff1d(trained, t)
    seed = member_seed(shadows.seed, i) + _SEED_SALT
    if spec.method == "retrain":
        if shadows.recording is not None and key is None:
            raise InputError("U-LiRA with retrain needs the record key: the pool's batch orders are keyed with it.")
        s = member_seed(shadows.seed, i)
        model = build_model(shadows.arch_spec, seed=s)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            epochs = int(spec.epochs or rec.epochs)
            if epochs != rec.epochs:
                rec = Recipe.from_dict({**rec.to_dict(), "epochs": epochs})
            full = _member_orders(
                shadows.pool, shadows.membership[i], s, rec.epochs, key if shadows.recording else None
            )
            orders = [o[~np.isin(o, t)] for o in full]
            _train(model, rec, records.x, records.y, orders, label=f"shadow {i} retrain")
        return model
    model = build_model(shadows.arch_spec)
    model.load_state_dict(shadows.states[i], strict=True)
    if spec.method == "amnesiac":
        if shadows.recording is None or not shadows.member_dirs:
            raise InputError("U-LiRA with amnesiac needs a recorded shadow pool (audit settings ulira=True).")
        if key is None:
            raise InputError("U-LiRA with amnesiac needs the record key the pool was recorded under.")
        if len(t):
            store, index = open_member_recording(shadows.member_dirs[i], key)
            steps = index.steps_for([records.ids[p] for p in t])
            sums = _rollback_sums(model, store, steps)
            state = model.state_dict()
            with torch.no_grad():
                for name in _float_names(state):
                    if name in sums:
                        d = torch.from_numpy(np.asarray(sums[name])).reshape(state[name].shape)
                        state[name].sub_(d.to(state[name].dtype))
            model.load_state_dict(state)
        if (spec.repair or "none") in ("finetune", "replay") and spec.repair_epochs > 0:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                _train(model, rec, records.x, records.y, _orders(retained, seed, spec.repair_epochs), label="repair")
        return model
    epochs = int(spec.epochs or 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.method == "finetune":
            _train(model, rec, records.x, records.y, _orders(retained, seed, epochs), label="finetune")
        else:  # relabel
            rng = np.random.default_rng(seed)
            source = np.repeat(t, int(spec.copies))
            k = int(records.num_classes)
            true = records.y.numpy()[source].astype(np.int64)
            r = rng.integers(0, k - 1, size=len(source), dtype=np.int64)
            fake = r + (r >= true)
            n = len(records)
            x = _RowsView(records.x, np.concatenate([np.arange(n, dtype=np.int64), source]))
            y = torch.cat([records.y, torch.from_numpy(fake)])
            positions = np.concatenate([retained, n + np.arange(len(source), dtype=np.int64)])
            _train(model, rec, x, y, _orders(positions, seed, epochs), targets=y, label="relabel")
    return model


def _rollback_sums(model: nn.Module, store, steps: np.ndarray) -> dict[str, np.ndarray]:
    """What amnesiac subtracts from a shadow: the steps' deltas, BatchNorm statistics decayed."""
    momenta = {
        (f"{p}.{b}" if p else b): float(m.momentum)
        for p, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats and m.momentum is not None
        for b in ("running_mean", "running_var")
    }
    if not momenta:
        return store.sum(steps.tolist())
    last = max(store.steps) if store.steps else -1
    sums: dict[str, np.ndarray] = {}
    for t in steps.tolist():
        later = (last - int(t)) - int((steps > t).sum())  # steps after t that stay applied
        for name, arr in store.read(int(t)).items():
            a = arr.astype(np.float64) * ((1.0 - momenta[name]) ** later if name in momenta else 1.0)
            sums[name] = sums[name] + a if name in sums else a
    return sums


class _RowsView:
    def __init__(self, base: torch.Tensor, source: np.ndarray) -> None:
        self.base, self.source = base, source

    def __getitem__(self, positions: np.ndarray) -> torch.Tensor:
        return self.base[self.source[positions]]


def _fit(values: np.ndarray, mask: np.ndarray, pooled: float, per_record: bool) -> tuple[np.ndarray, np.ndarray]:
    n = mask.sum(0)
    mean = np.where(mask, values, 0.0).sum(0) / np.maximum(n, 1)
    if per_record:
        sd = np.sqrt(np.where(mask, (values - mean) ** 2, 0.0).sum(0) / np.maximum(n - 1, 1))
    else:
        sd = np.full(values.shape[1], pooled)
    return mean, np.maximum(sd, 1e-6)


def _pooled_sd(values: np.ndarray, mask: np.ndarray) -> float:
    n = mask.sum(0)
    mean = np.where(mask, values, 0.0).sum(0) / np.maximum(n, 1)
    ss = float(np.where(mask, (values - mean) ** 2, 0.0).sum())
    dof = int(np.maximum(n - 1, 0).sum())
    if dof:
        return max(math.sqrt(ss / dof), 1e-6)
    return max(float(values[mask].std()) if mask.any() else 1.0, 1e-6)


def _logpdf(x, mu, sd):
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd)


def ulira_scores(
    values: np.ndarray, unlearned: np.ndarray, *, per_record_variance: bool | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Leave-one-out U-LiRA scores on the pool, and the Gaussians fitted on every shadow.

    ``values`` (S, n): each shadow's ``phi`` on each record, *after* unlearning where it trained
    on the record; ``unlearned`` (S, n) bool: True where the shadow trained on the record and
    unlearned it (IN-unlearned), False where it never trained on it (OUT). Every record needs at
    least 2 shadows on each side. Returns ``(scores, mu_u, sd_u, mu_o, sd_o)``: ``scores`` (S, n)
    is shadow ``s``'s score on record ``j`` with the Gaussians fitted on the other shadows.
    """
    v = np.asarray(values, np.float64)
    u = np.asarray(unlearned, bool)
    if v.shape != u.shape or v.ndim != 2:
        raise ValueError(f"values {v.shape} and unlearned {u.shape} must be equal 2-D shapes")
    for side, m in (("IN-unlearned", u), ("OUT", ~u)):
        short = m.sum(0) < 2
        if short.any():
            raise InputError(
                f"{int(short.sum())} record(s) have fewer than 2 {side} shadows: U-LiRA needs a pool of at least "
                "4 shadows in which each record has 2 on each side (train more shadows)."
            )
    from .membership import PER_RECORD_VARIANCE_MIN

    if per_record_variance is None:
        per_record_variance = int(min(u.sum(0).min(), (~u).sum(0).min())) - 1 >= PER_RECORD_VARIANCE_MIN
    pu, po = _pooled_sd(v, u), _pooled_sd(v, ~u)
    mu_u, sd_u = _fit(v, u, pu, per_record_variance)
    mu_o, sd_o = _fit(v, ~u, po, per_record_variance)
    scores = np.empty_like(v)
    for s in range(v.shape[0]):
        keep = np.ones(v.shape[0], bool)
        keep[s] = False
        mu1, sd1 = _fit(v[keep], u[keep], pu, per_record_variance)
        mu0, sd0 = _fit(v[keep], ~u[keep], po, per_record_variance)
        scores[s] = _logpdf(v[s], mu1, sd1) - _logpdf(v[s], mu0, sd0)
    return scores, mu_u, sd_u, mu_o, sd_o


@dataclass
class ULiraResult:
    """What :func:`ulira_audit` measured (see the module doc)."""

    auc: Estimate
    deployed: Estimate | None
    per_record: list[dict[str, Any]]
    dualview: Estimate | None = None
    dualview_deployed: Estimate | None = None
    method: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def metrics(self, prefix: str = "audit") -> dict[str, float]:
        """``audit.ulira.auc`` (+ ``.lo/.hi/.n_members/.n_nonmembers``), ``audit.ulira.deployed.*``,
        ``audit.dualview.*``, ``audit.dualview.deployed.*``, ``audit.ulira.seconds``: each
        interval figure only when reportable (enough records per side)."""
        out: dict[str, float] = {}
        for name, est in (
            ("ulira", self.auc),
            ("ulira.deployed", self.deployed),
            ("dualview", self.dualview),
            ("dualview.deployed", self.dualview_deployed),
        ):
            if est is not None and est.reportable:
                out.update(est.as_metrics(f"{prefix}.{name}.auc"))
        if "seconds" in self.info:
            out[f"{prefix}.ulira.seconds"] = float(self.info["seconds"])
        return out


def ulira_audit(
    module: nn.Module,
    records: Records,
    shadows: ShadowSet,
    forget_idx: Sequence[int] | np.ndarray,
    spec: UnlearnSpec | Mapping[str, Any],
    *,
    key: bytes | None,
    parent: nn.Module | None = None,
    dualview_sample: int = 200,
    seed: int = 0,
) -> ULiraResult:
    """U-LiRA of the deployed ``module`` that unlearned ``forget_idx`` by ``spec`` (module doc).

    Every shadow that trained on some of the records unlearns them (its share of the request) by
    the same method; the others stay as they are. With ``parent`` (the version before the
    forget) the dual-view attack is run on the deployed pair too (:mod:`.dualview`).
    """
    from .dualview import dualview_from_pairs

    t0 = time.monotonic()
    sp = spec if isinstance(spec, UnlearnSpec) else UnlearnSpec.of(spec)
    sp.check()
    shadows.check_records(records)
    f = np.unique(np.asarray(forget_idx, np.int64))
    if len(f) == 0:
        raise InputError("U-LiRA needs the records the version forgot; this version forgot none.")
    slots = shadows.pool_slots(f)
    if (slots < 0).any():
        raise InputError(
            f"{int((slots < 0).sum())} forgotten record(s) are outside the shadows' pool: U-LiRA needs IN shadows."
        )
    S = shadows.n_shadows
    member = shadows.membership[:, slots]  # (S, n): trained on it
    values = shadows.phi[:, slots].astype(np.float64).copy()
    # the kept records of the dual view: a sample of pool records not in the request
    rest = np.setdiff1d(shadows.pool, f)
    rng = np.random.default_rng(seed)
    kept = np.sort(rng.choice(rest, size=min(int(dualview_sample), len(rest)), replace=False))
    kept_slots = shadows.pool_slots(kept)
    before_f, after_f = shadows.phi[:, slots].astype(np.float64), values
    before_k = shadows.phi[:, kept_slots].astype(np.float64)
    after_k = before_k.copy()
    changed = np.zeros(S, bool)
    for i in range(S):
        mine = f[member[i]]
        if not len(mine):
            continue
        m = unlearn_member(shadows, i, mine, sp, records, key=key)
        logits = predict_logits(m, records.x[np.r_[f, kept]])
        phi = logit_confidence(logits, records.y[np.r_[f, kept]])
        values[i, member[i]] = phi[: len(f)][member[i]]
        after_k[i] = phi[len(f) :]
        changed[i] = True
    scores, mu_u, sd_u, mu_o, sd_o = ulira_scores(values, member)
    auc = auc_estimate(scores.ravel(), member.ravel())
    # the deployed version on the same records
    module.eval()
    phi_d = logit_confidence(predict_logits(module, records.x[f]), records.y[f])
    score_d = _logpdf(phi_d, mu_u, sd_u) - _logpdf(phi_d, mu_o, sd_o)
    out_scores = scores[~member]
    deployed = auc_estimate(np.r_[score_d, out_scores], np.r_[np.ones(len(f), bool), np.zeros(len(out_scores), bool)])
    from statistics import NormalDist

    z = np.abs(phi_d - mu_o) / sd_o
    p_out = 2.0 * (1.0 - np.vectorize(NormalDist().cdf)(z)) if len(z) else z
    hashes = hash_ids([records.ids[p] for p in f], key) if key is not None else None
    per_record = [
        {
            "record": hashes[j].tobytes().hex() if hashes is not None else f"#{j}",
            "phi": float(phi_d[j]),
            "score": float(score_d[j]),
            "p_out": float(p_out[j]),
            "n_unlearned": int(member[:, j].sum()),
            "n_out": int((~member[:, j]).sum()),
        }
        for j in range(len(f))
    ]
    dv = dv_dep = None
    if changed.sum() >= 2:
        phi_pk = phi_ck = None
        if parent is not None:
            parent.eval()
            both = np.r_[f, kept]
            pp = logit_confidence(predict_logits(parent, records.x[both]), records.y[both])
            cc = logit_confidence(predict_logits(module, records.x[both]), records.y[both])
            phi_pk, phi_ck = (pp[: len(f)], pp[len(f) :]), (cc[: len(f)], cc[len(f) :])
        dv, dv_dep = dualview_from_pairs(
            before_f[changed] - after_f[changed],
            member[changed],
            before_k[changed] - after_k[changed],
            shadows.membership[:, kept_slots][changed],
            deployed=None if phi_pk is None or phi_ck is None else (phi_pk[0] - phi_ck[0], phi_pk[1] - phi_ck[1]),
        )
    return ULiraResult(
        auc=auc,
        deployed=deployed,
        per_record=per_record,
        dualview=dv,
        dualview_deployed=dv_dep,
        method=sp.method,
        info={"seconds": time.monotonic() - t0, "shadows_unlearned": int(changed.sum()), "records": len(f)},
    )


@dataclass
class UliraRequest:
    """What a forget's audit needs for U-LiRA: how it unlearned, the record key, the parent.

    ``result`` is filled by :func:`run_ulira` (the per-record scores go into an artifact)."""

    spec: UnlearnSpec
    key: bytes | None = None
    parent: nn.Module | None = None
    result: ULiraResult | None = None
    skipped: str = ""


def pool_record_key(setting: bool | None, request: UliraRequest | None, arch_spec, recipe, n_train: int, n: int):
    """The record key to record the shadow pool under, or None for an unrecorded pool.

    ``setting`` (``AuditSettings.ulira``): False never, True always, None when the pool stays
    under :data:`~mlflow_amnesia.audit.pool.RECORD_BUDGET_BYTES`. The key is the request's, else
    the record key if one exists (an audit never creates one)."""
    from ..errors import AmnesiaError
    from ..keys import load_key
    from .pool import record_by_default

    if setting is False or (setting is None and not record_by_default(arch_spec, recipe, n_train, n)):
        return None
    if request is not None and request.key is not None:
        return request.key
    try:
        return load_key(create=False)
    except AmnesiaError:
        return None


def run_ulira(module, records, shadows: ShadowSet, forget_idx, request: UliraRequest) -> dict[str, float]:
    """:func:`ulira_audit` as the forget's audit runs it: its metrics, or none (and why, said
    once on stderr and kept in ``request.skipped``) when the pool cannot answer."""
    from ..progress import info as say

    why = ""
    if shadows.recording is None and request.spec.method == "amnesiac":
        why = "the shadow pool is not recorded (AuditSettings.ulira, or a pool above the size budget)"
    elif request.spec.method not in METHODS:
        why = f"method {request.spec.method!r} has no shadow counterpart"
    elif shadows.n_shadows < 4:
        why = f"{shadows.n_shadows} shadows: U-LiRA needs at least 4 (2 IN and 2 OUT per record)"
    if why:
        request.skipped = why
        say(f"audit: U-LiRA not run: {why}")
        return {}
    res = ulira_audit(module, records, shadows, forget_idx, request.spec, key=request.key, parent=request.parent)
    request.result = res
    say(f"audit: U-LiRA ({res.method}) AUC {res.auc}; dual view {res.dualview}")
    return res.metrics()


def write_per_record(result: ULiraResult, path: str) -> str:
    """Write the per-record U-LiRA scores (records by keyed hash) and the figures as JSON; returns ``path``."""
    import json

    from ..recording.fs import write_local

    def est(e: Estimate | None):
        return None if e is None else {**e.__dict__, "reportable": e.reportable}

    doc = {
        "method": result.method,
        "ulira_auc": est(result.auc),
        "ulira_deployed_auc": est(result.deployed),
        "dualview_auc": est(result.dualview),
        "dualview_deployed_auc": est(result.dualview_deployed),
        "records": result.per_record,
        "info": result.info,
    }
    write_local(path, json.dumps(doc, indent=1, sort_keys=True).encode())
    return path
