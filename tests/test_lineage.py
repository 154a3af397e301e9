"""The lineage a reader sees without a terminal: the version description (summary, links, the
figures table beside the parent's) and the lineage picture (``lineage.png`` on each forget run,
``mlflow-amnesia lineage --format png``). The browser check of the same is tests/test_ui.py."""

from __future__ import annotations

import io
from pathlib import Path

from helpers import MODEL, invoke

from mlflow_amnesia.mlflow import registry
from mlflow_amnesia.jobs.lineage import node_label, node_status, render_png, tree_layout

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(version, parent=None, **kw):
    r = {"version": version, "parent": parent, "method": "train" if parent is None else "amnesiac", "repair": "none",
         "n_records": 0 if parent is None else 2, "steps_rolled_back": 0 if parent is None else 3, "steps_total": 24,
         "forget_request": None if parent is None else "ab" * 32, "superseded_by": None, "aliases": [],
         "purged": None, "purge_started": None, "run_id": None, "metrics": {}}
    r.update(kw)
    return r


def _png_size(data: bytes) -> tuple[int, int]:
    import matplotlib.image

    assert data[:8] == PNG_MAGIC
    h, w = matplotlib.image.imread(io.BytesIO(data), format="png").shape[:2]
    return w, h


# --------------------------------------------------------------------------------------------
# pure parts: the table, the description, the tree


def test_metrics_table_has_a_change_column_against_the_parent():
    t = registry.metrics_table({"v2": {"acc.test": 0.9, "audit.mia.auc": 0.5}, "v1 (parent)": {"acc.test": 0.95}})
    lines = t.splitlines()
    assert lines[0] == "| metric | v2 | v1 (parent) | change |"
    assert "| acc.test | 0.9000 | 0.9500 | -0.0500 |" in lines
    assert "| audit.mia.auc | 0.5000 | – | – |" in lines  # no parent figure: no change either
    single = registry.metrics_table({"this version": {"acc.test": 0.9}})
    assert single.splitlines()[0] == "| metric | this version |"


def test_refreshing_the_table_keeps_summary_links_and_picture():
    desc = registry.compose_description(
        "**m v2** forgets 2 record(s)\n\n" + registry.metrics_table({"v2": {"acc.test": 0.5}, "v1 (parent)": {}}),
        links="**Lineage:** parent [v1](#/models/m/versions/1)", picture="![lineage of m up to v2](get-artifact?x)")
    head, table, tail = registry.split_description(desc)
    assert head.startswith("**m v2** forgets") and head.endswith("(#/models/m/versions/1)")
    assert "0.5000" in table and tail == "![lineage of m up to v2](get-artifact?x)"
    new = registry.replace_table(desc, registry.metrics_table({"v2": {"acc.test": 0.75}, "v1 (parent)": {}}))
    assert "0.7500" in new and "0.5000" not in new
    assert "**Lineage:** parent [v1]" in new and new.endswith("(get-artifact?x)")
    # composing again (an audit, a re-annotation) replaces links and picture, never doubles them
    again = registry.compose_description(new, links="**Lineage:** parent [v1](#/models/m/versions/1)",
                                         picture="![lineage of m up to v2](get-artifact?y)")
    assert again.count("**Lineage:**") == 1 and again.count("![lineage") == 1 and "get-artifact?y" in again


def test_ui_links_are_relative_to_the_mlflow_ui():
    assert registry.version_link("my model/x", 3) == "#/models/my%20model%2Fx/versions/3"
    assert registry.run_link("7", "abc") == "#/experiments/7/runs/abc"
    assert registry.artifact_link("abc", "lineage.png") == "get-artifact?path=lineage.png&run_uuid=abc"


def test_tree_layout_puts_children_below_parents_and_parents_over_their_children():
    rows = [_row(1), _row(2, 1), _row(3, 1), _row(4, 2), _row(5), _row(6, 99)]  # v6: parent not listed -> a root
    pos = tree_layout(rows)
    assert {v: d for v, (_, d) in pos.items()} == {1: 0, 2: 1, 3: 1, 4: 2, 5: 0, 6: 0}
    assert pos[1][0] == (pos[2][0] + pos[3][0]) / 2 and pos[2][0] == pos[4][0]
    leaves = [pos[v][0] for v in (4, 3, 5, 6)]
    assert len(set(leaves)) == 4  # no two leaves share a slot


def test_node_status_and_label_say_what_was_forgotten_and_never_an_id():
    rows = [_row(1), _row(2, 1, metrics={"acc.test": 0.91234, "audit.mia.auc": 0.5}), _row(3, 2, purged="2026-01-01; x")]
    assert node_status(rows[0], rows) == "superseded by v2"  # a child exists, even before the tag is set
    assert node_status(rows[2], rows) == "purged"
    assert node_status(_row(7, purge_started="t"), []) == "purge not finished"
    label = node_label(rows[1], rows)
    assert "v2 · amnesiac" in label and "forgot 2 record(s) · 3 step(s) rolled back" in label
    assert "request abababababab…" in label and "acc.test 0.912" in label and "mia.auc 0.500" in label


def test_render_png_grows_with_the_tree():
    one = _png_size(render_png("m", [_row(1)]))
    chain = _png_size(render_png("m", [_row(1), _row(2, 1), _row(3, 2)], highlight=3))
    wide = _png_size(render_png("m", [_row(1), _row(2, 1), _row(3, 1), _row(4, 1)]))
    assert chain[1] > one[1] and wide[0] > chain[0]


# --------------------------------------------------------------------------------------------
# through the CLI, on conftest's tiny trained registry


