"""The erasure ledger: every deletion request and every action taken on it, kept in the tracking store.

A deletion request outlives the model version it was first forgotten from: later versions, other
roots of the same registered model and new trainings on the same data set must all honour it.
The ledger is where that memory lives, beside the registry (the same tracking server):

* one **entry** per fact, as a run of the experiment ``mlflow-amnesia-ledger``
  (:data:`LEDGER_EXPERIMENT`) with the artifact ``entry.json`` (its canonical JSON) and the tags
  ``amnesia.ledger.entry`` (the sha256 of that JSON: the entry's identity), ``.kind``, ``.model``
  and ``.dataset`` (the data set's fingerprint, so training on the data set under another name
  finds the requests too), and ``amnesia.forget_request`` (the request's keyed hash);
* the registered model carries the tag ``amnesia.ledger`` naming that experiment, so a reader of
  the registry sees that it has one.

Kinds: ``request`` (the records' keyed hashes, their count, the key id, the date received),
``forgotten`` (a version registered without them: parent, method, repair, steps rolled back, run),
``purged`` (a superseded version purged, when) and ``purged-run`` (the store and logged models of an unregistered run
erased). Record ids never appear: the hashes are ``HMAC-SHA256(key, id)`` as in the record index
(:mod:`mlflow_amnesia.keys`), with the key kept outside; a reader without the key can count them,
not name them.

Crash safety and concurrency. An entry is written as: create the run (tags) -> log ``entry.json``
-> mark the run ``FINISHED``. Only a ``FINISHED`` run whose ``entry.json`` hashes to its tag counts;
a writer killed between two of these steps leaves a run nobody reads, and the re-run of the same
command writes the entry again (entries are idempotent: the same fact has the same id, and a copy
is read once). Nothing is ever rewritten in place: two forgets writing at once create two runs,
and neither can lose the other's entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..tags import (
    TAG_LEDGER,
    TAG_LEDGER_DATASET,
    TAG_LEDGER_ENTRY,
    TAG_LEDGER_KIND,
    TAG_LEDGER_MODEL,
    TAG_REQUEST,
)
from . import registry
from .runs import end_quietly

LEDGER_EXPERIMENT = "mlflow-amnesia-ledger"
ENTRY_FILE = "entry.json"
FORMAT = 1
SHADOWS_PURGED = "purged-shadows"  # purge --request deleted the cached shadow models holding a request's records
KINDS = ("request", "forgotten", "purged", "purged-run", SHADOWS_PURGED)
_MAX_ENTRY_BYTES = 64 * 2**20  # a request of a million records is ~35 MB of hex hashes


@dataclass(frozen=True)
class Entry:
    """One fact of the ledger: ``kind``, the registered model, and the fact's fields (JSON values)."""

    kind: str
    model: str
    fields: Mapping[str, Any]

    def to_json(self) -> str:
        """The canonical JSON: sorted keys, no spaces; what is stored and hashed."""
        body = {"format": FORMAT, "kind": self.kind, "model": self.model, **self.fields}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @property
    def id(self) -> str:
        return hashlib.sha256(self.to_json().encode("ascii")).hexdigest()

    @property
    def request(self) -> str | None:
        r = self.fields.get("request")
        return str(r) if r else None

    @property
    def dataset(self) -> str | None:
        d = self.fields.get("dataset")
        return str(d) if d else None

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


def parse_entry(text: bytes, *, where: str) -> Entry:
    """An entry from its stored JSON; :class:`InputError` naming ``where`` if it is not one."""
    if len(text) > _MAX_ENTRY_BYTES:
        raise InputError(f"{where} is {len(text)} bytes, more than any ledger entry; the ledger is damaged")
    try:
        body = json.loads(text.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{where} is not a ledger entry (not JSON: {e}); the ledger is damaged") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT or body.get("kind") not in KINDS:
        raise InputError(
            f"{where} is not a ledger entry this release reads (format {body.get('format') if isinstance(body, dict) else '?'}); "
            "upgrade mlflow-amnesia or restore the ledger"
        )
    model = body.pop("model", None)
    kind = body.pop("kind")
    body.pop("format")
    if not isinstance(model, str):
        raise InputError(f"{where} names no registered model; the ledger is damaged")
    return Entry(kind, model, body)


# ---------------------------------------------------------------------------------------------
# writing


def _experiment_id(create: bool) -> str | None:
    from mlflow.exceptions import MlflowException

    c = registry.client()
    exp = c.get_experiment_by_name(LEDGER_EXPERIMENT)
    if exp is not None:
        if create and exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)  # a deleted ledger is still the ledger: write into it again
        return str(exp.experiment_id)
    if not create:
        return None
    try:
        return str(c.create_experiment(LEDGER_EXPERIMENT))
    except MlflowException:  # created by a concurrent writer meanwhile
        exp = c.get_experiment_by_name(LEDGER_EXPERIMENT)
        if exp is None:
            raise
        return str(exp.experiment_id)


