"""The `verify` check: can a version still be forgotten from, and is what a purge erased gone?

For each segment of the version (one recorded phase: a delta store at a URL):

* every chunk the version still needs, read through the manifest copied into the version (what
  a forget reads): present, size, digest, decodes. Steps the version already rolled back are
  never read again: their missing chunks are counted, not failed;
* the store's own ``manifest.json`` (what ``purge`` and an append trust): readable, and agreeing
  with the version's copy (:meth:`DeltaStore.check_copy`). A version's copy can be sound while
  the store's manifest is garbled: then a forget works and the purge after it fails;
* no chunk file of a step the store's manifest marks purged is left on disk. The directory is
  listed: a purge stopped between its manifest and its deletions leaves the erased deltas
  there, readable, and only the listing shows it.

For a version that was purged, also: that its purge finished, and that it holds nothing but its
lineage metadata. A live version is first loaded through the flavor's validated reader (its
weights, architecture, indexes, no chunk); a purged one is read as metadata only. Needs no
record key.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from ..errors import InputError, StoreError
from ..mlflow import registry
from ..mlflow.artifacts import ArtifactFiles, list_files, repo_at
from ..mlflow.flavor import load_model
from ..recording.phase import Segment
from ..recording.store import DeltaStore, StoreProblem
from ..tags import TAG_PURGE_STARTED, TAG_PURGED
from ..version.files import INFO, TOMBSTONE_FILE, VersionFiles

__all__ = ["SegmentCheck", "VerifyReport", "verify_version"]


@dataclass
class SegmentCheck:
    """What :func:`verify_version` found in one segment's delta store."""

    role: str
    store_url: str
    n_steps: int
    damaged: list[StoreProblem] = field(default_factory=list)  # chunks the version needs that fail
    not_needed: int = 0  # steps whose chunks fail but are never read again (rolled back, or purged)
    manifest: list[str] = field(default_factory=list)  # the store's own manifest unreadable / disagreeing
    copy: list[str] = field(default_factory=list)  # the version's copy of the manifest unreadable
    leftovers: list[str] = field(default_factory=list)  # chunk files of purged steps on disk (relative to the URL)
    of_purged_version: bool = False
    unsealed_check: bool = False  # sealed chunks checked by size and digest only (no record key here)

    @property
    def ok(self) -> bool:
        return not (self.damaged or self.manifest or self.copy or self.leftovers)

    def problems(self) -> list[str]:
        """One line per finding, prefixed with the segment."""
        at = f"{self.role} {self.store_url}"
        return (
            [f"{at}: {p}" for p in self.damaged]
            + [f"{at}: manifest.json: {m}" for m in self.manifest]
            + [f"{at}: {c}" for c in self.copy]
            + [
                f"{at}: {f}: still on disk although its step was purged: it holds that step's delta"
                for f in self.leftovers
            ]
        )

    def line(self) -> str:
        n = len(self.damaged) + len(self.manifest) + len(self.copy) + len(self.leftovers)
        what = (
            "purged step(s) without chunks: erased"
            if self.of_purged_version
            else "rolled-back step(s) without chunks: purged or lost, not needed"
        )
        note = f" ({self.not_needed} {what})" if self.not_needed else ""
        if self.unsealed_check:
            note += " (no record key here: size and digest checked, not decryption)"
        return f"{self.role}: {self.n_steps} steps at {self.store_url}: {'OK' if not n else f'{n} problem(s)'}{note}"


@dataclass
class VerifyReport:
    """The result of :func:`verify_version`; ``ok`` when nothing needs doing."""

    model_name: str
    version: int
    segments: list[SegmentCheck]
    purged: str | None = None  # the version's amnesia.purged tag, when it was purged
    erasure: list[str] = field(default_factory=list)  # the version's own purge unfinished, files left
    finish: str = ""  # the command that finishes an interrupted purge

    @property
    def ok(self) -> bool:
        return not self.erasure and all(s.ok for s in self.segments)

    def problems(self) -> list[str]:
        return [f"{self.model_name} v{self.version}: {e}" for e in self.erasure] + [
            p for s in self.segments for p in s.problems()
        ]

    def lines(self) -> list[str]:
        head = (
            [
                f"{self.model_name} v{self.version} was purged ({self.purged.split(';')[0]}): "
                "checking that what it erased is gone"
            ]
            if self.purged
            else []
        )
        return head + [s.line() for s in self.segments]

    def summary(self) -> str:
        """One line: what is wrong and what to do (empty when ``ok``)."""
        parts = []
        damaged = sum(len(s.damaged) for s in self.segments)
        if damaged:
            parts.append(f"{damaged} damaged chunk(s): forgets that need them will fail")
        bad = [f"{s.store_url.rstrip('/')}/manifest.json" for s in self.segments if s.manifest]
        if bad:
            parts.append(
                f"the delta-store manifest {', '.join(bad[:2])}{' ...' if len(bad) > 2 else ''} is unreadable "
                "or disagrees with the version's copy: `mlflow-amnesia purge` relies on it, so restore it "
                "(from a backup) before purging"
            )
        if any(s.copy for s in self.segments):
            parts.append("a manifest copied into the version cannot be read: forgets from this version will fail")
        left = [f for s in self.segments for f in s.leftovers]
        if left or self.erasure:
            what = (
                [
                    f"{len(left)} chunk file(s) of purged steps are still on disk ({', '.join(left[:3])}"
                    f"{', ...' if len(left) > 3 else ''})"
                ]
                if left
                else []
            )
            hint = (
                ""
                if "--version N" not in self.finish
                else (
                    f" (N: the superseded version whose purge was stopped; `mlflow-amnesia lineage --model "
                    f"{self.model_name}` marks purged versions)"
                )
            )
            parts.append(
                f"{'; '.join(what + self.erasure)}: the erasure is not finished; run `{self.finish}`{hint} to finish it"
            )
        return f"{self.model_name} v{self.version}: {'; '.join(parts)}; see above" if parts else ""


