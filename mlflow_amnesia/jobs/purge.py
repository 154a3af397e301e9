"""The `purge` job: erase a superseded model version for good (GDPR), keeping its lineage.

A forget registers a child C of version P; P (tag ``amnesia.superseded_by``) still holds the
forgotten records' contribution, and so do the recorded deltas of the steps that saw them.
``purge`` deletes exactly that, and nothing a live version needs:

* P's model artifacts except its lineage metadata (an allowlist, :data:`KEEP`): the weights
  ``data/weights.pt``, the input examples and any file this package does not know;
* the ``audit/`` artifacts of P's source run (the model-inversion grid made from P's weights);
* in every delta store of P's lineage (P, its ancestors, C), the chunks of every step whose batch
  held a record C forgot (:meth:`DeltaStore.purge`: the step stays listed, marked purged);
* the final optimizer state (``training/optimizer_state.pt``: momentum buffers, a decayed sum of
  every step's gradient) of each recorded phase that has such a step. Nothing reads it again.

It keeps the version row, its tags and description (with a tombstone note), ``data/amnesia.json``,
``arch.json``, the segments' manifests and record indexes (keyed hashes), ``rolled_back.npy``,
``forgotten.npy``, the MLmodel and environment files, run params and metrics, and each phase's
``initial_state.pt`` and ``batch_order.npy`` (random initial weights and the keyed batch order:
no record content, sealed under the record key; ``retrain`` and ``--repair replay`` need them).

Refusals, before anything is deleted: P is not superseded (the serving version stays whole), an
alias points at P, or a version that is not being purged still *needs* a step to delete: it lists
the step in one of its segments and has not rolled it back (a relabel or finetune forget does not
roll steps back, so its lineage may subtract those steps in a later forget; a superseded ancestor
that has not rolled them back also still holds the records in its weights: purge it too).

Crash safety. The plan is read-only. Then, per version, the tag ``amnesia.purge_started`` and a
tombstone ``data/purged.json`` (loading refuses the version from here on), the chunks (each store's
manifest first, then its files), optimizer states, artifacts, the tombstone's completion time, the
description note, and last the tag ``amnesia.purged``. Every deletion is idempotent and the plan is
recomputed from what is left, listed rather than believed: the chunk files of steps a manifest
already marks purged are looked for in the store's chunks/ directory, so a purge killed between a
manifest and its deletions re-runs to completion; every deletion is checked by listing again. A
re-run of a complete purge (tag, tombstone, note, and nothing left on disk) finds nothing to do.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, StoreError
from ..keys import hashes_in
from ..mlflow import registry
from ..mlflow.artifacts import ArtifactFiles, download, list_files, repo_at
from ..progress import info as say
from ..recording.fs import url_to_fs
from ..recording.phase import OPTIMIZER_STATE, Phase, Segment
from ..tags import TAG_PURGE_STARTED, TAG_PURGED
from ..version.files import ARCH, FORGOTTEN, INFO, ROLLED_BACK, SEGMENTS, TOMBSTONE, TOMBSTONE_FILE, VersionFiles

#: Artifacts of a purged version that are kept: lineage metadata, no record content. A path
#: ending in "/" keeps the whole folder. Everything else in the version is deleted.
KEEP = (
    "MLmodel",
    "conda.yaml",
    "python_env.yaml",
    "requirements.txt",
    "registered_model_meta",
    INFO,
    ARCH,
    ROLLED_BACK,
    FORGOTTEN,
    TOMBSTONE_FILE,
    f"{SEGMENTS}/",
)
_RUN_DIRS = ("audit",)  # folders of a version's source run made from its weights
_NOTE = "**Purged**"  # how the description of a purged version starts
_CHUNK_NAME = re.compile(r"^(\d+)\.(\d+)\.")  # a delta-store chunk file: <step>.<part>.<ext>


# ---------------------------------------------------------------------------------------------
# the plan


@dataclass
class VersionPurge:
    """What purging one version deletes from its own artifacts and its source run."""

    version: int
    superseded_by: int
    child_method: str
    n_records: int  # records the superseding forget removed (whose steps are purged)
    model_location: str  # the version's artifact location
    model_files: list[tuple[str, int]] = field(default_factory=list)  # (path, bytes) to delete
    run_id: str | None = None
    run_location: str | None = None
    run_files: list[tuple[str, int]] = field(default_factory=list)
    purged_at: str | None = None  # the amnesia.purged tag, when set (the purge's last write)
    started_at: str | None = None  # the amnesia.purge_started tag, when set
    described: bool = False  # the description starts with the **Purged** note
    tombstone_done: bool = False  # data/purged.json records its completion time
    steps: dict[str, list[int]] = field(default_factory=dict)  # store URL -> steps that saw the records (purged or not)

    @property
    def bytes(self) -> int:
        return sum(b for _, b in self.model_files) + sum(b for _, b in self.run_files)


@dataclass
class StorePurge:
    """The steps of one delta store whose chunks a purge deletes."""

    url: str
    steps: list[int]  # steps still to purge
    already: int  # target steps purged before
    bytes: int  # stored bytes of ``steps``' chunks
    chunks: int
    optimizer_state: tuple[str, int] | None = None  # (url, bytes) still to delete
    missing: bool = False  # the store's manifest no longer exists (only files listed in chunks/ can be left)
    # (path relative to the URL, bytes) of chunk files of steps already purged, still on disk: a purge
    # stopped between marking them and deleting them; listed in chunks/, never taken from a manifest
    leftovers: list[tuple[str, int]] = field(default_factory=list)

    @property
    def leftover_bytes(self) -> int:
        return sum(b for _, b in self.leftovers)


@dataclass
class PurgePlan:
    model_name: str
    versions: list[VersionPurge]
    stores: list[StorePurge]

    @property
    def bytes(self) -> int:
        return (
            sum(v.bytes for v in self.versions)
            + sum(s.bytes + s.leftover_bytes for s in self.stores)
            + sum(s.optimizer_state[1] for s in self.stores if s.optimizer_state)
        )

    @property
    def n_steps(self) -> int:
        return sum(len(s.steps) for s in self.stores)

    @property
    def n_leftovers(self) -> int:
        return sum(len(s.leftovers) for s in self.stores)

    @property
    def complete(self) -> bool:
        """Every version purged (tag, tombstone, description) and nothing left to delete, chunk
        files of purged steps included: a re-run is a no-op."""
        return all(
            v.purged_at and v.described and v.tombstone_done and not v.model_files and not v.run_files
            for v in self.versions
        ) and not any(s.steps or s.leftovers or s.optimizer_state for s in self.stores)

    def describe(self) -> str:
        """What the purge deletes, with byte counts, and what it keeps (one line each)."""
        lines = []
        for v in self.versions:
            state = (
                f" (purged {v.purged_at})"
                if v.purged_at
                else (" (purge started, not finished)" if v.started_at else "")
            )
            lines.append(
                f"{self.model_name} v{v.version}{state}: superseded by v{v.superseded_by} "
                f"({v.child_method}, {v.n_records} record(s) forgotten)"
            )
            for path, b in v.model_files:
                lines.append(f"  delete model artifact {path} ({_fmt_bytes(b)})")
            for path, b in v.run_files:
                lines.append(f"  delete run {v.run_id} artifact {path} ({_fmt_bytes(b)})")
        for s in self.stores:
            if s.leftovers:
                why = (
                    "the steps that saw the records (the store's manifest is gone, these files are not)"
                    if s.missing
                    else "step(s) already marked purged (a purge stopped before deleting them)"
                )
                lines.append(
                    f"  delete {len(s.leftovers)} chunk file(s) ({_fmt_bytes(s.leftover_bytes)}) in {s.url} of "
                    f"{why}: {_fmt_steps([f for f, _ in s.leftovers], 4)}"
                )
            if s.missing and not s.leftovers:
                lines.append(f"  delta store {s.url}: gone already, nothing to delete")
            if s.steps:
                lines.append(
                    f"  delete the deltas of {len(s.steps)} step(s) ({s.chunks} chunk file(s), "
                    f"{_fmt_bytes(s.bytes)}) in {s.url}: {_fmt_steps(s.steps)}"
                )
            if s.already:
                lines.append(f"  {s.already} more step(s) of {s.url} that saw the records were purged before")
            if s.optimizer_state:
                lines.append(
                    f"  delete the final optimizer state {s.optimizer_state[0]} ({_fmt_bytes(s.optimizer_state[1])})"
                )
        lines.append(
            f"total: {_fmt_bytes(self.bytes)} to delete; kept: the version rows, tags and lineage "
            "metadata (see `mlflow-amnesia purge --help`)"
        )
        return "\n".join(lines)


@dataclass
class PurgeResult:
    plan: PurgePlan
    done: bool  # False for a dry run and for a re-run that found nothing to do
    deleted_bytes: int = 0

    def summary(self) -> str:
        vs = ", ".join(f"v{v.version}" for v in self.plan.versions)
        if not self.done:
            return (
                f"{self.plan.model_name} {vs}: already purged, nothing left to delete"
                if self.plan.complete
                else f"dry run: would delete:\n{self.plan.describe()}"
            )
        n = self.plan.n_leftovers
        left = f", {n} leftover chunk file(s)" if n else ""
        return (
            f"purged {self.plan.model_name} {vs}: deleted {_fmt_bytes(self.deleted_bytes)} "
            f"(the deltas of {self.plan.n_steps} step(s){left}, weights and other artifacts); lineage kept"
        )


# ---------------------------------------------------------------------------------------------
# reading versions without their weights


@dataclass
class _Meta:
    """What the plan reads of one version: its segments and rolled-back steps (no weights)."""

    mv: Any  # mlflow ModelVersion
    location: str  # its artifact location
    repo: Any  # its ArtifactRepository
    segments: list[Segment]  # without their manifest and index bytes
    rolled_back: np.ndarray
    _forgotten: np.ndarray | None = None
    key_id: str | None = None  # of the record key its indexes were built with

    @property
    def files(self) -> VersionFiles:
        """The version's files, read through the same checks as loading."""
        return VersionFiles(ArtifactFiles(self.repo), f"{self.mv.name} v{self.version}")

    @property
    def version(self) -> int:
        return int(self.mv.version)

    @property
    def tags(self) -> dict:
        return self.mv.tags or {}

    def forgotten(self) -> np.ndarray:
        if self._forgotten is None:
            self._forgotten = self.files.forgotten()
        return self._forgotten


