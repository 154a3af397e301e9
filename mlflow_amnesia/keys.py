"""The record key: where it lives, how it is created, and what it hashes, orders and seals.

Nothing mlflow-amnesia writes (record index, tags, audit, forget requests) holds a record id in
clear text. Ids are replaced by ``HMAC-SHA256(key, id)`` truncated to 16 bytes, so whoever can
read the registry cannot test whether a given person's id is in a model without the key, while
the owner of the key can still match a deletion request to the steps that saw those records.

A hash is only as unlinkable as the steps it lists: the batch order of every recorded phase is
therefore keyed too (:func:`order_key`, :func:`mlflow_amnesia.learning.data.epoch_order`), and the
recorded trajectory (deltas, initial weights, batch order, optimizer state) is sealed under keys
derived from this one (:mod:`mlflow_amnesia.crypto`).

Where the key comes from, first match wins:

1. ``MLFLOW_AMNESIA_KEY``: 64 hex characters (32 bytes). An empty value counts as unset.
2. The key file ``$XDG_CONFIG_HOME/mlflow-amnesia/key`` (``~/.config/mlflow-amnesia/key`` when
   ``XDG_CONFIG_HOME`` is unset or relative): the same 64 hex characters and a newline, mode 0600.
   ``load_key(create=True)`` creates it on first use; two processes creating it at the same
   time end up with the same key (the file is linked into place only if absent).

The key lives outside the registry and the artifact store on purpose: the registry may be shared
more widely than the ability to re-identify records.

Back it up. Losing the key does not break the served models, but it makes every *existing* model
unforgettable: a deletion request's ids can no longer be matched to the hashes in the index, the
recorded deltas can no longer be read, and there is no way to recover the key from either. Copy the key file (or the variable) into
your secret store; to use it elsewhere set ``MLFLOW_AMNESIA_KEY="$(cat ~/.config/mlflow-amnesia/key)"``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import sys
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .errors import InputError, RecordKeyError

ENV_VAR = "MLFLOW_AMNESIA_KEY"
KEY_BYTES = 32
HASH_BYTES = 16
KEY_FILE_MODE = 0o600
_HASH_CHUNK = 65536

_KEY_ID_DOMAIN = b"mlflow-amnesia key id"
# Per-record hashes are HMAC(key, utf8(id)); a valid UTF-8 string never contains 0xff, so a
# message starting with 0xff can never collide with a record id's message.
_REQUEST_DOMAIN = b"\xffmlflow-amnesia forget request v1\x00"
_ORDER_DOMAIN = b"\xffmlflow-amnesia epoch order v2\x00"
_EXPECTED = "64 hexadecimal characters (32 bytes), e.g. the output of `openssl rand -hex 32`"


def key_path() -> Path:
    """The key file: ``$XDG_CONFIG_HOME/mlflow-amnesia/key``, default ``~/.config/mlflow-amnesia/key``."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    if xdg and os.path.isabs(xdg):
        base = Path(xdg)
    else:
        try:
            base = Path.home() / ".config"
        except RuntimeError:
            raise RecordKeyError(
                f"cannot locate the record-hashing key file: no home directory is known. "
                f"Set {ENV_VAR} to the key ({_EXPECTED}) or XDG_CONFIG_HOME to a directory."
            ) from None
    return base / "mlflow-amnesia" / "key"


def generate_key() -> bytes:
    """A fresh random 32-byte key (from the OS's CSPRNG)."""
    return secrets.token_bytes(KEY_BYTES)


def parse_key(text: str, *, source: str = ENV_VAR) -> bytes:
    """Decode a key written as 64 hex characters; ``source`` names where it came from in errors."""
    if source == ENV_VAR:
        where, fix = f"{ENV_VAR}", "Fix it, or unset it to use the key file."
    else:
        where, fix = f"the key file {source}", f"Restore it from your backup (or set {ENV_VAR})."
    s = text.strip()
    if len(s) != 2 * KEY_BYTES:
        raise RecordKeyError(f"{where} holds {len(s)} characters, expected {_EXPECTED}. {fix}")
    try:
        return bytes.fromhex(s)
    except ValueError:
        raise RecordKeyError(f"{where} is not hexadecimal, expected {_EXPECTED}. {fix}") from None


def check_key(key: bytes) -> bytes:
    """Return ``key`` if it is 32 bytes, else raise :class:`RecordKeyError`."""
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        what = f"{len(key)} bytes" if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise RecordKeyError(f"a record-hashing key must be {KEY_BYTES} bytes, got {what}; use load_key().")
    return bytes(key)


