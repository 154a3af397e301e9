"""Markdown tables of bench/ulira.py and bench/table1.py results (what docs/BENCHMARKS.md and
docs/RESULTS.md quote), from their JSON files.

    python bench/ulira_report.py [--ulira bench/out/ulira.json] [--table1 bench/out/table1.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def est(e: dict | None) -> str:
    if not e:
        return "-"
    return f"{e['value']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}]"


def ulira(d: dict) -> None:
    p, s = d["pool"], d["setting"]
    print(f"command: `{d['command']}`\n")
    print(
        f"Pool: {s['shadows']} members, {s['steps_per_member']} recorded steps each (one record: "
        f"{100 * s['record_step_share']:.2f}% of the steps), training {p['train_seconds']:.0f} s in all "
        f"({p['train_seconds'] / s['shadows']:.1f} s a member), deltas {p['stored_delta_bytes'] / 1e6:.0f} MB, "
        f"{p['bytes_on_disk'] / 1e6:.0f} MB on disk with indexes and weights; held-out accuracy "
        f"{p.get('heldout_accuracy_mean', float('nan')):.3f}, training-record accuracy {p['accuracy_in_mean']:.3f}, "
        f"pool records not trained on {p['accuracy_out_mean']:.3f}.\n"
    )
    print(
        "| method | requests (records) | unlearnings | U-LiRA AUC [95%] (n IN-unlearned + OUT) | dual-view AUC [95%] | held-out accuracy change (mean, worst) | seconds |"
    )
    print("| --- | ---: | ---: | --- | --- | --- | ---: |")
    for name, m in d.get("methods", {}).items():
        u = m["ulira_auc"]
        n = f"{u['n_members']}+{u['n_nonmembers']}"
        acc = (
            f"{100 * m['heldout_accuracy_change_mean']:+.2f} / {100 * m['heldout_accuracy_change_min']:+.2f} points"
            if "heldout_accuracy_change_mean" in m
            else "-"
        )
        done = "" if m.get("complete", True) else " (partial)"
        print(
            f"| {name}{done} | {m['records']} | {m.get('unlearnings', '-')} | {est(u)} ({n}) | "
            f"{est(m.get('dualview_auc'))} | {acc} | {m.get('seconds', 0):.0f} |"
        )
    if "timing" in d:
        t = d["timing"]
        print(
            f"\nU-LiRA of a 10-record amnesiac request with the pool cached: {t['ulira_10_records_seconds']:.1f} s "
            f"(members read back, pool assembled, shadows unlearned and scored) against {t['pool_train_seconds']:.0f} s "
            f"of training the pool: ratio {t['ratio']:.4f}."
        )


def table1(d: dict) -> None:
    print(f"command: `{d['command']}`, {d.get('records_done')} records\n")
    pts = ["0", "0'", "1", "2", "3", "4", "5"]
    print("| method | figure | " + " | ".join(pts) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in pts) + " |")
    for method, rows in d["table"].items():
        for fig, key, fmt in (
            ("MIA recall", "mia_recall", lambda v: f"{v:.3f}"),
            ("MIA AUC", "mia_auc", lambda v: f"{v['value']:.3f}"),
            ("MIA TPR at 1% FPR", "mia_tpr_at_1pct_fpr", lambda v: f"{v['value']:.3f}"),
            ("LiRA AUC", "lira_auc", lambda v: f"{v['value']:.3f}"),
            ("LiRA TPR at 1% FPR", "lira_tpr_at_1pct_fpr", lambda v: f"{v['value']:.3f}"),
        ):
            cells = [fmt(rows[p][key]) if p in rows else "" for p in pts]
            print(f"| {method} | {fig} | " + " | ".join(cells) + " |")
    print()
    for method, rows in d["table"].items():
        for p in ("0", "0'", "5"):
            if p in rows:
                r = rows[p]
                print(
                    f"- {method} at {p}: MIA AUC {est(r['mia_auc'])}, LiRA AUC {est(r['lira_auc'])}, "
                    f"n={r['lira_auc']['n_members']}+{r['lira_auc']['n_nonmembers']}, "
                    f"recall on non-members {r['mia_recall_nonmembers']:.3f}"
                )


def paired(a_path: str, b_path: str) -> None:
    """Matched comparison of two runs on the same records: per-record U-LiRA AUCs, paired
    bootstrap over records (10,000 resamples, seed 0) of the mean difference first - second.
    A side may be several files (comma-separated: runs of consecutive ``--offset`` ranges of the
    same fixed order of records), joined in offset order."""
    import numpy as np

    def per(paths: str) -> np.ndarray:
        parts = []
        for p in paths.split(","):
            ms = json.loads(Path(p).read_text())["methods"]
            name = next(k for k in ms if "per_record_ulira_auc" in ms[k])
            parts.append((ms[name].get("offset", 0), ms[name]["per_record_ulira_auc"]))
        out: list = []
        for off, vals in sorted(parts):
            if off != len(out):
                raise SystemExit(f"{paths}: records {len(out)}.. missing (a part starts at {off})")
            out += vals
        return np.asarray(out)

    a, b = per(a_path), per(b_path)
    n = min(len(a), len(b))
    d = a[:n] - b[:n]
    rng = np.random.default_rng(0)
    boot = [d[rng.integers(0, n, n)].mean() for _ in range(10000)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    print(f"paired over {n} records: mean per-record AUC {a[:n].mean():.3f} vs {b[:n].mean():.3f}, "
          f"difference {d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--paired", nargs=2, metavar=("FIRST", "SECOND"),
                    help="matched comparison of two runs (each side: a JSON, or several comma-separated)")
    ap.add_argument("--ulira", type=Path, default=OUT / "ulira.json")
    ap.add_argument("--table1", type=Path, default=OUT / "table1.json")
    a = ap.parse_args()
    if a.paired:
        paired(*a.paired)
        return
    if a.ulira.is_file():
        ulira(json.loads(a.ulira.read_text()))
        print()
    if a.table1.is_file():
        table1(json.loads(a.table1.read_text()))


if __name__ == "__main__":
    main()
