"""Option parsing shared by train, forget and audit (no model needed: parsing fails first)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mlflow_amnesia.cli import _optional_count, main


@pytest.mark.parametrize("value, want", [(None, None), ("", None), ("  ", None), ("2", 2), (16, 16)])
def test_shadows_accepts_a_count_or_empty_for_the_default(value, want):
    assert _optional_count(None, None, value) == want


@pytest.mark.parametrize("value, message", [("1", "below 2"), ("x", "not an integer"), ("-3", "below 2")])
def test_shadows_refuses_what_cannot_be_a_shadow_count(value, message):
    r = CliRunner().invoke(main, ["audit", "--model", "m", "--shadows", value])
    assert r.exit_code == 2
    assert message in r.output and "--shadows" in r.output
