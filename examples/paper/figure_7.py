"""The paper's Figure 7: held-out accuracy as amnesiac rollback removes a growing share of the
recorded training steps, the mean of several runs with their spread: where rollback stops
being harmless.

    python examples/paper/figure_7.py                      # real MNIST t10k (or digits), small CNN
    python examples/paper/figure_7.py --arch resnet18 --runs 3

Version 1 is trained by ``mlflow_amnesia.train`` (every step recorded). Each run draws a random
order of all recorded steps; for each share it rolls back the first ``share x steps`` of that
order from a private copy of version 1 with the tool's ``amnesiac`` method (the same rollback
``forget`` runs, reading only those steps' deltas) and measures held-out accuracy. ``forget``
itself cannot do this: it rolls back the steps that saw given records, and how many steps that
is depends on the request, so the figure also marks the share of steps that 1 and 10 random
records touch (from ``forget --dry-run``) and forget's ``--max-step-share`` default (1%).
Writes ``figure_7.png``, ``figure_7.json`` and ``figure_7.md`` to ``--out`` and logs them to the
experiment ``amnesia-paper``.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as c  # noqa: E402

SHARES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
HARMLESS_DROP = 0.01  # one accuracy point


def rolled_back(trained: c.Trained, steps: np.ndarray, work: str):
    """A copy of version 1's module with ``steps`` rolled back by the ``amnesiac`` method."""
    from mlflow_amnesia import AmnesiaModel
    from mlflow_amnesia.keys import load_key
    from mlflow_amnesia.unlearn import ForgetContext, get_method

    am = trained.model
    child = AmnesiaModel(module=copy.deepcopy(am.module), arch=am.arch, info=copy.deepcopy(am.info),
                         segments=list(am.segments), rolled_back=am.rolled_back, forgotten=am.forgotten)
    ctx = ForgetContext(model=child, key=load_key(create=False), target_hashes=np.zeros((0, 16), np.uint8),
                        steps=np.sort(np.asarray(steps, np.int64)), load_records=lambda: trained.records,
                        phase_base=lambda: work, run_id="figure-7", options={"repair": "none"})
    get_method("amnesiac").apply(ctx)
    return child.module


def record_shares(trained: c.Trained, ks: tuple[int, ...]) -> dict[int, float]:
    """Share of all recorded steps that ``k`` random training records touch (forget --dry-run)."""
    import mlflow_amnesia as ma

    ids = c.random_train_ids(trained, max(ks), seed=11)
    return {k: ma.forget(trained.name, version=trained.version, ids=ids[:k], dry_run=True, yes=True).plan.share
            for k in ks if k <= len(ids)}