_repo, _download, _list_files = repo_at, download, list_files


def _kept(path: str) -> bool:
    return any(path == k or (k.endswith("/") and path.startswith(k)) for k in KEEP)


class _Registry:
    """The versions of one registered model, read lazily (metadata only) and cached."""

    def __init__(self, model_name: str) -> None:
        self.name = model_name
        self.client = registry.client()
        self.versions = {int(mv.version): mv for mv in registry.search_versions(model_name)}
        self._metas: dict[int, _Meta | None] = {}
        self._key: bytes | None = None
        self._indexes: dict[tuple, Any] = {}
        self.phases: dict[str, Phase | None] = {}  # store URL -> its phase (where its training files are)

    def meta(self, v: int) -> _Meta | None:
        """Version ``v``'s metadata; None for a version that is not of this flavor."""
        if v not in self._metas:
            mv = self.versions.get(v) or registry.resolve_version(self.name, version=v)
            location = self.client.get_model_version_download_uri(self.name, str(v))
            repo = _repo(location)
            files = VersionFiles(ArtifactFiles(repo), f"{self.name} v{v}")
            info = files.info(optional=True)
            if info is None:
                self._metas[v] = None
            else:
                rolled = files.rolled_back(info.segments)
                self._metas[v] = _Meta(mv, location, repo, list(info.segments), rolled, key_id=info.key_id)
        return self._metas[v]

    def amnesia(self, v: int) -> _Meta:
        m = self.meta(v)
        if m is None:
            raise InputError(
                f"{self.name} v{v} is not an mlflow_amnesia model version (no data/amnesia.json); "
                "purge works on versions registered by `mlflow-amnesia train` and `forget`."
            )
        return m

    def steps_that_saw(self, m: _Meta, hashes: np.ndarray) -> dict[str, set[int]]:
        """Store URL -> steps of ``m``'s segments whose batch held any of ``hashes``."""
        from ..recording.index import RecordIndex

        out: dict[str, set[int]] = {}
        for k, seg in enumerate(m.segments):
            ident = (seg.store_url, int(seg.first_step), int(seg.last_step))
            self.phases.setdefault(seg.store_url, seg.phase)
            if ident[2] < ident[1] or not len(hashes):
                continue
            if ident not in self._indexes:
                raw = m.files.segment_index(k)
                self._indexes[ident] = RecordIndex.from_bytes(
                    raw, self.key(m), name=f"record index of segment {k} of {self.name} v{m.version}", steps=ident[1:]
                )
            out.setdefault(ident[0], set()).update(
                int(s) for s in self._indexes[ident].steps_for_hashes(hashes, strict=False)
            )
        return out

    def key(self, m: _Meta) -> bytes:
        """The record key, checked against the key id ``m`` was built with (keys.load_key_for)."""
        from ..keys import key_id, load_key_for

        if self._key is None or (m.key_id and m.key_id != key_id(self._key)):
            self._key = load_key_for(
                m.key_id,
                f"{self.name} v{m.version}",
                to="purge it (the steps that saw the forgotten records are found by their keyed hashes)",
            )
        return self._key

    def run_location(self, run_id: str | None) -> str | None:
        from mlflow.exceptions import MlflowException

        if not run_id:
            return None
        try:
            return self.client.get_run(run_id).info.artifact_uri
        except MlflowException as e:
            if "RESOURCE_DOES_NOT_EXIST" in str(getattr(e, "error_code", "")):
                return None  # the run was deleted for good: its artifacts went with it
            raise


