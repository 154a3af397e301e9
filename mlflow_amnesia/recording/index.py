"""Which training steps saw which records: keyed record hashes <-> step numbers, as CSR arrays.

A forget request names record ids; the rollback needs the optimizer steps whose batch held any of
them. :class:`RecordIndexBuilder` collects ``(step, batch ids)`` during training, and
:class:`RecordIndex` answers ``steps_for(ids)``. Records are known only by their keyed hash
(:func:`mlflow_amnesia.keys.hash_ids`, 16 bytes), so neither the object nor its file reveals an id.

Memory is sized for a million records seen for 30 epochs (30M entries): the builder keeps one
int32 per entry in fixed-size numpy blocks and maps hashes to record numbers with a sorted hash
table (``searchsorted`` over the hash's two big-endian 64-bit halves), never a Python object per
entry. The built index holds, with ``n`` records, ``S`` steps and ``E`` entries:

* ``hashes``: ``(n, 16)`` uint8, sorted bytewise: row ``r`` is record ``r``;
* ``steps``: ``(S,)`` int64, the step numbers given to the builder, sorted (need not be contiguous);
* record -> steps CSR: ``indptr`` ``(n+1,)`` int64, positions into ``steps`` ``(E,)`` int32, each
  row sorted;
* step -> records CSR, derived from the first on first use of :meth:`RecordIndex.records_in_step`.

File format (version 1), one file, no pickle::

    offset 0   8 bytes   magic b"AMNESIDX"
    offset 8   4 bytes   H, the header length (uint32, little endian)
    offset 12  32 bytes  sha256 of the header bytes
    offset 44  H bytes   header: UTF-8 JSON (format, version, key_id, counts, compression,
                         arrays: name, dtype, shape, filters, offset and size in the payload,
                         payload_bytes, payload_sha256)
    offset 44+H          payload: the arrays, each one zstd frame (or raw when uncompressed)

Arrays: ``hashes`` (``|u1``, ``[n, 16]``), ``steps`` (``<i8``, filters ``delta, shuffle``),
``record_counts`` (``<u4``, steps per record, ``shuffle``) and ``record_steps`` (``<u4``,
positions into ``steps``, ``row-delta, shuffle``). ``delta`` stores differences of consecutive
values, ``row-delta`` does so within each record's row, ``shuffle`` groups the bytes of each
value by significance: sorted step positions then cost about 1-2 bytes an entry after zstd.
"""

from __future__ import annotations

import hashlib
import json
import struct
from array import array
from collections.abc import Iterable, Sequence

import numpy as np
import zstandard

from .._version import __version__
from ..errors import IndexFormatError, InputError, RecordKeyError, UnknownRecordsError
from ..keys import HASH_BYTES, check_key, hash_ids, key_id, key_path, load_key

FORMAT_NAME = "mlflow-amnesia.record-index"
FORMAT_VERSION = 1
MAGIC = b"AMNESIDX"
_PREFIX = struct.Struct("<8sI32s")
_MAX_HEADER = 1 << 20
_BLOCK = 1 << 20  # builder entries per block (4 MiB of int32)


# ----------------------------------------------------------------------------- hash lookup


