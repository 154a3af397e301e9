"""Model versions: resolving them, lineage tags, descriptions, aliases.

Tag names are a contract (other features and users' dashboards read them): every one is a
constant of :mod:`mlflow_amnesia.tags`, re-exported here as ``registry.TAG_*``.

A version's description is what a privacy officer reads on its page in the MLflow UI (which
renders it as markdown): the job's summary, a line of links (parent version, source run), the
figures table ``metric | this version | parent | change``, and for a forget the lineage picture
(drawn by :mod:`mlflow_amnesia.jobs.lineage`), logged on the source run as ``lineage.png`` and shown inline.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping
from urllib.parse import quote

from ..audit.verdict import VERDICT_START, parent_metric
from ..errors import InputError
from ..progress import info as say
from ..tags import TAG_FLAVOR_FORMAT as TAG_FLAVOR_FORMAT  # re-exported: registry.TAG_* is how callers name them
from ..tags import TAG_METHOD as TAG_METHOD
from ..tags import TAG_N_RECORDS as TAG_N_RECORDS
from ..tags import TAG_PARENT as TAG_PARENT
from ..tags import TAG_REPAIR as TAG_REPAIR
from ..tags import TAG_REQUEST as TAG_REQUEST
from ..tags import TAG_STEPS as TAG_STEPS
from ..tags import TAG_SUPERSEDED as TAG_SUPERSEDED
from ..tags import TAG_VERDICT as TAG_VERDICT
from ..tags import TAG_VERDICT_REASON as TAG_VERDICT_REASON

HEADLINE_METRICS = (
    "acc.test",
    "acc.retain",
    "acc.forget",
    "loss.forget",
    "audit.lira.auc",
    "audit.lira.tpr_at_1pct_fpr",
    "audit.retain.lira.auc",
    "audit.ulira.auc",
    "audit.dualview.auc",
    "audit.mia.auc",
    "audit.mia.recall",
    "audit.mia.tpr_at_1pct_fpr",
    "audit.inversion.score",
)
# figures the same for a parent in its own run and in its child's audit (the same held-out records)
_SAME_RECORDS_ANYWHERE = {"acc.test", "loss.test"}


def client():
    import mlflow

    return mlflow.MlflowClient()


# ---------------------------------------------------------------------------------------------
# search filters: MLflow builds them from strings, so every value goes through filter_literal


def filter_literal(value: object) -> str | None:
    """``value`` as a string literal of MLflow's search filter grammar, or None where that
    grammar cannot spell it.

    MLflow (3.x) takes the text between the quotes as it is, without escape sequences: a value
    without ``'`` is quoted with ``'``, one without ``"`` with ``"``. A value holding both, or
    ending in a backslash (the tokenizer reads it as escaping the closing quote), has no
    exact literal: :func:`search_versions` then matches a pattern and compares exactly itself.
    """
    s = str(value)
    if s.endswith("\\"):
        return None
    if "'" not in s:
        return f"'{s}'"
    if '"' not in s:
        return f'"{s}"'
    return None


def _clause(field: str, value: object) -> str:
    """``field = <literal>``; else ``field LIKE <pattern>`` with each quote and backslash as the
    one-character wildcard ``_`` (a superset: the caller compares exactly)."""
    lit = filter_literal(value)
    if lit is not None:
        return f"{field} = {lit}"
    return f"{field} LIKE '" + "".join("_" if c in "'\"\\" else c for c in str(value)) + "'"


def search_versions(name: str, *, tags: Mapping[str, object] | None = None) -> list:
    """Every version of the registered model ``name`` (with these tag values), ascending, whatever
    characters the name and values hold (quotes, backticks, spaces): the filter quotes them
    (:func:`filter_literal`), every page is read, and the result is compared exactly here."""
    want = {k: str(v) for k, v in (tags or {}).items()}
    flt = " and ".join([_clause("name", name)] + [_clause(f"tags.`{k}`", v) for k, v in want.items()])
    c, found, token = client(), [], None
    while True:
        page = c.search_model_versions(flt, page_token=token)
        found += list(page)
        token = getattr(page, "token", None)
        if not token:
            break
    out = [v for v in found if v.name == name and all((v.tags or {}).get(k) == x for k, x in want.items())]
    return sorted(out, key=lambda v: int(v.version))


def resolve_version(name: str, *, version: int | None = None, alias: str | None = None):
    """The ModelVersion asked for (latest when neither version nor alias is given)."""
    from mlflow.exceptions import MlflowException

    if version is not None and alias is not None:
        raise InputError("give --version or --alias, not both")
    c = client()
    try:
        c.get_registered_model(name)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(getattr(e, "error_code", "")) or "not found" in str(e).lower():
            names = sorted(m.name for m in c.search_registered_models(max_results=50))
            raise InputError(
                f"no registered model named {name!r} in {_where()}. "
                + (
                    f"Registered models: {', '.join(names)}."
                    if names
                    else "No model is registered yet: run `mlflow-amnesia train` first."
                )
            ) from None
        raise
    try:
        if alias is not None:
            return c.get_model_version_by_alias(name, alias)
        if version is not None:
            return c.get_model_version(name, str(version))
    except MlflowException:
        what = f"alias {alias!r}" if alias is not None else f"version {version}"
        versions = [int(v.version) for v in search_versions(name)]
        raise InputError(f"model {name!r} has no {what}; its versions are {versions}.") from None
    found = search_versions(name)
    if not found:
        raise InputError(f"model {name!r} has no versions yet.")
    return max(found, key=lambda v: int(v.version))


def _where() -> str:
    import mlflow

    return f"the registry at {mlflow.get_registry_uri()}"


def model_uri(mv) -> str:
    return f"models:/{mv.name}/{mv.version}"


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _cell(metrics: Mapping[str, float], name: str) -> str:
    """``0.6820 [0.6311, 0.7329]`` where the figure has its interval, else the plain value."""
    v = metrics.get(name)
    lo, hi = metrics.get(f"{name}.lo"), metrics.get(f"{name}.hi")
    if v is None or lo is None or hi is None:
        return _fmt(v)
    return f"{_fmt(v)} [{lo:.4f}, {hi:.4f}]"


def _label(name: str, rows: Mapping[str, Mapping[str, float]]) -> str:
    """The row label: the metric name, with its sample (members + non-members) when logged."""
    label = name
    for m in rows.values():
        if f"{name}.n_members" in m and f"{name}.n_nonmembers" in m:
            label += f" (n={int(m[f'{name}.n_members'])}+{int(m[f'{name}.n_nonmembers'])})"
            break
    return label


def _change(a, b) -> str:
    """``a - b`` signed, or a dash when either side is missing."""
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or math.isnan(a) or math.isnan(b):
        return "–"
    return f"{a - b:+.4f}"


def metrics_table(rows: dict[str, dict[str, float]], names=HEADLINE_METRICS) -> str:
    """A markdown table of ``names``: one column per entry of ``rows``.

    With two entries the first is this version and the second its parent (e.g. ``{"v2": ...,
    "v1 (parent)": ...}``), and a ``change`` column gives this version minus the parent. The two
    columns must hold figures measured on the same records: :func:`forget_table` builds them so.
    A figure logged with its interval shows it (``value [lo, hi]``), and its row names its sample.
    """
    cols = list(rows)
    heads = cols + (["change"] if len(cols) == 2 else [])
    out = ["| metric | " + " | ".join(heads) + " |", "| --- |" + " ---: |" * len(heads)]
    for n in names:
        if any(n in rows[c] for c in cols):
            cells = [_cell(rows[c], n) for c in cols]
            if len(cols) == 2:
                cells.append(_change(rows[cols[0]].get(n), rows[cols[1]].get(n)))
            out.append(f"| {_label(n, rows)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def matched_parent(metrics: Mapping[str, float], parent_run: Mapping[str, float] | None = None) -> dict[str, float]:
    """The parent's column of a forget's table: every figure the child's audit measured on the
    parent (``X.parent.Y``, on the same records as the child's ``X.Y``), renamed to ``X.Y``; plus,
    from the parent's own run, only figures on records that never change (``acc.test``,
    ``loss.test``: the held-out records), where the child's audit did not measure them. Nothing
    measured on other records (a trained version's sample of training records, its accuracy on
    all its training records) is ever set beside the child's figure."""
    out: dict[str, float] = {}
    for k, v in (parent_run or {}).items():
        if k in _SAME_RECORDS_ANYWHERE:
            out[k] = v
    for k, v in metrics.items():
        head, _, rest = k.partition(".")
        if rest.startswith("parent.") and parent_metric(f"{head}.{rest[len('parent.') :]}") == k:
            out[f"{head}.{rest[len('parent.') :]}"] = v
    return out