# ---------------------------------------------------------------------------------------------
# planning


def plan_purge(model_name: str, versions: Iterable[int]) -> PurgePlan:
    """Check that ``versions`` can be purged and list what that deletes; changes nothing.

    Raises :class:`InputError` naming the version and the reason when a version is not
    superseded, carries an alias, or a version not being purged still needs a step to delete.
    """
    wanted = sorted({int(v) for v in versions})
    if not wanted:
        raise InputError("nothing to purge: give --version N (repeat it to purge several versions at once)")
    mvs = {v: registry.resolve_version(model_name, version=v) for v in wanted}
    reg = _Registry(model_name)
    _check_purgeable(reg, mvs)
    plans = [_plan_version(reg, mvs[v]) for v in wanted]
    targets: dict[str, set[int]] = {}
    for vp in plans:
        for url, steps in vp.steps.items():
            targets.setdefault(url, set()).update(steps)
    stores = [_plan_store(url, sorted(steps), reg.phases.get(url)) for url, steps in sorted(targets.items())]
    blockers = _blockers(reg, set(wanted), {s.url: set(s.steps) for s in stores})
    if blockers:
        raise InputError(_refusal(model_name, wanted, blockers))
    return PurgePlan(model_name, plans, stores)


def _superseded_by(reg: _Registry, mv) -> int | None:
    """The version that superseded ``mv``: its tag ``amnesia.superseded_by``, else its child (a
    version whose ``amnesia.parent_version`` is ``mv``; the lowest wins a race). A forget sets the
    tag after registering the child, so one killed in between leaves only the child."""
    from ..mlflow.concurrency import children_of

    t = mv.tags or {}
    if registry.TAG_SUPERSEDED in t:
        return int(t[registry.TAG_SUPERSEDED])
    kids = children_of(reg.name, mv.version)
    return kids[0] if kids else None


