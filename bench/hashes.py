"""Integrity-check candidates on this CPU: hashlib's sha256, blake2b, blake2s, and zlib's crc32.

    python bench/hashes.py

One thread, 32 MiB of random bytes, best of 5, GB/s of process CPU time. Why `sum` stopped
hashing sealed chunks (the AES-GCM tag and authentication check them) instead of swapping sha256
for another hash: docs/BENCHMARKS.md, "Rollback".
"""

from __future__ import annotations

import hashlib
import os
import time
import zlib


def main() -> None:
    data = os.urandom(32 << 20)
    for name, fn in (
        ("sha256", lambda b: hashlib.sha256(b).digest()),
        ("blake2b-256", lambda b: hashlib.blake2b(b, digest_size=32).digest()),
        ("blake2s", lambda b: hashlib.blake2s(b).digest()),
        ("crc32 (not cryptographic)", zlib.crc32),
    ):
        best = float("inf")
        for _ in range(5):
            c0 = time.process_time()
            fn(data)
            best = min(best, time.process_time() - c0)
        print(f"{name:26s} {len(data) / best / 1e9:5.2f} GB/s")


if __name__ == "__main__":
    main()
