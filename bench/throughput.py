"""Scale-out: the delta store's sustained write rate vs compression threads, and projected costs.

    python bench/throughput.py            # about 3-4 minutes on 2 cores
    python bench/throughput.py --quick    # a smoke run (figures not meaningful)

(1) Write rate. Synthetic ResNet18-sized deltas (the CIFAR ResNet18's 122 float tensors,
11,229,732 values, 44.9 MB of float32 per step; each tensor Gaussian with its own scale) are
appended as fast as ``append`` accepts them, then the store is closed (every step compressed,
hashed, written and committed). Rate = raw float32 bytes / wall time, in MB/s, for 1, 2 and 4
threads, codecs int8 (the default) and f32, into three targets:

* ``memory``: fsspec's in-memory file system: compression, hashing and the pipeline only;
* ``disk``: a local directory, every chunk and marker fsync'ed;
* ``object store, 40 ms/PUT``: in-memory, but every PUT first sleeps 40 ms (releasing the GIL),
  a stand-in for an S3 round trip of a multi-MB object. It shows whether threads hide upload
  latency behind compression, which a local S3 emulator (a Python server on the same 2 cores)
  could not.

Rounds interleave the thread counts (1, 2, 4, 1, 2, 4, ...) and keep each one's best, so load
from other processes hits all of them alike; ratios are against 1 thread in the same run.

(2) Rollback rate: ``sum()`` of 8 of 16 int8 steps on local disk, seconds per step (best of 3).

(3) Projected costs for CIFAR-100 (50,000 records, batch 128: 391 steps an epoch) for the
ResNet18 and a 10x larger model (112.3M values): storage per epoch and per 100 epochs (from
the bytes per value real ResNet18 deltas took in bench/store.py, bench/out/store.json, when
present; else from the synthetic deltas here), compression threads needed to keep up with a
given step time, and forget latency (steps touched x measured sum time per step, scaled by
model size) for 1, 10 and 100 records after 100 epochs.

Writes bench/out/throughput.json and bench/out/throughput.md (the docs section).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import fsspec
import numpy as np
from fsspec.implementations.memory import MemoryFileSystem

from common import BENCH_KEY, OUT, cifar_resnet18, layout_of, machine, write_json

from mlflow_amnesia.store import DeltaStore

THREADS = (1, 2, 4)
CODECS = ("int8", "f32")
PUT_LATENCY_S = 0.040
CIFAR_RECORDS, BATCH = 50_000, 128
STEPS_PER_EPOCH = math.ceil(CIFAR_RECORDS / BATCH)  # 391
EPOCHS = 100
SCALE_10X = 10


class SlowPutFS(MemoryFileSystem):
    """In-memory files where every whole-object write first waits ``PUT_LATENCY_S`` (GIL released)."""

    protocol = "slowput"
    root_marker = "/"
    store: dict = {}  # its own files, not memory://'s
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(str(path).removeprefix("slowput://"))

    def pipe_file(self, path: str, value: bytes, *args: Any, **kwargs: Any) -> None:
        time.sleep(PUT_LATENCY_S)
        super().pipe_file(path, value, *args, **kwargs)


fsspec.register_implementation("slowput", SlowPutFS, clobber=True)


def synthetic_deltas(layout: list[dict], n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` deltas for ``layout``: per tensor Gaussian values with a log-uniform scale (1e-5..1e-2)."""
    rng = np.random.default_rng(seed)
    scales = {t["name"]: 10 ** rng.uniform(-5, -2) for t in layout}
    out = []
    for _ in range(n):
        out.append({
            t["name"]: (rng.standard_normal(t["shape"], dtype=np.float32) * np.float32(scales[t["name"]]))
            for t in layout
        })
    return out


def _target_url(target: str, tmp: Path) -> tuple[str, Callable[[], None]]:
    name = f"w-{uuid.uuid4().hex[:8]}"
    if target == "disk":
        return str(tmp / name), lambda: None
    proto = "memory" if target == "memory" else "slowput"
    url = f"{proto}://bench-{name}"
    fs = fsspec.filesystem(proto)
    return url, lambda: fs.rm(f"/bench-{name}", recursive=True)


def encode_deltas(deltas: list[dict], codec: str) -> list[dict]:
    """The codec's Encoded payloads of ``deltas`` (what the Recorder appends: ``quantize_into``)."""
    import torch

    from mlflow_amnesia.recording.store.codecs import Encoded
    from mlflow_amnesia.store import get_codec

    c = get_codec(codec)
    out = []
    for d in deltas:
        e = {}
        for k, v in d.items():
            x = torch.from_numpy(v).reshape(-1)
            cb, nb = c.encoded_sizes(x.numel())
            codes, scales = torch.empty(cb, dtype=c.code_dtype), torch.empty(nb)
            c.quantize_into(x, codes, scales, torch.empty_like(x))
            e[k] = Encoded(codes.numpy(), scales.numpy())
        out.append(e)
    return out