def write(entry: Entry) -> bool:
    """Add ``entry`` unless it is there already; True if it was written now.

    The steps (run created, ``entry.json`` logged, run finished) each leave a state a reader
    ignores, so a writer killed in between is finished by writing the same entry again.
    """
    if entry.kind not in KINDS:
        raise ValueError(f"unknown ledger entry kind {entry.kind!r}")
    if _find(entry.id):
        return False
    c = registry.client()
    exp_id = _experiment_id(create=True)
    assert exp_id is not None
    tags = {TAG_LEDGER_ENTRY: entry.id, TAG_LEDGER_KIND: entry.kind, TAG_LEDGER_MODEL: entry.model}
    if entry.dataset:
        tags[TAG_LEDGER_DATASET] = entry.dataset
    if entry.request:
        tags[TAG_REQUEST] = entry.request
    run = c.create_run(exp_id, run_name=f"{entry.kind}-{entry.model}"[:250], tags=tags)
    try:
        c.log_text(run.info.run_id, entry.to_json(), ENTRY_FILE)
    except BaseException:
        end_quietly(c, run.info.run_id, "FAILED")
        raise
    end_quietly(c, run.info.run_id, "FINISHED")
    _mark_model(entry.model)
    return True


def _mark_model(name: str) -> None:
    """The registered model's tag ``amnesia.ledger`` (same value every time: no race to lose)."""
    from mlflow.exceptions import MlflowException

    c = registry.client()
    try:
        rm = c.get_registered_model(name)
    except MlflowException:
        return  # not registered (yet): the ledger entry stands on its own
    if (rm.tags or {}).get(TAG_LEDGER) != LEDGER_EXPERIMENT:
        try:
            c.set_registered_model_tag(name, TAG_LEDGER, LEDGER_EXPERIMENT)
        except MlflowException:
            # Two writers tagging the same model at once: on PostgreSQL the second insert of the same
            # key can fail (a unique violation). The tag the other one wrote is the same: fine.
            if (c.get_registered_model(name).tags or {}).get(TAG_LEDGER) != LEDGER_EXPERIMENT:
                raise


# ---------------------------------------------------------------------------------------------
# reading