def _halves(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The big-endian 64-bit halves of ``(n, 16)`` hashes: ordering ``(hi, lo)`` is bytewise order."""
    h = np.ascontiguousarray(hashes, dtype=np.uint8).reshape(-1, HASH_BYTES)
    hi = h[:, :8].copy().view(">u8").ravel().astype(np.uint64)
    lo = h[:, 8:].copy().view(">u8").ravel().astype(np.uint64)
    return hi, lo


def _join(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    out = np.empty((len(hi), 2), dtype=">u8")
    out[:, 0] = hi
    out[:, 1] = lo
    return out.view(np.uint8).reshape(len(hi), HASH_BYTES)


def _find(hi: np.ndarray, lo: np.ndarray, qhi: np.ndarray, qlo: np.ndarray) -> np.ndarray:
    """Row of each query in the table sorted by ``(hi, lo)``, or -1 when absent."""
    n = len(hi)
    if n == 0:
        return np.full(len(qhi), -1, dtype=np.int64)
    pos = np.searchsorted(hi, qhi, side="left")
    safe = np.minimum(pos, n - 1)
    same_hi = (pos < n) & (hi[safe] == qhi)
    hit = same_hi & (lo[safe] == qlo)
    rows = np.where(hit, pos, -1).astype(np.int64)
    # Two records sharing the first 8 bytes (p ~ n^2 / 2^65): scan the run of equal hi values.
    for i in np.flatnonzero(same_hi & ~hit):
        j = int(pos[i]) + 1
        while j < n and hi[j] == qhi[i]:
            if lo[j] == qlo[i]:
                rows[i] = j
                break
            j += 1
    return rows


def _as_hashes(hashes: np.ndarray | Sequence[bytes]) -> np.ndarray:
    if not isinstance(hashes, np.ndarray):
        hashes = np.frombuffer(b"".join(bytes(h) for h in hashes), dtype=np.uint8)
    if hashes.dtype != np.uint8 or hashes.size % HASH_BYTES:
        raise InputError(f"record hashes must be an (n, {HASH_BYTES}) uint8 array, got {hashes.dtype} {hashes.shape}")
    return hashes.reshape(-1, HASH_BYTES)


class _HashTable:
    """Record hash -> record number: a sorted table plus a small dict of recent arrivals.

    The dict holds at most ``max(65536, n/2)`` records before it is merged into the sorted table,
    so memory stays a few dozen bytes a *record* and merges cost O(n log n) overall.
    """

    def __init__(self) -> None:
        self.hi = np.zeros(0, dtype=np.uint64)
        self.lo = np.zeros(0, dtype=np.uint64)
        self.num = np.zeros(0, dtype=np.int32)
        self.pending: dict[bytes, int] = {}
        self.n = 0

    def bulk_load(self, hashes: np.ndarray) -> np.ndarray:
        """Load records ``0..n-1`` into an empty table; returns pairs of rows holding equal hashes."""
        hi, lo = _halves(hashes)
        order = np.lexsort((lo, hi))
        self.hi, self.lo, self.num = hi[order], lo[order], order.astype(np.int32)
        self.n = len(order)
        dup = np.flatnonzero((self.hi[1:] == self.hi[:-1]) & (self.lo[1:] == self.lo[:-1]))
        return np.stack([order[dup], order[dup + 1]], axis=1) if len(dup) else np.zeros((0, 2), np.int64)

    def lookup_or_add(self, hashes: np.ndarray) -> np.ndarray:
        qhi, qlo = _halves(hashes)
        rows = _find(self.hi, self.lo, qhi, qlo)
        nums = np.full(len(rows), -1, dtype=np.int32)
        hit = rows >= 0
        nums[hit] = self.num[rows[hit]]
        missing = np.flatnonzero(nums < 0)
        if len(missing):
            if self.n + len(missing) >= 2**31 - 1:
                raise InputError("the record index holds at most 2**31 - 1 distinct records")
            for i in missing:
                k = hashes[i].tobytes()
                v = self.pending.get(k)
                if v is None:
                    v = self.pending[k] = self.n
                    self.n += 1
                nums[i] = v
            if len(self.pending) > max(65536, self.n_sorted // 2):
                self._merge()
        return nums

    @property
    def n_sorted(self) -> int:
        return len(self.hi)

    def _merge(self) -> None:
        if not self.pending:
            return
        k = len(self.pending)
        new = np.frombuffer(b"".join(self.pending.keys()), dtype=np.uint8).reshape(k, HASH_BYTES)
        nhi, nlo = _halves(new)
        hi = np.concatenate([self.hi, nhi])
        lo = np.concatenate([self.lo, nlo])
        num = np.concatenate([self.num, np.fromiter(self.pending.values(), dtype=np.int32, count=k)])
        order = np.lexsort((lo, hi))
        self.hi, self.lo, self.num = hi[order], lo[order], num[order]
        self.pending = {}

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted ``(n, 16)`` hashes and the record number of each row."""
        self._merge()
        return _join(self.hi, self.lo), self.num


# ----------------------------------------------------------------------------- builder


class RecordIndexBuilder:
    """Collects which records each optimizer step saw; :meth:`build` returns a :class:`RecordIndex`.

    Either call :meth:`add` with each step's record ids, or declare the data set once with
    :meth:`set_records` and then pass each batch as positions into it with :meth:`add_positions`
    (no hashing per step: the fast path for large data sets). Both may be mixed.
    """

    def __init__(self, key: bytes) -> None:
        self._key = check_key(key)
        self._table = _HashTable()
        self._declared: int | None = None
        self._steps = array("q")
        self._counts = array("q")
        self._max_step = -1
        self._seen: set[int] | None = None  # only once steps arrive out of order
        self._blocks: list[np.ndarray] = []
        self._fill = 0
        self._entries = 0

    @property
    def n_records(self) -> int:
        return self._table.n

    @property
    def n_steps(self) -> int:
        return len(self._steps)

    @property
    def n_entries(self) -> int:
        return self._entries

    def set_records(self, ids: Sequence[str]) -> None:
        """Declare every record up front; ``ids[i]`` is then position ``i`` for :meth:`add_positions`."""
        if self._table.n or len(self._steps):
            raise InputError("set_records() must be called once, before any add() or add_positions()")
        ids = ids if isinstance(ids, Sequence) else list(ids)
        dup = self._table.bulk_load(hash_ids(ids, self._key))
        if len(dup):
            names = sorted({ids[int(i)] for i in dup[:, 0]})
            shown = ", ".join(repr(n) for n in names[:10])
            self._table = _HashTable()
            raise InputError(
                f"set_records() got {len(names)} duplicated record id(s): {shown}"
                f"{' ...' if len(names) > 10 else ''}; record ids must be unique within a data set."
            )
        self._declared = len(ids)

    def add(self, step: int, ids: Sequence[str]) -> None:
        """Record that optimizer step ``step`` saw the records ``ids`` (repeats in a batch are fine)."""
        step = self._check_step(step)
        nums = self._table.lookup_or_add(hash_ids(ids, self._key))
        self._append(step, nums)

    def hash(self, ids: Sequence[str]) -> np.ndarray:
        """The keyed hashes ``(n, 16)`` of ``ids`` under this builder's key (nothing is added).

        Lets a process hash its share of a batch where the index is not built (the other ranks of
        a distributed run) without handing the key around.
        """
        return hash_ids(ids, self._key)

    @property
    def key_id(self) -> str:
        """The public fingerprint of the builder's key (see :func:`mlflow_amnesia.keys.key_id`)."""
        return key_id(self._key)

    def add_hashes(self, step: int, hashes: np.ndarray) -> None:
        """Like :meth:`add` with the ids' keyed hashes ``(n, 16)`` (from :meth:`hash` under this key)."""
        step = self._check_step(step)
        self._append(step, self._table.lookup_or_add(_as_hashes(hashes)))

    def add_positions(self, step: int, positions: Sequence[int] | np.ndarray) -> None:
        """Like :meth:`add` with ``ids = [all_ids[p] for p in positions]`` after :meth:`set_records`."""
        if self._declared is None:
            raise InputError("add_positions() needs set_records(all_ids) first, to know what position i means")
        step = self._check_step(step)
        p = np.asarray(positions)
        if p.size == 0:
            p = p.astype(np.int64)
        if p.ndim != 1 or p.dtype.kind not in "iu":
            raise InputError(f"step {step}: positions must be a 1-D integer array, got {p.dtype} {p.shape}")
        if p.size and (p.min() < 0 or p.max() >= self._declared):
            bad = p[(p < 0) | (p >= self._declared)][0]
            raise InputError(
                f"step {step}: position {int(bad)} is outside the {self._declared} records given to set_records()"
            )
        self._append(step, p.astype(np.int32))

    def _check_step(self, step: int) -> int:
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
            raise InputError(f"a step must be an integer, got {type(step).__name__} {step!r}")
        s = int(step)
        if not 0 <= s < 2**63:
            raise InputError(f"step {s} is out of range: steps are non-negative 64-bit integers")
        if len(self._steps) >= 2**31 - 1:
            raise InputError("the record index holds at most 2**31 - 1 steps; split training into phases")
        if s <= self._max_step:
            if self._seen is None:
                self._seen = set(self._steps)
            if s in self._seen:
                raise InputError(f"step {s} was already added to the record index: add each optimizer step once")
        return s

    def _append(self, step: int, nums: np.ndarray) -> None:
        nums = np.unique(nums)  # sorted, without repeats
        self._steps.append(step)
        self._counts.append(len(nums))
        if self._seen is not None:
            self._seen.add(step)
        self._max_step = max(self._max_step, step)
        self._entries += len(nums)
        while len(nums):
            if not self._blocks or self._fill == _BLOCK:
                self._blocks.append(np.empty(_BLOCK, dtype=np.int32))
                self._fill = 0
            take = min(len(nums), _BLOCK - self._fill)
            self._blocks[-1][self._fill : self._fill + take] = nums[:take]
            self._fill += take
            nums = nums[take:]

    def build(self) -> RecordIndex:
        """The index of everything added so far. The builder stays usable."""
        hashes, num_of_row = self._table.finalize()
        n, S, E = len(hashes), len(self._steps), self._entries
        steps = np.array(self._steps, dtype=np.int64)
        counts = np.array(self._counts, dtype=np.int64)
        order = np.argsort(steps, kind="stable")
        pos_of_step = np.empty(S, dtype=np.int64)
        pos_of_step[order] = np.arange(S)
        row_of_num = np.empty(n, dtype=np.int64)
        row_of_num[num_of_row] = np.arange(n)
        # One int64 key per entry, row * S + step position; sorting it groups entries by record
        # with each record's steps in order (cheaper than a stable argsort, no index array).
        keys = np.empty(E, dtype=np.int64)
        count_of_num = np.zeros(n, dtype=np.int64)
        ends = np.cumsum(counts)
        done = 0
        for block in self._blocks:
            m = min(_BLOCK, E - done)
            nums = block[:m]
            seg = keys[done : done + m]
            np.multiply(row_of_num[nums], S, out=seg)
            seg += pos_of_step[np.searchsorted(ends, np.arange(done, done + m), side="right")]
            count_of_num += np.bincount(nums, minlength=n)
            done += m
        keys.sort()
        record_steps = np.empty(E, dtype=np.int32)
        if E:
            np.remainder(keys, S, out=record_steps, casting="unsafe")
        del keys
        record_counts = count_of_num[num_of_row]
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(record_counts, out=indptr[1:])
        return RecordIndex(self._key, hashes, steps[order], indptr, record_steps)


# ----------------------------------------------------------------------------- index


class RecordIndex:
    """Keyed record hashes <-> step numbers (read-only). Build with :class:`RecordIndexBuilder`
    or read with :meth:`load` / :meth:`from_bytes`; the constructor takes the arrays as built."""

    def __init__(
        self,
        key: bytes,
        hashes: np.ndarray,
        steps: np.ndarray,
        record_indptr: np.ndarray,
        record_steps: np.ndarray,
    ) -> None:
        self._key = check_key(key)
        self._key_id = key_id(self._key)
        self._hashes = _readonly(hashes)
        self._steps = _readonly(steps)
        self._indptr = _readonly(record_indptr)
        self._rsteps = _readonly(record_steps)
        self._hi, self._lo = _halves(self._hashes)
        self._step_indptr: np.ndarray | None = None
        self._step_rows: np.ndarray | None = None

    # -- sizes and arrays

    @property
    def key_id(self) -> str:
        """Id of the key the hashes were made with (see :func:`mlflow_amnesia.keys.key_id`)."""
        return self._key_id

    @property
    def n_records(self) -> int:
        return len(self._hashes)

    @property
    def n_steps(self) -> int:
        return len(self._steps)

    @property
    def n_entries(self) -> int:
        """Number of (record, step) pairs."""
        return len(self._rsteps)

    @property
    def hashes(self) -> np.ndarray:
        """``(n_records, 16)`` uint8 keyed hashes, sorted bytewise (read-only)."""
        return self._hashes

    @property
    def steps(self) -> np.ndarray:
        """The step numbers, int64, sorted ascending (read-only)."""
        return self._steps

    def __repr__(self) -> str:
        return (
            f"RecordIndex(n_records={self.n_records}, n_steps={self.n_steps}, "
            f"n_entries={self.n_entries}, key_id={self.key_id!r})"
        )

    # -- queries

    def hashes_of(self, ids: Iterable[str]) -> np.ndarray:
        """The keyed hashes of ``ids`` under this index's key, ``(n, 16)`` uint8."""
        return hash_ids(ids, self._key)

    def contains(self, ids: Iterable[str]) -> np.ndarray:
        """Boolean array: is each id a record of this index."""
        return self._rows(self.hashes_of(ids)) >= 0

    def steps_for(self, ids: Iterable[str], *, strict: bool = True) -> np.ndarray:
        """Sorted unique step numbers (int64) whose batch held any of ``ids``.

        Unknown ids raise :class:`UnknownRecordsError` naming them; ``strict=False`` skips them.
        """
        ids = ids if isinstance(ids, Sequence) else list(ids)
        rows = self._rows(self.hashes_of(ids))
        if strict and (rows < 0).any():
            unknown = list(dict.fromkeys(ids[int(i)] for i in np.flatnonzero(rows < 0)))
            raise UnknownRecordsError(unknown, total=len(set(ids)))
        return self._steps_of_rows(rows[rows >= 0])

    def steps_for_hashes(self, hashes: np.ndarray | Sequence[bytes], *, strict: bool = True) -> np.ndarray:
        """:meth:`steps_for` given keyed hashes; unknown hashes are named in hex."""
        h = _as_hashes(hashes)
        rows = self._rows(h)
        if strict and (rows < 0).any():
            unknown = list(dict.fromkeys(h[i].tobytes().hex() for i in np.flatnonzero(rows < 0)))
            raise UnknownRecordsError(unknown, where="the record index (by keyed hash)", total=len(h))
        return self._steps_of_rows(rows[rows >= 0])

    def step_share(self, ids: Iterable[str]) -> float:
        """Fraction of all steps that saw any of ``ids``: what a rollback of them would touch."""
        return len(self.steps_for(ids)) / self.n_steps if self.n_steps else 0.0

    def share(self, steps: Iterable[int] | np.ndarray) -> float:
        """Fraction of this index's steps that ``steps`` (unique, all in the index) represent."""
        s = np.unique(np.asarray(list(steps) if not isinstance(steps, np.ndarray) else steps, dtype=np.int64))
        unknown = s[~np.isin(s, self._steps)]
        if len(unknown):
            raise InputError(
                f"{len(unknown)} step(s) are not in the record index: {', '.join(map(str, unknown[:10].tolist()))}"
                f"{' ...' if len(unknown) > 10 else ''} (it holds {self._describe_steps()})"
            )
        return len(s) / self.n_steps if self.n_steps else 0.0

    def records_in_step(self, step: int) -> np.ndarray:
        """Keyed hashes ``(k, 16)`` of the records step ``step`` saw, sorted bytewise."""
        p = int(np.searchsorted(self._steps, step))
        if p >= self.n_steps or self._steps[p] != step:
            raise InputError(f"step {step} is not in the record index (it holds {self._describe_steps()})")
        indptr, rows = self._step_csr()
        return self._hashes[rows[indptr[p] : indptr[p + 1]]]

    def _describe_steps(self) -> str:
        if not self.n_steps:
            return "no steps"
        return f"{self.n_steps} steps, {int(self._steps[0])}..{int(self._steps[-1])}"

    def _rows(self, hashes: np.ndarray) -> np.ndarray:
        qhi, qlo = _halves(hashes)
        return _find(self._hi, self._lo, qhi, qlo)

    def _steps_of_rows(self, rows: np.ndarray) -> np.ndarray:
        starts = self._indptr[rows]
        lens = self._indptr[rows + 1] - starts
        total = int(lens.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64)
        # Gather the rows' ranges without a Python loop: each entry's index is its row start plus
        # its offset within the row.
        offs = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
        pos = self._rsteps[np.repeat(starts, lens) + offs]
        if total > self.n_steps // 8:
            mask = np.zeros(self.n_steps, dtype=bool)
            mask[pos] = True
            uniq = np.flatnonzero(mask)
        else:
            uniq = np.unique(pos)
        return self._steps[uniq].copy()

    def _step_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """The step -> record rows CSR, derived once from the record -> steps one."""
        if self._step_indptr is None:
            n, S, E = self.n_records, self.n_steps, self.n_entries
            keys = self._rsteps.astype(np.int64) * n
            keys += np.repeat(np.arange(n, dtype=np.int64), np.diff(self._indptr))
            keys.sort()
            rows = np.empty(E, dtype=np.int32)
            if E:
                np.remainder(keys, n, out=rows, casting="unsafe")
            del keys
            indptr = np.zeros(S + 1, dtype=np.int64)
            np.cumsum(np.bincount(self._rsteps, minlength=S), out=indptr[1:])
            self._step_indptr, self._step_rows = _readonly(indptr), _readonly(rows)
        return self._step_indptr, self._step_rows  # type: ignore[return-value]

    # -- bytes and files

    def to_bytes(self, *, compress: bool = True, level: int = 3) -> bytes:
        """The file format described in the module docstring. ``compress=False`` stores raw arrays."""
        n = self.n_records
        counts = np.diff(self._indptr).astype("<u4")
        arrays = [
            ("hashes", self._hashes.astype("|u1"), []),
            ("steps", self._steps.astype("<i8"), ["delta", "shuffle"]),
            ("record_counts", counts, ["shuffle"]),
            ("record_steps", self._rsteps.astype("<u4"), ["row-delta", "shuffle"]),
        ]
        cctx = zstandard.ZstdCompressor(level=level) if compress else None
        parts: list[bytes] = []
        meta = []
        offset = 0
        for name, a, filters in arrays:
            raw = _apply_filters(a, filters, self._indptr)
            blob = cctx.compress(raw) if cctx is not None else raw
            meta.append(
                {
                    "name": name,
                    "dtype": a.dtype.str,
                    "shape": list(a.shape),
                    "filters": filters,
                    "offset": offset,
                    "size": len(blob),
                }
            )
            parts.append(blob)
            offset += len(blob)
        payload = b"".join(parts)
        header = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "written_by": f"mlflow-amnesia {__version__}",
            "key_id": self._key_id,
            "record_hash": f"hmac-sha256/{HASH_BYTES}",
            "n_records": n,
            "n_steps": self.n_steps,
            "n_entries": self.n_entries,
            "compression": "zstd" if compress else "none",
            "arrays": meta,
            "payload_bytes": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
        }
        hb = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
        return _PREFIX.pack(MAGIC, len(hb), hashlib.sha256(hb).digest()) + hb + payload

    @classmethod
    def from_bytes(
        cls, data: bytes, key: bytes | None = None, *, name: str = "<bytes>", steps: tuple[int, int] | None = None
    ) -> RecordIndex:
        """Read an index written by :meth:`to_bytes`; ``name`` says where it came from in errors.

        ``key`` defaults to :func:`mlflow_amnesia.keys.load_key`. A key other than the one the
        index was built with is a :class:`RecordKeyError`, never an index that matches nothing.
        ``steps``: the inclusive step range of the segment the index belongs to, when known; an
        index listing more steps, or steps outside it, is an :class:`IndexFormatError`. Every
        size the file declares is bounded (by the file, each other and ``steps``) before anything
        is allocated, so a forged file costs at most a few times its own size in memory.
        """
        header, payload = _read_header(data, name)
        _layout(header, len(data), name, steps)  # counts and sizes first: a forged one fails here
        key = load_key() if key is None else check_key(key)
        if header["key_id"] != key_id(key):
            raise RecordKeyError(
                f"the record index {name} was built with key id {header['key_id']}, but the current key has "
                f"id {key_id(key)}: set MLFLOW_AMNESIA_KEY or restore the key file ({key_path()}) that was "
                "used to train this model; no other key can match record ids to it."
            )
        if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
            raise IndexFormatError(
                f"the record index {name} is corrupt (its arrays do not match their sha256): "
                "restore it from the model version's artifacts or rebuild it."
            )
        a = _decode_arrays(header, payload, name, len(data), steps)
        return cls(key, a["hashes"], a["steps"], a["record_indptr"], a["record_steps"])

    def save(self, url: str, *, compress: bool = True) -> None:
        """Write the index to ``url`` (any fsspec URL); atomic on a local file system."""
        _write(url, self.to_bytes(compress=compress))

    @classmethod
    def load(cls, url: str, key: bytes | None = None) -> RecordIndex:
        """Read the index at ``url``; see :meth:`from_bytes` for the checks it makes."""
        from .fs import url_to_fs

        fs, path = url_to_fs(url)
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            raise InputError(
                f"the record index {url} does not exist: was the model version's artifact removed?"
            ) from None
        except OSError as e:
            raise InputError(f"cannot read the record index {url}: {e}") from None
        return cls.from_bytes(data, key, name=url)