def _check_purgeable(reg: _Registry, mvs: dict) -> None:
    """Refuse versions no forget superseded, and versions an alias points at."""
    aliases = dict(getattr(reg.client.get_registered_model(reg.name), "aliases", {}) or {})
    for v, mv in mvs.items():
        sup = _superseded_by(reg, mv)
        if sup is None:
            raise InputError(
                f"{reg.name} v{v} is not superseded (no tag {registry.TAG_SUPERSEDED}, no child): no forget has replaced it, so "
                "it is a current version, not a leftover. Purge erases only versions a forget has superseded: "
                f"forget the records from v{v} first (`mlflow-amnesia forget --model {reg.name} "
                f"--version {v} --records ids.txt --purge` forgets and purges v{v} in one go)."
            )
        held = sorted(a for a, av in aliases.items() if int(av) == v)
        if held:
            raise InputError(
                f"{reg.name} v{v} still carries the alias(es) {', '.join(held)}: whoever loads "
                f"models:/{reg.name}@{held[0]} would get a purged version. Move the alias first, e.g. to "
                f"v{sup} (`mlflow-amnesia forget ... --set-alias {held[0]}` does it on the next "
                "forget), then re-run the purge."
            )


def _plan_version(reg: _Registry, mv) -> VersionPurge:
    """One version's part: its files, its run's audit files, and the steps that saw the records
    its superseding forget removed, in every segment of its lineage (ancestors, itself, child)."""
    v, t = int(mv.version), mv.tags or {}
    child_v = _superseded_by(reg, mv)
    assert child_v is not None  # _check_purgeable refused a version no forget superseded
    p, child = reg.amnesia(v), reg.amnesia(child_v)
    removed = child.forgotten()[~hashes_in(child.forgotten(), p.forgotten())]
    steps: dict[str, set[int]] = {}
    for m in [child, p] + [reg.amnesia(a) for a in _ancestors(p, reg)]:
        for url, st in reg.steps_that_saw(m, removed).items():
            steps.setdefault(url, set()).update(st)
    vp = VersionPurge(
        version=v,
        superseded_by=child_v,
        child_method=str(child.tags.get(registry.TAG_METHOD, "?")),
        n_records=int(len(removed)),
        model_location=p.location,
        run_id=mv.run_id,
        purged_at=t.get(TAG_PURGED),
        started_at=t.get(TAG_PURGE_STARTED),
        described=(mv.description or "").startswith(_NOTE),
        tombstone_done=bool(_tombstone(p.repo).get("completed_at")),
        steps={u: sorted(st) for u, st in steps.items() if st},
    )
    vp.model_files = [(f, b) for f, b in _list_files(p.repo) if not _kept(f)]
    vp.run_location = reg.run_location(mv.run_id)
    if vp.run_location:
        run_repo = _repo(vp.run_location)
        vp.run_files = [x for d in _RUN_DIRS for x in _list_files(run_repo, d)]
    return vp


