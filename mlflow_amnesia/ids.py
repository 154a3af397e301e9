"""Reading the ids file of a deletion request.

Format: UTF-8 text, one record id per line (lines end in ``\n``, ``\r\n`` or ``\r``; other
Unicode line separators are part of an id); surrounding whitespace is stripped; blank lines and
lines starting with ``#`` are ignored; duplicates are dropped (and counted). Anything else is an
error that names the file and the line, before anything is changed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

MAX_BYTES = 256 * 1024 * 1024  # 256 MiB: ~10M ids of 24 bytes; larger requests should be split
MAX_ID_LEN = 1024
_LINES = re.compile(r"\r\n|\r|\n")


@dataclass
class IdsRequest:
    ids: list[str]
    duplicates: int
    source: str


def parse_ids(text: bytes, source: str = "<ids>") -> IdsRequest:
    """Parse the bytes of an ids file; see the module docstring for the format."""
    if b"\x00" in text:
        raise InputError(
            f"{source} looks binary (it contains NUL bytes): expected a UTF-8 text file with one record id per line."
        )
    try:
        decoded = text.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = text[: e.start].count(b"\n") + 1
        raise InputError(
            f"{source} is not valid UTF-8 (line {line}, byte {e.start}): save it as UTF-8 text with one record id per line."
        ) from None
    ids: list[str] = []
    seen: set[str] = set()
    dups = 0
    for n, raw in enumerate(_LINES.split(decoded), start=1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        if len(s) > MAX_ID_LEN:
            raise InputError(
                f"{source} line {n}: a record id of {len(s)} characters (limit {MAX_ID_LEN}); is this the right file?"
            )
        if any(ord(c) < 32 for c in s):
            raise InputError(f"{source} line {n}: control characters in a record id; is this the right file?")
        if s in seen:
            dups += 1
            continue
        seen.add(s)
        ids.append(s)
    if not ids:
        raise InputError(
            f"{source} holds no record ids (empty, or only blank and # comment lines): put one record id per line."
        )
    return IdsRequest(ids=ids, duplicates=dups, source=source)


def read_ids_file(path: str | os.PathLike) -> IdsRequest:
    """Read and validate an ids file (see module docstring)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"ids file {p} does not exist: pass a text file with one record id per line.")
    if not p.is_file():
        raise InputError(f"ids file {p} is not a regular file.")
    size = p.stat().st_size
    if size > MAX_BYTES:
        raise InputError(
            f"ids file {p} is {size / 2**20:.0f} MiB, over the {MAX_BYTES // 2**20} MiB limit: split the request into several files."
        )
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read ids file {p}: {e.strerror or e}; check its permissions.") from None
    return parse_ids(data, source=str(p))
