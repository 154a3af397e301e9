"""A model version's files: where each lies under ``data/``, and the one reader and writer of them.

The layout (written by :func:`write_files`, read through :class:`VersionFiles`)::

    data/weights.pt                      state dict (torch.save; read with weights_only=True: no pickle)
    data/arch.json                       architecture spec (mlflow_amnesia.learning.models)
    data/amnesia.json                    the version's metadata (mlflow_amnesia.version.info.VersionInfo)
    data/segments/<k>/manifest.json      copy of segment k's delta-store manifest
    data/segments/<k>/record_index.bin   segment k's record index (keyed hashes only)
    data/rolled_back.npy                 steps already subtracted along the lineage (int64)
    data/forgotten.npy                   keyed hashes of every record forgotten along the lineage
    data/purged.json                     the purge tombstone (written by `mlflow-amnesia purge`)

Loading, purge, verify and lineage read a version through the same :class:`VersionFiles`, over a
local directory (:class:`LocalFiles`) or an artifact repository (the MLflow layer's source), so
every file is parsed by one function here that checks types, ranges and sizes before allocating
and raises an :class:`~mlflow_amnesia.errors.AmnesiaError` naming the version's file. No code an
artifact names is imported (:func:`mlflow_amnesia.learning.models.check_builder`), nothing is unpickled.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import IndexFormatError, InputError, PurgedVersionError
from ..keys import HASH_BYTES, hash_rows, no_hashes
from ..recording.phase import Segment
from .info import MAX_INFO_BYTES, RESTORE, VersionInfo, damaged, json_object, text

__all__ = [
    "ARCH",
    "DATA",
    "FORGOTTEN",
    "INFO",
    "ROLLED_BACK",
    "SEGMENTS",
    "TOMBSTONE",
    "TOMBSTONE_FILE",
    "WEIGHTS",
    "FileSource",
    "LocalFiles",
    "VersionFiles",
    "check_not_purged",
    "read_arch",
    "read_forgotten",
    "read_rolled_back",
    "read_tombstone",
    "read_weights",
    "segment_index",
    "segment_manifest",
    "write_files",
]

DATA = "data"
WEIGHTS = "data/weights.pt"
ARCH = "data/arch.json"
INFO = "data/amnesia.json"
ROLLED_BACK = "data/rolled_back.npy"
FORGOTTEN = "data/forgotten.npy"
SEGMENTS = "data/segments"
TOMBSTONE = "purged.json"  # the tombstone's name inside data/
TOMBSTONE_FILE = f"{DATA}/{TOMBSTONE}"
MAX_SMALL_JSON = 1 << 20  # arch.json, purged.json


def segment_manifest(k: int) -> str:
    """The version's copy of segment ``k``'s delta-store manifest."""
    return f"{SEGMENTS}/{k}/manifest.json"


def segment_index(k: int) -> str:
    """Segment ``k``'s record index."""
    return f"{SEGMENTS}/{k}/record_index.bin"


# ---------------------------------------------------------------------------------------------
# sources: where the bytes come from


class FileSource(Protocol):
    """Where a version's files are read from (a local directory, an artifact repository)."""

    def read(self, rel: str, where: str, *, limit: int | None = None, optional: bool = False) -> bytes | None:
        """The bytes of ``rel`` (a path of the layout above); None when ``optional`` and absent.

        ``where`` names the file in errors; a file over ``limit`` bytes is refused unread.
        """