def load_key(create: bool = False, *, path: Path | None = None) -> bytes:
    """The record-hashing key (32 bytes): ``MLFLOW_AMNESIA_KEY``, else the key file.

    With ``create=True`` a missing key file is created (training does this); without it a
    missing key is a :class:`RecordKeyError`, since a new key could not match existing indexes.
    ``path`` overrides the key file location (the environment variable still wins).
    """
    env = os.environ.get(ENV_VAR, "")
    if env.strip():
        return parse_key(env, source=ENV_VAR)
    p = Path(path) if path is not None else key_path()
    key = _read_key_file(p)
    if key is not None:
        return key
    if not create:
        raise RecordKeyError(
            f"no record-hashing key: {ENV_VAR} is not set and the key file {p} does not exist. "
            f"Restore the key file from your backup or set {ENV_VAR}; models trained with another key "
            "cannot be matched to record ids without that key."
        )
    return _create_key_file(p)


def load_key_for(expected_key_id: str | None, what: str, *, to: str = "use it") -> bytes:
    """The record key, checked against the key id ``what`` (e.g. ``"digits-cnn v2"``) was built with.

    Every command that hashes record ids against a version calls this first: hashes made with
    another key match nothing, so a wrong key would list forgotten records as present or audit
    the wrong ones instead of failing. Raises :class:`RecordKeyError` naming both key ids and
    where the key is read from; ``to`` says what the key is needed for. A version that
    recorded no key id (``None``) is not checked.
    """
    try:
        key = load_key(create=False)
    except RecordKeyError as e:
        raise RecordKeyError(f"{e} {what} was built with the key of id {expected_key_id}.") from None
    if expected_key_id and expected_key_id != key_id(key):
        where = f"{ENV_VAR} is set" if os.environ.get(ENV_VAR, "").strip() else f"the key file is {key_path()}"
        raise RecordKeyError(
            f"{what} was built with the record key of id {expected_key_id}, but the current key has id "
            f"{key_id(key)} ({where}): restore that key ({ENV_VAR} or the key file {key_path()}, from your "
            f"backup) to {to}; no other key matches record ids to this version."
        )
    return key


def key_id(key: bytes) -> str:
    """A public fingerprint of the key (16 hex chars), stored in indexes to detect a wrong key."""
    return hashlib.sha256(_KEY_ID_DOMAIN + check_key(key)).digest()[:8].hex()


def order_key(key: bytes) -> bytes:
    """The key of the batch orders (32 bytes): ``HMAC-SHA256(key, "mlflow-amnesia epoch order v2")``.

    Domain-separated like :func:`hash_request` (the 0xff prefix is never a record id's UTF-8), so
    it reveals neither the key nor any record hash. Without it the order of a training phase
    cannot be recomputed, so the record index's step sets cannot be matched to record positions.
    """
    return hmac.new(check_key(key), _ORDER_DOMAIN, hashlib.sha256).digest()


def hash_ids(ids: Iterable[str], key: bytes) -> np.ndarray:
    """``HMAC-SHA256(key, id.encode('utf-8'))[:16]`` for each id, as an ``(n, 16)`` uint8 array.

    Precomputes the HMAC inner/outer states once (about a microsecond an id) and gathers the
    digests in chunks, so a million ids never become a million live Python objects.
    """
    key = check_key(key)
    block = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
    chunks: list[np.ndarray] = []
    digests: list[bytes] = []
    for rid in ids:
        i = inner.copy()
        i.update(_encode_id(rid))
        o = outer.copy()
        o.update(i.digest())
        digests.append(o.digest()[:HASH_BYTES])
        if len(digests) == _HASH_CHUNK:
            chunks.append(np.frombuffer(b"".join(digests), dtype=np.uint8))
            digests = []
    chunks.append(np.frombuffer(b"".join(digests), dtype=np.uint8))
    return np.concatenate(chunks).reshape(-1, HASH_BYTES)


def hash_rows(hashes: np.ndarray) -> np.ndarray:
    """``hashes`` as an ``(n, HASH_BYTES)`` uint8 array (a flat or empty array reshaped)."""
    return np.ascontiguousarray(hashes, dtype=np.uint8).reshape(-1, HASH_BYTES)


