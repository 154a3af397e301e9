"""The `train` job: train a model while recording every step, register version 1.

Python API: :func:`train`. CLI: ``mlflow-amnesia train`` and ``mlflow run . -e train``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..audit import full_audit
from ..audit.verdict import estimate_from_metrics, train_verdict
from ..learning.training import EpochResult, Recipe, epoch_orders, evaluate, make_optimizer, record_phase
from ..mlflow import registry
from ..mlflow.flavor import AmnesiaModel, log_model
from ..mlflow.logged import evaluation_datasets, log_linked_metrics, logged_model_name, next_version
from ..mlflow.runs import check_store_location, log_params_once, phase_base, start_run
from ..progress import info as say
from ..recording.phase import Phase
from ..tags import (
    TAG_ARCH,
    TAG_CODEC,
    TAG_DATASET,
    TAG_FLAVOR_FORMAT,
    TAG_MODEL_NAME,
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
        mlflow.set_tags({TAG_ROLE: "train", TAG_STORE: store_url, TAG_CODEC: codec, TAG_MODEL_NAME: model_name})
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
                none,
                arch_spec=arch_spec,
                recipe=recipe.to_dict(),
                privacy=audit,
                settings=audit_settings,
                artifact_dir=tmp,
            )
            if audit:
                mlflow.log_artifact(f"{tmp}/inversion.png", "audit")
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
                history=[{"method": "train", "run_id": run_id, "steps": steps}],
            ),
            segments=[segment],
            example=example_images(records, hold_idx),  # class means of held-out images, raw: no record
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
            },
        )
        version = int(mv.version)
        verdict = train_verdict(estimate_from_metrics(metrics, "audit.lira.auc"))
        registry.annotate_version(
            mv,
            tags=registry.verdict_tags(verdict),
            description=describe_training(
                model_name, version, dataset, arch, recipe, steps, len(train_idx), metrics, store_url, verdict=verdict
            ),
        )
    say(f"registered {model_name} version {version} (run {run_id}); {steps} steps recorded")
    return TrainResult(model_name, version, run_id, store_url, steps, metrics)


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
