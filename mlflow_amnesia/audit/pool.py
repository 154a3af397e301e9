"""The audit's shadow pool, member by member: trained once, cached, picked up where it was left.

A pool is ``n`` shadow members (:func:`mlflow_amnesia.audit.shadow.train_member`), each a
separate unit of work with its own cache entry, so a pool can be trained by parallel processes
(``mlflow-amnesia shadow --member I``, ``mlflow run . -e shadow``) and an audit uses whatever is
finished, training only the members still missing. Once every member is there the pool is
assembled into a :class:`~mlflow_amnesia.audit.shadow.ShadowSet`, the paper's attack networks
are fitted on it, and the whole is cached under the pool key as before.

A *recorded* pool (``record=True``) trains every member as ``train`` trains a model: deltas of
every step and a keyed record index (sealed), so U-LiRA (:mod:`.ulira`) can unlearn a record
from the shadows that trained on it by the request's own method. Its cost is storage: about
``parameters x steps x members`` bytes at the ``int8`` codec (docs/BENCHMARKS.md, "U-LiRA").
:func:`record_by_default` turns recording on where that stays under
:data:`RECORD_BUDGET_BYTES`.
"""

from __future__ import annotations

import atexit
import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..errors import InputError
from ..progress import info as say

if TYPE_CHECKING:
    from .membership import AttackModels
    from .shadow import ShadowMember, ShadowSet

__all__ = [
    "DEFAULT_SHADOW_CODEC",
    "RECORD_BUDGET_BYTES",
    "MemberCache",
    "estimate_recorded_bytes",
    "get_member",
    "get_pool",
    "pool_key",
    "record_by_default",
]

#: The codec shadow members are recorded with: the smallest lossless-enough one (docs/BENCHMARKS.md).
DEFAULT_SHADOW_CODEC = "int8"
#: ``record_by_default`` records a pool whose deltas should stay under this many bytes (1 GiB).
RECORD_BUDGET_BYTES = 1 << 30
_INT8_BYTES_PER_VALUE = 1.05  # int8 + one float32 scale per 4096 values, before zstd (measured ~1.0)


@runtime_checkable
class MemberCache(Protocol):
    """Where single pool members are kept (the MLflow layer: one run per member)."""

    def load_member(self, key: str, index: int) -> ShadowMember | None:
        """Member ``index`` of pool ``key`` if one finished, else None (a damaged one: InputError)."""

    def save_member(self, key: str, member: ShadowMember) -> str:
        """Keep a trained member (its ``directory``); returns where (a run id)."""


def estimate_recorded_bytes(arch_spec: dict, recipe: dict, n_train: int, n_shadows: int) -> int:
    """Bytes a recorded pool's deltas take at ``int8``: parameters x steps per member x members."""
    from ..learning.models import state_shapes

    shapes = state_shapes(arch_spec) or {}
    values = sum(math.prod(s) for s in shapes.values())
    per_member = -(-max(int(n_train), 1) // int(recipe.get("batch_size", 128))) * int(recipe.get("epochs", 4))
    return int(values * per_member * n_shadows * _INT8_BYTES_PER_VALUE)


def record_by_default(arch_spec: dict, recipe: dict, n_train: int, n_shadows: int) -> bool:
    """Record the pool (U-LiRA possible) when its deltas stay under :data:`RECORD_BUDGET_BYTES`."""
    try:
        return estimate_recorded_bytes(arch_spec, recipe, n_train, n_shadows) <= RECORD_BUDGET_BYTES
    except InputError:
        return False


def pool_key(records, pool: np.ndarray, arch_spec: dict, recipe: dict, n: int, seed: int, key: bytes | None) -> str:
    """The cache key of the pool (recorded under ``key`` when given, :func:`shadow_cache_key`)."""
    from ..keys import key_id
    from .shadow import shadow_cache_key

    recording = {"codec": DEFAULT_SHADOW_CODEC, "key_id": key_id(key)} if key is not None else None
    return shadow_cache_key(records.fingerprint, arch_spec, recipe, n, seed, pool, recording=recording)


_scratch: list[str] = []


def _scratch_dir() -> Path:
    """A directory for members no cache keeps (removed when the process ends)."""
    if not _scratch:
        _scratch.append(tempfile.mkdtemp(prefix="mlflow-amnesia-shadows-"))
        atexit.register(shutil.rmtree, _scratch[0], True)
    return Path(_scratch[0])


def get_member(
    records,
    pool: np.ndarray,
    arch_spec: dict,
    recipe: dict,
    n: int,
    seed: int,
    index: int,
    *,
    key,
    cache,
    excluded_requests: Sequence[str] = (),
) -> tuple[ShadowMember, str, bool]:
    """(member, where it is cached, whether it was trained now): from ``cache`` or trained and cached.

    Idempotent: a finished member is never trained again. Two processes training the same
    member at once both finish (training is deterministic, the results equal); the first
    cached is the one later audits use. ``excluded_requests``: the deletion requests whose records
    ``pool`` leaves out, kept with the member (``info["excluded_requests"]``, a run tag).
    """
    from .shadow import member_dirname, train_member

    k = pool_key(records, pool, arch_spec, recipe, n, seed, key)
    if isinstance(cache, MemberCache):
        found = cache.load_member(k, index)
        if found is not None:
            return found, found.info.get("run_id", ""), False
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) if isinstance(cache, MemberCache) else _scratch_dir() / k[:16]
        m = train_member(
            records, pool, arch_spec, recipe, n, seed, index,
            directory=base / member_dirname(index), key=key, codec=DEFAULT_SHADOW_CODEC,
        )  # fmt: skip
        m.info["excluded_requests"] = sorted(excluded_requests)
        m.info["fingerprint"] = records.fingerprint
        if isinstance(cache, MemberCache):
            where = cache.save_member(k, m)
            found = cache.load_member(k, index)  # the cached copy: the temporary one goes now
            if found is None:
                raise InputError(f"shadow member {index} of pool {k[:12]} was saved but cannot be read back.")
            return found, where, True
        return m, "", True