def forget_table(version, parent_version, metrics: Mapping[str, float], parent_run=None) -> str:
    """``metric | vN | vP (parent) | change`` of a forget's child, the parent's column matched
    (:func:`matched_parent`)."""
    return metrics_table(
        {f"v{version}": dict(metrics), f"v{parent_version} (parent)": matched_parent(metrics, parent_run)}
    )


def set_verdict_line(description: str, line: str) -> str:
    """``description`` with ``line`` (``**Audit verdict: ...**``) as its first paragraph, replacing
    the one there; a purge's note (``**Purged**``) stays above it."""
    paras = [p for p in description.split("\n\n") if not p.startswith(VERDICT_START)] if description else []
    at = 1 if paras and paras[0].startswith("**Purged**") else 0
    return "\n\n".join(paras[:at] + [line] + paras[at:])


def verdict_line(verdict) -> str:
    """The description's first paragraph for ``verdict`` (:class:`mlflow_amnesia.audit.verdict.Verdict`)."""
    return f"{VERDICT_START} {verdict.outcome}** — {verdict.reason}"


def verdict_tags(verdict) -> dict[str, str]:
    """``amnesia.audit.verdict`` and ``amnesia.audit.verdict_reason`` for ``verdict``."""
    return {TAG_VERDICT: verdict.outcome, TAG_VERDICT_REASON: verdict.reason}


