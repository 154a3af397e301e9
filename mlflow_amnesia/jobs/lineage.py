"""The version tree of a registered model, from registry tags and source-run metrics.

Three renderings of the same rows (:func:`lineage_rows`): text (:func:`render_text`), JSON, and a
picture (:func:`render_png`) that each forget also logs on its source run as ``lineage.png`` and
shows in the new version's description, so the MLflow UI answers "which version forgot what, how,
from which parent, at what cost" without a terminal.
"""

from __future__ import annotations

import io

from ..mlflow import registry
from ..progress import info as say
from ..tags import TAG_PURGE_STARTED, TAG_PURGED, TAG_STEPS_TOTAL, TAG_VERDICT, TAG_VERDICT_REASON

_FIGURES = ("acc.test", "acc.retain", "acc.forget")
# per node of the picture: the accuracy and the privacy figure a reader compares first
_PNG_FIGURES = (
    ("acc.test", "acc.test"),
    ("acc.forget", "acc.forget"),
    ("audit.lira.auc", "lira.auc"),
    ("audit.mia.auc", "mia.auc"),
)


def lineage_rows(model_name: str, *, up_to: int | None = None) -> list[dict]:
    """One dict per version (oldest first): version, parent, method, records, steps, figures.

    ``up_to``: only versions up to this one, as the tree stood when it was registered (a
    ``superseded_by`` pointing past it is dropped).
    """
    registry.resolve_version(model_name)  # clear error for an unknown model
    # a searched version carries no aliases (MLflow 3.x's search leaves them out): the model's map does
    held: dict[int, list[str]] = {}
    for a, v in sorted(dict(getattr(registry.client().get_registered_model(model_name), "aliases", {}) or {}).items()):
        held.setdefault(int(v), []).append(a)
    rows = []
    for mv in registry.search_versions(model_name):
        if up_to is not None and int(mv.version) > up_to:
            continue
        t = mv.tags or {}
        metrics = registry.run_metrics(mv.run_id)
        sup = int(t[registry.TAG_SUPERSEDED]) if registry.TAG_SUPERSEDED in t else None
        rows.append(
            {
                "version": int(mv.version),
                "parent": int(t[registry.TAG_PARENT]) if registry.TAG_PARENT in t else None,
                "method": t.get(registry.TAG_METHOD, "?"),
                "repair": t.get(registry.TAG_REPAIR),
                "n_records": int(t[registry.TAG_N_RECORDS]) if registry.TAG_N_RECORDS in t else 0,
                "steps_rolled_back": int(t[registry.TAG_STEPS]) if registry.TAG_STEPS in t else 0,
                "steps_total": int(t[TAG_STEPS_TOTAL]) if TAG_STEPS_TOTAL in t else None,
                "forget_request": t.get(registry.TAG_REQUEST),
                "superseded_by": sup if up_to is None or sup is None or sup <= up_to else None,
                "aliases": held.get(int(mv.version), []) or list(getattr(mv, "aliases", []) or []),
                "purged": t.get(TAG_PURGED),  # "<ISO time>; deleted: ..." once `purge` completed
                "purge_started": t.get(TAG_PURGE_STARTED),
                "verdict": t.get(TAG_VERDICT),  # pass | fail | inconclusive | n/a (None: not audited since)
                "verdict_reason": t.get(TAG_VERDICT_REASON),
                "run_id": mv.run_id,
                "metrics": {k: metrics[k] for k in sorted(metrics) if k.startswith(("acc.", "audit.", "loss."))},
            }
        )
    return rows


def picture_of(mv) -> bytes | None:
    """The lineage picture of ``mv``'s model up to ``mv`` (PNG), for its description; None, with a
    warning, when it cannot be drawn (a registered version is never failed by its picture)."""
    try:
        return render_png(mv.name, lineage_rows(mv.name, up_to=int(mv.version)), highlight=int(mv.version))
    except Exception as e:  # noqa: BLE001 - a picture must not fail a registered version
        say(f"warning: the lineage picture of {mv.name} v{mv.version} was not drawn: {type(e).__name__}: {e}")
        return None


def render_text(model_name: str, rows: list[dict]) -> str:
    children: dict = {}
    for r in rows:
        children.setdefault(r["parent"], []).append(r)
    lines = [model_name]

    def line(r: dict) -> str:
        figs = ", ".join(f"{k} {r['metrics'][k]:.4f}" for k in _FIGURES if k in r["metrics"])
        what = r["method"]
        if r["parent"] is not None:
            what += f" ({r['n_records']} records, {r['steps_rolled_back']} steps rolled back"
            what += f", repair {r['repair']})" if r.get("repair") and r["repair"] != "none" else ")"
        al = f" [{', '.join(r['aliases'])}]" if r["aliases"] else ""
        if r.get("purged"):
            al += f" [purged {r['purged'].split(';', 1)[0]}]"
        elif r.get("purge_started"):
            al += " [purge not finished: re-run `mlflow-amnesia purge`]"
        verdict = f"; verdict {r['verdict']}" if r.get("verdict") else ""
        return f"v{r['version']}{al}: {what}" + (f"; {figs}" if figs else "") + verdict

    def walk(parent, prefix: str) -> None:
        kids = children.get(parent, [])
        for i, r in enumerate(kids):
            last = i == len(kids) - 1
            lines.append(prefix + ("└─ " if last else "├─ ") + line(r))
            walk(r["version"], prefix + ("   " if last else "│  "))

    walk(None, "")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the picture


