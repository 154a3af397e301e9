"""Bad input is refused with a message naming it, and nothing changes; no pickle anywhere;
a tracking server that is down is reported in seconds; the registry-level race guard.

Cases already covered elsewhere are not repeated here: missing / empty / binary / non-UTF-8 ids
files and unknown ids (test_cli_e2e.py), damaged and newer-format stores and codec frames at the
store level (tests/store/), damaged and newer index files (test_index.py), another flavor at the
flavor level (test_flavor.py). docs/RELIABILITY.md maps every failure mode to its test.
"""

from __future__ import annotations

import ast
import json
import socket
import struct
import threading
import time
import tracemalloc
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from helpers import MODEL, invoke

REPO = Path(__file__).resolve().parents[1]


def _forget(*args: str, ok: bool = False):
    return invoke("forget", "--model", MODEL, *args, "--yes", "--no-audit", ok=ok)


def _ids(n: int) -> list[str]:
    return invoke("records", "--model", MODEL, "--limit", str(n)).output.split()


def _write(tmp_path: Path, ids: list[str], name: str = "ids.txt") -> str:
    p = tmp_path / name
    p.write_text("\n".join(ids) + "\n")
    return str(p)


def _versions(name: str = MODEL) -> list[int]:
    from mlflow_amnesia.mlflow import registry

    return sorted(int(v.version) for v in registry.client().search_model_versions(f"name='{name}'"))


def _n_runs() -> int:
    from mlflow_amnesia.mlflow import registry

    c = registry.client()
    return sum(len(c.search_runs([e.experiment_id])) for e in c.search_experiments())


def _version_dir(version: int = 1) -> Path:
    """Where version ``version``'s artifacts live (shared by the tests of this module: restore!)."""
    from mlflow_amnesia.mlflow import registry

    c = registry.client()
    mv = c.get_model_version(MODEL, str(version))
    model_id = mv.source.rsplit("/", 1)[-1]  # source is models:/<logged model id>
    return Path(urlparse(c.get_logged_model(model_id).artifact_location).path)


def _refused(r, *needles: str) -> None:
    assert r.exit_code == 1, r.output
    for n in needles:
        assert n in r.output, (n, r.output)
    assert "Traceback" not in r.output


# --------------------------------------------------------------------------------------------
# ids files (the rest: test_cli_e2e.py::test_bad_ids_files)


def test_huge_ids_file_is_refused_before_it_is_read(registry_copy):
    from mlflow_amnesia.ids import MAX_BYTES

    p = registry_copy / "huge.txt"
    with p.open("wb") as f:
        f.truncate(MAX_BYTES + 1)  # sparse: no disk used, and never read
    _refused(_forget("--records", str(p)), str(p), "over the 256 MiB limit", "split the request")
    assert _versions() == [1]


def test_duplicate_ids_are_forgotten_once_and_reported(registry_copy, monkeypatch):
    from mlflow_amnesia.mlflow import registry

    ids = _ids(2)
    path = _write(registry_copy, [ids[0], ids[1], ids[0], "  " + ids[0]])
    monkeypatch.setenv("MLFLOW_AMNESIA_QUIET", "0")
    r = _forget("--records", path, ok=True)
    assert f"{path}: 2 duplicate id(s) ignored" in r.stderr
    assert registry.resolve_version(MODEL).tags["amnesia.n_records"] == "2"


def test_ids_of_another_model_say_so(registry_copy):
    r = _forget("--records", _write(registry_copy, ["mnist:train:1", "mnist:train:2"]))
    _refused(r, "'mnist:train:1'", "None of them is", "trained on data set 'digits'", "another model")
    assert _versions() == [1]


def test_unreadable_ids_file_is_named(registry_copy):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    p = Path(_write(registry_copy, _ids(1)))
    p.chmod(0)
    _refused(_forget("--records", str(p)), f"cannot read ids file {p}", "permissions")


