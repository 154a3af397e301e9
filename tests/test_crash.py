"""Real processes: `train` and `forget` SIGKILLed at several points, and two forgets at once.

Each test starts `mlflow-amnesia` in a child process (tests/reliability_child.py injects the
fault) against its own copy of the module's trained registry, then checks what a user relies on:

* every registered version has all its artifacts (it loads) and the tags it was registered with;
* no parent ever has two live children (a second child would miss the first one's records);
* re-running the killed command works (a killed train restarts afresh with a new run).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import FULL, MODEL, invoke

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("reliability_child.py")
KILLED = -signal.SIGKILL


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_AMNESIA_QUIET": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _start(*args: str, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CHILD), *args], env=_env(**extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run(*args: str, **extra: str) -> tuple[int, str]:
    p = _start(*args, **extra)
    out, _ = p.communicate(timeout=300)
    return p.returncode, out


def _ids(n: int, skip: int = 0) -> list[str]:
    return invoke("records", "--model", MODEL, "--limit", str(n + skip)).output.split()[skip:]


def _write(d: Path, ids: list[str], name: str = "ids.txt") -> str:
    p = d / name
    p.write_text("\n".join(ids) + "\n")
    return str(p)


def _forget_args(ids_file: str, *extra: str) -> list[str]:
    return ["forget", "--model", MODEL, "--records", ids_file, "--yes", "--no-audit", *extra]


def _versions(name: str = MODEL):
    from mlflow_amnesia.mlflow import registry

    return sorted(registry.client().search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))


def _assert_sound(name: str = MODEL) -> None:
    """Every registered version loads and carries its tags; no parent has two children; each
    child's forgotten records include its parent's."""
    from mlflow_amnesia.mlflow import registry
    from mlflow_amnesia.mlflow.flavor import load_model

    vs = _versions(name)
    parents = [v.tags[registry.TAG_PARENT] for v in vs if registry.TAG_PARENT in v.tags]
    assert len(parents) == len(set(parents)), f"two children of one parent: {[(v.version, v.tags) for v in vs]}"
    loaded = {}
    for v in vs:
        assert v.tags.get(registry.TAG_METHOD), f"v{v.version} was registered without its tags"
        loaded[int(v.version)] = am = load_model(f"models:/{name}/{v.version}")  # artifacts complete
        assert am.segments and am.segments[0].open_store().steps
    for v in vs:
        p = v.tags.get(registry.TAG_PARENT)
        if p:
            child, parent = loaded[int(v.version)].forgotten, loaded[int(p)].forgotten
            assert set(map(bytes, parent)) <= set(map(bytes, child))


def _run_status(run_name_prefix: str) -> list[str]:
    from mlflow_amnesia.mlflow import registry

    c = registry.client()
    runs = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])]
    return [r.info.status for r in runs if (r.info.run_name or "").startswith(run_name_prefix)]


# --------------------------------------------------------------------------------------------
# forget, killed


@pytest.mark.parametrize("point", ["audit", "upload"])
def test_forget_killed_before_registration_registers_nothing_and_reruns(registry_copy, point):
    ids = _write(registry_copy, _ids(2))
    rc, out = _run(*_forget_args(ids), AMNESIA_TEST_KILL_AT=point)
    assert rc == KILLED, out
    assert [int(v.version) for v in _versions()] == [1]
    assert _run_status(f"forget-{MODEL}") == ["RUNNING"]  # MLflow cannot know the process died
    _assert_sound()
    invoke(*_forget_args(ids))
    assert [int(v.version) for v in _versions()] == [1, 2]
    _assert_sound()


def test_forget_killed_right_after_registration_leaves_a_complete_version(registry_copy):
    from mlflow_amnesia.mlflow import registry

    ids = _ids(2)
    rc, out = _run(*_forget_args(_write(registry_copy, ids)), AMNESIA_TEST_KILL_AT="registered")
    assert rc == KILLED, out
    v1, v2 = _versions()
    assert v2.tags[registry.TAG_PARENT] == "1" and v2.tags[registry.TAG_N_RECORDS] == "2"
    assert registry.TAG_SUPERSEDED not in v1.tags  # the kill came before this last step...
    _assert_sound()
    r = invoke(*_forget_args(_write(registry_copy, ids[:1], "again.txt"), "--version", "1"), ok=False)
    assert r.exit_code == 1 and "superseded by v2" in r.output  # ...yet v1 is known to have a child
    r = invoke(*_forget_args(_write(registry_copy, ids, "same.txt")))  # the re-run finishes the request
    assert "completed the earlier registration of v2" in r.output
    v1, v2 = _versions()
    assert v1.tags[registry.TAG_SUPERSEDED] == "2" and "forgets 2 record(s) from v1" in v2.description
    r = invoke(*_forget_args(_write(registry_copy, ids, "same.txt")), ok=False)
    assert r.exit_code == 1 and "already forgotten" in r.output  # a finished request: nothing to do
    invoke(*_forget_args(_write(registry_copy, _ids(1, skip=2), "next.txt")))
    assert [(int(v.version), v.tags.get(registry.TAG_PARENT)) for v in _versions()] == [(1, None), (2, "1"), (3, "2")]
    _assert_sound()


# the windows between a forget's steps after registration: each kill point of reliability_child.py
# in the order forget reaches them; the first two leave the alias on the parent (the re-run
# resolves `--alias production` to the parent), the others on the child
REGISTRATION_WINDOWS = ["registered", "described", "aliased", "superseded", "bannered", "ledgered", "purging"]


@pytest.mark.parametrize("point", REGISTRATION_WINDOWS)
def test_forget_killed_after_registration_is_finished_by_its_rerun(registry_copy, point):
    from mlflow_amnesia.mlflow import registry
    from mlflow_amnesia.jobs.purge import TAG_PURGED

    name = f"crash-{point}"
    invoke(*_train_args(name), "--codec", "f32")  # its own store: the purge deletes its chunks
    c = registry.client()
    c.set_registered_model_alias(name, "production", "1")
    ids = invoke("records", "--model", name, "--limit", "2").output.split()
    args = ["forget", "--model", name, "--alias", "production", "--records", _write(registry_copy, ids), "--yes",
            "--no-audit", "--set-alias", "production", "--purge"]
    rc, out = _run(*args, AMNESIA_TEST_KILL_AT=point)
    assert rc == KILLED, out
    assert [int(v.version) for v in _versions(name)] == [1, 2]
    at = int(c.get_model_version_by_alias(name, "production").version)
    assert at == (1 if point in ("registered", "described") else 2)

    r = invoke(*args)  # the same command again
    assert "completed the earlier registration of v2" in r.output, r.output
    assert "purged crash-" in r.output and "Traceback" not in r.output
    v1, v2 = _versions(name)  # exactly one child
    assert v2.tags[registry.TAG_PARENT] == "1" and v2.tags[registry.TAG_N_RECORDS] == "2"
    assert int(c.get_model_version_by_alias(name, "production").version) == 2
    assert v1.tags[registry.TAG_SUPERSEDED] == "2" and TAG_PURGED in v1.tags
    assert f"**{name} v2** forgets 2 record(s) from v1" in v2.description and "| metric |" in v2.description
    assert v1.description.startswith("**Purged**") and registry.BANNER_START not in v1.description
    r = invoke(*args, ok=False)  # and once finished, the request is done
    assert r.exit_code == 1 and "already forgotten" in r.output


def test_forget_killed_at_a_random_moment(registry_copy):
    ids = _write(registry_copy, _ids(2))
    p = _start(*_forget_args(ids))
    deadline = time.monotonic() + 120
    while not _run_status(f"forget-{MODEL}") and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.05)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 2.0))
    p.send_signal(signal.SIGKILL)
    out, _ = p.communicate(timeout=60)
    assert p.returncode in (KILLED, 0), out
    _assert_sound()
    r = invoke(*_forget_args(ids), ok=False)
    assert r.exit_code == 0 or "already forgotten" in r.output, r.output
    assert [int(v.version) for v in _versions()] == [1, 2]
    _assert_sound()


# --------------------------------------------------------------------------------------------
# train, killed


def _train_args(name: str) -> list[str]:
    return ["train", "--arch", "cnn", "--epochs", "1", "--batch-size", "128", "--no-audit", "--model-name", name]


def test_train_killed_while_recording_restarts_cleanly(registry_copy):
    from mlflow_amnesia.mlflow import registry
    from mlflow_amnesia.recording.store import DeltaStore

    rc, out = _run(*_train_args("crash-train"), AMNESIA_TEST_KILL_AT="recording:5")
    assert rc == KILLED, out
    assert _versions("crash-train") == []
    c = registry.client()
    (killed,) = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id])
                 if r.data.tags.get("amnesia.model_name") == "crash-train"]
    assert killed.info.status == "RUNNING"
    # the killed run's store holds an unbroken prefix of committed steps, every one sound
    store = DeltaStore.open(killed.data.tags["amnesia.store"])
    assert store.steps == list(range(len(store.steps))) and len(store.steps) <= 5
    assert store.verify() == []

    invoke(*_train_args("crash-train"))  # restart: a new run, a new store
    (v1,) = _versions("crash-train")
    assert v1.run_id != killed.info.run_id
    _assert_sound("crash-train")


def test_train_killed_right_after_registration_leaves_a_complete_tagged_version(registry_copy):
    from mlflow_amnesia.mlflow import registry

    rc, out = _run(*_train_args("crash-reg"), AMNESIA_TEST_KILL_AT="registered")
    assert rc == KILLED, out
    (v1,) = _versions("crash-reg")
    assert v1.tags[registry.TAG_METHOD] == "train" and int(v1.tags["amnesia.steps_total"]) > 0
    assert not v1.description  # the description comes after: cosmetic, the version is whole
    _assert_sound("crash-reg")


# The very first train on a new sqlite database: MLflow creates the schema (~1,700 statements,
# ~1 s) in the file itself. Killed there, the file used to be wedged for good (`table
# _alembic_tmp_jobs already exists`, an out-of-date schema). Now the schema is built in a temp
# file beside it and moved into place whole: a kill leaves no database or a complete one.
# Five points spread over the creation (MLFLOW_AMNESIA_TEST_FULL=1: ten); each kill is a fresh `train`.
_SCHEMA_KILLS = [1, 3, 40, 180, 420, 700, 950, 1200, 1450, 1650] if FULL else [1, 40, 420, 950, 1650]


def _complete_database(db: Path) -> bool:
    import sqlalchemy
    import mlflow.store.db.utils as db_utils

    engine = db_utils.create_sqlalchemy_engine(f"sqlite:///{db}")
    try:
        tables = set(sqlalchemy.inspect(engine).get_table_names())
        return (db_utils._all_tables_exist(engine) and not any(t.startswith("_alembic_tmp_") for t in tables)
                and db_utils._get_schema_version(engine) == db_utils._get_latest_schema_revision())
    finally:
        engine.dispose()


@pytest.mark.parametrize("n", _SCHEMA_KILLS)
def test_first_train_killed_while_creating_the_database_never_wedges_it(tmp_path, monkeypatch, n):
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(var, uri)
    rc, out = _run(*_train_args("first"), AMNESIA_TEST_KILL_AT=f"schema:{n}")
    assert rc == KILLED, out
    db = tmp_path / "mlflow.db"
    assert not db.exists() or _complete_database(db), "a kill while creating the database left it half-made"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    r = invoke(*_train_args("first"), ok=False)
    assert r.exit_code == 0, r.output  # the next train works, whatever moment the kill hit
    assert [int(v.version) for v in _versions("first")] == [1]
    _assert_sound("first")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlruns"]  # no temp file left


# Ctrl-C while the program starts (Python loading torch and MLflow, ~3 s here): one line, exit
# 130, nothing created; never a KeyboardInterrupt traceback.
_PROGRAM = Path(sys.executable).with_name("mlflow-amnesia")


@pytest.mark.parametrize("delay", [0.5, 1.0, 1.5, 2.0, 2.5, 3.5])
def test_ctrl_c_while_the_program_starts_is_one_line(tmp_path, monkeypatch, delay):
    from mlflow_amnesia.interrupts import STARTUP_MESSAGE

    if not _PROGRAM.exists():
        pytest.skip(f"no installed {_PROGRAM}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ids.txt").write_text("digits:1\n")
    before = sorted(tmp_path.iterdir())
    env = _env(MLFLOW_TRACKING_URI="sqlite:///mlflow.db", MLFLOW_REGISTRY_URI="sqlite:///mlflow.db")
    # the child starts with SIGINT at its default, as under a terminal: pytest may itself have been
    # started with it ignored (a background job of a non-interactive shell), which a child inherits
    p = subprocess.Popen([str(_PROGRAM), "forget", "--model", MODEL, "--records", "ids.txt", "--yes"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    lines = out.strip().splitlines()
    assert "Traceback" not in out and len(lines) == 1, out
    if "there is no MLflow database" in lines[0]:
        # the signal came after the command had failed (no database here), maybe as Python exited
        assert delay > 1.0 and p.returncode in (1, -signal.SIGINT), out
    else:
        assert p.returncode == 130, out
        assert lines[0] == STARTUP_MESSAGE or lines[0].startswith("interrupted"), out
    assert sorted(tmp_path.iterdir()) == before  # no database, no temp file


# --------------------------------------------------------------------------------------------
# two forgets at once


def _two_forgets(tmp: Path, lock_dirs: tuple[str, str], barrier: str | None) -> tuple[list[tuple[int, str]], list[str]]:
    ids = _ids(4)
    files = [_write(tmp, ids[:2], "a.txt"), _write(tmp, ids[2:], "b.txt")]
    procs = []
    for f, lock in zip(files, lock_dirs):
        extra = {"MLFLOW_AMNESIA_LOCK_DIR": lock}
        if barrier:
            extra["AMNESIA_TEST_BARRIER"] = barrier
        procs.append(_start(*_forget_args(f), **extra))
    return [(p.wait(timeout=300), p.stdout.read()) for p in procs], files


def test_two_forgets_on_one_machine_queue_and_chain(registry_copy, tmp_path):
    from mlflow_amnesia.mlflow import registry
    from mlflow_amnesia.mlflow.flavor import load_model

    shared = str(tmp_path / "locks")
    results, _ = _two_forgets(tmp_path, (shared, shared), barrier=None)
    assert [rc for rc, _ in results] == [0, 0], results
    vs = _versions()
    assert [(int(v.version), v.tags.get(registry.TAG_PARENT)) for v in vs] == [(1, None), (2, "1"), (3, "2")]
    assert len(load_model(f"models:/{MODEL}/3").forgotten) == 4  # the second kept the first's records
    _assert_sound()


def test_two_forgets_from_two_machines_leave_one_child_and_one_clear_refusal(registry_copy, tmp_path):
    """Separate lock directories stand for two machines; the barrier makes both pass the
    "parent has no child yet" check and register together: the tie-break alone decides."""
    from mlflow_amnesia.mlflow import registry
    from mlflow_amnesia.mlflow.flavor import load_model

    (tmp_path / "barrier").mkdir()
    results, files = _two_forgets(tmp_path, (str(tmp_path / "m1"), str(tmp_path / "m2")),
                                  barrier=f"{tmp_path / 'barrier'}:2")
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 1], results
    loser_out = next(out for rc, out in results if rc == 1)
    assert "another forget of" in loser_out and "re-run the same command" in loser_out
    assert "v3, registered at the same moment, lost (lower version wins) and was deleted" in loser_out
    assert "Traceback" not in loser_out
    live = [v for v in _versions() if v.tags.get(registry.TAG_PARENT) == "1"]
    assert [int(v.version) for v in live] == [2]  # never two children of v1: the lower one stays
    _assert_sound()

    loser_file = files[[rc for rc, _ in results].index(1)]
    invoke(*_forget_args(loser_file))  # the re-run builds on the winner
    last = _versions()[-1]
    assert last.tags[registry.TAG_PARENT] == str(live[0].version)
    assert len(load_model(f"models:/{MODEL}/{last.version}").forgotten) == 4
    _assert_sound()
