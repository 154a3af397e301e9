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


# --------------------------------------------------------------------------------------------
# train and forget options: refused while parsing, before any database, run, lock or file exists
# (the CLI), or as the first step of mlflow_amnesia.train.train / forget.forget (Python)


def _tree(*roots) -> set[str]:
    """Every path under ``roots`` (files and directories), to show nothing was created."""
    from pathlib import Path

    return {str(p) for r in roots for p in Path(r).rglob("*")}


def _one_line_refusal(r, *needles: str) -> None:
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert "Traceback" not in r.output
    for n in needles:
        assert n in lines[0], (n, lines[0])


_BAD_TRAIN = [
    (["--lr", "nan"], "--lr nan", "finite number above 0"),
    (["--lr", "0"], "--lr 0", "above 0"),
    (["--lr", "-0.1"], "--lr -0.1", "above 0"),
    (["--lr", "inf"], "--lr inf", "finite"),
    (["--momentum", "-0.5"], "--momentum -0.5", "0 or more"),
    (["--momentum", "nan"], "--momentum nan", "finite"),
    (["--weight-decay", "-1e-4"], "--weight-decay -0.0001", "0 or more"),
    (["--weight-decay", "inf"], "--weight-decay inf", "finite"),
    (["--codec", "zip"], "--codec zip", "f32, bf16, int8"),
    (["--store-uri", "garbage://x"], "--store-uri garbage://x", "unknown scheme 'garbage'"),
    (["--store-uri", "mlflow-artifacts:/deltas"], "--store-uri mlflow-artifacts:/deltas", "served through MLflow"),
    (["--store-uri", "runs:/abc/deltas"], "--store-uri runs:/abc/deltas", "served through MLflow"),
    (["--store-uri", "https://example.com/deltas"], "--store-uri https://example.com/deltas", "served through MLflow"),
    (["--store-uri", "{file}/deltas"], "--store-uri {file}/deltas", "is not a directory"),
    (["--store-uri", "{file}"], "--store-uri {file}", "is not a directory"),
    # MLflow refuses these names only at registration, after the whole training run
    (["--model-name", "a/b"], "--model-name a/b", "cannot contain / or :"),
    (["--model-name", "models:/x"], "--model-name models:/x", "cannot contain / or :"),
    (["--model-name", "  "], "--model-name   ", "blank"),
    (["--model-name", ".."], "--model-name ..", "starting with .."),
]


@pytest.mark.parametrize("args, named, why", _BAD_TRAIN, ids=[" ".join(a) for a, _, _ in _BAD_TRAIN])
def test_bad_train_options_are_one_line_and_create_nothing(tmp_path, monkeypatch, args, named, why):
    import mlflow

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a directory")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(var, uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    before = _tree(tmp_path)
    fill = {"file": str(tmp_path / "a-file")}
    r = CliRunner().invoke(main, ["train", "--arch", "cnn", *[a.format(**fill) for a in args]])
    _one_line_refusal(r, named.format(**fill), why)
    assert _tree(tmp_path) == before  # no database (so no run), no mlruns, no store directory


def test_an_unwritable_store_directory_is_refused(tmp_path, monkeypatch):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["train", "--store-uri", str(ro / "deltas")])
    _one_line_refusal(r, f"--store-uri {ro / 'deltas'}", "not writable")
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("where", ["/proc/amnesia-store", "/proc/amnesia-store/deeper", "/sys/amnesia-store"])
def test_a_store_directory_no_one_can_create_is_refused_even_as_root(tmp_path, monkeypatch, where):
    """Permission bits pass for root everywhere; /proc and /sys refuse a mkdir anyway (the replay of
    issue 13 found train tracebacking there, leaving a FAILED run)."""
    import os

    if not os.path.isdir(os.path.dirname(where.split("/deeper")[0]) or "/"):
        pytest.skip(f"no {where} on this system")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["train", "--store-uri", where])
    _one_line_refusal(r, f"--store-uri {where}", "cannot be created")
    assert not (tmp_path / "mlflow.db").exists()


def test_good_store_uris_pass_and_create_nothing(tmp_path):
    from mlflow_amnesia.jobs.validation import writable_store_uri

    for uri in (str(tmp_path / "new" / "deeper"), f"file://{tmp_path}/x", str(tmp_path), "memory://deltas"):
        assert writable_store_uri(uri) == uri
    assert writable_store_uri("") is None and writable_store_uri(None) is None
    assert list(tmp_path.iterdir()) == []


def test_a_store_uri_whose_driver_is_not_installed_says_which(monkeypatch):
    import importlib.util

    from mlflow_amnesia.errors import InputError
    from mlflow_amnesia.jobs.validation import writable_store_uri

    if importlib.util.find_spec("gcsfs"):
        pytest.skip("gcsfs is installed here")
    with pytest.raises(InputError, match=r"^--store-uri gs://b/p: .*gcsfs.*not installed here"):
        writable_store_uri("gs://b/p")