class LocalFiles:
    """A version in a local directory: the model directory, or its ``data/`` directory itself."""

    def __init__(self, path: Path) -> None:
        self.root = Path(path)
        self.data = self.root / DATA if (self.root / DATA).is_dir() else self.root

    def path(self, rel: str) -> Path:
        return self.data / rel[len(DATA) + 1 :] if rel.startswith(DATA + "/") else self.root / rel

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def read(self, rel: str, where: str, *, limit: int | None = None, optional: bool = False) -> bytes | None:
        p = self.path(rel)
        if optional and not p.exists():
            return None
        try:
            size = p.stat().st_size
            if limit is not None and size > limit:
                raise damaged(where, f"is {size:,} bytes, more than the {limit:,} such a file can hold")
            return p.read_bytes()
        except FileNotFoundError:
            raise InputError(f"{where} is missing: the version's artifacts are incomplete; {RESTORE}.") from None
        except IsADirectoryError:
            raise damaged(where, "is a directory") from None
        except OSError as e:
            raise InputError(f"cannot read {where}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------------------------
# the reader


class VersionFiles:
    """One version's files through ``source``; ``label`` names the version in errors
    (``data/rolled_back.npy of models:/M/1``)."""

    def __init__(self, source: FileSource, label: str) -> None:
        self.source = source
        self.label = label

    def where(self, rel: str) -> str:
        return f"{rel} of {self.label}"

    def read(self, rel: str, *, limit: int | None = None, optional: bool = False) -> bytes | None:
        return self.source.read(rel, self.where(rel), limit=limit, optional=optional)

    def info(self, *, optional: bool = False) -> VersionInfo | None:
        """``data/amnesia.json``, checked (:meth:`VersionInfo.parse`); None when ``optional`` and absent."""
        raw = self.read(INFO, limit=MAX_INFO_BYTES, optional=optional)
        return None if raw is None else VersionInfo.parse(raw, self.where(INFO))

    def arch(self, builders: Iterable[str] = ()) -> dict:
        """``data/arch.json``, checked; a builder it names must be allowed."""
        raw = self.read(ARCH, limit=MAX_SMALL_JSON)
        assert raw is not None
        return read_arch(raw, self.where(ARCH), builders)

    def segments(self, info: VersionInfo) -> list[Segment]:
        """The version's segments with their manifest and index copies; each index's header must
        list exactly its segment's steps (nothing decompressed, no key needed)."""
        from ..recording.index import index_counts

        out = []
        for k, s in enumerate(info.segments):
            names = (self.where(segment_manifest(k)), self.where(segment_index(k)))
            manifest, index = self.read(segment_manifest(k)), self.read(segment_index(k))
            seg = Segment(
                role=s.role,
                store_url=s.store_url,
                first_step=s.first_step,
                last_step=s.last_step,
                manifest=manifest or b"",
                index=index or b"",
                run_id=s.run_id,
                names=names,
                base_url=s.base_url,
            )
            # the header alone bounds the segment: its steps are the index's (a forged range fails here)
            try:
                n_steps = index_counts(seg.index, name=names[1], steps=(seg.first_step, seg.last_step))[1]
            except IndexFormatError as e:
                raise IndexFormatError(str(e) if "restore" in str(e) else f"{str(e).rstrip('.')}; {RESTORE}.") from None
            if n_steps != seg.n_steps:
                raise IndexFormatError(
                    f"the record index {names[1]} lists {n_steps} steps, but {self.where(INFO)} gives its segment "
                    f"{seg.n_steps} (steps {seg.first_step}..{seg.last_step}): the files do not belong together; {RESTORE}."
                )
            out.append(seg)
        return out

    def segment_index(self, k: int) -> bytes:
        raw = self.read(segment_index(k))
        assert raw is not None
        return raw

    def segment_manifest(self, k: int) -> bytes:
        raw = self.read(segment_manifest(k))
        assert raw is not None
        return raw

    def rolled_back(self, segments: Iterable[Any]) -> np.ndarray:
        """``data/rolled_back.npy`` (absent: nothing rolled back), each a step of ``segments``."""
        return read_rolled_back(self.read(ROLLED_BACK, optional=True), self.where(ROLLED_BACK), segments)

    def forgotten(self) -> np.ndarray:
        """``data/forgotten.npy`` (absent: nothing forgotten)."""
        return read_forgotten(self.read(FORGOTTEN, optional=True), self.where(FORGOTTEN))

    def tombstone(self) -> dict | None:
        """The purge tombstone's fields; None when the version has none (``{}`` when unreadable)."""
        raw = self.read(TOMBSTONE_FILE, optional=True)
        return None if raw is None else read_tombstone(raw)


# ---------------------------------------------------------------------------------------------
# the writer


def write_files(
    data: Path,
    *,
    module: torch.nn.Module,
    arch: dict,
    info: VersionInfo,
    segments: list[Segment],
    rolled_back: np.ndarray,
    forgotten: np.ndarray,
    format_version: int,
) -> dict:
    """Write a version's ``data/`` directory (created); returns the JSON of ``amnesia.json``."""

    def at(rel: str) -> Path:
        return data / rel[len(DATA) + 1 :]

    data.mkdir(parents=True)
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, at(WEIGHTS))
    at(ARCH).write_text(json.dumps(arch, indent=2, sort_keys=True))
    out = info.to_json()
    out["format_version"] = format_version
    out["segments"] = [s.to_json() for s in segments]
    at(INFO).write_text(json.dumps(out, indent=2, sort_keys=True))
    for k, seg in enumerate(segments):
        at(segment_manifest(k)).parent.mkdir(parents=True)
        at(segment_manifest(k)).write_bytes(seg.manifest)
        at(segment_index(k)).write_bytes(seg.index)
    np.save(at(ROLLED_BACK), np.asarray(rolled_back, dtype=np.int64), allow_pickle=False)
    np.save(at(FORGOTTEN), hash_rows(forgotten), allow_pickle=False)
    return out


