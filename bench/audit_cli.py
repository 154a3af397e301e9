"""Issue 5's must-show, through the product's own CLI: membership inference before and after a forget.

Real MNIST (t10k idx files), the small CNN trained to overfit a small training set
(``--holdout-fraction``), the audit run by ``train`` (shadow models trained and cached), then
``forget --method retrain`` of ``--forget`` records, audited with the cached shadows. A third and
fourth ``audit`` of version 1 time the cached audit against the cold one in this same run.

    python bench/audit_cli.py                       # 250 training records, 8 shadows, 100 forgotten
    python bench/audit_cli.py --shadows 16 --holdout-fraction 0.95

Writes bench/out/audit_cli.json and prints the rows for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MNIST_DIR, OUT, machine, write_json  # noqa: E402

MODEL = "mnist-overfit"


def cli(args: list[str], env: dict, cwd: str) -> tuple[str, float]:
    exe = shutil.which("mlflow-amnesia") or sys.executable
    cmd = [exe] + args if exe.endswith("mlflow-amnesia") else [exe, "-m", "mlflow_amnesia.cli"] + args
    print("+ mlflow-amnesia " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=None)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(args)}")
    print(p.stdout.strip(), f"[{dt:.1f} s]", flush=True)
    return p.stdout, dt


def run_metrics(tracking_uri: str, version: int) -> dict[str, float]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mv = client.get_model_version(MODEL, str(version))
    return dict(client.get_run(mv.run_id).data.metrics)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--holdout-fraction", type=float, default=0.975, help="0.975 of 10,000: 250 training records")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--shadows", type=int, default=8)
    ap.add_argument("--forget", type=int, default=100, help="records forgotten with --method retrain")
    ap.add_argument("--inversion-iterations", type=int, default=200)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="amnesia-audit-cli-")
    uri = f"sqlite:///{work}/mlflow.db"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_AMNESIA_KEY=secrets.token_hex(32))
    audit_opts = ["--shadows", str(args.shadows), "--inversion-iterations", str(args.inversion_iterations)]
    t = {}
    _, t["train_no_audit"] = cli(["train", "--dataset", f"idx:{MNIST_DIR}", "--arch", "cnn",
                                  "--holdout-fraction", str(args.holdout_fraction), "--epochs", str(args.epochs),
                                  "--batch-size", "32", "--lr", "0.05", "--model-name", MODEL, "--no-audit"], env, work)
    _, t["audit_v1_cold"] = cli(["audit", "--model", MODEL, "--version", "1"] + audit_opts, env, work)
    _, t["audit_v1_cached"] = cli(["audit", "--model", MODEL, "--version", "1"] + audit_opts, env, work)
    ids, _ = cli(["records", "--model", MODEL, "--limit", str(args.forget)], env, work)
    ids_file = Path(work) / "ids.txt"
    ids_file.write_text(ids)
    _, t["forget_retrain_with_cached_audit"] = cli(["forget", "--model", MODEL, "--records", str(ids_file),
                                                    "--method", "retrain", "--yes"] + audit_opts, env, work)
    v1, v2 = run_metrics(uri, 1), run_metrics(uri, 2)
    keys = ["audit.mia.auc", "audit.mia.recall", "audit.mia.precision", "audit.mia.tpr_at_1pct_fpr",
            "audit.mia.tpr_at_0.1pct_fpr", "audit.lira.auc", "audit.lira.tpr_at_1pct_fpr", "audit.lira.tpr_at_0.1pct_fpr",
            "audit.retain.mia.auc", "audit.retain.lira.auc", "acc.test", "acc.forget", "acc.retain", "audit.inversion.score"]
    ratios = {"audit_cached_over_cold": t["audit_v1_cached"] / t["audit_v1_cold"],
              "audit_cached_over_shadow_training": t["audit_v1_cached"] / (t["audit_v1_cold"] - t["audit_v1_cached"])}
    print(f"\n{'metric':32s} {'v1 (trained)':>14s} {'v2 (retrain)':>14s}")
    for k in keys:
        print(f"{k:32s} {v1.get(k, float('nan')):14.4f} {v2.get(k, float('nan')):14.4f}")
    for k, v in t.items():
        print(f"{k:36s} {v:8.1f} s")
    for k, v in ratios.items():
        print(f"{k:36s} {v:.4f}")
    write_json(OUT / "audit_cli.json", {"command": " ".join(sys.argv), "machine": machine(), "args": vars(args),
                                        "seconds": t, "ratios": ratios,
                                        "v1": {k: v1.get(k) for k in keys}, "v2": {k: v2.get(k) for k in keys}})
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
