"""Unlearning methods side by side, judged against retraining, on real MNIST.

    python bench/methods.py            # small CNN (8,000 / 2,000) + ResNet18 (2,000 / 1,000 subset)
    python bench/methods.py --quick    # a smoke run (tiny sizes; its figures mean nothing)

For each model: ``train`` (the library's job, every step recorded, default int8 codec) registers
version 1; then for each request (1, 10 and 100 random training records, and one whole class)
every method runs on a private copy of version 1, in this process, through the same code path
as ``forget`` (``plan_forget`` for the steps, ``ForgetContext`` + ``method.apply``), without the
registry calls: ``amnesiac`` (no repair, ``--repair finetune``, ``--repair replay``), ``relabel``,
``finetune`` and ``retrain``. The unlearning time is what the method reports: the rollback
(reading and subtracting the steps' deltas) plus any repair, or the training loop for the
methods that train; ``retrain``'s training loop of the same request, measured in the same
process, is the reference of the speed ratio. Data loading, process start and registry calls
are outside these numbers. The CLI's end-to-end wall time (``python -m mlflow_amnesia.cli
forget ...`` in a fresh process, without the privacy audit) is measured separately.

Data: the real MNIST t10k files (never copied into the repository). The small CNN uses all
10,000 images (``idx:<dir>``, a stratified hash split: 8,000 train / 2,000 held out). ResNet18
steps take seconds on 2 cores, so it uses a subset written to a temp dir as idx files: the
first 2,000 images as ``train`` and the next 1,000 as ``t10k`` (the held-out part); batch 32,
lr 0.01, 2 epochs (126 steps; larger batches leave it far from converged after 2 epochs, and its
held-out accuracy then swings by 10 points from one step to the next). The small CNN trains 2
epochs at batch 128, lr 0.02. The whole run takes about 25-30 minutes on 2 shared cores.

Writes bench/out/methods.json and the section "## Unlearning methods" of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import shlex
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MNIST_DIR, OUT, REPO, load_mnist_t10k, machine, write_json  # noqa: E402

SECTION = "## Unlearning methods"
CLASS = 3
DIAGNOSTIC = "amnesiac, BN stats kept (diagnostic)"
MARKS = ("†", "‡", "§", "¶")
METHODS: list[tuple[str, str, dict]] = [  # (label, method, options)
    ("amnesiac", "amnesiac", {"repair": "none"}),
    ("amnesiac + finetune 1 ep", "amnesiac", {"repair": "finetune", "repair_epochs": 1}),
    ("amnesiac + replay", "amnesiac", {"repair": "replay"}),
    ("relabel (4 copies, 1 ep)", "relabel", {"copies": 4}),
    ("finetune 1 ep", "finetune", {}),
    (DIAGNOSTIC, "keep-bn-stats", {}),
    ("retrain", "retrain", {}),
]
CLI_PLAN: list[tuple[str, list[str]]] = [
    ("amnesiac", []), ("amnesiac --repair replay", ["--repair", "replay"]), ("relabel", ["--method", "relabel"]),
    ("finetune", ["--method", "finetune"]), ("retrain", ["--method", "retrain"]),
]


def _keep_bn_stats_rollback(ctx) -> Any:
    """Diagnostic, not a method: amnesiac rollback of the parameters only, BatchNorm running
    statistics left as trained. Amnesiac itself subtracts the running-statistic deltas decayed by
    (1 - momentum) per later step; this row shows what the statistics still contribute."""
    from mlflow_amnesia.unlearn import MethodResult
    from mlflow_amnesia.unlearn.amnesiac import rolled_back_sums, subtract

    t0 = time.monotonic()
    sums = rolled_back_sums(ctx.model, ctx.steps, ctx.key)
    subtract(ctx.model.module, {k: v for k, v in sums.items() if not k.rsplit(".", 1)[-1].startswith("running_")}, 0)
    return MethodResult(rolled_back=np.asarray(ctx.steps, np.int64), metrics={"unlearn.seconds": time.monotonic() - t0})


def _has_bn_stats(module) -> bool:
    return any(k.endswith("running_mean") for k in module.state_dict())


def _write_idx(path: Path, a: np.ndarray) -> None:
    """An idx file of unsigned bytes (MNIST's format), gzip-compressed."""
    header = struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header + np.ascontiguousarray(a, dtype=np.uint8).tobytes())