def _fill_reserved(st: DeltaStore, enc: dict) -> tuple[Any, dict]:
    """Reserve a payload slot and put ``enc``'s codes where the store wants them: what the Recorder's
    ``quantize_into`` writes straight into the slot. Returns the slot and the delta to append."""
    from mlflow_amnesia.recording.store.codecs import Encoded

    slot = st.reserve_payload()
    delta = {}
    for name, e in enc.items():
        o = slot.code_offsets[name]
        codes = slot.buffer[o : o + e.codes.size]
        codes[...] = e.codes.view(np.uint8)
        delta[name] = Encoded(codes, e.scales)
    return slot, delta


def store_cpu(layout: list[dict], sources: dict[str, tuple], *, steps: int, rounds: int) -> list[dict]:
    """Store CPU per step (process CPU time, all threads: append's copy, encode or copy into the
    pooled buffer, compress, seal, digest, write, commit) per append path, in-memory target, 2
    threads; paths interleave in every round, each keeps its best round. A source is (codec,
    deltas) or (codec, deltas, option): option "sha256" writes the chunk digests of a store before
    format 4; "reserved" puts the codes into a reserved payload slot first (the Recorder on CPU
    quantises into it), and that fill, the quantiser's output write, is not the store's CPU (the
    calling thread's CPU time during it is taken off)."""
    best: dict[str, dict] = {}
    for _ in range(rounds):
        for label, (codec, src, *option) in sources.items():
            url = f"memory://bench-cpu-{uuid.uuid4().hex[:8]}"
            c0 = time.process_time()
            fill = 0.0
            st = DeltaStore.create(url, layout=layout, codec=codec, threads=2, key=BENCH_KEY)
            if option == ["sha256"]:  # before the first chunk: every chunk entry then holds this digest
                st._digest = "sha256"
            for s in range(steps):
                if option == ["reserved"]:
                    f0 = time.thread_time()
                    slot, delta = _fill_reserved(st, src[s % len(src)])
                    fill += time.thread_time() - f0
                    st.append(s, delta, slot=slot)
                else:
                    st.append(s, src[s % len(src)])
            st.close()
            cpu = time.process_time() - c0 - fill
            row = {"path": label, "codec": codec, "steps": steps, "cpu_ms_per_step": 1000 * cpu / steps,
                   "store_threads_cpu_ms_per_step": 1000 * st.stats.write_cpu_s / steps,
                   "bytes_per_value": st.size().stored / (steps * st.n_values)}
            fsspec.filesystem("memory").rm(url.removeprefix("memory://"), recursive=True)
            if label not in best or row["cpu_ms_per_step"] < best[label]["cpu_ms_per_step"]:
                best[label] = row
            print(f"store CPU {label:36s} {row['cpu_ms_per_step']:6.1f} ms/step  (threads {row['store_threads_cpu_ms_per_step']:.1f})", flush=True)
    return list(best.values())


