"""What sealing the recorded trajectory costs: AES-256-GCM against compression, per ResNet18 step.

    python bench/sealing.py            # about a minute on 2 cores
    python bench/sealing.py --quick    # a smoke run (figures not meaningful)

One synthetic ResNet18-sized delta (the CIFAR ResNet18's tensors, 11.2M values, 44.9 MB of
float32; each tensor Gaussian with its own scale) is cut into the store's parts (16 MiB raw each)
and encoded with the default codec (int8: quantise, byte-shuffle, zstd), about 10 MB compressed.
Per step, best of N rounds, in one run:

* ``compress``: the codec's encode of every part (what the store's threads do today);
* ``seal``: AES-256-GCM of every compressed part with the store's cipher (what sealing adds);
* ``open``: its decryption and authentication (what a rollback adds per step read);
* ``decompress``: the codec's decode of every part, for scale.

It also seals the parts on 2 threads at once, to see whether ``cryptography`` releases the GIL
(the store compresses and seals on its own thread pool, beside the training thread).

Prints the ratios and writes bench/out/sealing.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import time

import numpy as np

from common import BENCH_KEY, OUT, cifar_resnet18, layout_of, machine, write_json

from mlflow_amnesia.crypto import ChunkCipher, new_salt
from mlflow_amnesia.store import get_codec
from mlflow_amnesia.recording.store.chunk import pack_chunk as _pack_chunk
from mlflow_amnesia.recording.store.manifest import DEFAULT_PART_BYTES, TensorSpec, partition as _partition


def _best(fn, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--codec", default="int8")
    args = ap.parse_args()
    rounds = 2 if args.quick else 7

    layout = [TensorSpec.parse(t) for t in layout_of(cifar_resnet18())]
    rng = np.random.default_rng(0)
    arrays = [(rng.standard_normal(t.numel) * 10.0 ** rng.uniform(-5, -3)).astype(np.float32) for t in layout]
    parts = _partition(layout, DEFAULT_PART_BYTES)
    codec = get_codec(args.codec)
    chunks = [_pack_chunk([codec.encode(a) for a in arrays[a:b]]) for a, b in parts]
    cipher = ChunkCipher(BENCH_KEY, new_salt())
    sealed = [cipher.seal(0, p, c) for p, c in enumerate(chunks)]

    t_compress = _best(lambda: [codec.encode(a) for a in arrays], rounds)
    t_seal = _best(lambda: [cipher.seal(0, p, c) for p, c in enumerate(chunks)], rounds)
    t_open = _best(lambda: [cipher.open(0, p, s) for p, s in enumerate(sealed)], rounds)
    frames = [codec.encode(a) for a in arrays]
    t_decompress = _best(lambda: [codec.decompress(f, a.size) for f, a in zip(frames, arrays)], rounds)
    with cf.ThreadPoolExecutor(2) as pool:
        t_seal_2 = _best(lambda: list(pool.map(lambda pc: cipher.seal(0, *pc), enumerate(chunks * 2))), rounds)
    t_seal_serial_2 = 2 * t_seal

    raw = 4 * sum(a.size for a in arrays)
    stored = sum(len(c) for c in chunks)
    res = {
        "machine": machine(),
        "codec": codec.name,
        "parts": len(parts),
        "raw_mb": raw / 1e6,
        "compressed_mb": stored / 1e6,
        "compress_ms": 1e3 * t_compress,
        "seal_ms": 1e3 * t_seal,
        "open_ms": 1e3 * t_open,
        "decompress_ms": 1e3 * t_decompress,
        "seal_mb_per_s": stored / t_seal / 1e6,
        "seal_over_compress": t_seal / t_compress,
        "open_over_decompress": t_open / t_decompress,
        "two_threads_speedup": t_seal_serial_2 / t_seal_2,
        "bytes_added_per_chunk": len(sealed[0]) + 12 - len(chunks[0]),
    }
    write_json(OUT / "sealing.json", res)
    print(f"ResNet18 step: {res['raw_mb']:.1f} MB raw, {res['compressed_mb']:.1f} MB compressed ({codec.name}), "
          f"{len(parts)} parts")
    print(f"compress {res['compress_ms']:.0f} ms, seal {res['seal_ms']:.1f} ms ({res['seal_mb_per_s']:.0f} MB/s): "
          f"seal / compress = {res['seal_over_compress']:.3f}")
    print(f"decompress {res['decompress_ms']:.0f} ms, open {res['open_ms']:.1f} ms: "
          f"open / decompress = {res['open_over_decompress']:.3f}")
    print(f"sealing on 2 threads: {res['two_threads_speedup']:.2f}x one thread (2.0: the GIL is released); "
          f"+{res['bytes_added_per_chunk']} bytes per chunk")


if __name__ == "__main__":
    main()
