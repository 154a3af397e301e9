"""Recording overhead: wall time of training with the Recorder / without it, in one run.

    python bench/recording.py            # ResNet18 (CIFAR stem) + small CNN, the default codec
    python bench/recording.py --codecs int8,bf16
    python bench/recording.py --models resnet18-digits --codecs int8,int4   # the fast-step workload
    python bench/recording.py --device cuda   # on a GPU (the default, auto, takes CUDA when present)
    python bench/recording.py --quick    # a smoke run (a few steps; figures are not meaningful)

Models: ``resnet18`` (batch 128 of 32x32x3: a big step), ``cnn`` (small CNN on MNIST) and
``resnet18-digits``: the CLI's ``--arch resnet18`` on scikit-learn's 8x8 digits at batch 8, a
step of a few tens of ms on CPU, which shows on a CPU what a GPU step shows: the recording's
own cost per step. On CUDA the model, its data and the Recorder's math live on the GPU; the
Recorder quantises there and copies only the codes and scales (a quarter of float32 for int8)
into pinned buffers. **store CPU/step** is the CPU time of the store's threads per step
(``DeltaStore.stats.write_cpu_s``: compress, seal, hash, write, commit), beside the training
thread's ``rec.step``.

Blocks of steps with and without recording alternate (ABBA order) in the same process on the
same model, so machine drift and other load cancel out of the ratio. One Recorder and store
live through the run; every recorded block ends with ``rec.flush()`` (all its steps compressed,
written, committed and fsync'ed), so a recorded block's time is wall time until durable and no
background compression spills into the next plain block. The recorded total also includes
building the Recorder (its float64 snapshot) and closing the store (the final manifest).

Data: the real MNIST t10k images (bench/common.py parses the idx.gz), padded to 32x32 and
repeated to 3 channels for ResNet18; as 28x28 for the small CNN. Writes
bench/out/recording.json and appends "## Recording overhead" to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from common import BENCH_KEY, OUT, REPO, SmallCNN, cifar_resnet18, load_mnist_t10k, machine, mnist_tensor, n_params, sgd_step, write_json

from mlflow_amnesia.index import RecordIndexBuilder
from mlflow_amnesia.recorder import Recorder, float_state, optimizer_meta, state_layout
from mlflow_amnesia.store import DEFAULT_CODEC, DeltaStore

SECTION = "## Recording overhead"


def _batches(n: int, batch: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Endless shuffled batches of record positions."""
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        for s in range(0, n - batch + 1, batch):
            yield perm[s : s + batch]


def _cpu() -> float:
    """CPU seconds of this process, all threads (training, compression, writing)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Timed:
    """Wraps an object and adds the wall time of the named method's calls to ``seconds``."""

    def __init__(self, obj: Any, method: str) -> None:
        self._obj = obj
        self.seconds = 0.0
        fn = getattr(obj, method)

        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t0

        setattr(self, method, timed)

    def __getattr__(self, name: str) -> Any:
        if name == "accepts_encoded" and getattr(self, "float_append", False):
            raise AttributeError(name)  # the store seen as before encoded append: float32 deltas
        return getattr(self._obj, name)


