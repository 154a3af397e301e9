"""The `forget` job: honour a deletion request by registering a new model version.

resolve version -> load (no chunk read) -> ids -> keyed hashes -> steps that saw them (minus
steps already rolled back along the lineage) -> share check -> method (+ repair) -> accuracy
audit -> log model -> register v(n+1) with lineage tags -> :func:`complete_registration`
(description, alias, the parent's ``amnesia.superseded_by`` tag, ``--purge``). Nothing is
registered unless every step before registration succeeded; a forget killed after registering
is finished by re-running the same command (it recognises its own child by the request hash).
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..errors import AmnesiaError, InputError, ManifestFormatError, StoreError, TrackingServerError
from ..mlflow import ledger, registry, tracking
from ..mlflow.concurrency import check_forkable, children_of, one_forget_per_model, register_child
from ..mlflow.flavor import AmnesiaModel, load_model, log_model
from ..progress import info as say
from ..tags import (
    TAG_FLAVOR_FORMAT,
    TAG_MODEL_NAME,
    TAG_N_RECORDS_TOTAL,
    TAG_OWNER,
    TAG_PLAN,
    TAG_PURGE_STARTED,
    TAG_PURGED,
    TAG_ROLE,
    TAG_STORE,
)
from . import lineage

if TYPE_CHECKING:
    import torch

    from ..unlearn import AllOptions, MethodResult
    from .purge import PurgeResult

DEFAULT_MAX_STEP_SHARE = 0.01  # the paper: rolling back more than ~1% of batches costs accuracy


def check_step_share(value: float) -> float:
    """``value`` if it is a share of steps in (0, 1], else :class:`InputError` (NaN and inf
    included: a guard that compares False against everything would never fire)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and 0.0 < v <= 1.0):
        raise InputError(
            f"--max-step-share {value} is not a share of steps: give a number above 0 and at most 1 (default "
            f"{DEFAULT_MAX_STEP_SHARE}, i.e. {DEFAULT_MAX_STEP_SHARE:.0%} of the recorded steps). Above it, forget warns and "
            "asks before rolling back (--yes proceeds); 1 never asks."
        )
    return v


@dataclass
class ForgetPlan:
    model_name: str
    parent_version: int
    method: str
    n_records: int
    n_already_forgotten: int
    steps: np.ndarray
    total_steps: int
    request_hash: str
    rolled_back_before: int = 0  # steps of the version's segments earlier forgets rolled back
    n_steps_seen: int | None = None  # a plan read back from a registered forget keeps counts, not steps
    completes: int | None = None  # the version this same request registered earlier, to complete
    refusal: str | None = field(default=None, repr=False)  # said when that version is complete already

    @property
    def n_steps(self) -> int:
        """Steps that saw the records and are not rolled back yet (what this request rolls back)."""
        return len(self.steps) if self.n_steps_seen is None else self.n_steps_seen

    @property
    def share(self) -> float:
        return self.n_steps / self.total_steps if self.total_steps else 0.0

    @property
    def cumulative_share(self) -> float:
        """Share of all recorded steps rolled back along the lineage once this request is."""
        return (self.rolled_back_before + self.n_steps) / self.total_steps if self.total_steps else 0.0

    def describe(self) -> str:
        s = (
            f"{self.n_records} record(s) to forget from {self.model_name} v{self.parent_version}: "
            f"they were seen by {self.n_steps} of {self.total_steps} recorded steps ({self.share:.2%})"
        )
        if self.rolled_back_before:
            s += (
                f"; with the {self.rolled_back_before} step(s) earlier forgets rolled back, "
                f"{self.cumulative_share:.2%} of the steps along this lineage"
            )
        if self.n_already_forgotten:
            s += f"; {self.n_already_forgotten} more were already forgotten along this lineage and are skipped"
        return s


@dataclass
class ForgetResult:
    plan: ForgetPlan
    version: int | None = None  # None for a dry run
    run_id: str | None = None
    metrics: dict = field(default_factory=dict)
    completed: list[str] = field(default_factory=list)  # steps of an earlier registration this call finished (or would)
    purge: PurgeResult | None = None  # the purge of the parent (--purge)


@dataclass
class Completion:
    """What :func:`complete_registration` did: ``done`` names each step, ``purge`` the parent's purge."""

    done: list[str] = field(default_factory=list)
    purge: PurgeResult | None = None


class PlannedForget(NamedTuple):
    """What :func:`plan_forget` found; nothing is written yet."""

    plan: ForgetPlan
    version: Any  # the ModelVersion to forget from (or the child to complete: plan.completes)
    model: AmnesiaModel  # that version, loaded (no chunk read)
    key: bytes  # the record key, checked against the version's key id
    target_hashes: np.ndarray  # keyed hashes of the records this request forgets now
    records: Any  # the data set, when --class needed it rebuilt (None otherwise)


