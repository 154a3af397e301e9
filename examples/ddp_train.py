"""Record a DistributedDataParallel training run, then forget records by rolling back steps.

    torchrun --nproc_per_node 2 examples/ddp_train.py                 # 2 CPU processes, gloo
    torchrun --nproc_per_node 2 examples/ddp_train.py --out s3://bucket/ddp-demo --epochs 3

Every rank trains on its share of each global batch and calls ``rec.step(local_ids)``; the
Recorder gathers the ranks' (hashed) ids to rank 0, which writes one delta per global step and
indexes the whole global batch. After training, rank 0 forgets 5 records: it looks up the steps
that saw them and subtracts those steps' deltas. With CUDA and NCCL the same code runs on GPUs
(the Recorder gathers ids over a gloo group of its own, so the GPU stream is never synced).

Every rank must hash ids with the same key, which also keys the batch order (the same on every
rank, not recomputable without it) and seals rank 0's deltas: set ``MLFLOW_AMNESIA_KEY`` for
multi-node runs (on one machine rank 0 creates the key file and the others read it). The small CNN has no
BatchNorm; for models with BatchNorm see docs/ARCHITECTURE.md, "BatchNorm under DDP" (use
``torch.nn.SyncBatchNorm.convert_sync_batchnorm``).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from mlflow_amnesia.data import load_dataset, split
from mlflow_amnesia.index import RecordIndexBuilder
from mlflow_amnesia.keys import load_key
from mlflow_amnesia.models import build_model, default_arch_spec
from mlflow_amnesia.recorder import Recorder, state_layout
from mlflow_amnesia.store import DeltaStore
from mlflow_amnesia.training import epoch_orders, evaluate
from mlflow_amnesia.unlearn.amnesiac import subtract


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64, help="global batch (split evenly across ranks)")
    ap.add_argument("--codec", default="int8")
    ap.add_argument("--out", default="ddp-demo", help="where the delta store goes: a path or fsspec URL")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {world} ranks")
    try:
        # Rank 0 may create the key file; the others read it once it exists.
        key = load_key(create=True) if rank == 0 else None
        dist.barrier()
        key = key or load_key()

        data = load_dataset(args.dataset)
        sp = split(data, seed=0)
        torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
        model = build_model(default_arch_spec("cnn", data)).to(device)
        ddp = DDP(model, device_ids=[device.index] if cuda else None)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        x, y = data.x.to(device), data.y.to(device)

        store = index = None
        if rank == 0:  # one writer: rank 0 records the global step
            store = DeltaStore.create(f"{args.out}/deltas", layout=state_layout(ddp), codec=args.codec, key=key)
            index = RecordIndexBuilder(key)
        orders = epoch_orders(np.asarray(sp.train), seed=0, epochs=args.epochs, key=key)  # the same on every rank, secret
        share = args.batch_size // world
        with Recorder(ddp, store, index, optimizer=opt) as rec:
            for epoch, order in enumerate(orders):
                ddp.train()
                for i in range(0, len(order) - args.batch_size + 1, args.batch_size):
                    pos = order[i + rank * share : i + (rank + 1) * share]  # this rank's share
                    loss = F.cross_entropy(ddp(x[pos]), y[pos])
                    opt.zero_grad()
                    loss.backward()  # DDP averages the gradients over the ranks
                    opt.step()
                    rec.step([data.ids[p] for p in pos])  # local ids: rank 0 indexes the global batch
                if rank == 0:
                    acc = evaluate(model, x[sp.holdout], y[sp.holdout])[0]
                    print(f"epoch {epoch + 1}: held-out acc {acc:.4f}", flush=True)
        if rank == 0:
            store.close()
            idx = index.build()
            print(f"recorded {len(store.steps)} global steps of {world} x {share} records at {args.out}/deltas")
            forget = [str(data.ids[p]) for p in sp.train[:5]]
            steps = idx.steps_for(forget)
            print(f"forgetting {forget}: seen by {len(steps)} of {idx.n_steps} steps")
            before = evaluate(model, x[sp.holdout], y[sp.holdout])[0]
            subtract(model, DeltaStore.open(f"{args.out}/deltas", key=key).sum(steps.tolist()), len(steps))
            after = evaluate(model, x[sp.holdout], y[sp.holdout])[0]
            print(f"held-out accuracy {before:.4f} -> {after:.4f}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
