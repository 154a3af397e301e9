"""Recording under DistributedDataParallel: 2 gloo processes vs one process on the global batch.

Each rank trains on its half of every global batch; DDP averages the ranks' gradients. The
single-process reference trains on the concatenated batch with the loss averaged the same way
(the mean of each rank's mean loss; with equal halves, the mean over the global batch), so the
two trajectories differ only by float32 rounding (the all-reduce adds the ranks' gradients in
another order than autograd does). The model has no BatchNorm: DDP keeps per-rank BatchNorm
statistics (docs/ARCHITECTURE.md, "BatchNorm under DDP").
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from mlflow_amnesia.errors import InputError, RecordKeyError
from mlflow_amnesia.recording.index import RecordIndex, RecordIndexBuilder
from mlflow_amnesia.recording.recorder import Recorder, state_layout
from mlflow_amnesia.recording.store import DeltaStore

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
STEPS = 8
HALF = 6  # records per rank per step (the last step: 6 on rank 0, 4 on rank 1)
N = 200
#: |delta_ddp - delta_single| <= RTOL * max|delta_single| of the tensor, per step: measured
#: differences are ~1e-7 of the step's largest update (float32 rounding of a different
#: summation order, carried by momentum); 1e-5 leaves two orders of magnitude.
RTOL = 1e-5


class _Net(nn.Module):
    """Conv + linear, no BatchNorm (DDP would keep per-rank running statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


def _key() -> bytes:
    """The record key (conftest's, inherited by spawned ranks): hashes the ids, seals the deltas."""
    return bytes.fromhex(os.environ["MLFLOW_AMNESIA_KEY"])


def _data() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 1, 8, 8, generator=g)
    y = torch.randint(0, 5, (N,), generator=g)
    return x, y, [f"rec:{i}" for i in range(N)]


def _batches() -> list[list[np.ndarray]]:
    """Per step, each rank's record positions; the last step is uneven (6 and 4)."""
    order = np.random.default_rng(2).permutation(N)
    out, at = [], 0
    for t in range(STEPS):
        sizes = [HALF, HALF] if t < STEPS - 1 else [HALF, HALF - 2]
        parts = []
        for n in sizes:
            parts.append(order[at : at + n])
            at += n
        out.append(parts)
    return out


def _model_and_opt(module: nn.Module):
    return torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _record_ddp(rank: int, out: str, name: str, rank1_builder: bool):
    """One rank's share of a DDP recording into ``out/name``; rank 0 writes store and index."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    x, y, ids = _data()
    torch.manual_seed(0)
    ddp = DDP(_Net())
    opt = _model_and_opt(ddp)
    key = bytes.fromhex(os.environ["MLFLOW_AMNESIA_KEY"])
    store = builder = None
    if rank == 0:
        store = DeltaStore.create(f"{out}/{name}", layout=state_layout(ddp), codec="f32", key=_key())
        builder = RecordIndexBuilder(key)
    elif rank1_builder:
        builder = RecordIndexBuilder(key)  # used only to hash rank 1's ids
    with Recorder(ddp, store, builder, optimizer=opt) as rec:
        assert (rec.rank, rec.world_size, rec.writes) == (rank, WORLD, rank == 0)
        for parts in _batches():
            pos = parts[rank]
            opt.zero_grad()
            F.cross_entropy(ddp(x[pos]), y[pos]).backward()
            opt.step()
            rec.step([ids[p] for p in pos])
    torch.save(ddp.module.state_dict(), f"{out}/{name}-final{rank}.pt")
    if rank == 0:
        store.close()
        Path(f"{out}/{name}-index.bin").write_bytes(builder.build().to_bytes())
    return ddp, opt, key


def _worker(rank: int, port: int, out: str) -> None:
    """One DDP rank: two recordings (rank 1 with and without a builder), then the refusals."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        _record_ddp(rank, out, "ddp-nobuilder", rank1_builder=False)
        ddp, opt, key = _record_ddp(rank, out, "ddp-builder", rank1_builder=True)

        # Every rank must hash with the same key: a different one on rank 1 fails on both ranks.
        other = bytes.fromhex("33" * 32) if rank == 1 else key
        store2 = DeltaStore.create(f"{out}/bad", layout=state_layout(ddp), codec="f32", key=_key()) if rank == 0 else None
        try:
            Recorder(ddp, store2, RecordIndexBuilder(other), optimizer=opt)
        except RecordKeyError as e:
            Path(f"{out}/keyerror{rank}.txt").write_text(str(e))
        # A store on rank 1 (two writers) fails on both ranks, with the reason on rank 1.
        store3 = DeltaStore.create(f"{out}/bad{rank}", layout=state_layout(ddp), codec="f32", key=_key())
        try:
            Recorder(ddp, store3, RecordIndexBuilder(key), optimizer=opt)
        except InputError as e:
            Path(f"{out}/roleerror{rank}.txt").write_text(str(e))
        for s in (store2, store3):
            if s is not None:
                s.close()
        dist.barrier()  # neither rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()