@dataclass
class ForgetRequest:
    """What the user asked ``forget`` to do: the command's options, ``forget()``'s keywords."""

    model_name: str
    records_file: str | None = None  # an ids file (one record id per line)
    ids: Sequence[str] | None = None
    cls: str | None = None  # every training record of this class
    version: int | None = None  # the version to forget from (default: the latest)
    alias: str | None = None
    method: str = "amnesiac"
    repair: str | None = None
    repair_epochs: int = 1
    repair_lr: float | None = None
    method_epochs: int | None = None
    copies: int = 4
    dry_run: bool = False
    yes: bool = False
    max_step_share: float = DEFAULT_MAX_STEP_SHARE
    set_alias: str | None = None
    store_uri: str | None = None  # where a repair records (default: where training recorded)
    data_root: str | None = None
    confirm: Callable[[str], bool] | None = None  # asked above max_step_share, unless yes
    audit: bool = True
    audit_settings: Any = None
    on_epoch: Callable[[int, torch.nn.Module], Mapping[str, float] | None] | None = None
    purge: bool = False  # purge the parent once the child is registered
    received: str | None = None  # YYYY-MM-DD the deletion request was received (default: today)

    def checked(self) -> ForgetRequest:
        """The request with its options checked and normalised, before any database, lock, run or
        rollback exists (InputError naming the option otherwise)."""
        from ..mlflow.tracking import check_tracking_store
        from ..unlearn.base import METHODS, check_repair
        from .validation import check_forget_options, received_date

        share = check_step_share(self.max_step_share)
        check_forget_options(repair_lr=self.repair_lr, store_uri=self.store_uri, set_alias=self.set_alias)
        received = received_date(self.received, "received")
        repair = check_repair(self.repair)
        if repair != "none" and "repair" not in {f.name for f in fields(METHODS.get(self.method).Options)}:
            takes = sorted(n for n in METHODS.names() if "repair" in {f.name for f in fields(METHODS.get(n).Options)})
            raise InputError(
                f"--repair {repair} with --method {self.method}: only --method {' / '.join(takes)} repairs (the "
                f"version would record a repair that never ran); drop --repair or use --method amnesiac"
            )
        check_tracking_store(create=False)  # a missing database is an error, never created
        return replace(self, max_step_share=share, repair=repair, received=received)

    def method_options(self) -> AllOptions:
        """Every method's options (each method keeps its own: ``TheirOptions.of(...)``)."""
        from ..unlearn import AllOptions

        return AllOptions(
            repair=self.repair,
            repair_epochs=self.repair_epochs,
            repair_lr=self.repair_lr,
            epochs=self.method_epochs,
            copies=self.copies,
            cls=self.cls,
        )


def _load_ids(records_file: str | None, ids: Sequence[str] | None) -> list[str]:
    from ..ids import read_ids_file

    out: list[str] = []
    if records_file:
        req = read_ids_file(records_file)
        if req.duplicates:
            say(f"{records_file}: {req.duplicates} duplicate id(s) ignored")
        out += req.ids
    if ids:
        out += [str(i) for i in ids]
    return list(dict.fromkeys(out))


def plan_forget(
    model_name: str,
    *,
    records_file: str | None = None,
    ids: Sequence[str] | None = None,
    cls: str | None = None,
    version: int | None = None,
    alias: str | None = None,
    method: str = "amnesiac",
    data_root: str | None = None,
):
    """Resolve the version and the records: a :class:`PlannedForget` (it unpacks as the tuple
    ``(plan, mv, model, key, target_hashes, records)``).

    When this very request registered a child earlier (a forget killed before it finished:
    the version asked for, or its child, carries the request's hash), the plan names that child
    in ``plan.completes`` and ``mv``/model are the child's: :func:`forget` completes it.
    """
    from ..keys import hash_ids, hash_request, hashes_in, load_key_for
    from ..learning.data import class_records, rebuild
    from ..unlearn import get_method

    get_method(method)  # unknown method: fail before any work
    if not records_file and not ids and cls is None:
        raise InputError("nothing to forget: give --records FILE (one record id per line) and/or --class C")
    mv = registry.resolve_version(model_name, version=version, alias=alias)
    refusal = None
    try:
        check_forkable(mv)  # superseded, already has a child, or lost a concurrent forget: refuse
    except InputError as e:  # superseded: perhaps by this very request, killed before it finished
        child = _unfinished_child(mv)
        if child is None:
            raise
        refusal, mv = str(e), child  # recognised below by the request hash, else refused
    try:
        am = load_model(registry.model_uri(mv))
    except InputError as e:  # another flavor, a newer format: name the version, not a temp path only
        raise InputError(f"{model_name} v{mv.version} cannot be forgotten from: {e}") from None
    for seg in am.segments:  # a copied manifest this version cannot read fails here, before any run starts
        try:
            seg.open_store()
        except ManifestFormatError as e:
            raise ManifestFormatError(
                f"{model_name} v{mv.version}, {seg.role} segment (store {seg.store_url}): {e}"
            ) from None
        except StoreError:
            pass  # e.g. no fsspec driver here: only methods that read chunks need the store itself
    key = load_key_for(am.info.key_id, f"{model_name} v{mv.version}", to="forget from it")
    wanted = _load_ids(records_file, ids)
    records = None
    if cls is not None:
        from ..learning.data import Split

        records = rebuild(am.info.dataset or {}, root=data_root)
        sp = Split.from_json(am.info.split or {}, records)
        c: int | str = int(cls) if str(cls).isdigit() else cls
        pos = np.intersect1d(class_records(records, c), sp.train)
        if len(pos) == 0:
            raise InputError(f"class {cls!r} has no training records in {model_name} v{mv.version}")
        wanted = list(dict.fromkeys(wanted + [str(records.ids[i]) for i in pos]))

    hashes = hash_ids(wanted, key)
    already = hashes_in(hashes, am.forgotten)
    if refusal is not None or already.all():
        if _same_request(mv, am, wanted, hashes, already, key):
            plan = registered_plan(mv)
            plan.refusal = refusal or (
                f"all {len(wanted)} record(s) were already forgotten along the lineage of "
                f"{model_name} v{mv.version}; nothing to do"
            )
            return PlannedForget(plan, mv, am, key, hashes[:0], records)
        if refusal is not None:
            raise InputError(refusal)
    train_seg = next(s for s in am.segments if s.role in ("train", "retrain"))  # a retrained version trained anew
    train_index = train_seg.open_index(key)
    known = train_index.contains(wanted)
    unknown = [w for w, k, a in zip(wanted, known, already) if not k and not a]
    if unknown:
        from ..errors import UnknownRecordsError

        err = UnknownRecordsError(
            unknown, where=f"the training records of {model_name} v{mv.version}", total=len(wanted)
        )
        if len(unknown) == len(wanted) and len(wanted) > 1:  # not one matches: most likely another model's request
            data = (am.info.dataset or {}).get("spec", "?")
            err.args = (
                f"{err} None of them is: {model_name} was trained on data set {data!r}; is this the request "
                "for another model?",
            )
        raise err
    todo = ~already
    if not todo.any():
        raise InputError(
            f"all {len(wanted)} record(s) were already forgotten along the lineage of {model_name} v{mv.version}; nothing to do"
        )
    target_ids = [w for w, t in zip(wanted, todo) if t]
    target_hashes = hashes[todo]
    steps = [train_index.steps_for(target_ids)]
    steps += [
        s.open_index(key).steps_for(target_ids, strict=False) for s in am.segments if s is not train_seg and s.n_steps
    ]
    all_steps = np.setdiff1d(np.unique(np.concatenate(steps)).astype(np.int64), am.rolled_back)
    plan = ForgetPlan(
        model_name=model_name,
        parent_version=int(mv.version),
        method=method,
        n_records=len(target_ids),
        n_already_forgotten=int(already.sum()),
        steps=all_steps,
        total_steps=am.total_steps,
        request_hash=hash_request(target_ids, key),
        rolled_back_before=int(len(am.rolled_back)),
    )
    return PlannedForget(plan, mv, am, key, target_hashes, records)


