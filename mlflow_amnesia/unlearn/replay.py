"""``--repair replay`` after amnesiac rollback: re-run only the rolled-back steps, each on its
own batch minus the forgotten records, at the current (rolled-back) weights.

Where a batch comes from, most exact first:

1. the phase's recorded batch order (``<base>/training/batch_order.npy``, one row of record
   positions per epoch, written by ``train``, ``finetune``/``--repair finetune`` and ``retrain``)
   cut into the recipe's batch size: the exact positions *in the order they were fed*. It is
   used only when it describes the segment (epochs x batches per epoch = its step count), and
   every replayed batch is checked against the record index (same set of keyed hashes), so a
   stale or foreign order file is an error, never a silent wrong replay;
2. otherwise (``relabel`` and ``replay`` phases, or a purged order file) the record index's
   step -> records mapping: the exact set of records, fed in position order (the order inside
   a batch changes only the floating-point summation order).

Every forgotten record (this request and all earlier ones along the lineage) is removed from
each batch; a batch left empty is skipped. The steps use a fresh SGD from the recipe (momentum
starts from zero: the rolled-back steps' momentum is not part of the current weights) and are
recorded as a new segment numbered from ``ctx.next_step``, so they can be rolled back later too.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..keys import hash_keys
from ..progress import info as say
from ..recording.phase import BATCH_ORDER, Segment
from ..version.model import AmnesiaModel
from .base import ForgetContext
from .common import TrainingData


@dataclass
class ReplayPlan:
    """The batches a replay feeds, in step order."""

    steps: list[int] = field(default_factory=list)  # the rolled-back steps replayed (non-empty batches)
    batches: list[np.ndarray] = field(default_factory=list)  # positions fed at each of those steps
    skipped: list[int] = field(default_factory=list)  # rolled-back steps whose batch held only forgotten records
    sources: dict[str, str] = field(default_factory=dict)  # segment role -> "batch order" | "record index"


class _TrainHashes:
    """Keyed hashes of the training records, by position and searchable (hashed once, lazily)."""

    def __init__(self, data: TrainingData, key: bytes) -> None:
        from ..keys import hash_ids, hash_keys

        train = np.asarray(data.split.train, np.int64)
        h = hash_keys(hash_ids([data.records.ids[i] for i in train], key))
        self.by_position = np.zeros(len(data.records), dtype=h.dtype)
        self.by_position[train] = h
        order = np.argsort(h)
        self._sorted, self._positions = h[order], train[order]

    def positions(self, q: np.ndarray, step: int, role: str) -> np.ndarray:
        """Sorted positions of the records with keyed hashes ``q`` (:func:`~mlflow_amnesia.keys.hash_keys`)."""
        i = np.searchsorted(self._sorted, q)
        ok = (i < len(self._sorted)) & (self._sorted[np.minimum(i, len(self._sorted) - 1)] == q)
        if not ok.all():
            raise InputError(
                f"step {step} of the {role} segment fed {int((~ok).sum())} record(s) that are not training records of "
                "the rebuilt data set: the data changed since training, so the step cannot be replayed. "
                "Use --repair finetune or --repair none."
            )
        return np.sort(self._positions[i])


def _recorded_order(seg: Segment, batch_size: int, key: bytes) -> np.ndarray | None:
    """The segment's batch order (sealed under ``key``, or in clear from an older version) when it
    has one that describes exactly its steps, else None."""
    if seg.phase is None:  # a store put elsewhere by hand: no training files of ours
        return None
    try:  # a phase with a sealed store sealed its order too: one in clear there is refused
        order = seg.phase.load_batch_order(key=key, sealed=seg.open_store().encrypted)
    except InputError:
        return None
    if order.ndim != 2 or order.shape[1] == 0:
        return None
    if order.shape[0] * math.ceil(order.shape[1] / batch_size) != seg.n_steps:
        return None
    return order.astype(np.int64)


def plan_replay(model: AmnesiaModel, steps: np.ndarray, data: TrainingData, key: bytes) -> ReplayPlan:
    """The batches of ``steps`` (rolled back now) minus every excluded record; reads no delta chunk."""
    steps = np.unique(np.asarray(steps, np.int64))
    bs = data.recipe.batch_size
    hashes = _TrainHashes(data, key)
    plan = ReplayPlan()
    found: dict[int, np.ndarray] = {}
    for seg in model.segments:
        mine = steps[seg.holds(steps)]
        if not len(mine):
            continue
        idx = seg.open_index(key)
        order = _recorded_order(seg, bs, key)
        plan.sources[seg.role] = "batch order" if order is not None else "record index"
        per_epoch = math.ceil(order.shape[1] / bs) if order is not None else 0
        for s in mine.tolist():
            want = hash_keys(idx.records_in_step(s))
            if order is not None:
                epoch, b = divmod(s - seg.first_step, per_epoch)
                batch = order[epoch, b * bs : (b + 1) * bs]
                fed = np.unique(hashes.by_position[batch])
                if len(fed) != len(want) or not np.array_equal(np.sort(fed), np.sort(want)):
                    raise InputError(
                        f"the recorded batch order {seg.phase.file_url(BATCH_ORDER) if seg.phase else '?'} does not match the record "
                        f"index at step {s} of the {seg.role} segment: the file is not this phase's order. Restore "
                        "it, or remove it so that replay falls back to the record index."
                    )
            else:
                batch = hashes.positions(want, s, seg.role)
            found[s] = batch
    missing = sorted(set(steps.tolist()) - set(found))
    if missing:
        raise InputError(
            f"steps {missing[:20]} are not recorded in any segment of this model version: they cannot be replayed"
        )
    for s in sorted(found):
        kept = found[s][~np.isin(found[s], data.excluded)]
        if len(kept):
            plan.steps.append(s)
            plan.batches.append(kept)
        else:
            plan.skipped.append(s)
    return plan


def replay(
    ctx: ForgetContext, data: TrainingData, plan: ReplayPlan, *, lr: float | None = None, role: str = "replay"
) -> tuple[Segment | None, float]:
    """Run one recorded SGD step per batch of ``plan`` on ``ctx.model.module``; (segment, seconds).

    Returns (None, 0.0) when every batch was left empty (nothing to replay).
    """
    from ..learning.training import make_optimizer, record_phase

    if not plan.batches:
        say(f"{role}: every rolled-back batch held only forgotten records; nothing to replay")
        return None, 0.0
    recipe = data.recipe
    if lr:
        recipe = type(recipe).from_dict({**recipe.to_dict(), "lr": float(lr)})
    optimizer = make_optimizer(ctx.model.module, recipe)
    say(
        f"{role}: re-running {len(plan.batches)} rolled-back step(s) without the forgotten records "
        f"({len(plan.skipped)} left empty, skipped)"
    )
    t0 = time.monotonic()
    # One row per batch, each no longer than batch_size: every row becomes exactly one step.
    seg = record_phase(
        ctx.model.module,
        optimizer,
        data.records.x,
        data.records.y,
        list(data.records.ids),
        plan.batches,
        batch_size=max(len(b) for b in plan.batches),
        base_url=ctx.phase_base(),
        codec=ctx.model.info.phase_codec,
        role=role,
        key=ctx.key,
        run_id=ctx.run_id,
        first_step=ctx.next_step,
    )
    return seg, time.monotonic() - t0