# --------------------------------------------------------------------------------------------
# a damaged store, a newer format, another flavor: refused, the registry unchanged


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "delete"])
def test_damaged_chunk_fails_the_forget_naming_step_and_file(registry_copy, damage):
    from mlflow_amnesia.mlflow.flavor import load_model
    from mlflow_amnesia.keys import load_key

    ids = _ids(1)
    v1 = load_model(f"models:/{MODEL}/1")
    seg = v1.segments[0]
    step = int(seg.open_index(load_key()).steps_for(ids)[0])
    store_dir = Path(urlparse(seg.store_url).path)
    chunk = store_dir / seg.open_store().chunk_files(step)[0]
    saved = chunk.read_bytes()
    try:
        if damage == "corrupt":
            b = bytearray(saved)
            b[len(b) // 2] ^= 0x10
            chunk.write_bytes(bytes(b))
        elif damage == "truncate":
            chunk.write_bytes(saved[:-7])
        else:
            chunk.unlink()
        # a sealed chunk's read checks its AES-GCM tag and authentication (sha256 is verify's)
        want = {"corrupt": "fails authentication", "truncate": "truncated or overwritten", "delete": "is missing"}[damage]
        r = _forget("--records", _write(registry_copy, ids))
        _refused(r, f"step {step}: chunk file {chunk}", want, "verify")
        assert _versions() == [1]
        out = invoke("verify", "--model", MODEL, ok=False)
        assert out.exit_code == 1 and f"step {step}" in out.output
    finally:
        chunk.write_bytes(saved)
    _forget("--records", _write(registry_copy, ids), ok=True)  # repaired: the same request now succeeds
    assert _versions() == [1, 2]


def test_newer_store_manifest_in_the_version_is_refused_before_any_run(registry_copy):
    mpath = _version_dir() / "data" / "segments" / "0" / "manifest.json"
    saved = mpath.read_bytes()
    m = json.loads(saved)
    m["format_version"] = 99
    runs, ids = _n_runs(), _write(registry_copy, _ids(1))
    try:
        mpath.write_text(json.dumps(m))
        r = _forget("--records", ids)
    finally:
        mpath.write_bytes(saved)
    _refused(r, f"{MODEL} v1, train segment", "format version 99", "upgrade mlflow-amnesia")
    assert _versions() == [1] and _n_runs() == runs


def test_newer_flavor_format_is_refused_naming_the_version(registry_copy):
    ipath = _version_dir() / "data" / "amnesia.json"
    saved = ipath.read_bytes()
    info = json.loads(saved)
    info["format_version"] = 2
    runs, ids = _n_runs(), _write(registry_copy, _ids(1))
    try:
        ipath.write_text(json.dumps(info))
        r = _forget("--records", ids)
    finally:
        ipath.write_bytes(saved)
    _refused(r, f"{MODEL} v1 cannot be forgotten from", "format version 2", "Upgrade mlflow-amnesia")
    assert _versions() == [1] and _n_runs() == runs


def test_a_version_of_another_flavor_is_refused(registry_copy, tmp_path):
    import mlflow

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="m", python_model=Echo(), registered_model_name="other-flavor")
    assert info.registered_model_version == 1
    r = invoke("forget", "--model", "other-flavor", "--records", _write(tmp_path, ["digits:1"]), "--yes", "--no-audit", ok=False)
    _refused(r, "other-flavor v1 cannot be forgotten from", "not an mlflow_amnesia model", "python_function")
    assert _versions("other-flavor") == [1]


def test_a_frame_declaring_a_huge_size_is_refused_by_the_store_before_allocating(tmp_path):
    """The sha256 in the manifest matches and the chunk is sealed under the key (the writer itself
    was wrong or hostile): the frame's declared size is still checked against the layout before
    anything is allocated."""
    from mlflow_amnesia.crypto import ChunkCipher
    from mlflow_amnesia.errors import ChunkCorruptedError
    from mlflow_amnesia.recording.store import DeltaStore
    from mlflow_amnesia.recording.store.chunk import pack_chunk as _pack_chunk, seal_chunk as _seal_chunk
    import hashlib

    url, key = str(tmp_path / "s"), b"\x11" * 32
    with DeltaStore.create(url, layout=[{"name": "w", "shape": [10]}], codec="f32", key=key) as st:
        st.append(0, {"w": np.ones(10, np.float32)})
    salt = bytes.fromhex(json.loads((tmp_path / "s" / "manifest.json").read_text())["encryption"]["salt"])
    evil = _pack_chunk([struct.pack("<IB", 0xFD2FB528, 0xE0) + struct.pack("<Q", 1 << 40) + b"\x01\x00\x00"])
    evil = _seal_chunk(ChunkCipher(key, salt), 0, 0, evil)
    (tmp_path / "s" / "chunks" / "0.0.zst").write_bytes(evil)
    mpath = tmp_path / "s" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["steps"][0]["chunks"][0].update(bytes=len(evil), sha256=hashlib.sha256(evil).hexdigest(), tag=evil[-16:].hex())
    mpath.write_text(json.dumps(m))
    st = DeltaStore.open(url, key=key)
    tracemalloc.start()
    try:
        with pytest.raises(ChunkCorruptedError, match=r"step 0: chunk file .*0\.0\.zst: zstd frame declares 1099511627776 bytes"):
            st.sum([0])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_a_chunk_file_grown_huge_is_not_read_whole(tmp_path):
    from mlflow_amnesia.errors import ChunkCorruptedError
    from mlflow_amnesia.recording.store import DeltaStore

    url = str(tmp_path / "s")
    with DeltaStore.create(url, layout=[{"name": "w", "shape": [10]}], codec="f32", key=b"\x11" * 32) as st:
        st.append(0, {"w": np.ones(10, np.float32)})
    with open(tmp_path / "s" / "chunks" / "0.0.zst", "ab") as f:
        f.truncate(1 << 34)  # 16 GiB, sparse
    with pytest.raises(ChunkCorruptedError, match=r"has more than \d+ bytes, the manifest records"):
        DeltaStore.open(url, key=b"\x11" * 32).read(0)