# ---------------------------------------------------------------------------------------------
# each file's parser: types, ranges and sizes checked before anything is allocated


def read_tombstone(raw: bytes) -> dict:
    """The purge tombstone's fields (a dict, empty when unreadable): only ever shown in a message."""
    if len(raw) > MAX_SMALL_JSON:
        return {}
    try:
        t = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return t if isinstance(t, dict) else {}


def check_not_purged(data: Path) -> None:
    """Raise :class:`PurgedVersionError` if ``data`` (a version's ``data/`` dir) holds a purge tombstone."""
    tomb = data / TOMBSTONE
    if not tomb.is_file():
        return
    try:
        t = read_tombstone(tomb.read_bytes()) if tomb.stat().st_size <= MAX_SMALL_JSON else {}
    except OSError:
        t = {}
    name = text(t.get("model_name") or "this model", 100)
    version = t.get("version") if isinstance(t.get("version"), int) and not isinstance(t.get("version"), bool) else None
    who = f"{name} v{version if version is not None else '?'}"
    when = (
        text(t["completed_at"], 40)
        if t.get("completed_at")
        else f"started {text(t.get('started_at', '?'), 40)} and not finished: re-run `mlflow-amnesia purge "
        f"--model {name if t.get('model_name') else 'NAME'} --version {version if version is not None else 'N'}` to finish it"
    )
    sup = t.get("superseded_by")
    ok = isinstance(sup, int) and not isinstance(sup, bool)
    instead = f"load v{sup} (which forgot the records) or a later version" if ok else "load a later version"
    raise PurgedVersionError(
        f"{who} was purged ({when}): its weights were deleted for good because a later version forgot records "
        f"it held, so it cannot be loaded ({text(tomb, 400)}). Its lineage metadata is kept; {instead}."
    )


def read_arch(raw: bytes, where: str, builders: Iterable[str] = ()) -> dict:
    """``data/arch.json``, checked as a spec; a builder it names must be allowed (nothing imported)."""
    from ..learning.models import check_builder, validate_spec

    try:
        spec = validate_spec(json_object(raw, where))
    except InputError as e:
        if str(e).startswith(where):
            raise
        raise InputError(f"{where}: {e} The file is damaged or was not written by mlflow-amnesia; {RESTORE}.") from None
    check_builder(spec, source=where, builders=builders)
    return spec


