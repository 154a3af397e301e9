"""What the paper's examples share: the data and the trained model, the requests, the method
runs, evaluation, MLflow logging and plotting.

Every example drives the tool's own jobs (``mlflow_amnesia.train`` / ``forget``) and audit
functions; nothing here re-implements an unlearning method or an attack. The pieces:

* :func:`setting_from_args` / :func:`trained_model`: version 1 of a model registered by
  ``mlflow_amnesia.train`` (every step recorded), trained once per setting and reused by later
  examples in the same tracking store (its registered name carries a hash of the setting).
* :func:`fork`: a copy of version 1 registered under another name. Methods must each start from
  the same version, but a version can be forgotten from only once (a second forget from it
  would silently undo the first: ``forget`` refuses a superseded version), so every (request,
  method) pair forgets from its own copy. Copies share the recorded deltas: a version refers to
  its delta stores by URL.
* :func:`make_requests`: the paper's class removal (digit 3 by default) and a small set of
  individual records.
* :func:`run_method`: one ``forget`` with an ``on_epoch`` callback that measures the model right
  after the removal step and after every epoch of training that follows; the forget run logs
  those figures per epoch (``step=epoch``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "docs" / "results"
EXPERIMENT = "amnesia-paper"
MNIST_DIR = Path(os.environ.get("MLFLOW_AMNESIA_MNIST_DIR", REPO.parent / "shared" / "data" / "mnist-t10k"))

# The paper's names for the methods, and how each runs through `forget`.
METHODS: dict[str, dict[str, Any]] = {
    "finetune": {"label": "naive retraining (finetune)", "method": "finetune"},
    "relabel": {"label": "unlearning (relabel)", "method": "relabel"},
    "amnesiac": {"label": "amnesiac (+ finetune repair)", "method": "amnesiac", "repair": "finetune"},
    "retrain": {"label": "retrain (reference)", "method": "retrain"},
}
COMPARED = ("finetune", "relabel", "amnesiac")


def say(msg: str) -> None:
    """A progress line on stderr (silenced by MLFLOW_AMNESIA_QUIET=1, like the tool's own)."""
    from mlflow_amnesia.progress import info

    info(f"[paper] {msg}")


# --------------------------------------------------------------------------------------------
# Arguments and the setting


def default_dataset() -> str:
    """Real MNIST (the 10,000 t10k images beside the checkout) when present, else the embedded digits."""
    if (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        return f"idx:{MNIST_DIR}"
    return "digits"


def parser(description: str, *, shadows: bool = False, epochs_after: bool = True,
           requests: bool = False) -> argparse.ArgumentParser:
    """The options every example takes (and ``--shadows``, ``--repair-epochs``, ``--requests`` where used)."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="auto",
                    help="auto (real MNIST from ../shared/data/mnist-t10k when present, else digits), digits, "
                         "mnist or cifar100 (downloaded by torchvision), or idx:<dir>")
    ap.add_argument("--data-root", default=None, help="where mnist/cifar100 are, or are downloaded to")
    ap.add_argument("--arch", default="cnn", help="cnn (small, the default here) or resnet18 (the paper's)")
    ap.add_argument("--epochs", type=int, default=6, help="training epochs of version 1")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--codec", default=None, help="delta codec (default: the tool's, int8)")
    ap.add_argument("--holdout-fraction", type=float, default=0.2,
                    help="share of records held out (data without a predefined test split, e.g. MNIST t10k); "
                         "a larger share trains on fewer records, which leaks membership more")
    ap.add_argument("--target-class", type=int, default=3, help="the class to forget (the paper: digit 3)")
    ap.add_argument("--records", type=int, default=10, help="size of the individual-records request")
    if epochs_after:
        ap.add_argument("--repair-epochs", type=int, default=5,
                        help="epochs each method trains after the removal step (curves' length)")
    if requests:
        ap.add_argument("--requests", choices=("both", "class", "records"), default="both",
                        help="which requests to run: the whole class, the individual records, or both")
    if shadows:
        ap.add_argument("--shadows", type=int, default=4,
                        help="shadow models of the membership attack and judges of the inversion (cached per "
                             "setting; the authors' notebook trains 20, the tool's audit 16 outside digits)")
    ap.add_argument("--out", default=str(RESULTS_DIR), help="where PNG and JSON results go")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run at a tiny size (2 epochs, few shadows): its figures mean nothing")
    return ap


def apply_quick(args: argparse.Namespace) -> argparse.Namespace:
    """``--quick``: shrink every size so a run takes seconds (tests use it on digits)."""
    if args.quick:
        args.epochs = min(args.epochs, 2)
        args.records = min(args.records, 3)
        if hasattr(args, "repair_epochs"):
            args.repair_epochs = min(args.repair_epochs, 2)
        if hasattr(args, "shadows"):
            args.shadows = min(args.shadows, 2)
    return args


@dataclass(frozen=True)
class Setting:
    """How version 1 is trained (the key under which it is reused)."""

    dataset: str
    arch: str
    epochs: int
    batch_size: int
    lr: float
    seed: int
    codec: Optional[str]
    holdout_fraction: float = 0.2
    data_root: Optional[str] = None

    @property
    def model_name(self) -> str:
        if self.dataset.startswith("idx:") and "t10k" in self.dataset:
            short = "mnist-t10k"
        else:
            short = self.dataset.replace(":", "-").replace("/", "-")[-24:]
        # holdout_fraction is left out at its default, so names from before the option still match
        key = json.dumps({k: v for k, v in asdict(self).items() if k != "data_root" and
                          not (k == "holdout_fraction" and v == 0.2)}, sort_keys=True)
        return f"paper-{short}-{self.arch}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"

    def describe(self) -> str:
        return (f"{self.dataset} ({self.holdout_fraction:.0%} held out where the data has no test split), "
                f"{self.arch}, {self.epochs} epochs, batch {self.batch_size}, lr {self.lr}, SGD momentum 0.9, "
                f"weight decay 5e-4, seed {self.seed}, codec {self.codec or 'int8 (default)'}")


def setting_from_args(args: argparse.Namespace) -> Setting:
    ds = default_dataset() if args.dataset == "auto" else args.dataset
    return Setting(dataset=ds, arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                   seed=args.seed, codec=args.codec, holdout_fraction=args.holdout_fraction, data_root=args.data_root)


# --------------------------------------------------------------------------------------------
# MLflow: the example's own run


@contextmanager
def example_run(name: str, args: argparse.Namespace, setting: Setting) -> Iterator[Any]:
    """The example's run in the ``amnesia-paper`` experiment; train/forget runs nest under it."""
    import mlflow

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri("sqlite:///mlflow.db")  # as the CLI does
    mlflow.set_experiment(EXPERIMENT)
    t0 = time.monotonic()
    with mlflow.start_run(run_name=name) as run:
        mlflow.set_tags({"amnesia.role": "paper-example", "amnesia.example": name})
        mlflow.log_params({**{k: v for k, v in vars(args).items() if k != "out"}, "dataset_resolved": setting.dataset,
                           "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()})
        yield run
        mlflow.log_metric("example.seconds", time.monotonic() - t0)
    say(f"{name}: done in {time.monotonic() - t0:.0f} s (MLflow run {run.info.run_id}, experiment {EXPERIMENT!r})")


def log_outputs(paths: Sequence[Path]) -> None:
    """Attach the example's files (PNG, JSON, markdown) to its run."""
    import mlflow

    for p in paths:
        mlflow.log_artifact(str(p), "plots" if p.suffix == ".png" else "results")


def write_json(path: Path, obj: Any) -> Path:
    def clean(o: Any) -> Any:
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, (np.floating, float)):
            return None if math.isnan(float(o)) else float(o)
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.ndarray):
            return clean(o.tolist())
        return o

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(obj), indent=1) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# Version 1 and its copies


@dataclass
class Trained:
    """Version 1: where it is registered, the loaded model, and its data."""

    setting: Setting
    name: str
    version: int
    run_id: str
    model: Any  # mlflow_amnesia.AmnesiaModel
    records: Any  # mlflow_amnesia.data.Records
    split: Any  # mlflow_amnesia.data.Split
    train_seconds: Optional[float] = None

    @property
    def total_steps(self) -> int:
        return int(self.model.total_steps)

    @property
    def holdout(self) -> np.ndarray:
        return np.asarray(self.split.holdout, np.int64)

    @property
    def train_idx(self) -> np.ndarray:
        return np.asarray(self.split.train, np.int64)


def trained_model(setting: Setting) -> Trained:
    """Version 1 of ``setting.model_name``: reused when registered already, else trained now."""
    import mlflow_amnesia as ma
    from mlflow_amnesia.data import Split, rebuild
    from mlflow_amnesia.registry import search_versions

    name = setting.model_name
    found = None
    try:
        found = next((v for v in search_versions(name)
                      if (v.tags or {}).get("amnesia.method") == "train"), None)
    except Exception:  # noqa: BLE001 - no such model yet
        found = None
    seconds = None
    if found is not None:
        say(f"reusing {name} v{found.version} (trained earlier with the same setting)")
        version, run_id = int(found.version), found.run_id
    else:
        say(f"training version 1 of {name}: {setting.describe()}")
        t0 = time.monotonic()
        r = ma.train(dataset=setting.dataset, arch=setting.arch, epochs=setting.epochs, batch_size=setting.batch_size,
                     lr=setting.lr, seed=setting.seed, codec=setting.codec, model_name=name,
                     data_root=setting.data_root, holdout_fraction=setting.holdout_fraction, audit=False)
        seconds = time.monotonic() - t0
        version, run_id = r.version, r.run_id
    am = ma.load_model(f"models:/{name}/{version}")
    records = rebuild(am.info["dataset"], root=setting.data_root)
    sp = Split.from_json(am.info["split"], records)
    return Trained(setting, name, version, run_id, am, records, sp, seconds)


def fork(trained: Trained, label: str) -> tuple[str, int]:
    """Register a copy of version 1 as ``<name>-<label>``; returns (name, version).

    The copy carries the same weights, segments (delta stores by URL), record indexes and
    training state; its run holds version 1's metrics so forget's description compares against
    them.
    """
    import mlflow

    import mlflow_amnesia as ma

    name = f"{trained.name}-{label}"
    metrics = mlflow.MlflowClient().get_run(trained.run_id).data.metrics
    with mlflow.start_run(run_name=f"copy of {trained.name} v{trained.version}", nested=True):
        mlflow.set_tags({"amnesia.role": "copy", "amnesia.copy_of": f"{trained.name}/{trained.version}"})
        if metrics:
            mlflow.log_metrics(dict(metrics))
        info = ma.log_model(trained.model, name="model", registered_model_name=name)
    return name, int(info.registered_model_version)


# --------------------------------------------------------------------------------------------
# Requests


@dataclass
class Request:
    """What to forget, and the record sets each figure is measured on (positions)."""

    label: str  # "class 3", "10 records"
    slug: str  # "class3", "records10"
    ids: Optional[list[str]]
    cls: Optional[str]
    target: np.ndarray  # the forgotten training records
    target_heldout: np.ndarray  # held-out records of the forgotten class (empty for records)
    nontarget: np.ndarray  # held-out records not of the forgotten class (all held-out for records)
    nonmembers: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # attack's non-members

    @property
    def is_class(self) -> bool:
        return self.cls is not None


def random_train_ids(trained: Trained, k: int, seed: int = 7) -> list[str]:
    """``k`` training record ids in a fixed pseudo-random order (platform independent)."""
    from mlflow_amnesia.data import epoch_order

    train = trained.train_idx
    order = train[np.asarray(epoch_order(len(train), seed, 0), np.int64)]
    return [str(trained.records.ids[p]) for p in order[:k]]


def make_requests(trained: Trained, target_class: int, n_records: int, which: str = "both") -> list[Request]:
    """The paper's class removal and a small set of individual records (``which``: both, class, records)."""
    from mlflow_amnesia.audit.privacy import audit_pool
    from mlflow_amnesia.data import class_records

    rec, hold = trained.records, trained.holdout
    y = rec.y.numpy()
    in_class = class_records(rec, int(target_class))
    target = np.intersect1d(in_class, trained.train_idx)
    cls_req = Request(
        label=f"class {rec.classes[target_class]}", slug=f"class{target_class}", ids=None, cls=str(target_class),
        target=target, target_heldout=np.intersect1d(in_class, hold), nontarget=np.setdiff1d(hold, in_class),
    )
    ids = random_train_ids(trained, n_records)
    pos = np.sort(rec.positions_of(ids))
    rec_req = Request(
        label=f"{len(ids)} records", slug=f"records{len(ids)}", ids=ids, cls=None, target=pos,
        target_heldout=np.zeros(0, np.int64), nontarget=hold,
    )
    # The attack's non-members: held-out records of the targets' classes (like with like) inside the
    # tool's audit pool (every record there has shadows that trained on it and shadows that did not).
    pooled = np.intersect1d(hold, audit_pool(trained.split, 0))
    for r in (cls_req, rec_req):
        r.nonmembers = pooled[np.isin(y[pooled], np.unique(y[r.target]))]
    return [r for r in (cls_req, rec_req) if which == "both" or (which == "class") == r.is_class]


# --------------------------------------------------------------------------------------------
# Measuring a model


def accuracy_point(module: torch.nn.Module, trained: Trained, req: Request) -> dict[str, float]:
    """Accuracy on the target (forgotten) records, the target class held out, and non-target data."""
    from mlflow_amnesia.training import evaluate

    rec = trained.records
    out: dict[str, float] = {}
    for key, idx in (("target", req.target), ("target_heldout", req.target_heldout), ("nontarget", req.nontarget)):
        if len(idx):
            acc, loss = evaluate(module, rec.x[idx], rec.y[idx])
            out[f"epoch.acc.{key}"] = acc
            out[f"epoch.loss.{key}"] = loss
    return out


@dataclass
class Attack:
    """The tool's cached shadow models and per-class attack networks for version 1's setting."""

    shadows: Any
    attack: Any

    @classmethod
    def for_model(cls, trained: Trained, n_shadows: int) -> "Attack":
        from mlflow_amnesia.audit.privacy import get_shadows

        say(f"membership attack: {n_shadows} shadow models (trained once per setting, then cached in MLflow)")
        shadows, attack, _ = get_shadows(trained.records, trained.split, trained.model.arch,
                                         trained.model.info["recipe"], n_shadows, 0)
        return cls(shadows, attack)

    def point(self, module: torch.nn.Module, trained: Trained, req: Request) -> dict[str, float]:
        """The paper's attack and LiRA on the target records against held-out non-members."""
        from mlflow_amnesia.audit.membership import membership_audit

        # the paper's Table 1 reads recall on a few individual records: these per-request figures are
        # the paper comparison (percentiles below MIN_PER_CLASS records), never the product's audit
        return membership_audit(module, trained.records, self.shadows, self.attack, targets_idx=req.target,
                                nonmembers_idx=req.nonmembers, prefix="epoch", min_per_class=1)


# --------------------------------------------------------------------------------------------
# One method on one request, epoch by epoch


@dataclass
class Curve:
    """A method's figures at 0 (trained), 0' (right after the removal step) and each epoch after."""

    request: str
    method: str
    points: list[tuple[str, dict[str, float]]]
    model: str
    version: int
    run_id: str
    seconds: float
    final: dict[str, float]

    def series(self, key: str) -> list[float]:
        return [p.get(key, math.nan) for _, p in self.points]

    @property
    def labels(self) -> list[str]:
        return [lab for lab, _ in self.points]


def run_method(trained: Trained, req: Request, method: str, epochs: int,
               measure: Callable[[torch.nn.Module], dict[str, float]], trained_point: dict[str, float],
               *, keep: Optional[Callable[[int, torch.nn.Module], None]] = None) -> Curve:
    """Forget ``req`` with ``method`` from a fresh copy of version 1, measuring after each epoch.

    Points: ``0`` = version 1; ``0'`` = right after the removal step (amnesiac: the rollback;
    finetune and relabel remove by training, so their weights are still version 1's); ``k`` =
    after k epochs of the method's training (finetune: on the retained records; relabel: on the
    relabelled data set; amnesiac: its finetune repair). ``retrain`` trains from the initial
    weights for as many epochs as version 1 did. ``keep(epoch, module)`` sees each model too.
    """
    import mlflow_amnesia as ma

    spec = METHODS[method]
    name, version = fork(trained, f"{req.slug}-{method}")
    seen: dict[int, dict[str, float]] = {}

    def on_epoch(epoch: int, module: torch.nn.Module) -> dict[str, float]:
        m = measure(module)
        seen[epoch] = m
        if keep is not None:
            keep(epoch, module)
        say(f"{req.label}, {method}: " + ("after the removal step" if epoch == 0 else f"epoch {epoch}") + ": "
            + ", ".join(f"{k.removeprefix('epoch.')} {v:.3f}" for k, v in m.items() if not k.startswith("epoch.loss")))
        return m

    kwargs: dict[str, Any] = {"method": spec["method"], "repair": spec.get("repair")}
    if method == "amnesiac":
        kwargs["repair_epochs"] = epochs
    elif method != "retrain":
        kwargs["method_epochs"] = epochs
    t0 = time.monotonic()
    res = ma.forget(name, version=version, ids=req.ids, cls=req.cls, yes=True, audit=False, on_epoch=on_epoch, **kwargs)
    seconds = time.monotonic() - t0
    points = [("0", trained_point), ("0'", seen.get(0, trained_point))]
    points += [(str(e), seen[e]) for e in sorted(seen) if e > 0]
    return Curve(req.label, method, points, name, int(res.version), res.run_id, seconds, dict(res.metrics))


# --------------------------------------------------------------------------------------------
# Plotting


def pyplot():
    """matplotlib with a file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def subtitle(trained: Trained) -> str:
    s = trained.setting
    n_train, n_hold = len(trained.train_idx), len(trained.holdout)
    ds = "MNIST t10k" if s.dataset.startswith("idx:") and "t10k" in s.dataset else s.dataset
    return (f"{ds} ({n_train:,} train / {n_hold:,} held out), {s.arch}, {s.epochs} epochs, batch {s.batch_size}, "
            f"{trained.total_steps:,} recorded steps")
