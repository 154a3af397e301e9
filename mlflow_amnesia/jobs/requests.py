"""The `requests` job: every deletion request of a model, where its records' contribution still lives,
and the deadline; and `purge --request`, which erases every place it can for one request.

The places of a request (:func:`request_status`), each found from what exists now, not believed
from the ledger:

* **every version of every root** of the registered model: ``forgotten`` (its ``forgotten.npy``
  holds every record's hash: a forget removed them, or ``train`` left them out), ``purged`` (a
  superseded version whose weights and the deltas of every step that saw the records are gone,
  listed in the stores), ``still holds`` (its weights, or those deltas), or ``never held``;
* **the stores of unregistered runs** of the model: a ``train`` killed or failed before it
  registered (its whole delta store and training files), or a ``forget`` whose method recorded a
  phase (relabel, finetune repair: it starts from the parent's weights, and relabel's deltas are
  computed on the records), ``in progress`` while its process lives;
* **the shadow pool**: the audit's cached shadow models of the request's data set (experiment
  ``mlflow-amnesia-shadows``: assembled sets and their members' runs). Each record trained about
  half of them; a set whose pool left the request's records out (tag ``amnesia.shadow_excludes``)
  does not hold them. ``purge --request`` deletes the runs that do (their artifacts; the run
  stays, tagged ``amnesia.purged``) and enters it in the ledger (``purged-shadows``), after which
  every audit's pool leaves the records out, so no shadow model trains on them again.

A request is finished once no place holds its records; the deadline is one calendar month after
it was received (GDPR art. 12(3) and 17: "without undue delay", a month at most).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..keys import hashes_in
from ..mlflow import ledger, registry
from ..mlflow.runs import end_quietly
from ..progress import info as say
from ..tags import TAG_EXCLUDED, TAG_MODEL_NAME, TAG_OWNER, TAG_PURGED, TAG_ROLE, TAG_STORE

FORGOTTEN, PURGED, HOLDS, NEVER, RUNNING, UNKNOWN = (
    "forgotten",
    "purged",
    "still holds",
    "never held",
    "in progress",
    "cannot tell",
)
OPEN = (HOLDS, RUNNING, UNKNOWN)  # a place in one of these keeps the request open
STALE_RUN_SECONDS = 3600  # a RUNNING train of another host whose store has not changed for this long is dead


@dataclass
class Place:
    """One place that may hold a request's records, and what it holds."""

    kind: str  # "version", "run" or "shadows"
    label: str  # "v3 (root v1)", "run 1a2b... (train, killed)", "shadow pool"
    status: str
    detail: str
    version: int | None = None
    run_id: str | None = None
    url: str | None = None  # a run's phase base
    models: list[str] = field(default_factory=list)  # a run's logged models' artifact locations (with files)
    superseded: bool = False  # a version with a child (purge can erase it)
    how: dict = field(default_factory=dict)  # what made a version forget them (method, steps, parent)

    @property
    def open(self) -> bool:
        return self.status in OPEN


@dataclass
class RequestStatus:
    request: ledger.Request
    places: list[Place]
    today: dt.date
    finished: str | None  # the day the last place was erased, when none holds the records any more

    @property
    def received(self) -> dt.date:
        return dt.date.fromisoformat(self.request.received)

    @property
    def deadline(self) -> dt.date:
        return one_month_after(self.received)

    @property
    def done(self) -> bool:
        return not any(p.open for p in self.places)

    @property
    def days_left(self) -> int:
        return (self.deadline - self.today).days

    @property
    def overdue(self) -> bool:
        return not self.done and self.days_left < 0

    @property
    def late(self) -> bool:
        """Finished after the deadline."""
        return self.done and self.finished is not None and dt.date.fromisoformat(self.finished[:10]) > self.deadline

    def headline(self) -> str:
        r = self.request
        state = (
            f"finished {self.finished[:10] if self.finished else '?'}" + (" (after the deadline)" if self.late else "")
            if self.done
            else (
                f"OVERDUE by {-self.days_left} day(s)"
                if self.overdue
                else f"open, {self.days_left} day(s) left (deadline {self.deadline})"
            )
        )
        return f"request {r.request[:16]}  {r.n} record(s)  received {r.received}  {state}"


