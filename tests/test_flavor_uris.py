"""`--model` takes a name, `models:/NAME/N` or `models:/NAME@ALIAS` in every command that takes
it; anything else is a one-line error before the tracking store is touched."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mlflow_amnesia.cli import main
from mlflow_amnesia.errors import InputError
from mlflow_amnesia.jobs.validation import merge_reference, model_reference


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("digits-cnn", ("digits-cnn", None, None)),
        ("models:/digits-cnn", ("digits-cnn", None, None)),
        ("models:/digits-cnn/latest", ("digits-cnn", None, None)),
        ("models:/digits-cnn/3", ("digits-cnn", 3, None)),
        ("models:/digits-cnn@production", ("digits-cnn", None, "production")),
        ("models:/my model/2", ("my model", 2, None)),
    ],
)
def test_names_and_uris(value, expected):
    ref = model_reference(value)
    assert (ref.name, ref.version, ref.alias) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("models:/digits-cnn/x", "the version must be a number >= 1"),
        ("models:/digits-cnn/0", "the version must be a number >= 1"),
        ("models:/digits-cnn/1/2", "the version must be a number >= 1"),
        ("models:/", "the version must be a number"),
        ("models:/@prod", "expected models:/NAME@ALIAS"),
        ("models:/m-0123456789abcdef", "a logged model id"),
        ("runs:/0123/model", "not a registered model"),
        ("s3://bucket/model", "not a registered model"),
        ("  ", "--model is empty"),
    ],
)
def test_bad_references_name_the_value(value, message):
    with pytest.raises(InputError, match=message):
        model_reference(value)


def test_a_uri_and_a_flag_must_agree():
    assert merge_reference(model_reference("models:/m/2"), 2, None).version == 2
    with pytest.raises(InputError, match="models:/m/2 and --version 3 disagree"):
        merge_reference(model_reference("models:/m/2"), 3, None)
    with pytest.raises(InputError, match="--model models:/m/2 and --alias production: a version and an alias both given"):
        merge_reference(model_reference("models:/m/2"), None, "production")
    with pytest.raises(InputError, match="^--version 1 and --alias production: a version and an alias both given"):
        merge_reference(model_reference("m"), 1, "production")  # the flags named as typed (scripts/erasure_check.py)


@pytest.mark.parametrize(
    "command",
    [
        ["records"],
        ["forget", "--records", "ids.txt", "--yes"],
        ["audit"],
        ["verify"],
        ["lineage"],
        ["purge", "--version", "1", "--yes"],
    ],
)
def test_every_command_refuses_a_bad_uri_in_one_line(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, [command[0], "--model", "runs:/abc/model", *command[1:]])
    assert r.exit_code == 1, r.output
    assert r.output.strip().splitlines() == [
        "Error: --model runs:/abc/model: not a registered model; give a registered model name, "
        "models:/NAME/N or models:/NAME@ALIAS"
    ]
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was created
