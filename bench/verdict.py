"""The audit's verdict on real MNIST: a model that leaks, a good forget, a no-op forget.

Writes the first ``--records`` images of real MNIST t10k as an idx data set, trains a small CNN
on half of them (``--holdout-fraction 0.5``) long enough to overfit (``--epochs``), with the
privacy audit (``--shadows`` shadow models, cached), then from version 1 forgets ``--forget``
training records twice, in two copies of the registry: with ``--method retrain`` (a good forget:
the verdict should be ``pass``) and with a method that does nothing (registered here as
``noop``: the verdict should be ``fail``). Prints each version's verdict and the figures it rests
on (LiRA AUCs with their 95% intervals and samples); writes bench/out/verdict.json.

    python bench/verdict.py                       # 600 records, cnn, 20 epochs, 8 shadows, forget 100
    python bench/verdict.py --shadows 16 --forget 150
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MNIST_DIR, OUT, machine, write_json  # noqa: E402

FIGURES = ("audit.parent.lira.auc", "audit.lira.auc", "audit.retain.lira.auc", "audit.mia.auc", "audit.mia.recall")


def write_subset(src: Path, dst: Path, n: int) -> Path:
    """The first ``n`` t10k images and labels of ``src`` as idx files in ``dst``."""
    from mlflow_amnesia.learning.data import read_idx

    dst.mkdir(parents=True, exist_ok=True)
    for kind in ("images-idx3", "labels-idx1"):
        arr = np.ascontiguousarray(read_idx(src / f"t10k-{kind}-ubyte.gz")[:n], dtype=np.uint8)
        head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
        (dst / f"t10k-{kind}-ubyte.gz").write_bytes(gzip.compress(head + arr.tobytes()))
    return dst


def register_noop() -> None:
    """``--method noop``: registers the parent's weights unchanged (a deliberately bad forget)."""
    from mlflow_amnesia.unlearn.base import METHODS, MethodResult, UnlearningMethod, register_method

    if "noop" in METHODS:
        return

    @register_method
    class Noop(UnlearningMethod):
        name = "noop"

        def apply(self, ctx):
            return MethodResult(rolled_back=np.zeros(0, np.int64), summary="did nothing (a deliberately bad method)")


def _use_db(db: Path) -> None:
    import mlflow

    os.environ["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_REGISTRY_URI"] = f"sqlite:///{db}"
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    mlflow.set_registry_uri(f"sqlite:///{db}")


def figures(metrics: dict) -> dict:
    out = {}
    for name in FIGURES:
        if name in metrics:
            out[name] = {k: metrics.get(f"{name}{k}") for k in ("", ".lo", ".hi", ".n_members", ".n_nonmembers")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--shadows", type=int, default=8)
    ap.add_argument("--forget", type=int, default=100)
    ap.add_argument("--inversion-iterations", type=int, default=20)
    args = ap.parse_args()

    os.environ.setdefault("MLFLOW_AMNESIA_KEY", "33" * 32)
    os.environ["MLFLOW_AMNESIA_QUIET"] = "1"
    import mlflow_amnesia as ma
    from mlflow_amnesia.audit.privacy import AuditSettings
    from mlflow_amnesia.jobs.records import list_records
    from mlflow_amnesia.mlflow import registry

    register_noop()
    settings = AuditSettings(shadows=args.shadows, inversion_iterations=args.inversion_iterations)
    result: dict = {"machine": machine(), "args": vars(args), "versions": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_p = Path(tmp)
        data = write_subset(MNIST_DIR, tmp_p / "data", args.records)
        os.chdir(tmp)
        _use_db(tmp_p / "mlflow.db")
        t0 = time.monotonic()
        tr = ma.train(
            dataset=f"idx:{data}",
            arch="cnn",
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            holdout_fraction=0.5,
            model_name="leaky",
            codec="f32",
            audit_settings=settings,
        )
        result["train_seconds"] = time.monotonic() - t0
        v1 = registry.resolve_version("leaky", version=1)
        result["versions"]["v1 (train)"] = {
            "verdict": v1.tags.get(registry.TAG_VERDICT),
            "reason": v1.tags.get(registry.TAG_VERDICT_REASON),
            "figures": figures(tr.metrics),
        }
        ids = [rid for rid, _ in list_records("leaky", limit=args.forget)]
        (tmp_p / "ids.txt").write_text("\n".join(ids) + "\n")
        shutil.copy(tmp_p / "mlflow.db", tmp_p / "base.db")
        for method in ("retrain", "noop"):
            db = tmp_p / f"{method}.db"
            shutil.copy(tmp_p / "base.db", db)
            _use_db(db)
            t0 = time.monotonic()
            r = ma.forget("leaky", records_file=str(tmp_p / "ids.txt"), method=method, yes=True, audit_settings=settings)
            mv = registry.resolve_version("leaky", version=r.version)
            result["versions"][f"v2 ({method})"] = {
                "verdict": mv.tags.get(registry.TAG_VERDICT),
                "reason": mv.tags.get(registry.TAG_VERDICT_REASON),
                "seconds": time.monotonic() - t0,
                "figures": figures(r.metrics),
            }
    for name, v in result["versions"].items():
        print(f"{name}: {v['verdict']}: {v['reason']}")
    write_json(OUT / "verdict.json", result)


if __name__ == "__main__":
    main()