def one_month_after(d: dt.date) -> dt.date:
    """The same day a calendar month later (the last day of that month when it has no such day)."""
    y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    for day in (d.day, 30, 29, 28):
        try:
            return dt.date(y, m, day)
        except ValueError:
            continue
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# the places


def model_datasets(reg) -> list[str]:
    """The data set fingerprints the model's versions trained on (their requests are the model's too)."""
    out = []
    for v in sorted(reg.versions):
        m = reg.meta(v)
        if m is None:
            continue
        info = m.files.info(optional=True)
        fp = (info.dataset or {}).get("fingerprint") if info is not None else None
        if fp and fp not in out:
            out.append(fp)
    return out


def request_status(model_name: str, *, request: str | None = None, today: dt.date | None = None) -> list[RequestStatus]:
    """Every request of ``model_name``'s ledger (and of the ledgers of its data sets), or the one
    ``request`` names (a hash or a unique prefix of 8+ characters), with its status per place."""
    from .purge import _Registry

    today = today or dt.date.today()
    reg = _Registry(model_name)
    if not reg.versions and not ledger.entries(model=model_name):
        registry.resolve_version(model_name)  # the registry's own one-line error: no such model
    found = ledger.requests(model=model_name, datasets=model_datasets(reg))
    if request is not None:
        found = [select(found, request, model_name)]
    runs = _unregistered_runs(model_name, {mv.run_id for mv in reg.versions.values()})
    pool = _shadow_sets()
    out = []
    for r in found:
        versions = _version_places(reg, r)
        held = {p.version: p.status for p in versions}
        places = versions + [x for run in runs if (x := _run_place(run, r, held)) is not None] + [_pool_place(pool, r)]
        out.append(RequestStatus(r, places, today, None))
    for s in out:
        if s.done:
            s.finished = _finished(s, model_name)
    return out


def select(found: list[ledger.Request], request: str, model_name: str) -> ledger.Request:
    """The request ``request`` names: its keyed hash, or a unique prefix of at least 8 hex characters."""
    want = request.strip().lower().rstrip("…")
    if len(want) < 8 or any(c not in "0123456789abcdef" for c in want):
        raise InputError(
            f"--request {request!r}: give the request's hash (64 hex characters, or its first 8 or more), as "
            f"`mlflow-amnesia requests --model {model_name}` lists it"
        )
    hits = [r for r in found if r.request.startswith(want)]
    if not hits:
        raise InputError(
            f"--request {request!r}: no deletion request with that hash in the erasure ledger of {model_name}; "
            f"`mlflow-amnesia requests --model {model_name}` lists them"
        )
    if len(hits) > 1:
        raise InputError(f"--request {request!r} matches {len(hits)} requests of {model_name}: give more characters")
    return hits[0]


def _root(reg, v: int) -> int:
    seen = set()
    while v not in seen:
        seen.add(v)
        p = (reg.versions[v].tags or {}).get(registry.TAG_PARENT) if v in reg.versions else None
        if p is None or int(p) not in reg.versions:
            return v
        v = int(p)
    return v


