"""The paper's Table 1: membership inference on the targeted records at epoch 0 (trained), 0'
(right after the removal step) and after each epoch of training that follows, for naive
retraining (finetune), unlearning (relabel) and amnesiac, with retraining as the reference row.

    python examples/paper/table_1.py                       # real MNIST t10k (or digits), small CNN
    python examples/paper/table_1.py --shadows 16          # the paper's shadow count (slower)
    python examples/paper/table_1.py --dataset cifar100 --arch resnet18   # with a network (and time)

The attack is the tool's own audit (``mlflow_amnesia.audit``): shadow models trained with
version 1's recipe on halves of the records (cached in MLflow, so a second run only runs
inference), the paper's per-class attack networks (Shokri et al.) and LiRA (Carlini et al.).
Targets: the forgotten training records (they were members of version 1); non-members: the
held-out records of the same classes. Recall is the paper's figure (the share of targets called
members at probability 0.5); AUC and TPR at 1% FPR say whether that call separates the targets
from records never trained on (0.5 AUC: it does not). Writes ``table_1_<request>.png``,
``table_1.json`` and ``table_1.md`` to ``--out`` and logs them to the experiment ``amnesia-paper``;
each forget run carries the per-epoch figures (``epoch.mia.*``, ``epoch.lira.*``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as c  # noqa: E402

ROWS = (("epoch.mia.recall", "MIA recall (the paper's figure)"), ("epoch.mia.auc", "MIA AUC"),
        ("epoch.mia.tpr_at_1pct_fpr", "MIA TPR at 1% FPR"), ("epoch.lira.auc", "LiRA AUC"),
        ("epoch.acc.target", "accuracy on the targets"), ("epoch.acc.nontarget", "accuracy, non-target held-out"))
STYLE = {"finetune": ("tab:green", "s"), "relabel": ("tab:purple", "^"), "amnesiac": ("tab:red", "o")}


def fmt(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def markdown(trained: c.Trained, req: c.Request, curves: dict[str, c.Curve]) -> str:
    cols = max((curves[m].labels for m in c.COMPARED), key=len)
    ref = curves["retrain"].points[-1][1]
    out = [f"**{req.label}**: {len(req.target)} target records against {len(req.nonmembers)} held-out non-members "
           f"of the same classes ({c.subtitle(trained)})", ""]
    for key, title in ROWS:
        out += [f"{title}:", "", "| method | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
        for m in c.COMPARED:
            ys = curves[m].series(key)
            out.append(f"| {c.METHODS[m]['label']} | " + " | ".join(fmt(v) for v in ys + [math.nan] * (len(cols) - len(ys))) + " |")
        out.append(f"| {c.METHODS['retrain']['label']} | " + " | ".join([fmt(curves['retrain'].points[0][1].get(key, math.nan))]
                   + [""] * (len(cols) - 2) + [fmt(ref.get(key, math.nan))]) + " |")
        out.append("")
    out.append("Retrain row: version 1 (column 0), then the model retrained from the initial weights without the "
               f"records for {trained.setting.epochs} epochs (last column).")
    return "\n".join(out)


def plot(trained: c.Trained, req: c.Request, curves: dict[str, c.Curve], path: Path) -> Path:
    plt = c.pyplot()
    panels = (("epoch.mia.recall", "MIA recall on the targets"), ("epoch.mia.auc", "MIA AUC (targets vs held-out)"),
              ("epoch.lira.auc", "LiRA AUC (targets vs held-out)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.2), sharey=True)
    ref = curves["retrain"].points[-1][1]
    for ax, (key, title) in zip(axes, panels):
        for m in c.COMPARED:
            cv = curves[m]
            color, marker = STYLE[m]
            ax.plot(range(len(cv.points)), cv.series(key), marker=marker, color=color, label=c.METHODS[m]["label"])
        ax.axhline(ref.get(key, math.nan), color="black", linestyle=":", label="retrain (reference)")
        if "auc" in key:
            ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--", label="chance")
        labels = max((curves[m].labels for m in c.COMPARED), key=len)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel("epoch (0: trained, 0': right after the removal step)")
        ax.set_title(title)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    what = f"class {req.label.split()[-1]} ({len(req.target)} records)" if req.is_class else req.label
    fig.suptitle(f"Membership inference on the forgotten {what}: targets against {len(req.nonmembers)} held-out "
                 f"non-members\n{c.subtitle(trained)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    args = c.apply_quick(c.parser(__doc__, shadows=True, requests=True).parse_args(argv))
    setting = c.setting_from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with c.example_run("table_1", args, setting):
        import mlflow

        trained = c.trained_model(setting)
        attack = c.Attack.for_model(trained, args.shadows)
        results: dict = {"setting": setting.__dict__, "steps": trained.total_steps, "shadows": args.shadows, "requests": {}}
        files, md = [], []
        for req in c.make_requests(trained, args.target_class, args.records, args.requests):
            def measure(module, req=req):
                return {**c.accuracy_point(module, trained, req), **attack.point(module, trained, req)}

            start = measure(trained.model.module)
            curves = {m: c.run_method(trained, req, m, args.repair_epochs, measure, start) for m in (*c.COMPARED, "retrain")}
            files.append(plot(trained, req, curves, out / f"table_1_{req.slug}.png"))
            md.append(markdown(trained, req, curves))
            results["requests"][req.slug] = {
                "label": req.label, "n_targets": len(req.target), "n_nonmembers": len(req.nonmembers),
                "curves": {m: {"points": cv.points, "model": cv.model, "version": cv.version, "run_id": cv.run_id,
                               "seconds": cv.seconds} for m, cv in curves.items()},
            }
            for m, cv in curves.items():
                for when, (_, p) in (("after_removal", cv.points[1]), ("final", cv.points[-1])):
                    mlflow.log_metrics({f"{req.slug}.{m}.{when}.{k.removeprefix('epoch.')}": v
                                        for k, v in p.items() if k.startswith(("epoch.mia", "epoch.lira"))})
        files.append(c.write_json(out / "table_1.json", results))
        (out / "table_1.md").write_text("\n\n".join(md) + "\n")
        files.append(out / "table_1.md")
        c.log_outputs(files)
        print("\n\n".join(md))


if __name__ == "__main__":
    main()