def _plan_store(url: str, steps: list[int], phase: Phase | None = None) -> StorePurge:
    """The part of ``steps`` still to purge in the store at ``url``, sized; the chunk files of its
    purged steps still on disk (a purge stopped before deleting them); its phase's optimizer state
    (``phase``: where the phase keeps its training files; default: the store's own phase)."""
    from ..recording.store import DeltaStore

    opt = _optimizer_state(phase if phase is not None else Phase.of_store_url(url)) if steps else None
    if not _exists(f"{url.rstrip('/')}/manifest.json"):  # no manifest: what chunks/ still lists is all there is
        left = _listed_chunks(url, steps)
        return StorePurge(url, [], len(steps), 0, 0, opt, missing=True, leftovers=left)
    store = DeltaStore.open(url)
    gone = set(store.purged_steps)
    todo = [s for s in steps if s not in gone]
    size = store.size(todo)
    return StorePurge(
        url, todo, len(steps) - len(todo), size.stored, size.chunks, opt, leftovers=store.leftover_files()
    )


def _optimizer_state(phase: Phase | None) -> tuple[str, int] | None:
    """(url, bytes) of the final optimizer state of ``phase``, if there is one."""
    if phase is None:
        return None
    ou = phase.file_url(OPTIMIZER_STATE)
    n = _size(ou)
    return (ou, n) if n is not None else None