def rollback_vs_zstd(layout: list[dict], deltas: list[dict], tmp: Path, *, steps: int, repeats: int) -> dict:
    """``sum()`` of every step of a sealed int8 store on local disk against bare zstd decompression
    of the same frames (only ``ZstdDecompressor.decompress`` in memory), interleaved, best of
    ``repeats``: wall time (sum on its default 2 threads and on 1; zstd on 1) and CPU time; and
    the read path as it was before (sha256 on every read, 4 steps per pass), 1 thread, same run;
    where numba is installed, ``sum`` with the compiled loop too (``sumc*``, MLFLOW_AMNESIA_FUSED=1)."""
    import zstandard

    from mlflow_amnesia.recording.store.chunk import unpack_chunk, unseal_chunk

    url = str(tmp / "rollback-store")
    with DeltaStore.create(url, layout=layout, codec="int8", key=BENCH_KEY) as st:
        for s in range(steps):
            st.append(s, deltas[s % len(deltas)])
    stores = {t: DeltaStore.open(url, key=BENCH_KEY, threads=t) for t in (1, 2)}
    st = stores[2]
    # the read path before the tags, same chunks: a manifest of format 2 without the GCM tags
    # (reads check sha256) and groups of 4 steps per pass
    import hashlib

    man = json.loads(st.manifest_bytes())
    man["format_version"] = 2
    for e in man["steps"]:
        for c in e["chunks"]:
            c.pop("tag", None)
            del c["blake3"]
            c["sha256"] = hashlib.sha256(Path(url, c["file"]).read_bytes()).hexdigest()
    before = DeltaStore.open(url, key=BENCH_KEY, threads=1, manifest=man)
    import mlflow_amnesia.recording.store.delta_store as ds_mod
    frames = []
    for s in range(steps):
        e = st._steps[s]
        for p, (a, b) in enumerate(st._parts):
            data = st._fs.cat_file(st._path(e.chunks[p]["file"]))
            frames += [bytes(f) for f in unpack_chunk(bytes(unseal_chunk(st._cipher, s, p, data)), b - a)]
    d = zstandard.ZstdDecompressor()
    every = list(range(steps))
    from mlflow_amnesia.recording.store import fused

    compiled = fused.available()  # numba installed: also time sum with the compiled loop (MLFLOW_AMNESIA_FUSED=1)
    modes = {"": "0", "c": "1"} if compiled else {"": "0"}
    env_before = os.environ.get(fused.ENV)

    def summing(mode: str, t: int) -> None:
        os.environ[fused.ENV] = modes[mode]
        try:
            stores[t].sum(every)
        finally:
            if env_before is None:
                os.environ.pop(fused.ENV, None)
            else:
                os.environ[fused.ENV] = env_before

    for mode in modes:
        for t in stores:
            summing(mode, t)  # page cache and buffers warm; the compiled loop loaded
    best = {k: math.inf for k in ("zstd_wall", "zstd_cpu", "before1_wall", "before1_cpu", "open_cpu")}
    best.update({f"sum{m}{t}_{w}": math.inf for m in modes for t in (1, 2) for w in ("wall", "cpu")})
    opener = stores[1]

    def open_only() -> None:  # what sum does to a chunk before zstd: read, check size and tag, decrypt, unpack
        for s in range(steps):
            e = opener._steps[s]
            for p, (a, b) in enumerate(opener._parts):
                data = opener._read_chunk(s, e.chunks[p], decoding=True)
                unpack_chunk(unseal_chunk(opener._cipher, s, p, data, ds_mod._scratch("open", len(data))), b - a)

    for _ in range(repeats):
        c0 = time.process_time()
        open_only()
        best["open_cpu"] = min(best["open_cpu"], time.process_time() - c0)
        group = ds_mod._GROUP_MAX
        ds_mod._GROUP_MAX = 4
        try:
            c0, t0 = time.process_time(), time.perf_counter()
            before.sum(every)
            best["before1_wall"] = min(best["before1_wall"], time.perf_counter() - t0)
            best["before1_cpu"] = min(best["before1_cpu"], time.process_time() - c0)
        finally:
            ds_mod._GROUP_MAX = group
        c0, t0 = time.process_time(), time.perf_counter()
        for f in frames:
            d.decompress(f)
        best["zstd_wall"], best["zstd_cpu"] = min(best["zstd_wall"], time.perf_counter() - t0), min(best["zstd_cpu"], time.process_time() - c0)
        for m in modes:
            for t in (2, 1):
                c0, t0 = time.process_time(), time.perf_counter()
                summing(m, t)
                best[f"sum{m}{t}_wall"] = min(best[f"sum{m}{t}_wall"], time.perf_counter() - t0)
                best[f"sum{m}{t}_cpu"] = min(best[f"sum{m}{t}_cpu"], time.process_time() - c0)
    out = {k: 1000 * v / steps for k, v in best.items()}  # ms per step
    if compiled:
        out.update({"compiled_ratio_sum2_vs_zstd1_wall": best["zstd_wall"] / best["sumc2_wall"],
                    "compiled_ratio_cpu": best["zstd_cpu"] / best["sumc1_cpu"]})
    out.update({"steps": steps, "ratio_sum2_vs_zstd1_wall": best["zstd_wall"] / best["sum2_wall"],
                "ratio_sum1_vs_zstd1_wall": best["zstd_wall"] / best["sum1_wall"],
                "ratio_cpu": best["zstd_cpu"] / best["sum1_cpu"],
                "ratio_cpu_before": best["zstd_cpu"] / best["before1_cpu"],
                # sum with an accumulation that cost nothing: zstd + opening the chunks
                "ratio_cpu_ceiling": best["zstd_cpu"] / (best["zstd_cpu"] + best["open_cpu"]),
                "ratio_before1_vs_zstd1_wall": best["zstd_wall"] / best["before1_wall"]})
    print("rollback vs zstd:", {k: round(v, 3) for k, v in out.items()}, flush=True)
    return out