_BAD_FORGET = [
    (["--repair-lr", "nan"], "--repair-lr nan", "finite number above 0"),
    (["--repair-lr", "0"], "--repair-lr 0", "above 0"),
    (["--store-uri", "garbage://x"], "--store-uri garbage://x", "unknown scheme"),
    (["--store-uri", "mlflow-artifacts:/x"], "--store-uri mlflow-artifacts:/x", "served through MLflow"),
    # MLflow refuses these aliases only when the alias is set, after v2 is registered
    (["--set-alias", "latest"], "--set-alias latest", "reserved by MLflow"),
    (["--set-alias", "V3"], "--set-alias V3", "reserved by MLflow"),
    (["--set-alias", "a b"], "--set-alias a b", "letters, digits, _ and - only"),
    (["--set-alias", ""], "--set-alias ", "letters, digits, _ and - only"),
    # only amnesiac repairs: the version would carry a repair tag and params for a repair that never ran
    (["--method", "retrain"], "--repair finetune with --method retrain", "only --method amnesiac repairs"),
    (["--method", "relabel"], "--repair finetune with --method relabel", "only --method amnesiac repairs"),
]


@pytest.mark.parametrize("args, named, why", _BAD_FORGET, ids=[" ".join(a) for a, _, _ in _BAD_FORGET])
def test_bad_forget_options_are_one_line_before_any_run_or_rollback(registry_copy, args, named, why):
    from helpers import MODEL

    from mlflow_amnesia.mlflow import registry

    c = registry.client()
    runs = lambda: sum(len(c.search_runs([e.experiment_id])) for e in c.search_experiments())  # noqa: E731
    n_runs = runs()
    ids = registry_copy / "ids.txt"
    ids.write_text("digits:1\n")
    before = _tree(registry_copy)
    r = CliRunner().invoke(main, ["forget", "--model", MODEL, "--records", str(ids), "--repair", "finetune",
                                  "--yes", "--no-audit", *args])
    _one_line_refusal(r, named, why)
    assert runs() == n_runs
    assert [int(v.version) for v in c.search_model_versions(f"name='{MODEL}'")] == [1]
    assert _tree(registry_copy) == before


@pytest.mark.parametrize("kwargs, named", [
    ({"lr": float("nan")}, "lr=nan"), ({"lr": 0.0}, "lr=0.0"), ({"momentum": -1.0}, "momentum=-1.0"),
    ({"weight_decay": float("inf")}, "weight_decay=inf"), ({"codec": "zip"}, "codec='zip'"),
    ({"store_uri": "garbage://x"}, "store_uri='garbage://x'"), ({"epochs": 0}, "epochs=0"),
    ({"batch_size": 2.5}, "batch_size=2.5"), ({"model_name": "a/b"}, "model_name='a/b'"),
])
def test_train_in_python_checks_its_arguments_first(tmp_path, monkeypatch, kwargs, named):
    from mlflow_amnesia.errors import InputError
    from mlflow_amnesia.jobs.train import train

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="^" + named.replace("(", r"\(").replace(".", r"\.")):
        train(arch="cnn", epochs=kwargs.pop("epochs", 1), **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, named", [({"repair_lr": float("nan")}, "repair_lr=nan"),
                                           ({"repair_lr": -1.0}, "repair_lr=-1.0"),
                                           ({"store_uri": "runs:/x"}, "store_uri='runs:/x'"),
                                           ({"set_alias": "latest"}, "set_alias='latest'"),
                                           ({"method": "retrain"}, "--repair finetune with --method retrain")])
def test_forget_in_python_checks_its_arguments_first(tmp_path, monkeypatch, kwargs, named):
    from mlflow_amnesia.errors import InputError
    from mlflow_amnesia.jobs.forget import forget

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="^" + named.replace(".", r"\.")):
        forget("no-such-model", ids=["digits:1"], repair="finetune", **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("uri", ["file:///{tmp}/fs", "{tmp}/fs", "./mlruns"])
def test_a_file_store_tracking_uri_is_one_line_and_creates_nothing(tmp_path, monkeypatch, uri):
    """MLflow 3 refuses the file store with a traceback-sized exception; the command says it in one
    line, naming the variable and the fix, and nothing is created."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = uri.format(tmp=tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(var, uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for args in (["records", "--model", "m"], ["train", "--arch", "cnn"]):
        r = CliRunner().invoke(main, args)
        _one_line_refusal(r, f"the tracking URI {uri} (MLFLOW_TRACKING_URI) is a file store",
                          "sqlite:///mlflow.db", "MLFLOW_ALLOW_FILE_STORE=true")
    assert list(tmp_path.iterdir()) == []


def test_the_options_mlflow_refuses_late_are_checked_as_mlflow_checks_them():
    """The early checks take what MLflow takes and refuse what it refuses (so no forget is refused
    that MLflow would have registered)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils import validation as mv

    from mlflow_amnesia.errors import InputError
    from mlflow_amnesia.jobs.validation import alias_name, registered_model_name

    def mlflow_alias(a):
        mv._validate_model_alias_name(a)
        mv._validate_model_alias_name_reserved(a)

    for check, theirs, values in (
        (alias_name, mlflow_alias, ["production", "a-b_9", "latest", "LATEST", "v3", "V12", "v", "v3a", "a b",
                                    "", "é", "x" * 255, "x" * 256, "a.b", "a/b"]),
        (registered_model_name, mv._validate_model_name, ["digits-cnn", "a b", "a/b", "a:b", ".", "..", "..x",
                                                          "x..y", " ", "é-model", "a.b"]),
    ):
        for v in values:
            try:
                theirs(v)
                ok = True
            except MlflowException:
                ok = False
            try:
                check(v)
                mine = True
            except InputError:
                mine = False
            assert mine == ok, (check.__name__, v, ok)