def _listed_chunks(url: str, steps: Iterable[int]) -> list[tuple[str, int]]:
    """(path relative to ``url``, bytes) of the files under ``url``/chunks/ named ``<step>.<part>.*``
    for one of ``steps``: a listing, for a store whose manifest is gone."""
    wanted = {int(s) for s in steps}
    fs, path = url_to_fs(url)
    d = f"{path.rstrip('/')}/chunks"
    try:
        fs.invalidate_cache(d)
        entries = fs.ls(d, detail=True)
    except FileNotFoundError:
        return []
    out = []
    for e in entries:
        name = e["name"].rstrip("/").rsplit("/", 1)[-1]
        m = _CHUNK_NAME.match(name)
        if e.get("type") != "directory" and m and int(m.group(1)) in wanted:
            out.append((f"chunks/{name}", int(e.get("size") or 0)))
    return sorted(out)


def _blockers(reg: _Registry, purging: set[int], todo: dict[str, set[int]]) -> list:
    """(version, tags, store, steps) for each version that stays (not purged, not being purged)
    and lists steps about to be purged without having rolled them back."""
    out = []
    for v in sorted(reg.versions):
        t = reg.versions[v].tags or {}
        if v in purging or TAG_PURGED in t or TAG_PURGE_STARTED in t:
            continue
        m = reg.meta(v)
        if m is None:  # a version of another flavor references no delta store
            continue
        rolled = set(m.rolled_back.tolist())
        for seg in m.segments:
            lo, hi = int(seg.first_step), int(seg.last_step)
            need = sorted(s for s in todo.get(seg.store_url, ()) if lo <= s <= hi and s not in rolled)
            if need:
                out.append((v, t, seg.store_url, need))
    return out


def _ancestors(m: _Meta, reg: _Registry) -> list[int]:
    """Versions up ``m``'s parent chain (tag amnesia.parent_version), nearest first."""
    out, seen, t = [], {m.version}, m.tags
    while registry.TAG_PARENT in t:
        p = int(t[registry.TAG_PARENT])
        pm = reg.meta(p) if p not in seen else None
        if pm is None:
            break
        seen.add(p)
        out.append(p)
        t = pm.tags
    return out