def get_pool(
    records,
    pool: np.ndarray,
    arch_spec: dict,
    recipe: dict,
    n: int,
    seed: int,
    *,
    cache,
    key: bytes | None,
    excluded_requests: Sequence[str] = (),
) -> tuple[ShadowSet, AttackModels, str]:
    """(ShadowSet, AttackModels, where): the cached pool, else its members (cached ones reused,
    missing ones trained and cached one by one) assembled, its attack fitted and cached.

    ``key``: record the pool under this record key (U-LiRA); None: an unrecorded pool.
    ``excluded_requests``: the deletion requests whose records ``pool`` leaves out, kept with the
    set and its members (``info["excluded_requests"]``; the MLflow cache tags its runs with them).
    """
    from .membership import AttackModels
    from .shadow import assemble

    k = pool_key(records, pool, arch_spec, recipe, n, seed, key)
    found = cache.load(k)
    if found is not None:
        say(f"audit: reusing {n} cached shadow models (run {found[2]})")
        return found
    members: list[ShadowMember] = []
    trained = 0
    for i in range(int(n)):
        m, _, new = get_member(
            records, pool, arch_spec, recipe, n, seed, i, key=key, cache=cache, excluded_requests=excluded_requests
        )
        trained += int(new)
        members.append(m)
        if new:
            say(f"audit: trained shadow member {i + 1}/{n}{' (recorded)' if key is not None else ''}")
    if trained < n:
        say(f"audit: {n - trained} of {n} shadow members were already trained (picked up from the cache)")
    shadows = assemble(records, pool, arch_spec, recipe, seed, members)
    shadows.info["excluded_requests"] = sorted(excluded_requests)
    attack = AttackModels.fit(shadows, records, seed=seed)
    where = cache.save(k, shadows, attack)
    return shadows, attack, where


def missing_members(records, pool, arch_spec: dict, recipe: dict, n: int, seed: int, *, key, cache) -> list[int]:
    """Members of the pool no finished cache entry holds (all of them without a member cache)."""
    k = pool_key(records, pool, arch_spec, recipe, n, seed, key)
    if not isinstance(cache, MemberCache):
        return list(range(int(n)))
    return [i for i in range(int(n)) if cache.load_member(k, i) is None]


def describe_pool(shadows: ShadowSet) -> dict[str, Any]:
    """Storage and time of a pool, for logs and the benchmark (measured, from its members)."""
    return {
        "n_shadows": shadows.n_shadows,
        "recorded": shadows.recording is not None,
        "train_seconds": float(shadows.info.get("train_seconds", 0.0)),
        "stored_bytes": int(shadows.info.get("stored_bytes", 0)),
    }
