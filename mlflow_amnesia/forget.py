"""The `forget` job: honour a deletion request by registering a new model version.

resolve version -> load (no chunk read) -> ids -> keyed hashes -> steps that saw them (minus
steps already rolled back along the lineage) -> share check -> method (+ repair) -> accuracy
audit -> log model -> register v(n+1) with lineage tags and description. Nothing is registered
unless every step before registration succeeded.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence

import numpy as np

from . import registry
from .concurrency import check_forkable, one_forget_per_model, register_child
from .errors import InputError, ManifestFormatError, RecordKeyError, StoreError
from .flavor import AmnesiaModel, load_model, log_model
from .progress import info as say

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_STEP_SHARE = 0.01  # the paper: rolling back more than ~1% of batches costs accuracy


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

    @property
    def share(self) -> float:
        return len(self.steps) / self.total_steps if self.total_steps else 0.0

    def describe(self) -> str:
        s = (f"{self.n_records} record(s) to forget from {self.model_name} v{self.parent_version}: "
             f"they were seen by {len(self.steps)} of {self.total_steps} recorded steps ({self.share:.2%})")
        if self.n_already_forgotten:
            s += f"; {self.n_already_forgotten} more were already forgotten along this lineage and are skipped"
        return s


@dataclass
class ForgetResult:
    plan: ForgetPlan
    version: Optional[int] = None  # None for a dry run
    run_id: Optional[str] = None
    metrics: dict = field(default_factory=dict)


def _load_ids(records_file: Optional[str], ids: Optional[Sequence[str]]) -> list[str]:
    from .ids import read_ids_file

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
    records_file: Optional[str] = None,
    ids: Optional[Sequence[str]] = None,
    cls: Optional[str] = None,
    version: Optional[int] = None,
    alias: Optional[str] = None,
    method: str = "amnesiac",
    data_root: Optional[str] = None,
):
    """Resolve the version and the records; return (plan, mv, model, key, target hashes, records or None)."""
    from .data import class_records, rebuild
    from .keys import hash_ids, hash_request, key_id, load_key
    from .unlearn import get_method

    get_method(method)  # unknown method: fail before any work
    if not records_file and not ids and cls is None:
        raise InputError("nothing to forget: give --records FILE (one record id per line) and/or --class C")
    mv = registry.resolve_version(model_name, version=version, alias=alias)
    check_forkable(mv)  # superseded, already has a child, or lost a concurrent forget: refuse
    try:
        am = load_model(registry.model_uri(mv))
    except InputError as e:  # another flavor, a newer format: name the version, not a temp path only
        raise InputError(f"{model_name} v{mv.version} cannot be forgotten from: {e}") from None
    for seg in am.segments:  # a copied manifest this version cannot read fails here, before any run starts
        try:
            seg.open_store()
        except ManifestFormatError as e:
            raise ManifestFormatError(f"{model_name} v{mv.version}, {seg.role} segment (store {seg.store_url}): {e}") from None
        except StoreError:
            pass  # e.g. no fsspec driver here: only methods that read chunks need the store itself
    try:
        key = load_key(create=False)
    except RecordKeyError as e:
        raise RecordKeyError(f"{e} The model {model_name} v{mv.version} was built with key id {am.info.get('key_id')}.") from None
    if am.info.get("key_id") and am.info["key_id"] != key_id(key):
        raise RecordKeyError(
            f"{model_name} v{mv.version} was trained with record key id {am.info['key_id']}, but the current key is "
            f"{key_id(key)}: restore that key (MLFLOW_AMNESIA_KEY or the key file) to forget from this model."
        )
    wanted = _load_ids(records_file, ids)
    records = None
    if cls is not None:
        from .data import Split

        records = rebuild(am.info["dataset"], root=data_root)
        sp = Split.from_json(am.info["split"], records)
        c: object = int(cls) if str(cls).isdigit() else cls
        pos = np.intersect1d(class_records(records, c), sp.train)
        if len(pos) == 0:
            raise InputError(f"class {cls!r} has no training records in {model_name} v{mv.version}")
        wanted = list(dict.fromkeys(wanted + [str(records.ids[i]) for i in pos]))

    hashes = hash_ids(wanted, key)
    hv = np.ascontiguousarray(hashes).view("V16").ravel()
    already = np.isin(hv, np.ascontiguousarray(am.forgotten, dtype=np.uint8).view("V16").ravel())
    train_seg = next(s for s in am.segments if s.role in ("train", "retrain"))  # a retrained version trained anew
    train_index = train_seg.open_index(key)
    known = train_index.contains(wanted)
    unknown = [w for w, k, a in zip(wanted, known, already) if not k and not a]
    if unknown:
        from .errors import UnknownRecordsError

        err = UnknownRecordsError(unknown, where=f"the training records of {model_name} v{mv.version}", total=len(wanted))
        if len(unknown) == len(wanted) and len(wanted) > 1:  # not one matches: most likely another model's request
            data = (am.info.get("dataset") or {}).get("spec", "?")
            err.args = (f"{err} None of them is: {model_name} was trained on data set {data!r}; is this the request "
                        "for another model?",)
        raise err
    todo = ~already
    if not todo.any():
        raise InputError(f"all {len(wanted)} record(s) were already forgotten along the lineage of {model_name} v{mv.version}; nothing to do")
    target_ids = [w for w, t in zip(wanted, todo) if t]
    target_hashes = hashes[todo]
    steps = [train_index.steps_for(target_ids)]
    steps += [s.open_index(key).steps_for(target_ids, strict=False)
              for s in am.segments if s is not train_seg and s.n_steps]
    all_steps = np.setdiff1d(np.unique(np.concatenate(steps)).astype(np.int64), am.rolled_back)
    plan = ForgetPlan(
        model_name=model_name, parent_version=int(mv.version), method=method, n_records=len(target_ids),
        n_already_forgotten=int(already.sum()), steps=all_steps, total_steps=am.total_steps,
        request_hash=hash_request(target_ids, key),
    )
    return plan, mv, am, key, target_hashes, records


@one_forget_per_model  # forgets of one model on one machine queue; across machines, register_child decides
def forget(
    model_name: str,
    *,
    records_file: Optional[str] = None,
    ids: Optional[Sequence[str]] = None,
    cls: Optional[str] = None,
    version: Optional[int] = None,
    alias: Optional[str] = None,
    method: str = "amnesiac",
    repair: Optional[str] = None,
    repair_epochs: int = 1,
    repair_lr: Optional[float] = None,
    method_epochs: Optional[int] = None,
    copies: int = 4,
    dry_run: bool = False,
    yes: bool = False,
    max_step_share: float = DEFAULT_MAX_STEP_SHARE,
    set_alias: Optional[str] = None,
    store_uri: Optional[str] = None,
    data_root: Optional[str] = None,
    confirm: Optional[Callable[[str], bool]] = None,
    audit: bool = True,
    audit_settings=None,
    on_epoch: Optional[Callable[[int, "torch.nn.Module"], Optional[Mapping[str, float]]]] = None,
) -> ForgetResult:
    """Forget records from a registered model; returns the new version (or the plan, for a dry run).

    ``confirm`` is asked when the steps to roll back exceed ``max_step_share`` of all steps and
    ``yes`` is False; without it such a request is refused.

    ``on_epoch(epoch, module)`` is called with the model being built at each moment a curve
    needs: ``epoch`` 0 right after a rollback (amnesiac), k after the k-th epoch the method or
    its repair trains (a replay counts as one). The metrics it returns are logged on the forget
    run at ``step=epoch``, so the MLflow UI plots them per epoch. Its time counts in the
    method's ``unlearn.seconds`` / ``repair.seconds``.
    """
    import mlflow
    from mlflow.entities import LoggedModelInput

    from .audit import forgotten_positions, full_audit
    from .data import Split, rebuild
    from .locations import phase_base, start_run
    from .tracking import check_tracking_store
    from .unlearn import ForgetContext, get_method
    from .unlearn.base import check_repair
    from .validation import check_forget_options

    check_forget_options(repair_lr=repair_lr, store_uri=store_uri)  # before any run or rollback
    check_tracking_store(create=False)  # a missing database is an error, never created
    repair = check_repair(repair)
    plan, mv, am, key, target_hashes, records = plan_forget(
        model_name, records_file=records_file, ids=ids, cls=cls, version=version, alias=alias,
        method=method, data_root=data_root)
    say(plan.describe())
    if len(plan.steps) == 0:
        say("no recorded step saw these records that is not already rolled back")
    m = get_method(method)
    if m.rolls_back and plan.share > max_step_share:
        warn = (f"rolling back {plan.share:.2%} of the steps exceeds --max-step-share {max_step_share:.2%}: the paper "
                "finds that rolling back more than ~1% of batches costs accuracy that then needs repair "
                "(--repair finetune) or another method.")
        say("WARNING: " + warn)
        if not dry_run and not yes:
            if confirm is None or not confirm("Roll back anyway?"):
                raise InputError(warn + " Re-run with --yes to proceed, or with --dry-run to inspect.")
    if dry_run:
        say(f"dry run: would register {model_name} v(next) with method {method}" + (f" and repair {repair}" if repair != "none" else ""))
        return ForgetResult(plan)

    cache: dict = {}

    def load_records():
        if "r" not in cache:
            cache["r"] = records if records is not None else rebuild(am.info["dataset"], root=data_root)
        return cache["r"]

    parent_run = mlflow.MlflowClient().get_run(mv.run_id) if mv.run_id else None
    t0 = time.monotonic()
    with start_run(f"forget-{model_name}-v{mv.version}", experiment_id=parent_run.info.experiment_id if parent_run else None) as run:
        run_id = run.info.run_id
        store_base = store_uri or am.info.get("store_uri")
        mlflow.log_params({"model_name": model_name, "parent_version": mv.version, "method": method,
                           "repair": repair, "repair_epochs": repair_epochs, "n_records": plan.n_records,
                           "max_step_share": max_step_share, "epochs": method_epochs or "", "copies": copies})
        mlflow.set_tags({"amnesia.role": "forget", registry.TAG_REQUEST: plan.request_hash})
        if mv.model_id:
            mlflow.MlflowClient().log_inputs(run_id, models=[LoggedModelInput(mv.model_id)])
        child = AmnesiaModel(module=copy.deepcopy(am.module), arch=am.arch, info=copy.deepcopy(am.info),
                             segments=list(am.segments), rolled_back=am.rolled_back, forgotten=am.forgotten)
        ctx = ForgetContext(
            model=child, key=key, target_hashes=target_hashes, steps=plan.steps, load_records=load_records,
            phase_base=lambda: phase_base(run.info.artifact_uri, run_id, store_base), run_id=run_id,
            options={"repair": repair, "repair_epochs": repair_epochs, "repair_lr": repair_lr,
                     "epochs": method_epochs, "copies": copies, "cls": cls},
            on_epoch=None if on_epoch is None else _epoch_logger(on_epoch, child.module),
        )
        result = m.apply(ctx)
        if result.replace_segments is not None:
            child.segments = list(result.replace_segments)
            child.rolled_back = np.zeros(0, np.int64)
        else:
            child.segments = list(am.segments) + result.new_segments
            child.rolled_back = np.union1d(am.rolled_back, result.rolled_back).astype(np.int64)
        child.forgotten = np.concatenate([am.forgotten.reshape(-1, 16), target_hashes.reshape(-1, 16)])

        recs = load_records()
        sp = Split.from_json(am.info["split"], recs)
        fidx = forgotten_positions(recs, sp.train, target_hashes, key)
        all_idx = forgotten_positions(recs, sp.train, child.forgotten, key)
        with tempfile.TemporaryDirectory() as tmp:
            metrics = full_audit(child.module, recs, sp, fidx, all_idx, arch_spec=child.arch,
                                 recipe=child.info["recipe"], privacy=audit, settings=audit_settings, artifact_dir=tmp)
            if audit:
                mlflow.log_artifact(f"{tmp}/inversion.png", "audit")
        metrics.update(result.metrics)
        metrics.update({"forget.seconds": time.monotonic() - t0, "steps.rolled_back": float(len(result.rolled_back)),
                        "steps.share": plan.share})
        mlflow.log_metrics(metrics)
        child.info["history"] = list(am.info.get("history", [])) + [{
            "method": method, "repair": repair, "parent_version": int(mv.version), "run_id": run_id,
            "n_records": plan.n_records, "steps_rolled_back": int(len(result.rolled_back)),
            "request": plan.request_hash,
        }]
        # Registration is the last step (docs/RELIABILITY.md): log_model returns once every artifact
        # is uploaded; register_child then creates the version with its lineage tags in one call and
        # settles a race with a concurrent forget of the same parent (one child survives).
        info = log_model(child, name="model")
        new_mv = register_child(model_name, info.model_uri, parent=int(mv.version), run_id=run_id, tags={
            registry.TAG_METHOD: method, registry.TAG_N_RECORDS: plan.n_records,
            registry.TAG_STEPS: len(result.rolled_back), registry.TAG_REQUEST: plan.request_hash,
            registry.TAG_REPAIR: repair, registry.TAG_FORMAT: "1", "amnesia.n_records_total": len(child.forgotten),
        })
        new_version = int(new_mv.version)
        parent_metrics = registry.run_metrics(mv.run_id)
        registry.annotate_version(
            new_mv, tags={},
            description=describe_forget(model_name, new_version, plan, result.summary, metrics, parent_metrics),
            aliases=(set_alias,) if set_alias else (),
        )
        registry.client().set_model_version_tag(model_name, str(mv.version), registry.TAG_SUPERSEDED, str(new_version))
    say(f"registered {model_name} version {new_version} (run {run_id}): {result.summary}")
    return ForgetResult(plan, new_version, run_id, metrics)


def describe_forget(name: str, version: int, plan: ForgetPlan, summary: str, metrics: dict, parent: dict) -> str:
    return (
        f"**{name} v{version}** forgets {plan.n_records} record(s) from v{plan.parent_version} "
        f"(request `{plan.request_hash[:16]}…`, a keyed hash: record ids are never stored) "
        f"with method `{plan.method}`: {summary}. The records were seen by {len(plan.steps)} of "
        f"{plan.total_steps} recorded steps ({plan.share:.2%}).\n\n"
        + registry.metrics_table({f"v{version}": metrics, f"v{plan.parent_version} (parent)": parent})
    )


def _epoch_logger(on_epoch, module):
    """ForgetContext's hook: call the user's ``on_epoch`` and log what it returns at step=epoch."""
    import mlflow

    def hook(epoch: int) -> None:
        extra = on_epoch(epoch, module)
        if extra:
            mlflow.log_metrics({k: float(v) for k, v in extra.items()}, step=int(epoch))

    return hook