def _refusal(name: str, wanted: list[int], blockers: list) -> str:
    lines = [
        f"cannot purge {name} {', '.join(f'v{v}' for v in wanted)}: its purge would delete recorded steps "
        "that a version which stays still needs, so nothing was deleted."
    ]
    superseded = []
    for v, t, url, need in blockers:
        why = (
            "it is superseded but not purged, has not rolled these steps back, and its weights still hold the "
            "forgotten records"
            if registry.TAG_SUPERSEDED in t
            else "it is live and has not rolled these steps back (the records were forgotten along its lineage by a "
            "method that keeps the steps: relabel or finetune), so a later amnesiac forget from it may subtract them"
        )
        lines.append(f"  v{v} needs {len(need)} of them ({url}: {_fmt_steps(need)}): {why}.")
        if registry.TAG_SUPERSEDED in t:
            superseded.append(v)
    if superseded:
        vs = " ".join(f"--version {v}" for v in sorted(set(superseded) | set(wanted)))
        lines.append(f"Purge the superseded version(s) in the same call: mlflow-amnesia purge --model {name} {vs}")
    else:
        lines.append(
            "These steps can be purged once no live version needs them: after a `forget --method retrain` "
            "(a new store without the records) has superseded every version that lists them, purge those "
            "versions together."
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# executing


def purge(
    model_name: str,
    versions: int | Sequence[int],
    *,
    dry_run: bool = False,
    yes: bool = False,
    confirm: Callable[[str], bool] | None = None,
) -> PurgeResult:
    """Purge superseded ``versions`` of ``model_name`` (module docstring); idempotent.

    Without ``yes`` the user is asked through ``confirm`` (a refusal, or no ``confirm``, deletes
    nothing and raises :class:`InputError`). ``dry_run`` returns the plan only.
    """
    vs = [versions] if isinstance(versions, int) else list(versions)
    plan = plan_purge(model_name, vs)
    if plan.complete or dry_run:
        if plan.complete and not dry_run:
            _enter_purges(plan)  # a purge killed after its last tag: the ledger entry is its last step
        return PurgeResult(plan, done=False)
    if not yes:
        confirm_deletion(plan.describe(), confirm)
    c = registry.client()
    started = _now()
    for vp in plan.versions:
        if not vp.started_at:
            c.set_model_version_tag(model_name, str(vp.version), TAG_PURGE_STARTED, started)
            vp.started_at = started
        if not vp.purged_at:
            _write_tombstone(vp, model_name, completed=False)

    deleted = 0
    from ..recording.store import DeltaStore

    for s in plan.stores:
        if s.missing:
            for rel, _ in s.leftovers:  # each one checked gone by listing
                _rm_url(f"{s.url.rstrip('/')}/{rel}")
        elif s.steps or s.leftovers:
            say(
                f"purge: deleting the deltas of {len(s.steps)} step(s) in {s.url}"
                + (f" and {len(s.leftovers)} chunk file(s) of steps purged before" if s.leftovers else "")
            )
            st = DeltaStore.open(s.url, mode="a")
            try:
                st.purge(s.steps)  # also deletes every chunk file of an earlier purged step, then lists again
            finally:
                st.close()
        deleted += s.bytes + s.leftover_bytes
        if s.optimizer_state:
            _rm_url(s.optimizer_state[0])
            deleted += s.optimizer_state[1]

    for vp in plan.versions:
        repo = _repo(vp.model_location)
        _delete(repo, vp.model_files, f"{model_name} v{vp.version}")
        deleted += sum(b for _, b in vp.model_files)
        if vp.run_files and vp.run_location:
            _delete(_repo(vp.run_location), vp.run_files, f"run {vp.run_id}")
            deleted += sum(b for _, b in vp.run_files)

    done_at = _now()
    for vp in plan.versions:
        touched = bool(vp.model_files or vp.run_files) or any(
            set(vp.steps.get(s.url, ())) & set(s.steps) for s in plan.stores
        )
        if vp.purged_at and vp.described and vp.tombstone_done and not touched:
            continue
        # tombstone, description, and the tag last: a purge killed before the tag is not complete
        body = _write_tombstone(vp, model_name, completed=True, at=done_at)
        vp.tombstone_done = True
        files = body.get("deleted_files", [])
        n_steps = sum(body.get("steps_that_saw_the_records", {}).values())
        desc = registry.without_banner(c.get_model_version(model_name, str(vp.version)).description or "")
        if not desc.startswith(_NOTE):  # the note replaces the superseded banner (jobs.forget's)
            note = (
                f"{_NOTE} {done_at} (GDPR erasure): the weights of v{vp.version} and the recorded deltas of the "
                f"{n_steps} step(s) that saw the records v{vp.superseded_by} forgot were deleted for good. This "
                "entry, its tags and lineage metadata are kept; it can no longer be loaded."
            )
            c.update_model_version(model_name, str(vp.version), description=f"{note}\n\n{desc}" if desc else note)
        vp.described = True
        what = (
            [f"{len(files)} model file(s) ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''})"] if files else []
        )
        what += (
            [f"run artifacts {', '.join(sorted({p.split('/')[0] + '/' for p, _ in vp.run_files}))}"]
            if vp.run_files
            else []
        )
        what += [f"the deltas of {n_steps} step(s) that saw the {vp.n_records} record(s) v{vp.superseded_by} forgot"]
        c.set_model_version_tag(model_name, str(vp.version), TAG_PURGED, f"{done_at}; deleted: {'; '.join(what)}")
        vp.purged_at = done_at
    _enter_purges(plan)
    return PurgeResult(plan, done=True, deleted_bytes=deleted)


def _enter_purges(plan: PurgePlan) -> None:
    """One ``purged`` entry per purged version in the erasure ledger (after its tag: the purge's last step)."""
    from ..mlflow import ledger

    for vp in plan.versions:
        if vp.purged_at:
            at = str(vp.purged_at).split(";", 1)[0]
            ledger.write(
                ledger.Entry(
                    "purged", plan.model_name, {"version": vp.version, "superseded_by": vp.superseded_by, "at": at}
                )
            )


def _write_tombstone(vp: VersionPurge, model_name: str, *, completed: bool, at: str | None = None) -> dict:
    """Write ``data/purged.json`` into the version (merged with one a killed purge left); return it."""
    repo = _repo(vp.model_location)
    old = _tombstone(repo)
    body = {
        "format": "mlflow-amnesia purge tombstone",
        "format_version": 1,
        "model_name": model_name,
        "version": vp.version,
        "superseded_by": vp.superseded_by,
        "started_at": old.get("started_at") or vp.started_at,
        "completed_at": at if completed else None,
        "deleted_files": sorted(set(old.get("deleted_files", [])) | {p for p, _ in vp.model_files}),
        "n_forgotten_records": vp.n_records,
        "steps_that_saw_the_records": {u: len(st) for u, st in vp.steps.items()}
        or old.get("steps_that_saw_the_records", {}),
        "kept": "lineage metadata: " + ", ".join(KEEP),
    }
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp, TOMBSTONE)
        p.write_text(json.dumps(body, indent=2, sort_keys=True))
        repo.log_artifact(str(p), "data")
    return body


