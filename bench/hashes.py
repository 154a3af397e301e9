"""Integrity-check candidates on this CPU: hashlib's sha256, blake2b, blake2s, zlib's crc32 and,
where importable, BLAKE3 (the ``blake3`` package: not a dependency; ``pip install --target DIR
blake3``, then ``PYTHONPATH=DIR``).

    python bench/hashes.py

One thread, 32 MiB of random bytes, best of 5, GB/s of process CPU time, and what hashing one
int8 ResNet18 step's chunks (10.3 MB) costs at that rate. Why `sum` stopped hashing sealed chunks
(the AES-GCM tag and authentication check them) and why the write side still hashes with sha256:
docs/BENCHMARKS.md, "Rollback" and "Store CPU per ResNet18 step". Writes bench/out/hashes.json.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, machine, write_json  # noqa: E402

STEP_BYTES = 10_278_110  # one int8 step of the synthetic ResNet18 deltas, compressed (bench/throughput.py)


def _candidates() -> list[tuple[str, object]]:
    out = [
        ("sha256", lambda b: hashlib.sha256(b).digest()),
        ("blake2b-256", lambda b: hashlib.blake2b(b, digest_size=32).digest()),
        ("blake2s", lambda b: hashlib.blake2s(b).digest()),
        ("crc32 (not cryptographic)", zlib.crc32),
    ]
    try:
        import blake3
    except ImportError:
        print("blake3 is not importable: its row is left out", flush=True)
    else:
        out.append(("blake3 (one thread)", lambda b: blake3.blake3(b).digest()))
    return out


def main() -> None:
    data = os.urandom(32 << 20)
    rows = []
    for name, fn in _candidates():
        best = float("inf")
        for _ in range(5):
            c0 = time.process_time()
            fn(data)  # type: ignore[operator]
            best = min(best, time.process_time() - c0)
        gbs = len(data) / best / 1e9
        rows.append({"hash": name, "GB_per_s": round(gbs, 3), "ms_per_int8_resnet18_step": round(STEP_BYTES / gbs / 1e6, 2)})
        print(f"{name:26s} {gbs:5.2f} GB/s  {STEP_BYTES / gbs / 1e6:5.2f} ms per int8 ResNet18 step", flush=True)
    write_json(OUT / "hashes.json", {"command": "python bench/hashes.py", "machine": machine(), "bytes": len(data),
                                     "rows": rows})


if __name__ == "__main__":
    main()
