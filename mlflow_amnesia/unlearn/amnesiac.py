"""Amnesiac unlearning (Graves et al., AAAI 2021): subtract the recorded deltas of the steps
that saw the records, then optionally repair accuracy (fine-tune on the retained data, or
replay the rolled-back steps without the forgotten records).

The rollback reads only the chunks of the steps it subtracts (per segment, streamed by the
store with bounded memory) and computes everything before touching the model, so a damaged
chunk fails the forget with nothing changed.

BatchNorm running statistics are not parameters: they are exponential averages, so a step's
update to them has already decayed by ``(1 - momentum)`` at every later step. Removing step t's
update exactly (holding the later batches' statistics fixed, as the rollback of parameters does)
subtracts ``d_t * (1 - momentum) ** k_t``, where ``k_t`` counts the steps after t that stay
applied (not rolled back, now or before). Subtracting ``d_t`` in full over-corrects: on
ResNet18 it caused most of the accuracy loss of a 1-record rollback (docs/BENCHMARKS.md).
Steps whose factor is above :data:`BN_NEGLIGIBLE` are read one by one for this (at most ~150
with momentum 0.1), the rest stream through the store's sum; BatchNorm with ``momentum=None``
(a cumulative average) keeps the full subtraction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..version.model import AmnesiaModel
from .base import (
    REPAIRS,
    ForgetContext,
    MethodOptions,
    MethodResult,
    Repair,
    RepairResult,
    UnlearningMethod,
    check_repair,
    register_method,
)
from .common import training_data


def _by_segment(model: AmnesiaModel, steps: np.ndarray):
    """Yield (segment, its share of ``steps``); InputError for steps no segment recorded."""
    covered = np.zeros(len(steps), dtype=bool)
    for seg in model.segments:
        mask = seg.holds(steps)
        if mask.any():
            covered |= mask
            yield seg, steps[mask]
    if not covered.all():
        missing = steps[~covered][:20].tolist()
        raise InputError(f"steps {missing} are not recorded in any segment of this model version")


def rolled_back_sums(model: AmnesiaModel, steps: np.ndarray, key: bytes | None = None) -> dict[str, np.ndarray]:
    """sum(delta_t for t in steps) per tensor name (float64), across the version's segments.

    ``key``: the record key the segments' deltas are sealed with (stores in clear need none)."""
    from ..progress import Progress

    total: dict[str, np.ndarray] = {}
    for seg, mine in _by_segment(model, np.unique(np.asarray(steps, dtype=np.int64))):
        prog = Progress(f"rollback ({seg.role})", total=len(mine), unit="steps")
        sums = seg.open_store(key).sum(mine.tolist(), progress=prog)
        prog.close()
        for name, arr in sums.items():
            total[name] = total[name] + arr if name in total else arr
    return total


BN_NEGLIGIBLE = 1e-7  # below this decay factor a step's running-stat update is gone (0.9**153)


def batchnorm_momenta(module: torch.nn.Module) -> dict[str, float]:
    """State-dict name -> EMA momentum of every tracked BatchNorm running statistic."""
    out: dict[str, float] = {}
    for prefix, m in module.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats and m.momentum is not None:
            for buf in ("running_mean", "running_var"):
                out[f"{prefix}.{buf}" if prefix else buf] = float(m.momentum)
    return out


def live_after(model: AmnesiaModel, steps: np.ndarray) -> np.ndarray:
    """For each of ``steps`` (sorted): how many steps after it stay applied to the model once
    ``steps`` and every step rolled back before are subtracted."""
    recorded = [np.arange(s.first_step, s.last_step + 1, dtype=np.int64) for s in model.segments if s.n_steps]
    allsteps = np.unique(np.concatenate(recorded)) if recorded else np.zeros(0, np.int64)
    live = np.setdiff1d(allsteps, np.union1d(np.asarray(model.rolled_back, np.int64), steps))
    return len(live) - np.searchsorted(live, steps, side="right")


def rollback_sums(
    model: AmnesiaModel, steps: np.ndarray, key: bytes | None = None
) -> tuple[dict[str, np.ndarray], int]:
    """What the rollback subtracts, per tensor name (float64): each step's delta in full for
    parameters, decayed by ``(1 - momentum) ** k_t`` for BatchNorm running statistics (module
    docstring). Returns the sums and how many steps were read one by one.

    Steps whose running-statistic factor is still above :data:`BN_NEGLIGIBLE` are read one by one
    (once: parameters and statistics from the same read); the rest stream through the store's
    ``sum``, their running-statistic part dropped. A model without BatchNorm takes the plain
    ``sum`` path, so its rollback stays bitwise ``v - sum(deltas)``.
    """
    from ..progress import Progress

    steps = np.unique(np.asarray(steps, dtype=np.int64))
    momenta = batchnorm_momenta(model.module)
    if not momenta or not len(steps):
        return rolled_back_sums(model, steps, key), 0
    k = live_after(model, steps)
    near_mask = (1.0 - min(momenta.values())) ** k >= BN_NEGLIGIBLE  # the slowest-decaying statistic decides
    far, near = steps[~near_mask], steps[near_mask]
    sums = rolled_back_sums(model, far, key) if len(far) else {}
    for name in momenta:
        if name in sums:
            sums[name][...] = 0.0  # every far step's factor is below BN_NEGLIGIBLE
    later = dict(zip(steps.tolist(), k.tolist()))
    for seg, mine in _by_segment(model, near):
        store = seg.open_store(key)
        prog = Progress(f"rollback ({seg.role}, BatchNorm-decayed steps)", total=len(mine), unit="steps")
        for t in mine.tolist():
            for name, arr in store.read(int(t)).items():
                w = (1.0 - momenta[name]) ** later[t] if name in momenta else 1.0
                if w < BN_NEGLIGIBLE:
                    continue
                a = arr.astype(np.float64) * w  # w == 1.0 (a parameter) is exact
                sums[name] = sums[name] + a if name in sums else a
            prog.update()
        prog.close()
    return sums, len(near)


