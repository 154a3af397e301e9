"""Authenticated encryption of the recorded trajectory under the record key.

The deltas of every step, the initial weights, the batch order and the final optimizer state
together let anyone rebuild every intermediate model and each step's batch gradient, and the
batch order links keyed record hashes to records (issue 13). So all of them are stored as
AES-256-GCM ciphertext from the ``cryptography`` package (a well-kept library, AES-NI backed),
never hand-written crypto:

* **Data keys.** Each delta store and each training file gets its own 256-bit data key,
  ``HKDF-SHA256(record key, salt, info=purpose)`` with a fresh random 256-bit salt kept beside
  the ciphertext (store manifest, file header). The record key never encrypts anything itself,
  and a data key is never used outside its store or file.
* **Nonces.** A random 96-bit nonce per chunk; per file a random 96-bit base nonce, XORed with
  the segment number for each 16 MiB segment (a file of any size, well under GCM's limits).
* **Binding.** The associated data binds a chunk to its store (salt), step and part, and a file
  to its role name (``initial_state.pt``...) and its segment number and whether it is the last
  one, so chunks cannot be swapped between steps or stores, files cannot be swapped between
  roles, and a file cannot be truncated at a segment boundary, without failing authentication.

Integrity of the *stored* bytes (size and digest in the store manifest) is still checked first,
without the key; decryption then authenticates against the key.
"""

from __future__ import annotations

import json
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import RecordKeyError, StoreError
from .keys import ENV_VAR, check_key, key_id

__all__ = ["SCHEME", "ChunkCipher", "InvalidTag", "is_sealed", "new_salt", "open_file", "seal_file"]

#: The scheme name recorded in store manifests and file headers.
SCHEME = "aes-256-gcm/hkdf-sha256"
SALT_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_HAS_INTO = hasattr(AESGCM, "encrypt_into") and hasattr(AESGCM, "decrypt_into")
_STORE_INFO = b"mlflow-amnesia delta store v2"
_FILE_INFO = b"mlflow-amnesia training file v1\x00"
_CHUNK_AAD = b"mlflow-amnesia chunk v2\x00"
_FILE_MAGIC = b"AMSEALED"
_FILE_VERSION = 1
_FILE_PREFIX = struct.Struct("<8sII")  # magic, version, header length
_SEGMENT = 16 << 20
_MAX_HEADER = 1 << 16


def new_salt() -> bytes:
    """A fresh random salt (32 bytes, from the OS's CSPRNG)."""
    return os.urandom(SALT_BYTES)