def _unfinished_child(mv):
    """The child that superseded ``mv`` (lowest, or the tag's), if nothing was built on it yet:
    the version a forget killed after registering leaves; None otherwise."""
    from mlflow.exceptions import MlflowException

    name, kids = mv.name, children_of(mv.name, mv.version)
    v = kids[0] if kids else (mv.tags or {}).get(registry.TAG_SUPERSEDED)
    if v is None or children_of(name, v):
        return None
    try:
        return registry.client().get_model_version(name, str(v))
    except MlflowException:  # a tag pointing at a deleted version
        return None


def _same_request(mv, am: AmnesiaModel, wanted: list[str], hashes: np.ndarray, already: np.ndarray, key: bytes) -> bool:
    """Whether ``mv`` is the child a forget of ``wanted`` registered: every id is forgotten in it,
    and those its own request forgot (the last ``amnesia.n_records`` hashes) hash to its
    ``amnesia.forget_request`` tag (a keyed hash: the ids themselves are stored nowhere)."""
    from ..keys import hash_request, hashes_in

    t = mv.tags or {}
    n = int(t.get(registry.TAG_N_RECORDS, 0) or 0)
    if not t.get(registry.TAG_REQUEST) or registry.TAG_PARENT not in t or n <= 0 or not already.all():
        return False
    own = am.forgotten[len(am.forgotten) - n :]
    mine = [w for w, m in zip(wanted, hashes_in(hashes, own)) if m]
    return bool(mine) and hash_request(mine, key) == t[registry.TAG_REQUEST]


def _saved_plan(mv) -> dict:
    """The ``amnesia.forget_plan`` tag of ``mv``'s forget run ({} if absent or unreadable)."""
    if not mv.run_id:
        return {}
    try:
        saved = json.loads(registry.client().get_run(mv.run_id).data.tags.get(TAG_PLAN) or "{}")
    except Exception:  # noqa: BLE001 - a deleted run or a damaged tag: the version's tags still say most
        return {}
    return saved if isinstance(saved, dict) else {}


def registered_plan(mv) -> ForgetPlan:
    """The plan of the forget that registered ``mv``, read back from its tags and its run's
    ``amnesia.forget_plan`` tag (counts only: the steps themselves are not kept)."""
    t, saved = mv.tags or {}, _saved_plan(mv)
    return ForgetPlan(
        model_name=mv.name,
        parent_version=int(t[registry.TAG_PARENT]),
        method=t.get(registry.TAG_METHOD, "?"),
        n_records=int(t.get(registry.TAG_N_RECORDS, 0) or 0),
        n_already_forgotten=int(saved.get("n_already_forgotten", 0)),
        steps=np.zeros(0, np.int64),
        total_steps=int(saved.get("total_steps", 0)),
        request_hash=t.get(registry.TAG_REQUEST, ""),
        rolled_back_before=int(saved.get("rolled_back_before", 0)),
        n_steps_seen=int(saved.get("steps_seen", t.get(registry.TAG_STEPS, 0) or 0)),
        completes=int(mv.version),
    )


