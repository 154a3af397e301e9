"""Run the mlflow-amnesia CLI on a generated CIFAR-100 file set (bench/forget_latency.py).

torchvision checks the CIFAR-100 files against the published md5 sums before reading them; a
generated set cannot match those, so this runner points torchvision's recorded sums at the
files under ``$AMNESIA_BENCH_CIFAR_ROOT`` (the check still runs) and then calls the CLI:

    AMNESIA_BENCH_CIFAR_ROOT=DIR python bench/cifar_cli.py forget --model M --records F --yes --no-audit
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path


def _point_md5_at_generated_files() -> None:
    from torchvision.datasets import CIFAR100

    base = Path(os.environ["AMNESIA_BENCH_CIFAR_ROOT"]) / "cifar-100-python"
    md5 = {n: hashlib.md5((base / n).read_bytes()).hexdigest() for n in ("train", "test", "meta")}
    CIFAR100.train_list = [["train", md5["train"]]]
    CIFAR100.test_list = [["test", md5["test"]]]
    CIFAR100.meta = {**CIFAR100.meta, "md5": md5["meta"]}


if __name__ == "__main__":
    _point_md5_at_generated_files()
    from mlflow_amnesia.cli import main

    sys.argv[0] = "mlflow-amnesia"
    main()
