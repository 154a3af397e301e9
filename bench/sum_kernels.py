"""The dequantise + float64 accumulation of `DeltaStore.sum` on int8 payloads, three ways.

    python bench/sum_kernels.py

One ResNet18-sized tensor (11,227,136 values, blocks of 4,096 with one float32 scale), 8 steps
added into float64 accumulators slice by slice, one thread, process CPU time, best of 3, per
step: the codec's numpy path (`Int8Codec.add_payloads`, 32K-value slices), the same arithmetic
with torch's kernels at 32K, 256K and 1M-value slices (the same bits: float32 dequantise, float64
add), and, where numba is installed (`pip install -e '.[fast]'`), the codec's compiled loop
(`add_payloads(..., compiled=True)`, mlflow_amnesia/recording/store/fused.py; its compile or cache
load is timed apart, as `compiled_first_call_s`). Why the accumulation was not moved to torch:
docs/BENCHMARKS.md, "Rollback". Writes bench/out/sum_kernels.json.
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
    from mlflow_amnesia.recording.store import fused

    first = None
    if fused.available():  # numba installed: the codec's compiled loop

        def compiled() -> np.ndarray:
            acc = np.zeros(N)
            codec.add_payloads(payloads, N, acc, compiled=True)
            return acc

        t0 = time.perf_counter()
        compiled()  # compiled, or loaded from numba's cache, outside the timing
        first = time.perf_counter() - t0
        kernels.append(("compiled loop (numba), 32K slices", compiled))
    else:
        print("numba is not installed (pip install -e '.[fast]'): the compiled loop's row is left out", flush=True)
    res: dict = {"command": "python bench/sum_kernels.py", "machine": machine(), "values": N, "steps": STEPS,
                 "numba": _numba_version(), "compiled_first_call_s": first, "cpu_ms_per_step": {},
                 "same_bits": {}}
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


if __name__ == "__main__":
    main()
