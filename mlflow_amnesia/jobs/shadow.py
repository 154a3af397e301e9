"""The `shadow` job: train one member of a version's audit shadow pool (the audit's fan-out).

The audit of a version attacks it with ``n`` shadow models (16 in the paper's setting), and
training them is the audit's whole cost. Each member is its own unit of work, cached as its own
run of the experiment ``mlflow-amnesia-shadows`` (:mod:`mlflow_amnesia.mlflow.shadow_cache`), so
``mlflow-amnesia shadow --model NAME --member I`` for I = 0..n-1, as parallel local processes or
as ``mlflow run . -e shadow -P model_name=NAME -P member=I`` on any MLflow Projects backend,
trains the pool in parallel; the next audit (of any version of the model's data, architecture
and recipe) picks up the finished members and trains only the missing ones.

Idempotent: a finished member is reported, not retrained. Two processes on the same member both
train it (deterministically, to equal results) and the first to finish is the one used; nothing
is half-written (a member's run is FINISHED only once its files are logged).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ShadowStatus", "shadow_member", "shadow_status"]


@dataclass
class ShadowStatus:
    pool_key: str
    n_shadows: int
    recorded: bool
    finished: list[int]
    missing: list[int]
    trained_now: list[int]
    where: dict[int, str]

    def summary(self) -> str:
        kind = "recorded" if self.recorded else "unrecorded"
        lines = [f"shadow pool {self.pool_key[:12]} ({self.n_shadows} members, {kind})"]
        if self.trained_now:
            lines.append("trained now: " + ", ".join(f"{i} (run {self.where.get(i, '')})" for i in self.trained_now))
        lines.append(f"finished: {len(self.finished)}/{self.n_shadows}")
        lines.append("missing: " + (", ".join(map(str, self.missing)) if self.missing else "none"))
        return "\n".join(lines)


def _pool_of(model_name: str, version, alias, shadows, data_root):
    from ..audit.privacy import AuditSettings, audit_pool
    from ..audit.ulira import UliraRequest, UnlearnSpec, pool_record_key
    from ..keys import load_key_for
    from ..learning.data import Split, rebuild
    from ..mlflow import registry
    from ..mlflow.flavor import load_model
    from .train import pool_exclusion

    mv = registry.resolve_version(model_name, version=version, alias=alias)
    am = load_model(registry.model_uri(mv))
    key = load_key_for(am.info.key_id, f"{model_name} v{mv.version}", to="train its shadow models")
    records = rebuild(am.info.dataset or {}, root=data_root)
    sp = Split.from_json(am.info.split or {}, records)
    s = AuditSettings(shadows=shadows)
    n = s.n_shadows(records.spec)
    recipe = am.info.recipe or {}
    rkey = pool_record_key(s.ulira, UliraRequest(UnlearnSpec(), key=key), am.arch, recipe, len(sp.train), n)
    ex = pool_exclusion(model_name, records, sp, key)  # the same pool the next audit uses
    return records, audit_pool(sp, s.shadow_seed, ex.positions), am.arch, recipe, n, s.shadow_seed, rkey, ex.requests


def shadow_status(
    model_name: str, *, version=None, alias=None, shadows: int | None = None, data_root: str | None = None
) -> ShadowStatus:
    """Which members of the version's audit pool are finished and which are missing."""
    from ..audit.pool import missing_members, pool_key
    from ..mlflow.shadow_cache import MlflowShadowCache

    records, pool, arch, recipe, n, seed, rkey, excluded = _pool_of(model_name, version, alias, shadows, data_root)
    cache = MlflowShadowCache()
    missing = missing_members(records, pool, arch, recipe, n, seed, key=rkey, cache=cache)
    k = pool_key(records, pool, arch, recipe, n, seed, rkey)
    return ShadowStatus(k, n, rkey is not None, [i for i in range(n) if i not in missing], missing, [], {})


def shadow_member(
    model_name: str,
    *,
    members: list[int],
    version=None,
    alias=None,
    shadows: int | None = None,
    data_root: str | None = None,
) -> ShadowStatus:
    """Train (unless finished) each of ``members`` of the version's audit pool and cache it."""
    from ..audit.pool import get_member, missing_members, pool_key
    from ..errors import InputError
    from ..mlflow.shadow_cache import MlflowShadowCache

    records, pool, arch, recipe, n, seed, rkey, excluded = _pool_of(model_name, version, alias, shadows, data_root)
    bad = [i for i in members if not 0 <= int(i) < n]
    if bad:
        raise InputError(
            f"--member {bad[0]}: the audit pool of {model_name} has {n} members, 0..{n - 1} "
            "(--shadows sets the count; it must be the count the audit uses)."
        )
    cache = MlflowShadowCache()
    trained, where = [], {}
    for i in dict.fromkeys(int(i) for i in members):
        _, w, new = get_member(
            records, pool, arch, recipe, n, seed, i, key=rkey, cache=cache, excluded_requests=excluded
        )
        where[i] = w
        if new:
            trained.append(i)
    missing = missing_members(records, pool, arch, recipe, n, seed, key=rkey, cache=cache)
    k = pool_key(records, pool, arch, recipe, n, seed, rkey)
    return ShadowStatus(k, n, rkey is not None, [i for i in range(n) if i not in missing], missing, trained, where)