def measure(
    name: str,
    make_model: Callable[[], torch.nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    codec: str,
    batch: int,
    block: int,
    pairs: int,
    warmup: int,
    tmp: Path,
    device: torch.device,
    float_append: bool = False,
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = make_model().to(device)
    x, y = x.to(device), y.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    ids = [f"mnist:t10k:{i}" for i in range(len(x))]
    it = _batches(len(x), batch)
    model.train()

    def train_step() -> np.ndarray:
        pos = next(it)
        idx = torch.from_numpy(pos).to(device)
        sgd_step(model, opt, x[idx], y[idx])
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # a step's time is the GPU's too
        return pos

    for _ in range(warmup):
        train_step()

    url = str(tmp / f"{name}-{codec}-{'float' if float_append else 'enc'}")
    t0 = time.perf_counter()
    store = DeltaStore.create(url, layout=state_layout(model), codec=codec, meta={"optimizer": optimizer_meta(opt)},
                              key=BENCH_KEY)
    appends = _Timed(store, "append")
    if float_append:  # a wrapper that hides accepts_encoded: the Recorder appends float32
        appends.float_append = True
        sink: Any = appends
    else:  # the DeltaStore itself (so it lends its payload buffers), its append timed in place
        store.append = appends.append  # type: ignore[method-assign]
        sink = store
    index = _Timed(RecordIndexBuilder(os.urandom(32)), "add")
    rec = Recorder(model, sink, index, optimizer=opt)
    encoded = rec._encoded is not None
    quantize = _Timed(rec.codec, "quantize_into" if encoded else "quantize")
    rec.codec = quantize  # time the codec's quantise inside rec.step
    setup = time.perf_counter() - t0

    wall = {"plain": 0.0, "recorded": 0.0}
    cpu = {"plain": 0.0, "recorded": 0.0}
    step_call = flush = 0.0
    blocks = []
    pair_ratios = []
    for p in range(pairs):
        pair = {}
        for kind in ("plain", "recorded") if p % 2 == 0 else ("recorded", "plain"):
            c0, t0 = _cpu(), time.perf_counter()
            for _ in range(block):
                pos = train_step()
                if kind == "recorded":
                    s0 = time.perf_counter()
                    rec.step([ids[i] for i in pos])
                    step_call += time.perf_counter() - s0
            if kind == "recorded":
                f0 = time.perf_counter()
                rec.flush()
                flush += time.perf_counter() - f0
            dt = time.perf_counter() - t0
            wall[kind] += dt
            cpu[kind] += _cpu() - c0
            blocks.append({"kind": kind, "seconds": round(dt, 4)})
            pair[kind] = dt
        pair_ratios.append(pair["recorded"] / pair["plain"])
    t0 = time.perf_counter()
    rec.close()
    store.close()
    close = time.perf_counter() - t0
    store_cpu = store.stats.write_cpu_s
    size = DeltaStore.open(url, key=BENCH_KEY).size()

    steps = pairs * block
    recorded_total = wall["recorded"] + setup + close
    return {
        "model": name,
        "parameters": n_params(model),
        "recorded_values": sum(int(np.prod(e["shape"])) for e in state_layout(model)),
        "codec": codec,
        "batch": batch,
        "steps_per_mode": steps,
        "block_steps": block,
        "device": str(device),
        "path": "float32 append (as before)" if float_append else ("encoded append" if encoded else "float32 append"),
        "codes_into_store_buffer": bool(rec._reserving),  # CPU, encoded: quantised into reserved slots
        "compiled_recording_loop": bool(getattr(rec, "_compiled", False)),  # numba (fused.encode_block_tensor)
        "encoded_append": encoded,
        "store_cpu_per_step_s": store_cpu / steps,
        "cpu_ratio": cpu["recorded"] / cpu["plain"],
        "ratio": recorded_total / wall["plain"],
        "ratio_blocks_only": wall["recorded"] / wall["plain"],
        "pair_ratios": [round(x, 4) for x in pair_ratios],
        "pair_ratio_median": float(np.median(pair_ratios)),
        "plain_step_s": wall["plain"] / steps,
        "recorded_step_s": recorded_total / steps,
        "rec_step_call_s": step_call / steps,
        "quantize_s": quantize.seconds / steps,
        "store_append_s": appends.seconds / steps,
        "index_add_s": index.seconds / steps,
        "delta_and_feedback_s": (step_call - quantize.seconds - appends.seconds - index.seconds) / steps,
        "flush_per_block_s": flush / pairs,
        "setup_s": setup,
        "close_s": close,
        "cpu_per_step_plain_s": cpu["plain"] / steps,
        "cpu_per_step_recorded_s": cpu["recorded"] / steps,
        "stored_bytes_per_step": size.stored / max(size.steps, 1),
        "raw_bytes_per_step": size.raw / max(size.steps, 1),
        "blocks": blocks,
    }


def contention_probe(make_model: Callable[[], torch.nn.Module], codec: str, reps: int = 3) -> dict[str, Any]:
    """The Recorder's per-step math on the model's state with 2 vs 1 torch threads, while two
    threads compress (as the store's do). Why the Recorder drops to one thread for it."""
    import threading

    import zstandard

    class _Null:
        layout = None
        accepts_encoded = True

        def __init__(self) -> None:
            self.codec = codec

        def append(self, *a: Any, **k: Any) -> None:
            pass

        def flush(self) -> None:
            pass

    model = make_model()
    rec = Recorder(model, _Null(), _Null())
    state = {k: v.detach().clone().add_(1e-3) for k, v in float_state(model).items()}
    stop = threading.Event()
    payload = np.random.default_rng(0).integers(0, 255, 4 << 20, dtype=np.uint8).tobytes()

    def compress() -> None:
        c = zstandard.ZstdCompressor(level=1)
        while not stop.is_set():
            c.compress(payload)

    out: dict[str, Any] = {}
    threads = torch.get_num_threads()
    for busy in (0, 2):
        workers = [threading.Thread(target=compress, daemon=True) for _ in range(busy)]
        for w in workers:
            w.start()
        try:
            for n in sorted({threads, 1}, reverse=True):
                torch.set_num_threads(n)
                times = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    # the math of rec.step, without its thread switch
                    rec._encode_on(state) if rec._encoded is not None else rec._deltas_on(state)
                    times.append(time.perf_counter() - t0)
                out[f"busy{busy}_threads{n}_s"] = min(times)
        finally:
            torch.set_num_threads(threads)
            stop.set()
            for w in workers:
                w.join()
            stop.clear()
    rec.close()
    return out


def _ms(s: float) -> str:
    return f"{s * 1000:.1f}"


def markdown(results: list[dict[str, Any]], probe: dict[str, Any], info: dict[str, Any], command: str) -> str:
    lines = [
        SECTION,
        "",
        "Every figure in this section comes from one run of",
        "",
        "```",
        command,
        "```",
        "",
        f"({info['seconds']:.0f} s; raw figures in `bench/out/recording.json`; {info['cpus']} CPUs, "
        f"{info['torch_threads']} torch threads; the store on local disk in a temp dir with its "
        f"default 2 threads; 1-minute load average {info['load_average_1min'][0]} at the start and "
        f"{info['load_average_1min'][1]} at the end: other jobs shared the 2 cores).",
        "",
        "Same setup as above (CIFAR-style ResNet18, batch 128 of real MNIST padded to 32x32x3; small "
        "CNN on 28x28 MNIST; SGD lr 0.1, momentum 0.9, weight decay 5e-4). One Recorder and one store "
        "live through the run; blocks of steps with and without `rec.step(ids)` alternate in ABBA "
        "order on the same model. Every recorded block ends with `rec.flush()`, so its time is wall "
        "time until every step is compressed, written, committed and fsync'ed, and no compression "
        "spills into the next plain block.",
        "",
        "* **ratio** = (recorded blocks + building the Recorder + closing the store) / plain blocks, "
        "same number of steps; **pairs** = median [min-max] of recorded/plain per adjacent pair.",
        "* **rec.step** = the training thread's time per step, split into theta - r and r += d "
        "(error feedback), the codec's `quantize`, the store's copy in `append`, and hashing the "
        "batch's ids into the index. **drain** = `rec.flush()` at the end of a block: the last "
        "steps' compression and writes that a longer run would overlap with training.",
        "",
        "| model | codec | steps/mode | ratio | pairs | plain step | rec.step | theta-r, r+=d | quantize | append | index | drain/block | CPU s/step plain -> recorded | stored/step |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in results:
        pr = r["pair_ratios"]
        lines.append(
            f"| {r['model']} | {r['codec']} | {r['steps_per_mode']} | **{r['ratio']:.3f}** | "
            f"{r['pair_ratio_median']:.3f} [{min(pr):.3f}-{max(pr):.3f}] | {_ms(r['plain_step_s'])} ms | "
            f"{_ms(r['rec_step_call_s'])} ms | {_ms(r['delta_and_feedback_s'])} | {_ms(r['quantize_s'])} | "
            f"{_ms(r['store_append_s'])} | {_ms(r['index_add_s'])} | {_ms(r['flush_per_block_s'])} ms | "
            f"{r['cpu_per_step_plain_s']:.3f} -> {r['cpu_per_step_recorded_s']:.3f} | "
            f"{r['stored_bytes_per_step'] / 1e6:.2f} MB |"
        )
    lines += ["", "Where the time goes:", ""]
    for r in results:
        share = r["rec_step_call_s"] / r["plain_step_s"]
        pr = r["pair_ratios"]
        lines.append(
            f"* **{r['model']}, {r['codec']}** ({r['recorded_values']:,} recorded values): the training "
            f"thread spends {_ms(r['rec_step_call_s'])} ms per step in `rec.step`, {share:.1%} of a plain "
            f"step: {_ms(r['delta_and_feedback_s'])} ms for theta - r and r += d, {_ms(r['quantize_s'])} ms "
            f"in the codec's `quantize`, {_ms(r['store_append_s'])} ms in `append` (the store copies "
            f"the delta and queues it), {_ms(r['index_add_s'])} ms hashing ids. The rest of the overhead "
            "is the store's background work (compression, sha256, a chunk file and a commit marker "
            "with fsync per step) competing with training for the 2 cores and the GIL, and the drain "
            f"of {_ms(r['flush_per_block_s'])} ms after every {r['block_steps']}-step block. Recorded/plain "
            f"per pair ranged {min(pr):.3f}-{max(pr):.3f}: other jobs moved step times between blocks, "
            "which the interleaving cancels in the total but not in single pairs."
        )
    if probe:
        t = info["torch_threads"]
        lines += [
            "",
            f"Threads ({probe['model']}, {probe['codec']}, best of 3): the Recorder's per-step math "
            f"(theta - r, quantise, r += d) took {_ms(probe[f'busy0_threads{t}_s'])} ms with {t} torch "
            f"threads and {_ms(probe['busy0_threads1_s'])} ms with 1; with two threads compressing beside "
            f"it (as the store's do), {_ms(probe[f'busy2_threads{t}_s'])} ms with {t} and "
            f"{_ms(probe['busy2_threads1_s'])} ms with 1. On idle cores a second thread would speed up this "
            "memory-bound work, but a parallel region waits at its barrier whenever another thread "
            "(the store's, or another process's) holds the second core: `rec.step` therefore runs it on "
            "torch's threads minus the store's two (at least one: one here) and restores the setting.",
        ]
    return "\n".join(lines) + "\n"


def append_section(path: Path, text: str) -> None:
    """Replace our section if present (rerun), else append; other sections are left as they are."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(SECTION)
    if start >= 0:
        nxt = old.find("\n## ", start + len(SECTION))
        old = old[:start].rstrip("\n") + ("\n\n" + old[nxt + 1 :] if nxt >= 0 else "")
    body = old.rstrip("\n") + "\n\n" + text
    path.write_text(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codecs", default=DEFAULT_CODEC, help=f"comma-separated codecs (default: the store's default, {DEFAULT_CODEC})")
    ap.add_argument("--models", default="resnet18,cnn")
    ap.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    ap.add_argument("--device", default="auto", help="auto (cuda when present, else cpu), cpu or cuda")
    ap.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (default: torch's own)")
    ap.add_argument("--float-append", action="store_true",
                    help="also measure each codec with float32 appends (the path before encoded append), same run")
    ap.add_argument("--no-docs", action="store_true", help="do not touch docs/BENCHMARKS.md")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite the docs section from bench/out/recording.json, measure nothing")
    args = ap.parse_args()
    if args.markdown_only:
        saved = json.loads((OUT / "recording.json").read_text())
        text = markdown(saved["results"], saved.get("threads_probe") or {}, saved["machine"], saved["command"])
        append_section(REPO / "docs" / "BENCHMARKS.md", text)
        return

    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    models = args.models.split(",")
    configs: dict[str, tuple] = {}
    if {"resnet18", "cnn"} & set(models):
        images, labels = load_mnist_t10k()
        y = torch.from_numpy(labels)
        # (make_model, inputs, labels, batch, block steps, pairs, warmup)
        configs["resnet18"] = (lambda: cifar_resnet18(100), mnist_tensor(images, as_cifar=True), y, 128, 3, 6, 2)
        configs["cnn"] = (lambda: SmallCNN(10), mnist_tensor(images), y, 128, 50, 6, 20)
    if "resnet18-digits" in models:
        from mlflow_amnesia.learning.data import load_dataset
        from mlflow_amnesia.learning.models import build_model, default_arch_spec

        digits = load_dataset("digits")
        spec = default_arch_spec("resnet18", digits)
        configs["resnet18-digits"] = (lambda: build_model(spec, seed=0), digits.x, digits.y, 8, 30, 6, 10)
    results = []
    with tempfile.TemporaryDirectory(prefix="amnesia-bench-rec-") as tmp:
        for name in models:
            make, x, y, batch, block, pairs, warmup = configs[name]
            if args.quick:
                block, pairs, warmup = (1, 2, 1) if name == "resnet18" else (5, 2, 2)
            for codec, float_append in [(c, f) for c in args.codecs.split(",") for f in ((False, True) if args.float_append else (False,))]:
                r = measure(name, make, x, y, codec=codec, batch=batch, block=block, pairs=pairs, warmup=warmup, tmp=Path(tmp),
                            device=device, float_append=float_append)
                print(
                    f"{name:9s} {codec:5s} {r['path']:26s} ratio {r['ratio']:.3f} (blocks {r['ratio_blocks_only']:.3f})  "
                    f"plain {_ms(r['plain_step_s'])} ms/step  rec.step {_ms(r['rec_step_call_s'])} ms "
                    f"(delta+fb {_ms(r['delta_and_feedback_s'])}, quantize {_ms(r['quantize_s'])}, "
                    f"append {_ms(r['store_append_s'])}, index {_ms(r['index_add_s'])})  "
                    f"drain {_ms(r['flush_per_block_s'])} ms/block  cpu/step {r['cpu_per_step_plain_s']:.3f} -> "
                    f"{r['cpu_per_step_recorded_s']:.3f} s (CPU ratio {r['cpu_ratio']:.2f})  "
                    f"store CPU {_ms(r['store_cpu_per_step_s'])} ms/step  [{r['device']}"
                    f"{', compiled loop' if r['compiled_recording_loop'] else ''}]",
                    flush=True,
                )
                results.append(r)
    probe: dict[str, Any] = {}
    if "resnet18" in models and device.type == "cpu":
        probe = {"model": "resnet18", "codec": args.codecs.split(",")[0]}
        probe.update(contention_probe(configs["resnet18"][0], probe["codec"], reps=1 if args.quick else 3))
        print("threads probe:", {k: round(v, 4) if isinstance(v, float) else v for k, v in probe.items()}, flush=True)
    info = machine()
    info["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    info["seconds"] = round(time.perf_counter() - t_start, 1)
    command = "python bench/recording.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in (("models", args.models), ("codecs", args.codecs), ("device", args.device),
                                                   ("torch_threads", args.torch_threads))
        if v != ap.get_default(k)
    ) + (" --float-append" if args.float_append else "") + (" --quick" if args.quick else "")
    info["device"] = str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    write_json(OUT / "recording.json", {"command": command, "machine": info, "results": results, "threads_probe": probe})
    if not args.quick and not args.no_docs:
        append_section(REPO / "docs" / "BENCHMARKS.md", markdown(results, probe, info, command))


if __name__ == "__main__":
    main()