def _single_process(tmp: Path):
    """The reference: one process, the ranks' shares concatenated, DDP's gradient averaging."""
    x, y, ids = _data()
    torch.manual_seed(0)
    model = _Net()
    opt = _model_and_opt(model)
    store = DeltaStore.create(str(tmp / "single"), layout=state_layout(model), codec="f32", key=_key())
    builder = RecordIndexBuilder(bytes.fromhex(os.environ["MLFLOW_AMNESIA_KEY"]))
    with Recorder(model, store, builder, optimizer=opt) as rec:
        for parts in _batches():
            pos = np.concatenate(parts)
            losses = F.cross_entropy(model(x[pos]), y[pos], reduction="none")
            bounds = np.cumsum([0] + [len(p) for p in parts])
            loss = sum(losses[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:])) / len(parts)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step([ids[p] for p in pos])
    store.close()
    return model, DeltaStore.open(str(tmp / "single"), key=_key()), builder.build()


@pytest.mark.slow  # two spawned processes
def test_ddp_recording_equals_single_process_on_the_global_batch(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="spawn")
    model, single, single_index = _single_process(tmp_path)
    x, y, ids = _data()
    last = _batches()[-1]
    for name in ("ddp-nobuilder", "ddp-builder"):
        ddp = DeltaStore.open(str(tmp_path / name), key=_key())
        assert ddp.steps == single.steps == list(range(STEPS))
        assert ddp.layout == single.layout and ddp.layout[0]["name"] == "conv.weight"  # no "module." prefix
        for s in ddp.steps:
            a, b = ddp.read(s), single.read(s)
            for k in a:
                scale = float(np.abs(b[k]).max())
                diff = float(np.abs(a[k] - b[k]).max())
                assert diff <= RTOL * scale, (name, s, k, diff, scale)
            assert ddp.step_meta(s) == single.step_meta(s)

        # The index is identical: the same global batch per step, from the two ranks' hashes.
        ddp_index_bytes = (tmp_path / f"{name}-index.bin").read_bytes()
        assert ddp_index_bytes == single_index.to_bytes()
        idx = RecordIndex.from_bytes(ddp_index_bytes, bytes.fromhex(os.environ["MLFLOW_AMNESIA_KEY"]))
        assert idx.steps_for([ids[last[1][0]]]).tolist() == [STEPS - 1]  # rank 1's record, uneven step
        assert len(idx.records_in_step(STEPS - 1)) == HALF + HALF - 2

        # Both ranks ended with the same weights, within rounding of the single-process ones.
        w0 = torch.load(tmp_path / f"{name}-final0.pt", weights_only=True)
        w1 = torch.load(tmp_path / f"{name}-final1.pt", weights_only=True)
        for k, v in model.state_dict().items():
            assert torch.equal(w0[k], w1[k])
            torch.testing.assert_close(w0[k], v, rtol=1e-5, atol=1e-6)

    # Both ranks refused a mismatched key and a store on rank 1, with the same error type.
    for r in range(WORLD):
        assert "different keys" in (tmp_path / f"keyerror{r}.txt").read_text()
    assert "only rank 0 writes" in (tmp_path / "roleerror1.txt").read_text()
    assert "rank(s) 1" in (tmp_path / "roleerror0.txt").read_text()