def subset_dir(root: Path, n_train: int, n_test: int) -> Path:
    """The first ``n_train`` t10k images as ``train``, the next ``n_test`` as ``t10k``."""
    images, labels = load_mnist_t10k()
    d = root / f"mnist-sub{n_train}"
    d.mkdir(parents=True, exist_ok=True)
    for stem, sl in (("train", slice(0, n_train)), ("t10k", slice(n_train, n_train + n_test))):
        _write_idx(d / f"{stem}-images-idx3-ubyte.gz", images[sl])
        _write_idx(d / f"{stem}-labels-idx1-ubyte.gz", labels[sl].astype(np.uint8))
    return d


def random_train_ids(records, split, seed: int = 7) -> list[str]:
    """Every training record id, in a fixed pseudo-random order."""
    from mlflow_amnesia.data import epoch_order

    train = np.asarray(split.train)
    return [str(records.ids[p]) for p in train[np.asarray(epoch_order(len(train), seed, 0))]]


def requests(order: list[str], sizes: list[int], with_class: bool = True) -> list[tuple[str, list[str], Optional[str]]]:
    """(label, record ids, class) per request: nested random record sets, then one class."""
    out = [(f"{k} record{'s' if k > 1 else ''}", order[:k], None) for k in sizes]
    if with_class:
        out.append((f"class {CLASS}", [], str(CLASS)))
    return out


