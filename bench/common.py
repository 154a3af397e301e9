"""Shared pieces for the benchmarks: real MNIST, the two models, recorded state, error feedback.

Self-contained on purpose (a benchmark should not change when a library module does): MNIST
is parsed from the idx.gz files with gzip + numpy, the models are built here.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
MNIST_DIR = Path(os.environ.get("MLFLOW_AMNESIA_MNIST_DIR", REPO.parent / "shared" / "data" / "mnist-t10k"))
#: The record key the benchmarks' stores are sealed with (a store is sealed as `train` seals it).
BENCH_KEY = bytes(range(32))


def _read_idx(path: Path) -> np.ndarray:
    """One idx file (MNIST's format): big-endian header (magic, dims), then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an idx file of unsigned bytes")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims.tolist()} but holds {data.size} bytes")
    return data.reshape(dims)


def load_mnist_t10k(directory: Path = MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 real MNIST test images (uint8, 10000x28x28) and labels (int64)."""
    images = _read_idx(directory / "t10k-images-idx3-ubyte.gz")
    labels = _read_idx(directory / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


def mnist_tensor(images: np.ndarray, *, as_cifar: bool = False) -> torch.Tensor:
    """Normalised float tensor (N,1,28,28); ``as_cifar``: padded to 32x32, repeated to 3 channels."""
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    x = (x - 0.1307) / 0.3081
    if as_cifar:
        x = nn.functional.pad(x, (2, 2, 2, 2), value=float((0 - 0.1307) / 0.3081)).repeat(1, 3, 1, 1)
    return x


def cifar_resnet18(num_classes: int = 100) -> nn.Module:
    """torchvision resnet18 with a 3x3 stride-1 stem and no max-pool (the CIFAR variant)."""
    from torchvision.models import resnet18

    m = resnet18(num_classes=num_classes)
    m.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    m.maxpool = nn.Identity()
    return m


class SmallCNN(nn.Module):
    """Two conv + two fully connected layers for 28x28 MNIST (~0.4M parameters)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def recorded_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The floating-point tensors of ``state_dict()`` in order (what the store records)."""
    return {k: v.detach() for k, v in model.state_dict().items() if v.is_floating_point()}


def layout_of(model: nn.Module) -> list[dict]:
    return [
        {"name": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
        for k, v in recorded_state(model).items()
    ]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def batches(x: torch.Tensor, y: torch.Tensor, batch: int, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled mini-batches (epoch after epoch)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x) - batch + 1, batch):
            idx = perm[s : s + batch]
            yield x[idx], y[idx]


def sgd_step(model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor) -> float:
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(xb), yb)
    loss.backward()
    opt.step()
    return float(loss.detach())


class ErrorFeedback:
    """The Recorder's bookkeeping for one codec (docs/ARCHITECTURE.md, "Error feedback").

    Keeps ``r``, the trajectory as the store reconstructs it (float64); ``delta(theta)`` returns
    ``d_t = quantize(theta_t - r_{t-1})`` and advances ``r_t = r_{t-1} + d_t``.
    """

    def __init__(self, quantize: Callable[[torch.Tensor], torch.Tensor], state: dict[str, torch.Tensor]) -> None:
        self.quantize = quantize
        self.r = {k: v.to(torch.float64).clone() for k, v in state.items()}

    def delta(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in state.items():
            d = self.quantize((v.to(torch.float64) - self.r[k]).to(torch.float32))
            self.r[k] += d.to(torch.float64)
            out[k] = d
        return out


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


class Timer:
    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.perf_counter() - self.t0


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
