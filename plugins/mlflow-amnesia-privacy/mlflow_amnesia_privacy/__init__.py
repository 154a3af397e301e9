"""``amnesia-privacy``: the mlflow-amnesia privacy audit as an MLflow model evaluator.

    mlflow.models.evaluate("models:/digits-cnn/2", heldout_pixels, targets=heldout_labels,
                           model_type="classifier", predictions="label_index",
                           evaluators=["default", "amnesia-privacy"],
                           evaluator_config={"amnesia-privacy": {"shadows": 4}})

**The data it is given are the non-members.** ``data`` (with ``targets``) are held-out records
of the version's data set, as the model's pyfunc takes them (raw pixels, flat or in their
natural shape; ``evaluate`` wants 2-D, so flat ``(N, C*H*W)``). The audit attacks the version's
own request's forgotten records (found by their keyed hashes, never passed in; for a version
that forgot nothing, a sample of its training records) against these rows: membership inference
(``audit.mia.*``) and LiRA (``audit.lira.*``) with the cached shadow models, model inversion
scored against them (``audit.inversion.*``), and the accuracy on them (``acc.eval``). Each row
is looked up in the version's data set (rebuilt from its recorded spec); a row that is not one
of its held-out records (a training record, or not in the data set) is refused with its row
number: the shadows know only the data set's records, and a training record is no non-member.
``audit.n_targets`` and ``audit.n_nonmembers`` give the sample sizes.

It returns its artifacts in ``result.artifacts`` (``amnesia_inversion``: the inversion grid;
``amnesia_scores``: per row of ``data``, its label, the model's prediction, P(member) and the
LiRA score; no record id), logs them on the evaluation run under ``amnesia-privacy/``, and logs
its metrics linked to the evaluated logged model and to the evaluation dataset. It runs beside
``default`` and when ``evaluators`` is left out; a model of another flavor is skipped with a
warning (named alone, ``evaluate`` then says no evaluator could evaluate it). Config keys:
``shadows``, ``shadow_seed``, ``inversion_iterations``, ``process_every``, ``retain_sample``,
``inversion_classes``, ``data_root``, ``privacy`` (False: accuracy only).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models.evaluation.base import EvaluationResult, ModelEvaluator

_SETTINGS = ("shadows", "shadow_seed", "inversion_iterations", "process_every", "retain_sample", "inversion_classes")
_KNOWN = (*_SETTINGS, "data_root", "privacy")
_DIR = "amnesia-privacy"
_log = logging.getLogger(__name__)


def _nonmember_positions(am, records, split, x) -> np.ndarray:
    """The data set positions of the rows of ``x`` (normalised), each a held-out record, or refused."""
    holdout = set(np.asarray(split.holdout, np.int64).tolist())
    train = set(np.asarray(split.train, np.int64).tolist())
    where = {records.x[i].numpy().tobytes(): i for i in range(len(records))}
    out = np.empty(len(x), np.int64)
    for row in range(len(x)):
        pos = where.get(x[row].numpy().tobytes())
        if pos is None or pos in train or pos not in holdout:
            what = "a training record of this version" if pos in train else "not a record of its data set"
            raise MlflowException.invalid_parameter_value(
                f"amnesia-privacy: row {row} of the evaluation data is {what}; the data are the non-members: "
                f"held-out records of {records.spec.get('spec')!r} (`mlflow-amnesia records --model NAME "
                "--split holdout` lists them), raw pixels as the model's pyfunc takes them"
            )
        out[row] = pos
    return out


class AmnesiaPrivacyEvaluator(ModelEvaluator):
    """Privacy audit of an ``mlflow_amnesia`` model version (see the module docstring)."""

    @classmethod
    def can_evaluate(cls, *, model_type, evaluator_config, **kwargs) -> bool:
        return model_type in (None, "classifier")

    def evaluate(self, *, model_type, dataset, run_id, evaluator_config, model=None, model_id=None, **kwargs):
        import mlflow

        from mlflow_amnesia.flavor import AmnesiaModel

        try:
            raw = model.get_raw_model() if model is not None else None
        except (NotImplementedError, AttributeError):
            raw = None
        if not isinstance(raw, AmnesiaModel):
            _log.warning(
                "amnesia-privacy: skipped, the model is not of the mlflow_amnesia flavor (registered by "
                "`mlflow-amnesia train` or `forget`)"
            )
            return None
        cfg = dict(evaluator_config or {})
        unknown = sorted(set(cfg) - set(_KNOWN))
        if unknown:
            raise MlflowException.invalid_parameter_value(
                f"unknown amnesia-privacy config key(s) {unknown}; known: {sorted(_KNOWN)}"
            )
        # the evaluated logged model: evaluate's own id, else the one its MLmodel names (a
        # registered version's model_id is not always recorded by the registry)
        model_id = model_id or getattr(model, "model_id", None) or getattr(model.metadata, "model_id", None)
        with tempfile.TemporaryDirectory() as tmp:
            metrics, files = _audit(raw, dataset, cfg, Path(tmp))
            client = mlflow.MlflowClient()
            now = mlflow.utils.time.get_current_time_millis()
            name, digest = getattr(dataset, "name", None), getattr(dataset, "digest", None)
            client.log_batch(
                run_id,
                metrics=[
                    mlflow.entities.Metric(
                        k, float(v), now, 0, model_id=model_id, dataset_name=name, dataset_digest=digest
                    )
                    for k, v in metrics.items()
                ],
            )
            artifacts = {}
            run_uri = client.get_run(run_id).info.artifact_uri
            from mlflow.models.evaluation.artifacts import ImageEvaluationArtifact, JsonEvaluationArtifact

            for key, (path, kind) in files.items():
                client.log_artifact(run_id, str(path), _DIR)
                uri = f"{run_uri}/{_DIR}/{path.name}"
                art = (ImageEvaluationArtifact if kind == "image" else JsonEvaluationArtifact)(uri=uri)
                art._load(str(path))  # content loaded now: the temporary file goes
                artifacts[key] = art
        return EvaluationResult(metrics=metrics, artifacts=artifacts, run_id=run_id)


def _audit(am, dataset, cfg: dict, tmp: Path) -> tuple[dict[str, float], dict[str, tuple[Path, str]]]:
    """The figures on ``dataset``'s rows as non-members, and the files to return."""
    import torch

    from mlflow_amnesia.audit.inversion import inversion_audit
    from mlflow_amnesia.audit.membership import membership_metrics, score_records
    from mlflow_amnesia.audit.privacy import AuditSettings, get_shadows
    from mlflow_amnesia.errors import AmnesiaError
    from mlflow_amnesia.keys import load_key_for
    from mlflow_amnesia.learning.data import Split, forgotten_positions, rebuild
    from mlflow_amnesia.learning.training import evaluate

    try:
        x = am.images(dataset.features_data, raw=True)
        key = load_key_for(am.info.key_id, f"the model {am.info.model_name or ''}".rstrip(), to="audit it")
        records = rebuild(am.info.dataset or {}, root=cfg.get("data_root"))
        sp = Split.from_json(am.info.split or {}, records)
    except AmnesiaError as e:
        raise MlflowException.invalid_parameter_value(f"amnesia-privacy: {e}") from None
    nonmembers = _nonmember_positions(am, records, sp, x)
    y = torch.as_tensor(np.asarray(dataset.labels_data)) if dataset.labels_data is not None else records.y[nonmembers]
    if not torch.equal(y.to(torch.int64), records.y[nonmembers]):
        bad = int(np.flatnonzero((y.to(torch.int64) != records.y[nonmembers]).numpy())[0])
        raise MlflowException.invalid_parameter_value(
            f"amnesia-privacy: the target of row {bad} is {int(y[bad])}, but that record's label is "
            f"{int(records.y[nonmembers[bad]])}: pass the records' own labels as targets"
        )
    acc, loss = evaluate(am.module, records.x[nonmembers], records.y[nonmembers])
    metrics: dict[str, float] = {"acc.eval": acc, "loss.eval": loss, "audit.n_nonmembers": float(len(nonmembers))}
    files: dict[str, tuple[Path, str]] = {}
    if not bool(cfg.get("privacy", True)):
        return metrics, files

    s = AuditSettings(**{k: cfg[k] for k in _SETTINGS if k in cfg})
    last = am.info.last_request
    n = int(last.get("n_records", 0)) if last.get("method", "train") != "train" else 0
    if n:  # this version's request: the last n forgotten hashes
        targets = forgotten_positions(records, sp.train, am.forgotten[len(am.forgotten) - n :], key)
    else:  # nothing forgotten: a sample of training records, as the CLI's audit
        retained = np.setdiff1d(np.asarray(sp.train, np.int64), forgotten_positions(records, sp.train, am.forgotten, key))
        rng = np.random.default_rng(s.shadow_seed)
        targets = np.sort(rng.choice(retained, size=min(s.retain_sample, len(retained)), replace=False))
    shadows, attack, _ = get_shadows(
        records, sp, am.arch, am.info.recipe or {}, s.n_shadows(records.spec), s.shadow_seed
    )
    am.module.eval()
    scored = score_records(am.module, records, shadows, attack, np.r_[targets, nonmembers])
    t, nm = scored.take(targets), scored.take(nonmembers)
    metrics.update(membership_metrics(t, nm))
    metrics["audit.n_targets"] = float(len(targets))
    ys = records.y.numpy()[targets]
    vals, counts = np.unique(ys, return_counts=True)
    classes = [int(c) for c in vals[np.argsort(-counts, kind="stable")][: s.inversion_classes]]
    inv = inversion_audit(
        am.module,
        records,
        classes,
        judges=shadows.modules(),
        reference_idx=nonmembers,
        iterations=s.inversion_iterations,
        process_every=s.process_every,
        seed=s.shadow_seed,
    )
    metrics.update(inv.metrics("audit"))
    png = tmp / "inversion.png"
    inv.save_png(png, records)
    files["amnesia_inversion"] = (png, "image")
    with torch.no_grad():
        pred = am.module(records.x[nonmembers]).argmax(1).numpy()
    rows = [
        {
            "row": i,
            "label": int(records.y[p]),
            "predicted": int(pred[i]),
            "mia_member_probability": float(nm.mia[i]),
            "lira_score": float(nm.lira[i]),
        }
        for i, p in enumerate(nonmembers.tolist())
    ]
    scores = tmp / "scores.json"
    scores.write_text(json.dumps({"role": "non-members: the rows of the evaluation data", "lira": nm.lira_variant, "rows": rows}))
    files["amnesia_scores"] = (scores, "json")
    return metrics, files