def _version_places(reg, r: ledger.Request) -> list[Place]:
    from ..mlflow.concurrency import children_of
    from .purge import _plan_store

    places = []
    stores: dict[str, tuple[set[int], set[int]]] = {}  # url -> (steps still on disk, of those asked)

    def pending(url: str, steps: set[int]) -> set[int]:
        known = stores.get(url)
        if known is None or not steps <= known[1]:
            sp = _plan_store(url, sorted(steps))
            left = set(sp.steps) | {int(f.split("/")[-1].split(".")[0]) for f, _ in sp.leftovers}
            stores[url] = (left & steps, steps)
            return left & steps
        return known[0] & steps

    for v in sorted(reg.versions):
        m = reg.meta(v)
        if m is None:
            continue
        t = m.tags
        label = f"v{v} (root v{_root(reg, v)})"
        if r.key_id and m.key_id and r.key_id != m.key_id:
            places.append(
                Place(
                    "version",
                    label,
                    UNKNOWN,
                    f"built under the record key {m.key_id}, the request under {r.key_id}",
                    version=v,
                )
            )
            continue
        inside = hashes_in(r.hashes, m.forgotten()) if r.n else np.zeros(0, bool)
        kids = children_of(reg.name, v)
        superseded = bool(kids) or registry.TAG_SUPERSEDED in t
        if r.n and inside.all():
            places.append(_forgotten_place(reg, v, r, label))
            continue
        steps = reg.steps_that_saw(m, r.hashes[~inside])
        if not any(steps.values()):
            places.append(Place("version", label, NEVER, "none of the records is in its record index", version=v))
            continue
        left = {url: pending(url, set(st)) for url, st in steps.items()}
        n_left = sum(len(s) for s in left.values())
        if TAG_PURGED in t and not n_left:
            places.append(
                Place(
                    "version",
                    label,
                    PURGED,
                    f"purged {str(t[TAG_PURGED]).split(';')[0]}: its weights and the deltas of the "
                    f"{sum(len(s) for s in steps.values())} step(s) that saw the records are deleted",
                    version=v,
                    superseded=True,
                )
            )
        elif TAG_PURGED in t:
            places.append(
                Place(
                    "version",
                    label,
                    HOLDS,
                    f"purged, but the deltas of {n_left} step(s) that saw the records are still in "
                    + ", ".join(u for u, s in left.items() if s),
                    version=v,
                    superseded=True,
                )
            )
        elif superseded:
            places.append(
                Place(
                    "version",
                    label,
                    HOLDS,
                    f"superseded (by v{kids[0] if kids else t[registry.TAG_SUPERSEDED]}) but not purged: its weights "
                    f"and the deltas of {n_left} step(s) that saw the records",
                    version=v,
                    superseded=True,
                )
            )
        else:
            places.append(
                Place(
                    "version",
                    label,
                    HOLDS,
                    f"trained on {int((~inside).sum())} of the records and never forgot them: forget them from it "
                    f"(`mlflow-amnesia forget --model {reg.name} --version {v} --records ids.txt`)",
                    version=v,
                )
            )
    return places


def _forgotten_place(reg, v: int, r: ledger.Request, label: str) -> Place:
    """A version without the records: which forget removed them (itself or an ancestor), or train left them out."""
    at = v
    while True:  # up the lineage to the version whose own forget was this request
        tt = reg.versions[at].tags or {}
        if tt.get(registry.TAG_REQUEST) == r.request:
            how = {
                "version": at,
                "parent": int(tt[registry.TAG_PARENT]),
                "method": tt.get(registry.TAG_METHOD),
                "repair": tt.get(registry.TAG_REPAIR),
                "steps_rolled_back": int(tt.get(registry.TAG_STEPS, 0) or 0),
            }
            if at == v:
                rep = f" + repair {how['repair']}" if how["repair"] and how["repair"] != "none" else ""
                detail = (
                    f"forgot them: {how['method']}{rep} from v{how['parent']}, {how['steps_rolled_back']} step(s) "
                    "rolled back"
                )
            else:
                detail = f"forgotten along its lineage (by v{at}, {how['method']})"
            return Place("version", label, FORGOTTEN, detail, version=v, how=how)
        p = tt.get(registry.TAG_PARENT)
        if p is None or int(p) not in reg.versions:
            break
        at = int(p)
    root = reg.versions[at].tags or {}
    if root.get(TAG_EXCLUDED, "0") not in ("", "0"):
        if at == v:
            return Place(
                "version",
                label,
                FORGOTTEN,
                "never trained on them: `train` left them out",
                version=v,
                how={"method": "excluded at training"},
            )
        return Place("version", label, FORGOTTEN, f"its root v{at} was trained without them", version=v)
    return Place("version", label, FORGOTTEN, "they are among its forgotten records", version=v)


# ---------------------------------------------------------------------------------------------
# unregistered runs: trains, and forgets whose method recorded a phase


