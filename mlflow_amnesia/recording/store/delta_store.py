"""DeltaStore: every optimizer step's state delta, compressed, on any fsspec URL.

Layout under the URL (docs/ARCHITECTURE.md)::

    manifest.json            format version, codec, tensor layout, parts, meta, encryption, step table
    chunks/<step>.<part>.zst one chunk per part of a step: a small header + one zstd frame per tensor,
                             sealed with AES-256-GCM under a key derived from the record key
    chunks/<step>.json       commit marker, written after all of the step's chunks

Why this shape:

* **Append-only, background work.** ``append`` copies the delta and returns; byte-shuffle,
  quantisation, zstd and the writes run on a thread pool (zstd and numpy release the GIL).
  At most ``max_pending`` steps are in flight, so memory stays bounded when storage is slow.
  A failure in the background is raised by the next ``append``/``flush``/``close``.
* **Encoded append.** A block codec's Recorder quantises on the model's device and appends
  :class:`~.codecs.Encoded` payloads (codes and block scales): ``append`` copies them into one
  of ``max_pending`` reused payload buffers and the threads only compress, seal, hash and write
  (the same bytes as appending the float32 deltas the codec reconstructs).
* **Parts.** The layout's tensors are cut, at tensor boundaries, into parts of at most
  ``part_bytes`` raw float32 (16 MiB by default; a larger tensor is a part of its own). Each
  part is one chunk file, so several threads compress one step at once and a rollback reads
  parts in parallel. The partition is fixed per store and recorded in the manifest.
* **Crash safety.** Step ``t``'s marker is written after its chunks (fsync'ed on local disk),
  and markers are written in step order, so a killed writer leaves every step up to some ``t``
  committed and, after it, only debris: chunks without a marker, which ``open`` ignores and
  ``open(mode="a")`` deletes. The manifest is replaced whole (temp file + rename locally; one
  PUT on object stores); markers are folded into it on ``flush``/``close`` and from time to time.
* **Integrity.** Every chunk's size and digest (BLAKE3 in stores created since format 4, sha256
  before: :func:`.manifest.digest_name`) are in the step table; a mismatch is a
  :class:`ChunkCorruptedError` naming the step and the file. ``verify`` checks the digest; reads
  check it too, except a sealed chunk whose entry records its AES-GCM ``tag`` (stores written
  since the tag was added): a read checks size and tag and the decryption authenticates the
  bytes under the key (bound to store, step and part), which is the same file exactly without
  hashing it.
* **Confidentiality (format 2).** A store created with the record key seals every chunk
  (:mod:`mlflow_amnesia.crypto`: a data key from HKDF of the record key and the store's salt, a
  random nonce per chunk, the associated data binding the chunk to the store, step and part).
  Size and digest are those of the stored ciphertext, so ``verify`` and ``purge`` need no key;
  reading a delta does. ``key=None`` writes a format-1 store in clear, which anyone who can read
  the files can use to rebuild every intermediate model: only for data that is not personal.

One writer per store at a time (nothing locks an object store). Readers may open a store that
is being written; they see the steps committed when they opened it.

This module is the facade (writer threads, commit order, the read and sum scheduler, verify and
purge); the manifest's format and checks are :mod:`.manifest`, a chunk file's bytes
:mod:`.chunk`, file I/O :mod:`mlflow_amnesia.recording.fs`.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import posixpath
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mlflow_amnesia.errors import ChunkCorruptedError, InputError, PurgedStepsError, StoreError, UnknownStepsError
from mlflow_amnesia.errors import fmt_steps as _fmt_steps
from mlflow_amnesia.progress import Progress
from mlflow_amnesia.recording.fs import TMP_MARK, is_local, url_to_fs, write_file
from mlflow_amnesia.recording.store import fused
from mlflow_amnesia.recording.store.chunk import (
    CHUNK_RE,
    MARKER_RE,
    chunk_file,
    chunk_size,
    marker_file,
    pack_chunk_into,
    seal_chunk_into,
    sealed_size,
    unpack_chunk,
    unseal_chunk,
)
from mlflow_amnesia.recording.store.codecs import DEFAULT_CODEC, Codec, Encoded, _compressor, get_codec
from mlflow_amnesia.recording.store.manifest import (
    CHUNKS,
    DEFAULT_PART_BYTES,
    DIGEST,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    StepEntry,
    TensorSpec,
    check_chunks,
    check_meta,
    check_step,
    chunk_digest,
    dumps,
    manifest_obj,
    now,
    parse_manifest,
    partition,
    read_manifest,
)

__all__ = [
    "DeltaStore",
    "FORMAT",
    "FORMAT_VERSION",
    "PayloadSlot",
    "PurgedStepsError",
    "StoreProblem",
    "StoreSize",
    "StoreStats",
    "TensorSpec",
    "UnknownStepsError",
]

# Fold markers into the manifest once this many are pending and at least half as many as the
# manifest already holds: a crashed writer's reopen reads few markers, rewrites stay O(total).
_CONSOLIDATE_MIN = 1000
# sum(): a work item adds up to _GROUP_MAX steps of one part slice by slice (the float64
# accumulator is streamed once per group, not once per step), holding <= ~_GROUP_BYTES. Eight
# steps halve the accumulators' memory traffic of four (the rollback's largest cost after zstd).
_GROUP_MAX = 8
_GROUP_BYTES = 96 << 20


_LEFTOVER = (
    "the step was purged but this chunk file is still on disk, holding its delta (a purge was stopped before "
    "deleting it): re-run the same `mlflow-amnesia purge` command to finish the purge"
)


@dataclasses.dataclass
class StoreStats:
    """I/O counters of one ``DeltaStore`` object (thread-safe); tests count reads with them."""

    chunks_read: int = 0
    bytes_read: int = 0
    chunks_written: int = 0
    bytes_written: int = 0
    #: CPU seconds of the store's threads writing chunks (encode or copy, compress, seal, hash, write)
    #: and committing steps; ``append``'s own copy on the caller's thread is not counted.
    write_cpu_s: float = 0.0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def _add(self, **counts: float) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def reset(self) -> None:
        with self._lock:
            self.chunks_read = self.bytes_read = self.chunks_written = self.bytes_written = 0
            self.write_cpu_s = 0.0


@dataclasses.dataclass(frozen=True)
class StoreProblem:
    """One finding of :meth:`DeltaStore.verify`."""

    step: int
    file: str
    problem: str

    def __str__(self) -> str:
        return f"step {self.step}: {self.file}: {self.problem}"


@dataclasses.dataclass(frozen=True)
class StoreSize:
    """Bytes of some steps: as stored (compressed) and as raw float32."""

    stored: int
    raw: int
    chunks: int
    steps: int


class _Job:
    """A step in flight: its part futures, committed (marker written) in append order."""

    __slots__ = ("step", "meta", "futures", "buffer")

    def __init__(self, step: int, meta: dict[str, Any], futures: list[cf.Future], buffer: int | None = None):
        self.step, self.meta, self.futures, self.buffer = step, meta, futures, buffer


class PayloadSlot:
    """A pooled payload buffer reserved for one append (:meth:`DeltaStore.reserve_payload`).

    ``buffer`` (uint8) is the whole step's uncompressed payload; tensor ``name``'s code bytes go
    at ``buffer[code_offsets[name]:]`` (``codec.encoded_sizes`` of its size). Codes written there
    (``codec.quantize_into`` on a view) are not copied again by ``append(..., slot=...)``; the
    block scales always are (they are stored as byte planes ahead of the codes).
    """

    __slots__ = ("buffer", "code_offsets", "_store", "_index", "_state")

    def __init__(self, store: DeltaStore, index: int, buffer: np.ndarray, code_offsets: Mapping[str, int]) -> None:
        self.buffer, self.code_offsets = buffer, code_offsets
        self._store, self._index, self._state = store, index, "reserved"  # -> "claimed" -> "submitted"


_tls = threading.local()
TAG_BYTES = 16  # AES-GCM's tag, the last bytes of a sealed chunk (mlflow_amnesia.crypto.TAG_BYTES)


def _scratch(name: str, size: int) -> bytearray:
    """This thread's reused buffer ``name`` of at least ``size`` bytes (grown, never shrunk):
    the store's threads pack, seal and open chunks without fresh pages per chunk."""
    buf: bytearray | None = getattr(_tls, name, None)
    if buf is None or len(buf) < size:
        buf = bytearray(max(size, 2 * len(buf) if buf is not None else size))
        setattr(_tls, name, buf)
    return buf


