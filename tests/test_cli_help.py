"""The CLI explains itself: every option has help, choices come from the name registries, the top
level names the record key, ``--version`` means a model version only, the key is announced once
when it is created, progress lines never read ``0.0 models/s`` nor give a first ETA that counts the
warm-up, and the offline data error names options and a command (issue 18's rough edges)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from mlflow_amnesia.cli import main


def _commands():
    return sorted(main.commands.items())


@pytest.mark.parametrize("name,cmd", _commands())
def test_every_option_of_every_command_has_help(name, cmd):
    missing = [p.opts[0] for p in cmd.params if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()]
    assert not missing, f"{name}: options without help: {missing}"
    assert (cmd.help or "").strip(), f"{name} has no help text"


def test_method_and_repair_choices_come_from_the_registries():
    from mlflow_amnesia.unlearn import METHODS, REPAIRS

    forget = main.commands["forget"]
    by_name = {p.name: p for p in forget.params}
    assert sorted(getattr(by_name["method"].type, "choices", [])) == sorted(METHODS.names())
    assert sorted(by_name["repair"].type.choices) == sorted(REPAIRS.names())
    out = CliRunner().invoke(main, ["forget", "--help"]).output
    assert "[amnesiac|" in out and "--repair-epochs" in out and "Epochs of the --repair finetune" in out


def test_top_level_help_names_the_record_key_and_what_version_means():
    out = CliRunner().invoke(main, ["--help"]).output
    assert "MLFLOW_AMNESIA_KEY" in out and "back it up" in out
    assert "-V, --program-version" in out and "--version N on a command is a model version" in out


def test_version_is_a_model_version_and_the_program_version_is_V():
    r = CliRunner().invoke(main, ["-V"])
    assert r.exit_code == 0 and re.match(r"mlflow-amnesia \d", r.output), r.output
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 2 and "names a model version" in r.output and "mlflow-amnesia -V" in r.output


def test_the_key_is_announced_once_by_the_process_that_creates_it(tmp_path, monkeypatch):
    from mlflow_amnesia import keys

    monkeypatch.delenv("MLFLOW_AMNESIA_KEY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("MLFLOW_AMNESIA_QUIET", "1")  # announced even when progress is quiet
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    first = keys.load_key(create=True)
    assert keys.load_key(create=True) == first
    text = err.getvalue()
    assert text.count("created the record key") == 1, text
    assert str(tmp_path / "cfg" / "mlflow-amnesia" / "key") in text and "back it up" in text
    assert first.hex() not in text  # the key itself is never printed


def test_two_processes_creating_the_key_at_once_announce_it_once(tmp_path):
    code = "from mlflow_amnesia import keys; keys.load_key(create=True)"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_AMNESIA_KEY"}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "cfg")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    assert sum(e.count("created the record key") for e in errs) == 1, errs


def test_progress_never_shows_a_zero_rate_and_the_first_eta_excludes_the_warm_up(monkeypatch):
    from mlflow_amnesia import progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    p = progress.Progress("shadow models", total=4, unit="models", interval=0.0, quiet=False, stream=out)
    clock[0] = 40.0
    p.update()  # the first model: no rate yet (one point is not a rate)
    clock[0] = 70.0
    p.update()
    clock[0] = 100.0
    p.close()
    lines = out.getvalue().splitlines()
    assert "0.0 models/s" not in out.getvalue()
    assert lines[0] == "shadow models: 1/4 models"
    assert lines[1] == "shadow models: 2/4 models  30s/model  ETA 1m00s"
    assert lines[2].startswith("shadow models: 2/4 models  50s/model  in 1m40s")

    out = io.StringIO()
    clock[0] = 0.0
    p = progress.Progress("training", total=1000, unit="steps", interval=0.0, quiet=False, stream=out)
    clock[0] = 300.0  # a slow first step: imports, data set loading
    p.update()
    clock[0] = 301.0
    p.update(99)  # then 99 steps a second: the rest takes 9 s, not 45 minutes
    assert out.getvalue().splitlines()[1] == "training: 100/1000 steps  99.0 steps/s  ETA 9s"


def test_the_offline_data_error_names_options_and_a_command(tmp_path):
    from mlflow_amnesia.errors import InputError
    from mlflow_amnesia.learning import data as D

    with pytest.raises(InputError) as e:
        D.load_dataset("mnist", root=tmp_path, download=False)
    msg = str(e.value)
    assert "--data-root" in msg and "mlflow-amnesia train --dataset mnist" in msg and "load_dataset(" not in msg