def no_hashes() -> np.ndarray:
    """An empty ``(0, HASH_BYTES)`` uint8 array: no record."""
    return np.zeros((0, HASH_BYTES), np.uint8)


def hash_keys(hashes: np.ndarray) -> np.ndarray:
    """One opaque value per keyed hash (a ``V16`` array): what ``sort``, ``searchsorted`` and
    ``isin`` compare, bytewise, without a Python object per record."""
    return hash_rows(hashes).view(f"V{HASH_BYTES}").ravel()


def hashes_in(hashes: np.ndarray, among: np.ndarray) -> np.ndarray:
    """The keyed-hash membership test: for each row of ``hashes``, whether it is a row of ``among``.

    Both are ``(n, HASH_BYTES)`` uint8 arrays (e.g. :func:`hash_ids` of a request against a
    version's ``forgotten`` hashes); returns a bool array of ``len(hashes)``.
    """
    return np.isin(hash_keys(hashes), hash_keys(among))


def hash_request(ids: Iterable[str], key: bytes) -> str:
    """A keyed fingerprint (64 hex chars) of a set of ids, for tagging a forget request.

    Order and duplicates do not matter. Domain-separated from :func:`hash_ids`, so it never
    equals (or reveals) any single record's hash.
    """
    unique = sorted({_check_id(i) for i in ids})
    mac = hmac.new(check_key(key), _REQUEST_DOMAIN, hashlib.sha256)
    mac.update(len(unique).to_bytes(8, "big"))
    for rid in unique:
        b = _encode_id(rid)
        mac.update(len(b).to_bytes(8, "big"))
        mac.update(b)
    return mac.hexdigest()


def _check_id(rid: object) -> str:
    if not isinstance(rid, str):
        raise InputError(f"record ids must be strings, got {type(rid).__name__} {rid!r}")
    return rid


def _encode_id(rid: object) -> bytes:
    try:
        return _check_id(rid).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"record id {rid!r} cannot be encoded as UTF-8 (it holds a lone surrogate)") from None


def _read_key_file(p: Path) -> bytes | None:
    """The key in ``p``, ``None`` if absent. Waits briefly for a creator that is mid-write."""
    for attempt in range(50):
        try:
            text = p.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RecordKeyError(f"cannot read the key file {p}: {e}. Fix its permissions or set {ENV_VAR}.") from None
        if text.strip() or attempt == 49:
            break
        time.sleep(0.02)  # only a creator without hard links writes in place; give it time
    key = parse_key(text, source=str(p))
    _warn_if_open(p)
    return key


def _warn_if_open(p: Path) -> None:
    if os.name == "nt":
        return
    try:
        mode = stat.S_IMODE(p.stat().st_mode)
    except OSError:
        return
    if mode & 0o077:
        warnings.warn(
            f"the record-hashing key file {p} is accessible to other users (mode {mode:o}); run `chmod 600 {p}`.",
            UserWarning,
            stacklevel=3,
        )


def _create_key_file(p: Path) -> bytes:
    """Create ``p`` (0600) with a new key unless another process wins the race; return the key in ``p``."""
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = (generate_key().hex() + "\n").encode("ascii")
    tmp = p.with_name(f".{p.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    try:
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, KEY_FILE_MODE)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        created = False
        try:
            os.link(tmp, p)  # atomic, and unlike os.replace it never overwrites a key someone already uses
            created = True
        except FileExistsError:
            pass  # another process created it first: use theirs (and its announcement)
        except OSError:
            created = _create_in_place(p, data)  # no hard links on this file system
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    _fsync_dir(p.parent)
    key = _read_key_file(p)
    if key is None:
        raise RecordKeyError(f"the key file {p} vanished while it was being created; retry, or set {ENV_VAR}.")
    if created:
        announce_key(p)
    return key


def announce_key(p: Path) -> None:
    """Say, once (by the process that created it, even when progress is quiet), where the new key is."""
    print(
        f"created the record key {p} (mode 0600): back it up now (e.g. in your team's secret store, then "
        f"set {ENV_VAR} from it). Without it no record can be forgotten from the models trained with it; "
        "with it anyone can link record ids to the stored hashes, so keep it as secret as the data.",
        file=sys.stderr,
        flush=True,
    )


def _create_in_place(p: Path, data: bytes) -> bool:
    """Create ``p`` with ``data``; False if another process created it first."""
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _fsync_dir(d: Path) -> None:
    if os.name == "nt":
        return
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