# --------------------------------------------------------------------------------------------
# a tracking server that is down


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _use_server(monkeypatch, uri: str) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


@pytest.mark.parametrize("cmd", [["forget", "--model", MODEL, "--records", "ids.txt", "--yes"], ["records", "--model", MODEL],
                                 ["train", "--arch", "cnn", "--epochs", "1"]])
def test_a_tracking_server_that_is_down_is_reported_in_seconds(monkeypatch, tmp_path, cmd):
    monkeypatch.chdir(tmp_path)
    Path("ids.txt").write_text("digits:1\n")
    uri = f"http://127.0.0.1:{_free_port()}"
    _use_server(monkeypatch, uri)
    t0 = time.monotonic()
    r = invoke(*cmd, ok=False)
    _refused(r, f"cannot reach the tracking server at {uri}", "connection failed", "MLFLOW_TRACKING_URI")
    assert time.monotonic() - t0 < 30  # MLflow's own retries take ~4 minutes
    assert not list(tmp_path.glob("mlruns")) and not list(tmp_path.glob("*.db"))


def test_a_tracking_server_that_never_answers_times_out(monkeypatch, tmp_path):
    with socket.socket() as srv:  # listens (the kernel completes the handshake) but never answers
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        uri = f"http://127.0.0.1:{srv.getsockname()[1]}"
        _use_server(monkeypatch, uri)
        monkeypatch.setenv("MLFLOW_AMNESIA_PROBE_TIMEOUT", "0.5")
        r = invoke("lineage", "--model", MODEL, ok=False)
    _refused(r, f"cannot reach the tracking server at {uri}", "no answer within 0.5 s")


# --------------------------------------------------------------------------------------------
# the tracking store at start-up: a URI MLflow cannot use, a missing, foreign or wedged sqlite
# database are one line before MLflow touches anything; only train creates a database, and only
# where its directory exists


_STARTING = {
    "train": ["train", "--arch", "cnn", "--epochs", "1", "--no-audit"],
    "forget": ["forget", "--model", MODEL, "--records", "ids.txt", "--yes", "--no-audit"],
    "lineage": ["lineage", "--model", MODEL],
    "records": ["records", "--model", MODEL],
    "audit": ["audit", "--model", MODEL, "--accuracy-only"],
    "purge": ["purge", "--model", MODEL, "--version", "1", "--yes"],
    "verify": ["verify", "--model", MODEL],
}