def _derive(key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(check_key(key))


def wrong_key(what: str, stored_id: str, key: bytes | None) -> RecordKeyError:
    """The error for a missing or wrong key: names the key id the data needs and the one given."""
    if key is None:
        return RecordKeyError(
            f"{what} is encrypted under the record key with id {stored_id} and no key was given: it can only be "
            f"read with that key (set {ENV_VAR} or restore the key file)."
        )
    return RecordKeyError(
        f"{what} is encrypted under the record key with id {stored_id}, but the key given has id {key_id(key)}: "
        f"restore the key with id {stored_id} ({ENV_VAR} or the key file) to read it."
    )


class ChunkCipher:
    """AES-256-GCM for the chunks of one delta store: data key from the record key and the store's salt."""

    def __init__(self, key: bytes, salt: bytes) -> None:
        self._aead = AESGCM(_derive(key, salt, _STORE_INFO))
        self._salt = bytes(salt)

    def _aad(self, step: int, part: int) -> bytes:
        return _CHUNK_AAD + self._salt + struct.pack("<QI", step, part)

    def seal(self, step: int, part: int, plain: bytes) -> bytes:
        """``nonce + ciphertext + tag`` of one chunk's plaintext, bound to (store, step, part)."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plain, self._aad(step, part))

    def seal_into(self, step: int, part: int, plain: bytes | memoryview, out: memoryview) -> None:
        """:meth:`seal` written into ``out`` (``len(plain) + NONCE_BYTES + TAG_BYTES`` bytes): no
        fresh buffers per chunk (the store reuses ``out``)."""
        nonce = os.urandom(NONCE_BYTES)
        out[:NONCE_BYTES] = nonce
        if _HAS_INTO:
            self._aead.encrypt_into(nonce, plain, self._aad(step, part), out[NONCE_BYTES:])
        else:  # cryptography < 45
            out[NONCE_BYTES:] = self._aead.encrypt(nonce, bytes(plain), self._aad(step, part))

    def open(
        self, step: int, part: int, sealed: bytes | memoryview, out: bytearray | None = None
    ) -> bytes | memoryview:
        """The plaintext of :meth:`seal`'s output; raises :class:`InvalidTag` when it does not authenticate.

        With ``out`` (a reused buffer at least as long as the plaintext) the plaintext is written
        there and a view of it returned.
        """
        if len(sealed) < NONCE_BYTES + TAG_BYTES:
            raise InvalidTag()
        mv = memoryview(sealed)
        nonce, body = bytes(mv[:NONCE_BYTES]), mv[NONCE_BYTES:]
        if out is not None and _HAS_INTO:
            n = len(body) - TAG_BYTES
            view = memoryview(out)[:n]
            self._aead.decrypt_into(nonce, body, self._aad(step, part), view)
            return view
        return self._aead.decrypt(nonce, bytes(body), self._aad(step, part))


# ---------------------------------------------------------------------------------------------
# sealed files: <magic><u32 version><u32 header length><header JSON> then the sealed segments


def is_sealed(data: bytes) -> bool:
    """Whether ``data`` is a sealed file (else: a plaintext file of an older version)."""
    return bytes(data[:8]) == _FILE_MAGIC


def _segment_aad(head: bytes, role: str, i: int, last: bool) -> bytes:
    return head + role.encode() + b"\x00" + struct.pack("<QB", i, last)


def _nonce(base: bytes, i: int) -> bytes:
    return (int.from_bytes(base, "big") ^ i).to_bytes(NONCE_BYTES, "big")


def seal_file(data: bytes, key: bytes, role: str) -> bytes:
    """``data`` encrypted under a fresh data key for the file role ``role`` (its file name)."""
    salt, base = new_salt(), os.urandom(NONCE_BYTES)
    header = json.dumps(
        {
            "scheme": SCHEME,
            "key_id": key_id(key),
            "role": role,
            "salt": salt.hex(),
            "nonce": base.hex(),
            "segment_bytes": _SEGMENT,
        },
        sort_keys=True,
    ).encode()
    head = _FILE_PREFIX.pack(_FILE_MAGIC, _FILE_VERSION, len(header)) + header
    aead = AESGCM(_derive(key, salt, _FILE_INFO + role.encode()))
    mv = memoryview(data)
    n = max(1, -(-len(data) // _SEGMENT))
    out = [head]
    for i in range(n):
        seg = bytes(mv[i * _SEGMENT : (i + 1) * _SEGMENT])
        out.append(aead.encrypt(_nonce(base, i), seg, _segment_aad(head, role, i, i == n - 1)))
    return b"".join(out)


def open_file(data: bytes, key: bytes | None, role: str, where: str) -> bytes:
    """The plaintext of a sealed file; ``where`` (its URL) names it in errors.

    A missing or wrong key is a :class:`RecordKeyError` naming both key ids; a file of another
    role, a truncated, altered or foreign file is a :class:`StoreError`.
    """

    def damaged(why: str) -> StoreError:
        return StoreError(
            f"{where} is damaged or was altered ({why}); restore it from a backup of the run's artifacts."
        )

    if len(data) < _FILE_PREFIX.size:
        raise damaged("shorter than its header")
    magic, version, hlen = _FILE_PREFIX.unpack_from(data)
    if magic != _FILE_MAGIC:
        raise damaged("not a sealed file")
    if version > _FILE_VERSION:
        raise StoreError(
            f"{where} is a sealed file of version {version}, newer than the {_FILE_VERSION} this "
            "mlflow-amnesia reads; upgrade mlflow-amnesia."
        )
    if hlen > _MAX_HEADER or _FILE_PREFIX.size + hlen > len(data):
        raise damaged("truncated header")
    head = bytes(data[: _FILE_PREFIX.size + hlen])
    try:
        h = json.loads(head[_FILE_PREFIX.size :])
        stored_id, salt, base = str(h["key_id"]), bytes.fromhex(h["salt"]), bytes.fromhex(h["nonce"])
        seg_bytes, stored_role = int(h["segment_bytes"]), str(h["role"])
        if h["scheme"] != SCHEME or len(base) != NONCE_BYTES or seg_bytes < 1:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise damaged("unreadable header") from None
    if stored_role != role:
        raise StoreError(
            f"{where} holds a phase's {stored_role}, not its {role}: the file was swapped or renamed; "
            "restore it from a backup of the run's artifacts."
        )
    if key is None or key_id(key) != stored_id:
        raise wrong_key(where, stored_id, key)
    aead = AESGCM(_derive(key, salt, _FILE_INFO + role.encode()))
    body = memoryview(data)[len(head) :]
    step = seg_bytes + TAG_BYTES
    n = max(1, -(-len(body) // step))
    out = []
    try:
        for i in range(n):
            out.append(
                aead.decrypt(
                    _nonce(base, i), bytes(body[i * step : (i + 1) * step]), _segment_aad(head, role, i, i == n - 1)
                )
            )
    except InvalidTag:
        raise damaged("authentication failed") from None
    return b"".join(out)
