"""The training loop shared by `train`, repairs and (later) retraining methods.

One loop so that every phase that changes weights is recorded the same way: batches come from
an explicit per-epoch order of record positions (so a phase can be replayed exactly, or replayed
minus some records), and an optional Recorder captures each optimizer step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..progress import Progress


@dataclass
class Recipe:
    """Hyper-parameters of a training phase (recorded with every model version)."""

    epochs: int = 4
    batch_size: int = 128
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


def epoch_orders(
    positions: np.ndarray, seed: int, epochs: int, first_epoch: int = 0, *, key: bytes | None = None
) -> np.ndarray:
    """Per-epoch permutations of ``positions`` (record positions), shape (epochs, len(positions)).

    Recorded phases pass the record ``key``: their order then cannot be recomputed without it
    (:func:`mlflow_amnesia.learning.data.epoch_order`), so their record index links no hash to a record.
    """
    from .data import epoch_order

    positions = np.asarray(positions, dtype=np.int64)
    return (
        np.stack(
            [
                positions[np.asarray(epoch_order(len(positions), seed, e, key=key), dtype=np.int64)]
                for e in range(first_epoch, first_epoch + epochs)
            ]
        )
        if epochs > 0
        else np.zeros((0, len(positions)), np.int64)
    )


@dataclass
class EpochResult:
    epoch: int
    loss: float
    accuracy: float
    steps: int
    seconds: float


def run_epochs(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Any,  # indexable by an array of positions: a tensor, or a view of one (relabel's copies)
    y: torch.Tensor,
    orders: np.ndarray | Sequence[np.ndarray],  # one row of positions per epoch (rows may differ: replay)
    *,
    batch_size: int,
    ids: Sequence[str] | None = None,
    recorder=None,
    label: str = "train",
    on_epoch: Callable[[EpochResult], None] | None = None,
    first_epoch: int = 0,
    targets: torch.Tensor | None = None,
) -> list[EpochResult]:
    """Train over ``orders`` (one row of record positions per epoch) in batches of ``batch_size``.

    With a ``recorder``, each optimizer step is recorded with the ids of the batch's records
    (``ids[position]``). ``targets`` overrides ``y`` (relabelling methods pass modified labels).
    """
    labels = y if targets is None else targets
    results = []
    n_epochs = len(orders)
    steps_per_epoch = sum(math.ceil(len(o) / batch_size) for o in orders[:1]) or 1
    prog = Progress(label, total=n_epochs * steps_per_epoch, unit="steps")
    for e, order in enumerate(orders):
        model.train()
        t0 = time.monotonic()
        tot_loss, tot_correct, seen, steps = 0.0, 0, 0, 0
        order = np.asarray(order, dtype=np.int64)
        for i in range(0, len(order), batch_size):
            pos = order[i : i + batch_size]
            xb, yb = x[pos], labels[pos]
            optimizer.zero_grad(set_to_none=True)
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            loss.backward()
            optimizer.step()
            if recorder is not None:
                assert ids is not None, "a recorded loop needs the record ids"
                recorder.step([ids[p] for p in pos])
            steps += 1
            seen += len(pos)
            tot_loss += float(loss.detach()) * len(pos)
            tot_correct += int((out.argmax(1) == yb).sum())
            prog.update(loss=tot_loss / seen, acc=tot_correct / seen, epoch=first_epoch + e + 1)
        r = EpochResult(
            first_epoch + e, tot_loss / max(seen, 1), tot_correct / max(seen, 1), steps, time.monotonic() - t0
        )
        results.append(r)
        if on_epoch:
            on_epoch(r)
    prog.close()
    return results


#: Rows x pixels of a CPU inference batch: a forward pass without gradients is fastest when the
#: batch's activations stay in the caches (ResNet18's first blocks keep 64 float32 channels at the
#: input's resolution: 64 rows of 32x32 are 16 MiB). `python bench/inference_batch.py`: 768 CIFAR-
#: shaped images through the CIFAR ResNet18 in 4.4 s at 64 rows against 6.3 s at 512, while 8x8
#: digits stay fastest at 512.
CPU_BATCH_PIXELS = 65536


def inference_batch_size(x: torch.Tensor, device: str | torch.device | None = None) -> int:
    """Rows per forward pass when only predicting (:func:`evaluate`, logits, probabilities).

    512 on an accelerator (``device``, else ``x``'s) or for inputs without a spatial extent (fewer
    than 3 dimensions per row); on a CPU the largest power of two in [32, 512] with
    rows x height x width <= :data:`CPU_BATCH_PIXELS`: 512 for 8x8 images, 64 for 28x28 or 32x32.
    """
    dev = torch.device(device) if device is not None else x.device
    if dev.type != "cpu" or x.ndim < 4:
        return 512
    pixels = max(1, int(x.shape[-1]) * int(x.shape[-2]))
    return max(32, min(512, 1 << max(0, (CPU_BATCH_PIXELS // pixels).bit_length() - 1)))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy loss) of ``model`` on (x, y); (nan, nan) when empty.
    ``batch_size`` defaults to :func:`inference_batch_size`."""
    if len(x) == 0:
        return float("nan"), float("nan")
    batch_size = batch_size or inference_batch_size(x)
    model.eval()
    correct = 0
    loss = 0.0
    with torch.inference_mode():  # no autograd graph: a forward pass only
        for i in range(0, len(x), batch_size):
            out = model(x[i : i + batch_size])
            yb = y[i : i + batch_size]
            correct += int((out.argmax(1) == yb).sum())
            loss += float(F.cross_entropy(out, yb, reduction="sum"))
    return correct / len(x), loss / len(x)


def record_phase(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Any,
    y: torch.Tensor,
    ids: Sequence[str],
    orders: np.ndarray | Sequence[np.ndarray],
    *,
    batch_size: int,
    base_url: str,
    codec: str,
    role: str,
    key: bytes,
    run_id: str | None = None,
    first_step: int = 0,
    on_epoch: Callable[[EpochResult], None] | None = None,
    targets: torch.Tensor | None = None,
    label: str | None = None,
):
    """Run :func:`run_epochs` with every step recorded; return the phase as a version's Segment.

    The deltas go to the phase's store (``<base_url>/deltas``, :class:`~mlflow_amnesia.recording.phase.Phase`),
    sealed under ``key`` (the record key, which also hashes the batches' ids); steps are numbered
    from ``first_step`` so that all phases of a model version share one step numbering.
    """
    from ..recording.index import RecordIndexBuilder
    from ..recording.phase import Phase, Segment
    from ..recording.recorder import Recorder, optimizer_meta, state_layout
    from ..recording.store import DeltaStore

    phase = Phase(base_url)
    store_url = phase.deltas_url
    store = DeltaStore.create(
        store_url,
        layout=state_layout(model),
        codec=codec,
        meta={"optimizer": optimizer_meta(optimizer), "run_id": run_id, "role": role},
        key=key,
    )
    builder = RecordIndexBuilder(key)
    with Recorder(model, store, builder, optimizer=optimizer, start_step=first_step) as rec:
        run_epochs(
            model,
            optimizer,
            x,
            y,
            orders,
            batch_size=batch_size,
            ids=ids,
            recorder=rec,
            on_epoch=on_epoch,
            targets=targets,
            label=label or role,
        )
    store.close()
    steps = store.steps
    last = int(steps[-1]) if len(steps) else first_step - 1
    return Segment(
        role,
        store_url,
        first_step,
        last,
        manifest=store.manifest_bytes(),
        index=builder.build().to_bytes(),
        run_id=run_id,
        base_url=phase.base_url,
    )