def run_model(label: str, *, dataset: str, arch: str, epochs: int, batch: int, lr: float, sizes: list[int],
              work: Path, holdout_fraction: float, with_class: bool = True,
              only: Optional[list[str]] = None) -> dict[str, Any]:
    """Train v1, then every method on every request; returns rows and the model's facts."""
    from mlflow_amnesia import registry
    from mlflow_amnesia.audit import forgotten_positions
    from mlflow_amnesia.data import Split, rebuild
    from mlflow_amnesia.flavor import AmnesiaModel, load_model
    from mlflow_amnesia.forget import plan_forget
    from mlflow_amnesia.train import train
    from mlflow_amnesia.training import evaluate
    from mlflow_amnesia.unlearn import ForgetContext, get_method

    name = f"bench-{arch}"
    print(f"[{label}] training v1 ({dataset}, {epochs} epochs, batch {batch})", flush=True)
    t0 = time.perf_counter()
    tr = train(dataset=dataset, arch=arch, epochs=epochs, batch_size=batch, lr=lr, model_name=name,
               holdout_fraction=holdout_fraction, audit=False)
    train_wall = time.perf_counter() - t0
    v1 = load_model(registry.model_uri(registry.resolve_version(name, version=tr.version)))
    records = rebuild(v1.info["dataset"])
    sp = Split.from_json(v1.info["split"], records)
    hx, hy = records.x[sp.holdout], records.y[sp.holdout]
    facts = {"model": label, "arch": arch, "n_train": int(len(sp.train)), "n_test": int(len(sp.holdout)),
             "epochs": epochs, "batch": batch, "lr": lr, "steps": int(tr.steps), "codec": v1.info["codec"],
             "train_wall_s": train_wall, "train_loop_s": float(tr.metrics.get("train.seconds", float("nan"))),
             "acc_test_v1": evaluate(v1.module, hx, hy)[0]}
    print(f"[{label}] v1: {tr.steps} steps, acc.test {facts['acc_test_v1']:.4f}", flush=True)

    rows: list[dict] = []
    order = random_train_ids(records, sp)
    for req_label, ids, cls in requests(order, sizes, with_class):
        plan, _, am, key, target_hashes, _ = plan_forget(name, ids=ids or None, cls=cls, version=tr.version)
        fpos = forgotten_positions(records, sp.train, target_hashes, key)
        fx, fy = records.x[fpos], records.y[fpos]
        acc_f, loss_f = evaluate(am.module, fx, fy)
        base = {"model": label, "request": req_label, "n_records": int(plan.n_records),
                "steps_touched": int(len(plan.steps)), "steps_total": int(plan.total_steps), "share": plan.share}
        rows.append({**base, "method": "original (v1)", "acc_test": facts["acc_test_v1"], "acc_forget": acc_f,
                     "loss_forget": loss_f})
        for m_label, method, options in METHODS:
            if only and not any(o in m_label for o in only):
                continue
            if method == "keep-bn-stats" and not _has_bn_stats(am.module):
                continue
            child = AmnesiaModel(module=copy.deepcopy(am.module), arch=am.arch, info=copy.deepcopy(am.info),
                                 segments=list(am.segments), rolled_back=am.rolled_back, forgotten=am.forgotten)
            phase = work / f"{name}-{len(rows)}"
            ctx = ForgetContext(model=child, key=key, target_hashes=target_hashes, steps=plan.steps,
                                load_records=lambda: records, phase_base=lambda p=phase: str(p), run_id="bench",
                                options={"repair_lr": None, "epochs": None, "copies": 4, "cls": cls, **options})
            t0 = time.perf_counter()
            result = _keep_bn_stats_rollback(ctx) if method == "keep-bn-stats" else get_method(method).apply(ctx)
            apply_wall = time.perf_counter() - t0
            m = result.metrics
            unlearn = float(m.get("unlearn.seconds", 0.0)) + float(m.get("repair.seconds", 0.0))
            trained = sum(s.n_steps for s in (result.replace_segments or result.new_segments))
            acc_t, _ = evaluate(child.module, hx, hy)
            acc_f, loss_f = evaluate(child.module, fx, fy)
            rows.append({**base, "method": m_label, "unlearn_s": unlearn, "method_s": float(m.get("unlearn.seconds", 0.0)),
                         "repair_s": float(m.get("repair.seconds", 0.0)), "apply_wall_s": apply_wall, "acc_test": acc_t,
                         "acc_forget": acc_f, "loss_forget": loss_f, "steps_rolled_back": int(len(result.rolled_back)),
                         "steps_trained": int(trained)})
            print(f"[{label}] {req_label:>12} {m_label:<26} {unlearn:8.3f}s acc.test {acc_t:.4f} "
                  f"acc.forget {acc_f:.3f} loss.forget {loss_f:.3f}", flush=True)
            del child, ctx
        ref = next((r for r in rows if r["request"] == req_label and r["method"] == "retrain"), None)
        for r in rows:  # a ratio only against the retrain of this same run
            if r["request"] == req_label and "unlearn_s" in r:
                r["speedup_vs_retrain"] = ref["unlearn_s"] / max(r["unlearn_s"], 1e-9) if ref else None
    # records no request above used, for the CLI runs (a chain of forgets on the registered model)
    return {"facts": facts, "rows": rows, "model_name": name, "spare_ids": order[max(sizes):]}


