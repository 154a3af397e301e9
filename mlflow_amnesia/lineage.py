"""``mlflow_amnesia.lineage``: kept as an import path; the code lives in :mod:`mlflow_amnesia.jobs.lineage`."""

from mlflow_amnesia.jobs.lineage import (  # noqa: F401 - re-exported
    lineage_rows,
    node_label,
    node_status,
    picture_of,
    render_png,
    render_text,
    tree_layout,
)

__all__ = [
    "lineage_rows",
    "node_label",
    "node_status",
    "picture_of",
    "render_png",
    "render_text",
    "tree_layout",
]