def index_counts(data: bytes, *, name: str = "<bytes>", steps: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """``(n_records, n_steps, n_entries)`` of an index file, from its header alone.

    Runs the checks of :meth:`RecordIndex.from_bytes` that need neither the key nor the payload
    (magic, header sha256, format version, counts, array table, size bounds, ``steps``), so a
    loader can refuse a damaged, forged or foreign index without decompressing anything.
    """
    header, _ = _read_header(data, name)
    return _layout(header, len(data), name, steps)[0]


# ----------------------------------------------------------------------------- encoding


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def _apply_filters(a: np.ndarray, filters: list[str], indptr: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a)
    for f in filters:
        if f == "delta":
            d = a.copy()
            d[1:] -= a[:-1]
            a = d
        elif f == "row-delta":
            d = a.copy()
            d[1:] -= a[:-1]
            starts = indptr[:-1][np.diff(indptr) > 0]
            d[starts] = a[starts]
            a = d
        elif f == "shuffle":
            a = a.view(np.uint8).reshape(-1, a.dtype.itemsize).T.copy()
        else:  # pragma: no cover - the writer only uses the names above
            raise ValueError(f)
    return a.tobytes()


def _read_header(data: bytes, name: str) -> tuple[dict, bytes | memoryview]:
    if len(data) < _PREFIX.size or data[:8] != MAGIC:
        raise IndexFormatError(f"{name} is not an mlflow-amnesia record index (it does not start with {MAGIC!r})")
    _, hlen, hsha = _PREFIX.unpack_from(data)
    if hlen > _MAX_HEADER or _PREFIX.size + hlen > len(data):
        raise IndexFormatError(f"the record index {name} is truncated or corrupt (header of {hlen} bytes)")
    hb = data[_PREFIX.size : _PREFIX.size + hlen]
    if hashlib.sha256(hb).digest() != hsha:
        raise IndexFormatError(f"the record index {name} is corrupt (its header does not match its sha256)")
    try:
        header = json.loads(hb)
        if not isinstance(header, dict):
            raise TypeError
        if header.get("format") != FORMAT_NAME:
            raise IndexFormatError(f"{name} is a {header.get('format')!r} file, not a {FORMAT_NAME}")
        version = header["version"]
        if (
            isinstance(version, bool)
            or not isinstance(version, int)
            or not isinstance(header["key_id"], str)
            or not isinstance(header["payload_sha256"], str)
        ):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):  # RecursionError: absurd nesting
        raise IndexFormatError(f"the record index {name} has an unreadable header") from None
    if version > FORMAT_VERSION:
        raise IndexFormatError(
            f"the record index {name} has format version {version}, but mlflow-amnesia {__version__} reads "
            f"versions up to {FORMAT_VERSION}: upgrade mlflow-amnesia."
        )
    payload = memoryview(data)[_PREFIX.size + hlen :]  # no copy of a possibly large payload
    if len(payload) != header.get("payload_bytes"):
        raise IndexFormatError(
            f"the record index {name} is truncated or corrupt: {len(payload)} payload bytes, "
            f"header says {header.get('payload_bytes')}"
        )
    return header, payload


