"""Rows per forward pass for prediction on a CPU: `evaluate`'s time at each batch size.

    python bench/inference_batch.py

The CLI's ResNet18 (3x3 CIFAR stem) in eval mode, without gradients (`learning.training.evaluate`,
which `acc.test` / `acc.retain` / `acc.forget` use), over random images of three shapes: the
default data set's 8x8 digits (1,797 images, 10 classes), MNIST's 28x28 (1,000 images, 10 classes)
and CIFAR's 3x32x32 (768 images, 100 classes: the forget-latency bench's 256 held-out + 511
retained + 1 forgotten). Batch sizes 32 to 512 and `inference_batch_size`'s choice, interleaved
in each of 3 rounds, wall time, median round; torch's default threads. Writes
bench/out/inference_batch.json.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, machine, write_json  # noqa: E402

from mlflow_amnesia.learning.models import build_model  # noqa: E402
from mlflow_amnesia.learning.training import evaluate, inference_batch_size  # noqa: E402

SHAPES = {"digits 1x8x8": ((1, 8, 8), 1797, 10), "mnist 1x28x28": ((1, 28, 28), 1000, 10),
          "cifar 3x32x32": ((3, 32, 32), 768, 100)}
BATCHES = (32, 64, 128, 256, 512)
ROUNDS = 3


def main() -> None:
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    rows = []
    for label, (shape, n, k) in SHAPES.items():
        spec = {"arch": "resnet18", "stem": "cifar", "in_channels": shape[0], "num_classes": k}
        model = build_model(spec, seed=0).eval()
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(n, *shape, generator=g), torch.randint(0, k, (n,), generator=g)
        evaluate(model, x[:64], y[:64])  # warm-up: oneDNN's first-call set-up
        times: dict[int, list[float]] = {b: [] for b in BATCHES}
        for _ in range(ROUNDS):
            for b in BATCHES:
                a = time.perf_counter()
                evaluate(model, x, y, b)
                times[b].append(time.perf_counter() - a)
        med = {b: statistics.median(v) for b, v in times.items()}
        chosen = inference_batch_size(x)
        row = {"input": label, "images": n, "seconds_by_batch": {str(b): round(v, 3) for b, v in med.items()},
               "rounds": {str(b): [round(t, 3) for t in v] for b, v in times.items()},
               "chosen": chosen, "chosen_over_512": round(med[chosen] / med[512], 3),
               "fastest": min(med, key=med.get)}
        rows.append(row)
        print(f"{label:14s} " + "  ".join(f"{b}: {v:.2f} s" for b, v in med.items())
              + f"  chosen {chosen} ({row['chosen_over_512']:.2f} of 512)", flush=True)
    info = machine()
    info["load_average_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    info["torch_threads"] = torch.get_num_threads()
    write_json(OUT / "inference_batch.json", {"command": "python bench/inference_batch.py", "machine": info,
                                              "rows": rows, "seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
