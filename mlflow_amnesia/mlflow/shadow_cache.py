"""The audit's shadow models cached as MLflow runs: the :class:`~mlflow_amnesia.audit.privacy.ShadowCache`
(and :class:`~mlflow_amnesia.audit.pool.MemberCache`) of the MLflow layer.

In the experiment ``mlflow-amnesia-shadows``:

* one run per pool member, tagged ``amnesia.shadow_pool`` (:data:`~mlflow_amnesia.tags.TAG_SHADOW_POOL`,
  the pool's cache key) and ``amnesia.shadow_member`` (its index), its artifacts ``member/`` the
  saved :class:`~mlflow_amnesia.audit.shadow.ShadowMember` (weights, confidences and, for a
  recorded pool, its sealed delta store and sealed record index);
* one run per assembled pool, tagged ``amnesia.shadow_key`` (:data:`~mlflow_amnesia.tags.TAG_SHADOW_KEY`),
  its artifacts ``shadows/`` the :class:`~mlflow_amnesia.audit.shadow.ShadowSet` and attack models.

Only FINISHED runs are reused, and a set or member whose content does not match its tags is
refused, never built. A member on a local artifact store is read where it is; on another store
it is downloaded once into ``$XDG_CACHE_HOME/mlflow-amnesia/shadows/`` (default ``~/.cache``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..audit.membership import AttackModels
from ..audit.privacy import SHADOW_EXPERIMENT
from ..audit.shadow import ShadowMember, ShadowSet, member_dirname
from ..errors import InputError
from ..tags import (
    TAG_PURGE_STARTED,
    TAG_PURGED,
    TAG_SHADOW_DATA,
    TAG_SHADOW_EXCLUDES,
    TAG_SHADOW_KEY,
    TAG_SHADOW_MEMBER,
    TAG_SHADOW_POOL,
)
from .registry import filter_literal
from .runs import end_quietly

__all__ = ["MlflowShadowCache", "excludes_tag", "forget_local_copies", "usable"]

_MEMBER_ARTIFACTS = "member"


def _experiment_id(client) -> str:
    exp = client.get_experiment_by_name(SHADOW_EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(SHADOW_EXPERIMENT)
    except Exception:  # another process created it first (parallel members)
        exp = client.get_experiment_by_name(SHADOW_EXPERIMENT)
        if exp is None:
            raise
        return exp.experiment_id


def _local_dir(artifact_uri: str) -> Path | None:
    u = urlparse(artifact_uri)
    if u.scheme in ("", "file"):
        return Path(unquote(u.path))
    return None


def _download_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mlflow-amnesia" / "shadows"


_TAG_LIMIT = 5000  # MLflow's smallest tag value limit among its stores


def _data_tag(info: dict) -> dict[str, str]:
    fp = info.get("fingerprint")
    return {TAG_SHADOW_DATA: str(fp)} if fp else {}


def excludes_tag(info: dict) -> dict[str, str]:
    """The run tag naming the deletion requests a pool left out (:data:`TAG_SHADOW_EXCLUDES`):
    comma-separated keyed hashes; a list too long for a tag is not tagged (the set then counts as
    holding every request's records: ``requests`` errs on the side of listing it)."""
    value = ",".join(info.get("excluded_requests") or [])
    return {TAG_SHADOW_EXCLUDES: value} if len(value) <= _TAG_LIMIT else {}


def usable(run) -> bool:
    """A cached run an audit may use: FINISHED and not (being) erased by ``purge --request``."""
    tags = run.data.tags or {}
    return run.info.status == "FINISHED" and TAG_PURGED not in tags and TAG_PURGE_STARTED not in tags


def forget_local_copies(run_id: str) -> int:
    """Delete this machine's downloaded copies of a member run (``$XDG_CACHE_HOME/mlflow-amnesia/shadows``);
    returns how many. Copies on other machines are theirs to delete (docs/RELIABILITY.md)."""
    import shutil

    n = 0
    for d in _download_cache().glob(f"*/*-{run_id}"):
        shutil.rmtree(d, ignore_errors=True)
        n += 1
    return n


class MlflowShadowCache:
    """Shadow sets and pool members as runs of the ``mlflow-amnesia-shadows`` experiment."""

    def load(self, key: str) -> tuple[ShadowSet, AttackModels, str] | None:
        import mlflow

        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(SHADOW_EXPERIMENT)
        if exp is None:
            return None
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{TAG_SHADOW_KEY}` = {filter_literal(key)} and attributes.status = 'FINISHED'",
            max_results=50,
        )
        found = [r for r in runs if usable(r)]
        if not found:
            return None
        run_id = found[0].info.run_id
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="shadows", dst_path=tmp)
            shadows = ShadowSet.load(local)
            if shadows.cache_key != key:  # other data, recipe or architecture: never build its models
                raise InputError(
                    f"the cached shadow models of run {run_id} (experiment {SHADOW_EXPERIMENT}) are tagged with "
                    f"cache key {key} but hold a set with key {shadows.cache_key}: the cache is damaged or forged; "
                    "delete that run and audit again (the shadows are then trained afresh)."
                )
            attack = AttackModels.load(local)
        if shadows.recording is not None:
            dirs = []
            for i in range(shadows.n_shadows):
                m = self.load_member(key, i)
                if m is None:  # a member run was deleted: the set cannot be unlearned; rebuild it
                    return None
                dirs.append(str(m.directory))
            shadows.member_dirs = dirs
        return shadows, attack, run_id

    def save(self, key: str, shadows: ShadowSet, attack: AttackModels) -> str:
        import mlflow

        client = mlflow.MlflowClient()
        exp_id = _experiment_id(client)
        run = client.create_run(
            exp_id,
            run_name=f"shadows-{key[:12]}",
            tags={TAG_SHADOW_KEY: key, TAG_SHADOW_DATA: shadows.fingerprint, **excludes_tag(shadows.info)},
        )
        try:
            with tempfile.TemporaryDirectory() as tmp:
                d = Path(tmp) / "shadows"
                shadows.save(d)
                attack.save(d)
                client.log_artifacts(run.info.run_id, str(d), artifact_path="shadows")
            client.log_param(run.info.run_id, "n_shadows", shadows.n_shadows)
            end_quietly(client, run.info.run_id, "FINISHED")
        except BaseException:
            end_quietly(client, run.info.run_id, "FAILED")
            raise
        return run.info.run_id

    # ------------------------------------------------------------------ members

    def _member_run(self, client, key: str, index: int):
        exp = client.get_experiment_by_name(SHADOW_EXPERIMENT)
        if exp is None:
            return None
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=(
                f"tags.`{TAG_SHADOW_POOL}` = {filter_literal(key)} and tags.`{TAG_SHADOW_MEMBER}` = "
                f"'{int(index)}' and attributes.status = 'FINISHED'"
            ),
            order_by=["attributes.start_time ASC"],
            max_results=50,
        )
        found = [r for r in runs if usable(r)]
        return found[0] if found else None

    def load_member(self, key: str, index: int) -> ShadowMember | None:
        import mlflow

        client = mlflow.MlflowClient()
        run = self._member_run(client, key, index)
        if run is None:
            return None
        local = _local_dir(run.info.artifact_uri)
        if local is not None and (local / _MEMBER_ARTIFACTS).is_dir():
            d = local / _MEMBER_ARTIFACTS
        else:
            d = _download_cache() / key[:32] / f"{member_dirname(index)}-{run.info.run_id}"
            if not (d / "member.json").is_file():
                d.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=d.parent) as tmp:
                    got = mlflow.artifacts.download_artifacts(
                        run_id=run.info.run_id, artifact_path=_MEMBER_ARTIFACTS, dst_path=tmp
                    )
                    os.replace(got, d)
        m = ShadowMember.load(d, pool_key=key, index=index)
        m.info["run_id"] = run.info.run_id
        return m

    def save_member(self, key: str, member: ShadowMember) -> str:
        import mlflow

        if member.directory is None or member.pool_key != key:
            raise InputError(f"shadow member {member.index} was not saved for pool {key[:12]}; train it again.")
        client = mlflow.MlflowClient()
        exp_id = _experiment_id(client)
        run = client.create_run(
            exp_id,
            run_name=f"shadow-{key[:12]}-{member.index}",
            tags={
                TAG_SHADOW_POOL: key,
                TAG_SHADOW_MEMBER: str(int(member.index)),
                **excludes_tag(member.info),
                **_data_tag(member.info),
            },
        )
        try:
            client.log_artifacts(run.info.run_id, str(member.directory), artifact_path=_MEMBER_ARTIFACTS)
            client.log_param(run.info.run_id, "n_shadows", member.n_shadows)
            end_quietly(client, run.info.run_id, "FINISHED")
        except BaseException:
            end_quietly(client, run.info.run_id, "FAILED")
            raise
        return run.info.run_id
