"""Distributed data parallel: every rank's batch, as keyed hashes, gathered to rank 0.

Rank 0 records one delta per global step (after DDP's all-reduce every rank holds the same
parameters) and indexes the global batch; the other ranks hash their share with the record key
and send the hashes over a CPU (gloo) group. No id travels in clear text, nothing is pickled.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...errors import InputError, RecordKeyError
from ...keys import HASH_BYTES

__all__ = ["Ranks", "distributed_ranks"]


class Ranks:
    """The ranks that train one global step together, and the per-step gather of their batches.

    Ids travel as keyed hashes (16 bytes each, no pickle, never an id in clear text on the
    wire), in two collectives per step on a CPU (gloo) group: a ``[step, n]`` header from every
    rank (all-gathered, so every rank sees a mismatch and raises the same error instead of
    deadlocking), then the hashes, padded to the largest batch, gathered to rank 0. Under an
    NCCL default group the Recorder creates a gloo group over the same ranks once, so the
    gather never syncs the GPU stream.
    """

    def __init__(self, group: Any) -> None:
        import torch.distributed as dist

        self._dist = dist
        if group is None:
            group = dist.group.WORLD
            if "gloo" not in str(dist.get_backend(group)):
                group = dist.new_group(backend="gloo")  # collective: every rank builds a Recorder
        elif "gloo" not in str(dist.get_backend(group)):
            raise InputError(
                f"process_group has backend {dist.get_backend(group)!r}; the recorder gathers batch ids as CPU "
                "tensors: pass a gloo group over the same ranks (torch.distributed.new_group(ranks, backend='gloo'))."
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self._root = dist.get_global_rank(group, 0)

    @property
    def writes(self) -> bool:
        """Whether this process writes the store and the index (rank 0 of the group)."""
        return self.rank == 0

    def _all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(t) for _ in range(self.size)]
        self._dist.all_gather(out, t, group=self.group)
        return out

    def agree(self, kid: str, start_step: int, role_problem: str | None) -> None:
        """Check, in one collective, that every rank has its role, the same key and start step.

        Every rank sees every rank's answer, so all of them raise the same error together (a
        rank that raised alone would leave the others waiting in the next collective).
        """
        mine = torch.tensor(
            [*bytes.fromhex(kid), *start_step.to_bytes(8, "little"), int(role_problem is not None)], dtype=torch.uint8
        )
        got = self._all_gather(mine)
        kids = [bytes(g[:8].tolist()).hex() for g in got]
        starts = [int.from_bytes(bytes(g[8:16].tolist()), "little") for g in got]
        bad_roles = [r for r, g in enumerate(got) if int(g[16])]
        if bad_roles:
            raise InputError(
                role_problem
                or f"rank(s) {', '.join(map(str, bad_roles))} of the distributed run could not start recording; "
                "the error on those ranks says why."
            )
        if len(set(kids)) > 1:
            raise RecordKeyError(
                f"the ranks of this distributed run hash record ids with different keys (key ids by rank: "
                f"{', '.join(kids)}): their batches could never be matched to a deletion request. Give "
                "every rank the same key: set MLFLOW_AMNESIA_KEY in the launcher's environment."
            )
        if len(set(starts)) > 1:
            raise InputError(
                f"the ranks' recorders start at different steps ({starts} by rank); pass the same start_step on every rank"
            )

    def gather(self, step: int, hashes: np.ndarray) -> np.ndarray | None:
        """The global batch's hashes ``(N, 16)`` in rank order on rank 0; None on the others."""
        n = len(hashes)
        heads = self._all_gather(torch.tensor([step, n], dtype=torch.int64))
        steps = [int(h[0]) for h in heads]
        counts = [int(h[1]) for h in heads]
        if len(set(steps)) > 1:
            raise InputError(
                f"the ranks called rec.step() for different steps ({', '.join(f'rank {r}: step {s}' for r, s in enumerate(steps))}): "
                "every rank must call rec.step(ids) once after every optimizer.step(), with its local batch ids."
            )
        width = max(counts) * HASH_BYTES
        if width == 0:
            return np.zeros((0, HASH_BYTES), np.uint8) if self.writes else None
        buf = torch.zeros(width, dtype=torch.uint8)
        if n:
            buf[: n * HASH_BYTES] = torch.from_numpy(np.ascontiguousarray(hashes).reshape(-1))
        out = [torch.empty_like(buf) for _ in range(self.size)] if self.writes else None
        self._dist.gather(buf, out, dst=self._root, group=self.group)
        if out is None:
            return None
        return np.concatenate([o[: c * HASH_BYTES].numpy().reshape(c, HASH_BYTES) for o, c in zip(out, counts)])


def distributed_ranks(process_group: Any, distributed: bool | None) -> Ranks | None:
    """The ranks to gather over, or None for a single-process recording."""
    dist = torch.distributed
    initialised = dist.is_available() and dist.is_initialized()
    if distributed is None:
        distributed = initialised and (process_group is not None or dist.get_world_size() > 1)
    if not distributed:
        return None
    if not initialised:
        raise InputError(
            "Recorder(distributed=True) needs torch.distributed initialised first: call "
            "torch.distributed.init_process_group(...) (torchrun sets the environment for it)."
        )
    return Ranks(process_group)
