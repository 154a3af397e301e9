"""The paper's model-inversion figures: what each model still "thinks" the forgotten class
looks like, before and after each method, with a number instead of a judgement by eye.

    python examples/paper/inversion.py                     # real MNIST t10k (or digits), small CNN
    python examples/paper/inversion.py --target-class 8 --restarts 6

Version 1 forgets every training record of ``--target-class`` with each method (each from its
own copy, one ``forget``); the registered results, and amnesiac's model right after its rollback
(0'), are inverted with the tool's attack (``mlflow_amnesia.audit.inversion``: the paper's
modified MI-FACE, gradient steps on ``1 - p(class)`` with a median-filter PROCESS step). The
score is the tool's ``audit.inversion.score``: how confidently independent models (the shadow
models, which trained on other halves of the data) recognise the inversion as the class.
A control class (``--control-class``, default the next one) is inverted too: a method that
forgot everything scores low on both. Writes ``inversion_class<C>.png``, ``inversion.json`` and
``inversion.md`` to ``--out`` and logs them to the experiment ``amnesia-paper``.
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as c  # noqa: E402


def plot(trained: c.Trained, rows: list[dict], target: int, control: int, restarts: int, path: Path) -> Path:
    from mlflow_amnesia.audit.inversion import denormalize

    plt = c.pyplot()
    rec = trained.records
    ref = denormalize(rec.x[trained.holdout[rec.y[trained.holdout].numpy() == target]].mean(0, keepdim=True), rec)
    ncols = restarts + 2
    fig, axes = plt.subplots(len(rows) + 1, ncols, figsize=(1.5 * ncols + 2.4, 1.6 * (len(rows) + 1)),
                             gridspec_kw={"width_ratios": [1.9] + [1] * (ncols - 1)})
    cmap = "gray" if rec.x.shape[1] == 1 else None

    def show(ax, img, title=None):
        a = img.permute(1, 2, 0).numpy()
        ax.imshow(a[:, :, 0] if a.shape[2] == 1 else a, cmap=cmap, vmin=0, vmax=1)
        ax.set_xticks([]), ax.set_yticks([])
        if title:
            ax.set_title(title, fontsize=7)

    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].text(0, 0.5, f"held-out mean of class {rec.classes[target]}\n(what the class looks like)", fontsize=8, va="center")
    axes[0, 1].axis("on")
    show(axes[0, 1], ref[0])
    for i, r in enumerate(rows, start=1):
        axes[i, 0].text(0, 0.5, f"{r['label']}\nscore {r['score']:.2f} (control {r['control_score']:.2f})\n"
                        f"acc. class {r['acc_target_heldout']:.2f}, others {r['acc_nontarget']:.2f}", fontsize=8, va="center")
        imgs = denormalize(r["images"], rec)
        for j in range(restarts):
            axes[i, j + 1].axis("on")
            show(axes[i, j + 1], imgs[j], f"{r['confidence'][j]:.2f}")
        axes[i, ncols - 1].axis("on")
        show(axes[i, ncols - 1], imgs[restarts], f"control {rec.classes[control]}: {r['confidence'][restarts]:.2f}")
    fig.suptitle(f"Model inversion of class {rec.classes[target]} (captions: judges' confidence)\n{c.subtitle(trained)}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(trained: c.Trained, rows: list[dict], target: int, control: int, settings: dict) -> str:
    rec = trained.records
    out = [f"Inversion of class {rec.classes[target]} (control: class {rec.classes[control]}), {settings['restarts']} "
           f"restarts, {settings['iterations']} iterations, judged by {settings['n_judges']} shadow models; "
           f"{c.subtitle(trained)}.", "",
           f"| model | inversion score, class {rec.classes[target]} | control class {rec.classes[control]} | "
           "correlation with the class mean | accuracy, class held-out | accuracy, other classes |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        out.append(f"| {r['label']} | {r['score']:.3f} | {r['control_score']:.3f} | {r['corr']:.3f} | "
                   f"{r['acc_target_heldout']:.3f} | {r['acc_nontarget']:.3f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = c.parser(__doc__, shadows=True)
    ap.add_argument("--control-class", type=int, default=None, help="a class not forgotten (default: the next one)")
    ap.add_argument("--restarts", type=int, default=4, help="inversions per class and model (different starting noise)")
    ap.add_argument("--iterations", type=int, default=1000, help="inversion gradient steps (PROCESS every 500)")
    args = c.apply_quick(ap.parse_args(argv))
    if args.quick:
        args.restarts, args.iterations = min(args.restarts, 2), min(args.iterations, 60)
    setting = c.setting_from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with c.example_run("inversion", args, setting):
        import mlflow

        import mlflow_amnesia as ma
        from mlflow_amnesia.audit.inversion import inversion_audit

        trained = c.trained_model(setting)
        rec = trained.records
        target = args.target_class
        control = (target + 1) % rec.num_classes if args.control_class is None else args.control_class
        judges = c.Attack.for_model(trained, args.shadows).shadows.modules()
        req = c.make_requests(trained, target, 1, "class")[0]

        def measure(module):
            return c.accuracy_point(module, trained, req)

        models = [("version 1 (trained on the class)", trained.model.module)]
        snapshot: dict = {}
        for method in (*c.COMPARED, "retrain"):
            keep = (lambda e, m: snapshot.__setitem__("rollback", copy.deepcopy(m)) if e == 0 else None) if method == "amnesiac" else None
            cv = c.run_method(trained, req, method, args.repair_epochs, measure, measure(trained.model.module), keep=keep)
            if method == "amnesiac":
                models.append(("amnesiac, right after the rollback (0')", snapshot["rollback"]))
            label = c.METHODS[method]["label"] + ("" if method == "retrain" else f", {args.repair_epochs} epoch(s)")
            models.append((label, ma.load_model(f"models:/{cv.model}/{cv.version}").module))

        rows = []
        settings = {}
        for label, module in models:
            c.say(f"inverting classes {target} and {control} of: {label}")
            inv = inversion_audit(module, rec, [target, control], judges=judges, reference_idx=trained.holdout,
                                  iterations=args.iterations, process_every=min(500, args.iterations),
                                  restarts=args.restarts, seed=0)
            settings = inv.settings
            per = inv.per_class()
            acc = measure(module)
            k = args.restarts
            rows.append({"label": label, "score": per[target]["judge_confidence"], "corr": per[target]["mean_image_corr"],
                         "control_score": per[control]["judge_confidence"],
                         "confidence": np.r_[inv.judge_confidence[:k], inv.judge_confidence[k:k + 1]].tolist(),
                         "images": inv.images[list(range(k)) + [k]],
                         "acc_target_heldout": acc.get("epoch.acc.target_heldout", math.nan),
                         "acc_nontarget": acc["epoch.acc.nontarget"]})
        for i, r in enumerate(rows):
            mlflow.log_metrics({f"inversion.{i}.score": r["score"], f"inversion.{i}.control_score": r["control_score"]})
        files = [plot(trained, rows, target, control, args.restarts, out / f"inversion_class{target}.png")]
        md = markdown(trained, rows, target, control, settings)
        files.append(c.write_json(out / "inversion.json", {
            "setting": setting.__dict__, "target_class": target, "control_class": control, "inversion": settings,
            "models": [{k: v for k, v in r.items() if k != "images"} for r in rows]}))
        (out / "inversion.md").write_text(md + "\n")
        files.append(out / "inversion.md")
        c.log_outputs(files)
        print(md)


if __name__ == "__main__":
    main()
