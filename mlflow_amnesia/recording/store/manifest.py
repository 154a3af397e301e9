"""The delta store's manifest: its format, its step table, and the checks on reading one.

``manifest.json`` (docs/ARCHITECTURE.md, "DeltaStore") holds the format version, the codec, the
tensor layout and its partition into parts, the store's meta, the encryption parameters of a
sealed store and the step table: per committed step its chunk files (size, raw size, digest:
BLAKE3 from format 4 on, sha256 before; and, for a sealed chunk written since, its AES-GCM tag) or
the time it was purged. A commit marker ``chunks/<step>.json`` holds one step-table entry.

Nothing here touches a file: :mod:`.delta_store` reads and writes, this module turns bytes into
checked values and back, byte for byte as every release wrote them.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import blake3
import numpy as np

from mlflow_amnesia.errors import InputError, ManifestFormatError
from mlflow_amnesia.recording.store.codecs import Codec, codec_from_spec

__all__ = [
    "CHUNKS",
    "DEFAULT_PART_BYTES",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "Manifest",
    "StepEntry",
    "TensorSpec",
    "check_chunks",
    "chunk_digest",
    "digest_name",
    "check_meta",
    "check_step",
    "dumps",
    "manifest_obj",
    "parse_encryption",
    "parse_manifest",
    "partition",
    "read_manifest",
]

FORMAT = "mlflow-amnesia/delta-store"
#: Bumped when a reader of the previous version would misread a store. Newer ones are refused.
#: 2: chunks sealed under the record key (manifest "encryption"); a store in clear stays 1.
#: 3: a codec that readers of 2 do not know (``int4``); "encryption" present exactly when sealed.
#: 4: chunk digests are BLAKE3 (a chunk entry's "blake3") instead of sha256 ("sha256"): 2.1 ms
#:    instead of 5.7 ms a step of int8 ResNet18 deltas (bench/hashes.py). Every store created
#:    since is 4; a store created before keeps sha256, and its version, when appended to.
#: A store is written with the lowest version that describes it, so older readers read the rest.
FORMAT_VERSION = 4
PLAIN_FORMAT_VERSION = 1
SEALED_FORMAT_VERSION = 2
BLAKE3_FORMAT_VERSION = 4
#: The chunk digest of new stores (:func:`digest_name` reads a store's own).
DIGEST = "blake3"
#: Codecs a store may name only from format 3 on.
_CODECS_SINCE_3 = {"int4"}
MANIFEST = "manifest.json"
CHUNKS = "chunks"
DEFAULT_PART_BYTES = 16 << 20
_FLOAT_DTYPES = {"float16", "bfloat16", "float32", "float64"}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One recorded tensor: its ``state_dict`` name, shape and the model's dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def parse(cls, obj: Any) -> TensorSpec:
        """From a TensorSpec or ``{"name", "shape", "dtype"}``; InputError when malformed."""
        if isinstance(obj, TensorSpec):
            return obj
        if not isinstance(obj, Mapping) or not isinstance(obj.get("name"), str):
            raise InputError(f"layout entry must be {{'name', 'shape', 'dtype'}}, got {obj!r}")
        shape = obj.get("shape")
        if not isinstance(shape, (list, tuple)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise InputError(f"layout entry {obj['name']!r}: shape must be a list of non-negative ints, got {shape!r}")
        dtype = str(obj.get("dtype", "float32")).removeprefix("torch.")
        if dtype not in _FLOAT_DTYPES:
            raise InputError(
                f"layout entry {obj['name']!r}: dtype {dtype!r} is not a floating-point dtype "
                f"({', '.join(sorted(_FLOAT_DTYPES))}); only float tensors are recorded"
            )
        return cls(obj["name"], tuple(shape), dtype)


class StepEntry:
    """One committed step in memory (the manifest's step table entry)."""

    __slots__ = ("step", "chunks", "meta", "purged_at")

    def __init__(self, step: int, chunks: list[dict[str, Any]], meta: dict[str, Any], purged_at: str | None = None):
        self.step, self.chunks, self.meta, self.purged_at = step, chunks, meta, purged_at

    @property
    def purged(self) -> bool:
        return self.purged_at is not None

    def to_json(self) -> dict[str, Any]:
        if self.purged:
            return {"step": self.step, "purged": True, "purged_at": self.purged_at, "meta": self.meta}
        return {"step": self.step, "chunks": self.chunks, "meta": self.meta}


@dataclasses.dataclass
class Manifest:
    """A manifest's content, checked (:func:`read_manifest`)."""

    codec: Codec
    layout: list[TensorSpec]
    parts: list[tuple[int, int]]
    part_bytes: int
    meta: dict[str, Any]
    created: str
    encryption: dict[str, str] | None
    steps: dict[int, StepEntry]
    digest: str  # the chunk entries' digest (digest_name of the format version)


def now() -> str:
    """The current UTC time as the manifest records it (ISO 8601, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def partition(layout: Sequence[TensorSpec], part_bytes: int) -> list[tuple[int, int]]:
    """Greedy cut of the layout into [start, stop) tensor ranges of <= part_bytes float32."""
    parts: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, t in enumerate(layout):
        b = 4 * t.numel
        if i > start and size + b > part_bytes:
            parts.append((start, i))
            start, size = i, 0
        size += b
    if layout:
        parts.append((start, len(layout)))
    return parts


def check_meta(meta: Any, what: str) -> dict[str, Any]:
    """``meta`` as a plain dict of JSON values (None: empty); InputError naming ``what`` otherwise."""
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise InputError(f"{what} must be a dict of JSON values, got {type(meta).__name__}")
    try:
        return json.loads(json.dumps(dict(meta), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} must hold only JSON values (str, number, bool, None, list, dict): {e}") from e


def check_step(step: Any) -> int:
    """``step`` as an int >= 0; InputError otherwise."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise InputError(f"step must be a non-negative int, got {step!r}")
    return int(step)


def dumps(obj: Any) -> bytes:
    """Compact JSON, as every manifest and marker is written."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def digest_name(version: int) -> str:
    """The chunk digest of a store of format ``version``: "blake3" from 4 on, "sha256" before."""
    return "blake3" if version >= BLAKE3_FORMAT_VERSION else "sha256"


def chunk_digest(name: str, data: bytes | memoryview) -> str:
    """Hex digest ``name`` ("blake3" or "sha256", :func:`digest_name`) of a chunk's stored bytes."""
    if name == "blake3":
        return blake3.blake3(data).hexdigest()
    return hashlib.sha256(data).hexdigest()


def format_version(codec: Codec, encryption: Mapping[str, str] | None, digest: str = DIGEST) -> int:
    """The lowest format version that describes a store of ``codec``, sealed or not, whose chunk
    digest is ``digest``."""
    if digest == "blake3":
        return BLAKE3_FORMAT_VERSION
    if codec.name in _CODECS_SINCE_3:
        return 3
    return SEALED_FORMAT_VERSION if encryption is not None else PLAIN_FORMAT_VERSION


def manifest_obj(
    *,
    encryption: Mapping[str, str] | None,
    created: str,
    codec: Codec,
    layout: Sequence[TensorSpec],
    parts: Sequence[tuple[int, int]],
    part_bytes: int,
    meta: Mapping[str, Any],
    steps: Sequence[StepEntry],
    digest: str = DIGEST,
) -> dict[str, Any]:
    """The manifest object (keys in the order every release wrote them); ``steps`` ascending;
    ``digest``: the chunk entries' digest (:func:`format_version` follows it)."""
    sealed = {"encryption": dict(encryption)} if encryption is not None else {}
    return {
        "format": FORMAT,
        "format_version": format_version(codec, encryption, digest),
        **sealed,
        "created": created,
        "codec": codec.spec(),
        "layout": [t.to_json() for t in layout],
        "parts": [list(p) for p in parts],
        "part_bytes": part_bytes,
        "meta": meta,
        "steps": [e.to_json() for e in steps],
    }


def parse_manifest(raw: bytes | str | Mapping[str, Any], where: str) -> dict[str, Any]:
    """Parse and check a manifest's format; ManifestFormatError when unreadable or too new."""
    if isinstance(raw, Mapping):
        m: Any = dict(raw)
    else:
        try:
            m = json.loads(raw)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError; RecursionError: absurd nesting
            raise ManifestFormatError(
                f"{where} is not valid JSON ({type(e).__name__}: {e}); the store cannot be read"
            ) from e
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ManifestFormatError(f"{where} is not a delta-store manifest (its 'format' is not {FORMAT!r})")
    v = m.get("format_version")
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ManifestFormatError(f"{where} has an invalid format_version {v!r}")
    if v > FORMAT_VERSION:
        raise ManifestFormatError(
            f"{where} has format version {v}, newer than the {FORMAT_VERSION} this mlflow-amnesia reads; "
            "upgrade mlflow-amnesia to read this store"
        )
    return m


def parse_encryption(m: Mapping[str, Any]) -> dict[str, str] | None:
    """The manifest's "encryption" (required from format 2 on, absent before); ValueError when malformed."""
    from mlflow_amnesia.crypto import SALT_BYTES, SCHEME

    enc = m.get("encryption")
    if m["format_version"] < 2:
        if enc is not None:
            raise ValueError("a format-1 manifest has no 'encryption'")
        return None
    if m["format_version"] >= 3 and enc is None:
        return None  # format 3 in clear
    if not isinstance(enc, Mapping) or enc.get("scheme") != SCHEME:
        raise ValueError(f"'encryption' must name the scheme {SCHEME!r}, got {enc!r}")
    salt, kid = enc.get("salt"), enc.get("key_id")
    if not isinstance(salt, str) or len(bytes.fromhex(salt)) != SALT_BYTES or not isinstance(kid, str):
        raise ValueError(f"'encryption' needs a {SALT_BYTES}-byte hex salt and a key_id, got {enc!r}")
    return {"scheme": SCHEME, "salt": salt, "key_id": kid}


def _is_hex(value: Any, length: int) -> bool:
    """``value`` is a string of ``length`` lowercase hex digits (a digest or a tag as written)."""
    return isinstance(value, str) and len(value) == length and all(ch in "0123456789abcdef" for ch in value)


def check_chunks(
    chunks: Any, step: int, layout: Sequence[TensorSpec], parts: Sequence[tuple[int, int]], digest: str = DIGEST
) -> list[dict[str, Any]]:
    """A step's chunk list checked against the layout and its parts, each entry holding its
    ``digest`` (:func:`digest_name`); ValueError when it does not fit."""
    if not isinstance(chunks, list) or len(chunks) != len(parts):
        raise ValueError(
            f"step {step} lists {len(chunks) if isinstance(chunks, list) else chunks!r} chunks, expected {len(parts)}"
        )
    out = []
    for part, c in enumerate(chunks):
        # the writer's own name, nothing else: a manifest never points a read outside chunks/
        if c["file"] != f"{CHUNKS}/{step}.{part}.zst":
            raise ValueError(
                f"step {step} part {part} names chunk file {c['file']!r}, expected {CHUNKS}/{step}.{part}.zst"
            )
        a, b = parts[part]
        raw = 4 * sum(t.numel for t in layout[a:b])
        if int(c["raw_bytes"]) != raw:
            raise ValueError(f"step {step} part {part} records {c['raw_bytes']} raw bytes, its tensors hold {raw}")
        size = int(c["bytes"])  # at most zstd's worst case (incompressible data) plus the chunk header
        if not 0 < size <= raw + raw // 64 + 256 * (b - a + 1):
            raise ValueError(f"step {step} part {part} records a chunk of {size} bytes for {raw} raw bytes")
        hexdigest = c[digest]
        if not _is_hex(hexdigest, 64):
            raise ValueError(f"step {step} part {part} records a malformed {digest} {hexdigest!r}")
        entry = {"file": c["file"], "bytes": size, "raw_bytes": raw, digest: hexdigest}
        tag = c.get("tag")  # a sealed chunk's AES-GCM tag (written since reads check it instead of the digest)
        if tag is not None:
            if not _is_hex(tag, 32):
                raise ValueError(f"step {step} part {part} records a malformed tag {tag!r}")
            entry["tag"] = tag
        out.append(entry)
    return out


def read_manifest(m: dict[str, Any], url: str) -> Manifest:
    """The content of a parsed manifest (:func:`parse_manifest`) of the store at ``url``, every
    entry checked; ManifestFormatError naming the store when one is malformed."""
    where = f"the manifest of {url}"
    try:
        codec = codec_from_spec(m["codec"])
        if codec.name in _CODECS_SINCE_3 and m["format_version"] < 3:
            raise ValueError(f"codec {codec.name!r} needs format version 3, the manifest says {m['format_version']}")
        layout = [TensorSpec.parse(t) for t in m["layout"]]
        parts = [(int(a), int(b)) for a, b in m["parts"]]
        part_bytes = int(m.get("part_bytes", DEFAULT_PART_BYTES))
        meta = dict(m.get("meta") or {})
        created = str(m.get("created", ""))
        encryption = parse_encryption(m)
        digest = digest_name(m["format_version"])
        steps: dict[int, StepEntry] = {}
        for e in m["steps"]:
            s = check_step(e["step"])
            if e.get("purged"):
                steps[s] = StepEntry(s, [], dict(e.get("meta") or {}), purged_at=str(e.get("purged_at") or "unknown"))
            else:
                steps[s] = StepEntry(s, check_chunks(e["chunks"], s, layout, parts, digest), dict(e.get("meta") or {}))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, InputError) as e:
        raise ManifestFormatError(f"{where} is malformed ({type(e).__name__}: {e}); the store cannot be read") from e
    if parts and (parts[0][0] != 0 or parts[-1][1] != len(layout)):
        raise ManifestFormatError(f"{where}: parts {parts} do not cover the {len(layout)} tensors")
    return Manifest(codec, layout, parts, part_bytes, meta, created, encryption, steps, digest)