def _check_encoded(name: str, value: Encoded, spec: TensorSpec, step: int, codec: Codec) -> None:
    """An encoded payload fits the tensor (sizes and dtypes) before any buffer is touched."""
    if not codec.encodes_on_device:
        raise InputError(
            f"step {step}: delta {name!r} is an encoded payload, but the store's codec {codec.name!r} takes "
            "float32 deltas; append the float32 values"
        )
    code_bytes, nb = codec.encoded_sizes(spec.numel)
    codes, scales = np.asarray(value.codes), np.asarray(value.scales)
    if codes.size != code_bytes or codes.dtype.itemsize != 1 or scales.size != nb or scales.dtype != np.float32:
        raise InputError(
            f"step {step}: encoded delta {name!r} holds {codes.size} code bytes ({codes.dtype}) and {scales.size} "
            f"scales ({scales.dtype}); codec {codec.name!r} needs {code_bytes} and {nb} float32 for shape "
            f"{list(spec.shape)}"
        )


def _to_f32(name: str, value: Any, spec: TensorSpec, step: int) -> np.ndarray:
    """A private float32 copy of one delta tensor, flattened (the caller may reuse its buffers)."""
    if isinstance(value, torch.Tensor):
        arr = value.detach().to(device="cpu", dtype=torch.float32, copy=True).numpy()
    elif isinstance(value, np.ndarray):
        arr = np.array(value, dtype=np.float32, order="C", copy=True)
    else:
        raise InputError(
            f"step {step}: delta {name!r} must be a numpy array or torch tensor, got {type(value).__name__}"
        )
    if tuple(arr.shape) != spec.shape:
        raise InputError(
            f"step {step}: delta {name!r} has shape {tuple(arr.shape)}, the store's layout says {spec.shape}"
        )
    return arr.reshape(-1)