def _search(filters: Iterable[str]) -> list:
    """Every FINISHED run of the ledger experiment matching all ``filters``, every page read."""
    exp_id = _experiment_id(create=False)
    if exp_id is None:
        return []
    c = registry.client()
    text = " and ".join([*filters, "attributes.status = 'FINISHED'"])
    out, token = [], None
    while True:
        page = c.search_runs([exp_id], filter_string=text, max_results=1000, page_token=token)
        out += list(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def _tag_filter(tag: str, value: str) -> tuple[str, str | None]:
    lit = registry.filter_literal(value)
    if lit is None:  # both quote kinds: match any value of the tag and compare in Python
        return f"tags.`{tag}` LIKE '%'", value
    return f"tags.`{tag}` = {lit}", None


def exists(entry: Entry) -> bool:
    """Whether the ledger holds ``entry`` (a finished run holding exactly it)."""
    return _find(entry.id)


def _find(entry_id: str) -> bool:
    return any(_read_run(r) is not None for r in _search([f"tags.`{TAG_LEDGER_ENTRY}` = '{entry_id}'"]))


def _read_run(run) -> Entry | None:
    """The entry a finished run holds, checked against its id tag; None when the run holds none."""
    from .artifacts import download, repo_at

    tags = run.data.tags or {}
    want = tags.get(TAG_LEDGER_ENTRY)
    if not want:
        return None
    where = f"ledger entry {ENTRY_FILE} of run {run.info.run_id} (experiment {LEDGER_EXPERIMENT})"
    raw = download(repo_at(run.info.artifact_uri), ENTRY_FILE, optional=True)
    if raw is None:
        return None  # the writer was stopped before the entry was logged (and the run finished by hand)
    if hashlib.sha256(raw).hexdigest() != want:
        raise InputError(
            f"{where} does not hash to its tag {TAG_LEDGER_ENTRY}: the ledger was altered. Restore the "
            "tracking store from a backup; an entry is never edited in place."
        )
    e = parse_entry(raw, where=where)
    if e.kind != tags.get(TAG_LEDGER_KIND) or e.model != tags.get(TAG_LEDGER_MODEL):
        raise InputError(f"{where} disagrees with its run's tags; the ledger was altered")
    return e


def entries(*, model: str | None = None, dataset: str | None = None, kind: str | None = None) -> list[Entry]:
    """The ledger's entries for a registered model and/or a data set fingerprint (either matches
    when both are given), of one kind or all, oldest first, each fact once."""
    if model is None and dataset is None:
        raise ValueError("entries() needs a model or a data set")
    groups = []
    for tag, value in ((TAG_LEDGER_MODEL, model), (TAG_LEDGER_DATASET, dataset)):
        if value is None:
            continue
        clause, exact = _tag_filter(tag, value)
        filters = [clause] + ([f"tags.`{TAG_LEDGER_KIND}` = '{kind}'"] if kind else [])
        runs = _search(filters)
        if exact is not None:
            runs = [r for r in runs if (r.data.tags or {}).get(tag) == exact]
        groups += runs
    runs = sorted({r.info.run_id: r for r in groups}.values(), key=lambda r: (r.info.start_time or 0, r.info.run_id))
    seen: dict[str, Entry] = {}
    for r in runs:
        e = _read_run(r)
        if e is not None and e.id not in seen:
            seen[e.id] = e
    return list(seen.values())


# ---------------------------------------------------------------------------------------------
# requests, folded from the entries


@dataclass
class Request:
    """One deletion request as the ledger knows it: its keyed hash, the records' keyed hashes, when
    it was received (the earliest date any forget of it gave), and the entries about it."""

    request: str
    hashes: Any  # (n, HASH_BYTES) uint8
    received: str  # YYYY-MM-DD
    key_id: str | None
    dataset: str | None  # fingerprint
    data: str | None  # the data set's spec, e.g. "digits"
    models: list[str]
    entries: list[Entry]

    @property
    def n(self) -> int:
        return int(len(self.hashes))

    def actions(self, kind: str) -> list[Entry]:
        return [e for e in self.entries if e.kind == kind]


def request_entry(
    *, model: str, request: str, hashes: Any, key_id: str | None, received: str, dataset: Mapping | None
) -> Entry:
    """The ``request`` entry of a forget: the records' keyed hashes (sorted: the entry is the same
    whatever order the ids came in) and the date the request was received."""
    from ..keys import hash_rows

    rows = sorted(bytes(r).hex() for r in hash_rows(hashes))
    ds = dict(dataset or {})
    return Entry(
        "request",
        model,
        {
            "request": request,
            "n": len(rows),
            "hashes": rows,
            "key_id": key_id,
            "received": received,
            "dataset": ds.get("fingerprint"),
            "data": ds.get("spec"),
        },
    )


def fold(found: Iterable[Entry]) -> list[Request]:
    """The requests among ``found``, oldest received first; each with every entry naming it."""
    import numpy as np

    from ..keys import HASH_BYTES

    found = list(found)
    out: dict[str, Request] = {}
    for e in found:
        if e.kind != "request" or not e.request:
            continue
        h = e.request
        rows = np.frombuffer(b"".join(bytes.fromhex(x) for x in e.get("hashes", [])), np.uint8).reshape(-1, HASH_BYTES)
        r = out.get(h)
        if r is None:
            out[h] = Request(h, rows, str(e["received"]), e.get("key_id"), e.dataset, e.get("data"), [e.model], [])
        else:
            r.received = min(r.received, str(e["received"]))
            if e.model not in r.models:
                r.models.append(e.model)
    for e in found:
        if e.request in out:
            out[e.request].entries.append(e)
    return sorted(out.values(), key=lambda r: (r.received, r.request))


def requests(*, model: str | None = None, datasets: Iterable[str] = ()) -> list[Request]:
    """The requests of a registered model's ledger and of the ledgers of ``datasets`` (fingerprints)."""
    found: dict[str, Entry] = {}
    if model is not None:
        found.update((e.id, e) for e in entries(model=model))
    for fp in dict.fromkeys(datasets):
        for e in entries(dataset=fp):
            found.setdefault(e.id, e)
    return fold(found.values())
