"""What recording costs a shadow member: the same member of bench/ulira.py's pool trained
unrecorded, recorded with int8 and recorded with bf16 (time and stored bytes), one after the other.

    nice -n 5 python bench/ulira_overhead.py        # writes bench/out/ulira_overhead.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MLFLOW_AMNESIA_QUIET", "1")

from bench.common import BENCH_KEY, MNIST_DIR, OUT, machine  # noqa: E402
from mlflow_amnesia.audit.privacy import audit_pool  # noqa: E402
from mlflow_amnesia.audit.shadow import train_member  # noqa: E402
from mlflow_amnesia.learning.data import load_dataset, split  # noqa: E402
from mlflow_amnesia.learning.training import Recipe  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    recs = load_dataset(f"idx:{MNIST_DIR}")
    sp = split(recs, seed=0, holdout_fraction=0.9)
    pool = audit_pool(sp, 0)
    arch = {"arch": "mlp", "in_channels": 1, "num_classes": 10, "image_size": 28, "hidden": 64}
    recipe = Recipe(epochs=15, batch_size=8, lr=0.02, momentum=0.9, weight_decay=5e-4, seed=0).to_dict()
    out = {"command": "python bench/ulira_overhead.py", "machine": machine(), "runs": {}}
    for name, key, codec in (("unrecorded", None, "int8"), ("int8", BENCH_KEY, "int8"), ("bf16", BENCH_KEY, "bf16")):
        with tempfile.TemporaryDirectory() as d:
            t = time.monotonic()
            m = train_member(recs, pool, arch, recipe, 16, 0, 0, directory=Path(d) / "m", key=key, codec=codec)
            out["runs"][name] = {"seconds": time.monotonic() - t, "stored_bytes": m.info["stored_bytes"],
                                 "steps": m.info["steps"]}  # fmt: skip
        print(name, out["runs"][name], flush=True)
        (OUT / "ulira_overhead.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
