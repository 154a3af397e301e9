"""Record your own PyTorch training loop, then forget records by rolling back their steps.

This is the library underneath `mlflow-amnesia train` / `forget`, used directly: any model,
any optimizer, any loop. Run:

    python examples/own_loop.py                                  # digits (offline)
    python examples/own_loop.py --dataset idx:../shared/data/mnist-t10k --epochs 3

It trains a small CNN with every step recorded into a DeltaStore (a temporary directory),
indexes which records each step saw (keyed hashes only), then forgets 5 records: it looks up
the steps that saw them, subtracts those steps' deltas, and reports accuracy before and after.
The deltas are sealed under the record key. Your loop's batch order is yours: if it can be
recomputed (a shuffle seeded with a known number), the index's step sets can be matched to
records by anyone who has the data; ``mlflow-amnesia train`` keys its order with the record key.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

from mlflow_amnesia.data import load_dataset, split
from mlflow_amnesia.index import RecordIndexBuilder
from mlflow_amnesia.keys import load_key
from mlflow_amnesia.models import build_model, default_arch_spec
from mlflow_amnesia.recorder import Recorder, state_layout
from mlflow_amnesia.store import DeltaStore
from mlflow_amnesia.training import evaluate
from mlflow_amnesia.unlearn.amnesiac import subtract


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--codec", default="int8")
    args = ap.parse_args()

    data = load_dataset(args.dataset)
    sp = split(data, seed=0)
    torch.manual_seed(0)
    model = build_model(default_arch_spec("cnn", data))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = torch.utils.data.DataLoader(sp.train, batch_size=64, shuffle=True)  # yields record positions

    with tempfile.TemporaryDirectory() as tmp:
        key = load_key(create=True)  # hashes the ids and seals the deltas: keep it out of the artifact store
        store = DeltaStore.create(f"{tmp}/deltas", layout=state_layout(model), codec=args.codec, key=key)
        index = RecordIndexBuilder(key)
        with Recorder(model, store, index, optimizer=opt) as rec:
            for epoch in range(args.epochs):
                model.train()
                for pos in loader:  # your loop: the only addition is rec.step(ids)
                    loss = F.cross_entropy(model(data.x[pos]), data.y[pos])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    rec.step([data.ids[p] for p in pos.tolist()])
                print(f"epoch {epoch + 1}: held-out acc {evaluate(model, data.x[sp.holdout], data.y[sp.holdout])[0]:.4f}")
        store.close()  # consolidates the manifest; the store is complete on disk
        idx = index.build()
        store = DeltaStore.open(f"{tmp}/deltas", key=key)  # what a later forget does

        forget = [str(data.ids[p]) for p in sp.train[:5]]
        steps = idx.steps_for(forget)
        print(f"forgetting {forget}: seen by {len(steps)} of {idx.n_steps} steps ({len(steps) / idx.n_steps:.1%})")
        before = evaluate(model, data.x[sp.holdout], data.y[sp.holdout])[0]
        subtract(model, store.sum(steps.tolist()), len(steps))
        after = evaluate(model, data.x[sp.holdout], data.y[sp.holdout])[0]
        f_acc = evaluate(model, data.x[sp.train[:5]], data.y[sp.train[:5]])[0]
        print(f"held-out accuracy {before:.4f} -> {after:.4f}; accuracy on the forgotten records now {f_acc:.2f}")
        print(f"store: {store.size().stored / 2**20:.1f} MiB for {len(store.steps)} steps")


if __name__ == "__main__":
    main()
