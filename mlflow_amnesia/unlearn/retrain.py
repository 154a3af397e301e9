"""Retraining without the records: the reference every other method is judged against.

Training is replayed from what ``train`` kept at ``info["training_url"]``: the initial weights
(``initial_state.pt``) and the batch order (``batch_order.npy``, one row of record positions per
epoch), with the recipe exactly as recorded (same SGD, batch size, lr, seed). Every record
forgotten along the lineage (the parent's ``forgotten`` plus this request) is removed from each
epoch's order, which is then cut into batches of the recipe's size again: the batches before the
first removed record are the original ones, later ones shift by the records removed. With
nothing removed this reproduces the original model bit for bit (same process settings: CPU,
threads). Epochs beyond the recorded ones use :func:`mlflow_amnesia.learning.data.epoch_order`, as
``train`` would have.

The global torch RNG is re-seeded and advanced as ``train`` left it (seed, then one model build)
inside a forked RNG, so architectures with stochastic layers see the same random stream too.

The retrain is recorded (steps numbered from 0) and replaces the version's segments, so the
result can be forgotten from again by any method; its filtered order is kept beside its deltas.
Training files are sealed under the record key (:mod:`mlflow_amnesia.crypto`); files in clear of
versions trained before sealing are read as they are.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InputError, RecordKeyError, StoreError
from ..learning.training import Recipe
from ..progress import info as say
from ..recording.phase import BATCH_ORDER, INITIAL_STATE, Phase, Segment
from .base import ForgetContext, MethodResult, UnlearningMethod, register_method
from .common import EpochsOptions, epochs_option, training_data

_HINT = (
    "Nothing was changed. Restore the file from a backup of the training run's artifacts, or choose "
    "--method amnesiac, finetune or relabel, which do not need it."
)


@dataclass
class RetrainInputs:
    """Everything a retrain needs, loaded and checked before any weight changes."""

    arch: dict
    recipe: Recipe
    initial_state: dict[str, torch.Tensor]
    orders: np.ndarray  # (epochs, n_train - n_excluded): the recorded order minus the excluded records
    records: Any  # mlflow_amnesia.learning.data.Records
    n_excluded: int


def _load(url: str, what: str, loader):
    try:
        return loader(url)
    except InputError as e:  # missing (purged or moved) or damaged: the reason names the file
        raise InputError(f"--method retrain needs {url}, {what} recorded by `train`: {e} {_HINT}") from None
    except (RecordKeyError, StoreError):
        raise  # names the key ids (the file is fine), or the file and why it is refused
    except Exception as e:  # noqa: BLE001 - a damaged file: name it, do not guess
        raise InputError(f"--method retrain cannot read {url} ({what}): {type(e).__name__}: {e}. {_HINT}") from None


def load_retrain_inputs(
    info: Mapping[str, Any],
    arch: dict,
    records,
    split,
    excluded: np.ndarray,
    *,
    epochs: int | None = None,
    module: torch.nn.Module | None = None,
    key: bytes | None = None,
) -> RetrainInputs:
    """Load and check the initial weights and batch order of a version's training run.

    ``excluded``: positions never to feed. ``epochs`` defaults to the recipe's. With ``module``,
    the initial state must fit it (same tensor names and shapes). ``key``: the record key the
    files are sealed with (files in clear, from older versions, need none); epochs beyond the
    recorded ones follow the version's order scheme (``info["order"]``: keyed, or public before
    keyed orders). Raises InputError naming the missing or mismatching input; changes nothing.
    """
    from ..learning.data import ORDER_KEYED
    from ..learning.training import epoch_orders

    url = info.get("training_url")
    phase = Phase.of_training_url(url) if url else None
    if phase is None:
        raise InputError(
            "--method retrain needs the training state this model version would record at "
            f"training_url, but it records none (not trained by `mlflow-amnesia train`). {_HINT}"
        )
    recipe = Recipe.from_dict(info["recipe"])
    epochs = recipe.epochs if epochs is None else int(epochs)
    if epochs < 1:
        raise InputError(f"--epochs must be >= 1, got {epochs}")
    sealed = info.get("order") == ORDER_KEYED  # trained with sealed files: one in clear was replaced
    state = _load(
        phase.file_url(INITIAL_STATE), "the initial weights", lambda u: phase.load_initial_state(key=key, sealed=sealed)
    )
    recorded = _load(
        phase.file_url(BATCH_ORDER), "the batch order", lambda u: phase.load_batch_order(key=key, sealed=sealed)
    )
    if module is not None:
        have = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()} if isinstance(state, dict) else {}
        if have != got:
            raise InputError(
                f"{phase.file_url(INITIAL_STATE)} does not fit this model's architecture "
                f"({len(got)} tensors, the model has {len(have)}). {_HINT}"
            )
    train = np.asarray(split.train, np.int64)
    if (
        recorded.ndim != 2
        or recorded.shape[1] != len(train)
        or any(not np.array_equal(np.sort(row), train) for row in recorded)
    ):
        raise InputError(
            f"{phase.file_url(BATCH_ORDER)} (shape {recorded.shape}) is not an order of this version's "
            f"{len(train)} training records: it belongs to another run or the split changed. {_HINT}"
        )
    orders = recorded[:epochs].astype(np.int64)
    if epochs > len(recorded):
        keyed = info.get("order") == ORDER_KEYED
        if keyed and key is None:
            raise InputError("--method retrain needs the record key to extend the keyed batch order of this version")
        orders = np.concatenate(
            [
                orders,
                epoch_orders(
                    train, recipe.seed, epochs - len(recorded), first_epoch=len(recorded), key=key if keyed else None
                ),
            ]
        )
    excluded = np.asarray(excluded, np.int64)
    kept = ~np.isin(orders, excluded)
    n_kept = int(kept[0].sum())
    if n_kept == 0:
        raise InputError("--method retrain would train on no records: every training record is forgotten")
    orders = orders[kept].reshape(len(orders), n_kept)
    return RetrainInputs(arch, recipe, state, orders, records, int(len(train) - n_kept))


def retrain(
    module: torch.nn.Module,
    inputs: RetrainInputs,
    *,
    base_url: str,
    codec: str,
    key: bytes,
    run_id: str | None = None,
    role: str = "retrain",
    on_epoch=None,
) -> tuple[Segment, float]:
    """Reset ``module`` to the initial weights and train it on ``inputs.orders`` exactly as
    ``train`` did, every step recorded at ``base_url`` from step 0; (segment, loop seconds).
    ``on_epoch``: :func:`~mlflow_amnesia.learning.training.record_phase`'s per-epoch callback."""
    from ..learning.models import build_model
    from ..learning.training import make_optimizer, record_phase

    recipe, records = inputs.recipe, inputs.records
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)  # train: manual_seed(seed), then build_model (consumes the RNG)
        build_model(inputs.arch)
        module.load_state_dict(inputs.initial_state)
        optimizer = make_optimizer(module, recipe)
        say(
            f"retrain: {len(inputs.orders)} epoch(s) on {inputs.orders.shape[1]} records from the initial weights "
            f"({inputs.n_excluded} forgotten record(s) left out)"
        )
        t0 = time.monotonic()
        seg = record_phase(
            module,
            optimizer,
            records.x,
            records.y,
            list(records.ids),
            inputs.orders,
            batch_size=recipe.batch_size,
            base_url=base_url,
            codec=codec,
            role=role,
            key=key,
            run_id=run_id,
            first_step=0,
            on_epoch=on_epoch,
        )
        seconds = time.monotonic() - t0
    phase = Phase(base_url)
    phase.save_batch_order(inputs.orders, key=key)
    phase.save_optimizer_state(optimizer.state_dict(), key=key)
    return seg, seconds