#: What an index may decode to: _MAX_RATIO times its file, or _MIN_BUDGET bytes for a small one.
#: Keyed hashes do not compress and step positions take 1-2 bytes an entry after zstd: measured,
#: 1M records x 3 epochs (batch 128) decode to 1.5x their file, 100k x 30 epochs to 2.5x. Only
#: rows of consecutive steps compress further (full-batch training: 1,000 records x 2,000 steps
#: is 8 MB from 17 KB), and those stay below _MIN_BUDGET up to ~16,000 full-batch steps of 1,000.
_MAX_RATIO = 64
_MIN_BUDGET = 64 << 20


def _layout(
    header: dict, file_bytes: int, name: str, steps: tuple[int, int] | None = None
) -> tuple[tuple[int, int, int], dict[str, tuple], bool]:
    """Check the counts and the array table of a header against each other, the file and the
    segment's step range; return ``(n, S, E)``, each array's ``(dtype, shape, filters, offset, size)``
    and whether arrays are compressed. Nothing is allocated: every size is bounded first."""

    def bad(what: str) -> IndexFormatError:
        return IndexFormatError(f"the record index {name} is inconsistent: {what}; rebuild it")

    def count(key: str, limit: int) -> int:
        v = header.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= limit:
            raise bad(f"{key} is {v!r}, not an integer in 0..{limit}")
        return v

    n, S = count("n_records", 2**31 - 1), count("n_steps", 2**31 - 1)
    E = count("n_entries", n * S)  # a record is in each step at most once
    if header.get("compression") not in ("zstd", "none"):
        raise bad(f"compression {header.get('compression')!r} is not zstd or none")
    compressed = header["compression"] == "zstd"
    if steps is not None:
        first, last = steps
        if S > max(0, last - first + 1):
            raise IndexFormatError(
                f"the record index {name} lists {S} steps, but its segment holds {max(0, last - first + 1)} "
                f"(steps {first}..{last}): it belongs to another segment or model version; restore the version's "
                "own copy or rebuild it."
            )
    expect = {
        "hashes": ("|u1", [n, HASH_BYTES], []),
        "steps": ("<i8", [S], ["delta", "shuffle"]),
        "record_counts": ("<u4", [n], ["shuffle"]),
        "record_steps": ("<u4", [E], ["row-delta", "shuffle"]),
    }
    arrays = header.get("arrays")
    if not isinstance(arrays, list) or not all(isinstance(m, dict) for m in arrays):
        raise bad("the arrays table is not a list of objects")
    metas = {m.get("name"): m for m in arrays if isinstance(m.get("name"), str)}
    if len(arrays) != len(expect) or set(metas) != set(expect):
        raise bad(f"arrays {sorted(map(str, metas))}, expected {sorted(expect)}")
    payload = int(header["payload_bytes"])
    out: dict[str, tuple] = {}
    for nm, (dtype, shape, filters) in expect.items():
        m = metas[nm]
        if m.get("dtype") != dtype or m.get("shape") != shape or m.get("filters") != filters:
            got = f"{m.get('dtype')} {m.get('shape')} {m.get('filters')}"
            raise bad(f"array {nm} is {got}, expected {dtype} {shape} {filters}")
        off, size = m.get("offset"), m.get("size")
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in (off, size)) or off + size > payload:
            raise bad(f"array {nm} lies outside the payload (offset {off!r}, size {size!r})")
        out[nm] = (dtype, shape, filters, off, size)
    decoded = HASH_BYTES * n + 8 * S + 4 * n + 4 * E
    budget = max(_MIN_BUDGET, _MAX_RATIO * file_bytes)
    if decoded > budget:
        raise IndexFormatError(
            f"the record index {name} claims {decoded / 2**20:,.1f} MiB of arrays ({n} records, {S} steps, {E} "
            f"entries) in a file of {file_bytes / 2**10:,.1f} KiB, more than any real index decodes to (at most "
            f"{_MAX_RATIO} times its file, or {_MIN_BUDGET >> 20} MiB): the file is forged or corrupt; restore it "
            "from the model version's artifacts or rebuild it."
        )
    return (n, S, E), out, compressed


