"""The Recorder: record every optimizer step's state delta while the user's own loop trains.

The :class:`Recorder` wraps a training loop it does not own (the Opacus shape): the loop calls
``rec.step(ids)`` right after ``optimizer.step()`` with the record ids of the batch, or calls
``rec.set_batch(ids)`` before stepping once ``rec.attach(optimizer)`` has hooked the optimizer.
Each step it

1. computes ``theta_t - r_{t-1}`` for every floating-point tensor of ``model.state_dict()``
   (parameters *and* float buffers such as BatchNorm running statistics),
2. quantises it with the store's codec and keeps the *reconstructed* trajectory
   ``r_t = r_{t-1} + d_t`` (error feedback, below),
3. hands the quantised arrays and the step's hyper-parameters to ``store.append`` (which
   compresses and writes in background threads) and the batch's ids to the index builder.

Error feedback: the store can only ever give back the quantised deltas ``d_t``. Recording
``d_t = quantize(theta_t - r_{t-1})`` instead of ``quantize(theta_t - theta_{t-1})`` makes
``sum(d_t) = r_T - theta_0``, so rolling back every step returns ``theta_0 + (theta_T - r_T)``:
one step's quantisation error, not the sum of T of them. ``r`` is kept in float64 on the
model's device (8 bytes per recorded value): exact enough that float32 rounding of ``r`` never
shows, and simpler and no larger than a float32 value + float32 compensation pair.

Integer buffers (BatchNorm's ``num_batches_tracked``) are not deltas and are not recorded: the
number of recorded steps is known, so a rollback decrements them by the number of steps it rolls
back (one forward pass per optimizer step; it only matters for BatchNorm with ``momentum=None``).
Complex tensors are refused.

Distributed data parallel (``torch.distributed`` initialised, e.g. under ``torchrun``): every
rank builds a Recorder and calls ``rec.step(ids)`` with its *local* batch ids. Each rank hashes
its ids with the record key, the hashes are gathered to rank 0 over a CPU (gloo) group, and
rank 0 alone computes the delta, writes it and indexes the *global* batch; the other ranks keep
the step count in sync and hold no store, no index and no copy of the state. After DDP's
gradient all-reduce every rank holds the same parameters, so rank 0's delta is the global
step's. Float buffers are rank 0's (docs/ARCHITECTURE.md, "BatchNorm under DDP").

Encoded hand-off: with a block codec (``int8``, ``int4``) and a store that takes payloads
(``store.accepts_encoded``), one fused pass per tensor computes ``theta - r``, quantises it into
the codes and block scales (``codec.quantize_into``) and adds the reconstructed values to ``r``;
on CPU slice by slice, so each slice stays in cache, or, with numba and a model of at least a
million recorded values, in one compiled loop per tensor with the same arithmetic
(:func:`~mlflow_amnesia.recording.store.fused.encode_block_tensor`). The store gets the codes and scales
(:class:`~mlflow_amnesia.recording.store.codecs.Encoded`), not float32, and does not quantise
again; it stores the same bytes as the float path.

CUDA: deltas are computed and quantised on the device, copied with ``non_blocking=True`` into a
small pool of pinned host buffers, and a CUDA event recorded after the copies; a hand-off thread
waits for the event (off the training thread) before passing the buffers to ``store.append``.
A pinned buffer returns to the pool when the store has dropped every array viewing it. The
store is then called from that thread: leave it alone while recording (``rec.flush()`` first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ...errors import InputError, RecordKeyError, StoreError
from ...keys import hash_ids, key_id, load_key
from ..store import fused
from ..store.codecs import get_codec
from ..store.delta_store import DeltaStore
from .ddp import distributed_ranks
from .layout import float_state, unwrap
from .optimizer import step_meta
from .protocols import DeltaSink, IndexSink
from .staging import DirectStaging, EncodedLayout, PooledStaging
from .staging import use_pooled_staging as _use_pooled_staging

__all__ = ["Recorder"]

#: Cores left to the store's compression threads (its default) while rec.step does its CPU math.
#: That math is memory-bound, and a torch parallel region stalls at its barrier whenever one of
#: its threads waits for a core another thread holds: on 2 cores beside 2 compressing threads
#: the ResNet18 step's math took 1.7 s with 2 intra-op threads and 0.22 s with 1
#: (docs/BENCHMARKS.md, "Recording overhead"). The setting is restored after the step.
_STORE_THREADS = 2

#: Values per float64 slice when computing theta - r on CPU (512 KiB: stays in L2).
_SLICE = 1 << 16
#: Tensors under this many values are quantised together, one block row each (see _setup_small).
_SMALL = 1 << 14


def _sub_into(theta: torch.Tensor, r: torch.Tensor, d: torch.Tensor, scratch: torch.Tensor | None) -> None:
    """``d = float32(theta - r)``, computed in float64 and rounded once.

    On CPU ``torch.sub(theta, r, out=d)`` casts on the output element by element (about 3x
    slower than the same subtraction into float64); subtracting slice by slice into a small
    float64 scratch, then casting the slice, is fast and needs no full-size float64 buffer.
    Devices run the fused kernel.
    """
    if scratch is None or not theta.is_contiguous():
        torch.sub(theta, r, out=d)
        return
    t, rr, dd = theta.view(-1), r.view(-1), d.view(-1)
    n, step = t.numel(), scratch.numel()
    for s in range(0, n, step):
        e = min(n, s + step)
        sc = scratch[: e - s]
        torch.sub(t[s:e], rr[s:e], out=sc)
        dd[s:e].copy_(sc)


def _as_ids(ids: Sequence[str], step: int) -> list[str]:
    if isinstance(ids, (str, bytes)):
        raise InputError(
            f"step {step}: the batch's record ids must be a sequence of strings, got a single "
            f"{type(ids).__name__} {ids[:40]!r}; pass a list, e.g. [{ids[:40]!r}]."
        )
    out = list(ids)
    for i, rid in enumerate(out):
        if not isinstance(rid, str):
            raise InputError(
                f"step {step}: record id #{i} of the batch is {type(rid).__name__} {rid!r}, not a "
                "string. Record ids are strings such as 'mnist:train:123'; map positions or "
                "tensor indices to your data set's ids before recording."
            )
    return out


class Recorder:
    """Capture each optimizer step's state delta into a DeltaStore and its batch into an index.

    ``Recorder(model, store, index_builder, optimizer=opt)`` snapshots the model's current state
    as the start of the trajectory. Then, per optimizer step, either call ``rec.step(ids)``
    right after ``optimizer.step()`` (before ``scheduler.step()``, so the meta holds the lr the
    step used), or ``rec.attach(opt)`` once and ``rec.set_batch(ids)`` before each
    ``optimizer.step()``: the optimizer's post-step hook records the step (and a step that a
    ``GradScaler`` skips is not recorded). Use it as a context manager or call :meth:`close`,
    which hands every step to the store and flushes it (the store stays open: the caller owns
    it and closes it, which consolidates its manifest).

    ``codec`` defaults to the store's codec; when given it must be the same codec.
    ``error_feedback=False`` records ``quantize(theta_t - theta_{t-1})`` instead (errors then add
    up over steps; for comparison only). ``pinned_buffers`` sizes the pinned host-buffer pool
    used for CUDA models (each holds one step: 4 bytes per recorded value).

    Distributed data parallel: ``distributed=None`` (default) turns the distributed mode on when
    ``torch.distributed`` is initialised with more than one process; ``process_group`` names
    the ranks that train one global step together (default: all of them). Every rank builds a
    Recorder on its model (a ``DistributedDataParallel`` wrapper is fine: its inner module is
    recorded) and calls ``rec.step(local_ids)`` after each ``optimizer.step()``. Rank 0 passes the
    store and a :class:`~mlflow_amnesia.recording.index.RecordIndexBuilder` and records the global step;
    the other ranks pass ``store=None`` and either ``index_builder=None`` (the key then comes
    from :func:`~mlflow_amnesia.keys.load_key`) or a builder with the same key, used only to hash
    their ids. Every rank must hash with the same key; a different key is an error on every rank.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        store: DeltaSink | None,
        index_builder: IndexSink | None,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        start_step: int = 0,
        codec: Any = None,
        error_feedback: bool = True,
        pinned_buffers: int = 3,
        process_group: Any = None,
        distributed: bool | None = None,
    ) -> None:
        self.model = unwrap(model)
        self.store = store
        self.index_builder = index_builder
        self.optimizer = optimizer
        self.error_feedback = bool(error_feedback)
        if isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)) or start_step < 0:
            raise InputError(f"start_step must be a non-negative integer, got {start_step!r}")
        self._next_step = int(start_step)
        self._steps_recorded = 0
        self._hook: Any = None
        self._pending_ids: list[str] | None = None
        self._failed: BaseException | None = None
        self._failed_step = -1
        self._closed = False
        self._ranks = distributed_ranks(process_group, distributed)
        self._staging: DirectStaging | PooledStaging | None = None
        if self._ranks is not None:
            self._hasher = self._setup_ranks(index_builder)
            if not self._ranks.writes:
                self.codec = None
                return  # nothing to snapshot: rank 0 records the global step
        elif store is None or index_builder is None:
            raise InputError(
                "Recorder needs a store and an index builder (only the non-zero ranks of a distributed "
                "run pass store=None)."
            )
        self.codec = _resolve_codec(codec, store)
        recorded = list(getattr(store, "steps", None) or [])
        if recorded and self._next_step <= max(recorded):
            raise InputError(
                f"start_step {self._next_step} is not after the store's last step {max(recorded)}; "
                f"resume with Recorder(..., start_step={max(recorded) + 1})."
            )

        state = float_state(model)
        if not state:
            raise InputError(f"{type(model).__name__} has no floating-point state to record")
        _check_layout(state, getattr(store, "layout", None), store)
        devices = {t.device for t in state.values()}
        if len(devices) > 1:
            raise InputError(
                f"the model's state spans devices {sorted(str(d) for d in devices)}; the recorder "
                "needs one device: move the model with model.to(device) before recording."
            )
        self.device: torch.device = devices.pop()
        self._names = list(state)
        with torch.no_grad():
            # r_0 = theta_0, float64, contiguous (the deltas' layout) on the model's device.
            self._r = {
                n: t.detach().to(dtype=torch.float64, memory_format=torch.contiguous_format, copy=True)
                for n, t in state.items()
            }
        # Scratch shared by all tensors of a step: theta - r in float32 (the codec's input; its
        # output is a new tensor) and, on CPU, a cache-sized float64 slice (see _sub_into).
        largest = max(t.numel() for t in state.values())
        self._d = torch.empty(largest, dtype=torch.float32, device=self.device)
        self._d64 = torch.empty(min(largest, _SLICE), dtype=torch.float64) if self.device.type == "cpu" else None
        pooled = _use_pooled_staging(self.device)
        # On CPU with a DeltaStore (itself: a wrapper's append need not take or pass on slot=) that
        # takes payloads for every tensor of the model, the codes are quantised straight into the
        # buffer the store compresses from (see _record); else the store copies them.
        store = self.store
        self._lender: DeltaStore | None = (
            store
            if not pooled
            and isinstance(store, DeltaStore)
            and store.accepts_encoded
            and set(store.code_offsets) == set(state)
            else None
        )
        self._encoded = self._encoded_layout(state)
        self._compiled = False
        if self._encoded is not None:
            self._dq = torch.empty(largest, dtype=torch.float32, device=self.device)
            n_codes = 0 if self._reserving else max(c0 + cn for _, c0, cn, _, _ in self._encoded)
            n_scales = max(s0 + sn for _, _, _, s0, sn in self._encoded)
            self._codes = torch.empty(n_codes, dtype=self.codec.code_dtype, device=self.device)
            self._scales = torch.empty(n_scales, dtype=torch.float32, device=self.device)
            # CPU: one compiled loop per tensor when numba is there (fused.encode_block_tensor), else
            # torch slice by slice, the small tensors batched
            self._compiled = (
                self.device.type == "cpu"
                and all(t.dtype in (torch.float32, torch.float64) for t in state.values())
                and fused.wanted(sum(t.numel() for t in state.values()), fused.MIN_STEP_VALUES)
            )
            self._small: list[str] = []
            if self._compiled:  # the loop's block scratch and numpy views of r
                self._scratch = np.empty(self.codec.block + 1, dtype=np.float32)
                self._r_np = {n: r.view(-1).numpy() for n, r in self._r.items()}
            else:
                self._setup_small(state)
        if pooled:
            pin = self.device.type == "cuda"
            self._staging = PooledStaging(
                self._sink(),
                {n: t.shape for n, t in state.items()},
                self.device,
                pinned_buffers,
                pin=pin,
                encoded=self._encoded,
                code_dtype=getattr(self.codec, "code_dtype", torch.int8),
            )
        else:
            self._staging = DirectStaging(self._sink(), self._encoded)

    def _setup_small(self, state: Mapping[str, torch.Tensor]) -> None:
        """Batch the small tensors (BatchNorm's, biases: most of a ResNet's tensors, few of its values).

        Their values sit, zero-padded to whole blocks, in one (rows, block) matrix that is quantised
        in one pass; their ``r`` is one flat float64 buffer (``self._r`` holds views of it), and
        index maps scatter their codes and scales into the flat buffers. Per step that is about
        twenty torch calls for all of them instead of about twenty per tensor. Blocks never span
        two tensors, so each row quantises exactly as the tensor alone would.
        """
        codec = self.codec
        assert codec is not None and self._encoded is not None
        B = codec.block
        small = [(i, name) for i, (name, t) in enumerate(state.items()) if 0 < t.numel() < _SMALL and t.is_contiguous()]
        self._small = [name for _, name in small]
        if len(small) < 2:
            self._small = []
            return
        dev = self.device
        pos, src_c, dst_c, dst_s = [], [], [], []
        row = off = 0
        cb_row = codec.encoded_sizes(B)[0]
        for i, name in small:
            n = state[name].numel()
            _, c0, cn, s0, sn = self._encoded[i]
            pos.append(torch.arange(n) + row * B)
            src_c.append(torch.arange(cn) + row * cb_row)
            dst_c.append(torch.arange(cn) + c0)
            dst_s.append(torch.arange(sn) + s0)
            row, off = row + sn, off + n
        idx = {"pos": pos, "src_c": src_c, "dst_c": dst_c, "dst_s": dst_s}
        self._small_idx = {k: torch.cat(v).to(dev) for k, v in idx.items()}
        r_small = torch.cat([self._r[name].reshape(-1) for name in self._small])
        o = 0
        for name in self._small:  # self._r's small entries become views of the flat buffer
            n = self._r[name].numel()
            self._r[name] = r_small[o : o + n].view(self._r[name].shape)
            o += n
        self._r_small = r_small
        self._small_x = torch.zeros(row, B, dtype=torch.float32, device=dev)  # padding stays 0
        self._small_dq = torch.empty(row, B, dtype=torch.float32, device=dev)
        self._small_codes = torch.empty(row * cb_row, dtype=codec.code_dtype, device=dev)
        self._small_scales = torch.empty(row, dtype=torch.float32, device=dev)

    def _encode_small(self, state: Mapping[str, torch.Tensor]) -> None:
        codec = self.codec
        assert codec is not None
        ix = self._small_idx
        theta = torch.cat([state[name].reshape(-1) for name in self._small])
        d = (theta - self._r_small).to(torch.float32)  # float64 difference, rounded once (as _sub_into)
        self._small_x.view(-1)[ix["pos"]] = d
        codec.quantize_into(self._small_x.view(-1), self._small_codes, self._small_scales, self._small_dq.view(-1))
        if self.error_feedback:
            self._r_small.add_(self._small_dq.view(-1)[ix["pos"]])
        else:
            self._r_small.copy_(theta)
        self._codes[ix["dst_c"]] = self._small_codes[ix["src_c"]]
        self._scales[ix["dst_s"]] = self._small_scales

    def _encoded_layout(self, state: Mapping[str, torch.Tensor]) -> EncodedLayout | None:
        """Where each tensor's codes and scales sit in the flat buffers, when the store takes payloads."""
        codec = self.codec
        if codec is None or not (
            getattr(self.store, "accepts_encoded", False) and getattr(codec, "encodes_on_device", False)
        ):
            return None
        out: EncodedLayout = []
        c0 = s0 = 0
        in_store = self._lender.code_offsets if self._lender is not None else None
        for name, t in state.items():
            cn, sn = codec.encoded_sizes(t.numel())
            # reserving: the codes' offsets are those of the store's payload buffer (scales between)
            out.append((name, in_store[name] if in_store is not None else c0, cn, s0, sn))
            c0, s0 = c0 + cn, s0 + sn
        return out

    def _setup_ranks(self, index_builder: IndexSink | None) -> Any:
        """Check the roles and the key of every rank (one collective); return this rank's hasher."""
        ranks = self._ranks
        assert ranks is not None
        problem = None
        if ranks.writes and (self.store is None or index_builder is None):
            problem = (
                f"rank 0 of the distributed run ({ranks.size} ranks) records the global step: pass it the "
                "DeltaStore and the RecordIndexBuilder (the other ranks pass store=None)."
            )
        elif not ranks.writes and self.store is not None:
            problem = (
                f"rank {ranks.rank} got a store, but only rank 0 writes one (a store has one writer): create "
                "the DeltaStore on rank 0 only and pass store=None on the other ranks."
            )
        hasher, kid = None, "00" * 8
        if index_builder is not None:
            hasher, kid = index_builder.hash, index_builder.key_id
        else:
            try:
                key = load_key(create=False)
                hasher, kid = (lambda ids: hash_ids(ids, key)), key_id(key)
            except RecordKeyError as e:
                problem = problem or f"rank {ranks.rank}: {e}"
        ranks.agree(kid, self._next_step, problem)
        return hasher

    # -- the loop's calls ---------------------------------------------------------------------

    @property
    def _reserving(self) -> bool:
        """Whether each step's codes are quantised into a payload buffer the store lends."""
        return self._lender is not None and self._encoded is not None

    @property
    def next_step(self) -> int:
        """The step number the next :meth:`step` records."""
        return self._next_step

    @property
    def steps_recorded(self) -> int:
        """How many steps this recorder has recorded (rollbacks decrement integer buffers by it)."""
        return self._steps_recorded

    @property
    def rank(self) -> int:
        """This process's rank in the distributed group (0 when not distributed)."""
        return 0 if self._ranks is None else self._ranks.rank

    @property
    def world_size(self) -> int:
        """Processes whose batches form one recorded step (1 when not distributed)."""
        return 1 if self._ranks is None else self._ranks.size

    @property
    def writes(self) -> bool:
        """Whether this process writes the deltas and the index (rank 0, or not distributed)."""
        return self._ranks is None or self._ranks.writes

    def step(self, ids: Sequence[str]) -> int:
        """Record the state change since the previous step (or since construction) as one step.

        Call it right after ``optimizer.step()`` with the record ids of the batch. Returns the
        step number. The work on this thread per tensor: ``theta - r`` (float64, rounded to
        float32), the codec's quantise, ``r += d``, and the store's copy in ``append``;
        compression and writing run in the store's background threads. In a distributed run
        every rank calls it with its local ids (a collective: every rank, every step).
        """
        self._check_usable()
        step = self._next_step
        batch = _as_ids(ids, step)
        try:
            if self._ranks is None:
                self._record(step)
                self._index().add(step, batch)
            else:  # every rank's hashed share to rank 0, which records the global step
                hashes = self._ranks.gather(step, self._hasher(batch))
                if self._ranks.writes:
                    assert hashes is not None  # rank 0 receives every rank's share
                    self._record(step)
                    self._index().add_hashes(step, hashes)
        except BaseException as exc:
            # r may now be ahead of what the store holds: refuse further steps rather than record
            # a trajectory the store cannot reconstruct.
            self._fail(exc, step)
            raise
        self._next_step += 1
        self._steps_recorded += 1
        return step

    def _index(self) -> IndexSink:
        assert self.index_builder is not None  # the writing process has one (checked at construction)
        return self.index_builder

    def _sink(self) -> DeltaSink:
        assert self.store is not None  # the writing process has one (checked at construction)
        return self.store

    def _record(self, step: int) -> None:
        """Compute this step's deltas (advancing ``r``) and hand them to the store."""
        state = float_state(self.model)
        if list(state) != self._names:
            raise InputError(
                f"step {step}: the model's floating-point state changed since the recorder "
                f"started ({len(state)} tensors now, {len(self._names)} before; e.g. "
                f"{_first_difference(list(state), self._names)!r}). Create a new store and "
                "recorder for the new architecture."
            )
        assert self._staging is not None  # the writing process has one
        meta = step_meta(self.optimizer)
        if self._encoded is not None:
            lender = self._lender
            slot = lender.reserve_payload() if lender is not None else None
            try:
                if slot is not None:  # this step's codes go straight into the store's buffer
                    self._codes = torch.from_numpy(slot.buffer).view(self._codes.dtype)
                self._with_threads(self._encode_on, state)
                self._staging.put_encoded(step, self._codes, self._scales, meta, slot=slot)
            except BaseException:
                if lender is not None and slot is not None:  # a no-op once append took it
                    lender.release_payload(slot)
                raise
        else:
            self._staging.put(step, self._with_threads(self._deltas_on, state), meta)

    @torch.no_grad()
    def _with_threads(self, fn: Any, state: Mapping[str, torch.Tensor]) -> Any:
        threads = torch.get_num_threads()
        mine = max(1, threads - _STORE_THREADS)
        if self.device.type != "cpu" or mine == threads:
            return fn(state)
        torch.set_num_threads(mine)
        try:
            return fn(state)
        finally:
            torch.set_num_threads(threads)

    def _deltas(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._with_threads(self._deltas_on, state)

    def _check_tensor(self, name: str, theta: torch.Tensor, r: torch.Tensor) -> None:
        if theta.shape != r.shape or theta.device != r.device:
            raise InputError(
                f"state tensor {name!r} is now {list(theta.shape)} on {theta.device}; the recorder "
                f"started with {list(r.shape)} on {r.device}. Keep the model's shapes and device "
                "fixed while recording (move it before creating the Recorder)."
            )

    def _encode_on(self, state: Mapping[str, torch.Tensor]) -> None:
        """theta - r, quantise into the flat codes/scales, r += the reconstructed delta: one pass.

        On CPU with numba one compiled loop per tensor, block by block (:mod:`..store.fused`); else
        slice by slice (float64 difference, rounded once to float32, as ``_sub_into``), so every
        temporary stays in cache; on a device one fused kernel per operation per tensor. The codes
        are those of ``codec.quantize(float32(theta - r))`` (the float path's) either way.
        """
        codec = self.codec
        assert codec is not None and self._encoded is not None
        small = set(self._small)
        for name in self._small:
            self._check_tensor(name, state[name], self._r[name])
        if small:
            self._encode_small(state)
        if self._compiled:
            codes_np, scales_np = self._codes.numpy().view(np.uint8), self._scales.numpy()
        for (name, theta), (_, c0, cn, s0, sn) in zip(state.items(), self._encoded):
            if name in small:
                continue
            r = self._r[name]
            self._check_tensor(name, theta, r)
            codes, scales = self._codes[c0 : c0 + cn], self._scales[s0 : s0 + sn]
            if (
                self._compiled
                and theta.is_contiguous()
                and fused.encode_block_tensor(
                    theta.view(-1).numpy(),
                    self._r_np[name],
                    codes_np[c0 : c0 + cn],
                    scales_np[s0 : s0 + sn],
                    self._scratch,
                    block=codec.block,
                    levels=codec.levels,
                    bits=codec.code_bits,
                    feedback=self.error_feedback,
                )
            ):
                continue
            self._encode_tensor(theta, r, codes, scales)

    def _encode_tensor(self, theta: torch.Tensor, r: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> None:
        """One tensor of :meth:`_encode_on` in torch."""
        codec = self.codec
        assert codec is not None
        B = codec.block
        n = theta.numel()
        if self._d64 is not None and theta.is_contiguous():
            t, rr = theta.view(-1), r.view(-1)
            for s in range(0, n, _SLICE):
                e = min(n, s + _SLICE)
                sc, d, dq = self._d64[: e - s], self._d[: e - s], self._dq[: e - s]
                torch.sub(t[s:e], rr[s:e], out=sc)
                d.copy_(sc)
                cs = codec.encoded_sizes(s)[0]
                codec.quantize_into(d, codes[cs : cs + codec.encoded_sizes(e - s)[0]], scales[s // B : -(-e // B)], dq)
                if self.error_feedback:
                    rr[s:e].add_(dq)
        else:
            d, dq = self._d[:n], self._dq[:n]
            _sub_into(theta, r, d.view(theta.shape), self._d64)
            codec.quantize_into(d, codes, scales, dq)
            if self.error_feedback:
                r.add_(dq.view(theta.shape))
        if not self.error_feedback:
            r.copy_(theta)

    def _deltas_on(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        assert self.codec is not None  # the writing process has one
        quantize = self.codec.quantize
        out: dict[str, torch.Tensor] = {}
        for name, theta in state.items():
            r = self._r[name]
            self._check_tensor(name, theta, r)
            d = self._d[: theta.numel()].view(theta.shape)
            _sub_into(theta, r, d, self._d64)
            q = quantize(d)
            if q.untyped_storage().data_ptr() == d.untyped_storage().data_ptr():
                q = q.clone()  # the codec gave back its input: the scratch is reused by the next tensor
            if self.error_feedback:
                r.add_(q)
            else:
                r.copy_(theta)
            out[name] = q
        return out

    def set_batch(self, ids: Sequence[str]) -> None:
        """Hook mode: the ids of the batch the next ``optimizer.step()`` trains on."""
        self._check_usable()
        self._pending_ids = _as_ids(ids, self._next_step)

    def attach(self, optimizer: torch.optim.Optimizer | None = None) -> Recorder:
        """Hook mode: record a step after every ``optimizer.step()`` (its post-step hook).

        The loop then only calls :meth:`set_batch` before stepping. Returns ``self``.
        """
        self._check_usable()
        optimizer = optimizer if optimizer is not None else self.optimizer
        if optimizer is None:
            raise InputError("attach() needs the optimizer: rec.attach(optimizer)")
        if self.optimizer is not None and optimizer is not self.optimizer:
            raise InputError(
                "attach() got a different optimizer than the one the recorder was built with; "
                "the step meta (lr...) must come from the optimizer that steps."
            )
        if self._hook is not None:
            raise InputError("the recorder is already attached to an optimizer; call detach() first")
        self.optimizer = optimizer
        self._hook = optimizer.register_step_post_hook(self._on_optimizer_step)
        return self

    def detach(self) -> None:
        """Remove the optimizer hook installed by :meth:`attach` (no-op when not attached)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _on_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        ids, self._pending_ids = self._pending_ids, None
        if ids is None:
            raise InputError(
                f"optimizer.step() ran for recorded step {self._next_step} but no batch ids were "
                "set: call rec.set_batch(ids) before every optimizer.step()."
            )
        self.step(ids)

    # -- ending -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Hand every recorded step to the store and flush it (durable when this returns)."""
        self._check_usable()
        if self._staging is None:
            return  # a non-zero rank: nothing written here
        try:
            self._staging.drain()
            self._sink().flush()
        except BaseException as exc:
            self._fail(exc, self._next_step)
            raise

    def close(self) -> None:
        """Detach, hand every step to the store, flush it. Idempotent; the store stays open."""
        if self._closed:
            return
        self._closed = True
        self.detach()
        if self._staging is None:
            return  # a non-zero rank: nothing written here
        try:
            if self._failed is None:
                self._staging.drain()
        finally:
            self._staging.close()
        self._sink().flush()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self, exc: BaseException, step: int) -> None:
        failed = getattr(self._staging, "failed_step", None)
        self._failed = exc
        self._failed_step = step if failed is None else failed

    def _check_usable(self) -> None:
        if self._closed:
            raise InputError("the recorder is closed; create a new Recorder (start_step=...) to record more steps")
        if self._failed is not None:
            s = self._failed_step
            raise StoreError(
                f"the recorder stopped at step {s} after an error ({type(self._failed).__name__}: "
                f"{self._failed}); the store holds no step from {s} on. Fix the cause, then re-run the "
                f"`mlflow-amnesia train` or `forget` command (it starts afresh); from Python, record into a new "
                f"store, or reopen this one (mode='a') with Recorder(start_step={s}) on the model state of step {s}."
            ) from self._failed


def _first_difference(a: list[str], b: list[str]) -> str:
    for x, y in zip(a, b):
        if x != y:
            return x
    return a[len(b)] if len(a) > len(b) else b[len(a)]


def _resolve_codec(codec: Any, store: Any) -> Any:
    store_codec = getattr(store, "codec", None)
    if isinstance(store_codec, str):
        store_codec = get_codec(store_codec)
    if codec is None:
        if store_codec is None:
            raise InputError("the store names no codec; pass codec='f32'|'bf16'|'int8' to Recorder")
        return store_codec
    if isinstance(codec, str):
        codec = get_codec(codec)
    if store_codec is not None and store_codec.name != codec.name:
        raise InputError(
            f"codec {codec.name!r} differs from the store's codec {store_codec.name!r}: error "
            "feedback needs the recorder to quantise exactly as the store encodes. Leave codec "
            "unset to use the store's."
        )
    return codec


def _check_layout(state: Mapping[str, torch.Tensor], layout: Any, store: Any) -> None:
    if layout is None:
        return
    want = [(e["name"], tuple(int(s) for s in e["shape"])) for e in layout]
    have = [(n, tuple(t.shape)) for n, t in state.items()]
    if want == have:
        return
    where = getattr(store, "url", None) or type(store).__name__
    for i, (w, h) in enumerate(zip(want, have)):
        if w != h:
            diff = f"entry {i}: store has {w[0]!r} {list(w[1])}, model has {h[0]!r} {list(h[1])}"
            break
    else:
        diff = f"store has {len(want)} tensors, model has {len(have)}"
    raise InputError(
        f"the delta store {where} was created for another model layout ({diff}). Create the store "
        "with layout=state_layout(model) for this model."
    )