@register_method
class Retrain(UnlearningMethod):
    """Train from the initial weights without every forgotten record (``--epochs``: as trained)."""

    name = "retrain"
    needs_data = True
    Options = EpochsOptions

    def apply(self, ctx: ForgetContext) -> MethodResult:
        recipe_epochs = int((ctx.model.info.recipe or {}).get("epochs", 1))
        epochs = epochs_option(ctx, recipe_epochs)
        data = training_data(ctx, "--method retrain")
        inputs = load_retrain_inputs(
            ctx.model.info,
            ctx.model.arch,
            data.records,
            data.split,
            data.excluded,
            epochs=epochs,
            module=ctx.model.module,
            key=ctx.key,
        )
        seg, seconds = retrain(
            ctx.model.module,
            inputs,
            base_url=ctx.phase_base(),
            codec=ctx.model.info.phase_codec,
            key=ctx.key,
            run_id=ctx.run_id,
            on_epoch=ctx.epoch_hook(),
        )
        return MethodResult(
            rolled_back=np.zeros(0, np.int64),
            replace_segments=[seg],
            metrics={"unlearn.seconds": seconds, "unlearn.steps": float(seg.n_steps)},
            summary=(
                f"retrained from the initial weights for {epochs} epoch(s) ({seg.n_steps} steps) on "
                f"{inputs.orders.shape[1]} records, leaving out the {inputs.n_excluded} forgotten along the lineage"
            ),
        )
