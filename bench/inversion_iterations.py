"""How many model-inversion steps an audit needs on a data set's image size.

Inverts every class of a registered version at several iteration counts (the same seed, the
audit's judges: its cached shadow models) and writes the judge confidence per count, with the
seconds each took, so the default (:func:`mlflow_amnesia.audit.privacy.fitted_iterations`) can be
checked against where the score stops moving.

    python bench/inversion_iterations.py --model digits-resnet            # in the quick start's directory
    python bench/inversion_iterations.py --model digits-resnet --iterations 25,50,100,200,400,1000

Each count runs twice: with the audit's step size (:func:`~mlflow_amnesia.audit.privacy.inversion_step`,
as far in all as the paper's 1000 steps of 0.01) and with the paper's fixed 0.01.

Writes ``bench/out/inversion_iterations.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="registered model name (its latest version is inverted)")
    ap.add_argument("--version", type=int, default=None)
    ap.add_argument("--iterations", default="50,100,200,1000", help="comma-separated counts")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "inversion_iterations.json"))
    a = ap.parse_args(argv)

    import mlflow_amnesia  # noqa: F401  (the MLflow shadow cache)
    from mlflow_amnesia.audit.inversion import inversion_audit
    from mlflow_amnesia.audit.privacy import AuditSettings, audit_pool, fitted_iterations, get_shadows, inversion_step
    from mlflow_amnesia.keys import load_key_for
    from mlflow_amnesia.learning.data import Split, rebuild
    from mlflow_amnesia.mlflow import registry
    from mlflow_amnesia.mlflow.flavor import load_model

    mv = registry.resolve_version(a.model, version=a.version)
    am = load_model(registry.model_uri(mv))
    load_key_for(am.info.key_id, f"{a.model} v{mv.version}")
    records = rebuild(am.info.dataset or {})
    sp = Split.from_json(am.info.split or {}, records)
    s = AuditSettings()
    shadows, _, _ = get_shadows(records, sp, am.arch, am.info.recipe or {}, s.n_shadows(records.spec), s.shadow_seed)
    holdout = np.intersect1d(np.asarray(sp.holdout, np.int64), audit_pool(sp, s.shadow_seed))
    classes = list(range(min(10, records.num_classes)))
    rows = []
    for it in [int(x) for x in a.iterations.split(",")]:
        for rule, lr in (("audit", inversion_step(it)), ("fixed 0.01", 0.01)):
            t0 = time.perf_counter()
            inv = inversion_audit(am.module, records, classes, judges=shadows.modules(), reference_idx=holdout,
                                  iterations=it, process_every=max(1, it // 2), lr=lr, seed=s.shadow_seed)
            m = inv.metrics("audit")
            rows.append({"iterations": it, "step": rule, "lr": round(lr, 5),
                         "seconds": round(time.perf_counter() - t0, 2),
                         "judge_confidence": round(m["audit.inversion.score"], 4),
                         "mean_image_corr": round(m["audit.inversion.mean_image_corr"], 4)})
            print(rows[-1], flush=True)
    doc = {"model": a.model, "version": int(mv.version), "input_shape": list(records.x.shape[1:]),
           "classes": classes, "judges": len(shadows.modules()),
           "fitted_default": fitted_iterations(records.x.shape[1:]), "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
