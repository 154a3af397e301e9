"""A small digits model, trained in memory in about a second, for the flavor and serving tests.

It carries the real data spec (normalisation included) and a recorded segment, so everything a
registered version has is there, without the minute a `train` through the CLI costs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def digits_model(tmp_path: Path, steps: int = 40):
    """(AmnesiaModel, records): a small CNN fitted for ``steps`` SGD steps on digits."""
    from mlflow_amnesia.keys import load_key
    from mlflow_amnesia.learning.data import example_images, load_dataset
    from mlflow_amnesia.learning.models import build_model
    from mlflow_amnesia.mlflow.flavor import AmnesiaModel, Segment
    from mlflow_amnesia.recording.index import RecordIndexBuilder
    from mlflow_amnesia.recording.recorder import state_layout
    from mlflow_amnesia.recording.store import DeltaStore

    records = load_dataset("digits")
    arch = {"arch": "cnn", "in_channels": 1, "num_classes": 10, "image_size": 8}
    torch.manual_seed(0)
    module = build_model(arch)
    opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    key = load_key(create=True)
    url = str(tmp_path / "store")
    store = DeltaStore.create(url, layout=state_layout(module), codec="f32", key=key)
    index = RecordIndexBuilder(key)
    before = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}
    g = np.random.default_rng(0)
    train = np.arange(1200)
    for step in range(steps):
        b = g.choice(train, 64, replace=False)
        loss = torch.nn.functional.cross_entropy(module(records.x[b]), records.y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        now = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}
        store.append(step, {k: now[k] - before[k] for k in now})
        index.add(step, [str(records.ids[i]) for i in b])
        before = now
    store.close()
    module.eval()
    seg = Segment("train", url, 0, steps - 1, manifest=store.manifest_bytes(), index=index.build().to_bytes())
    info = {
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "classes": [str(c) for c in records.classes],
        "codec": "f32",
        "recipe": {},
        "dataset": records.spec,
        "split": {},
    }
    am = AmnesiaModel(
        module=module, arch=arch, info=info, segments=[seg], example=example_images(records, np.arange(1200, 1797))
    )
    return am, records


def raw_digits(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The last ``n`` digits images as scikit-learn has them ((n, 8, 8) floats 0..16) and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images[-n:], d.target[-n:]
