"""The name registry (mlflow_amnesia.names) and the registries built on it: methods, repairs,
codecs, data sets, architectures, and the CLI choices taken from them."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mlflow_amnesia.errors import InputError


def test_a_registry_refuses_a_second_object_under_a_taken_name():
    from mlflow_amnesia.names import Registry

    r: Registry[int] = Registry("widget")
    r.register("a", 1)
    with pytest.raises(InputError, match="a widget named 'a' is registered already"):
        r.register("a", 2)
    assert r.get("a") == 1


def test_a_registry_miss_names_the_choices_in_registration_order():
    from mlflow_amnesia.names import Registry

    r: Registry[int] = Registry("widget")
    r.register("b", 1)
    r.register("a", 2)
    assert r.names() == ("b", "a")
    with pytest.raises(InputError, match=r"unknown widget 'c'; choose one of b, a"):
        r.get("c")
    with pytest.raises(InputError, match="unknown widget"):
        r.get(["not", "a", "name"])  # unhashable: a clear miss, not a TypeError


def test_a_registry_adds_the_entries_of_its_entry_point_group_when_first_asked(monkeypatch):
    import mlflow_amnesia.names as names

    class EP:
        name = "plugin"

        def load(self):
            return 42

    groups = []
    monkeypatch.setattr(names, "entry_points", lambda group: groups.append(group) or [EP()])
    r: names.Registry[int] = names.Registry("widget", entry_point_group="example.widgets")
    r.register("built-in", 1)
    assert groups == []  # nothing loaded until a name is needed
    assert r.get("plugin") == 42 and r.names() == ("built-in", "plugin")
    assert groups == ["example.widgets"]


def test_registering_a_method_under_a_taken_name_is_refused_not_silently_replaced():
    from mlflow_amnesia.unlearn import METHODS, UnlearningMethod, get_method, register_method
    from mlflow_amnesia.unlearn.amnesiac import Amnesiac

    class Impostor(UnlearningMethod):
        name = "amnesiac"

        def apply(self, ctx):  # pragma: no cover - never registered
            raise AssertionError

    with pytest.raises(InputError, match="unlearning method named 'amnesiac' is registered already"):
        register_method(Impostor)
    assert METHODS.get("amnesiac") is Amnesiac and isinstance(get_method("amnesiac"), Amnesiac)


def test_methods_repairs_codecs_data_sets_and_architectures_are_registries():
    from mlflow_amnesia.learning.data import DATASETS, KNOWN_SPECS
    from mlflow_amnesia.learning.models import ARCHITECTURES, ARCHS
    from mlflow_amnesia.recording.store.codecs import CODEC_NAMES, CODECS
    from mlflow_amnesia.unlearn import METHODS, REPAIRS

    assert METHODS.names() == ("amnesiac", "finetune", "relabel", "retrain")
    assert REPAIRS.names() == ("none", "finetune", "replay")
    assert CODECS.names() == CODEC_NAMES == ("f32", "bf16", "int8", "int4", "zstd")
    assert DATASETS.names() == ("digits", "mnist", "cifar100", "idx")
    assert KNOWN_SPECS == ("digits", "mnist", "cifar100", "idx:<dir>")
    assert ARCHITECTURES.names() == ARCHS == ("resnet18", "cnn", "mlp", "builder")
    with pytest.raises(InputError, match="unknown repair 'polish'; available: none, finetune, replay"):
        REPAIRS.get("polish")


def test_the_forget_help_lists_the_registered_methods_and_repairs():
    from mlflow_amnesia.cli import main

    r = CliRunner().invoke(main, ["forget", "--help"])
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())
    assert "--method [amnesiac|finetune|relabel|retrain]" in flat
    assert "--repair [none|finetune|replay]" in flat
    r = CliRunner().invoke(main, ["train", "--help"])
    assert "--codec [f32|bf16|int8|int4|zstd]" in " ".join(r.output.split())


def test_an_unknown_method_is_one_line_naming_the_methods_before_anything_exists(tmp_path, monkeypatch):
    import mlflow

    from mlflow_amnesia.cli import main

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(var, uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    r = CliRunner().invoke(main, ["forget", "--model", "m", "--records", "ids.txt", "--method", "forgetful"])
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "unknown unlearning method 'forgetful'; available: amnesiac, finetune, relabel, retrain" in lines[0]
    assert list(tmp_path.iterdir()) == []  # no database, no run