def _unregistered_runs(model_name: str, registered: set) -> list:
    """The runs of ``model_name`` (tag ``amnesia.model_name``) that registered no version: every
    ``train`` with a recorded phase (tag ``amnesia.store``), and every ``forget`` (killed, failed,
    or a registration race's loser): its method's recorded phase (relabel, finetune repair,
    retrain) and its logged model, whichever it left, are places that may hold records."""
    from ..audit.privacy import SHADOW_EXPERIMENT

    c = registry.client()
    skip = {ledger.LEDGER_EXPERIMENT, SHADOW_EXPERIMENT}
    exps = [e.experiment_id for e in c.search_experiments() if e.name not in skip]
    lit = registry.filter_literal(model_name)
    if not exps:
        return []
    name_clause = f" and tags.`{TAG_MODEL_NAME}` = {lit}" if lit else ""
    out = []
    for role in ("train", "forget"):
        token = None
        while True:
            page = c.search_runs(
                exps, filter_string=f"tags.`{TAG_ROLE}` = '{role}'{name_clause}", max_results=1000, page_token=token
            )
            out += [r for r in page if (r.data.tags or {}).get(TAG_MODEL_NAME) == model_name]
            token = getattr(page, "token", None)
            if not token:
                break
    return [
        r
        for r in out
        if r.info.run_id not in registered and ((r.data.tags or {}).get(TAG_STORE) or r.data.tags[TAG_ROLE] == "forget")
    ]


def _logged_models(run) -> list[tuple[str, list[tuple[str, int]]]]:
    """(artifact location, its files) of each logged model of ``run`` that still has files (MLflow 3
    keeps a logged model's artifacts beside the run's, not under them)."""
    from ..mlflow.artifacts import list_files, repo_at

    c = registry.client()
    out, token = [], None
    while True:
        page = c.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'", page_token=token
        )
        for lm in page:
            files = list_files(repo_at(lm.artifact_location))
            if files:
                out.append((lm.artifact_location, files))
        token = getattr(page, "token", None)
        if not token:
            return out


def run_base(run) -> str:
    """The phase base (``<base>/deltas``, ``<base>/training``) of a train or forget run; "" for a
    forget whose method recorded nothing."""
    from ..recording.phase import Phase

    store = str(run.data.tags.get(TAG_STORE) or "").rstrip("/")
    if not store:
        return ""
    phase = Phase.of_store_url(store)
    return phase.base_url if phase is not None else store


def _files(url: str) -> list[tuple[str, int, float]]:
    """(path, bytes, modified as epoch seconds) of every file under ``url``; [] when there is none."""
    from ..recording.fs import url_to_fs

    fs, path = url_to_fs(url)
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        return []
    out = []
    for p, info in found.items():
        mt = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
        if hasattr(mt, "timestamp"):
            mt = mt.timestamp()
        out.append((p, int(info.get("size") or 0), float(mt or 0)))
    return out


def _alive(run, files: list[tuple[str, int, float]]) -> bool:
    """Whether a RUNNING train run is still training: its process lives (this host), or its store
    changed within the last hour (another host)."""
    if run.info.status != "RUNNING":
        return False
    owner = (run.data.tags or {}).get(TAG_OWNER, "")
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    newest = max((f[2] for f in files), default=(run.info.start_time or 0) / 1000)
    return time.time() - newest < STALE_RUN_SECONDS


def _excluded_requests(run) -> list[str]:
    from ..mlflow.artifacts import download, repo_at
    from .train import EXCLUDED_FILE

    if (run.data.tags or {}).get(TAG_EXCLUDED, "0") in ("", "0"):
        return []
    raw = download(repo_at(run.info.artifact_uri), EXCLUDED_FILE, optional=True)
    try:
        return [str(h) for h in json.loads(raw or b"{}").get("requests", [])]
    except (ValueError, AttributeError):
        return []


