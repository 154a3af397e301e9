"""Handing each step's quantised deltas to the store without stalling the training thread.

CPU tensors go to ``store.append`` directly (:class:`DirectStaging`); device tensors are copied
into a small pool of pinned host buffers and handed over by a thread once the copy is done
(:class:`PooledStaging`). Either way the store is called in step order.

With a block codec the Recorder quantises into two flat buffers (every tensor's codes, every
tensor's block scales) and calls ``put_encoded``: the store gets one :class:`Encoded` payload
per tensor, views of those buffers (a quarter of float32's bytes for int8, an eighth for int4
to copy off the device).
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
from ..store.codecs import Encoded
from .protocols import DeltaSink

__all__ = ["DirectStaging", "EncodedLayout", "PooledStaging", "use_pooled_staging"]

#: Per tensor: (name, first code byte, code bytes, first scale, scales) in the flat buffers.
EncodedLayout = list[tuple[str, int, int, int, int]]


def _encoded_views(codes: Any, scales: Any, layout: EncodedLayout) -> dict[str, Encoded]:
    """One :class:`Encoded` per tensor: views of the flat numpy ``codes`` and ``scales``."""
    return {name: Encoded(codes[c0 : c0 + cn], scales[s0 : s0 + sn]) for name, c0, cn, s0, sn in layout}


class DirectStaging:
    """CPU tensors: the quantised deltas are fresh tensors; the store gets numpy views of them."""

    def __init__(self, store: DeltaSink, encoded: EncodedLayout | None = None) -> None:
        self._store = store
        self._encoded = encoded

    def put(self, step: int, deltas: dict[str, torch.Tensor], meta: dict) -> None:
        self._store.append(step, {name: q.numpy() for name, q in deltas.items()}, meta=meta)

    def put_encoded(self, step: int, codes: torch.Tensor, scales: torch.Tensor, meta: dict, slot: Any = None) -> None:
        """The flat CPU buffers' views, one payload per tensor (the store copies them). ``slot``: the
        store's reserved payload buffer ``codes`` views (``DeltaStore.reserve_payload``): only the
        scales are copied."""
        assert self._encoded is not None
        views = _encoded_views(codes.numpy(), scales.numpy(), self._encoded)
        if slot is None:
            self._store.append(step, views, meta=meta)
        else:
            self._store.append(step, views, meta=meta, slot=slot)  # type: ignore[call-arg]  # a DeltaStore (Recorder)

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
        encoded: EncodedLayout | None = None,
        code_dtype: torch.dtype = torch.int8,
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
        self._encoded = encoded
        if encoded is None:
            self._buffers = [torch.empty(off, dtype=torch.float32, pin_memory=pin) for _ in range(n_buffers)]
        else:  # codes and scales of every tensor, flat: one copy each off the device per step
            n_codes = max((c0 + cn for _, c0, cn, _, _ in encoded), default=0)
            n_scales = max((s0 + sn for _, _, _, s0, sn in encoded), default=0)
            self._buffers = [torch.empty(n_codes, dtype=code_dtype, pin_memory=pin) for _ in range(n_buffers)]
            self._scale_buffers = [torch.empty(n_scales, dtype=torch.float32, pin_memory=pin) for _ in range(n_buffers)]
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
        self._queue.put((step, slot, self._event(), meta))

    def put_encoded(self, step: int, codes: torch.Tensor, scales: torch.Tensor, meta: dict, slot: Any = None) -> None:
        """Copy the flat device buffers of codes and scales to a pinned pair, hand over when done.
        (``slot`` is always None: the codes come from the device into pinned buffers, not the store's.)"""
        assert slot is None
        self.raise_error()
        slot = self._acquire()
        self._buffers[slot].copy_(codes, non_blocking=self._async)
        self._scale_buffers[slot].copy_(scales, non_blocking=self._async)
        self._queue.put((step, slot, self._event(), meta))

    def _event(self) -> Any:
        if self._device.type != "cuda":
            return None
        event = torch.cuda.Event(blocking=True)  # the hand-off thread sleeps instead of spinning
        event.record(torch.cuda.current_stream(self._device))
        return event

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
                    arrays: dict[str, Any]
                    if self._encoded is None:
                        arrays = {name: base[off : off + n].reshape(shape) for name, off, n, shape in self._views}
                    else:  # the store copies the payloads in append; the codes' views hold the slot
                        arrays = _encoded_views(base, self._scale_buffers[slot].numpy(), self._encoded)
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