def _forget(tmp_path: Path, n: int, *extra: str):
    ids = invoke("records", "--model", MODEL, "--limit", str(n)).output
    p = tmp_path / f"ids-{n}.txt"
    p.write_text(ids)
    return invoke("forget", "--model", MODEL, "--records", str(p), "--yes", "--no-audit", *extra)


def test_the_retained_records_pass_a_no_audit_forget_skips_is_the_next_audits(registry_copy):
    _forget(registry_copy, 1)
    c = registry.client()
    v2 = c.get_model_version(MODEL, "2")
    assert "acc.retain" not in c.get_run(v2.run_id).data.metrics
    invoke("audit", "--model", MODEL, "--accuracy-only")  # not the forget's figures again: it measures
    m = c.get_run(v2.run_id).data.metrics
    assert 0.0 <= m["acc.retain"] <= 1.0 and m["acc.retain.n"] > 0
    assert "| acc.retain | –" not in registry.resolve_version(MODEL).description


def test_forget_describes_and_draws_its_lineage(registry_copy, monkeypatch):
    import mlflow

    _forget(registry_copy, 2)
    c = registry.client()
    v1, v2 = c.get_model_version(MODEL, "1"), c.get_model_version(MODEL, "2")
    run = c.get_run(v2.run_id)
    head, table, tail = registry.split_description(v2.description)
    assert f"**Lineage:** parent [v1]({registry.version_link(MODEL, 1)})" in head
    assert f"source run [{run.info.run_name}]({registry.run_link(run.info.experiment_id, v2.run_id)})" in head
    assert "forgets 2 record(s) from v1" in head and v2.tags[registry.TAG_REQUEST][:16] in head
    assert table.splitlines()[0] == "| metric | v2 | v1 (parent) | change |"
    m1, m2 = c.get_run(v1.run_id).data.metrics, run.data.metrics
    acc = next(ln for ln in table.splitlines() if ln.startswith("| acc.test |"))
    assert acc == f"| acc.test | {m2['acc.test']:.4f} | {m1['acc.test']:.4f} | {m2['acc.test'] - m1['acc.test']:+.4f} |"
    # --no-audit: the held-out and forgotten records only; the retained records are the audit's
    assert "acc.forget" in m2 and "acc.retain" not in m2 and "acc.retain.n" not in m2
    assert tail == f"![lineage of {MODEL} up to v2]({registry.artifact_link(v2.run_id, registry.LINEAGE_ARTIFACT)})"
    # the picture is on the forget run; version 1 (trained) has no parent, hence no picture
    png = Path(mlflow.artifacts.download_artifacts(run_id=v2.run_id, artifact_path=registry.LINEAGE_ARTIFACT,
                                                   dst_path=str(registry_copy / "dl")))
    w, h = _png_size(png.read_bytes())
    assert w >= 400 and h >= 300
    assert "![lineage" not in (v1.description or "") and "source run [" in v1.description

    # `audit` refreshes the table and keeps links and picture
    from mlflow_amnesia.jobs.audit import audit_version

    audit_version(MODEL, version=2, privacy=False)
    refreshed = c.get_model_version(MODEL, "2").description
    assert refreshed.count("**Lineage:**") == 1 and refreshed.endswith(tail)


def test_lineage_png_command(registry_copy, monkeypatch):
    _forget(registry_copy, 1)
    _forget(registry_copy, 2)
    monkeypatch.chdir(registry_copy)
    r = invoke("lineage", "--model", MODEL, "--format", "png")
    out = registry_copy / f"lineage-{MODEL}.png"
    assert f"wrote lineage-{MODEL}.png" in r.output and "3 version(s)" in r.output
    w3, h3 = _png_size(out.read_bytes())
    invoke("lineage", "--model", MODEL, "--format", "png", "--output", str(registry_copy / "x.png"))
    assert (registry_copy / "x.png").read_bytes()[:8] == PNG_MAGIC
    invoke("lineage", "--model", MODEL, "--format", "json", "-o", str(registry_copy / "l.json"))
    assert '"version": 3' in (registry_copy / "l.json").read_text()
    # the picture logged by the first forget shows the tree up to v2: shorter than the whole tree
    import mlflow

    v2 = registry.client().get_model_version(MODEL, "2")
    p2 = mlflow.artifacts.download_artifacts(run_id=v2.run_id, artifact_path=registry.LINEAGE_ARTIFACT,
                                             dst_path=str(registry_copy / "dl"))
    assert _png_size(Path(p2).read_bytes())[1] < h3
    nowhere = invoke("lineage", "--model", MODEL, "--format", "png", "-o", str(registry_copy / "no" / "dir.png"), ok=False)
    assert nowhere.exit_code == 1 and "cannot write the lineage to" in nowhere.output
    bad = invoke("lineage", "--model", "no-such-model", "--format", "png", ok=False)
    assert bad.exit_code == 1 and "no registered model named 'no-such-model'" in bad.output


def test_a_failing_picture_warns_and_registers_anyway(registry_copy, monkeypatch):
    import mlflow_amnesia.jobs.lineage as lineage

    def boom(*a, **k):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(lineage, "render_png", boom)
    monkeypatch.setenv("MLFLOW_AMNESIA_QUIET", "0")
    r = _forget(registry_copy, 1)
    assert f"warning: the lineage picture of {MODEL} v2 was not drawn: RuntimeError: no fonts" in r.output
    v2 = registry.client().get_model_version(MODEL, "2")
    assert v2.tags[registry.TAG_PARENT] == "1" and "![lineage" not in v2.description
    assert "**Lineage:** parent [v1]" in v2.description
    assert registry.client().get_model_version(MODEL, "1").tags[registry.TAG_SUPERSEDED] == "2"