def write_rate(layout: list[dict], deltas: list[dict], *, codec: str, threads: int, target: str, steps: int, tmp: Path) -> dict:
    """Append ``steps`` deltas as fast as accepted, close; raw MB/s and the caller's blocked time."""
    url, cleanup = _target_url(target, tmp)
    raw = 4 * sum(math.prod(t["shape"]) for t in layout)
    try:
        c0, k0, t0 = _cpu(), _sys(), time.perf_counter()
        st = DeltaStore.create(url, layout=layout, codec=codec, threads=threads, max_pending=max(4, threads + 2), key=BENCH_KEY)
        caller = 0.0
        for s in range(steps):
            a = time.perf_counter()
            st.append(s, deltas[s % len(deltas)])
            caller += time.perf_counter() - a
        st.close()
        dt, cpu, (k1, f1) = time.perf_counter() - t0, _cpu() - c0, _sys()
        kernel, faults = k1 - k0[0], f1 - k0[1]
        size = st.size()
    finally:
        cleanup()
    return {
        "codec": codec, "threads": threads, "target": target, "steps": steps, "seconds": dt,
        "raw_MBps": steps * raw / dt / 1e6, "steps_per_s": steps / dt, "append_ms_per_step": 1000 * caller / steps,
        "cpu_s": cpu, "sys_share": kernel / cpu, "page_faults_per_step": faults / steps, "raw_MB_per_cpu_s": steps * raw / cpu / 1e6,
        "bytes_per_value": size.stored / (steps * raw / 4),
    }


def stage_breakdown(delta: dict[str, np.ndarray], repeats: int) -> dict[str, dict[str, float]]:
    """CPU ms per step of each stage the store runs on a delta, one thread, best of ``repeats``."""
    import hashlib

    from mlflow_amnesia.store import get_codec
    from mlflow_amnesia.recording.store.codecs import _compressor

    out = {}
    for c in CODECS:
        codec = get_codec(c)
        arrays = list(delta.values())
        stages = ("copy", "quantise+shuffle", "zstd", "sha256")
        best = dict.fromkeys(stages, math.inf)
        for _ in range(repeats):
            t = dict.fromkeys(stages, 0.0)
            for a in arrays:
                c0 = time.process_time()
                x = np.array(a, dtype=np.float32, copy=True).reshape(-1)
                c1 = time.process_time()
                payload = codec._pack(x)
                c2 = time.process_time()
                frame = _compressor(codec.level).compress(payload)
                c3 = time.process_time()
                hashlib.sha256(frame).digest()
                c4 = time.process_time()
                for k, dt in zip(stages, (c1 - c0, c2 - c1, c3 - c2, c4 - c3)):
                    t[k] += dt
            best = {k: min(best[k], t[k]) for k in stages}
        out[c] = {k: 1000 * v for k, v in best.items()}
    return out


def _cpu() -> float:
    """CPU seconds of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _sys() -> tuple[float, int]:
    """System (kernel) CPU seconds and minor page faults of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_stime, r.ru_minflt


def sum_rate(layout: list[dict], deltas: list[dict], tmp: Path, *, steps: int, subset: int, repeats: int) -> dict:
    """Seconds per step of ``sum()`` over ``subset`` random steps of an int8 store on local disk."""
    url = str(tmp / "sum-store")
    with DeltaStore.create(url, layout=layout, codec="int8", key=BENCH_KEY) as st:
        for s in range(steps):
            st.append(s, deltas[s % len(deltas)])
    st = DeltaStore.open(url, key=BENCH_KEY)
    chosen = sorted(int(s) for s in np.random.default_rng(1).choice(steps, size=subset, replace=False))
    st.sum(chosen)  # warm the page cache
    best, best_cpu = math.inf, math.inf
    for _ in range(repeats):
        c0, t0 = _cpu(), time.perf_counter()
        st.sum(chosen)
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, _cpu() - c0)
    return {"codec": "int8", "store_steps": steps, "summed_steps": subset, "threads": 2, "seconds": best,
            "s_per_step": best / subset, "cpu_s_per_step": best_cpu / subset,
            "stored_bytes_per_step": st.size().stored / steps}


def steps_touched(k: int, epochs: int = EPOCHS) -> float:
    """Expected steps whose batch holds any of ``k`` random records (one pass per epoch)."""
    return epochs * STEPS_PER_EPOCH * (1 - (1 - BATCH / CIFAR_RECORDS) ** k)


def projections(values: int, bpv: dict[str, float], per_core_MBps: dict[str, float], sum_cpu_s_per_value: float) -> list[dict]:
    """Storage, compression cores per step time, and forget CPU time, for ResNet18 and 10x."""
    rows = []
    for label, n in (("ResNet18 (CIFAR-100)", values), (f"{SCALE_10X}x ResNet18", SCALE_10X * values)):
        raw_step = 4 * n
        row: dict[str, Any] = {"model": label, "values": n, "raw_MB_per_step": raw_step / 1e6}
        for c in CODECS:
            row[f"{c}_GB_per_epoch"] = bpv[c] * n * STEPS_PER_EPOCH / 1e9
            row[f"{c}_TB_per_{EPOCHS}_epochs"] = bpv[c] * n * STEPS_PER_EPOCH * EPOCHS / 1e12
        for step_ms in (30, 100, 300):
            need = raw_step / (step_ms / 1000) / 1e6  # MB/s of raw deltas
            row[f"int8_cores_for_{step_ms}ms_step"] = math.ceil(need / per_core_MBps["int8"])
        for k in (1, 10, 100):
            s = steps_touched(k)
            row[f"forget_{k}_steps"] = s
            row[f"forget_{k}_cpu_s"] = s * sum_cpu_s_per_value * n
            row[f"forget_{k}_GB_read"] = s * bpv["int8"] * n / 1e9
        rows.append(row)
    return rows


