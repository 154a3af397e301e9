"""Fine-tuning without the records (the paper's "naive retraining"): continue training the
current model on the retained training records, every step recorded as a new segment.

Also the ``--repair finetune`` of amnesiac rollback (same phase, role ``repair``).
"""

from __future__ import annotations

import time

import numpy as np

from ..progress import info as say
from ..recording.phase import Segment
from .base import ForgetContext, MethodResult, UnlearningMethod, register_method
from .common import EpochsOptions, TrainingData, epochs_option, phase_seed, training_data

DEFAULT_EPOCHS = 1


def finetune_retained(
    ctx: ForgetContext, data: TrainingData, *, epochs: int, role: str, lr: float | None = None
) -> tuple[Segment, float]:
    """Train ``ctx.model.module`` for ``epochs`` on ``data.retained`` (every forgotten record left
    out) with a fresh SGD from the recipe (``lr`` overrides its rate); every step is recorded at
    ``ctx.phase_base()`` from ``ctx.next_step`` on, and the phase's batch order (keyed, sealed) is
    kept beside its deltas (``training/batch_order.npy``) so a later replay can rebuild its batches.

    Returns the segment and the seconds the training loop took.
    """
    from ..learning.training import epoch_orders, make_optimizer, record_phase
    from ..recording.phase import Phase

    recipe = data.recipe
    if lr:
        recipe = type(recipe).from_dict({**recipe.to_dict(), "lr": float(lr)})
    retained = data.retained
    orders = epoch_orders(retained, phase_seed(recipe, ctx.next_step), epochs, key=ctx.key)
    optimizer = make_optimizer(ctx.model.module, recipe)
    say(f"{role}: {epochs} epoch(s) on {len(retained)} retained records")
    base = ctx.phase_base()
    t0 = time.monotonic()
    seg = record_phase(
        ctx.model.module,
        optimizer,
        data.records.x,
        data.records.y,
        list(data.records.ids),
        orders,
        batch_size=recipe.batch_size,
        base_url=base,
        codec=ctx.model.info.phase_codec,
        role=role,
        key=ctx.key,
        run_id=ctx.run_id,
        first_step=ctx.next_step,
        on_epoch=ctx.epoch_hook(),
    )
    seconds = time.monotonic() - t0
    Phase(base).save_batch_order(orders.astype(np.int64), key=ctx.key)
    return seg, seconds


@register_method
class Finetune(UnlearningMethod):
    """Continue training the current weights for ``--epochs`` (default 1) on the retained records."""

    name = "finetune"
    needs_data = True
    Options = EpochsOptions

    def apply(self, ctx: ForgetContext) -> MethodResult:
        epochs = epochs_option(ctx, DEFAULT_EPOCHS)
        data = training_data(ctx, "--method finetune")
        seg, seconds = finetune_retained(ctx, data, epochs=epochs, role="finetune")
        return MethodResult(
            rolled_back=np.zeros(0, np.int64),
            new_segments=[seg],
            metrics={"unlearn.seconds": seconds, "unlearn.steps": float(seg.n_steps)},
            summary=f"fine-tuned {epochs} epoch(s) ({seg.n_steps} steps) on the {len(data.retained)} retained records",
        )
