"""The dequantise + float64 accumulation of `DeltaStore.sum` on int8 payloads, three ways.

    python bench/sum_kernels.py

One ResNet18-sized tensor (11,227,136 values, blocks of 4,096 with one float32 scale), 8 steps
added into float64 accumulators slice by slice, one thread, process CPU time, best of 3, per
step: the codec's numpy path (`Int8Codec.add_payloads`, 32K-value slices), and the same arithmetic
with torch's kernels at 32K, 256K and 1M-value slices (the same bits: float32 dequantise, float64
add), and, where numba is importable (not a dependency: ``pip install --target DIR numba llvmlite``,
then ``PYTHONPATH=DIR``), the same arithmetic fused into one compiled loop. Why the accumulation was not moved to torch: docs/BENCHMARKS.md, "Rollback". Writes
bench/out/sum_kernels.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, machine, write_json  # noqa: E402

from mlflow_amnesia.recording.store.codecs import get_codec  # noqa: E402

B, STEPS = 4096, 8
N = (11_229_732 // B) * B


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    codec = get_codec("int8")
    deltas = [rng.normal(0, 1e-3, N).astype(np.float32) for _ in range(STEPS)]
    payloads = [bytes(codec._pack(d)) for d in deltas]
    prep = [codec._prepare(p, N) for p in payloads]
    codes = [torch.from_numpy(np.frombuffer(q, np.int8).copy()) for _, q in prep]
    scales = [torch.from_numpy(np.array(s)) for s, _ in prep]

    def ours() -> np.ndarray:
        acc = np.zeros(N)
        codec.add_payloads(payloads, N, acc)
        return acc

    def with_torch(sl: int) -> np.ndarray:
        acc = torch.zeros(N, dtype=torch.float64)
        tmp = torch.empty(sl, dtype=torch.float32)
        for s in range(0, N, sl):
            e = min(N, s + sl)
            o, t, full, b0 = acc[s:e], tmp[: e - s], (e - s) // B, s // B
            for q, sc in zip(codes, scales):
                torch.mul(q[s:e].view(full, B), sc[b0 : b0 + full, None], out=t.view(full, B))
                o.add_(t)
        return acc.numpy()

    kernels = [("numpy, 32K slices (the codec)", ours), ("torch, 32K slices", lambda: with_torch(1 << 15)),
               ("torch, 256K slices", lambda: with_torch(1 << 18)), ("torch, 1M slices", lambda: with_torch(1 << 20))]
    fused = _numba_kernel()
    if fused is not None:  # what a compiled, fused loop can do; numba is not a dependency of the package
        all_codes = np.stack([c.numpy() for c in codes])
        all_scales = np.stack([sc.numpy() for sc in scales])

        def with_numba() -> np.ndarray:
            acc = np.zeros(N)
            fused(acc, all_codes, all_scales, 1 << 15)
            return acc

        with_numba()  # compile outside the timing
        kernels.append(("numba, fused, 32K slices", with_numba))
    res: dict = {"command": "python bench/sum_kernels.py", "machine": machine(), "values": N, "steps": STEPS,
                 "numba": _numba_version(), "cpu_ms_per_step": {}, "same_bits": {}}
    ref = None
    for name, fn in kernels:
        best = float("inf")
        for _ in range(3):
            c0 = time.process_time()
            out = fn()
            best = min(best, time.process_time() - c0)
        res["cpu_ms_per_step"][name] = 1000 * best / STEPS
        if ref is None:
            ref = out
        res["same_bits"][name] = bool(np.array_equal(ref.view(np.int64), out.view(np.int64)))
        print(f"{name:32s} {1000 * best / STEPS:6.1f} ms/step  same bits: {res['same_bits'][name]}", flush=True)
    write_json(OUT / "sum_kernels.json", res)


def _numba_version() -> str | None:
    try:
        import numba
    except ImportError:
        return None
    return str(numba.__version__)


def _numba_kernel():
    """The dequantise + float64 add fused into one compiled loop (numba, if importable: e.g.
    ``PYTHONPATH=DIR`` after ``pip install --target DIR numba llvmlite``); the same arithmetic and
    order as the codec: per slice, per step in order, ``acc += float64(float32(code) * scale)``."""
    try:
        import numba
    except ImportError:
        print("numba is not importable: the fused kernel's row is left out", flush=True)
        return None

    @numba.njit(cache=False, fastmath=False, boundscheck=False)
    def fused(acc, codes, scales, sl):  # pragma: no cover - compiled
        n = acc.shape[0]
        for s in range(0, n, sl):
            e = min(n, s + sl)
            for k in range(codes.shape[0]):
                for b in range(s // B, e // B):
                    sc = scales[k, b]
                    a, c = acc[b * B : (b + 1) * B], codes[k, b * B : (b + 1) * B]
                    for i in range(B):  # on views, LLVM vectorises it (indexing acc itself: 3x slower)
                        a[i] += np.float64(np.float32(c[i]) * sc)

    return fused


if __name__ == "__main__":
    main()