class DeltaStore:
    """Append-only store of per-step state deltas; random access and bounded-memory sums.

    Create with :meth:`create`, reopen with :meth:`open`. Not thread-safe: one thread calls
    the methods (the store runs its own threads inside).
    """

    # The state of an open store, set by create/open (_new) and the manifest (_load_manifest).
    url: str
    stats: StoreStats
    _fs: Any
    _root: str
    _local: bool
    _threads: int
    _max_pending: int
    _writable: bool
    _steps: dict[int, StepEntry]
    _n_in_manifest: int
    _pending_markers: list[int]
    _pool: cf.ThreadPoolExecutor | None
    _committer: threading.Thread | None
    _closed: bool
    _error: BaseException | None
    _error_step: int | None
    _last_step: int
    _lock: threading.Lock
    _encryption: dict[str, str] | None
    _cipher: Any
    _codec: Codec
    _layout: list[TensorSpec]
    _parts: list[tuple[int, int]]
    _part_bytes: int
    _meta: dict[str, Any]
    _created: str
    _digest: str
    _slots: threading.BoundedSemaphore
    _jobs: queue.Queue[_Job | None]

    # ----------------------------------------------------------------- construction

    def __init__(self, *, _private: object) -> None:
        if _private is not _TOKEN:
            raise TypeError("use DeltaStore.create(url, ...) or DeltaStore.open(url, ...)")

    @classmethod
    def create(
        cls,
        url: str,
        *,
        layout: Sequence[Mapping[str, Any] | TensorSpec],
        codec: str | Codec = DEFAULT_CODEC,
        meta: Mapping[str, Any] | None = None,
        threads: int = 2,
        max_pending: int = 4,
        part_bytes: int = DEFAULT_PART_BYTES,
        storage_options: Mapping[str, Any] | None = None,
        key: bytes | None,
    ) -> DeltaStore:
        """A new, empty store at ``url`` open for appending; StoreError if one is there already.

        ``key``: the record key (:func:`mlflow_amnesia.keys.load_key`); every chunk is sealed under
        it (format 2) and reading a delta needs it. It is required on purpose: ``key=None`` must be
        spelt out and writes a format-1 store in clear, readable by anyone with the files.
        """
        specs = [TensorSpec.parse(t) for t in layout]
        if not specs:
            raise InputError("layout is empty: a store records at least one tensor")
        names = [t.name for t in specs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InputError(f"layout names must be unique; repeated: {', '.join(dup)}")
        if isinstance(part_bytes, bool) or not isinstance(part_bytes, int) or part_bytes < 1:
            raise InputError(f"part_bytes must be a positive int, got {part_bytes!r}")
        codec_obj = get_codec(codec)
        self = cls._new(url, threads=threads, max_pending=max_pending, storage_options=storage_options, writable=True)
        if self._fs.exists(self._path(MANIFEST)):
            raise StoreError(
                f"a delta store already exists at {url}; open it with DeltaStore.open(url, mode='a') to "
                "append, or choose a new URL"
            )
        listing = self._list_chunks()
        if listing:
            raise StoreError(
                f"{self._path(CHUNKS)} already holds {len(listing)} files but there is no manifest; "
                "remove the directory or choose a new URL"
            )
        self._layout = specs
        self._codec = codec_obj
        self._parts = partition(specs, part_bytes)
        self._part_bytes = part_bytes
        self._meta = check_meta(meta, "store meta")
        self._created = now()
        self._digest = DIGEST
        if key is not None:
            from mlflow_amnesia import crypto
            from mlflow_amnesia.keys import check_key, key_id

            key = check_key(key)
            salt = crypto.new_salt()
            self._encryption = {"scheme": crypto.SCHEME, "salt": salt.hex(), "key_id": key_id(key)}
            self._cipher = crypto.ChunkCipher(key, salt)
        if self._local:  # object stores have no directories (and s3fs's makedirs would create a bucket)
            self._fs.makedirs(self._path(CHUNKS), exist_ok=True)
        try:
            self._write_manifest()
        except (FileNotFoundError, PermissionError) as e:
            raise StoreError(
                f"cannot create a delta store at {url}: {e!r}. Check that the bucket or directory exists and "
                "is writable with these credentials (the store never creates buckets)."
            ) from e
        self._start_writer()
        return self

    @classmethod
    def open(
        cls,
        url: str,
        *,
        mode: str = "r",
        manifest: bytes | str | Mapping[str, Any] | None = None,
        threads: int = 2,
        max_pending: int = 4,
        storage_options: Mapping[str, Any] | None = None,
        key: bytes | None = None,
    ) -> DeltaStore:
        """Open the store at ``url``: ``mode="r"`` to read, ``"a"`` to clean debris and append.

        ``manifest``: a copy of :meth:`manifest_bytes` (bytes, JSON text or dict), e.g. the
        artifact of a model version. The store then reads chunks from ``url`` but takes the step
        table from the copy (read-only): exactly the steps the copy lists, no newer ones.

        ``key``: the record key the store was sealed with; reading or appending deltas of a
        format-2 store needs it (a :class:`RecordKeyError` otherwise), listing steps, sizes,
        ``verify`` (size and digest) and ``purge`` do not. Another key is refused here, naming
        both key ids. A format-1 store (in clear) ignores it.
        """
        if mode not in ("r", "a"):
            raise InputError(f"mode must be 'r' (read) or 'a' (append), got {mode!r}")
        if manifest is not None and mode != "r":
            raise InputError("a store opened with a copied manifest is read-only: use mode='r'")
        self = cls._new(
            url, threads=threads, max_pending=max_pending, storage_options=storage_options, writable=mode == "a"
        )
        if manifest is not None:
            self._load_manifest(parse_manifest(manifest, "the manifest passed to DeltaStore.open"))
            self._use_key(key)
            return self
        listing = self._list_chunks()  # list before reading the manifest: see _fold_markers
        try:
            raw = self._fs.cat_file(self._path(MANIFEST))
        except FileNotFoundError:
            raise StoreError(
                f"no delta store at {url}: {MANIFEST} is missing. Check the URL (create one with DeltaStore.create)"
            ) from None
        self._load_manifest(parse_manifest(raw, self._path(MANIFEST)))
        self._use_key(key)
        debris = self._fold_markers(listing)
        if mode == "a":
            self._clean(debris)
            self._write_manifest()
            self._drop_markers(listing)
            self._start_writer()
        return self

    @classmethod
    def _new(
        cls, url: str, *, threads: int, max_pending: int, storage_options: Mapping[str, Any] | None, writable: bool
    ) -> DeltaStore:
        for name, v in (("threads", threads), ("max_pending", max_pending)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be a positive int, got {v!r}")
        self = cls(_private=_TOKEN)
        self.url = str(url)
        try:
            self._fs, root = url_to_fs(self.url, storage_options)
        except (ImportError, ValueError) as e:
            raise StoreError(f"cannot open {url}: {e}. Install the fsspec package for this URL scheme") from e
        self._root = root.rstrip("/") or "/"
        self._local = is_local(self._fs)
        self._threads = threads
        self._max_pending = max_pending
        self._writable = writable
        self._steps = {}
        self._n_in_manifest = 0
        self._pending_markers = []
        self.stats = StoreStats()
        self._pool = None
        self._committer = None
        self._closed = False
        self._error = None
        self._error_step = None
        self._last_step = -1
        self._lock = threading.Lock()  # guards _steps, _pending_markers, _error against the committer
        self._encryption = None  # the manifest's "encryption" (format 2)
        self._cipher = None  # crypto.ChunkCipher once the key is known
        return self

    def _use_key(self, key: bytes | None) -> None:
        """Set up decryption with ``key`` for a sealed store; RecordKeyError for another key."""
        if self._encryption is None or key is None:
            return
        from mlflow_amnesia import crypto
        from mlflow_amnesia.keys import check_key, key_id

        key = check_key(key)
        if key_id(key) != self._encryption["key_id"]:
            raise crypto.wrong_key(f"the delta store {self.url}", self._encryption["key_id"], key)
        self._cipher = crypto.ChunkCipher(key, bytes.fromhex(self._encryption["salt"]))

    def _need_key(self) -> None:
        """RecordKeyError unless the deltas can be decoded (a store in clear, or the key given)."""
        if self._encryption is not None and self._cipher is None:
            from mlflow_amnesia import crypto

            raise crypto.wrong_key(f"the delta store {self.url}", self._encryption["key_id"], None)

    # ------------------------------------------------------------------ properties

    @property
    def steps(self) -> list[int]:
        """Committed steps whose deltas can be read (purged ones excluded), ascending."""
        with self._lock:
            return sorted(s for s, e in self._steps.items() if not e.purged)

    @property
    def purged_steps(self) -> list[int]:
        with self._lock:
            return sorted(s for s, e in self._steps.items() if e.purged)

    @property
    def layout(self) -> list[dict[str, Any]]:
        """``[{"name", "shape", "dtype"}]`` in recording order."""
        return [t.to_json() for t in self._layout]

    @property
    def codec(self) -> Codec:
        return self._codec

    @property
    def accepts_encoded(self) -> bool:
        """Whether ``append`` takes :class:`~.codecs.Encoded` payloads (the codec is a block codec)."""
        return self._codec.encodes_on_device

    @property
    def code_offsets(self) -> Mapping[str, int]:
        """Where each tensor's code bytes start in a :meth:`reserve_payload` buffer (block codecs,
        a store open for appending; else empty)."""
        return getattr(self, "_code_offsets", {})

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._meta))

    @property
    def encrypted(self) -> bool:
        """Whether the chunks are sealed under a record key (format 2)."""
        return self._encryption is not None

    @property
    def key_id(self) -> str | None:
        """Id of the record key the chunks are sealed with (None for a store in clear)."""
        return None if self._encryption is None else self._encryption["key_id"]

    @property
    def parts(self) -> list[tuple[int, int]]:
        """The partition of the layout into chunks: [start, stop) tensor index ranges."""
        return list(self._parts)

    @property
    def n_values(self) -> int:
        """Values (parameters and float buffers) per step."""
        return sum(t.numel for t in self._layout)

    def step_meta(self, step: int) -> dict[str, Any]:
        """The meta recorded with ``step`` (kept for purged steps too)."""
        return json.loads(json.dumps(self._entry(step, allow_purged=True).meta))

    def chunk_files(self, step: int) -> list[str]:
        """Paths (relative to the URL) of ``step``'s chunk files."""
        return [c["file"] for c in self._entry(step).chunks]

    def size(self, steps: Iterable[int] | None = None) -> StoreSize:
        """Stored and raw bytes of ``steps`` (default: every readable step)."""
        chosen = self.steps if steps is None else sorted(set(int(s) for s in steps))
        entries = self._entries(chosen)
        chunks = [c for e in entries for c in e.chunks]
        return StoreSize(
            stored=sum(c["bytes"] for c in chunks),
            raw=sum(c["raw_bytes"] for c in chunks),
            chunks=len(chunks),
            steps=len(entries),
        )

    # ------------------------------------------------------------------ writing

    def append(
        self,
        step: int,
        delta: Mapping[str, np.ndarray | torch.Tensor | Encoded],
        meta: Mapping[str, Any] | None = None,
        *,
        slot: PayloadSlot | None = None,
    ) -> None:
        """Record ``delta`` (every layout tensor, float32 or convertible) as ``step``; returns fast.

        With a block codec (``int8``, ``int4``: :attr:`accepts_encoded`) a tensor may instead be
        the codec's :class:`~.codecs.Encoded` payload (``codec.quantize_into``): it is copied into a
        reused buffer and only compressed, sealed, hashed and written; the stored bytes are those
        of appending ``codec.quantize`` of the same values as float32. With ``slot``
        (:meth:`reserve_payload`) that buffer is the slot's, and codes already written in place
        are not copied; the store owns the slot from this call on, whether it succeeds or not.

        Steps must increase strictly. The delta is copied, so the caller may reuse its buffers.
        Blocks only while ``max_pending`` steps are still being compressed and written.
        """
        if slot is None:
            self._append(step, delta, meta, None)
            return
        if slot._store is not self or slot._state != "reserved":
            what = "another store's" if slot._store is not self else f"an already {slot._state}"
            raise InputError(f"step {step}: append was given {what} payload slot; reserve one per step")
        slot._state = "claimed"
        try:
            self._append(step, delta, meta, slot)
        finally:
            if slot._state == "claimed":  # refused before its buffer was handed to the writer threads
                self._release_slot(slot._index)

    def reserve_payload(self) -> PayloadSlot:
        """Reserve the next step's pooled payload buffer (block codecs: :attr:`accepts_encoded`).

        For a caller that quantises straight into the store's buffer (the Recorder on CPU): write
        each tensor's codes at ``slot.buffer[slot.code_offsets[name]:]``, then
        ``append(step, {name: Encoded(those codes, scales)}, slot=slot)``, which skips copying
        them. Blocks while ``max_pending`` steps are in flight, as :meth:`append` does; give a slot
        that will not be appended back with :meth:`release_payload`.
        """
        self._check_writable()
        self._raise_background_error()
        if not self.accepts_encoded:
            raise InputError(
                f"the delta store {self.url} uses codec {self._codec.name!r}, which takes float32 deltas, "
                "not payloads: append the float32 values"
            )
        while not self._slots.acquire(timeout=0.5):
            self._raise_background_error()
        try:
            index = self._take_buffer()
        except BaseException:
            self._slots.release()
            raise
        return PayloadSlot(self, index, self._buffers[index], self._code_offsets)

    def release_payload(self, slot: PayloadSlot) -> None:
        """Give back a reserved slot that will not be appended (a no-op once ``append`` took it)."""
        if slot._store is self and slot._state == "reserved":
            slot._state = "released"
            self._release_slot(slot._index)

    def _release_slot(self, index: int) -> None:
        self._give_buffer(index)
        self._slots.release()

    def _append(
        self, step: int, delta: Mapping[str, Any], meta: Mapping[str, Any] | None, slot: PayloadSlot | None
    ) -> None:
        self._check_writable()
        self._raise_background_error()
        self._need_key()  # never a chunk in clear in a sealed store
        step = check_step(step)
        if step <= self._last_step:
            what = (
                "was already recorded"
                if step in self._steps or step == self._last_step
                else "is not after the last step"
            )
            raise InputError(
                f"step {step} {what} (last step: {self._last_step}); steps must increase strictly, "
                "so give each optimizer step a new, larger number"
            )
        if not isinstance(delta, Mapping):
            raise InputError(f"step {step}: delta must be a mapping name -> tensor, got {type(delta).__name__}")
        names = {t.name for t in self._layout}
        missing = [t.name for t in self._layout if t.name not in delta]
        extra = [k for k in delta if k not in names]
        if missing or extra:
            raise InputError(
                f"step {step}: delta does not match the store's layout"
                + (f"; missing: {', '.join(missing[:10])}" if missing else "")
                + (f"; not in layout: {', '.join(map(str, extra[:10]))}" if extra else "")
            )
        step_meta = check_meta(meta, f"step {step} meta")
        encoded = [isinstance(delta[t.name], Encoded) for t in self._layout]
        if any(encoded) or slot is not None:
            for t in self._layout:
                v = delta[t.name]
                if isinstance(v, Encoded):
                    _check_encoded(t.name, v, t, step, self._codec)
            self._append_encoded(step, delta, step_meta, slot)
            return
        arrays = [_to_f32(t.name, delta[t.name], t, step) for t in self._layout]
        while not self._slots.acquire(timeout=0.5):
            self._raise_background_error()
        self._last_step = step
        try:
            pool = self._ensure_pool()
            futures = [pool.submit(self._write_part, step, p, arrays[a:b]) for p, (a, b) in enumerate(self._parts)]
        except BaseException:
            self._slots.release()
            raise
        self._jobs.put(_Job(step, step_meta, futures))

    def _append_encoded(
        self, step: int, delta: Mapping[str, Any], step_meta: dict[str, Any], reserved: PayloadSlot | None = None
    ) -> None:
        """Copy a step's payloads into a reused buffer (floats are encoded here), then compress in the pool.

        ``reserved``: the caller's slot (``append`` gives it back if this raises)."""
        if reserved is None:
            while not self._slots.acquire(timeout=0.5):
                self._raise_background_error()
        slot = None
        try:
            slot = self._take_buffer() if reserved is None else reserved._index
            buf, offs = self._buffers[slot], self._payload_offsets
            for i, t in enumerate(self._layout):
                v, out = delta[t.name], buf[offs[i] : offs[i + 1]]
                if isinstance(v, Encoded):
                    self._codec.write_encoded(v, t.numel, out)
                else:  # a float tensor beside encoded ones: encode it here
                    out[...] = np.frombuffer(self._codec._pack(_to_f32(t.name, v, t, step)), dtype=np.uint8)
            self._last_step = step
            pool = self._ensure_pool()
            futures = [
                pool.submit(self._write_payload_part, step, p, buf[offs[a] : offs[b]], offs[a])
                for p, (a, b) in enumerate(self._parts)
            ]
        except BaseException as e:
            if reserved is None:
                if slot is not None:
                    self._give_buffer(slot)
                self._slots.release()
            if isinstance(e, InputError) and not str(e).startswith(f"step {step}"):
                raise InputError(f"step {step}: {e}") from e
            raise
        if reserved is not None:
            reserved._state = "submitted"  # the buffer is the writer threads' until the step commits
        self._jobs.put(_Job(step, step_meta, futures, slot))

    def _take_buffer(self) -> int:
        """A free payload buffer (one of max_pending; a slot is held, so one is free)."""
        with self._lock:
            if self._free_buffers:
                return self._free_buffers.pop()
            self._buffers.append(np.empty(self._payload_offsets[-1], dtype=np.uint8))
            return len(self._buffers) - 1

    def _give_buffer(self, slot: int) -> None:
        with self._lock:
            self._free_buffers.append(slot)

    def flush(self) -> None:
        """Wait until every appended step is committed, then fold markers into the manifest."""
        self._check_writable()
        self._jobs.join()
        self._raise_background_error()
        with self._lock:
            pending = bool(self._pending_markers)
        if pending:
            self._consolidate()

    def close(self) -> None:
        """Flush, stop the threads. Idempotent; raises a background error once."""
        if self._closed:
            return
        try:
            if self._writable and self._committer is not None:
                try:
                    self.flush()
                finally:
                    self._jobs.put(None)
                    self._committer.join()
        finally:
            self._closed = True
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def __enter__(self) -> DeltaStore:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close()
            return
        try:  # do not hide the error that is already propagating
            self.close()
        except Exception:
            pass

    def __del__(self) -> None:  # a forgotten close() must not leave threads blocked forever
        try:
            if not getattr(self, "_closed", True) and getattr(self, "_committer", None) is not None:
                self._jobs.put(None)
        except Exception:
            pass

    def _start_writer(self) -> None:
        self._last_step = max(self._steps, default=-1)
        offs = [0]
        for t in self._layout:
            offs.append(offs[-1] + self._codec.payload_size(t.numel))
        self._payload_offsets = offs
        # where each tensor's code bytes sit in a payload buffer (block codecs: after the scales)
        self._code_offsets = (
            {t.name: offs[i + 1] - self._codec.encoded_sizes(t.numel)[0] for i, t in enumerate(self._layout)}
            if self.accepts_encoded
            else {}
        )
        self._buffers: list[np.ndarray] = []
        self._free_buffers: list[int] = []
        self._slots = threading.BoundedSemaphore(self._max_pending)
        self._jobs = queue.Queue()
        self._ensure_pool()
        self._committer = threading.Thread(target=self._commit_loop, name="delta-store-commit", daemon=True)
        self._committer.start()

    def _ensure_pool(self) -> cf.ThreadPoolExecutor:
        if self._closed:
            raise StoreError(f"the delta store {self.url} is closed; open it again")
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(self._threads, thread_name_prefix="delta-store")
        return self._pool

    def _check_writable(self) -> None:
        if self._closed:
            raise StoreError(f"the delta store {self.url} is closed; open it with mode='a' to append")
        if not self._writable or self._committer is None:
            raise StoreError(f"the delta store {self.url} is open read-only; open it with mode='a' to change it")

    def _raise_background_error(self) -> None:
        with self._lock:
            err, step = self._error, self._error_step
        if err is not None:
            raise StoreError(
                f"writing step {step} to the delta store {self.url} failed: {err}. Steps from {step} on "
                "were not committed; fix the cause (disk space, permissions), then re-run the `mlflow-amnesia "
                "train` or `forget` command that was recording (it starts afresh), or from Python reopen the "
                "store with mode='a' and append from the last committed step"
            ) from err

    def _write_part(self, step: int, part: int, arrays: list[np.ndarray]) -> dict[str, Any]:
        """Encode one part of a step and write its chunk file (pool thread)."""
        c0 = time.thread_time()
        frames = [self._codec.encode(a) for a in arrays]
        try:
            return self._write_frames(step, part, frames, 4 * sum(a.size for a in arrays))
        finally:
            self.stats._add(write_cpu_s=time.thread_time() - c0)

    def _write_frames(self, step: int, part: int, frames: list[bytes], raw_bytes: int) -> dict[str, Any]:
        """Pack (and seal) a part's frames into this thread's reused buffers, write, hash."""
        size = chunk_size(frames)
        data = memoryview(_scratch("plain", size))[:size]
        pack_chunk_into(frames, data)
        if self._cipher is not None:
            total = sealed_size(size)
            sealed = memoryview(_scratch("sealed", total))[:total]
            seal_chunk_into(self._cipher, step, part, data, sealed)
            data = sealed
        rel = chunk_file(step, part)
        self._put(self._path(rel), data, atomic=False)
        self.stats._add(chunks_written=1, bytes_written=len(data))
        entry = {
            "file": rel,
            "bytes": len(data),
            "raw_bytes": raw_bytes,
            self._digest: chunk_digest(self._digest, data),
        }
        if self._cipher is not None:  # reads check it (and authenticate) instead of the digest
            entry["tag"] = bytes(data[-TAG_BYTES:]).hex()
        return entry

    def _write_payload_part(self, step: int, part: int, payload: np.ndarray, base: int) -> dict[str, Any]:
        """Compress one part's payloads (views of a pooled buffer) and write its chunk file (pool thread)."""
        c0 = time.thread_time()
        a, b = self._parts[part]
        offs = self._payload_offsets
        compress = _compressor(self._codec.level).compress
        views = [payload[offs[i] - base : offs[i + 1] - base] for i in range(a, b)]
        frames = [compress(v) for v in views]  # type: ignore[arg-type]  # an ndarray is a buffer: no copy
        try:
            return self._write_frames(step, part, frames, 4 * sum(t.numel for t in self._layout[a:b]))
        finally:
            self.stats._add(write_cpu_s=time.thread_time() - c0)

    def _commit_loop(self) -> None:
        """Commit steps in append order: marker after chunks, so committed steps form a prefix."""
        while True:
            job = self._jobs.get()
            if job is None:
                self._jobs.task_done()
                return
            try:
                cf.wait(job.futures)  # every part done before its buffer is reused
                c0 = time.thread_time()
                chunks = [f.result() for f in job.futures]
                with self._lock:
                    failed = self._error is not None
                if not failed:  # after a failure nothing is committed: no gaps in the steps
                    entry = StepEntry(job.step, chunks, job.meta)
                    self._put(self._path(marker_file(job.step)), dumps(entry.to_json()), atomic=True)
                    with self._lock:
                        self._steps[job.step] = entry
                        self._pending_markers.append(job.step)
                        n_pending, n_in = len(self._pending_markers), self._n_in_manifest
                    if n_pending >= max(_CONSOLIDATE_MIN, n_in // 2):
                        self._consolidate()
                self.stats._add(write_cpu_s=time.thread_time() - c0)
            except BaseException as e:  # noqa: BLE001 - surfaced on the next call
                with self._lock:
                    if self._error is None:
                        self._error, self._error_step = e, job.step
            finally:
                if job.buffer is not None:
                    self._give_buffer(job.buffer)
                self._slots.release()
                self._jobs.task_done()

    # ------------------------------------------------------------------ manifest

    def _manifest_obj(self) -> dict[str, Any]:
        with self._lock:
            entries = [self._steps[s] for s in sorted(self._steps)]
        return manifest_obj(
            encryption=self._encryption,
            created=self._created,
            codec=self._codec,
            layout=self._layout,
            parts=self._parts,
            part_bytes=self._part_bytes,
            meta=self._meta,
            steps=entries,
            digest=self._digest,
        )

    def manifest_bytes(self) -> bytes:
        """The consolidated manifest (JSON) listing every committed step; a writer flushes first.

        Copy it next to a model version and pass it to ``DeltaStore.open(url, manifest=...)``.
        """
        if self._writable and self._committer is not None and not self._closed:
            self.flush()
        return dumps(self._manifest_obj())

    def _write_manifest(self) -> None:
        with self._lock:
            n = len(self._steps)
        self._put(self._path(MANIFEST), dumps(self._manifest_obj()), atomic=True)
        self._n_in_manifest = n

    def _consolidate(self) -> None:
        """Write the manifest with every committed step, then delete the markers it covers."""
        with self._lock:
            covered = list(self._pending_markers)
        self._write_manifest()
        done = set(covered)
        with self._lock:
            self._pending_markers = [s for s in self._pending_markers if s not in done]
        self._rm([self._path(marker_file(s)) for s in covered])

    def _load_manifest(self, m: dict[str, Any]) -> None:
        man = read_manifest(m, self.url)
        self._codec, self._layout, self._parts, self._part_bytes = man.codec, man.layout, man.parts, man.part_bytes
        self._meta, self._created, self._encryption = man.meta, man.created, man.encryption
        self._digest = man.digest
        self._steps = man.steps
        self._n_in_manifest = len(man.steps)

    def _fold_markers(self, listing: Mapping[str, int]) -> list[str]:
        """Add steps committed by markers but not yet in the manifest; return debris names.

        ``listing`` was taken before the manifest was read: a writer deletes a marker only after
        a manifest that holds its step is in place, so no committed step is missed.
        """
        markers = sorted((int(m.group(1)), name) for name in listing if (m := MARKER_RE.match(name)))
        debris: list[str] = [n for n in listing if TMP_MARK in n]
        last = max(self._steps, default=-1)
        for step, name in markers:
            if step in self._steps:
                continue  # already consolidated; the marker is left over
            entry = self._read_marker(name, step) if step > last else None
            if entry is None:
                debris.append(name)
                continue
            self._steps[step] = entry
            self._pending_markers.append(step)
            last = step
        for name in listing:
            m = CHUNK_RE.match(name)
            if m:
                e = self._steps.get(int(m.group(1)))
                if e is None or e.purged or f"{CHUNKS}/{name}" not in {c["file"] for c in e.chunks}:
                    debris.append(name)
        return debris

    def _read_marker(self, name: str, step: int) -> StepEntry | None:
        try:
            e = json.loads(self._fs.cat_file(self._path(f"{CHUNKS}/{name}")))
            if e.get("step") != step:
                return None
            return StepEntry(
                step,
                check_chunks(e["chunks"], step, self._layout, self._parts, self._digest),
                dict(e.get("meta") or {}),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError):
            return None  # a torn marker: the step was not committed

    def _clean(self, debris: Sequence[str]) -> None:
        self._rm([self._path(f"{CHUNKS}/{n}") for n in debris])

    def _drop_markers(self, listing: Mapping[str, int]) -> None:
        """Delete markers whose steps the manifest now holds (after _write_manifest)."""
        names = [n for n in listing if (m := MARKER_RE.match(n)) and int(m.group(1)) in self._steps]
        self._rm([self._path(f"{CHUNKS}/{n}") for n in names])
        with self._lock:
            self._pending_markers = []

    # ------------------------------------------------------------------ reading

    def _entry(self, step: int, *, allow_purged: bool = False) -> StepEntry:
        step = check_step(step)
        with self._lock:
            e = self._steps.get(step)
        if e is None:
            raise UnknownStepsError([step], self.url)
        if e.purged and not allow_purged:
            raise PurgedStepsError([step], self.url)
        return e

    def _entries(self, steps: Sequence[int]) -> list[StepEntry]:
        """Entries for ``steps``; one error naming every unknown (or else every purged) step."""
        with self._lock:
            found = [self._steps.get(s) for s in steps]
        unknown = [s for s, e in zip(steps, found) if e is None]
        if unknown:
            raise UnknownStepsError(unknown, self.url)
        entries = [e for e in found if e is not None]
        purged = [s for s, e in zip(steps, entries) if e.purged]
        if purged:
            raise PurgedStepsError(purged, self.url)
        return entries

    def _read_chunk(self, step: int, chunk: Mapping[str, Any], *, decoding: bool = False) -> bytes:
        """A chunk's bytes, size and digest checked; ChunkCorruptedError names step and file.

        ``decoding``: the caller opens the chunk with the key next (``_frames``). A sealed chunk whose
        manifest entry records its AES-GCM tag is then checked by size, tag and the authenticated
        decryption (keyed, bound to the store, step and part) instead of the digest: the same file,
        exactly, without hashing it (docs/BENCHMARKS.md, "Rollback"). ``verify`` checks the digest.
        """
        rel = chunk["file"]
        try:  # never more than one byte past the recorded size: a swapped-in huge file is not read whole
            data = self._fs.cat_file(self._path(rel), start=0, end=chunk["bytes"] + 1)
        except FileNotFoundError:
            raise ChunkCorruptedError(
                f"step {step}: chunk file {self._path(rel)} is missing. The step may have been purged after "
                "this manifest was copied, or the store was damaged; run `mlflow-amnesia verify --model NAME` to see all damaged steps"
            ) from None
        self.stats._add(chunks_read=1, bytes_read=len(data))
        if len(data) != chunk["bytes"]:
            got = f"more than {chunk['bytes']}" if len(data) > chunk["bytes"] else str(len(data))
            raise ChunkCorruptedError(
                f"step {step}: chunk file {self._path(rel)} has {got} bytes, the manifest records "
                f"{chunk['bytes']} (truncated or overwritten). This step's delta is lost; run `mlflow-amnesia verify --model NAME`"
            )
        tag = chunk.get("tag")
        if decoding and tag is not None and self._cipher is not None:
            if bytes(memoryview(data)[-TAG_BYTES:]).hex() != tag:
                raise ChunkCorruptedError(
                    f"step {step}: chunk file {self._path(rel)} does not end in the AES-GCM tag its manifest records "
                    "(corrupted or replaced). This step's delta is lost; run `mlflow-amnesia verify --model NAME` to "
                    "list every damaged step"
                )
            return data  # _frames authenticates it under the key
        if chunk_digest(self._digest, data) != chunk[self._digest]:
            raise ChunkCorruptedError(
                f"step {step}: chunk file {self._path(rel)} fails its {self._digest} check (corrupted). "
                "This step's delta is lost; run `mlflow-amnesia verify --model NAME` to list every damaged step"
            )
        return data

    def _frames(self, step: int, part: int, chunk: Mapping[str, Any], data: bytes | memoryview) -> list[bytes]:
        """Decompressed payloads of one chunk, one per tensor."""
        a, b = self._parts[part]
        try:
            if self._encryption is not None:
                self._need_key()
                data = unseal_chunk(self._cipher, step, part, data, _scratch("open", len(data)))
            frames = unpack_chunk(data, b - a)
            return [self._codec.decompress(f, t.numel) for f, t in zip(frames, self._layout[a:b])]
        except ChunkCorruptedError as e:
            raise ChunkCorruptedError(f"step {step}: chunk file {self._path(chunk['file'])}: {e}") from e

    def read(self, step: int) -> dict[str, np.ndarray]:
        """``step``'s delta: float32 arrays in the layout's shapes. Reads only its chunks."""
        e = self._entry(step)
        self._need_key()
        pool = self._ensure_pool()

        def part(p: int) -> list[np.ndarray]:
            payloads = self._frames(e.step, p, e.chunks[p], self._read_chunk(e.step, e.chunks[p], decoding=True))
            a, b = self._parts[p]
            out = []
            for payload, t in zip(payloads, self._layout[a:b]):
                arr = np.zeros(t.numel, dtype=np.float32)
                self._codec.add_payload(payload, t.numel, arr)
                out.append(arr.reshape(t.shape))
            return out

        results = list(pool.map(part, range(len(self._parts))))
        return {t.name: arr for t, arr in zip(self._layout, (a for r in results for a in r))}

    def sum(
        self,
        steps: Iterable[int],
        *,
        dtype: np.dtype | type = np.float64,
        progress: Progress | None = None,
        read_ahead: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Sum of the deltas of ``steps`` (any order, no repeats) in ``dtype``, shaped per layout.

        Reads exactly the chunks of ``steps``, each checked (digest, or a sealed chunk's tag and
        authenticated decryption). Work items are
        one part of a group of up to 8 consecutive steps (fewer when parts are large, so an item
        holds <= ~96 MiB); ``read_ahead`` items (default threads + 1) are read and decompressed
        in parallel. Memory is the accumulators plus those items, whatever the number of steps.
        Each part accumulates its steps in ascending order, slice by slice, so the result has
        the same bits whatever order ``steps`` came in and equals adding ``read(t)`` one by one.
        """
        chosen = [check_step(s) for s in steps]
        if len(set(chosen)) != len(chosen):
            dup = sorted({s for s in chosen if chosen.count(s) > 1})
            raise InputError(f"steps repeat ({_fmt_steps(dup)}): each step's delta can be subtracted once")
        chosen.sort()
        entries = self._entries(chosen)
        self._need_key()
        dt = np.dtype(dtype)
        if dt.kind != "f":
            raise InputError(f"dtype must be a float dtype (float64 default, float32 to halve memory), got {dt}")
        acc = [np.zeros(t.numel, dtype=dt) for t in self._layout]
        compiled = fused.wanted(len(entries) * self.n_values)  # a long rollback: the compiled loop
        n_parts = len(self._parts)
        k = self._group_size()
        groups = [entries[i : i + k] for i in range(0, len(entries), k)]
        window = max(1, read_ahead if read_ahead is not None else self._threads + 1)
        pool = self._ensure_pool()
        turn = [0] * n_parts  # per part: the group that accumulates next (ascending steps)
        cond = threading.Condition()
        failed = threading.Event()

        def work(g: int, p: int) -> None:
            per_step = [
                self._frames(e.step, p, e.chunks[p], self._read_chunk(e.step, e.chunks[p], decoding=True))
                for e in groups[g]
            ]
            with cond:
                while turn[p] != g and not failed.is_set():
                    cond.wait()
            if failed.is_set():
                return
            try:
                a, b = self._parts[p]
                for j, (t, out) in enumerate(zip(self._layout[a:b], acc[a:b])):
                    self._codec.add_payloads([payloads[j] for payloads in per_step], t.numel, out, compiled=compiled)
            finally:
                with cond:
                    turn[p] += 1
                    cond.notify_all()

        prog = (
            progress
            if progress is not None
            else Progress("delta store: summing steps", total=len(entries), unit="steps")
        )
        inflight: deque[tuple[int, int, cf.Future]] = deque()
        try:
            for g in range(len(groups)):
                for p in range(n_parts):
                    # FIFO pool + submission in (group, part) order: a task only waits for one
                    # submitted, hence started, before it; no deadlock whatever the window.
                    inflight.append((g, p, pool.submit(work, g, p)))
                    while len(inflight) >= window:
                        self._retire(inflight, prog, n_parts, groups)
            while inflight:
                self._retire(inflight, prog, n_parts, groups)
        except BaseException:
            failed.set()
            with cond:
                cond.notify_all()
            for _, _, f in inflight:
                f.cancel()
            cf.wait([f for _, _, f in inflight])
            raise
        finally:
            if progress is None:
                prog.close()
        return {t.name: a.reshape(t.shape) for t, a in zip(self._layout, acc)}

    def _group_size(self) -> int:
        """Steps per sum work item: up to 8, fewer when their bytes in flight would pass ~96 MiB."""
        biggest = max(  # a step's part in flight: its compressed chunk (<= payload) + the payload
            (2 * sum(self._codec.payload_size(t.numel) for t in self._layout[a:b]) for a, b in self._parts),
            default=1,
        )
        return max(1, min(_GROUP_MAX, _GROUP_BYTES // max(1, biggest)))

    @staticmethod
    def _retire(inflight: deque, prog: Progress, n_parts: int, groups: Sequence[Sequence[StepEntry]]) -> None:
        g, p, f = inflight.popleft()
        f.result()
        if p == n_parts - 1:
            prog.update(len(groups[g]))

    # ------------------------------------------------------------------ maintenance

    def verify(self, *, raise_errors: bool = False, progress: Progress | None = None) -> list[StoreProblem]:
        """Check every chunk of every readable step: present, size, digest, decodes.

        Also reports the chunk files of purged steps still on disk (listed, not taken from the
        manifest): a purge stopped between its manifest and its deletions leaves them, and they
        still hold the erased deltas. Returns the problems (empty when sound); with
        ``raise_errors`` a ChunkCorruptedError lists them instead.
        """
        pool = self._ensure_pool()
        with self._lock:
            entries = sorted(self._steps.values(), key=lambda e: e.step)

        def check(e: StepEntry, p: int) -> StoreProblem | None:
            c = e.chunks[p]
            try:
                data = self._read_chunk(e.step, c)
                if self._encryption is not None and self._cipher is None:
                    return None  # without the key: size and digest of the stored bytes checked
                payloads = self._frames(e.step, p, c, data)
                a, b = self._parts[p]
                for payload, t in zip(payloads, self._layout[a:b]):
                    self._codec.add_payload(payload, t.numel, np.zeros(t.numel, dtype=np.float32))
            except ChunkCorruptedError as err:
                return StoreProblem(e.step, c["file"], str(err))
            return None

        live = [(e, p) for e in entries if not e.purged for p in range(len(self._parts))]
        prog = progress if progress is not None else Progress("delta store: verify", total=len(live), unit="chunks")
        problems: list[StoreProblem] = []
        try:
            for res in pool.map(lambda ep: check(*ep), live):
                prog.update()
                if res is not None:
                    problems.append(res)
        finally:
            if progress is None:
                prog.close()
        for step, rel, _ in self._leftover_chunks():
            problems.append(StoreProblem(step, rel, _LEFTOVER))
        if problems and raise_errors:
            raise ChunkCorruptedError(
                f"the delta store {self.url} has {len(problems)} problem(s):\n"
                + "\n".join(f"  {pr}" for pr in problems[:50])
                + ("\n  ..." if len(problems) > 50 else "")
            )
        return problems

    def purge(self, steps: Iterable[int]) -> list[int]:
        """Delete the chunk data of ``steps`` for good and mark them purged in the manifest.

        The manifest is rewritten first, then the files are deleted. Every call then lists
        chunks/ and deletes the chunk files of *every* purged step found there, this call's and
        earlier ones' (a purge killed between its manifest and its deletions is finished by the
        next call, whatever steps it names), and lists again: a file still there is a
        :class:`StoreError` naming it, never a silent success. Returns the steps purged by this
        call (already purged ones are skipped).
        """
        self._check_writable()
        self.flush()
        chosen = sorted(set(check_step(s) for s in steps))
        with self._lock:
            unknown = [s for s in chosen if s not in self._steps]
        if unknown:
            raise UnknownStepsError(unknown, self.url)
        with self._lock:
            files: list[str] = []
            newly: list[int] = []
            for s in chosen:
                e = self._steps[s]
                if not e.purged:
                    files += [c["file"] for c in e.chunks]
                    self._steps[s] = StepEntry(s, [], e.meta, purged_at=now())
                    newly.append(s)
        if newly:
            self._write_manifest()
        leftover = [rel for _, rel, _ in self._leftover_chunks()]
        self._rm([self._path(f) for f in sorted(set(files) | set(leftover))])
        left = [rel for _, rel, _ in self._leftover_chunks()]
        if left:
            raise StoreError(
                f"the delta store {self.url} still holds {len(left)} chunk file(s) of purged steps after deleting "
                f"them: {', '.join(left[:10])}{' ...' if len(left) > 10 else ''}. The storage did not delete them "
                "(permissions, an object lock or retention rule?): fix that, then re-run the same "
                "`mlflow-amnesia purge` command to finish the purge."
            )
        return newly

    def leftover_files(self) -> list[tuple[str, int]]:
        """(path relative to the URL, bytes) of the chunk files of purged steps still on disk.

        Listed, not read from the manifest: what a purge stopped between writing its manifest
        and deleting the files left behind. Empty when every purge finished.
        """
        return [(rel, b) for _, rel, b in self._leftover_chunks()]

    def check_copy(self, copy: DeltaStore) -> list[str]:
        """How a copied manifest (``copy``: this URL opened with ``manifest=``, e.g. a model
        version's) disagrees with this store's own; empty when they agree.

        They agree when codec, layout and parts are the same and every step of the copy is in
        this store's manifest with the same chunk files, sizes and digests, or is purged here (a
        purge after the copy was taken). ``purge`` and a later ``open(mode="a")`` trust this
        store's own manifest, reads through the copy trust the copy: a disagreement means one of
        them is damaged.
        """
        out: list[str] = []
        if self._codec.spec() != copy._codec.spec():
            out.append(f"codec {self._codec.spec()} in the store's manifest, {copy._codec.spec()} in the copy")
        if self._layout != copy._layout:
            out.append(
                f"the tensor layout differs ({len(self._layout)} tensors in the store's manifest, "
                f"{len(copy._layout)} in the copy)"
            )
        if self._parts != copy._parts:
            out.append(f"the parts differ ({self._parts} in the store's manifest, {copy._parts} in the copy)")
        if self._digest != copy._digest:
            out.append(f"chunk digests are {self._digest} in the store's manifest, {copy._digest} in the copy")
        with self._lock:
            own = dict(self._steps)
        with copy._lock:
            theirs = dict(copy._steps)
        digest = self._digest if self._digest == copy._digest else ""  # else: files and sizes only
        missing, differ, revived = [], [], []
        for s, e in sorted(theirs.items()):
            mine = own.get(s)
            if mine is None:
                missing.append(s)
            elif mine.purged:
                continue
            elif e.purged:
                revived.append(s)
            elif [(c["file"], c["bytes"], c.get(digest)) for c in mine.chunks] != [
                (c["file"], c["bytes"], c.get(digest)) for c in e.chunks
            ]:
                differ.append(s)
        if missing:
            out.append(f"step(s) {_fmt_steps(missing)} of the copy are not in the store's manifest")
        if differ:
            out.append(
                f"step(s) {_fmt_steps(differ)} record other chunk files, sizes or digests in the store's "
                "manifest than in the copy"
            )
        if revived:
            out.append(
                f"step(s) {_fmt_steps(revived)} are purged in the copy but listed with chunks in the store's manifest"
            )
        return out

    # ------------------------------------------------------------------ file system

    def _path(self, rel: str) -> str:
        return f"{self._root}/{rel}" if self._root != "/" else f"/{rel}"

    def _list_chunks(self) -> dict[str, int]:
        """Names (basenames) and sizes of the files in chunks/; empty if it does not exist."""
        d = self._path(CHUNKS)
        try:
            self._fs.invalidate_cache(d)
            entries = self._fs.ls(d, detail=True)
        except FileNotFoundError:
            return {}
        return {
            posixpath.basename(e["name"].rstrip("/")): int(e.get("size") or 0)
            for e in entries
            if e.get("type") != "directory"
        }

    def _leftover_chunks(self) -> list[tuple[int, str, int]]:
        """(step, path relative to the URL, bytes) of each file in chunks/ that is a chunk of a purged step."""
        with self._lock:
            purged = {s for s, e in self._steps.items() if e.purged}
        if not purged:
            return []
        found = [
            (int(m.group(1)), f"{CHUNKS}/{n}", b) for n, b in self._list_chunks().items() if (m := CHUNK_RE.match(n))
        ]
        return sorted(x for x in found if x[0] in purged)

    def _put(self, path: str, data: bytes | memoryview, *, atomic: bool) -> None:
        """Write a whole file (:func:`mlflow_amnesia.recording.fs.write_file`: fsync'ed locally, with ``atomic``
        via temp + rename + directory fsync; one PUT on object stores)."""
        write_file(self._fs, path, data, atomic=atomic)

    def _rm(self, paths: Sequence[str]) -> None:
        for p in paths:  # one by one: a missing file is fine (already gone)
            try:
                self._fs.rm_file(p)
            except FileNotFoundError:
                pass

    def __repr__(self) -> str:
        return f"DeltaStore({self.url!r}, codec={self._codec.name!r}, steps={len(self.steps)})"


_TOKEN = object()
