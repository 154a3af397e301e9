"""Forget latency through the CLI: `forget --no-audit` of one record on the CIFAR-shaped ResNet18.

    python bench/forget_latency.py                 # train once, then time 3 chained forgets
    python bench/forget_latency.py --profile       # also one forget under cProfile (top functions)
    python bench/forget_latency.py --baseline DIR  # alternate each forget with one by the code in DIR
                                                   # (e.g. `git worktree add DIR <commit>`): a ratio, same run

CIFAR-100 cannot be downloaded on the build machine, so the data are a generated file set in
CIFAR-100's published format (cifar-100-python/{train,test,meta}, as tests/test_data.py writes
it): ``--train`` and ``--test`` images of 32x32x3 with 100 classes. The model is the CLI's
``--arch resnet18`` (3x3 CIFAR stem, 100 classes: 11.2M parameters), trained by ``train`` for
one epoch (every step recorded, the default codec). Each forget runs in a fresh process, as a
user runs it: interpreter and imports, registry, data rebuild, the rollback, the accuracy pass,
logging and registering version n+1. bench/cifar_cli.py runs the CLI (it points torchvision's
md5 check at the generated files). Writes bench/out/forget_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, machine, write_json  # noqa: E402

MODEL = "cifar-resnet18"
RUNNER = str(Path(__file__).resolve().parent / "cifar_cli.py")


def write_cifar100(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """cifar-100-python/{train,test,meta} as the publisher writes them (pickled dicts of arrays)."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    labels = rng.integers(0, 100, n)
    # a class-dependent colour plus noise: learnable, so the accuracy pass means something
    colour = rng.integers(0, 256, (100, 3, 1, 1))
    data = np.clip(colour[labels] + rng.normal(0, 40, (n, 3, 32, 32)), 0, 255).astype(np.uint8)
    files = {
        "train": {"data": data[:n_train].reshape(n_train, -1), "fine_labels": labels[:n_train].tolist(),
                  "coarse_labels": (labels[:n_train] // 5).tolist(), "filenames": [f"tr{i}.png" for i in range(n_train)]},
        "test": {"data": data[n_train:].reshape(n_test, -1), "fine_labels": labels[n_train:].tolist(),
                 "coarse_labels": (labels[n_train:] // 5).tolist(), "filenames": [f"te{i}.png" for i in range(n_test)]},
        "meta": {"fine_label_names": [f"class_{i:02d}" for i in range(100)],
                 "coarse_label_names": [f"super_{i}" for i in range(20)]},
    }
    for name, obj in files.items():
        (base / name).write_bytes(pickle.dumps(obj, protocol=2))


def cli(args: list[str], env: dict, cwd: str, *, python: list[str] | None = None, code: str | None = None
        ) -> tuple[str, float]:
    """Run the CLI in a fresh process (``code``: another checkout's root to import the package from)."""
    cmd = [sys.executable, *(python or []), RUNNER, *args]
    if code is not None:
        env = dict(env, PYTHONPATH=os.pathsep.join([code, env.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=cwd, text=True, capture_output=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(args)}\n{p.stdout}\n{p.stderr}")
    return p.stdout, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=512, help="training images (default 512)")
    ap.add_argument("--test", type=int, default=256, help="held-out images (default 256)")
    ap.add_argument("--forgets", type=int, default=3, help="chained one-record forgets to time")
    ap.add_argument("--profile", action="store_true", help="one more forget under cProfile; print the top functions")
    ap.add_argument("--baseline", help="a checkout of the code to compare with: its forgets alternate with ours")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="amnesia-forget-latency-")
    root = Path(work) / "data"
    write_cifar100(root, args.train, args.test)
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work}/mlflow.db", MLFLOW_AMNESIA_KEY=secrets.token_hex(32),
               AMNESIA_BENCH_CIFAR_ROOT=str(root))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    _, train_s = cli(["train", "--dataset", "cifar100", "--data-root", str(root), "--arch", "resnet18", "--epochs", "1",
                      "--batch-size", "64", "--model-name", MODEL, "--no-audit"], env, work)
    print(f"train: {train_s:.1f} s", flush=True)
    ids, _ = cli(["records", "--model", MODEL, "--limit", str(2 * args.forgets + 1)], env, work)
    ids = ids.split()
    walls, base_walls = [], []
    for i in range(args.forgets):
        for code, into in ((None, walls), (args.baseline, base_walls)) if args.baseline else ((None, walls),):
            f = Path(work) / f"ids{i}{'b' if code else ''}.txt"
            f.write_text(ids[2 * i + (1 if code else 0)] + "\n")
            out, dt = cli(["forget", "--model", MODEL, "--records", str(f), "--yes", "--no-audit"], env, work,
                          code=code)
            into.append(dt)
            print(f"forget {i + 1}{' (baseline)' if code else ''}: {dt:.1f} s  "
                  f"{out.strip().splitlines()[-1] if out.strip() else ''}", flush=True)
    # the interpreter and the imports alone, for scale
    _, imports = cli(["--help"], env, work)
    prof = None
    if args.profile:
        f = Path(work) / "idsp.txt"
        f.write_text(ids[2 * args.forgets] + "\n")
        pfile = Path(work) / "forget.prof"
        _, dt = cli(["forget", "--model", MODEL, "--records", str(f), "--yes", "--no-audit"], env, work,
                    python=["-m", "cProfile", "-o", str(pfile)])
        import pstats

        import io

        buf = io.StringIO()
        pstats.Stats(str(pfile), stream=buf).sort_stats("cumulative").print_stats(60)
        print(buf.getvalue())
        (OUT / "forget_latency_profile.txt").write_text(buf.getvalue())
        prof = dt
    res = {"command": "python bench/forget_latency.py" + (" --profile" if args.profile else ""), "machine": machine(),
           "load_average_1min": os.getloadavg()[0], "train_images": args.train, "test_images": args.test,
           "train_s": train_s, "forget_wall_s": walls, "forget_median_s": float(np.median(walls)),
           "cli_help_s": imports, "profiled_forget_s": prof}
    if args.baseline:
        res.update({"baseline": args.baseline, "baseline_forget_wall_s": base_walls,
                    "baseline_forget_median_s": float(np.median(base_walls)),
                    "ratio_median": float(np.median(walls)) / float(np.median(base_walls))})
    write_json(OUT / "forget_latency.json", res)
    print(json.dumps({k: v for k, v in res.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
