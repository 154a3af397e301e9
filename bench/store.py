"""Delta store benchmark: bytes per value for each codec, rollback speed and memory.

    python bench/store.py            # the full run (~5 min on 2 cores); writes bench/out/store.json
    python bench/store.py --quick    # a smoke run with fewer steps (figures not meaningful)

(a) Real training deltas, recorded with error feedback (docs/ARCHITECTURE.md) exactly as the
    Recorder does, into one store per codec:
    * CIFAR-style ResNet18 (3x3 stem, no max-pool, 100 classes; 11,220,132 parameters),
      batch 128 of 32x32x3, SGD lr 0.1 momentum 0.9 weight decay 5e-4. There is no CIFAR
      here: the inputs are the real MNIST t10k images padded to 32x32 and repeated to three
      channels, labels 0-9 in the 100-way head. Warm-up steps first, then measured steps.
    * A small CNN (2 conv + 2 fc, 421,642 parameters) on MNIST 28x28 (first 8,000 t10k images
      train, last 2,000 test), where test accuracy after a partial rollback is measured too.
    Bytes per value = stored bytes / (steps x recorded values); raw float32 is 4.0. Recorded
    values are the parameters plus float buffers (BatchNorm running statistics).
(b) sum(steps) throughput against plain zstd decompression of the same chunk bytes, in the
    same run; its time against |S| and against the store's total number of steps; its peak
    traced memory (tracemalloc) against |S|.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("MLFLOW_AMNESIA_QUIET", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import zstandard  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (  # noqa: E402
    BENCH_KEY,
    OUT,
    ErrorFeedback,
    SmallCNN,
    Timer,
    batches,
    cifar_resnet18,
    layout_of,
    load_mnist_t10k,
    machine,
    mnist_tensor,
    n_params,
    recorded_state,
    sgd_step,
    write_json,
)

from mlflow_amnesia.store import DeltaStore, get_codec  # noqa: E402
from mlflow_amnesia.store.codecs import DEFAULT_CODEC, DEFAULT_LEVEL  # noqa: E402
from mlflow_amnesia.recording.store.chunk import unpack_chunk as _unpack_chunk  # noqa: E402  (the chunk format, to time zstd alone)

CODECS = ["zstd", "f32", "bf16", "int8"]
COMMAND = "python bench/store.py"


def _l2(tensors: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in tensors.values())))


def _worst(back: dict, theta0: dict, thetaT: dict) -> dict:
    """The tensor with the largest rollback error, and how large its values and changes are."""
    k = max(back, key=lambda k: float((back[k] - theta0[k]).abs().max()))
    return {
        "name": k,
        "max_abs_err": float((back[k] - theta0[k]).abs().max()),
        "max_abs_value": float(theta0[k].abs().max()),
        "max_abs_change": float((thetaT[k] - theta0[k]).abs().max()),
    }


def _state64(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.double().clone() for k, v in recorded_state(model).items()}


def record(
    label: str,
    model: torch.nn.Module,
    data,
    *,
    warmup: int,
    measured: int,
    lr: float,
    workdir: Path,
    subset: list[int],
) -> dict:
    """Train, then record ``measured`` steps into one store per codec; sizes and errors."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(warmup):
        sgd_step(model, opt, *next(data))
    theta0 = _state64(model)
    layout = layout_of(model)
    n_values = sum(int(np.prod(t["shape"])) for t in layout)
    stores = {c: DeltaStore.create(str(workdir / f"{label}-{c}"), layout=layout, codec=c, key=BENCH_KEY) for c in CODECS}
    feedback = {c: ErrorFeedback(stores[c].codec.quantize, recorded_state(model)) for c in CODECS}
    step_s, append_s = [], {c: [] for c in CODECS}
    delta_err = {c: [] for c in CODECS}
    plain_err = {c: [] for c in CODECS}
    true_subset = {k: torch.zeros_like(v) for k, v in theta0.items()}
    prev = theta0
    for t in range(measured):
        with Timer() as tm:
            sgd_step(model, opt, *next(data))
        step_s.append(tm.s)
        state = recorded_state(model)
        cur = {k: v.double() for k, v in state.items()}
        true = {k: cur[k] - prev[k] for k in cur}
        if t in subset:
            for k in true:
                true_subset[k] += true[k]
        norm = _l2(true)
        for c in CODECS:
            d = feedback[c].delta(state)
            delta_err[c].append(_l2({k: d[k].double() - true[k] for k in d}) / norm)
            q = stores[c].codec.quantize
            plain_err[c].append(_l2({k: q(true[k].float()).double() - true[k] for k in true}) / norm)
            with Timer() as ta:
                stores[c].append(t, d, meta={"lr": lr})
            append_s[c].append(ta.s)
        prev = cur
    for s in stores.values():
        s.close()
    thetaT = _state64(model)
    moved = _l2({k: thetaT[k] - theta0[k] for k in thetaT})
    out = {
        "model": label,
        "parameters": n_params(model),
        "recorded_values": n_values,
        "warmup_steps": warmup,
        "measured_steps": measured,
        "train_step_s_median": statistics.median(step_s),
        "codecs": {},
    }
    for c in CODECS:
        st = DeltaStore.open(str(workdir / f"{label}-{c}"), key=BENCH_KEY)
        size = st.size()
        total = st.sum(st.steps)
        back = {k: thetaT[k] - torch.from_numpy(total[k]) for k in total}
        sub = st.sum(subset)
        sub_err = _l2({k: torch.from_numpy(sub[k]) - true_subset[k] for k in sub})
        out["codecs"][c] = {
            "bytes_per_value": size.stored / (size.steps * n_values),
            "compression_x": size.raw / size.stored,
            "stored_bytes": size.stored,
            "chunks_per_step": len(st.parts),
            "append_ms_median": 1000 * statistics.median(append_s[c]),
            "append_over_step": statistics.median(append_s[c]) / statistics.median(step_s),
            "delta_rel_l2_plain": statistics.mean(plain_err[c]),
            "delta_rel_l2_feedback": statistics.mean(delta_err[c]),
            "rollback_all_rel_l2": _l2({k: back[k] - theta0[k] for k in back}) / moved,
            "rollback_all_max_abs": max(float((back[k] - theta0[k]).abs().max()) for k in back),
            "rollback_all_worst_tensor": _worst(back, theta0, thetaT),
            "subset_rel_l2": sub_err / _l2(true_subset),
            "subset_err_over_weights": sub_err / _l2(thetaT),
        }
    out["subset_steps"] = subset
    return out