def tree_layout(rows: list[dict]) -> dict[int, tuple[float, int]]:
    """``{version: (x, depth)}``: roots at depth 0, each child one level below its parent; leaves
    take consecutive x slots in version order and a parent sits above the middle of its children.
    A version whose parent is not in ``rows`` is a root."""
    versions = {r["version"] for r in rows}
    kids: dict[int | None, list[int]] = {}
    for r in sorted(rows, key=lambda r: r["version"]):
        p = r["parent"] if r["parent"] in versions else None
        kids.setdefault(p, []).append(r["version"])
    pos: dict[int, tuple[float, int]] = {}
    next_x = [0.0]

    def place(v: int, depth: int) -> float:
        cs = kids.get(v, [])
        if not cs:
            x = next_x[0]
            next_x[0] += 1
        else:
            xs = [place(c, depth + 1) for c in cs]
            x = (min(xs) + max(xs)) / 2
        pos[v] = (x, depth)
        return x

    for root in kids.get(None, []):
        place(root, 0)
    return pos


def node_status(row: dict, rows: list[dict]) -> str:
    """``current``, ``superseded by vN``, ``purged`` or ``purge not finished`` (from the tags;
    a version with a child in ``rows`` counts as superseded even before its tag is set)."""
    if row.get("purged"):
        return "purged"
    if row.get("purge_started"):
        return "purge not finished"
    sup = row.get("superseded_by") or next((r["version"] for r in rows if r["parent"] == row["version"]), None)
    return f"superseded by v{sup}" if sup is not None else "current"


def node_label(row: dict, rows: list[dict]) -> str:
    """The text of one node: version, method, what it forgot (count and request hash, never ids),
    key figures, the audit's verdict (tag ``amnesia.audit.verdict``), status."""
    head = f"v{row['version']} · {row['method']}"
    if row.get("repair") and row["repair"] != "none":
        head += f" + repair {row['repair']}"
    if row["aliases"]:
        head += f"  [{', '.join(row['aliases'])}]"
    lines = [head]
    if row["parent"] is None:
        if row.get("steps_total"):
            lines.append(f"{row['steps_total']} steps recorded")
    else:
        lines.append(f"forgot {row['n_records']} record(s) · {row['steps_rolled_back']} step(s) rolled back")
        if row.get("forget_request"):
            lines.append(f"request {row['forget_request'][:12]}…")
    figs = [f"{short} {row['metrics'][k]:.3f}" for k, short in _PNG_FIGURES if k in row["metrics"]]
    for i in range(0, len(figs), 2):
        lines.append(" · ".join(figs[i : i + 2]))
    if row.get("verdict"):
        lines.append(f"audit verdict: {row['verdict']}")
    lines.append(node_status(row, rows))
    return "\n".join(lines)


_STYLE = {  # status -> (face colour, text colour)
    "current": ("#e2f0d9", "#1b3a12"),
    "superseded": ("#eeeeee", "#555555"),
    "purged": ("#f8d7da", "#6b1d24"),
}


def render_png(model_name: str, rows: list[dict], *, highlight: int | None = None, dpi: int = 100) -> bytes:
    """The version tree as PNG bytes: one box per version (see :func:`node_label`), an arrow from
    each parent to its child; ``highlight`` (a version) gets a heavy border. Superseded versions
    are grey, purged ones red. Drawn with matplotlib's Agg canvas (no display, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pos = tree_layout(rows)
    n_cols = max((x for x, _ in pos.values()), default=0) + 1
    n_levels = max((d for _, d in pos.values()), default=0) + 1
    col_w, level_h, title_h = 3.1, 1.55, 0.7
    fig = Figure(figsize=(max(5.0, col_w * n_cols), title_h + level_h * n_levels), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_xlim(-0.5, n_cols - 0.5)
    ax.set_ylim(-(n_levels - 0.5) - 0.02, 0.5 + title_h / level_h)
    top = 0.5 + title_h / level_h
    ax.text(
        -0.45,
        top - 0.12,
        f"{model_name}: lineage" + (f" up to v{highlight}" if highlight else ""),
        ha="left",
        va="top",
        fontsize=11,
        fontweight="bold",
        color="#222222",
    )
    ax.text(
        -0.45,
        top - 0.30,
        "grey: superseded · red, dashed: purged" + (" · heavy border: this version" if highlight else ""),
        ha="left",
        va="top",
        fontsize=7.5,
        color="#666666",
    )
    boxes = {}
    for r in rows:
        x, depth = pos[r["version"]]
        status = node_status(r, rows)
        face, ink = _STYLE[
            "purged" if status.startswith("purge") else "superseded" if status.startswith("superseded") else "current"
        ]
        if r["parent"] is None and status == "current":
            face = "#dbe9f6"
        mine = r["version"] == highlight
        boxes[r["version"]] = ax.text(
            x,
            -depth,
            node_label(r, rows),
            ha="center",
            va="center",
            fontsize=8.5,
            color=ink,
            linespacing=1.35,
            bbox={
                "boxstyle": "round,pad=0.5",
                "fc": face,
                "ec": "#1f4e79" if mine else "#888888",
                "lw": 2.4 if mine else 0.8,
                "ls": "--" if status.startswith("purge") else "-",
            },
        )
    for r in rows:
        if r["parent"] in boxes:
            ax.annotate(
                "",
                xy=(0.5, 1.0),
                xycoords=boxes[r["version"]],
                xytext=(0.5, 0.0),
                textcoords=boxes[r["parent"]],
                arrowprops={"arrowstyle": "-|>", "color": "#555555", "lw": 1.2, "shrinkA": 2, "shrinkB": 2},
            )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()