def _decode_arrays(
    header: dict, payload: bytes | memoryview, name: str, file_bytes: int, steps: tuple[int, int] | None = None
) -> dict[str, np.ndarray]:
    def bad(what: str) -> IndexFormatError:
        return IndexFormatError(f"the record index {name} is inconsistent: {what}; rebuild it")

    (n, S, E), layout, compressed = _layout(header, file_bytes, name, steps)
    dctx = zstandard.ZstdDecompressor()
    raw: dict[str, np.ndarray] = {}
    for nm in ("hashes", "steps", "record_counts", "record_steps"):
        dtype, shape, filters, off, size = layout[nm]
        blob = payload[off : off + size]
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if compressed:
            try:  # the frame's declared size is checked before the decompressor allocates it
                declared = zstandard.frame_content_size(blob)
                if declared != nbytes:
                    what = "no content size" if declared < 0 else f"{declared} bytes"
                    raise bad(f"array {nm}'s zstd frame declares {what}, the header {nbytes} bytes")
                blob = dctx.decompress(blob, max_output_size=nbytes, allow_extra_data=False) if nbytes else b""
            except zstandard.ZstdError as e:
                raise bad(f"array {nm} does not decompress ({e})") from None
        if len(blob) != nbytes:
            raise bad(f"array {nm} holds {len(blob)} bytes, expected {nbytes}")
        a = np.frombuffer(blob, dtype=np.uint8)
        if "shuffle" in filters:
            item = np.dtype(dtype).itemsize
            a = a.reshape(item, -1).T.copy()
        raw[nm] = a.view(dtype).reshape(shape)
        if nm == "record_counts":  # before the entries are decoded: their count follows from these
            if n and int(raw[nm].max()) > S:
                raise bad("a record lists more steps than the index has")
            if int(raw[nm].sum(dtype=np.int64)) != E:
                raise bad(f"steps per record sum to {int(raw[nm].sum(dtype=np.int64))}, expected {E} entries")

    hashes = raw["hashes"].copy()
    steps_arr = np.cumsum(raw["steps"].astype(np.int64))
    counts = raw["record_counts"].astype(np.int64)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    record_steps = _undo_row_delta(raw.pop("record_steps"), indptr, S, bad)
    if S and (steps_arr[0] < 0 or (len(steps_arr) > 1 and not (np.diff(steps_arr) > 0).all())):
        raise bad("the step numbers are not strictly increasing")
    if steps is not None and S and not (steps[0] <= steps_arr[0] and steps_arr[-1] <= steps[1]):
        out = int(steps_arr[0]) if steps_arr[0] < steps[0] else int(steps_arr[-1])
        raise IndexFormatError(
            f"the record index {name} lists step {out}, outside its segment's steps {steps[0]}..{steps[1]}: it "
            "belongs to another segment or model version; restore the version's own copy or rebuild it."
        )
    hi, lo = _halves(hashes)
    if n > 1 and not ((hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] > lo[:-1]))).all():
        raise bad("the record hashes are not sorted and unique")
    return {"hashes": hashes, "steps": steps_arr, "record_indptr": indptr, "record_steps": record_steps}


