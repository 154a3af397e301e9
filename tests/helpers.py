"""Helpers shared by the CLI-level tests (the fixtures `trained` and `registry_copy` are in conftest.py)."""

from __future__ import annotations

from click.testing import CliRunner

MODEL = "digits-cnn"
KEY = "22" * 32


def invoke(*args: str, ok: bool = True):
    from mlflow_amnesia.cli import main

    r = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if ok:
        assert r.exit_code == 0, r.output
    return r
