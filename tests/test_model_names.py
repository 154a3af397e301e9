"""Registered model names with quotes, backticks and spaces (MLflow accepts any name without '/'
or ':'): every command works on them. Registry searches go through registry.search_versions,
which quotes the name for MLflow's filter grammar (registry.filter_literal) or, where that
grammar cannot spell it, matches a pattern and compares exactly.
"""

from __future__ import annotations

import pytest
from helpers import invoke

NAMES = [
    pytest.param("o'brien", id="single-quote", marks=pytest.mark.slow),
    pytest.param('say "hi" now', id="double-quote-space", marks=pytest.mark.slow),
    pytest.param("it's `a \"b\"` c\\", id="both-quotes-backtick-space-backslash"),
]


@pytest.mark.parametrize("name", NAMES)
def test_the_full_cycle_on_a_name_with_quotes(registry_copy, tmp_path, name):
    from mlflow_amnesia.mlflow import registry
    from mlflow_amnesia.jobs.purge import TAG_PURGED

    invoke("train", "--arch", "cnn", "--epochs", "1", "--batch-size", "128", "--codec", "f32", "--no-audit",
           "--model-name", name)
    twin = name.translate(str.maketrans("'\"\\", "___"))  # found by the pattern match too: compared exactly
    invoke("train", "--arch", "cnn", "--epochs", "1", "--batch-size", "128", "--codec", "f32", "--no-audit",
           "--model-name", twin)
    ids = invoke("records", "--model", name, "--limit", "2").output.split()
    assert len(ids) == 2
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    r = invoke("forget", "--model", name, "--records", str(tmp_path / "ids.txt"), "--yes", "--no-audit",
               "--set-alias", "production")
    assert f"{name} v2 (parent v1" in r.output
    assert not set(ids) & set(invoke("records", "--model", name).output.split())
    out = invoke("lineage", "--model", name).output
    assert "v1: train" in out and "v2 [production]: amnesiac" in out
    assert "acc.retain" in invoke("audit", "--model", name, "--accuracy-only").output
    assert "purged " in invoke("purge", "--model", name, "--version", "1", "--yes").output
    assert "OK" in invoke("verify", "--model", name).output
    vs = registry.search_versions(name)
    assert [(v.name, int(v.version)) for v in vs] == [(name, 1), (name, 2)]
    assert TAG_PURGED in vs[0].tags and vs[0].tags[registry.TAG_SUPERSEDED] == "2"
    assert [int(v.version) for v in registry.search_versions(twin)] == [1]


@pytest.mark.parametrize("value, want", [
    ("plain", "'plain'"), ("o'brien", "\"o'brien\""), ('say "hi"', "'say \"hi\"'"), ("a`b c", "'a`b c'"),
    ("both'\"", None), ("ends\\", None), ("mid\\dle", "'mid\\dle'"),
])
def test_filter_literal_quotes_what_the_grammar_can_spell(value, want):
    from mlflow_amnesia.mlflow.registry import filter_literal

    assert filter_literal(value) == want


def test_search_versions_finds_exactly_the_name_and_tags(registry_copy):
    from mlflow_amnesia.mlflow import registry

    c = registry.client()
    src = c.get_model_version("digits-cnn", "1").source
    names = ["o'brien", "O'BRIEN", "o\"brien", "it's \"x\"", "it_s _x_", "it's \"x\"y"]
    for n in names:
        c.create_registered_model(n)
        c.create_model_version(n, src, tags={"amnesia.parent_version": "1"})
        c.create_model_version(n, src, tags={"amnesia.parent_version": "it's \"2\""})
    for n in names:
        assert [(v.name, int(v.version)) for v in registry.search_versions(n)] == [(n, 1), (n, 2)]
        got = registry.search_versions(n, tags={"amnesia.parent_version": "it's \"2\""})
        assert [(v.name, int(v.version)) for v in got] == [(n, 2)]
