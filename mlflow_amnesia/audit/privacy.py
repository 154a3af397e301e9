"""The privacy audit of one model version, as `train`, `forget` and `audit` run it.

Membership inference (the paper's attack and LiRA, :mod:`.membership`) and model inversion
(:mod:`.inversion`), sharing one set of shadow models that is trained once per (data, arch,
recipe, count, seed) and cached behind a :class:`ShadowCache` (the MLflow layer's keeps each set
as a run of the experiment ``mlflow-amnesia-shadows``, tag ``amnesia.shadow_key``); later audits
download it and only run inference.

What is attacked:
- after a forget: the records this version forgot (``audit.mia.*``, ``audit.lira.*``: they
  should look like held-out non-members, AUC near 0.5), plus a sample of retained training
  records as a control (``audit.retain.mia.*`` ...: these should still look like members);
- a version that forgot nothing (version 1): a sample of its training records.
Non-members are always held-out records (those in the shadows' pool, :func:`audit_pool`).

Inversion (:class:`AuditSettings` ``inversion``, default ``auto``) runs where it says something:
a forget's audit inverts the classes of the forgotten records (up to 3) under the child and under
the parent (``audit.parent.inversion.*``, the same classes, seed and judges); a version that
forgot nothing is not inverted unless asked (``on``: its first 10 classes). The iteration count
is fitted to the image size (:func:`fitted_iterations`) and the step size to the count
(:func:`inversion_step`: as far in all as the paper's 1000 steps of 0.01).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..progress import info as say
from ..tags import TAG_SHADOW_KEY
from .verdict import parent_metric

if TYPE_CHECKING:
    from .membership import AttackModels
    from .shadow import ShadowSet

SHADOW_EXPERIMENT = "mlflow-amnesia-shadows"
SHADOW_TAG = TAG_SHADOW_KEY


INVERSION_MODES = ("auto", "on", "off")
SETTINGS_TAG = "amnesia.audit.settings"  # on the run an audit logged to: what it ran with (fingerprint)


INVERSION_TRAVEL = 10.0  # the paper's 1000 steps of 0.01 (RMS per pixel): how far an inversion may move an image


def fitted_iterations(input_shape) -> int:
    """Model-inversion steps fitted to the image size: the paper's 1000 for MNIST's 28x28 (and
    anything larger), scaled down with the pixel count to at least 100 (digits' 8x8: 100)."""
    h, w = (int(d) for d in list(input_shape)[-2:])
    return int(min(1000, max(100, round(1000 * h * w / 784))))


def inversion_step(iterations: int) -> float:
    """The step size of an inversion of ``iterations`` steps: every count moves an image as far as
    the paper's 1000 steps of 0.01 (:data:`INVERSION_TRAVEL`). Measured on digits' ResNet18
    (bench/inversion_iterations.py): 100 steps of 0.1 reach the judges' confidence of 1000 steps of
    0.01 in a tenth of the time; 100 steps of 0.01 stop short."""
    return INVERSION_TRAVEL / max(1, int(iterations))


#: ``acc.retain`` is measured on at most this many retained records, a seeded sample (the same for
#: a forget's child and its parent), its size logged as ``acc.retain.n``: on CIFAR-100's 50,000 a
#: full pass is most of a forget's time, and 5,000 records give the figure a standard error of at
#: most 0.007. Part of :meth:`AuditSettings.fingerprint`: another cap is another figure.
RETAIN_SAMPLE = 5000


@dataclass
class AuditSettings:
    shadows: int | None = None  # None: 4 for the embedded digits set, 16 (the paper's) otherwise
    shadow_seed: int = 0
    retain_sample: int = 200
    inversion_iterations: int | None = None  # None: fitted to the image size (fitted_iterations)
    process_every: int | None = None  # None: half the iterations (the paper: 500 of 1000)
    inversion_classes: int = 3  # at most this many classes of forgotten records
    # auto: invert where it says something, the classes of a forget's records (child and parent,
    # the same classes); a version that forgot nothing is not inverted. on: also such a version
    # (its first 10 classes). off: never.
    inversion: str = "auto"
    # U-LiRA (audit/ulira.py): record the shadow pool so forgets can be tested by unlearning the
    # shadows; None: record when the pool's deltas stay under audit.pool.RECORD_BUDGET_BYTES
    ulira: bool | None = None

    def __post_init__(self) -> None:
        if self.inversion not in INVERSION_MODES:
            raise ValueError(f"inversion must be one of {INVERSION_MODES}, got {self.inversion!r}")

    def n_shadows(self, dataset_spec: dict) -> int:
        if self.shadows is not None:
            return int(self.shadows)
        return 4 if str(dataset_spec.get("spec", "")) == "digits" else 16

    def iterations(self, input_shape) -> tuple[int, int]:
        """(iterations, process_every) of the inversion of images of ``input_shape``."""
        it = int(self.inversion_iterations) if self.inversion_iterations else fitted_iterations(input_shape)
        every = int(self.process_every) if self.process_every else max(1, it // 2)
        return it, min(every, it)

    def inverts(self, forgot: bool) -> bool:
        """Whether an audit inverts the model: of a forget (``forgot``) or of a version that forgot nothing."""
        return self.inversion == "on" or (self.inversion == "auto" and forgot)

    def fingerprint(
        self, dataset_spec: dict, input_shape, *, privacy: bool, forgot: bool, retained: bool = True
    ) -> str:
        """What an audit with these settings computes, as one JSON line (the run tag
        :data:`SETTINGS_TAG`): the same line means the same figures, so `audit` can show the
        logged ones instead of computing them again. ``retained=False``: accuracy without the
        retained records (a forget's ``--no-audit``), which an accuracy-only audit does not take
        for its own."""
        import json

        doc: dict = {"format": 1, "privacy": bool(privacy)}
        if not privacy and not retained:
            doc["retained"] = False
        else:
            doc["acc_retain_max"] = int(RETAIN_SAMPLE)
        if privacy:
            it, every = self.iterations(input_shape)
            inverts = self.inverts(forgot)
            doc.update(
                shadows=self.n_shadows(dataset_spec),
                shadow_seed=int(self.shadow_seed),
                retain_sample=int(self.retain_sample),
                inversion=[it, every, int(self.inversion_classes)] if inverts else None,
            )
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def audit_pool(split, seed: int, exclude=None) -> np.ndarray:
    """The records the shadows draw on: every training record plus as many held-out ones (all of
    them when there are fewer), so each shadow trains on about as many records as the target and
    every audited record has shadows that trained on it and shadows that did not (online LiRA).

    ``exclude``: positions no shadow may train on (the records of deletion requests in the erasure
    ledger); they are left out of the pool, and an audit of them uses the offline test."""
    train = np.asarray(split.train, np.int64)
    hold = np.asarray(split.holdout, np.int64)
    if len(hold) > len(train):
        hold = np.sort(np.random.default_rng(seed).choice(hold, size=len(train), replace=False))
    pool = np.union1d(train, hold)
    if exclude is not None and len(exclude):
        pool = np.setdiff1d(pool, np.asarray(exclude, np.int64))
    return pool


@dataclass(frozen=True)
class PoolExclusion:
    """What an audit's shadow pool must leave out: the positions of records under deletion
    requests and those requests' keyed hashes (kept with the pool, so ``requests`` can tell which
    cached shadow models never trained on a request's records)."""

    positions: np.ndarray
    requests: tuple[str, ...] = ()

    @staticmethod
    def none() -> PoolExclusion:
        return PoolExclusion(np.zeros(0, np.int64), ())


class ShadowCache(Protocol):
    """Where trained shadow models are kept between audits, by cache key (:func:`shadow_cache_key`).

    The audit library only asks for a key and hands over what it trained; where they live is the
    caller's: MLflow runs of the ``mlflow-amnesia-shadows`` experiment
    (:class:`mlflow_amnesia.mlflow.shadow_cache.MlflowShadowCache`, the default once the package
    is imported).
    """

    def load(self, key: str) -> tuple[ShadowSet, AttackModels, str] | None:
        """The shadows and attack models cached under ``key`` and where they were (a run id), or None.

        A cached set whose content does not match ``key`` is an :class:`InputError`, never used."""

    def save(self, key: str, shadows: ShadowSet, attack: AttackModels) -> str:
        """Keep ``shadows`` and ``attack`` under ``key``; returns where (a run id)."""


class NoShadowCache:
    """Keeps nothing: every audit trains its shadows anew."""

    def load(self, key: str) -> None:
        return None

    def save(self, key: str, shadows: ShadowSet, attack: AttackModels) -> str:
        return ""


_cache: ShadowCache = NoShadowCache()


def use_shadow_cache(cache: ShadowCache) -> None:
    """Make ``cache`` the one :func:`get_shadows` uses when it is given none."""
    global _cache
    _cache = cache


def get_shadows(
    records,
    split,
    arch_spec: dict,
    recipe: dict,
    n: int,
    seed: int,
    *,
    cache: ShadowCache | None = None,
    key=None,
    exclusion: PoolExclusion | None = None,
):
    """(ShadowSet, AttackModels, where they are cached): from ``cache`` (default: the one
    :func:`use_shadow_cache` set), else trained member by member and cached there
    (:func:`mlflow_amnesia.audit.pool.get_pool`; with ``key`` the pool is recorded, for U-LiRA;
    ``exclusion``: records the pool leaves out, :func:`audit_pool`)."""
    from .pool import get_pool

    store = cache if cache is not None else _cache
    ex = exclusion or PoolExclusion.none()
    return get_pool(
        records,
        audit_pool(split, seed, ex.positions),
        arch_spec,
        recipe,
        n,
        seed,
        cache=store,
        key=key,
        excluded_requests=ex.requests,
    )


PER_RECORD_ARTIFACT = "per_record.json"  # under the run's audit/: keyed hashes, never ids
PER_RECORD_FORMAT = 1


def privacy_audit(
    module,
    records,
    split,
    forget_idx: np.ndarray,
    forgotten_all_idx: np.ndarray,
    *,
    arch_spec: dict,
    recipe: dict,
    settings: AuditSettings | None = None,
    png_path: str | None = None,
    parent_module=None,
    record_hashes: list[str] | None = None,
    per_record_path: str | None = None,
    ulira=None,
    exclusion: PoolExclusion | None = None,
) -> dict[str, float]:
    """Membership-inference and inversion figures of ``module`` (see the module docstring).

    With ``parent_module`` (a forget's parent) the forgotten records are also scored under the
    parent, against the same non-members with the same shadow models (``audit.parent.*``): the
    matched comparison. With ``per_record_path`` the per-record statistics of the forgotten
    records (child and parent) are written there as JSON, each record named by its entry of
    ``record_hashes`` (hex keyed hashes aligned with ``forget_idx``; never record ids).
    ``ulira`` (a :class:`mlflow_amnesia.audit.ulira.UliraRequest`) adds U-LiRA and the dual view.
    ``exclusion``: records the shadow pool leaves out (:class:`PoolExclusion`)."""
    from .inversion import inversion_audit
    from .membership import membership_metrics, score_records
    from .ulira import pool_record_key

    s = settings or AuditSettings()
    n = s.n_shadows(records.spec)
    record_key = pool_record_key(s.ulira, ulira, arch_spec, recipe, len(split.train), n)
    ex = exclusion or PoolExclusion.none()
    shadows, attack, _ = get_shadows(records, split, arch_spec, recipe, n, s.shadow_seed, key=record_key, exclusion=ex)
    holdout = np.intersect1d(np.asarray(split.holdout, np.int64), audit_pool(split, s.shadow_seed, ex.positions))
    retained = np.setdiff1d(np.asarray(split.train, np.int64), np.asarray(forgotten_all_idx, np.int64))
    rng = np.random.default_rng(s.shadow_seed)
    sample = np.sort(rng.choice(retained, size=min(s.retain_sample, len(retained)), replace=False))
    forget_idx = np.asarray(forget_idx, np.int64)
    module.eval()
    metrics: dict[str, float] = {"audit.shadows": float(n)}
    if len(forget_idx):
        # one scoring call per model: the child's figures on forgotten and retained records share
        # the non-members' scores, and the parent's come from the same shadows and non-members
        scored = score_records(module, records, shadows, attack, np.r_[forget_idx, sample, holdout])
        child_t, child_n = scored.take(forget_idx), scored.take(holdout)
        metrics.update(membership_metrics(child_t, child_n))
        metrics.update(membership_metrics(scored.take(sample), child_n, prefix="audit.retain"))
        parent_t = None
        if parent_module is not None:
            parent_module.eval()
            p_scored = score_records(parent_module, records, shadows, attack, np.r_[forget_idx, holdout])
            parent_t = p_scored.take(forget_idx)
            metrics.update(membership_metrics(parent_t, p_scored.take(holdout), prefix="audit.parent"))
        if per_record_path:
            write_per_record(per_record_path, child_t, parent_t, record_hashes, n_nonmembers=len(holdout), shadows=n)
        # ---- U-LiRA and the dual view (audit/ulira.py, audit/dualview.py) ----
        if ulira is not None:
            from .ulira import run_ulira

            metrics.update(run_ulira(module, records, shadows, forget_idx, ulira))
        # ----
        ys = records.y.numpy()[forget_idx]
        vals, counts = np.unique(ys, return_counts=True)
        classes = [int(c) for c in vals[np.argsort(-counts, kind="stable")][: s.inversion_classes]]
    else:
        scored = score_records(module, records, shadows, attack, np.r_[sample, holdout])
        metrics.update(membership_metrics(scored.take(sample), scored.take(holdout)))
        classes = list(range(min(10, records.num_classes)))
    if not s.inverts(bool(len(forget_idx))):
        return metrics
    iterations, every = s.iterations(records.x.shape[1:])
    models: list[tuple[str | None, Any]] = [("audit", module)]
    if parent_module is not None and len(forget_idx):
        models.append((None, parent_module))  # the same classes, seed and judges: a matched figure
    for prefix, m in models:
        say(
            f"audit: inverting class(es) {classes} of the {'version' if prefix else 'parent'} ({iterations} iterations)"
        )
        inv = inversion_audit(
            m,
            records,
            classes,
            judges=shadows.modules(),
            reference_idx=holdout,
            iterations=iterations,
            process_every=every,
            lr=inversion_step(iterations),
            seed=s.shadow_seed,
        )
        if prefix:
            metrics.update(inv.metrics("audit"))
            if png_path:
                inv.save_png(png_path, records)
        else:
            metrics.update({parent_metric(k): v for k, v in inv.metrics("audit").items()})
    return metrics


def write_per_record(
    path: str, child, parent, record_hashes: list[str] | None, *, n_nonmembers: int, shadows: int
) -> None:
    """``audit/per_record.json``: per forgotten record, the child's and (when scored) the parent's
    LiRA statistics (:func:`mlflow_amnesia.audit.membership.per_record`), named by keyed hash."""
    import json

    from .membership import per_record

    names = record_hashes if record_hashes is not None else [f"#{i}" for i in range(len(child.positions))]
    if len(names) != len(child.positions):
        raise ValueError(f"{len(names)} record hashes for {len(child.positions)} audited records")
    kids = per_record(child)
    parents = per_record(parent) if parent is not None else [None] * len(kids)
    doc = {
        "format": PER_RECORD_FORMAT,
        "what": "per forgotten record (named by its keyed hash, never its id): LiRA log likelihood ratio "
        "(online) or z-score against the OUT shadows (offline), and p_out, the one-sided p-value of the "
        "model's confidence on the record against the OUT shadows' Gaussian (small = looks like a member)",
        "lira_variant": child.lira_variant,
        "n_nonmembers": int(n_nonmembers),
        "shadows": int(shadows),
        "records": [{"record": h, "child": c, "parent": p} for h, c, p in zip(names, kids, parents)],
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=True, allow_nan=False)