def verify_version(model_name: str, *, version: int | None = None, alias: str | None = None) -> VerifyReport:
    """Check one version (default: the latest) as the module docstring says; changes nothing.

    Raises :class:`InputError` for a version that is not of this flavor or of a newer format;
    everything it finds wrong with the stores is in the report, not raised.
    """
    from .purge import _kept

    mv = registry.resolve_version(model_name, version=version, alias=alias)
    v, tags = int(mv.version), mv.tags or {}
    repo = repo_at(registry.client().get_model_version_download_uri(model_name, str(v)))
    files = VersionFiles(ArtifactFiles(repo), f"{model_name} v{v}")
    info = files.info(optional=True)  # a newer format says upgrade; damage names the file
    if info is None:
        raise InputError(
            f"{model_name} v{v} is not an mlflow_amnesia model version (no {INFO}): "
            "`mlflow-amnesia verify` checks versions registered by `mlflow-amnesia train` and `forget`."
        )
    done = {int(s) for s in files.rolled_back(info.segments)}
    purged = tags.get(TAG_PURGED)
    is_purged = bool(purged or tags.get(TAG_PURGE_STARTED) or files.read(TOMBSTONE_FILE, optional=True) is not None)

    if not is_purged:  # every file a forget reads, through the validated loader (nothing an artifact names is imported)
        load_model(registry.model_uri(mv))
    segments = []
    for k, seg in enumerate(info.segments):
        segments.append(_check_segment(seg, files.segment_manifest(k), k, done, is_purged, _key_or_none(info.key_id)))

    erasure = []
    if is_purged and not purged:
        erasure.append(f"its purge started {tags.get(TAG_PURGE_STARTED, '(time unknown)')} and did not finish")
    elif purged:
        kept_not = sorted(f for f, _ in list_files(repo) if not _kept(f))
        if kept_not:
            erasure.append(
                f"it is tagged purged but still holds {', '.join(kept_not[:3])}{' ...' if len(kept_not) > 3 else ''}"
            )
    return VerifyReport(
        model_name,
        v,
        segments,
        purged=purged,
        erasure=erasure,
        finish=_finish_command(model_name, v if is_purged else None),
    )


def _key_or_none(expected: str | None) -> bytes | None:
    """The record key when it is here and is the version's: sealed chunks are then decoded too."""
    from ..errors import RecordKeyError
    from ..keys import key_id, load_key

    try:
        key = load_key(create=False)
    except RecordKeyError:
        return None
    return key if not expected or key_id(key) == expected else None


def _check_segment(
    seg: Segment, copy: bytes, k: int, done: set[int], is_purged: bool, key: bytes | None
) -> SegmentCheck:
    url = str(seg.store_url)
    first, last = int(seg.first_step), int(seg.last_step)
    out = SegmentCheck(str(seg.role or "?"), url, max(0, last - first + 1), of_purged_version=is_purged)
    own: DeltaStore | None = None
    theirs: DeltaStore | None = None
    try:
        try:
            theirs = DeltaStore.open(url, manifest=copy, key=key)
        except StoreError as e:
            out.copy.append(f"the version's copy data/segments/{k}/manifest.json cannot be read ({e})")
        try:
            own = DeltaStore.open(url)
        except StoreError as e:
            out.manifest.append(f"the store's own manifest cannot be read: {e}")
        out.unsealed_check = key is None and theirs is not None and theirs.encrypted
        if own is not None and theirs is not None:
            out.manifest += [
                f"disagrees with the version's copy (data/segments/{k}/manifest.json): {m}"
                for m in own.check_copy(theirs)
            ]
        purged_here = set(own.purged_steps) if own is not None else set()
        if own is not None:
            out.leftovers = [f for f, _ in own.leftover_files()]
        if theirs is not None:
            copy_purged = set(theirs.purged_steps)
            not_needed = set()
            for p in theirs.verify():
                if p.step in copy_purged:  # a chunk file of a step the copy marks purged
                    if p.file not in out.leftovers:
                        out.leftovers.append(p.file)
                elif p.step in done or (is_purged and p.step in purged_here):
                    not_needed.add(p.step)  # never read again: rolled back, or the version is purged
                else:
                    out.damaged.append(p)
            out.not_needed = len(not_needed)
    finally:
        for st in (own, theirs):
            if st is not None:
                st.close()
    return out


def _finish_command(model_name: str, version: int | None) -> str:
    """The purge command that finishes the interrupted purge(s) of this model's versions."""
    started = sorted(
        int(mv.version) for mv in registry.search_versions(model_name) if TAG_PURGE_STARTED in (mv.tags or {})
    )
    if version is not None and version not in started:
        started = sorted(started + [version])
    if started:
        return f"mlflow-amnesia purge --model {shlex.quote(model_name)} " + " ".join(f"--version {x}" for x in started)
    return f"mlflow-amnesia purge --model {shlex.quote(model_name)} --version N"
