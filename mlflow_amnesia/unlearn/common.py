"""What the methods that train share: the version's training data, rebuilt from what the version
recorded (data spec, split, recipe), the records to leave out, and each phase's own order.

Every method that trains calls :func:`training_data` *before* it changes the model or writes a
store, so a version whose data cannot be rebuilt fails the forget with nothing changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..learning.training import Recipe
from .base import ForgetContext, MethodOptions

if TYPE_CHECKING:
    from ..learning.data import Records, Split

NO_DATA_HINT = (
    "Nothing was changed. Point --data-root at the copy of the data set the model was trained on, "
    "or use --method amnesiac without --repair, which needs no training data."
)


@dataclass
class TrainingData:
    """The training data of a version, with the records every later phase must leave out."""

    records: Records
    split: Split
    recipe: Recipe
    excluded: np.ndarray  # sorted positions of every record forgotten along the lineage, this request included
    target: np.ndarray  # sorted positions of this request's records

    @property
    def retained(self) -> np.ndarray:
        """Training positions minus every forgotten record (sorted int64)."""
        return np.setdiff1d(np.asarray(self.split.train, np.int64), self.excluded)


def training_data(ctx: ForgetContext, needed_by: str) -> TrainingData:
    """Rebuild the version's training data and locate the records to leave out.

    ``needed_by`` names the method or repair in the error raised when the data cannot be
    rebuilt (a missing or changed data set, a version that recorded no data spec).
    """
    from ..keys import hash_rows
    from ..learning.data import Split, forgotten_positions

    info = ctx.model.info
    missing = [k for k in ("dataset", "split", "recipe") if k not in info]
    if missing:
        raise InputError(
            f"{needed_by} trains on the model's training data, but this model version records no "
            f"{', '.join(missing)} (it was not trained by `mlflow-amnesia train`). {NO_DATA_HINT}"
        )
    try:
        records = ctx.load_records()
        sp = Split.from_json(info.split or {}, records)
    except InputError as e:
        raise InputError(
            f"{needed_by} trains on the model's training data, which cannot be rebuilt from what the version "
            f"recorded ({(info.dataset or {}).get('spec')!r}): {e} {NO_DATA_HINT}"
        ) from None
    every = np.concatenate([hash_rows(ctx.model.forgotten), hash_rows(ctx.target_hashes)])
    excluded = np.sort(forgotten_positions(records, sp.train, every, ctx.key))
    target = np.sort(forgotten_positions(records, sp.train, ctx.target_hashes, ctx.key))
    if len(target) != len(ctx.target_hashes):
        raise InputError(
            f"{len(ctx.target_hashes) - len(target)} of the {len(ctx.target_hashes)} record(s) to forget are not "
            f"training records of the rebuilt data set {(info.dataset or {}).get('spec')!r}: the data changed since "
            "training. " + NO_DATA_HINT
        )
    return TrainingData(records, sp, Recipe.from_dict(info.recipe or {}), excluded, target)


def phase_seed(recipe: Recipe, first_step: int) -> int:
    """The order seed of a phase that starts at ``first_step``: fresh per phase, reproducible."""
    return recipe.seed + 7919 * (first_step + 1)


@dataclass(frozen=True)
class EpochsOptions(MethodOptions):
    """Options of a method that trains for some epochs (finetune, retrain)."""

    epochs: int | None = None  # --epochs; None: the method's default


def epochs_option(ctx: ForgetContext, default: int) -> int:
    """``--epochs`` (None means the method's default), checked."""
    e = EpochsOptions.of(ctx.options).epochs
    epochs = default if e is None else int(e)
    if epochs < 1:
        raise InputError(f"--epochs must be >= 1, got {epochs}")
    return epochs