def level_table(workdir: Path, label: str) -> dict:
    """B/value and encode speed of the last recorded delta at zstd levels 1 and 3."""
    res = {}
    for c in CODECS:
        st = DeltaStore.open(str(workdir / f"{label}-{c}"), key=BENCH_KEY)
        d = st.read(st.steps[-1])
        vals = [v.reshape(-1) for v in d.values()]
        n = sum(v.size for v in vals)
        for level in (1, 3):
            codec = get_codec(c, level=level)
            with Timer() as tm:
                b = sum(len(codec.encode(v)) for v in vals)
            res[f"{c}@{level}"] = {"bytes_per_value": b / n, "encode_MBps": 4 * n / tm.s / 1e6}
    return res


def _frames(store: DeltaStore, url: str, steps: list[int]) -> list[bytes]:
    frames = []
    for s in steps:
        for p, rel in enumerate(store.chunk_files(s)):
            a, b = store.parts[p]
            data = Path(url, rel).read_bytes()
            frames += [bytes(f) for f in _unpack_chunk(data, b - a)]
    return frames


def _interleaved(fns: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Best wall and best process-CPU seconds of each function, the runs interleaved.

    Interleaving (a, b, c, a, b, c, ...) and keeping the best of each makes the ratios robust
    to load that other processes put on the machine for a while.
    """
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - w)
            cpu[k].append(time.process_time() - c)
    return {k: (min(wall[k]), min(cpu[k])) for k in fns}


def throughput(workdir: Path, label: str, repeats: int) -> dict:
    """sum(all steps) vs zstd-decompressing the same frames, per codec (same run, warm cache)."""
    res = {}
    for c in CODECS:
        url = str(workdir / f"{label}-{c}")
        st2 = DeltaStore.open(url, threads=2, key=BENCH_KEY)
        st1 = DeltaStore.open(url, threads=1, key=BENCH_KEY)
        frames = _frames(st2, url, st2.steps)
        dz = zstandard.ZstdDecompressor()
        with cf.ThreadPoolExecutor(2) as pool:
            st2.sum(st2.steps)  # warm the page cache
            t = _interleaved(
                {
                    "z1": lambda: [dz.decompress(f) for f in frames],
                    "z2": lambda: list(pool.map(lambda f: zstandard.ZstdDecompressor().decompress(f), frames)),
                    "s2": lambda: st2.sum(st2.steps),
                    "s1": lambda: st1.sum(st1.steps),
                    "s2f": lambda: st2.sum(st2.steps, dtype=np.float32),
                },
                repeats,
            )
        raw = 4 * st2.n_values * len(st2.steps)
        (tz1, cz1), (tz2, _), (ts2, _), (ts1, cs1), (ts2f, _) = (t[k] for k in ("z1", "z2", "s2", "s1", "s2f"))
        res[c] = {
            "steps": len(st2.steps),
            "sum_threads2_s": ts2,
            "sum_threads1_s": ts1,
            "zstd_1thread_s": tz1,
            "zstd_2threads_s": tz2,
            "ratio_sum2_vs_zstd1": tz1 / ts2,
            "ratio_sum2_vs_zstd2": tz2 / ts2,
            "ratio_sum1_vs_zstd1": tz1 / ts1,
            "ratio_sum2_float32_acc_vs_zstd1": tz1 / ts2f,
            "cpu_ratio_sum1_vs_zstd1": cz1 / cs1,
            "sum_threads2_raw_GBps": raw / ts2 / 1e9,
        }
    return res


def breakdown(workdir: Path, label: str, repeats: int) -> dict:
    """Single-thread milliseconds per step of each stage of sum(), per codec (robust to load)."""
    res = {}
    for c in CODECS:
        url = str(workdir / f"{label}-{c}")
        st = DeltaStore.open(url, key=BENCH_KEY)
        codec, layout, parts = st.codec, st.layout, st.parts
        items = [(s, p, rel) for s in st.steps for p, rel in enumerate(st.chunk_files(s))]
        sizes = [int(np.prod(t["shape"])) for t in layout]
        acc = [np.zeros(n) for n in sizes]
        datas, payloads = {}, {}

        def read() -> None:
            for s, p, rel in items:
                datas[s, p] = Path(url, rel).read_bytes()

        def sha() -> None:
            for key in datas:
                hashlib.sha256(datas[key]).hexdigest()

        def decompress() -> None:
            for (s, p), data in datas.items():
                a, b = parts[p]
                payloads[s, p] = [codec.decompress(f, n) for f, n in zip(_unpack_chunk(data, b - a), sizes[a:b])]

        def accumulate() -> None:  # groups of up to 4 steps per part, as sum() does
            for p, (a, b) in enumerate(parts):
                for g in range(0, len(st.steps), 4):
                    group = st.steps[g : g + 4]
                    for j in range(b - a):
                        codec.add_payloads([payloads[s, p][j] for s in group], sizes[a + j], acc[a + j])

        read(), decompress()
        t = _interleaved({"read": read, "sha256": sha, "zstd_decompress": decompress, "dequantise_accumulate_f64": accumulate}, repeats)
        res[c] = {k: 1000 * v[1] / len(st.steps) for k, v in t.items()}  # CPU ms per step
    return res


def scaling(workdir: Path, label: str, codec: str, total_steps: int, sizes: list[int], repeats: int) -> dict:
    """Time and peak memory of sum(S) vs |S| (big store) and vs the store's total steps."""
    src = DeltaStore.open(str(workdir / f"{label}-{codec}"), key=BENCH_KEY)
    real = [src.read(s) for s in src.steps]  # the recorded deltas, cycled to fill bigger stores
    small_n = min(sizes[1], total_steps) if len(sizes) > 1 else total_steps
    urls = {}
    for n in (small_n, total_steps):
        url = str(workdir / f"scale-{codec}-{n}")
        with DeltaStore.create(url, layout=src.layout, codec=codec, key=BENCH_KEY) as st:
            for s in range(n):
                st.append(s, real[s % len(real)])
        urls[n] = url
    rng = np.random.default_rng(0)
    big = DeltaStore.open(urls[total_steps], key=BENCH_KEY)
    rows = []
    for k in sizes:
        steps = sorted(int(s) for s in rng.choice(small_n if k <= small_n else total_steps, size=k, replace=False))
        for n, url in urls.items():
            if k > n:
                continue
            st = DeltaStore.open(url, key=BENCH_KEY)
            st.sum(steps)  # warm
            t, _ = _interleaved({"sum": lambda: st.sum(steps)}, repeats)["sum"]
            tracemalloc.start()
            st.sum(steps)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            rows.append({"S": k, "store_steps": n, "sum_s": t, "s_per_step": t / k, "peak_traced_MiB": peak / 2**20})
    acc_mib = 8 * big.n_values / 2**20
    return {"codec": codec, "accumulator_MiB": acc_mib, "rows": rows}


def small_cnn_accuracy(workdir: Path, model_state: dict, x_test, y_test, label: str, subset: list[int]) -> dict:
    """Test accuracy after rolling back ``subset`` with each codec (amnesiac subtraction)."""
    res = {}
    model = SmallCNN()
    for c in CODECS:
        st = DeltaStore.open(str(workdir / f"{label}-{c}"), key=BENCH_KEY)
        sub = st.sum(subset)
        state = {k: (v.double() - torch.from_numpy(sub[k])).float() if k in sub else v for k, v in model_state.items()}
        model.load_state_dict(state)
        model.eval()
        with torch.no_grad():
            acc = float((model(x_test).argmax(1) == y_test).float().mean())
        res[c] = acc
    model.load_state_dict(model_state)
    model.eval()
    with torch.no_grad():
        res["before_rollback"] = float((model(x_test).argmax(1) == y_test).float().mean())
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few steps: a smoke run, figures not meaningful")
    ap.add_argument("--out", default=str(OUT / "store.json"))
    ap.add_argument("--codecs", default=",".join(CODECS), help=f"comma-separated codecs (default {','.join(CODECS)})")
    ap.add_argument("--only-resnet18-sizes", action="store_true",
                    help="only (a) on ResNet18: bytes per value and errors per codec (e.g. --codecs int8,int4)")
    args = ap.parse_args()
    CODECS[:] = args.codecs.split(",")
    q = args.quick
    torch.manual_seed(0)
    t_start = time.perf_counter()
    images, labels = load_mnist_t10k()
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    result: dict = {"command": COMMAND + (" --quick" if q else ""), "machine": machine(), "default_codec": DEFAULT_CODEC, "zstd_level": DEFAULT_LEVEL}
    try:
        # (a) ResNet18, CIFAR-style, on MNIST-as-CIFAR
        x = mnist_tensor(images, as_cifar=True)
        y = torch.from_numpy(labels)
        warm, meas = (2, 3) if q else (8, 6)
        print(f"ResNet18: {warm} warm-up + {meas} measured steps ...", flush=True)
        result["resnet18"] = record(
            "resnet18", cifar_resnet18(100), batches(x, y, 128), warmup=warm, measured=meas, lr=0.1, workdir=work,
            subset=list(range(0, meas, 2)),
        )
        if args.only_resnet18_sizes:
            result["command"] += f" --codecs {args.codecs} --only-resnet18-sizes"
            result["runtime_s"] = time.perf_counter() - t_start
            write_json(Path(args.out), result)
            for c, v in result["resnet18"]["codecs"].items():
                print(f"{c}: {v['bytes_per_value']:.3f} B/value, rel. L2 plain {v['delta_rel_l2_plain']:.2e}, "
                      f"feedback {v['delta_rel_l2_feedback']:.2e}, rollback-all {v['rollback_all_rel_l2']:.2e}, "
                      f"subset {v['subset_rel_l2']:.2e}")
            return
        result["resnet18"]["levels"] = level_table(work, "resnet18")
        # (a) small CNN on MNIST 28x28
        xm = mnist_tensor(images)
        x_tr, y_tr, x_te, y_te = xm[:8000], y[:8000], xm[8000:], y[8000:]
        warm, meas = (20, 20) if q else (100, 50)
        print(f"small CNN: {warm} warm-up + {meas} measured steps ...", flush=True)
        cnn = SmallCNN()
        subset = sorted(int(s) for s in np.random.default_rng(1).choice(meas, size=max(2, meas // 6), replace=False))
        result["small_cnn"] = record("cnn", cnn, batches(x_tr, y_tr, 128), warmup=warm, measured=meas, lr=0.05, workdir=work, subset=subset)
        result["small_cnn"]["accuracy_after_rollback_of_subset"] = small_cnn_accuracy(
            work, {k: v.clone() for k, v in cnn.state_dict().items()}, x_te, y_te, "cnn", subset
        )
        # (b) rollback throughput and scaling
        print("sum() throughput ...", flush=True)
        result["throughput_resnet18"] = throughput(work, "resnet18", repeats=2 if q else 5)
        result["throughput_small_cnn"] = throughput(work, "cnn", repeats=2 if q else 5)
        result["breakdown_resnet18_ms_per_step"] = breakdown(work, "resnet18", repeats=2 if q else 5)
        print("sum() scaling ...", flush=True)
        sizes = [3, 6, 12] if q else [6, 12, 24, 48]
        result["scaling_resnet18"] = scaling(work, "resnet18", DEFAULT_CODEC, total_steps=sizes[-1], sizes=sizes, repeats=1 if q else 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["runtime_s"] = time.perf_counter() - t_start
    write_json(Path(args.out), result)
    _print(result, args.out)


def _print(r: dict, out: str) -> None:
    for key in ("resnet18", "small_cnn"):
        m = r[key]
        print(f"\n{key}: {m['parameters']:,} parameters, {m['recorded_values']:,} recorded values, step {m['train_step_s_median']:.2f} s")
        print(f"  {'codec':6} {'B/value':>8} {'x':>6} {'append/step':>11} {'rel.err plain':>13} {'feedback':>9} {'rollback-all':>12} {'subset':>9}")
        for c, v in m["codecs"].items():
            print(
                f"  {c:6} {v['bytes_per_value']:8.3f} {v['compression_x']:6.2f} {v['append_over_step']:11.3f} "
                f"{v['delta_rel_l2_plain']:13.2e} {v['delta_rel_l2_feedback']:9.2e} {v['rollback_all_rel_l2']:12.2e} {v['subset_rel_l2']:9.2e}"
            )
    print("\nsmall CNN accuracy after rolling back the subset:", r["small_cnn"]["accuracy_after_rollback_of_subset"])
    for key in ("throughput_resnet18", "throughput_small_cnn"):
        print(f"\n{key}: sum() vs zstd decompression of the same bytes")
        for c, v in r[key].items():
            print(
                f"  {c:6} sum2/zstd1 {v['ratio_sum2_vs_zstd1']:.2f}  sum2/zstd2 {v['ratio_sum2_vs_zstd2']:.2f}  "
                f"sum1/zstd1 {v['ratio_sum1_vs_zstd1']:.2f}  cpu {v['cpu_ratio_sum1_vs_zstd1']:.2f}  "
                f"f32-acc {v['ratio_sum2_float32_acc_vs_zstd1']:.2f}  {v['sum_threads2_raw_GBps']:.2f} GB/s raw"
            )
    print("\nsum() stages, CPU ms per ResNet18 step on one thread:")
    for c, v in r["breakdown_resnet18_ms_per_step"].items():
        print(f"  {c:6} " + "  ".join(f"{k} {x:.1f}" for k, x in v.items()))
    s = r["scaling_resnet18"]
    print(f"\nscaling ({s['codec']}, accumulators {s['accumulator_MiB']:.0f} MiB):")
    for row in s["rows"]:
        print(f"  |S|={row['S']:3d} of {row['store_steps']:3d} steps: {row['sum_s']:.3f} s ({row['s_per_step'] * 1000:.1f} ms/step), peak {row['peak_traced_MiB']:.0f} MiB")
    print(f"\nruntime {r['runtime_s']:.0f} s -> {out}")


if __name__ == "__main__":
    main()
