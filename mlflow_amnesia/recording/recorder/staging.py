"""Handing each step's quantised deltas to the store without stalling the training thread.

CPU tensors go to ``store.append`` directly (:class:`DirectStaging`); device tensors are copied
into a small pool of pinned host buffers and handed over by a thread once the copy is done
(:class:`PooledStaging`). Either way the store is called in step order.
"""

from __future__ import annotations

import math
import queue
import threading
import weakref
from collections import deque
from collections.abc import Mapping
from typing import Any

import torch

from ...errors import AmnesiaError, InputError, StoreError
from .protocols import DeltaSink

__all__ = ["DirectStaging", "PooledStaging", "use_pooled_staging"]


class DirectStaging:
    """CPU tensors: the quantised deltas are fresh tensors; the store gets numpy views of them."""

    def __init__(self, store: DeltaSink) -> None:
        self._store = store

    def put(self, step: int, deltas: dict[str, torch.Tensor], meta: dict) -> None:
        self._store.append(step, {name: q.numpy() for name, q in deltas.items()}, meta=meta)

    def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


class PooledStaging:
    """Device tensors: copy into a pool of pinned host buffers, hand over once the copy is done.

    The training thread only enqueues the device-to-host copies (``non_blocking``) and records an
    event; a hand-off thread waits for the event (releasing the GIL) and calls ``store.append``
    in step order. A buffer goes back to the pool when the store has dropped every array that
    views it (a weakref finaliser on the per-step numpy array: views of views keep it alive).
    On CPU (tests) the copies are synchronous and there is no event.
    """

    def __init__(
        self,
        store: DeltaSink,
        shapes: Mapping[str, torch.Size],
        device: torch.device,
        n_buffers: int,
        *,
        pin: bool,
    ) -> None:
        if n_buffers < 1:
            raise InputError(f"pinned_buffers must be >= 1, got {n_buffers}")
        self._store = store
        self._device = device
        self._async = device.type == "cuda"  # pinned + event; other devices copy synchronously
        self._views: list[tuple[str, int, int, torch.Size]] = []
        off = 0
        for name, shape in shapes.items():
            n = math.prod(shape)
            self._views.append((name, off, n, shape))
            off += n
        self._buffers = [torch.empty(off, dtype=torch.float32, pin_memory=pin) for _ in range(n_buffers)]
        self._free: deque[int] = deque(range(n_buffers))
        self._cond = threading.Condition()
        self._queue: queue.Queue[tuple[int, int, Any, dict] | None] = queue.Queue()
        self._error: tuple[int, BaseException] | None = None
        self._thread = threading.Thread(target=self._run, name="mlflow-amnesia-recorder", daemon=True)
        self._thread.start()

    # training thread -------------------------------------------------------------------------

    def put(self, step: int, deltas: dict[str, torch.Tensor], meta: dict) -> None:
        self.raise_error()
        slot = self._acquire()
        buf = self._buffers[slot]
        for name, off, n, _shape in self._views:
            buf[off : off + n].copy_(deltas[name].reshape(-1), non_blocking=self._async)
        event = None
        if self._device.type == "cuda":
            event = torch.cuda.Event(blocking=True)  # the hand-off thread sleeps instead of spinning
            event.record(torch.cuda.current_stream(self._device))
        self._queue.put((step, slot, event, meta))

    def _acquire(self) -> int:
        with self._cond:
            while not self._free:
                if self._error is not None:
                    break
                self._cond.wait(timeout=1.0)
            if self._free:
                return self._free.popleft()
        self.raise_error()
        raise AssertionError("unreachable")  # pragma: no cover

    def drain(self) -> None:
        """Wait until every queued step has been handed to the store; raise its error if any."""
        self._queue.join()
        self.raise_error()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    @property
    def failed_step(self) -> int | None:
        """The step whose hand-off to the store failed, if one did."""
        return None if self._error is None else self._error[0]

    def raise_error(self) -> None:
        if self._error is not None:
            step, exc = self._error
            if isinstance(exc, AmnesiaError):
                raise exc
            raise StoreError(f"handing step {step} to the delta store failed: {exc!r}") from exc

    # hand-off thread -------------------------------------------------------------------------

    def _release(self, slot: int) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                step, slot, event, meta = item
                if self._error is not None:
                    self._release(slot)
                    continue
                try:
                    if event is not None:
                        event.synchronize()
                    base = self._buffers[slot].numpy()
                    weakref.finalize(base, self._release, slot)
                    arrays = {name: base[off : off + n].reshape(shape) for name, off, n, shape in self._views}
                    del base
                    self._store.append(step, arrays, meta=meta)
                    del arrays
                except BaseException as exc:  # surfaced in the training thread by the next call
                    with self._cond:
                        self._error = (step, exc)
                        self._cond.notify_all()
            finally:
                self._queue.task_done()


def use_pooled_staging(device: torch.device) -> bool:
    """Device tensors go through pinned host buffers; CPU tensors are handed over directly."""
    return device.type != "cpu"
