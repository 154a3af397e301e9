"""The `train` job: train a model while recording every step, register version 1.

Python API: :func:`train`. CLI: ``mlflow-amnesia train`` and ``mlflow run . -e train``.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..audit import full_audit
from ..audit.privacy import SETTINGS_TAG, AuditSettings, PoolExclusion
from ..audit.verdict import estimate_from_metrics, train_verdict
from ..learning.training import EpochResult, Recipe, epoch_orders, evaluate, make_optimizer, record_phase
from ..mlflow import registry
from ..mlflow.flavor import AmnesiaModel, log_model
from ..mlflow.ledger import SHADOWS_PURGED
from ..mlflow.logged import evaluation_datasets, log_linked_metrics, logged_model_name, next_version
from ..mlflow.runs import check_store_location, log_params_once, phase_base, start_run
from ..progress import info as say
from ..recording.phase import Phase
from ..tags import (
    TAG_ARCH,
    TAG_CODEC,
    TAG_DATASET,
    TAG_EXCLUDED,
    TAG_FLAVOR_FORMAT,
    TAG_MODEL_NAME,
    TAG_OWNER,
    TAG_ROLE,
    TAG_STEPS_TOTAL,
    TAG_STORE,
)
from ..version.info import VersionInfo


@dataclass
class TrainResult:
    model_name: str
    version: int
    run_id: str
    store_url: str
    steps: int
    metrics: dict


def default_model_name(dataset: str, arch: str) -> str:
    """``digits-resnet``, ``cifar100-resnet``, ``mnist-cnn``, ``idx-t10k-resnet`` ..."""
    base = dataset
    if dataset.startswith("idx:"):
        base = "idx-" + dataset[4:].rstrip("/").rsplit("/", 1)[-1]
    short = "resnet" if arch.startswith("resnet") else arch
    return f"{base}-{short}".replace(":", "-")


def open_records(dataset: str, data_root: str | None):
    from ..learning.data import load_dataset

    return load_dataset(dataset, root=data_root)


def train(
    *,
    dataset: str = "digits",
    arch: str = "resnet18",
    epochs: int = 4,
    batch_size: int = 128,
    lr: float = 0.02,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    seed: int = 0,
    codec: str | None = None,
    store_uri: str | None = None,
    model_name: str | None = None,
    data_root: str | None = None,
    holdout_fraction: float = 0.2,
    audit: bool = True,
    audit_settings=None,
) -> TrainResult:
    """Train ``arch`` on ``dataset`` with every step recorded; register version 1 (or n+1)."""
    import mlflow

    from ..keys import key_id, load_key
    from ..learning.data import ORDER_KEYED, example_images
    from ..learning.data import split as make_split
    from ..learning.models import build_model, default_arch_spec
    from ..mlflow.tracking import check_tracking_store
    from ..recording.store import DEFAULT_CODEC
    from .validation import check_train_options

    check_train_options(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        codec=codec,
        store_uri=store_uri,
        model_name=model_name,
    )  # before any database, run or file exists
    check_tracking_store(create=True)  # a new local sqlite database is created whole, or not at all
    check_store_location(store_uri)  # behind an artifact proxy without --store-uri: refused before a run exists
    codec = codec or DEFAULT_CODEC
    recipe = Recipe(
        epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay, seed=seed
    )
    model_name = model_name or default_model_name(dataset, arch)

    say(f"loading data set {dataset!r}")
    records = open_records(dataset, data_root)
    sp = make_split(records, seed=seed, holdout_fraction=holdout_fraction)
    torch.manual_seed(seed)
    arch_spec = default_arch_spec(arch, records)
    model = build_model(arch_spec)
    optimizer = make_optimizer(model, recipe)
    key = load_key(create=True)
    train_idx = np.asarray(sp.train, dtype=np.int64)
    hold_idx = np.asarray(sp.holdout, dtype=np.int64)
    excluded = ledger_exclusion(model_name, records, train_idx, key)
    if excluded.n:
        train_idx = train_idx[~np.isin(train_idx, excluded.positions)]
        say(excluded.describe(model_name))
    orders = epoch_orders(train_idx, seed, epochs, key=key)  # keyed: not recomputable from the seed

    with start_run(f"train-{model_name}") as run:
        run_id = run.info.run_id
        phase = Phase(phase_base(run.info.artifact_uri, run_id, store_uri))
        store_url = phase.deltas_url
        log_params_once(
            {
                "dataset": dataset,
                "arch": arch,
                **recipe.to_dict(),
                "codec": codec,
                "store_uri": store_uri or "",
                "model_name": model_name,
                "n_train": len(train_idx),
                "n_holdout": len(hold_idx),
            }
        )
        mlflow.set_tags(
            {
                TAG_ROLE: "train",
                TAG_STORE: store_url,
                TAG_CODEC: codec,
                TAG_MODEL_NAME: model_name,
                TAG_OWNER: f"{socket.gethostname()}:{os.getpid()}",
                TAG_EXCLUDED: str(excluded.n),
            }
        )
        if excluded.n:  # which requests this run honours, before any step: `requests` reads it if the run dies
            mlflow.log_dict(excluded.to_dict(), EXCLUDED_FILE)
        n_params = sum(p.numel() for p in model.parameters())
        say(
            f"{arch} with {n_params:,} parameters; {len(train_idx)} training records, "
            f"{len(hold_idx)} held out; recording every step to {store_url} (codec {codec})"
        )
        phase.save_initial_state({k: v.detach().clone() for k, v in model.state_dict().items()}, key=key)
        phase.save_batch_order(orders.astype(np.int32 if len(records.ids) < 2**31 else np.int64), key=key)

        def on_epoch(r: EpochResult) -> None:
            acc, loss = evaluate(model, records.x[hold_idx], records.y[hold_idx])
            mlflow.log_metrics(
                {
                    "train.loss": r.loss,
                    "train.acc": r.accuracy,
                    "holdout.acc": acc,
                    "holdout.loss": loss,
                    "epoch.seconds": r.seconds,
                },
                step=r.epoch,
            )
            say(
                f"epoch {r.epoch + 1}/{epochs}: loss {r.loss:.4f} train acc {r.accuracy:.4f} "
                f"held-out acc {acc:.4f} ({r.steps / max(r.seconds, 1e-9):.2f} steps/s)"
            )

        t0 = time.monotonic()
        segment = record_phase(
            model,
            optimizer,
            records.x,
            records.y,
            list(records.ids),
            orders,
            batch_size=batch_size,
            base_url=phase.base_url,
            codec=codec,
            role="train",
            key=key,
            run_id=run_id,
            on_epoch=on_epoch,
        )
        steps = segment.last_step + 1
        train_seconds = time.monotonic() - t0
        phase.save_optimizer_state(optimizer.state_dict(), key=key)

        none = np.zeros(0, np.int64)
        with tempfile.TemporaryDirectory() as tmp:
            metrics = full_audit(
                model,
                records,
                sp,
                none,
                excluded.positions,  # never trained on: neither members nor retained records
                arch_spec=arch_spec,
                recipe=recipe.to_dict(),
                privacy=audit,
                settings=audit_settings,
                artifact_dir=tmp,
                exclusion=pool_exclusion(model_name, records, sp, key) if audit else None,
            )
            if os.path.exists(f"{tmp}/inversion.png"):  # an audit that inverted (AuditSettings.inversion)
                mlflow.log_artifact(f"{tmp}/inversion.png", "audit")
            mlflow.set_tag(
                SETTINGS_TAG,
                (audit_settings or AuditSettings()).fingerprint(
                    records.spec, records.x.shape[1:], privacy=audit, forgot=False
                ),
            )
        metrics.update({"train.seconds": train_seconds, "steps.total": steps})

        am = AmnesiaModel(
            module=model,
            arch=arch_spec,
            info=VersionInfo(
                dataset=records.spec,
                split=sp.to_dict(),
                recipe=recipe.to_dict(),
                codec=codec,
                input_shape=list(records.x.shape[1:]),
                num_classes=int(records.num_classes),
                classes=[str(c) for c in records.classes],
                model_name=model_name,
                key_id=key_id(key),
                training_url=phase.training_url,
                order=ORDER_KEYED,  # the training phase's order scheme (retrain extends it)
                store_uri=store_uri,
                history=[
                    {"method": "train", "run_id": run_id, "steps": steps}
                    | ({"excluded": excluded.to_dict()} if excluded.n else {})
                ],
            ),
            segments=[segment],
            example=example_images(records, hold_idx),  # class means of held-out images, raw: no record
            forgotten=excluded.hashes,  # `records` and `forget` treat them as forgotten: they never trained it
        )
        say(f"registering model {model_name!r}")
        # Registration last, tags in the same call (docs/RELIABILITY.md): a train killed before it
        # leaves an unregistered run; re-running train starts afresh with a new run and store.
        n = next_version(model_name)  # for the logged model's name only: the registry gives the number
        info = log_model(
            am,
            name=logged_model_name(model_name, n),
            tags={
                "mlflow.note.content": (
                    f"{model_name} v{n}: trained by mlflow-amnesia on {dataset} ({len(train_idx)} records), {arch}, "
                    f"{recipe.epochs} epochs, every one of its {steps} steps recorded"
                ),
                registry.TAG_METHOD: "train",
                TAG_DATASET: dataset,
                TAG_ARCH: arch,
            },
        )
        # the figures, linked to the logged model and to the data they were measured on
        log_linked_metrics(metrics, info.model_id, evaluation_datasets(am.info))
        mv = mlflow.register_model(
            info.model_uri,
            model_name,
            tags={
                registry.TAG_METHOD: "train",
                TAG_FLAVOR_FORMAT: "1",
                TAG_STEPS_TOTAL: str(steps),
                TAG_CODEC: codec,
                TAG_DATASET: dataset,
                TAG_ARCH: arch,
                TAG_EXCLUDED: str(excluded.n),
            },
        )
        version = int(mv.version)
        verdict = train_verdict(estimate_from_metrics(metrics, "audit.lira.auc"))
        registry.annotate_version(
            mv,
            tags=registry.verdict_tags(verdict),
            description=describe_training(
                model_name, version, dataset, arch, recipe, steps, len(train_idx), metrics, store_url, verdict=verdict
            )
            + (f"\n\n{excluded.describe(model_name, markdown=True)}" if excluded.n else ""),
        )
    say(f"registered {model_name} version {version} (run {run_id}); {steps} steps recorded")
    return TrainResult(model_name, version, run_id, store_url, steps, metrics)


EXCLUDED_FILE = "ledger/excluded.json"  # on a train run: the deletion requests it left out


@dataclass
class Exclusion:
    """The training records ``train`` leaves out because the erasure ledger holds requests for them."""

    positions: np.ndarray  # int64 positions in the data set
    hashes: np.ndarray  # (n, HASH_BYTES) their keyed hashes
    requests: list[str]  # the requests' keyed hashes that matched a training record

    @property
    def n(self) -> int:
        return int(len(self.positions))

    def to_dict(self) -> dict:
        return {"records": self.n, "requests": list(self.requests)}

    def describe(self, model_name: str, *, markdown: bool = False) -> str:
        q = (lambda h: f"`{h[:16]}…`") if markdown else (lambda h: h[:16])
        shown = ", ".join(q(h) for h in self.requests[:10]) + (
            f" (and {len(self.requests) - 10} more)" if len(self.requests) > 10 else ""
        )
        return (
            f"Left out {self.n} training record(s) under {len(self.requests)} deletion request(s) in the erasure "
            f"ledger ({shown}; `mlflow-amnesia requests --model {model_name}` lists them): this version never trained on them."
        )


def ledger_exclusion(model_name: str, records, train_idx: np.ndarray, key: bytes, *, where=None) -> Exclusion:
    """The records of ``train_idx`` under a deletion request of ``model_name``'s ledger or of the data
    set's (found by its fingerprint, whatever name it was trained under). The requests' hashes must
    be under the current key: otherwise they match nothing, and a forgotten record would train again.
    ``where``: only the requests it accepts (a :class:`~mlflow_amnesia.mlflow.ledger.Request` -> bool)."""
    from ..errors import RecordKeyError
    from ..keys import hash_ids, hash_rows, hashes_in, key_id
    from ..mlflow import ledger

    found = [r for r in ledger.requests(model=model_name, datasets=[records.fingerprint]) if where is None or where(r)]
    none = Exclusion(np.zeros(0, np.int64), hash_rows(np.zeros(0, np.uint8)), [])
    if not found:
        return none
    kid = key_id(key)
    other = sorted({r.key_id for r in found if r.key_id and r.key_id != kid})
    if other:
        raise RecordKeyError(
            f"the erasure ledger of {model_name!r} (or of its data set) holds deletion requests whose records were "
            f"hashed with the record key of id {', '.join(other)}, but the current key has id {kid}: with it those "
            "records cannot be found, and would be trained on again. Restore that key (MLFLOW_AMNESIA_KEY or the "
            "key file, from your backup) and re-run train."
        )
    hashes = hash_ids([str(records.ids[p]) for p in train_idx], key)
    hit = np.zeros(len(train_idx), bool)
    matched = []
    for r in found:
        m = hashes_in(hashes, r.hashes)
        if m.any():
            matched.append(r.request)
            hit |= m
    return Exclusion(train_idx[hit].astype(np.int64), hashes[hit], matched) if hit.any() else none


def pool_exclusion(model_name: str, records, split, key: bytes) -> PoolExclusion:
    """What an audit's shadow pool for ``model_name`` leaves out: the training records of ``split``
    under every deletion request (of its ledger or its data set's) whose shadow models
    ``purge --request`` deleted. Until then the cached pool, which trained on them, stays in use
    (``requests`` lists it as holding them); after, no shadow model trains on them again."""
    ex = ledger_exclusion(
        model_name, records, np.asarray(split.train, np.int64), key, where=lambda r: bool(r.actions(SHADOWS_PURGED))
    )
    return PoolExclusion(ex.positions, tuple(sorted(ex.requests)))


def describe_training(
    name, version, dataset, arch, recipe: Recipe, steps, n_train, metrics, store_url, *, verdict=None
) -> str:
    return (
        (registry.verdict_line(verdict) + "\n\n" if verdict is not None else "")
        + f"**{name} v{version}**: trained by mlflow-amnesia on `{dataset}` ({n_train} training records), "
        f"`{arch}`, {recipe.epochs} epochs, batch {recipe.batch_size}, lr {recipe.lr}, momentum {recipe.momentum}, "
        f"weight decay {recipe.weight_decay}, seed {recipe.seed}.\n\n"
        f"Every one of its {steps} optimizer steps is recorded (delta store `{store_url}`), so records can be "
        f"forgotten later with `mlflow-amnesia forget --model {name} --records ids.txt`.\n\n"
        + "The audit figures are on a sample of this version's training records (members) against held-out "
        "non-members; intervals are 95%, `n=` is members + non-members. `audit.mia.*` is the paper's attack, shown "
        "to compare with the paper; the verdict rests on LiRA.\n\n" + registry.metrics_table({"this version": metrics})
    )