def _tombstone(repo) -> dict:
    """The version's ``data/purged.json`` as a dict; empty when absent or unreadable (then rewritten)."""
    return VersionFiles(ArtifactFiles(repo), repo.artifact_uri).tombstone() or {}


def confirm_deletion(what: str, confirm: Callable[[str], bool] | None) -> None:
    """Ask before deleting ``what`` for good (``confirm``: the CLI's prompt); no answer, or no, is
    an :class:`InputError` that names ``--yes`` and ``--dry-run``."""
    if confirm is None or not confirm(what + "\nDelete this for good? It cannot be undone."):
        raise InputError(
            "purge deletes model weights and recorded deltas for good: re-run with --yes to "
            "proceed, or with --dry-run to see what it deletes."
        )


def _delete(repo, files: list[tuple[str, int]], what: str) -> None:
    """Delete ``files`` from an artifact repository and check they are gone (some repositories
    silently do not implement deletion: that is an error, not a purge)."""
    for path, _ in files:
        repo.delete_artifacts(path)
    left = {p for p, _ in _list_files(repo)} & {p for p, _ in files}
    if left:
        raise StoreError(
            f"the artifact store of {what} ({repo.artifact_uri}) did not delete {', '.join(sorted(left))}: "
            f"{type(repo).__name__} does not support deleting artifacts. Delete these files by hand (or move the "
            "artifacts to a store that supports deletion), then re-run the purge to finish it."
        )


# ---------------------------------------------------------------------------------------------
# small helpers


def _exists(url: str) -> bool:
    fs, path = url_to_fs(url)
    return bool(fs.exists(path))


def _size(url: str) -> int | None:
    fs, path = url_to_fs(url)
    return int(fs.size(path)) if fs.exists(path) else None


def _rm_url(url: str) -> None:
    fs, path = url_to_fs(url)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
    if fs.exists(path):
        raise StoreError(f"could not delete {url}; delete it by hand, then re-run the purge to finish it.")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _fmt_bytes(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1024
        if n < 1024 or unit == "TB":
            break
    return f"{n:.1f} {unit}"


def _fmt_steps(steps: Sequence[int] | Sequence[str], limit: int = 12) -> str:
    s = ", ".join(str(x) for x in list(steps)[:limit])
    return s + (f" ... ({len(steps)} in all)" if len(steps) > limit else "")


__all__ = [
    "KEEP",
    "TAG_PURGED",
    "TAG_PURGE_STARTED",
    "PurgePlan",
    "PurgeResult",
    "StorePurge",
    "VersionPurge",
    "plan_purge",
    "purge",
]