def _use_stores(monkeypatch, tracking: str, registry: str | None = None) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", registry or tracking)
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry or tracking)


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a directory): nothing created, nothing changed."""
    return {str(p): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def _one_line(r, code: int = 1) -> str:
    assert r.exit_code == code, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


@pytest.mark.parametrize("cmd", ["train", "forget", "lineage"])
@pytest.mark.parametrize("which", ["tracking", "registry"])
def test_a_uri_mlflow_does_not_know_is_one_line_and_creates_nothing(tmp_path, monkeypatch, cmd, which):
    monkeypatch.chdir(tmp_path)
    Path("ids.txt").write_text("digits:1\n")
    good = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _use_stores(monkeypatch, "garbage://x", good) if which == "tracking" else _use_stores(monkeypatch, good, "garbage://x")
    before = _tree(tmp_path)
    line = _one_line(invoke(*_STARTING[cmd], ok=False))
    env = "MLFLOW_TRACKING_URI" if which == "tracking" else "MLFLOW_REGISTRY_URI"
    assert f"the {which} URI garbage://x ({env}) has a scheme MLflow does not know ('garbage'" in line, line
    assert "sqlite:///mlflow.db" in line  # what to set instead
    assert _tree(tmp_path) == before  # not even the valid one's database


@pytest.mark.parametrize("cmd", ["train", "lineage", "forget"])
def test_a_mistyped_sqlite_path_creates_no_directory_and_no_database(tmp_path, monkeypatch, cmd):
    monkeypatch.chdir(tmp_path)
    Path("ids.txt").write_text("digits:1\n")
    _use_stores(monkeypatch, "sqlite:///no/such/dir/mlflow.db")
    before = _tree(tmp_path)
    line = _one_line(invoke(*_STARTING[cmd], ok=False))
    assert f"MLFLOW_TRACKING_URI is sqlite:///no/such/dir/mlflow.db, but the directory {tmp_path}/no/such/dir does not exist" in line
    assert ("mkdir -p" in line) == (cmd == "train")
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("cmd", [c for c in _STARTING if c != "train"])
def test_a_command_other_than_train_never_creates_a_database(tmp_path, monkeypatch, cmd):
    monkeypatch.chdir(tmp_path)  # an empty directory, the CLI's default store: sqlite:///mlflow.db
    Path("ids.txt").write_text("digits:1\n")
    _use_stores(monkeypatch, "sqlite:///mlflow.db")
    before = _tree(tmp_path)
    line = _one_line(invoke(*_STARTING[cmd], ok=False))
    assert f"there is no MLflow database at {tmp_path / 'mlflow.db'}" in line and "run `mlflow-amnesia train`" in line
    assert "MLFLOW_TRACKING_URI" in line
    assert _tree(tmp_path) == before  # issue 18: no empty mlflow.db left behind


def _foreign_sqlite(path: Path) -> None:
    import sqlite3

    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE notes (body TEXT)")


@pytest.mark.parametrize("kind, needle", [
    ("text", "is not an SQLite database"),
    ("empty", "is an empty file, not an MLflow database"),
    ("directory", "is a directory, not an SQLite database"),
    ("foreign", "is an SQLite database but not an MLflow one"),
    ("damaged", "is a damaged SQLite database"),
])
@pytest.mark.parametrize("cmd", ["train", "lineage"])
def test_a_file_that_is_not_an_mlflow_database_is_named_and_left_alone(tmp_path, monkeypatch, cmd, kind, needle):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow.db"
    if kind == "text":
        db.write_text("my notes, not a database\n")
    elif kind == "empty":
        db.write_bytes(b"")
    elif kind == "directory":
        db.mkdir()
    elif kind == "foreign":
        _foreign_sqlite(db)
    else:
        _foreign_sqlite(db)
        data = bytearray(db.read_bytes())
        data[16:100] = b"\xff" * 84  # a valid header magic, the rest of the header destroyed
        db.write_bytes(bytes(data))
    _use_stores(monkeypatch, f"sqlite:///{db}")
    before = _tree(tmp_path)
    line = _one_line(invoke(*_STARTING[cmd], ok=False))
    assert str(db) in line and needle in line, line
    assert _tree(tmp_path) == before


_WEDGE = """
import os, signal, sys, sqlalchemy
import mlflow.store.db.utils as db_utils

def after(conn, cursor, statement, *args):  # MLflow's own in-place creation, killed mid-migration
    if statement.lstrip().upper().startswith("CREATE TABLE _ALEMBIC_TMP_"):
        os.kill(os.getpid(), signal.SIGKILL)