def _run_place(run, r: ledger.Request, held: dict) -> Place | None:
    """What an unregistered run holds of ``r`` (``held``: the status of each version for ``r``, from
    which a forget run's parent tells what the run started from); None for a forget run that left
    nothing (an amnesiac forget killed before it logged its model)."""
    rid = run.info.run_id
    base = run_base(run)
    t = run.data.tags or {}
    params = run.data.params or {}
    role = t.get(TAG_ROLE, "train")
    files = _files(base) if base else []
    models = _logged_models(run)
    if role == "forget" and not base and not models and TAG_PURGED not in t:
        return None
    label = f"run {rid[:12]} ({role}, {run.info.status.lower()}, no version)"

    def place(status: str, detail: str) -> Place:
        return Place("run", label, status, detail, run_id=rid, url=base or None, models=[m for m, _ in models])

    data = params.get("dataset")
    if r.data and data and data != r.data:
        return place(NEVER, f"trained on {data!r}, not on {r.data!r}")
    if r.request in _excluded_requests(run):
        return place(FORGOTTEN, "never trained on them: `train` left them out")
    if role == "forget":
        parent = int(params["parent_version"]) if str(params.get("parent_version", "")).isdigit() else None
        if held.get(parent) in (NEVER, FORGOTTEN):
            how = "never held them" if held[parent] == NEVER else "had forgotten them"
            return place(held[parent], f"started from v{parent}, which {how}")
        if t.get(registry.TAG_REQUEST) == r.request:  # its own request: its model forgot them
            if params.get("method") == "retrain":
                return place(NEVER, "its retrain left the records out")
            if not files and TAG_PURGED not in t:
                return place(FORGOTTEN, "its model forgot them (its own request), and it recorded nothing holding them")
            models = []  # only the recorded phase holds them (started from the parent; relabel's deltas)
    size = sum(f[1] for f in files) + sum(f[1] for _, fs in models for f in fs)
    if not files and not models:
        when = str(t.get(TAG_PURGED, "")).split(";")[0]
        return place(PURGED, f"its files are deleted{f' (purged {when})' if when else ''}")
    if _alive(run, files):
        return place(RUNNING, f"still training into {base}")
    what = (
        "a train that registered nothing left its whole delta store and training files"
        if role != "forget"
        else f"a {params.get('method', '?')} forget that registered nothing left what it started from its "
        f"parent v{params.get('parent_version', '?')}"
    )
    where = ([f"{len(files)} file(s) in {base}"] if files else []) + [
        f"its logged model ({len(fs)} file(s) in {loc})" for loc, fs in models
    ]
    return place(HOLDS, f"{what}: {size:,} bytes, " + "; ".join(where))


# ---------------------------------------------------------------------------------------------
# the shadow pool


@dataclass(frozen=True)
class ShadowRun:
    """A run of the shadow experiment: an assembled set or one pool member, and what it may hold."""

    run_id: str
    what: str  # "set" or "member"
    fingerprint: str  # of its data set; "?" when unknown (a member whose set was never assembled)
    excludes: frozenset[str] | None  # the requests its pool left out; None: not recorded (holds them all)
    purged: str | None  # when purge --request deleted its artifacts (the TAG_PURGED value)

    def may_hold(self, r: ledger.Request) -> bool:
        return self.fingerprint in (r.dataset, "?") and (self.excludes is None or r.request not in self.excludes)