def version_verdict(mv, metrics: Mapping[str, float] | None = None):
    """The verdict on the registered version ``mv`` from its run's figures (or ``metrics``)."""
    import shlex

    from ..audit.verdict import verdict_from_metrics

    parent = (mv.tags or {}).get(TAG_PARENT)
    return verdict_from_metrics(
        run_metrics(mv.run_id) if metrics is None else metrics,
        forget=parent is not None,
        parent_ref=f"--model {shlex.quote(mv.name)} --version {parent}" if parent is not None else None,
    )


def run_metrics(run_id: str | None) -> dict[str, float]:
    if not run_id:
        return {}
    try:
        return dict(client().get_run(run_id).data.metrics)
    except Exception:  # noqa: BLE001 - a deleted parent run only empties a table column
        return {}


# ---------------------------------------------------------------------------------------------
# descriptions: links the MLflow UI follows, the table, the lineage picture

LINEAGE_ARTIFACT = "lineage.png"  # on each forget's source run: the version tree up to that version
_TABLE_START = "| metric |"
_LINKS_START = "**Lineage:**"


def version_link(name: str, version) -> str:
    """The MLflow UI's page of a model version, as a link relative to the UI's page."""
    return f"#/models/{quote(str(name), safe='')}/versions/{version}"


def run_link(experiment_id: str, run_id: str) -> str:
    """The MLflow UI's page of a run, relative to the UI's page."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def artifact_link(run_id: str, path: str) -> str:
    """A run artifact as the tracking server serves it (``/get-artifact``), relative to the UI's page."""
    return f"get-artifact?path={quote(path)}&run_uuid={run_id}"


def _md(text: str) -> str:
    """``text`` safe inside a markdown link's label."""
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


def split_description(description: str) -> tuple[str, str, str]:
    """``(head, table, tail)``: the text before the metrics table, the table, the text after it."""
    if _TABLE_START not in description:
        return description.rstrip(), "", ""
    head, rest = description.split(_TABLE_START, 1)
    lines = (_TABLE_START + rest).split("\n")
    n = next((i for i, ln in enumerate(lines) if not ln.startswith("|")), len(lines))
    return head.rstrip(), "\n".join(lines[:n]), "\n".join(lines[n:]).strip()


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


def replace_table(description: str, table: str) -> str:
    """``description`` with its metrics table replaced (text before and after it kept)."""
    head, _, tail = split_description(description)
    return _join(head, table, tail)