sqlalchemy.event.listen(sqlalchemy.engine.Engine, "after_cursor_execute", after)
db_utils._initialize_tables(db_utils.create_sqlalchemy_engine(sys.argv[1]))
"""


def test_a_database_wedged_by_a_killed_schema_creation_is_one_line_with_the_fix(tmp_path, monkeypatch):
    import subprocess
    import sys

    import mlflow.store.db.utils as db_utils
    from mlflow_amnesia.mlflow.tracking import check_tracking_store

    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow.db"
    p = subprocess.run([sys.executable, "-c", _WEDGE, f"sqlite:///{db}"], capture_output=True, timeout=120)
    assert p.returncode == -9, p.stderr.decode()[-2000:]  # what a killed first train used to leave
    _use_stores(monkeypatch, f"sqlite:///{db}")
    before = _tree(tmp_path)
    for cmd in ("train", "lineage"):
        line = _one_line(invoke(*_STARTING[cmd], ok=False))
        assert f"the MLflow database {db} (MLFLOW_TRACKING_URI) cannot be used" in line, line
        assert "a schema migration of it was interrupted (leftover table _alembic_tmp_" in line
        assert f"It holds no runs and no registered models, so nothing is lost by removing it: rm {db}" in line
    assert _tree(tmp_path) == before
    db.unlink()  # the fix the message gives
    check_tracking_store(create=True)  # what train does first: a complete database
    engine = db_utils.create_sqlalchemy_engine(f"sqlite:///{db}")
    assert db_utils._all_tables_exist(engine) and db_utils._get_schema_version(engine) == db_utils._get_latest_schema_revision()
    engine.dispose()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]


def _older_revision() -> str:
    import mlflow.store.db.utils as db_utils
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(db_utils._get_alembic_config(""))
    return script.get_revision(db_utils._get_latest_schema_revision()).down_revision


@pytest.mark.parametrize("damage, needles", [
    ("older", ["its schema is out of date or half-migrated (revision", "It holds 1 run(s) and 1 registered model(s)",
               "back it up (cp", "then run `mlflow db upgrade sqlite:///"]),
    ("leftover", ["a schema migration of it was interrupted (leftover table _alembic_tmp_jobs)",
                  "finish the migration by hand", "`mlflow db upgrade sqlite:///"]),
    ("newer", ["is newer, made by a newer MLflow", "pip install -U mlflow"]),
    ("no-version", ["its creation was interrupted", "mlflow db upgrade"]),
])
def test_a_wedged_database_holding_runs_names_the_upgrade_not_removal(registry_copy, monkeypatch, damage, needles):
    import sqlite3

    db = registry_copy / "mlflow.db"
    with sqlite3.connect(db) as con:
        if damage == "older":
            con.execute("UPDATE alembic_version SET version_num = ?", (_older_revision(),))
        elif damage == "leftover":
            con.execute("UPDATE alembic_version SET version_num = ?", (_older_revision(),))
            con.execute("CREATE TABLE _alembic_tmp_jobs (id TEXT)")
        elif damage == "newer":
            con.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
        else:
            con.execute("DELETE FROM alembic_version")
    before = db.read_bytes()
    for cmd in ("train", "lineage"):
        line = _one_line(invoke(*_STARTING[cmd], ok=False))
        assert str(db) in line and "rm " not in line, line
        for n in needles:
            assert n in line, (n, line)
    assert db.read_bytes() == before


def test_missing_tables_in_an_empty_database_say_it_can_be_removed(tmp_path, monkeypatch):
    import sqlite3

    from mlflow_amnesia.mlflow.tracking import create_sqlite_database

    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow.db"
    assert create_sqlite_database(str(db)) and not create_sqlite_database(str(db))  # never over a database
    with sqlite3.connect(db) as con:
        con.execute("DROP TABLE webhooks")
    _use_stores(monkeypatch, f"sqlite:///{db}")
    line = _one_line(invoke(*_STARTING["lineage"], ok=False))
    assert "tables are missing (webhooks)" in line and f"nothing is lost by removing it: rm {db}" in line


def test_the_temp_files_of_dead_creators_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from mlflow_amnesia.mlflow import tracking

    monkeypatch.chdir(tmp_path)
    assert tracking.create_sqlite_database(str(tmp_path / "mlflow.db"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    prefix = f".mlflow.db.amnesia-init.{tracking._host()}."
    stale = [tmp_path / f"{prefix}{dead.pid}.0a0b0c0d", tmp_path / f"{prefix}{dead.pid}.0a0b0c0d-journal"]
    live = tmp_path / f"{prefix}{os.getppid()}.01020304"  # a creator still at work: not ours to remove
    for f in (*stale, live):
        f.write_bytes(b"half a schema")
    _use_stores(monkeypatch, f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.check_tracking_store(create=True)  # killed between linking and removing its temp file
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "mlflow.db"])


def test_ctrl_c_in_the_group_callback_is_one_line_and_exit_130(tmp_path, monkeypatch):
    import mlflow

    from mlflow_amnesia.interrupts import STARTUP_MESSAGE

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the callback then sets the default store

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mlflow, "set_tracking_uri", interrupted)
    assert _one_line(invoke(*_STARTING["lineage"], ok=False), code=130) == STARTUP_MESSAGE
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_train_creates_the_database_leaves_none(tmp_path, monkeypatch):
    import mlflow.store.db.utils as db_utils
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    monkeypatch.chdir(tmp_path)
    _use_stores(monkeypatch, "sqlite:///mlflow.db")

    def initialize_tables(engine):  # half the schema made, then Ctrl-C
        InitialBase.metadata.create_all(engine)
        raise KeyboardInterrupt

    monkeypatch.setattr(db_utils, "_initialize_tables", initialize_tables)
    r = invoke(*_STARTING["train"], ok=False)
    assert "interrupted" in _one_line(r, code=130)
    assert list(tmp_path.iterdir()) == []  # no database, no temp file, no journal


# --------------------------------------------------------------------------------------------
# no pickle in anything this tool writes and reads back

_PICKLERS = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "marshal", "shelve"}


def _package_sources() -> list[Path]:
    files = sorted((REPO / "mlflow_amnesia").rglob("*.py")) + sorted((REPO / "plugins").rglob("*.py"))
    assert len(files) > 20
    return files


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<not a constant>"
    return "<missing>"


def pickle_findings(source: str, where: str) -> list[str]:
    """Every place in ``source`` that could pickle or unpickle (the rule this test enforces)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [f"{where}:{node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] in _PICKLERS]
        elif isinstance(node, ast.ImportFrom):
            mod = (node.module or "").split(".")[0]
            if mod in _PICKLERS:
                out.append(f"{where}:{node.lineno}: from {node.module} import ...")
            if mod in ("torch", "numpy") and any(a.name in ("load", "save") for a in node.names):
                out.append(f"{where}:{node.lineno}: from {node.module} import load/save (call it as {mod}.load so it is checked)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            fn = node.func.attr
            if owner == "torch" and fn == "load" and _kw(node, "weights_only") is not True:
                out.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
            if owner in ("np", "numpy") and fn in ("load", "save") and _kw(node, "allow_pickle") is not False:
                out.append(f"{where}:{node.lineno}: {owner}.{fn} without allow_pickle=False")
            if fn in ("read_pickle", "to_pickle"):
                out.append(f"{where}:{node.lineno}: {fn}")
        if isinstance(node, ast.keyword) and node.arg == "allow_pickle" and not (
                isinstance(node.value, ast.Constant) and node.value.value is False):
            out.append(f"{where}:{node.value.lineno}: allow_pickle other than False")
    return out


def test_the_rule_catches_what_it_should():
    bad = "import pickle\nimport torch, numpy as np\ntorch.load(f)\ntorch.load(f, weights_only=False)\nnp.load(f)\n" \
          "np.save(f, a)\nx = np.load(f, allow_pickle=True)\nfrom torch import load\n"
    assert len(pickle_findings(bad, "x.py")) == 8
    good = "import torch, numpy as np\ntorch.load(f, map_location='cpu', weights_only=True)\nnp.load(f, allow_pickle=False)\n"
    assert pickle_findings(good, "x.py") == []


def test_no_pickle_in_the_package_source():
    found = [f for p in _package_sources() for f in pickle_findings(p.read_text(), str(p.relative_to(REPO)))]
    assert found == [], "\n".join(found)


# --------------------------------------------------------------------------------------------
# two forgets from one parent: the registry-level guard, step by step (processes: test_concurrency.py)


def _register_sibling(parent: int = 1) -> int:
    """A child of ``parent`` as another machine's forget would register it."""
    import mlflow
    from mlflow_amnesia.mlflow import registry

    return int(mlflow.register_model(_v1_uri(), MODEL, tags={registry.TAG_PARENT: str(parent)}).version)


def _v1_uri() -> str:
    from mlflow_amnesia.mlflow import registry

    return registry.client().get_model_version(MODEL, "1").source  # models:/<logged model id>


def test_register_child_refuses_when_the_parent_already_has_a_child(registry_copy):
    from mlflow_amnesia.mlflow.concurrency import register_child
    from mlflow_amnesia.errors import ForgetConflictError

    other = _register_sibling()
    with pytest.raises(ForgetConflictError, match=rf"registered v{other} from v1 .* registered nothing.*re-run"):
        register_child(MODEL, _v1_uri(), parent=1, tags={})
    assert _versions() == [1, other]


def test_the_higher_of_two_racing_children_deletes_itself(registry_copy, monkeypatch):
    import mlflow
    from mlflow_amnesia.mlflow.concurrency import register_child
    from mlflow_amnesia.errors import ForgetConflictError

    real = mlflow.register_model
    other = []

    def racing(*args, **kwargs):  # the other forget registers between our check and our registration
        other.append(_register_sibling_with(real))
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow, "register_model", racing)
    with pytest.raises(ForgetConflictError, match=r"v3, registered at the same moment, lost .* was deleted"):
        register_child(MODEL, _v1_uri(), parent=1, tags={"amnesia.method": "amnesiac"})
    assert other == [2] and _versions() == [1, 2]


def _register_sibling_with(register) -> int:
    from mlflow_amnesia.mlflow import registry

    return int(register(_v1_uri(), MODEL, tags={registry.TAG_PARENT: "1"}).version)


def test_the_lower_child_wins_and_the_stale_loser_is_never_built_on(registry_copy, monkeypatch):
    import mlflow
    from mlflow_amnesia.mlflow import registry
    from mlflow_amnesia.mlflow.concurrency import check_forkable, register_child
    from mlflow_amnesia.errors import ForgetConflictError, InputError

    real = mlflow.register_model

    def racing(*args, **kwargs):  # ours first; the other (killed before it could settle) after
        mine = real(*args, **kwargs)
        _register_sibling_with(real)
        return mine

    monkeypatch.setattr(mlflow, "register_model", racing)
    mv = register_child(MODEL, _v1_uri(), parent=1, tags={})
    assert int(mv.version) == 2 and mv.tags[registry.TAG_PARENT] == "1"
    c = registry.client()
    with pytest.raises(ForgetConflictError, match=r"v3 and v2 were both forgotten from v1 .* delete v3"):
        check_forkable(c.get_model_version(MODEL, "3"))
    with pytest.raises(InputError, match="superseded by v2"):  # no superseded_by tag yet: the child is enough
        check_forkable(c.get_model_version(MODEL, "1"))
    r = _forget("--version", "3", "--records", _write(registry_copy, _ids(1)))
    _refused(r, "v3 and v2 were both forgotten from v1")


# --------------------------------------------------------------------------------------------
# the local lock


def test_model_lock_queues_a_second_forget_of_the_same_model(tmp_path, monkeypatch, capsys):
    from mlflow_amnesia.mlflow.concurrency import lock_path, model_lock

    monkeypatch.setenv("MLFLOW_AMNESIA_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("MLFLOW_AMNESIA_QUIET", "0")
    order: list[str] = []
    first_in = threading.Event()

    def second():
        first_in.wait()
        with model_lock(MODEL):
            order.append("second")

    t = threading.Thread(target=second)
    t.start()
    with model_lock(MODEL) as path:
        first_in.set()
        time.sleep(0.5)  # the second one is waiting now
        order.append("first")
        assert path == lock_path(MODEL) and json.loads(path.read_text())["model"] == MODEL
    t.join(10)
    assert order == ["first", "second"]
    assert f"waiting for another forget of {MODEL} on this machine (pid " in capsys.readouterr().err
    with model_lock("another-model"):  # other models are not queued behind it
        pass
    assert lock_path("another-model") != lock_path(MODEL)


def test_lock_key_is_the_store_not_its_spelling(tmp_path, monkeypatch):
    import mlflow
    from mlflow_amnesia.mlflow.concurrency import lock_path

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    mlflow.set_registry_uri("sqlite:///mlflow.db")
    rel = lock_path(MODEL)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path}/mlflow.db")
    assert lock_path(MODEL) == rel
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/other.db")
    assert lock_path(MODEL) != rel


def test_dry_run_takes_no_lock(registry_copy, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_AMNESIA_LOCK_DIR", str(tmp_path / "locks"))
    from mlflow_amnesia.mlflow.concurrency import model_lock

    with model_lock(MODEL):  # held: a dry run still answers at once
        r = invoke("forget", "--model", MODEL, "--records", _write(registry_copy, _ids(1)), "--dry-run", "--no-audit")
    assert "dry run" in r.output