def subtract(module: torch.nn.Module, sums: dict[str, np.ndarray], n_steps: int) -> None:
    """module_state -= sums (in float64, cast back); BatchNorm step counters -= n_steps."""
    state = module.state_dict()
    with torch.no_grad():
        for name, t in state.items():
            if name in sums:
                new = t.detach().double().cpu().numpy() - sums[name].reshape(t.shape)
                t.copy_(torch.from_numpy(new).to(t.dtype))
            elif name.endswith("num_batches_tracked"):
                t.sub_(n_steps).clamp_(min=0)


@dataclass(frozen=True)
class AmnesiacOptions(MethodOptions):
    """``--repair`` (None: none), ``--repair-epochs`` (None: 1) and ``--repair-lr`` (None: the recipe's)."""

    repair: str | None = None
    repair_epochs: int | None = None
    repair_lr: float | None = None


class NoRepair(Repair):
    """``--repair none``: the rolled-back model as it is."""

    name = "none"
    needs_data = False

    def run(self, ctx: ForgetContext, data: Any, prepared: Any) -> RepairResult:
        return RepairResult()


class FinetuneRepair(Repair):
    """``--repair finetune``: train ``repair_epochs`` on the retained records (a new ``repair`` segment)."""

    name = "finetune"

    def check(self, ctx: ForgetContext) -> None:
        if _repair_epochs(ctx) < 1:
            raise InputError("--repair-epochs must be >= 1")

    def run(self, ctx: ForgetContext, data: Any, prepared: Any) -> RepairResult:
        from .finetune import finetune_retained

        epochs = _repair_epochs(ctx)
        seg, secs = finetune_retained(
            ctx, data, epochs=epochs, role="repair", lr=AmnesiacOptions.of(ctx.options).repair_lr
        )
        return RepairResult(
            [seg],
            {"repair.seconds": secs, "repair.steps": float(seg.n_steps)},
            f", then fine-tuned {epochs} epoch(s) on the retained records",
        )


class ReplayRepair(Repair):
    """``--repair replay``: re-run only the rolled-back steps on their batches minus the forgotten
    records (a new ``replay`` segment; see :mod:`.replay`), planned before the rollback."""

    name = "replay"

    def prepare(self, ctx: ForgetContext, data: Any) -> Any:
        from .replay import plan_replay

        return plan_replay(ctx.model, ctx.steps, data, ctx.key)

    def run(self, ctx: ForgetContext, data: Any, prepared: Any) -> RepairResult:
        from .replay import replay

        plan = prepared
        seg, secs = replay(ctx, data, plan, lr=AmnesiacOptions.of(ctx.options).repair_lr)
        ctx.epoch_done(1)  # the replay is one pass over the rolled-back batches
        return RepairResult(
            [seg] if seg is not None else [],
            {
                "repair.seconds": secs,
                "repair.steps": float(len(plan.batches)),
                "repair.skipped": float(len(plan.skipped)),
            },
            f", then replayed {len(plan.batches)} of them without the forgotten records "
            f"({len(plan.skipped)} left empty, skipped)",
        )


for _repair in (NoRepair(), FinetuneRepair(), ReplayRepair()):
    REPAIRS.register(_repair.name, _repair)


def _repair_epochs(ctx: ForgetContext) -> int:
    return int(AmnesiacOptions.of(ctx.options).repair_epochs or 1)


@register_method
class Amnesiac(UnlearningMethod):
    """Roll back the steps that saw the records, then optionally repair (:data:`REPAIRS`):

    * ``repair=finetune``: train ``repair_epochs`` on the retained records (a new ``repair`` segment);
    * ``repair=replay``: re-run only the rolled-back steps on their batches minus the forgotten
      records (a new ``replay`` segment; see :mod:`.replay`).

    Repair segments are recorded, so their steps can be rolled back by a later forget too. The
    data a repair needs is rebuilt and its batches planned *before* the rollback, so a version
    whose data is gone fails with nothing changed.
    """

    name = "amnesiac"
    needs_data = False
    rolls_back = True
    Options = AmnesiacOptions

    def apply(self, ctx: ForgetContext) -> MethodResult:
        name = check_repair(AmnesiacOptions.of(ctx.options).repair)
        repair = REPAIRS.get(name)
        repair.check(ctx)
        data = training_data(ctx, f"--repair {name}") if repair.needs_data else None
        prepared = repair.prepare(ctx, data)

        t0 = time.monotonic()
        sums, one_by_one = rollback_sums(ctx.model, ctx.steps, ctx.key)
        subtract(ctx.model.module, sums, len(ctx.steps))
        metrics = {
            "unlearn.seconds": time.monotonic() - t0,
            "unlearn.steps": float(len(ctx.steps)),
            "unlearn.steps_read_one_by_one": float(one_by_one),
        }
        ctx.epoch_done(0)
        done = repair.run(ctx, data, prepared)
        metrics.update(done.metrics)
        return MethodResult(
            rolled_back=np.asarray(ctx.steps, np.int64),
            new_segments=done.segments,
            metrics=metrics,
            summary=f"rolled back {len(ctx.steps)} steps" + done.summary,
        )
