"""Relabelling (the paper's "Unlearning", Graves et al., AAAI 2021): teach the model
that the forgotten records mean something else, then train briefly on the modified data.

* Records (``forget --records``): each is removed from the training data and ``--copies``
  (default 4) copies of it are inserted, each with a label drawn uniformly from the *incorrect*
  labels.
* A class (``forget --class C``): every training example of the class is relabelled once with a
  random incorrect label (one copy each, whatever ``--copies`` says).

The model then trains ``--epochs`` (default 1) on the modified data set (the retained records
with their true labels plus the relabelled copies), with a fresh SGD from the recipe; every step
is recorded as a new ``relabel`` segment. Its record index lists the forgotten records in the
steps that fed their wrong-label copies: it says what each step saw.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..progress import info as say
from .base import ForgetContext, MethodOptions, MethodResult, UnlearningMethod, register_method
from .common import epochs_option, phase_seed, training_data

DEFAULT_COPIES = 4
DEFAULT_EPOCHS = 1


def wrong_labels(true: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """For each true label, one drawn uniformly from the ``num_classes - 1`` other labels (int64)."""
    if num_classes < 2:
        raise InputError(f"relabelling needs at least 2 classes; this data set has {num_classes}")
    true = np.asarray(true, np.int64)
    r = rng.integers(0, num_classes - 1, size=len(true), dtype=np.int64)
    return r + (r >= true)


class _Rows:
    """Rows of ``base`` seen through a position map: ``rows[p] == base[source[p]]``.

    Lets the training loop address relabelled copies as positions of their own without copying
    the data set (only the images of a batch are gathered).
    """

    def __init__(self, base: torch.Tensor, source: np.ndarray) -> None:
        self.base = base
        self.source = np.asarray(source, np.int64)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, positions: np.ndarray) -> torch.Tensor:
        return self.base[self.source[positions]]


def copies_per_record(records, target: np.ndarray, copies: int, cls: str | int | None) -> np.ndarray:
    """How many relabelled copies each target record gets: ``copies``, or 1 for members of ``cls``."""
    from ..learning.data import class_records

    per = np.full(len(target), int(copies), np.int64)
    if cls is not None:
        c: int | str = int(cls) if str(cls).isdigit() else cls
        per[np.isin(target, class_records(records, c))] = 1
    return per


@dataclass(frozen=True)
class RelabelOptions(MethodOptions):
    """``--epochs`` (default 1), ``--copies`` (default 4) and the ``--class`` forgotten."""

    epochs: int | None = None
    copies: int | None = None
    cls: str | None = None


@register_method
class Relabel(UnlearningMethod):
    """Replace the records by copies with random incorrect labels, then train ``--epochs``."""

    name = "relabel"
    Options = RelabelOptions
    needs_data = True

    def apply(self, ctx: ForgetContext) -> MethodResult:
        from ..learning.training import epoch_orders, make_optimizer, record_phase

        epochs = epochs_option(ctx, DEFAULT_EPOCHS)
        opts = RelabelOptions.of(ctx.options)
        copies = int(opts.copies or DEFAULT_COPIES)
        if copies < 1:
            raise InputError(f"--copies must be >= 1, got {copies}")
        data = training_data(ctx, "--method relabel")
        records, recipe = data.records, data.recipe
        seed = phase_seed(recipe, ctx.next_step)

        per = copies_per_record(records, data.target, copies, opts.cls)
        source = np.repeat(data.target, per)  # the real position each copy shows
        y_true = records.y.numpy()
        fake = wrong_labels(y_true[source], records.num_classes, np.random.default_rng(seed))
        n = len(records)
        # Positions 0..n-1 are the data set as it is; n.. are the copies.
        x = _Rows(records.x, np.concatenate([np.arange(n, dtype=np.int64), source]))
        targets = torch.cat([records.y, torch.from_numpy(fake)])
        ids: Sequence[str] = list(records.ids) + [records.ids[p] for p in source]
        positions = np.concatenate([data.retained, n + np.arange(len(source), dtype=np.int64)])
        orders = epoch_orders(positions, seed, epochs, key=ctx.key)

        optimizer = make_optimizer(ctx.model.module, recipe)
        say(
            f"relabel: {epochs} epoch(s) on {len(data.retained)} retained records and {len(source)} relabelled "
            f"copies of the {len(data.target)} record(s) to forget"
        )
        t0 = time.monotonic()
        seg = record_phase(
            ctx.model.module,
            optimizer,
            x,
            targets,
            ids,
            orders,
            targets=targets,
            batch_size=recipe.batch_size,
            base_url=ctx.phase_base(),
            codec=ctx.model.info.phase_codec,
            role="relabel",
            key=ctx.key,
            run_id=ctx.run_id,
            first_step=ctx.next_step,
            on_epoch=ctx.epoch_hook(),
        )
        seconds = time.monotonic() - t0
        return MethodResult(
            rolled_back=np.zeros(0, np.int64),
            new_segments=[seg],
            metrics={
                "unlearn.seconds": seconds,
                "unlearn.steps": float(seg.n_steps),
                "relabel.copies": float(len(source)),
            },
            summary=(
                f"replaced the record(s) by {len(source)} copies with random incorrect labels and trained "
                f"{epochs} epoch(s) ({seg.n_steps} steps) on the modified data"
            ),
        )