def _shadow_sets() -> list[ShadowRun]:
    """Every run of the shadow experiment (``mlflow-amnesia-shadows``), sets and members, whatever
    its status: a failed or killed one may have logged weights too."""
    from ..audit.privacy import SHADOW_EXPERIMENT
    from ..mlflow.artifacts import download, repo_at
    from ..tags import TAG_SHADOW_DATA, TAG_SHADOW_EXCLUDES, TAG_SHADOW_KEY, TAG_SHADOW_POOL

    c = registry.client()
    exp = c.get_experiment_by_name(SHADOW_EXPERIMENT)
    if exp is None:
        return []
    runs = c.search_runs([exp.experiment_id], max_results=5000)
    fps: dict[str, str] = {}
    for run in runs:
        tags = run.data.tags or {}
        if TAG_SHADOW_KEY in tags and TAG_PURGED not in tags and not tags.get(TAG_SHADOW_DATA):  # older sets
            raw = download(repo_at(run.info.artifact_uri), "shadows/shadows.json", optional=True)
            try:
                fp = json.loads(raw or b"{}").get("fingerprint")
            except (ValueError, AttributeError):
                fp = None
            if fp:
                fps[tags[TAG_SHADOW_KEY]] = str(fp)
        elif TAG_SHADOW_KEY in tags and tags.get(TAG_SHADOW_DATA):
            fps[tags[TAG_SHADOW_KEY]] = tags[TAG_SHADOW_DATA]
    out = []
    for run in runs:
        tags = run.data.tags or {}
        key = tags.get(TAG_SHADOW_KEY) or tags.get(TAG_SHADOW_POOL) or ""
        ex = tags.get(TAG_SHADOW_EXCLUDES)
        out.append(
            ShadowRun(
                run.info.run_id,
                "set" if TAG_SHADOW_KEY in tags else "member",
                tags.get(TAG_SHADOW_DATA) or fps.get(key, "?"),
                None if ex is None else frozenset(x for x in ex.split(",") if x),
                tags.get(TAG_PURGED),
            )
        )
    return out


def _pool_place(pool: list[ShadowRun], r: ledger.Request) -> Place:
    mine = [x for x in pool if x.may_hold(r)]
    holding = [x for x in mine if x.purged is None]
    if holding:
        ids = [x.run_id for x in holding]
        sets = sum(x.what == "set" for x in holding)
        return Place(
            "shadows",
            "shadow pool",
            HOLDS,
            f"{sets} cached shadow set(s) and {len(holding) - sets} pool member run(s) of this data set that trained "
            f"on them (experiment mlflow-amnesia-shadows, run(s) {', '.join(x[:12] for x in ids[:3])}"
            f"{'...' if len(ids) > 3 else ''}): each record trained about half of their shadow models; "
            "`purge --request` deletes them, and later audits leave the records out of the pool",
            how={"runs": ids},
        )
    if mine:
        at = max(str(x.purged).split(";")[0] for x in mine).replace("+00:00", "Z")
        return Place(
            "shadows",
            "shadow pool",
            PURGED,
            f"purged {at}: the {len(mine)} cached shadow run(s) that trained on them are deleted; later audits "
            "leave the records out of the pool",
        )
    return Place("shadows", "shadow pool", NEVER, "no cached shadow model of this data set trained on them")


def _finished(s: RequestStatus, model_name: str) -> str | None:
    """The latest date an action on the request's places was recorded (the day it was finished)."""
    dates = [str(e.get("registered") or e.get("at") or "") for e in s.request.entries if e.kind != "request"]
    purged = {p.version for p in s.places if p.status == PURGED and p.version is not None}
    if purged:
        dates += [
            str(e.get("at"))
            for e in ledger.entries(model=model_name, kind="purged")
            if int(e.get("version", -1)) in purged
        ]
    dates = [d for d in dates if d]
    return max(dates) if dates else s.request.received


# ---------------------------------------------------------------------------------------------
# the text