def _undo_row_delta(d: np.ndarray, indptr: np.ndarray, S: int, bad) -> np.ndarray:
    """Positions from row deltas, checking each row is strictly increasing and below ``S``.

    Works through row-aligned chunks of about ``_BLOCK * 4`` entries, so the int64 running sums
    never take more than a bounded amount of memory.
    """
    E, n = len(d), len(indptr) - 1
    out = np.empty(E, dtype=np.int32)
    cuts = np.searchsorted(indptr, np.arange(0, E, 4 * _BLOCK), side="right") - 1
    row_bounds = np.unique(np.concatenate([cuts, [n]]))
    for ra, rb in zip(row_bounds[:-1], row_bounds[1:]):
        a, b = int(indptr[ra]), int(indptr[rb])
        if a == b:
            continue
        dc = d[a:b]
        starts = indptr[ra:rb][indptr[ra + 1 : rb + 1] > indptr[ra:rb]] - a  # non-empty rows
        zeros = np.flatnonzero(dc == 0)
        if len(zeros) and not np.isin(zeros, starts).all():
            raise bad("a record lists the same step twice")
        c = np.cumsum(dc, dtype=np.int64)
        base = np.where(starts > 0, c[np.maximum(starts - 1, 0)], 0)
        c -= np.repeat(base, np.diff(np.append(starts, b - a)))  # each row: its running sum since it began
        if c.max() >= S:
            raise bad("a record refers to a step position outside the step table")
        out[a:b] = c
    return out


def _write(url: str, data: bytes) -> None:
    """Write the index whole (temp + fsync + rename + directory fsync locally, one PUT on object stores)."""
    from .fs import write_url

    write_url(url, data)
