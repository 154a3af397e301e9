"""The paper's Figures 1 and 2: accuracy on the target and non-target data, epoch by epoch,
after the removal step, for naive retraining (finetune), unlearning (relabel) and amnesiac.

    python examples/paper/figure_1_2.py                    # real MNIST t10k (or digits), small CNN
    python examples/paper/figure_1_2.py --dataset mnist --arch resnet18 --epochs 20   # with a network

Two requests, each forgotten by each method from its own copy of version 1 (one ``forget``):
every training record of one class (the paper's digit 3) and a few random records. Point 0 is
version 1, 0' the model right after the removal step (only amnesiac's rollback changes weights
there), then one point per epoch the method trains (finetune: on the retained records; relabel:
on the relabelled data set; amnesiac: its finetune repair). Dotted lines: retraining from the
initial weights without the records (the reference). Writes ``figure_1_2_<request>.png`` and
``figure_1_2.json`` to ``--out`` (default docs/results/) and logs them, with per-epoch metrics on
every forget run, to the MLflow experiment ``amnesia-paper``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as c  # noqa: E402

COLORS = {"target": "tab:red", "target_heldout": "tab:orange", "nontarget": "tab:blue"}
NAMES = {"target": "target: the forgotten training records", "target_heldout": "target class, held-out records",
         "nontarget": "non-target, held-out records"}


def plot(trained: c.Trained, req: c.Request, curves: dict[str, c.Curve], path: Path) -> Path:
    plt = c.pyplot()
    fig, axes = plt.subplots(1, len(c.COMPARED), figsize=(5.2 * len(c.COMPARED), 4.4), sharey=True)
    ref = curves["retrain"].points[-1][1]
    for ax, method in zip(axes, c.COMPARED):
        cv = curves[method]
        x = list(range(len(cv.points)))
        for key in ("target", "target_heldout", "nontarget"):
            ys = cv.series(f"epoch.acc.{key}")
            if all(v != v for v in ys):  # all nan: this request has no such records
                continue
            ax.plot(x, ys, marker="o", color=COLORS[key], label=NAMES[key])
            if f"epoch.acc.{key}" in ref:
                ax.axhline(ref[f"epoch.acc.{key}"], color=COLORS[key], linestyle=":", linewidth=1.2)
        ax.set_xticks(x, cv.labels)
        ax.set_xlabel("epoch (0: trained, 0': right after the removal step)")
        ax.set_title(c.METHODS[method]["label"])
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].plot([], [], color="grey", linestyle=":", label="retrain without the records (reference)")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle(f"Forgetting {req.label}: accuracy after the removal step\n{c.subtitle(trained)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(trained: c.Trained, req: c.Request, curves: dict[str, c.Curve]) -> str:
    cols = max((curves[m].labels for m in c.COMPARED), key=len)
    lines = [f"**{req.label}** ({len(req.target)} training records; {c.subtitle(trained)})", "",
             "| method | data | " + " | ".join(cols) + " | retrain |", "| --- | --- |" + " ---: |" * (len(cols) + 1)]
    ref = curves["retrain"].points[-1][1]
    for m in c.COMPARED:
        for key in ("target", "target_heldout", "nontarget"):
            ys = curves[m].series(f"epoch.acc.{key}")
            if all(v != v for v in ys):
                continue
            cells = [f"{v:.3f}" for v in ys] + [""] * (len(cols) - len(ys))
            lines.append(f"| {c.METHODS[m]['label']} | {key} | " + " | ".join(cells) + f" | {ref.get(f'epoch.acc.{key}', float('nan')):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = c.apply_quick(c.parser(__doc__, requests=True).parse_args(argv))
    setting = c.setting_from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with c.example_run("figure_1_2", args, setting):
        import mlflow

        trained = c.trained_model(setting)
        results: dict = {"setting": setting.__dict__, "steps": trained.total_steps, "requests": {}}
        files: list[Path] = []
        md = []
        for req in c.make_requests(trained, args.target_class, args.records, args.requests):
            measure = lambda m, req=req: c.accuracy_point(m, trained, req)  # noqa: E731
            start = measure(trained.model.module)
            curves = {}
            for method in (*c.COMPARED, "retrain"):
                curves[method] = c.run_method(trained, req, method, args.repair_epochs, measure, start)
            files.append(plot(trained, req, curves, out / f"figure_1_2_{req.slug}.png"))
            md.append(markdown(trained, req, curves))
            results["requests"][req.slug] = {
                "label": req.label, "n_records": len(req.target),
                "curves": {m: {"points": cv.points, "model": cv.model, "version": cv.version, "run_id": cv.run_id,
                               "seconds": cv.seconds} for m, cv in curves.items()},
            }
            for m, cv in curves.items():
                last = cv.points[-1][1]
                mlflow.log_metrics({f"{req.slug}.{m}.final.{k.removeprefix('epoch.')}": v for k, v in last.items()})
        files.append(c.write_json(out / "figure_1_2.json", results))
        (out / "figure_1_2.md").write_text("\n\n".join(md) + "\n")
        files.append(out / "figure_1_2.md")
        c.log_outputs(files)
        print("\n\n".join(md))


if __name__ == "__main__":
    main()