def test_add_hashes_builds_the_index_add_builds():
    key = b"\x11" * 32
    a, b = RecordIndexBuilder(key), RecordIndexBuilder(key)
    for step, ids in enumerate([["r1", "r2"], ["r2", "r3", "r3"], []]):
        a.add(step, ids)
        b.add_hashes(step, b.hash(ids))
    assert a.build().to_bytes() == b.build().to_bytes()
    assert b.key_id == a.build().key_id
    with pytest.raises(InputError, match=r"\(n, 16\) uint8"):
        b.add_hashes(5, np.zeros(15, np.uint8))


def test_the_distributed_path_in_one_process_records_what_the_plain_one_does(tmp_path):
    """world_size 1, distributed=True: the gather and rank-0 path, without spawning."""
    import torch.distributed as dist

    x, y, ids = _data()
    key = bytes.fromhex(os.environ["MLFLOW_AMNESIA_KEY"])
    runs = []
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        for distributed in (False, True):
            torch.manual_seed(0)
            model = _Net()
            opt = _model_and_opt(model)
            store = DeltaStore.create(str(tmp_path / f"d{distributed}"), layout=state_layout(model), codec="f32", key=_key())
            builder = RecordIndexBuilder(key)
            with Recorder(model, store, builder, optimizer=opt, distributed=distributed) as rec:
                assert rec.world_size == 1 and rec.writes
                for parts in _batches()[:4]:
                    pos = np.concatenate(parts)
                    opt.zero_grad()
                    F.cross_entropy(model(x[pos]), y[pos]).backward()
                    opt.step()
                    rec.step([ids[p] for p in pos])
            store.close()
            runs.append((DeltaStore.open(str(tmp_path / f"d{distributed}"), key=_key()), builder.build()))
        # auto-detection: an initialised group of one process is not a distributed recording
        assert Recorder(_Net(), DeltaStore.create(str(tmp_path / "auto"), layout=state_layout(_Net()), key=_key()),
                        RecordIndexBuilder(key))._ranks is None
    finally:
        dist.destroy_process_group()
    (plain, ip), (distd, idd) = runs
    assert plain.steps == distd.steps == [0, 1, 2, 3]
    for s in plain.steps:
        a, b = plain.read(s), distd.read(s)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert ip.to_bytes() == idd.to_bytes()


def test_distributed_without_an_initialised_process_group_is_an_error(tmp_path):
    model = _Net()
    store = DeltaStore.create(str(tmp_path / "s"), layout=state_layout(model), key=_key())
    with pytest.raises(InputError, match="init_process_group"):
        Recorder(model, store, RecordIndexBuilder(b"\x11" * 32), distributed=True)


def test_a_ddp_wrapper_is_recorded_as_its_inner_module():
    from mlflow_amnesia.recording.recorder import float_state, unwrap

    inner = _Net()
    wrapped = nn.DataParallel(inner)  # same unwrapping as DistributedDataParallel, no process group
    assert unwrap(wrapped) is inner
    assert list(float_state(wrapped)) == list(inner.state_dict())
    assert state_layout(wrapped) == state_layout(inner)


@pytest.mark.slow
def test_ddp_example_runs_under_torchrun(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         str(REPO / "examples" / "ddp_train.py"), "--out", str(tmp_path), "--epochs", "1"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "forgetting" in r.stdout and "recorded" in r.stdout
    store = DeltaStore.open(str(tmp_path / "deltas"), key=_key())
    assert len(store.steps) > 0