@one_forget_per_model  # forgets of one model on one machine queue; across machines, register_child decides
def forget(model_name: str, **request: Any) -> ForgetResult:
    """Forget records from a registered model; returns the new version (or the plan, for a dry run).

    The keywords are the fields of :class:`ForgetRequest` (``records_file=``, ``ids=``, ``cls=``,
    ``version=``/``alias=``, ``method=``, ``repair=``, ``repair_epochs=``, ``repair_lr=``,
    ``method_epochs=``, ``copies=``, ``dry_run=``, ``yes=``, ``max_step_share=``, ``set_alias=``,
    ``store_uri=``, ``data_root=``, ``confirm=``, ``audit=``, ``audit_settings=``, ``on_epoch=``,
    ``purge=``); the work is :func:`run_forget`'s named steps.

    ``confirm`` is asked when the steps to roll back exceed ``max_step_share`` (a share in
    (0, 1]) of all recorded steps, for this request or along the lineage (steps earlier forgets
    rolled back plus this request's), and ``yes`` is False; without it such a request is refused.
    ``purge`` then purges the superseded parent (:func:`mlflow_amnesia.jobs.purge.purge`).

    A request that registered its child earlier but was killed before finishing (description,
    alias, the parent's superseded tag, purge) is completed instead: ``result.completed`` names
    the steps done. Once complete, the same request is refused as already forgotten.

    ``on_epoch(epoch, module)`` is called with the model being built at each moment a curve
    needs: ``epoch`` 0 right after a rollback (amnesiac), k after the k-th epoch the method or
    its repair trains (a replay counts as one). The metrics it returns are logged on the forget
    run at ``step=epoch``, so the MLflow UI plots them per epoch. Its time counts in the
    method's ``unlearn.seconds`` / ``repair.seconds``.
    """
    return run_forget(ForgetRequest(model_name, **request))


def run_forget(request: ForgetRequest) -> ForgetResult:
    """The forget job, step by step (docs/ARCHITECTURE.md, "Forget's order of work"):
    check -> plan -> guard the step share -> (run) method -> audit -> register -> complete."""
    import mlflow

    r = request.checked()
    planned = plan_forget(
        r.model_name,
        records_file=r.records_file,
        ids=r.ids,
        cls=r.cls,
        version=r.version,
        alias=r.alias,
        method=r.method,
        data_root=r.data_root,
    )
    plan, mv = planned.plan, planned.version
    if plan.completes is not None:
        return _complete_earlier(plan, mv, set_alias=r.set_alias, purge=r.purge, dry_run=r.dry_run)
    _guard_share(r, plan)
    if r.dry_run:
        say(
            f"dry run: would register {r.model_name} v(next) with method {r.method}"
            + (f" and repair {r.repair}" if r.repair != "none" else "")
        )
        return ForgetResult(plan)

    _enter_request(r, planned)  # the ledger knows of the request before anything is changed
    parent_run = mlflow.MlflowClient().get_run(mv.run_id) if mv.run_id else None
    t0 = time.monotonic()
    with tracking.retries_restored():
        return _run_and_register(r, planned, parent_run, t0)


def _run_and_register(r: ForgetRequest, planned: PlannedForget, parent_run: Any, t0: float) -> ForgetResult:
    """The forget's run (method, audit, registration) and the steps after it; a tracking server
    that goes away on the way is one line saying what is left and that the re-run completes it."""
    from ..mlflow.runs import start_run

    plan, mv = planned.plan, planned.version
    try:
        with start_run(
            f"forget-{r.model_name}-v{mv.version}", experiment_id=parent_run.info.experiment_id if parent_run else None
        ) as run:
            try:
                records = _LazyRecords(planned, r.data_root)
                child, result = _apply_method(r, planned, run, records)
                metrics = _audit(r, planned, child, result, records, t0)
                new_version = _register(r, planned, child, result, run.info.run_id, metrics)
            except Exception as e:  # noqa: BLE001 - only a server that went away is reworded
                _reraise_if_server_gone(e, r.model_name, int(mv.version))
                raise
    except Exception as e:  # noqa: BLE001
        # Ending the run (FAILED) through a server that is gone fails too: report what went wrong inside.
        inner = _context_of(e, TrackingServerError)
        if inner is not None and tracking.is_unreachable(e):
            raise inner from None
        raise
    say(f"registered {r.model_name} version {new_version} (run {run.info.run_id}): {result.summary}")
    try:
        done = complete_registration(r.model_name, new_version, set_alias=r.set_alias, purge=r.purge)
    except Exception as e:  # noqa: BLE001
        _reraise_if_server_gone(e, r.model_name, int(mv.version), registered=new_version)
        raise
    return ForgetResult(plan, new_version, run.info.run_id, metrics, purge=done.purge)