def markdown(r: dict) -> str:
    m = r["machine"]
    w = {(x["codec"], x["target"], x["threads"]): x for x in r["write"]}
    lines = [
        "## Scale-out",
        "",
        "Every figure in this section comes from one run of",
        "",
        "```",
        r["command"],
        "```",
        "",
        f"({r['seconds']:.0f} s; raw figures in `bench/out/throughput.json`; {m['cpus']} CPUs shared with other "
        f"jobs: 1-minute load average {m['load_average_1min'][0]} at the start, {m['load_average_1min'][1]} at the end). "
        "**This machine has 2 cores**, and other jobs kept them busy during the run: 4 threads cannot compress "
        "faster than 2 here, and wall-clock rates are what this process got of the cores. The CPU-time "
        "figures (MB of raw deltas per CPU-second of the whole store) do not depend on that load; the "
        "projections use them.",
        "",
        "**No GPU was lent to this session**, so the recording overhead on a GPU (device-to-host copies "
        "through pinned buffers, a hand-off thread, compression threads) was not measured; "
        "`python bench/recording.py` on a CUDA machine measures it (the Recorder takes the pinned, "
        "pipelined path by itself for CUDA models).",
        "",
        "### Write rate vs compression threads",
        "",
        "Synthetic ResNet18-sized deltas (the CIFAR ResNet18's 122 float tensors, 11,229,732 values, 44.9 MB "
        "of float32 a step; Gaussian values, one scale per tensor), appended as fast as `append` accepts them, "
        "then `close()`: every step compressed, hashed, written and committed. Raw float32 MB/s, best of "
        "the interleaved rounds, and in brackets the ratio to 1 thread in the same run; **CPU** = MB per "
        "CPU-second of this process (1 thread); **append** = the caller's time per step in `append` (its "
        "copy of the delta, plus waiting while `max_pending` steps are in flight), 1 -> 4 threads.",
        "",
        "| codec | target | B/value | 1 thread | 2 threads | 4 threads | CPU | append/step |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for c in CODECS:
        for target, label in (("memory", "memory"), ("disk", "local disk (fsync)"),
                              ("slowput", f"object store, {PUT_LATENCY_S * 1000:.0f} ms/PUT")):
            rows = {t: w.get((c, target, t)) for t in THREADS}
            if any(v is None for v in rows.values()):
                continue
            base = rows[1]["raw_MBps"]
            cells = [f"{rows[t]['raw_MBps']:,.0f}" + ("" if t == 1 else f" ({rows[t]['raw_MBps'] / base:.2f}x)") for t in THREADS]
            lines.append(
                f"| {c} | {label} | {rows[1]['bytes_per_value']:.3f} | " + " | ".join(cells)
                + f" | {rows[1]['raw_MB_per_cpu_s']:,.0f} | {rows[1]['append_ms_per_step']:.0f} -> {rows[4]['append_ms_per_step']:.0f} ms |"
            )
    s1, s4 = w[("int8", "slowput", 1)], w[("int8", "slowput", 4)]
    m1, m2 = w[("int8", "memory", 1)], w[("int8", "memory", 2)]
    core = r["per_core_MBps"]
    st8 = r["stages_cpu_ms_per_step"]["int8"]
    mem8 = [x for x in r["write"] if x["codec"] == "int8" and x["target"] == "memory"]
    sys_share = float(np.median([x["sys_share"] for x in mem8]))
    faults = float(np.median([x["page_faults_per_step"] for x in mem8]))
    lines += [
        "",
        f"* **Threads without waiting**: in memory and on disk a second thread gave {m2['raw_MBps'] / m1['raw_MBps']:.2f}x "
        "here: the 2 cores were saturated by other jobs, so more threads did not get this process more CPU. "
        "The store's own limit is elsewhere: a step is 4 parts (<= 16 MiB) and `max_pending` steps may be in "
        "flight (4 by default), so with `threads=16` and the cores for them 16 items compress at once.",
        f"* **Per core** the store writes {core['int8']:,.0f} MB/s of raw deltas with int8 and {core['f32']:,.0f} "
        "MB/s with f32 (median MB per CPU-second of the in-memory runs): copy, quantise, byte-shuffle, zstd, "
        f"sha256 and commit. A ResNet18 step costs {44.9 / core['int8'] * 1000:.0f} ms of one core with int8, "
        f"of which the stages below take {sum(st8.values()):.0f} ms; the rest is the pipeline's memory traffic "
        f"(fresh buffers every step: {100 * sys_share:.0f}% of the store's CPU time was in the kernel, with "
        f"{faults:,.0f} page faults a step, {faults * 4096 / 1e6:,.0f} MB of memory first touched), a saving for "
        "a store that reuses its buffers.",
        "* **Where a step's CPU goes** (one thread, CPU ms per ResNet18 step): "
        + "; ".join(f"{c}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["stages_cpu_ms_per_step"][c].items())
                    for c in CODECS)
        + ". For int8 most of it is the numpy quantisation (absmax per block, divide, round, clip, cast), "
        "which the Recorder has already done once on the model's device: handing the store the int8 codes "
        "and scales instead of float32 would remove that stage and cut the device-to-host copy to a quarter "
        "(an `append` of encoded payloads: the open item for GPU-rate recording).",
        f"* **Uploads overlap compression**: with {PUT_LATENCY_S * 1000:.0f} ms per PUT (5 a step: 4 chunks and a "
        f"commit marker), one thread wrote {s1['raw_MBps']:,.0f} MB/s and four {s4['raw_MBps']:,.0f} MB/s "
        f"({s4['raw_MBps'] / s1['raw_MBps']:.2f}x) on the same 2 busy cores: a thread waiting on the network holds "
        "no core. On object storage give the store more threads than cores (`DeltaStore.create(url, threads=8)`).",
        "* **Keeping up with a fast GPU step** takes cores, not a different pipeline: the device-to-host copy "
        "into pinned buffers is queued on the training thread, a hand-off thread waits for it and calls "
        "`append`, each step's 4 parts compress and upload on the store's threads (up to `max_pending` steps "
        "in flight), and a committer writes the markers in step order; no stage that compresses is serial. "
        "The table below gives the cores a step time needs at the per-core rate measured here.",
        "",
        "### Projected costs on CIFAR-100",
        "",
    ]
    bpv, srate = r["bytes_per_value"], r["sum"]
    lines += [
        f"50,000 records, batch 128: {STEPS_PER_EPOCH} steps an epoch, {EPOCHS} epochs. Bytes per value: int8 "
        f"{bpv['int8']:.3f}, f32 {bpv['f32']:.3f} ({r['bytes_per_value_source']}). **Cores** = raw MB/s a step time "
        f"needs / {core['int8']:,.0f} MB/s per core (int8). **Forget**: the steps k random records touched "
        f"(1 - (1 - 128/50000)^k of each epoch's steps, over {EPOCHS} epochs) x the measured CPU time of `sum()`, "
        f"{1000 * srate['cpu_s_per_step']:.1f} ms per ResNet18 step (int8, local disk; read, sha256, "
        "decompress, accumulate), scaled with the model's size: the time on one core (the store sums parts "
        "in parallel: 2 threads were 1.7x faster than 1 in \"Delta store\"). From object storage add the "
        "download of the GB read, "
        "which a forget limits to exactly those steps' chunks (tests/test_s3.py counts the requests).",
        "",
        f"| model | values | raw/step | int8 per epoch | int8, {EPOCHS} epochs | f32 per epoch | cores for a 30 / 100 / 300 ms step | forget 1 record | 10 records | 100 records |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for row in r["projection"]:
        def fg(k: int) -> str:
            return f"{row[f'forget_{k}_steps']:,.0f} steps: {_dur(row[f'forget_{k}_cpu_s'])}, {row[f'forget_{k}_GB_read']:,.1f} GB"
        lines.append(
            f"| {row['model']} | {row['values'] / 1e6:.1f}M | {row['raw_MB_per_step']:.0f} MB | "
            f"{row['int8_GB_per_epoch']:,.1f} GB | {row[f'int8_TB_per_{EPOCHS}_epochs']:,.2f} TB | {row['f32_GB_per_epoch']:,.1f} GB | "
            f"{row['int8_cores_for_30ms_step']} / {row['int8_cores_for_100ms_step']} / {row['int8_cores_for_300ms_step']} | "
            f"{fg(1)} | {fg(10)} | {fg(100)} |"
        )
    lines += [
        "",
        "* Forgetting one record costs one step per epoch it was trained on: seconds to a minute, not a "
        "retrain. The 100-record row is the paper's warning in numbers: 22.6% of all steps, and an accuracy "
        "loss that needs a repair (see \"Unlearning methods\").",
        "* The 10x model is a projection (bytes per value and per-core rates scale with the number of values; "
        "its steps split into about 27 parts of <= 16 MiB, so more cores help up to that many per step).",
    ]
    return "\n".join(lines) + "\n"


def _dur(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def encoded_stages(layout: list[dict], encoded: dict, codec: str, tmp: Path, repeats: int) -> dict[str, float]:
    """CPU ms per ResNet18 step of each stage the store runs on an encoded step, one thread (this
    one), best of ``repeats``: copy into the pooled buffer, zstd, pack, seal (AES-GCM), the chunk
    digest (BLAKE3 since format 4: "digest"), write (a local file, fsync'ed)."""
    from mlflow_amnesia import crypto
    from mlflow_amnesia.recording.fs import write_local
    from mlflow_amnesia.recording.store.chunk import chunk_size, pack_chunk_into, seal_chunk_into, sealed_size
    from mlflow_amnesia.recording.store.codecs import _compressor
    from mlflow_amnesia.recording.store.delta_store import _scratch
    from mlflow_amnesia.recording.store.manifest import DIGEST, chunk_digest
    from mlflow_amnesia.store import get_codec

    c = get_codec(codec)
    sizes = [(t["name"], math.prod(t["shape"])) for t in layout]
    buf = np.empty(sum(c.payload_size(n) for _, n in sizes), np.uint8)
    cipher = crypto.ChunkCipher(BENCH_KEY, crypto.new_salt())
    stages = ("copy", "zstd", "pack", "seal", "digest", "write")
    best = dict.fromkeys(stages, math.inf)
    for _ in range(repeats):
        t = dict.fromkeys(stages, 0.0)
        off, frames = 0, []
        for name, n in sizes:
            sz = c.payload_size(n)
            c0 = time.thread_time()
            c.write_encoded(encoded[name], n, buf[off : off + sz])
            c1 = time.thread_time()
            frames.append(_compressor(c.level).compress(buf[off : off + sz]))
            t["copy"] += c1 - c0
            t["zstd"] += time.thread_time() - c1
            off += sz
        c0 = time.thread_time()  # one chunk for the step (the store packs per part: the same work)
        size = chunk_size(frames)
        plain = memoryview(_scratch("plain", size))[:size]
        pack_chunk_into(frames, plain)
        c1 = time.thread_time()
        total = sealed_size(size)
        out = memoryview(_scratch("sealed", total))[:total]
        seal_chunk_into(cipher, 0, 0, plain, out)
        c2 = time.thread_time()
        chunk_digest(DIGEST, out)
        c3 = time.thread_time()
        write_local(str(tmp / "stage.chunk"), out, atomic=False)
        c4 = time.thread_time()
        for k, v in zip(("pack", "seal", "digest", "write"), (c1 - c0, c2 - c1, c3 - c2, c4 - c3)):
            t[k] += v
        best = {k: min(best[k], t[k]) for k in stages}
    return {k: 1000 * v for k, v in best.items()}


def perf_only(quick: bool, rollback_steps: int = 8, rollback_only: bool = False) -> None:
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    layout = layout_of(cifar_resnet18(100))
    deltas = synthetic_deltas(layout, 2 if quick else 3)
    enc8 = encode_deltas(deltas, "int8")
    enc4 = encode_deltas(deltas, "int4")
    sources = {"int8, float32 append": ("int8", deltas), "int8, encoded append": ("int8", enc8),
               "int8, encoded into a reserved slot": ("int8", enc8, "reserved"),
               "int8, encoded append, sha256 digests": ("int8", enc8, "sha256"),
               "int4, encoded append": ("int4", enc4),
               "int4, encoded into a reserved slot": ("int4", enc4, "reserved")}
    cpu_rows = [] if rollback_only else store_cpu(layout, sources, steps=3 if quick else 12, rounds=1 if quick else 5)
    with tempfile.TemporaryDirectory(prefix="amnesia-bench-tp-") as tmpd:
        rollback = rollback_vs_zstd(layout, deltas, Path(tmpd), steps=4 if quick else rollback_steps,
                                    repeats=1 if quick else 5)
        stages = {} if rollback_only else {
            c: encoded_stages(layout, sources[f"{c}, encoded append"][1][0], c, Path(tmpd), 1 if quick else 5)
            for c in ("int8", "int4")}
    print("encoded append, CPU ms per step by stage:", {c: {k: round(v, 1) for k, v in d.items()} for c, d in stages.items()})
    info = machine()
    info["load_average_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    command = "python bench/throughput.py --perf-only" + (" --quick" if quick else "")
    command += (f" --rollback-steps {rollback_steps}" if rollback_steps != 8 else "") + (" --rollback-only" if rollback_only else "")
    write_json(OUT / ("throughput_rollback.json" if rollback_only else "throughput_perf.json"), {"command": command,
                                              "machine": info, "store_cpu": cpu_rows, "rollback_vs_zstd": rollback,
                                              "encoded_stages_cpu_ms_per_step": stages,
                                              "seconds": time.perf_counter() - t0})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run: few steps, one round")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite bench/out/throughput.md from the json")
    ap.add_argument("--perf-only", action="store_true",
                    help="only the store CPU per append path and the rollback against bare zstd (bench/out/throughput_perf.json)")
    ap.add_argument("--rollback-steps", type=int, default=8,
                    help="--perf-only: steps of the sealed store the rollback sums (default 8: one group of 8, "
                         "as many work items as parts; more steps, more items for the threads)")
    ap.add_argument("--rollback-only", action="store_true",
                    help="--perf-only without the store CPU rows (writes bench/out/throughput_rollback.json)")
    args = ap.parse_args()
    if args.perf_only:
        perf_only(args.quick, args.rollback_steps, args.rollback_only)
        return
    if args.markdown_only:
        md = markdown(json.loads((OUT / "throughput.json").read_text()))
        (OUT / "throughput.md").write_text(md)
        print(md)
        return
    load0 = os.getloadavg()[0]
    t_start = time.perf_counter()
    layout = layout_of(cifar_resnet18(100))
    values = sum(math.prod(t["shape"]) for t in layout)
    deltas = synthetic_deltas(layout, 2 if args.quick else 3)
    steps, rounds = (3, 1) if args.quick else (12, 3)
    best: dict[tuple, dict] = {}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="amnesia-bench-tp-") as tmpd:
        tmp = Path(tmpd)
        for rnd in range(rounds):
            for codec in CODECS:
                for target in ("memory", "disk", "slowput"):
                    for threads in THREADS:
                        x = write_rate(layout, deltas, codec=codec, threads=threads, target=target, steps=steps, tmp=tmp)
                        runs.append(x)
                        key = (codec, target, threads)
                        if key not in best or x["raw_MBps"] > best[key]["raw_MBps"]:
                            best[key] = x
                        print(f"round {rnd + 1}/{rounds} {codec:4s} {target:7s} threads {threads}: "
                              f"{x['raw_MBps']:7.0f} MB/s  {x['raw_MB_per_cpu_s']:6.0f} MB/CPU-s  "
                              f"append {x['append_ms_per_step']:.0f} ms/step", flush=True)
        srate = sum_rate(layout, deltas, tmp, steps=6 if args.quick else 16, subset=3 if args.quick else 8,
                         repeats=1 if args.quick else 3)
        print(f"sum(): {1000 * srate['s_per_step']:.1f} ms/step, {1000 * srate['cpu_s_per_step']:.1f} CPU ms/step", flush=True)
        rollback = rollback_vs_zstd(layout, deltas, tmp, steps=4 if args.quick else 8, repeats=1 if args.quick else 5)
    sources = {"int8, float32 append": ("int8", deltas), "int8, encoded append": ("int8", encode_deltas(deltas, "int8")),
               "int4, encoded append": ("int4", encode_deltas(deltas, "int4"))}
    cpu_rows = store_cpu(layout, sources, steps=3 if args.quick else 12, rounds=1 if args.quick else 3)
    stages = stage_breakdown(deltas[0], repeats=1 if args.quick else 3)
    print("CPU ms per step by stage:", {c: {k: round(v, 1) for k, v in d.items()} for c, d in stages.items()}, flush=True)
    write = list(best.values())
    # per core: raw MB per CPU-second of the whole store (copy, quantise, zstd, sha256, commit),
    # median over the in-memory runs of every thread count: robust to other jobs' load
    per_core = {c: float(np.median([x["raw_MB_per_cpu_s"] for x in runs if x["codec"] == c and x["target"] == "memory"]))
                for c in CODECS}
    store_json = OUT / "store.json"
    if store_json.exists():
        real = json.loads(store_json.read_text())["resnet18"]["codecs"]
        bpv = {c: real[c]["bytes_per_value"] for c in CODECS}
        src = "real ResNet18 deltas, bench/store.py"
    else:
        bpv = {c: best[(c, "memory", 1)]["bytes_per_value"] for c in CODECS}
        src = "the synthetic deltas here"
    info = machine()
    info["load_average_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    result = {
        "command": "python bench/throughput.py" + (" --quick" if args.quick else ""),
        "machine": info,
        "values": values,
        "put_latency_s": PUT_LATENCY_S,
        "write": write,
        "sum": srate,
        "bytes_per_value": bpv,
        "bytes_per_value_source": src,
        "per_core_MBps": per_core,
        "stages_cpu_ms_per_step": stages,
        "store_cpu": cpu_rows,
        "rollback_vs_zstd": rollback,
        "projection": projections(values, bpv, per_core, srate["cpu_s_per_step"] / values),
        "seconds": time.perf_counter() - t_start,
    }
    write_json(OUT / "throughput.json", result)
    md = markdown(result)
    (OUT / "throughput.md").write_text(md)
    print("\n" + md)


if __name__ == "__main__":
    main()