def plot(trained: c.Trained, res: dict, path: Path) -> Path:
    plt = c.pyplot()
    x = np.asarray(res["shares"]) * 100
    acc = np.asarray(res["acc"])  # runs x shares
    mean, std = acc.mean(0), acc.std(0)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.fill_between(x, mean - std, mean + std, color="tab:red", alpha=0.2, label="± 1 std over runs")
    ax.errorbar(x, mean, yerr=[mean - acc.min(0), acc.max(0) - mean], color="tab:red", marker="o", capsize=3,
                label=f"mean of {acc.shape[0]} runs (bars: min-max)")
    base = res["acc_v1"]
    ax.axhline(base, color="grey", linewidth=1, label=f"version 1 ({base:.3f})")
    ax.axhline(base - HARMLESS_DROP, color="grey", linestyle="--", linewidth=1, label="1 point below")
    ax.axvline(1.0, color="black", linestyle=":", linewidth=1, label="forget --max-step-share default (1%)")
    for k, share in res["record_shares"].items():
        ax.axvline(share * 100, color="tab:blue", linestyle="-.", linewidth=1)
        ax.text(share * 100, 0.5, f" {k} record{'s' if int(k) > 1 else ''} touch{'' if int(k) > 1 else 'es'} this share",
                color="tab:blue", fontsize=8, rotation=90, va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("share of recorded steps rolled back (%, random steps)")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(f"Amnesiac rollback of random steps\n{c.subtitle(trained)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(trained: c.Trained, res: dict) -> str:
    acc = np.asarray(res["acc"])
    lines = [f"{c.subtitle(trained)}; {acc.shape[0]} runs; version 1 held-out accuracy {res['acc_v1']:.4f}.", "",
             "| share rolled back | steps | mean acc | std | min | max | mean drop (pt) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for j, (s, n) in enumerate(zip(res["shares"], res["n_steps"])):
        lines.append(f"| {s:.1%} | {n} | {acc[:, j].mean():.4f} | {acc[:, j].std():.4f} | {acc[:, j].min():.4f} | "
                     f"{acc[:, j].max():.4f} | {100 * (res['acc_v1'] - acc[:, j].mean()):.1f} |")
    shares = ", ".join(f"{k} record(s): {v:.2%}" for k, v in res["record_shares"].items())
    hs = res["harmless_share"]
    lines += ["", f"Largest share whose mean held-out accuracy stays within 1 point of version 1: "
                  f"{'none tested' if hs is None else f'{hs:.1%}'}. Share of steps random records touch: {shares}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = c.parser(__doc__, epochs_after=False)
    ap.add_argument("--runs", type=int, default=5, help="random step orders (the spread of the figure)")
    args = c.apply_quick(ap.parse_args(argv))
    if args.quick:
        args.runs = min(args.runs, 2)
    setting = c.setting_from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with c.example_run("figure_7", args, setting):
        import mlflow

        from mlflow_amnesia.training import evaluate

        trained = c.trained_model(setting)
        hx, hy = trained.records.x[trained.holdout], trained.records.y[trained.holdout]
        total = trained.total_steps
        n_steps = sorted({max(1, round(s * total)) for s in SHARES if s * total >= 0.5})
        shares = [n / total for n in n_steps]  # the share actually rolled back
        acc_v1 = evaluate(trained.model.module, hx, hy)[0]
        acc = np.zeros((args.runs, len(n_steps)))
        with tempfile.TemporaryDirectory() as work:
            for r in range(args.runs):
                order = np.random.default_rng(1000 + r).permutation(total)
                for j, n in enumerate(n_steps):
                    acc[r, j] = evaluate(rolled_back(trained, order[:n], work), hx, hy)[0]
                c.say(f"figure 7: run {r + 1}/{args.runs}: " + ", ".join(f"{s:.1%} {a:.3f}" for s, a in zip(shares, acc[r])))
        mean = acc.mean(0)
        harmless = [s for s, m in zip(shares, mean) if acc_v1 - m <= HARMLESS_DROP]
        prefix = [s for s, m in zip(shares, mean) if acc_v1 - m > HARMLESS_DROP]
        first_bad = prefix[0] if prefix else None
        harmless_share = max([s for s in harmless if first_bad is None or s < first_bad], default=None)
        res = {"setting": setting.__dict__, "steps": total, "shares": shares, "n_steps": n_steps, "acc": acc.tolist(),
               "acc_v1": acc_v1, "record_shares": record_shares(trained, (1, 10)), "harmless_share": harmless_share,
               "first_harmful_share": first_bad}
        for j, n in enumerate(n_steps):
            mlflow.log_metrics({"fig7.acc.mean": float(mean[j]), "fig7.acc.std": float(acc[:, j].std())}, step=int(n))
        mlflow.log_metrics({"fig7.acc_v1": acc_v1, "fig7.harmless_share": harmless_share if harmless_share is not None else 0.0})
        md = markdown(trained, res)
        files = [plot(trained, res, out / "figure_7.png"), c.write_json(out / "figure_7.json", res)]
        (out / "figure_7.md").write_text(md + "\n")
        files.append(out / "figure_7.md")
        c.log_outputs(files)
        print(md)


if __name__ == "__main__":
    main()
