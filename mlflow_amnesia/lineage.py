"""The version tree of a registered model, from registry tags and source-run metrics."""

from __future__ import annotations

from . import registry

_FIGURES = ("acc.test", "acc.retain", "acc.forget")


def lineage_rows(model_name: str) -> list[dict]:
    """One dict per version (oldest first): version, parent, method, records, steps, figures."""
    registry.resolve_version(model_name)  # clear error for an unknown model
    c = registry.client()
    rows = []
    for mv in sorted(c.search_model_versions(f"name='{model_name}'"), key=lambda v: int(v.version)):
        t = mv.tags or {}
        metrics = registry.run_metrics(mv.run_id)
        rows.append({
            "version": int(mv.version),
            "parent": int(t[registry.TAG_PARENT]) if registry.TAG_PARENT in t else None,
            "method": t.get(registry.TAG_METHOD, "?"),
            "repair": t.get(registry.TAG_REPAIR),
            "n_records": int(t[registry.TAG_N_RECORDS]) if registry.TAG_N_RECORDS in t else 0,
            "steps_rolled_back": int(t[registry.TAG_STEPS]) if registry.TAG_STEPS in t else 0,
            "forget_request": t.get(registry.TAG_REQUEST),
            "superseded_by": int(t[registry.TAG_SUPERSEDED]) if registry.TAG_SUPERSEDED in t else None,
            "aliases": list(getattr(mv, "aliases", []) or []),
            "run_id": mv.run_id,
            "metrics": {k: metrics[k] for k in sorted(metrics) if k.startswith(("acc.", "audit.", "loss."))},
        })
    return rows


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
        return f"v{r['version']}{al}: {what}" + (f"; {figs}" if figs else "")

    def walk(parent, prefix: str) -> None:
        kids = children.get(parent, [])
        for i, r in enumerate(kids):
            last = i == len(kids) - 1
            lines.append(prefix + ("└─ " if last else "├─ ") + line(r))
            walk(r["version"], prefix + ("   " if last else "│  "))

    walk(None, "")
    return "\n".join(lines)