def _context_of(e: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type ``kind`` that ``e`` was raised while handling, if any."""
    seen: set[int] = set()
    c = e.__context__
    while c is not None and id(c) not in seen:
        if isinstance(c, kind):
            return c
        seen.add(id(c))
        c = c.__context__
    return None


def _reraise_if_server_gone(e: Exception, name: str, parent: int, *, registered: int | None = None) -> None:
    """Raise :class:`TrackingServerError` saying what is left and that the re-run completes it,
    when ``e`` is the tracking server going away (it no longer answers); else return."""
    import mlflow

    if isinstance(e, TrackingServerError) or not tracking.is_unreachable(e) or tracking.server_answers():
        return
    tracking.stop_retrying()  # ending the run must not retry for another half minute
    registered = registered if registered is not None else getattr(e, "registered_version", None)
    where = f"cannot reach the tracking server at {mlflow.get_tracking_uri()}: it went away during the forget of {name} v{parent}"
    if registered is not None:
        left = f"after v{registered} was registered, before its checks, description and lineage tags were all done"
        then = f"it finishes v{registered}"
    elif getattr(e, "registering", False) and not tracking.was_not_delivered(e):
        left = "while the new version was being registered: it may have been created"
        then = "it finishes that version, or redoes the forget if none was created"
    else:
        left = f"before the new version was registered: nothing was registered and v{parent} is unchanged"
        then = "it redoes the forget"
    raise TrackingServerError(
        f"{where}, {left}. Start the server again, then re-run the same command: {then}."
    ) from None


def _guard_share(r: ForgetRequest, plan: ForgetPlan) -> None:
    """Say what the request touches; above ``max_step_share`` warn, and ask (or refuse without ``yes``)."""
    from ..unlearn import get_method

    say(plan.describe())
    if len(plan.steps) == 0:
        say("no recorded step saw these records that is not already rolled back")
    if (
        get_method(r.method).rolls_back
        and len(plan.steps)
        and max(plan.share, plan.cumulative_share) > r.max_step_share
    ):
        warn = (
            f"rolling back {plan.share:.2%} of the recorded steps for this request, {plan.cumulative_share:.2%} "
            f"along this lineage with the {plan.rolled_back_before} step(s) earlier forgets rolled back, exceeds "
            f"--max-step-share {r.max_step_share:.2%}: the paper finds that rolling back more than ~1% of batches "
            "costs accuracy that then needs repair (--repair finetune) or another method (--method retrain "
            "trains anew without every forgotten record)."
        )
        say("WARNING: " + warn)
        if not r.dry_run and not r.yes:
            if r.confirm is None or not r.confirm("Roll back anyway?"):
                raise InputError(warn + " Re-run with --yes to proceed, or with --dry-run to inspect.")


def _apply_method(
    r: ForgetRequest, planned: PlannedForget, run: Any, records: _LazyRecords
) -> tuple[AmnesiaModel, MethodResult]:
    """The method, on a private copy of the parent, inside the forget run: the child model and what it did."""
    import mlflow
    from mlflow.entities import LoggedModelInput

    from ..keys import hash_rows
    from ..unlearn import ForgetContext, get_method

    plan, mv, am = planned.plan, planned.version, planned.model
    run_id = run.info.run_id
    store_base = r.store_uri or am.info.store_uri
    mlflow.log_params(
        {
            "model_name": r.model_name,
            "parent_version": mv.version,
            "method": r.method,
            "repair": r.repair,
            "repair_epochs": r.repair_epochs,
            "n_records": plan.n_records,
            "max_step_share": r.max_step_share,
            "epochs": r.method_epochs or "",
            "copies": r.copies,
            "received": r.received or "",
        }
    )
    mlflow.set_tags(
        {
            TAG_ROLE: "forget",
            registry.TAG_REQUEST: plan.request_hash,
            TAG_MODEL_NAME: r.model_name,  # `requests` finds the run if it dies with a recorded phase
            TAG_OWNER: f"{socket.gethostname()}:{os.getpid()}",
        }
    )
    if mv.model_id:
        mlflow.MlflowClient().log_inputs(run_id, models=[LoggedModelInput(mv.model_id)])
    child = AmnesiaModel(
        module=copy.deepcopy(am.module),
        arch=am.arch,
        info=am.info.copy(),
        segments=list(am.segments),
        rolled_back=am.rolled_back,
        forgotten=am.forgotten,
        example=am.example,
    )
    m = get_method(r.method)
    ctx = ForgetContext(
        model=child,
        key=planned.key,
        target_hashes=planned.target_hashes,
        steps=plan.steps,
        load_records=records,
        run_id=run_id,
        phase_base=lambda: _recorded_phase(run, store_base),
        options=m.Options.of(r.method_options()),
        on_epoch=None if r.on_epoch is None else _epoch_logger(r.on_epoch, child.module),
    )
    result = m.apply(ctx)
    if result.replace_segments is not None:
        child.segments = list(result.replace_segments)
        child.rolled_back = np.zeros(0, np.int64)
    else:
        child.segments = list(am.segments) + result.new_segments
        child.rolled_back = np.union1d(am.rolled_back, result.rolled_back).astype(np.int64)
    child.forgotten = np.concatenate([hash_rows(am.forgotten), hash_rows(planned.target_hashes)])
    return child, result


def _recorded_phase(run: Any, store_base: str | None) -> str:
    """The base of the phase a method records (relabel, finetune repair, retrain), tagged on the run
    before the method writes to it: a forget killed before it registers leaves a store that
    `requests` lists and `purge --request` deletes (relabel's deltas are computed on the records)."""
    import mlflow

    from ..mlflow.runs import phase_base
    from ..recording.phase import Phase

    base = phase_base(run.info.artifact_uri, run.info.run_id, store_base)
    mlflow.MlflowClient().set_tag(run.info.run_id, TAG_STORE, Phase(base).deltas_url)
    return base


class _LazyRecords:
    """The version's training data, rebuilt once per forget when something first needs it (a
    rollback needs none); the plan's, when ``--class`` rebuilt it already."""

    def __init__(self, planned: PlannedForget, data_root: str | None) -> None:
        self._records, self._spec, self._root = planned.records, planned.model.info.dataset or {}, data_root

    def __call__(self) -> Any:
        if self._records is None:
            from ..learning.data import rebuild

            self._records = rebuild(self._spec, root=self._root)
        return self._records


def _audit(
    r: ForgetRequest,
    planned: PlannedForget,
    child: AmnesiaModel,
    result: MethodResult,
    records: _LazyRecords,
    t0: float,
) -> dict:
    """Accuracy and privacy figures of the child (logged on the forget run); the audit fails the forget."""
    import mlflow

    from .. import audit as audit_lib
    from ..audit.privacy import SETTINGS_TAG, AuditSettings
    from ..learning.data import Split
    from .train import pool_exclusion

    plan, am, key = planned.plan, planned.model, planned.key
    recs = records()
    sp = Split.from_json(am.info.split or {}, recs)
    fidx = audit_lib.forgotten_positions(recs, sp.train, planned.target_hashes, key)
    all_idx = audit_lib.forgotten_positions(recs, sp.train, child.forgotten, key)
    ulira = _ulira_request(r, key, am.module) if r.audit else None
    # the shadow pool leaves out the records of requests whose shadow models were purged
    exclusion = pool_exclusion(r.model_name, recs, sp, key) if r.audit else None
    with tempfile.TemporaryDirectory() as tmp:
        metrics = audit_lib.full_audit(
            child.module,
            recs,
            sp,
            fidx,
            all_idx,
            arch_spec=child.arch,
            recipe=child.info.recipe or {},
            privacy=r.audit,
            settings=r.audit_settings,
            artifact_dir=tmp,
            parent_module=am.module,  # the matched comparison: the same records under the parent
            key=key,
            ulira=ulira,
            exclusion=exclusion,
            retained=r.audit,  # --no-audit: the retained records are the audit's (the longest pass)
        )
        if os.path.exists(f"{tmp}/inversion.png"):  # an audit that inverted (AuditSettings.inversion)
            mlflow.log_artifact(f"{tmp}/inversion.png", "audit")
        mlflow.set_tag(
            SETTINGS_TAG,
            (r.audit_settings or AuditSettings()).fingerprint(
                recs.spec, recs.x.shape[1:], privacy=r.audit, forgot=len(fidx) > 0, retained=r.audit
            ),
        )
        if r.audit:
            if len(fidx):
                mlflow.log_artifact(f"{tmp}/{audit_lib.PER_RECORD_ARTIFACT}", "audit")
        if ulira is not None and ulira.result is not None:
            from ..audit.ulira import write_per_record

            mlflow.log_artifact(write_per_record(ulira.result, f"{tmp}/ulira.json"), "audit")
    metrics.update(result.metrics)
    metrics.update(
        {
            "forget.seconds": time.monotonic() - t0,
            "steps.rolled_back": float(len(result.rolled_back)),
            "steps.share": plan.share,
        }
    )
    return metrics  # logged by _register, linked to the child's logged model and their datasets


def _ulira_request(r: ForgetRequest, key: bytes, parent):
    """How this request unlearned, for U-LiRA on the shadow pool (audit/ulira.py)."""
    from ..audit.ulira import UliraRequest, UnlearnSpec

    spec = UnlearnSpec.of(
        {
            "method": r.method,
            "repair": r.repair,
            "repair_epochs": r.repair_epochs,
            "epochs": r.method_epochs,
            "copies": r.copies,
        }
    )
    return UliraRequest(spec=spec, key=key, parent=parent)


def _register(
    r: ForgetRequest, planned: PlannedForget, child: AmnesiaModel, result: MethodResult, run_id: str, metrics: dict
) -> int:
    """Log the child (as ``<model>-v<N>``, its figures linked to it and to their datasets) and
    register it as the one child of its parent, its lineage tags in the same call."""
    import mlflow

    from ..mlflow.logged import evaluation_datasets, log_linked_metrics, logged_model_name, next_version

    plan, mv, am = planned.plan, planned.version, planned.model
    mlflow.set_tag(
        TAG_PLAN,
        json.dumps(
            {  # what the description needs, should a kill come after registering
                "format": 1,
                "steps_seen": plan.n_steps,
                "total_steps": plan.total_steps,
                "rolled_back_before": plan.rolled_back_before,
                "n_already_forgotten": plan.n_already_forgotten,
                "summary": result.summary,
            },
            sort_keys=True,
        ),
    )
    child.info.history = list(am.info.history) + [
        {
            "method": r.method,
            "repair": r.repair,
            "parent_version": int(mv.version),
            "run_id": run_id,
            "n_records": plan.n_records,
            "steps_rolled_back": int(len(result.rolled_back)),
            "request": plan.request_hash,
        }
    ]
    # Registration is the last step (docs/RELIABILITY.md): log_model returns once every artifact
    # is uploaded; register_child then creates the version with its lineage tags in one call and
    # settles a race with a concurrent forget of the same parent (one child survives).
    n = next_version(r.model_name)  # for the name only: register_child settles the number
    info = log_model(
        child,
        name=logged_model_name(r.model_name, n),
        tags={
            "mlflow.note.content": (
                f"{r.model_name} v{n}: forgets {plan.n_records} record(s) from v{mv.version} with method "
                f"{r.method}{f' + repair {r.repair}' if r.repair != 'none' else ''} (request "
                f"{plan.request_hash[:16]}, a keyed hash; no record id is stored)"
            ),
            registry.TAG_PARENT: str(mv.version),
            registry.TAG_METHOD: r.method,
            registry.TAG_N_RECORDS: str(plan.n_records),
            registry.TAG_REQUEST: plan.request_hash,
        },
    )
    log_linked_metrics(metrics, info.model_id, evaluation_datasets(child.info, plan.request_hash))
    new_mv = register_child(
        r.model_name,
        info.model_uri,
        parent=int(mv.version),
        run_id=run_id,
        tags={
            registry.TAG_METHOD: r.method,
            registry.TAG_N_RECORDS: plan.n_records,
            registry.TAG_STEPS: len(result.rolled_back),
            registry.TAG_REQUEST: plan.request_hash,
            registry.TAG_REPAIR: r.repair,
            TAG_FLAVOR_FORMAT: "1",
            TAG_N_RECORDS_TOTAL: len(child.forgotten),
        },
    )
    return int(new_mv.version)


def _complete_earlier(plan: ForgetPlan, mv, *, set_alias: str | None, purge: bool, dry_run: bool) -> ForgetResult:
    """This request registered ``mv`` before and was stopped: finish it, or say it is complete."""
    name, v = mv.name, int(mv.version)
    left = registration_left(name, v, set_alias=set_alias, purge=purge)
    if not left:
        raise InputError(plan.refusal or f"{name} v{v} is complete; nothing to do")
    say(
        f"{name} v{v} was registered by this same request earlier, by a forget stopped before it finished: "
        f"{'would complete' if dry_run else 'completing'} {', '.join(left)}"
    )
    if dry_run:
        return ForgetResult(plan, completed=left)
    done = complete_registration(name, v, set_alias=set_alias, purge=purge)
    return ForgetResult(plan, v, mv.run_id, registry.run_metrics(mv.run_id), completed=done.done, purge=done.purge)


def registration_left(name: str, version: int, *, set_alias: str | None = None, purge: bool = False) -> list[str]:
    """The steps after registration that ``version`` (a forget's child) still lacks, in order:
    ``description``, ``alias NAME``, ``superseded tag on vP``, ``banner on vP``, ``purge of vP``. Reads only."""
    c = registry.client()
    mv = c.get_model_version(name, str(version))
    parent = str((mv.tags or {})[registry.TAG_PARENT])
    pmv = c.get_model_version(name, parent)
    left = []
    if not (mv.description or "").strip():
        left.append("description")
    if set_alias and str(dict(getattr(c.get_registered_model(name), "aliases", {}) or {}).get(set_alias)) != str(
        version
    ):
        left.append(f"alias {set_alias}")
    if (pmv.tags or {}).get(registry.TAG_SUPERSEDED) != str(version):
        left.append(f"superseded tag on v{parent}")
    purging = TAG_PURGED in (pmv.tags or {}) or TAG_PURGE_STARTED in (pmv.tags or {})  # purge's note replaces it
    if not purging and not (pmv.description or "").startswith(_banner(mv)):
        left.append(f"banner on v{parent}")
    if not all(ledger.exists(e) for e in ledger_entries(mv)):
        left.append("ledger entry")
    if purge and TAG_PURGED not in (pmv.tags or {}):
        left.append(f"purge of v{parent}")
    return left


def _banner(child) -> str:
    """The banner a forget's ``child`` puts at the top of its parent's description."""
    tags = child.tags or {}
    return registry.superseded_banner(
        child.name, tags[registry.TAG_PARENT], child.version, tags.get(registry.TAG_N_RECORDS, "?")
    )


def complete_registration(name: str, version: int, *, set_alias: str | None = None, purge: bool = False) -> Completion:
    """Everything a forget does after registering its child ``version``, each step skipped when
    done already, so a forget killed between any two of them is finished by running this again:
    the description (from the version's tags and its run: figures, ``amnesia.forget_plan``), the
    alias ``set_alias`` moved to it, the parent's ``amnesia.superseded_by`` tag, the banner atop the
    parent's description (:func:`registry.superseded_banner`), and with
    ``purge`` the parent's purge (itself idempotent). Returns what it did."""
    c = registry.client()
    out = Completion()
    left = registration_left(name, version, set_alias=set_alias, purge=purge)
    mv = c.get_model_version(name, str(version))
    parent = int(mv.tags[registry.TAG_PARENT])
    if "description" in left:
        verdict = registry.version_verdict(mv)
        for k, v in registry.verdict_tags(verdict).items():  # before the picture, which shows them
            c.set_model_version_tag(name, str(version), k, v)
        registry.annotate_version(mv, tags={}, description=_description_of(mv, verdict), picture=lineage.picture_of(mv))
        out.done.append("description")
    if set_alias and f"alias {set_alias}" in left:
        c.set_registered_model_alias(name, set_alias, str(version))
        out.done.append(f"alias {set_alias}")
    if f"superseded tag on v{parent}" in left:
        c.set_model_version_tag(name, str(parent), registry.TAG_SUPERSEDED, str(version))
        out.done.append(f"superseded tag on v{parent}")
    if f"banner on v{parent}" in left:  # idempotent: an older banner is replaced, never stacked
        desc = c.get_model_version(name, str(parent)).description or ""
        c.update_model_version(name, str(parent), description=registry.with_banner(desc, _banner(mv)))
        out.done.append(f"banner on v{parent}")
    if "ledger entry" in left:
        for e in ledger_entries(mv):
            ledger.write(e)
        out.done.append("ledger entry")
    if f"purge of v{parent}" in left:
        from .purge import purge as run_purge

        try:
            out.purge = run_purge(name, [parent], yes=True)
        except AmnesiaError as e:
            e.args = (f"v{version} is registered, but v{parent} was not purged: {e}",)
            raise
        out.done.append(f"purge of v{parent}")
    return out


def _enter_request(r: ForgetRequest, planned: PlannedForget) -> None:
    """The request in the erasure ledger (its records' keyed hashes, the date received), before
    the method runs: from now on a new ``train`` of this model or data set leaves them out."""
    from ..keys import hash_rows

    am = planned.model
    ledger.write(
        ledger.request_entry(
            model=r.model_name,
            request=planned.plan.request_hash,
            hashes=hash_rows(planned.target_hashes),
            key_id=am.info.key_id,
            received=r.received or _today(),
            dataset=am.info.dataset,
        )
    )


def _today() -> str:
    import datetime as dt

    return dt.date.today().isoformat()


def ledger_entries(mv) -> list[ledger.Entry]:
    """The ledger entries a forget's child ``mv`` stands for: its request (the records' keyed hashes,
    the last ``amnesia.n_records`` of its ``forgotten.npy``; the date received, from its run) and the
    fact that it forgot them. Read from the registry, so a re-run rebuilds them exactly."""
    import datetime as dt

    from ..keys import hash_rows
    from ..mlflow.artifacts import ArtifactFiles, repo_at
    from ..version.files import VersionFiles

    t = mv.tags or {}
    name, v = mv.name, int(mv.version)
    files = VersionFiles(
        ArtifactFiles(repo_at(registry.client().get_model_version_download_uri(name, str(v)))), f"{name} v{v}"
    )
    info = files.info()
    if info is None:
        raise InputError(f"{name} v{v} has no data/amnesia.json: it is not an mlflow_amnesia version")
    n = int(t.get(registry.TAG_N_RECORDS, 0) or 0)
    forgotten = hash_rows(files.forgotten())
    run = registry.client().get_run(mv.run_id) if mv.run_id else None
    received = (run.data.params.get("received") if run else None) or dt.datetime.fromtimestamp(
        ((run.info.start_time if run else mv.creation_timestamp) or 0) / 1000, dt.timezone.utc
    ).date().isoformat()
    request = str(t.get(registry.TAG_REQUEST, ""))
    return [
        ledger.request_entry(
            model=name,
            request=request,
            hashes=forgotten[len(forgotten) - n :] if n else forgotten[:0],
            key_id=info.key_id,
            received=received,
            dataset=info.dataset,
        ),
        ledger.Entry(
            "forgotten",
            name,
            {
                "request": request,
                "version": v,
                "parent": int(t[registry.TAG_PARENT]),
                "method": t.get(registry.TAG_METHOD),
                "repair": t.get(registry.TAG_REPAIR),
                "steps_rolled_back": int(t.get(registry.TAG_STEPS, 0) or 0),
                "run_id": mv.run_id,
                "registered": dt.datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, dt.timezone.utc)
                .replace(microsecond=0)
                .isoformat(),
            },
        ),
    ]


def _description_of(mv, verdict=None) -> str:
    """The description of a forget's child, from what the registry and its run hold."""
    plan = registered_plan(mv)
    summary = _saved_plan(mv).get("summary") or f"{plan.n_steps} step(s) rolled back"
    parent = registry.client().get_model_version(mv.name, str(plan.parent_version))
    metrics = registry.run_metrics(mv.run_id)
    return describe_forget(
        mv.name,
        int(mv.version),
        plan,
        summary,
        metrics,
        registry.run_metrics(parent.run_id),
        verdict=verdict if verdict is not None else registry.version_verdict(mv, metrics),
    )


MATCHED_NOTE = (
    "The parent's column is measured in this version's own audit on the same records: the forgotten records "
    "against the same held-out non-members with the same shadow models (`audit.parent.*`), and accuracy on "
    "the same retained, forgotten and held-out records (`acc.parent.*`). Intervals are 95%; `n=` is members + "
    "non-members. The verdict rests on LiRA (and U-LiRA where measured); `audit.mia.*` is the paper's attack, "
    "shown to compare with the paper."
)


def describe_forget(
    name: str, version: int, plan: ForgetPlan, summary: str, metrics: dict, parent: dict, *, verdict=None
) -> str:
    """The child's description: the verdict first, the summary, then the matched figures table
    (``parent``: the parent's own run's figures, of which only those on the same held-out records
    are used, :func:`mlflow_amnesia.mlflow.registry.matched_parent`)."""
    head = registry.verdict_line(verdict) + "\n\n" if verdict is not None else ""
    return (
        head + f"**{name} v{version}** forgets {plan.n_records} record(s) from v{plan.parent_version} "
        f"(request `{plan.request_hash[:16]}…`, a keyed hash: record ids are never stored) "
        f"with method `{plan.method}`: {summary}. The records were seen by {plan.n_steps} of "
        f"{plan.total_steps} recorded steps ({plan.share:.2%}).\n\n"
        + MATCHED_NOTE
        + "\n\n"
        + registry.forget_table(version, plan.parent_version, metrics, parent)
    )


def _epoch_logger(on_epoch, module):
    """ForgetContext's hook: call the user's ``on_epoch`` and log what it returns at step=epoch."""
    import mlflow

    def hook(epoch: int) -> None:
        extra = on_epoch(epoch, module)
        if extra:
            mlflow.log_metrics({k: float(v) for k, v in extra.items()}, step=int(epoch))

    return hook