def render(statuses: list[RequestStatus], model_name: str) -> str:
    if not statuses:
        return f"no deletion request in the erasure ledger of {model_name}"
    lines = []
    for s in statuses:
        lines.append(s.headline())
        for p in s.places:
            lines.append(f"  {p.label:<40} {p.status:<12} {p.detail}")
    open_ = [s for s in statuses if not s.done]
    late = [s for s in open_ if s.overdue]
    lines.append(
        f"{len(statuses)} request(s): {len(statuses) - len(open_)} finished, {len(open_)} open"
        + (f", {len(late)} OVERDUE" if late else "")
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# purge --request


@dataclass
class RequestPurge:
    status: RequestStatus
    versions: list[int]  # superseded versions to purge
    runs: list[Place]  # unregistered runs whose store goes
    version_plan: Any = None  # the PurgePlan of ``versions``
    shadow_runs: list[str] = field(default_factory=list)  # shadow experiment runs that trained on the records
    done: bool = False
    lines: list[str] = field(default_factory=list)

    def describe(self) -> str:
        out = []
        if self.version_plan is not None:
            out.append(self.version_plan.describe())
        for p in self.runs:
            out.append(f"{p.label}: delete {p.detail.split(': ', 1)[-1]}")
        if self.shadow_runs:
            shown = ", ".join(x[:12] for x in self.shadow_runs[:6]) + ("..." if len(self.shadow_runs) > 6 else "")
            out.append(
                f"shadow pool: delete the artifacts (shadow weights, confidences, recorded deltas) of "
                f"{len(self.shadow_runs)} run(s) of experiment mlflow-amnesia-shadows that trained on the records "
                f"({shown}) and this machine's downloaded copies; later audits leave the records out of the pool"
            )
        return "\n".join(out)


def plan_request_purge(model_name: str, request: str) -> RequestPurge:
    """What ``purge --request`` erases for one request; refuses (nothing deleted) where a place
    cannot be erased by a purge: a version that never forgot the records, or a train still running."""
    from .purge import plan_purge

    (s,) = request_status(model_name, request=request)
    blockers = [p for p in s.places if p.kind == "version" and p.open and not p.superseded]
    running = [p for p in s.places if p.status == RUNNING]
    if blockers or running:
        why = [f"{p.label}: {p.detail}" for p in blockers] + [
            f"{p.label}: still training; once it registers a version, forget the records from it" for p in running
        ]
        raise InputError(
            f"request {s.request.request[:16]} cannot be erased by a purge yet, nothing was deleted: " + "; ".join(why)
        )
    versions = sorted(p.version for p in s.places if p.kind == "version" and p.open and p.version is not None)
    runs = [p for p in s.places if p.kind == "run" and p.status == HOLDS]
    shadows = [x for p in s.places if p.kind == "shadows" and p.status == HOLDS for x in p.how.get("runs", [])]
    plan = plan_purge(model_name, versions) if versions else None
    return RequestPurge(s, versions, runs, plan, shadows)


def purge_request(
    model_name: str,
    request: str,
    *,
    dry_run: bool = False,
    yes: bool = False,
    confirm: Callable[[str], bool] | None = None,
) -> RequestPurge:
    """Erase every place of one request a purge can: the superseded versions that hold its records
    (:func:`mlflow_amnesia.jobs.purge.purge`) and the stores of unregistered train and forget runs. Idempotent:
    a purge killed between two steps is finished by running it again."""
    from mlflow_amnesia.jobs.purge import confirm_deletion
    from mlflow_amnesia.jobs.purge import purge as run_purge

    rp = plan_request_purge(model_name, request)
    if dry_run:
        return rp
    req = rp.status.request
    for p in rp.status.places:  # what a purge killed after deleting files left: tag and ledger entry
        if p.kind == "run" and p.status == PURGED:
            _purge_run(model_name, p, req.request)
        if p.kind == "shadows" and p.status == PURGED and not req.actions(ledger.SHADOWS_PURGED):
            _enter_shadow_purge(model_name, req.request, [])
    if not rp.versions and not rp.runs and not rp.shadow_runs:
        rp.lines.append(f"request {rp.status.request.request[:16]}: nothing left for a purge to delete")
        return rp
    if not yes:
        confirm_deletion(rp.describe(), confirm)
    if rp.versions:
        rp.lines.append(run_purge(model_name, rp.versions, yes=True).summary())
    for p in rp.runs:
        rp.lines.append(_purge_run(model_name, p, rp.status.request.request))
    if rp.shadow_runs:
        rp.lines.append(_purge_shadows(model_name, rp.shadow_runs, rp.status.request.request))
    rp.done = True
    return rp


def _purge_shadows(model_name: str, run_ids: list[str], request: str) -> str:
    """Delete every artifact of the shadow runs that trained on a request's records (checked by
    listing), and this machine's downloaded copies of them; tag each run purged; then enter it in
    the ledger, from which on every audit's pool leaves the records out. Idempotent, in that order:
    a purge killed between two steps is finished by running it again."""
    from ..mlflow.artifacts import list_files, repo_at
    from ..mlflow.shadow_cache import forget_local_copies
    from ..tags import TAG_PURGE_STARTED
    from .purge import _delete

    c = registry.client()
    total = 0
    for rid in run_ids:
        run = c.get_run(rid)
        if TAG_PURGE_STARTED not in (run.data.tags or {}):
            c.set_tag(rid, TAG_PURGE_STARTED, _now())  # no audit uses it from here on
        repo = repo_at(run.info.artifact_uri)
        files = list_files(repo)
        total += sum(f[1] for f in files)
        say(f"purge: deleting shadow run {rid} ({len(files)} file(s)) of experiment mlflow-amnesia-shadows")
        _delete(repo, files, f"shadow run {rid}")
        forget_local_copies(rid)
        c.set_tag(rid, TAG_PURGED, f"{_now()}; deleted: its shadow models' artifacts, for request {request[:16]}")
    _enter_shadow_purge(model_name, request, run_ids)
    return f"purged {len(run_ids)} shadow run(s) that trained on the records: deleted {total:,} bytes"


def _enter_shadow_purge(model_name: str, request: str, run_ids: list[str]) -> None:
    ledger.write(
        ledger.Entry(ledger.SHADOWS_PURGED, model_name, {"request": request, "run_ids": run_ids, "at": _now()})
    )


def _purge_run(model_name: str, p: Place, request: str) -> str:
    """Delete an unregistered run's phase base (store and training files) and its logged models'
    files, check by listing, tag the run."""
    from ..mlflow.artifacts import list_files, repo_at
    from ..recording.fs import url_to_fs
    from .purge import _delete

    assert p.run_id
    size = 0
    if p.url:
        files = _files(p.url) if p.status != PURGED else []
        size += sum(f[1] for f in files)
        say(f"purge: deleting the store and training files of run {p.run_id} ({len(files)} file(s)) in {p.url}")
        fs, path = url_to_fs(p.url)
        if files:
            fs.rm(path, recursive=True)
        left = _files(p.url)
        if left:
            raise InputError(
                f"{len(left)} file(s) under {p.url} could not be deleted (first: {left[0][0]}); re-run the purge"
            )
    for loc in p.models:
        repo = repo_at(loc)
        mfiles = list_files(repo)
        size += sum(f[1] for f in mfiles)
        say(f"purge: deleting the logged model of run {p.run_id} ({len(mfiles)} file(s)) in {loc}")
        _delete(repo, mfiles, f"the logged model of run {p.run_id}")
    at = _now()
    c = registry.client()
    run = c.get_run(p.run_id)
    if TAG_PURGED not in (run.data.tags or {}):
        c.set_tag(p.run_id, TAG_PURGED, f"{at}; deleted: the run's recorded files and logged models ({size:,} bytes)")
        if run.info.status == "RUNNING":
            end_quietly(c, p.run_id, "KILLED")
    else:
        at = str(run.data.tags[TAG_PURGED]).split(";")[0]
    ledger.write(
        ledger.Entry(
            "purged-run",
            model_name,
            {"request": request, "run_id": p.run_id, "url": p.url or "", "models": p.models, "at": at},
        )
    )
    where = ", ".join(([p.url] if p.url else []) + p.models)
    return f"purged run {p.run_id}: deleted {size:,} bytes ({where})"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def as_json(statuses: list[RequestStatus]) -> list[dict]:
    """One object per request (the ``--format json`` output)."""
    return [
        {
            "request": s.request.request,
            "records": s.request.n,
            "received": s.request.received,
            "deadline": s.deadline.isoformat(),
            "days_left": s.days_left,
            "done": s.done,
            "overdue": s.overdue,
            "finished": s.finished,
            "places": [
                {
                    "kind": p.kind,
                    "place": p.label,
                    "status": p.status,
                    "detail": p.detail,
                    "version": p.version,
                    "run_id": p.run_id,
                }
                for p in s.places
            ],
        }
        for s in statuses
    ]