def read_weights(path: Path, where: str) -> dict[str, torch.Tensor]:
    """``data/weights.pt``: a torch zip of uncompressed entries (so nothing inflates past the
    file), read with ``weights_only=True``; must hold a state dict of tensors."""
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as z:
            entries = z.infolist()
    except FileNotFoundError:
        raise InputError(f"{where} is missing: the version's artifacts are incomplete; {RESTORE}.") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise damaged(where, f"is not a readable torch.save file, truncated or overwritten ({text(e, 80)})") from None
    if (
        any(e.compress_type != zipfile.ZIP_STORED or e.file_size != e.compress_size for e in entries)
        or sum(e.file_size for e in entries) > size
    ):
        raise damaged(where, "holds compressed or oversized entries, which torch.save never writes")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch signals a damaged file in many ways; weights_only refuses any pickle
        raise damaged(
            where, f"cannot be read ({type(e).__name__}: {text(str(e).splitlines()[0] if str(e) else '', 120)})"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise damaged(where, "does not hold a state dict (names to tensors)")
    return state


def _read_npy(raw: bytes, where: str, kind: str, itemsize: int) -> tuple[np.ndarray, tuple]:
    """A .npy of one plain dtype, its header checked against the file before anything is read."""
    f = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"npy format version {version}")
    except (ValueError, EOFError, SyntaxError, TypeError, OverflowError) as e:
        raise damaged(where, f"is not a readable .npy file ({text(e, 80)})") from None
    want = f"{'int' if kind == 'i' else 'uint'}{8 * itemsize}"
    if dtype.hasobject or dtype.fields is not None or dtype.kind != kind or dtype.itemsize != itemsize:
        raise damaged(where, f"holds {dtype} values, not {want}")
    need = math.prod(shape) * itemsize
    have = len(raw) - f.tell()
    if have != need:
        raise damaged(
            where,
            f"is truncated or padded: its header says {tuple(shape)} {want} ({need:,} bytes), the file holds {have:,}",
        )
    try:  # an empty array with other huge dimensions: numpy refuses a shape whose other sizes overflow
        a = np.frombuffer(raw, dtype=dtype, offset=f.tell()).reshape(shape, order="F" if fortran else "C")
    except ValueError as e:
        raise damaged(where, f"declares an impossible shape {text(tuple(shape), 80)} ({text(e, 80)})") from None
    return a.astype(dtype.newbyteorder("="), copy=True), tuple(shape)


def read_rolled_back(raw: bytes | None, where: str, segments: Iterable[Any]) -> np.ndarray:
    """``data/rolled_back.npy``: 1-D int64, strictly increasing, each a step of ``segments``
    (:class:`Segment` or their JSON dicts). None (no file): nothing rolled back."""
    if raw is None:
        return np.zeros(0, np.int64)
    a, shape = _read_npy(raw, where, "i", 8)
    if len(shape) != 1:
        raise damaged(where, f"holds a {len(shape)}-dimensional array {shape}, not a 1-D list of steps")
    a = a.astype(np.int64, copy=False)
    if len(a) > 1 and not (np.diff(a) > 0).all():
        raise damaged(where, "does not list steps strictly increasing (each step is rolled back once)")
    spans = [
        (s.first_step, s.last_step) if isinstance(s, Segment) else (s["first_step"], s["last_step"]) for s in segments
    ]
    known = np.zeros(len(a), dtype=bool)
    for lo, hi in spans:
        known |= (a >= lo) & (a <= hi)
    if not known.all():
        bad = int(a[~known][0])
        held = ", ".join(f"{lo}..{hi}" for lo, hi in spans if hi >= lo) or "none"
        raise damaged(
            where,
            f"lists {int((~known).sum())} step(s) that are not steps of the version's segments "
            f"(e.g. {bad}; the segments hold steps {held})",
        )
    return a


def read_forgotten(raw: bytes | None, where: str) -> np.ndarray:
    """``data/forgotten.npy``: ``(n, 16)`` uint8 keyed hashes. None (no file): nothing forgotten."""
    if raw is None:
        return no_hashes()
    a, shape = _read_npy(raw, where, "u", 1)
    if len(shape) != 2 or shape[1] != HASH_BYTES:
        raise damaged(where, f"holds uint8 of shape {shape}, not (n, {HASH_BYTES}) keyed record hashes")
    return a
