"""One chunk file: a step's part, as its bytes are laid out (docs/ARCHITECTURE.md, "DeltaStore").

Version 1 (in clear): ``AMDC``, u32 version 1, u32 frame count, one u64 length per frame, then
one zstd frame per tensor of the part. Version 2 (sealed): ``AMDC``, u32 2, u32 0, then the
version-1 chunk encrypted whole (:class:`mlflow_amnesia.crypto.ChunkCipher`: nonce, ciphertext,
tag; bound to the store, the step and the part). File names: ``chunks/<step>.<part>.zst`` and
the commit marker ``chunks/<step>.json``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from typing import Any

from mlflow_amnesia.errors import ChunkCorruptedError
from mlflow_amnesia.recording.store.manifest import CHUNKS

__all__ = [
    "CHUNK_RE",
    "MARKER_RE",
    "chunk_file",
    "marker_file",
    "pack_chunk",
    "pack_chunk_into",
    "seal_chunk",
    "seal_chunk_into",
    "unpack_chunk",
    "unseal_chunk",
]

_MAGIC = b"AMDC"  # chunk header: magic, u32 version, u32 frame count, u64 frame lengths
_CHUNK_VERSION = 1
# A sealed chunk: magic, u32 version 2, u32 0, then nonce + AES-GCM(version-1 chunk) + tag.
_SEALED_CHUNK_VERSION = 2
_HEAD = struct.Struct("<4sII")
#: A chunk file's and a commit marker's name in chunks/: ``<step>.<part>.zst``, ``<step>.json``.
CHUNK_RE = re.compile(r"^(\d+)\.(\d+)\.zst$")
MARKER_RE = re.compile(r"^(\d+)\.json$")


def chunk_file(step: int, part: int) -> str:
    """The path of a step's part relative to the store's URL."""
    return f"{CHUNKS}/{step}.{part}.zst"


def marker_file(step: int) -> str:
    """The path of a step's commit marker relative to the store's URL."""
    return f"{CHUNKS}/{step}.json"


def pack_chunk(frames: Sequence[bytes]) -> bytes:
    """A version-1 chunk of ``frames`` (one compressed frame per tensor)."""
    head = _HEAD.pack(_MAGIC, _CHUNK_VERSION, len(frames)) + struct.pack(f"<{len(frames)}Q", *map(len, frames))
    return b"".join([head, *frames])


def chunk_size(frames: Sequence[bytes]) -> int:
    """Bytes of the version-1 chunk of ``frames``."""
    return _HEAD.size + 8 * len(frames) + sum(map(len, frames))


def pack_chunk_into(frames: Sequence[bytes], out: memoryview) -> None:
    """:func:`pack_chunk` written into ``out`` (exactly :func:`chunk_size` bytes)."""
    head = _HEAD.pack(_MAGIC, _CHUNK_VERSION, len(frames)) + struct.pack(f"<{len(frames)}Q", *map(len, frames))
    out[: len(head)] = head
    off = len(head)
    for f in frames:
        out[off : off + len(f)] = f
        off += len(f)


def sealed_size(plain: int) -> int:
    """Bytes of the sealed (version-2) chunk of a ``plain``-byte version-1 chunk."""
    from mlflow_amnesia.crypto import NONCE_BYTES, TAG_BYTES

    return _HEAD.size + NONCE_BYTES + plain + TAG_BYTES


def seal_chunk_into(cipher: Any, step: int, part: int, plain: memoryview, out: memoryview) -> None:
    """:func:`seal_chunk` written into ``out`` (exactly :func:`sealed_size` bytes)."""
    out[: _HEAD.size] = _HEAD.pack(_MAGIC, _SEALED_CHUNK_VERSION, 0)
    cipher.seal_into(step, part, plain, out[_HEAD.size :])


def unpack_chunk(data: bytes | memoryview, n_frames: int) -> list[memoryview]:
    """The frames of a chunk; ChunkCorruptedError (without a file name) when malformed."""
    if len(data) < _HEAD.size:
        raise ChunkCorruptedError(f"{len(data)} bytes is shorter than a chunk header")
    magic, version, n = _HEAD.unpack_from(data)
    if magic != _MAGIC or version != _CHUNK_VERSION:
        raise ChunkCorruptedError(f"not a version-{_CHUNK_VERSION} chunk (header {magic!r} v{version})")
    if n != n_frames:
        raise ChunkCorruptedError(f"chunk holds {n} tensors, the layout expects {n_frames}")
    off = _HEAD.size + 8 * n
    lengths = struct.unpack_from(f"<{n}Q", data, _HEAD.size) if len(data) >= off else None
    if lengths is None or off + sum(lengths) != len(data):
        raise ChunkCorruptedError("chunk frame lengths do not add up to the file size")
    mv = memoryview(data)
    frames = []
    for ln in lengths:
        frames.append(mv[off : off + ln])
        off += ln
    return frames


def seal_chunk(cipher: Any, step: int, part: int, plain: bytes) -> bytes:
    """The sealed (version-2) chunk of a version-1 chunk ``plain``."""
    return _HEAD.pack(_MAGIC, _SEALED_CHUNK_VERSION, 0) + cipher.seal(step, part, plain)


def unseal_chunk(
    cipher: Any, step: int, part: int, data: bytes | memoryview, out: bytearray | None = None
) -> bytes | memoryview:
    """The version-1 chunk inside a sealed one; ChunkCorruptedError (without a file name) when it is not one.

    ``out``: a reused buffer for the plaintext (a view of it is returned)."""
    from mlflow_amnesia.crypto import InvalidTag

    if len(data) < _HEAD.size:
        raise ChunkCorruptedError(f"{len(data)} bytes is shorter than a chunk header")
    magic, version, _ = _HEAD.unpack_from(data)
    if magic != _MAGIC or version != _SEALED_CHUNK_VERSION:
        raise ChunkCorruptedError(
            f"not a sealed (version-{_SEALED_CHUNK_VERSION}) chunk (header {magic!r} v{version}), "
            "but the store seals every chunk"
        )
    try:
        return cipher.open(step, part, memoryview(data)[_HEAD.size :], out)
    except InvalidTag:
        raise ChunkCorruptedError(
            "fails authentication under the store's key: it was altered, or swapped in from another step or store. "
            "This step's delta is lost; run `mlflow-amnesia verify --model NAME` to list every damaged step"
        ) from None