def cli_wall(model_name: str, ids: list[str], args: list[str], env: dict, tmp: Path) -> tuple[float, str]:
    """Wall seconds of one ``forget`` in a fresh process (process start and registry included)."""
    f = tmp / f"ids-{time.monotonic_ns()}.txt"
    f.write_text("\n".join(ids) + "\n")
    cmd = [sys.executable, "-m", "mlflow_amnesia.cli", "forget", "--model", model_name, "--records", str(f),
           "--yes", "--no-audit", *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
    return wall, r.stdout.strip().splitlines()[-1]


def cli_runs(model_name: str, records_ids: list[str], plan: list[tuple[str, list[str]]], k: int, env: dict,
             tmp: Path) -> list[dict]:
    """Chained CLI forgets (each from the latest version) of ``k`` fresh records per method."""
    out = []
    for i, (label, args) in enumerate(plan):
        ids = records_ids[i * k : (i + 1) * k]
        wall, line = cli_wall(model_name, ids, args, env, tmp)
        out.append({"model": model_name, "method": label, "n_records": k, "wall_s": wall, "output": line})
        print(f"[cli] {model_name} {label}: {wall:.1f}s  {line}", flush=True)
    return out


def _fmt_x(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.1f}"


def _fmt_s(s: float) -> str:
    return f"{s:.3f}" if s < 10 else f"{s:.1f}"


def markdown(res: dict, command: str, total_s: float) -> str:
    info = res["machine"]
    lines = [
        SECTION, "",
        f"`{command}` ({total_s / 60:.1f} min in all; {info['cpus']} CPUs shared with other jobs, torch "
        f"{info['torch']}, {info['torch_threads']} torch threads; raw figures in `bench/out/methods.json`).", "",
        "Setup (real MNIST t10k; training by `mlflow-amnesia train`'s code, every step recorded, "
        "int8 codec, SGD momentum 0.9, weight decay 5e-4):", "",
    ]
    for m in res["models"]:
        f = m["facts"]
        lines.append(f"* **{f['model']}**: {f['n_train']:,} training / {f['n_test']:,} held-out images, "
                     f"{f['epochs']} epochs, batch {f['batch']}, lr {f['lr']}: {f['steps']} recorded steps; "
                     f"training loop {f['train_loop_s']:.1f} s; held-out accuracy {f['acc_test_v1']:.4f}.")
    lines += [
        "* Both models are trained briefly (2 epochs, to fit the time budget), so the methods that train one "
        "more epoch (finetune, relabel, the repairs) can end above the original's held-out accuracy.",
        "* Requests: 1, 10 and 100 random training records (nested sets), and every training record "
        f"of class {CLASS}. Every method starts from version 1 (a private copy), in one process, through "
        "`plan_forget` + `method.apply` (what `forget` runs, without the registry calls).",
        "* **time** = the unlearning itself as the method reports it: the rollback (read and subtract the "
        "deltas of the steps) plus the repair, or the training loop of relabel / finetune / retrain (each "
        "records its steps, as training did). **x retrain** = retrain's training loop for the same request, "
        "in the same process, divided by that time. **acc.test**: held-out accuracy. **acc / loss forget**: "
        "accuracy and mean cross-entropy on the records forgotten (for retrain these are records it never "
        "saw: the reference). **rolled back**: steps subtracted (share of all steps = the share of steps "
        "the records touched); **trained**: steps the method ran (and recorded).", "",
    ]
    for m in res["models"]:
        lab = m["facts"]["model"]
        lines += [f"### {lab}", "",
                  "| request | method | time (s) | x retrain | acc.test | acc.forget | loss.forget | rolled back | trained |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in m["rows"]:
            if r["method"] == "original (v1)":
                lines.append(f"| {r['request']} ({r['n_records']}) | *original (v1)* | | | {r['acc_test']:.4f} | "
                             f"{r['acc_forget']:.3f} | {r['loss_forget']:.3f} | touched {r['steps_touched']}/"
                             f"{r['steps_total']} ({r['share']:.1%}) | |")
                continue
            rb = f"{r['steps_rolled_back']} ({r['steps_rolled_back'] / r['steps_total']:.1%})" if r["steps_rolled_back"] else "0"
            bold = "**" if r["method"] == "retrain" else ""
            mark = f" {MARKS[int(r['remeasured']) - 1]}" if r.get("remeasured") else ""
            lines.append(f"| {r['request']}{mark} | {bold}{r['method']}{bold} | {_fmt_s(r['unlearn_s'])} | "
                         f"{_fmt_x(r.get('speedup_vs_retrain'))} | {r['acc_test']:.4f} | {r['acc_forget']:.3f} | "
                         f"{r['loss_forget']:.3f} | {rb} | {r['steps_trained']} |")
        loops = [r["unlearn_s"] for r in m["rows"] if r["method"] == "retrain"]
        if loops and max(loops) > 1.3 * min(loops):
            lines += [f"The machine's load varied during the run: retrain's loop took {min(loops):.1f}-{max(loops):.1f} s "
                      f"on {lab} for nearly the same work, so each ratio carries up to {max(loops) / min(loops):.1f}x of "
                      "noise (methods and retrain of one request ran minutes apart).", ""]
        else:
            lines.append("")
    for mark, rerun in zip(MARKS, res.get("reruns", [])):
        lines += [f"{mark} Measured by `{rerun['command']}` ({rerun['total_s'] / 60:.1f} min): {rerun['note']} "
                  "Training and record selection are deterministic, so version 1 and the records are the same "
                  "in both runs (checked: same steps and held-out accuracy of v1).", ""]
    if res.get("cli"):
        lines += ["CLI end to end (`python -m mlflow_amnesia.cli forget ... --yes --no-audit` in a fresh process: "
                  "interpreter and imports, registry, data rebuild, the method, the accuracy audit, logging and "
                  "registering the version; chained, each forget from the latest version):", "",
                  "| model | method | records | wall (s) |", "| --- | --- | ---: | ---: |"]
        for c in res["cli"]:
            lines.append(f"| {c['model']} | {c['method']} | {c['n_records']} | {c['wall_s']:.1f} |")
        lines.append("")
    lines += res.get("findings", [])
    return "\n".join(lines).rstrip("\n") + "\n"


def _verdict(r: dict, orig: dict, ref: dict) -> str:
    """One method's outcome in words: accuracy kept or lost, and forgetting against retrain."""
    drop = (orig["acc_test"] - r["acc_test"]) * 100
    acc = f"acc.test {r['acc_test']:.4f} ({'-' if drop >= 0 else '+'}{abs(drop):.1f} pt)"
    gap = r["loss_forget"] - ref["loss_forget"]
    if abs(gap) <= 0.1 * max(ref["loss_forget"], 0.1):
        forget = "loss on the records close to retrain's"
    elif gap < 0:
        forget = f"loss on the records {r['loss_forget']:.3f} < retrain's {ref['loss_forget']:.3f} (remembers more)"
    else:
        forget = f"loss on the records {r['loss_forget']:.3f} > retrain's {ref['loss_forget']:.3f} (over-forgets)"
    return f"{acc}, {forget}"


def _bn_note(diag: Optional[dict], am_: dict, orig: dict) -> str:
    """What the diagnostic row (BatchNorm running statistics not rolled back) says about the fall."""
    fall = orig["acc_test"] - am_["acc_test"]
    if not diag or fall <= 0.01:
        return ""
    return (f" amnesiac rolls BatchNorm running statistics back decayed by their momentum (docs/ARCHITECTURE.md); "
            f"leaving them as trained (diagnostic) gives acc.test {diag['acc_test']:.4f} "
            f"({diag['acc_test'] - am_['acc_test']:+.4f}), "
            + ("so the fall comes from the parameters' rollback." if abs(diag["acc_test"] - am_["acc_test"]) < 0.01
               else f"so the statistics' rollback accounts for {(diag['acc_test'] - am_['acc_test']) / fall:.0%} of the fall."))


def findings(res: dict) -> list[str]:
    """The targets, checked against this run's figures (text written from the numbers)."""
    out = ["Findings of this run (generated from the figures above):", ""]
    for m in res["models"]:
        lab, rows = m["facts"]["model"], m["rows"]
        reqs = list(dict.fromkeys(r["request"] for r in rows))
        for req in reqs:
            get = {r["method"]: r for r in rows if r["request"] == req}
            orig, ref, am_ = get["original (v1)"], get["retrain"], get["amnesiac"]
            repaired = max((get["amnesiac + finetune 1 ep"], get["amnesiac + replay"]), key=lambda r: r["acc_test"])
            drop = (orig["acc_test"] - am_["acc_test"]) * 100
            rdrop = (orig["acc_test"] - repaired["acc_test"]) * 100
            state = ("keeps held-out accuracy within 1 point" if drop <= 1 else
                     f"**fails**: held-out accuracy falls {drop:.1f} points")
            out.append(
                f"* {lab}, {req}: the records touched {am_['steps_rolled_back']} of {orig['steps_total']} steps "
                f"({orig['share']:.1%}). Amnesiac rollback is {am_['speedup_vs_retrain']:.0f}x faster than retrain "
                f"({am_['unlearn_s']:.3f} s vs {ref['unlearn_s']:.1f} s) and {state}"
                + (f" (it removes {orig['share']:.1%} of all training updates; the paper's limit is ~1%)" if drop > 1 else "")
                + f"; {_verdict(am_, orig, ref)}.{_bn_note(get.get(DIAGNOSTIC), am_, orig)} Best repair ({repaired['method']}, "
                f"{repaired['speedup_vs_retrain']:.1f}x retrain's speed): held-out accuracy "
                f"{'within 1 point of' if rdrop <= 1 else f'{rdrop:.1f} points below'} the original "
                f"(retrain: {ref['acc_test']:.4f}). "
                f"relabel: {_verdict(get['relabel (4 copies, 1 ep)'], orig, ref)}; finetune: "
                f"{_verdict(get['finetune 1 ep'], orig, ref)}."
            )
    return out + [""]


def merge(old: dict, new: dict, command: str, note: str) -> dict:
    """``old`` with the (request, method) rows that ``new`` measured replaced or added (marked);
    version 1 must be the same model (same steps and held-out accuracy)."""
    for m in new["models"]:
        om = next((o for o in old["models"] if o["facts"]["model"] == m["facts"]["model"]), None)
        if om is None or om["facts"]["acc_test_v1"] != m["facts"]["acc_test_v1"] or om["facts"]["steps"] != m["facts"]["steps"]:
            raise SystemExit(f"cannot merge {m['facts']['model']}: version 1 differs from the earlier run's")
        run = len(old.get("reruns", [])) + 1  # which re-run measured a row (its footnote mark)
        fresh = {(r["request"], r["method"]): dict(r, remeasured=run if r["method"] != "original (v1)" else 0)
                 for r in m["rows"]}
        rows: list[dict] = []
        for req in dict.fromkeys(r["request"] for r in om["rows"]):
            group = [fresh.pop((req, r["method"]), r) for r in om["rows"] if r["request"] == req]
            added = [fresh.pop(k) for k in [k for k in fresh if k[0] == req]]
            at = next((i for i, r in enumerate(group) if r["method"] == "retrain"), len(group))
            rows += group[:at] + added + group[at:]
        om["rows"] = rows
    old["reruns"] = old.get("reruns", []) + [{"command": command, "total_s": new["total_s"], "note": note}]
    return old


def replace_section(path: Path, section: str, text: str) -> None:
    """Replace ``section`` (up to the next ``## ``) if present, else append; nothing else changes."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(section + "\n")
    if start >= 0:
        nxt = old.find("\n## ", start + len(section))
        old = old[:start].rstrip("\n") + ("\n\n" + old[nxt + 1 :] if nxt >= 0 else "")
    path.write_text(old.rstrip("\n") + "\n\n" + text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run (figures mean nothing)")
    ap.add_argument("--skip", choices=["cnn", "resnet18"], action="append", default=[])
    ap.add_argument("--no-cli", action="store_true", help="skip the CLI end-to-end timings")
    ap.add_argument("--no-docs", action="store_true", help="do not touch docs/BENCHMARKS.md")
    ap.add_argument("--cnn-epochs", type=int, default=2)
    ap.add_argument("--resnet-epochs", type=int, default=2)
    ap.add_argument("--resnet-batch", type=int, default=32)
    ap.add_argument("--resnet-lr", type=float, default=0.01)
    ap.add_argument("--resnet-train", type=int, default=2000)
    ap.add_argument("--resnet-test", type=int, default=1000)
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="record counts per request (default 1 10 100)")
    ap.add_argument("--no-class", action="store_true", help="skip the whole-class request")
    ap.add_argument("--methods", nargs="+", default=None,
                    help="run only the methods whose label contains one of these strings (e.g. retrain diagnostic)")
    ap.add_argument("--merge", metavar="NOTE", default=None,
                    help="replace only the re-measured (model, request) rows of bench/out/methods.json, with this "
                         "note on why (e.g. a disturbed timing); the rest of the earlier run is kept")
    args = ap.parse_args()
    t_start = time.perf_counter()
    shown = ["NOTE" if a == args.merge else a for a in sys.argv[1:]]
    command = " ".join(["python bench/methods.py", *(shlex.quote(a) for a in shown)])

    with tempfile.TemporaryDirectory(prefix="amnesia-methods-") as tmp_s:
        tmp = Path(tmp_s)
        env = {**os.environ, "MLFLOW_AMNESIA_QUIET": "1", "MLFLOW_AMNESIA_KEY": os.urandom(32).hex(),
               "XDG_CONFIG_HOME": str(tmp / "config"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
               "MLFLOW_REGISTRY_URI": f"sqlite:///{tmp}/mlflow.db", "MLFLOW_DISABLE_TELEMETRY": "true",
               "DO_NOT_TRACK": "true", "GIT_PYTHON_REFRESH": "quiet"}
        os.environ.update(env)
        os.chdir(tmp)
        import mlflow

        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        res: dict[str, Any] = {"machine": machine(), "models": [], "cli": []}
        sizes = args.sizes or ([1, 10] if args.quick else [1, 10, 100])
        configs = []
        if "cnn" not in args.skip:
            if args.quick:
                ds, hf = f"idx:{subset_dir(tmp, 1000, 300)}", 0.2
            else:
                ds, hf = f"idx:{MNIST_DIR}", 0.2
            configs.append(("small CNN", dict(dataset=ds, arch="cnn", epochs=1 if args.quick else args.cnn_epochs,
                                               batch=128, lr=0.02, holdout_fraction=hf)))
        if "resnet18" not in args.skip:
            n_tr, n_te = (256, 128) if args.quick else (args.resnet_train, args.resnet_test)
            configs.append(("ResNet18", dict(dataset=f"idx:{subset_dir(tmp, n_tr, n_te)}", arch="resnet18",
                                              epochs=1 if args.quick else args.resnet_epochs,
                                              batch=args.resnet_batch, lr=args.resnet_lr,
                                              holdout_fraction=0.2)))
        for label, cfg in configs:
            out = run_model(label, sizes=sizes, work=tmp / "phases", with_class=not args.no_class,
                            only=args.methods, **cfg)
            res["models"].append(out)
            if not args.no_cli:
                # ResNet18: only the rollback (its training methods would take minutes each, as above)
                k, plan = (1, CLI_PLAN[:1]) if cfg["arch"] == "resnet18" else (10, CLI_PLAN)
                res["cli"] += [dict(c, model=label) for c in cli_runs(out["model_name"], out.pop("spare_ids"), plan, k, env, tmp)]
            out.pop("spare_ids", None)
        total = time.perf_counter() - t_start
        res["total_s"] = total
        os.chdir(REPO)
        if args.merge:
            res = merge(json.loads((OUT / "methods.json").read_text()), res, command, args.merge)
            command, total = "python bench/methods.py", res["total_s"]
        res["findings"] = findings(res)
        write_json(OUT / "methods.json", res)
        text = markdown(res, command, total)
        print(text)
        if not args.no_docs and not args.quick:
            replace_section(REPO / "docs" / "BENCHMARKS.md", SECTION, text)


if __name__ == "__main__":
    main()