def links_line(
    name: str, *, parent: str | None, run_id: str | None, run_name: str | None, experiment_id: str | None
) -> str:
    """``**Lineage:** parent v1 · source run <name>`` as markdown links into the MLflow UI."""
    parts = []
    if parent is not None:
        parts.append(f"parent [v{parent}]({version_link(name, parent)})")
    if run_id and experiment_id is not None:
        parts.append(f"source run [{_md(run_name or run_id)}]({run_link(experiment_id, run_id)})")
    return f"{_LINKS_START} " + " · ".join(parts) if parts else ""


def compose_description(description: str, *, links: str = "", picture: str = "") -> str:
    """The job's ``description`` (summary, then table) with the links line after the summary and
    the lineage picture after the table; links and picture already there are replaced."""
    head, table, tail = split_description(description)
    head = "\n\n".join(p for p in head.split("\n\n") if not p.startswith(_LINKS_START))
    tail = "\n\n".join(p for p in tail.split("\n\n") if not p.startswith("![lineage"))
    return _join(head, links, table, picture, tail)


def annotate_version(
    mv, *, tags: Mapping[str, object], description: str, aliases: tuple[str, ...] = (), picture: bytes | None = None
) -> None:
    """Set ``tags`` and ``aliases`` on a registered version and write its description.

    The description gets a line of links (parent version, source run). ``picture`` (a PNG: the
    caller draws the lineage picture, :func:`mlflow_amnesia.jobs.lineage.picture_of`) is logged on
    the source run as ``lineage.png`` and shown in the description of a version with a parent (a
    forget); logging it is best effort (a warning, never a failure: the version is registered by now).
    """
    c = client()
    for k, v in tags.items():
        c.set_model_version_tag(mv.name, mv.version, k, str(v))
    for a in aliases:
        c.set_registered_model_alias(mv.name, a, mv.version)
    mv = c.get_model_version(mv.name, str(mv.version))  # every tag, whoever set it
    parent = (mv.tags or {}).get(TAG_PARENT)
    run = None
    if mv.run_id:
        try:
            run = c.get_run(mv.run_id)
        except Exception:  # noqa: BLE001 - a version whose run is gone gets no run link
            run = None
    links = links_line(
        mv.name,
        parent=parent,
        run_id=mv.run_id,
        run_name=run.info.run_name if run else None,
        experiment_id=run.info.experiment_id if run else None,
    )
    image = ""
    if parent is not None and run is not None and picture is not None:
        image = _log_picture(mv, picture)
    c.update_model_version(
        mv.name, mv.version, description=compose_description(description, links=links, picture=image)
    )


def _log_picture(mv, png: bytes) -> str:
    """Log the lineage picture ``png`` on ``mv``'s run; the markdown image, or "" on failure."""
    import tempfile
    from pathlib import Path

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / LINEAGE_ARTIFACT
            path.write_bytes(png)
            client().log_artifact(mv.run_id, str(path))
    except Exception as e:  # noqa: BLE001 - a picture must not fail a registered version
        say(f"warning: the lineage picture of {mv.name} v{mv.version} was not drawn: {type(e).__name__}: {e}")
        return ""
    return f"![lineage of {_md(mv.name)} up to v{mv.version}]({artifact_link(mv.run_id, LINEAGE_ARTIFACT)})"


# ---------------------------------------------------------------------------------------------
# The superseded banner: the first thing a parent's page says once a forget replaced it

BANNER_START = "> **Superseded by v"  # how a superseded version's description starts


def superseded_banner(name: str, version: int | str, child: int | str, n_records: int | str) -> str:
    """One markdown quote line: superseded by ``child``, still holding the contribution of the
    ``n_records`` records the child forgot, and the purge command that erases it."""
    return (
        f"{BANNER_START}{child}.** This version still holds the contribution of the {n_records} "
        f"record(s) v{child} forgot: serve [v{child}]({version_link(name, child)}) instead, and erase this one "
        f"for good with `mlflow-amnesia purge --model {shlex.quote(name)} --version {version}`."
    )


def without_banner(description: str) -> str:
    """``description`` without its superseded banner (if any)."""
    d = description or ""
    if not d.startswith(BANNER_START):
        return d
    return d.split("\n", 1)[1].lstrip("\n") if "\n" in d else ""


def with_banner(description: str, banner: str) -> str:
    """``description`` starting with ``banner`` (once: an older banner is replaced)."""
    rest = without_banner(description)
    return f"{banner}\n\n{rest}" if rest else banner
