#!/usr/bin/env python3
"""Replay issue 13's attack on the ``mlflow-amnesia`` command line, in a throw-away workspace.

One command, five categories (docs/RELIABILITY.md, "Replaying the attack"):

* **bad inputs**: every command fed wrong things (models, versions, aliases, ids files, option
  values, tracking URIs, keys, quoted model names, tampered artifacts, refused purges). Each case
  checks the exit status, exactly one ``Error:`` line naming the input and no ``Traceback``,
  that the registry and every file of the workspace are unchanged (no version, run, database or
  directory appears where the rule is that none may), that no record id of the request shows up
  in clear, and that a marker file the hostile artifacts try to create never appears.
* **kills**: every ``AMNESIA_TEST_KILL_AT`` point of ``tests/reliability_child.py``: the command
  SIGKILLs itself there, the same command is re-run, then the lineage must be whole (one child
  per parent, parent superseded, alias moved, purge complete with no chunk file of a purged step
  on disk, ``verify`` clean for every version, every version loads, ``records`` lists no
  forgotten record).
* **concurrency**: two forgets of different requests at once (one machine: they queue; two
  machines: one is refused and its re-run builds on the other); with the f32 codec the result
  must equal v1 minus the sum of the rolled-back deltas, each step once.
* **clear text**: every file of the workspace (the sqlite database's bytes, the artifacts, HOME,
  temp files) grepped for every forgotten and requested record id after each state.
* **re-identification**: ``scripts/reidentify.py``, the attacker without the key, on a version
  trained and forgotten here; pass = no more than chance.

Workspace: a temp dir with its own HOME, MLFLOW_TRACKING_URI (sqlite), MLFLOW_AMNESIA_KEY and
MLFLOW_AMNESIA_LOCK_DIR; digits + ``--arch cnn``, 2 epochs, ``--no-audit``; trained once, then
copied back in place before each case. Commands run as forks of one process that imported
torch and MLflow once (a fresh process per command costs ~3 s of imports here); the fork runs
``tests/reliability_child.py``'s fault injection and the CLI's ``main`` exactly as that script
does. ``--processes`` runs every command as ``python tests/reliability_child.py ARGS`` instead.

    python scripts/erasure_check.py                  # everything (~10 minutes on 2 cores)
    python scripts/erasure_check.py --quick          # a subset (tests/test_erasure_check.py)
    python scripts/erasure_check.py --output figures.json --keep /tmp/erasure-ws

Exit status 1 if any case failed.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import hashlib
import json
import math
import os
import re
import select
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "tests" / "reliability_child.py"
PLUGIN = REPO / "plugins" / "mlflow-amnesia-privacy"

KEY = "5a" * 32
OTHER_KEY = "a5" * 32
MODEL = "digits-cnn"
QUOTED = "o'brien \"q\""  # both quotes: the name registry.filter_literal cannot quote
KILLED = -signal.SIGKILL
TRAIN = ["train", "--arch", "cnn", "--epochs", "2", "--codec", "f32", "--no-audit"]
RUN_TABLES_OK = ("runs", "tags", "params", "metrics", "latest_metrics", "experiments", "experiment_tags",
                 "inputs", "input_tags", "datasets", "logged_models", "logged_model_tags", "logged_model_params",
                 "logged_model_metrics")
REGISTRY_TABLES = ("registered_models", "model_versions", "model_version_tags", "registered_model_aliases",
                   "registered_model_tags")


def key_id(hexkey: str) -> str:
    """The public id of a record key (mlflow_amnesia.keys.key_id, recomputed without importing it)."""
    return hashlib.sha256(b"mlflow-amnesia key id" + bytes.fromhex(hexkey)).digest()[:8].hex()


# =============================================================================================
# Running commands: forks of a pre-imported process (default) or fresh processes


@dataclass
class Result:
    """How one command ended."""

    rc: int  # exit status, or -signal
    out: str  # stdout and stderr together
    maxrss_mib: float
    seconds: float
    timed_out: bool = False

    def error_lines(self) -> list[str]:
        return [ln for ln in self.out.splitlines() if ln.startswith("Error:")]

    def first_line(self) -> str:
        lines = self.error_lines() or [ln for ln in self.out.splitlines() if ln.strip()]
        return lines[-1] if lines else ""


def _child_main(req: dict) -> int:
    """Inside a fresh (forked or spawned) process: run one request, return its exit status."""
    code = 0
    try:
        if req["kind"] == "cli":
            sys.argv = [str(CHILD), *req["args"]]
            child = _reliability_child()
            child.install_kill(os.environ.get("AMNESIA_TEST_KILL_AT", ""))
            if os.environ.get("AMNESIA_TEST_BARRIER"):
                child.install_barrier(os.environ["AMNESIA_TEST_BARRIER"])
            from mlflow_amnesia.cli import main

            main(req["args"], prog_name="mlflow-amnesia")
        else:
            result = CALLS[req["fn"]](**req.get("kwargs", {}))
            Path(req["result"]).write_text(json.dumps(result))
    except SystemExit as e:  # as the interpreter does at exit
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - what an uncaught exception prints, then exit 1
        traceback.print_exc()
        code = 1
    return code


_RC_MODULE = None


def _reliability_child():
    global _RC_MODULE
    if _RC_MODULE is None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("reliability_child", CHILD)
        _RC_MODULE = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_RC_MODULE)
    return _RC_MODULE


def _zygote() -> None:
    """Import everything once; fork one child per request line on stdin; report each exit on stdout."""
    import mlflow  # noqa: F401
    import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import numpy  # noqa: F401
    import sklearn.datasets  # noqa: F401
    import torch  # noqa: F401

    import importlib

    import mlflow_amnesia.cli  # noqa: F401

    for mod in ("audit", "flavor", "forget", "lineage", "purge", "records", "registry", "tracking", "train", "verify"):
        try:  # what the commands import lazily; a release without one of them still runs
            importlib.import_module(f"mlflow_amnesia.{mod}")
        except ImportError:
            pass

    _reliability_child()
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    running: dict[int, tuple[str, float, float]] = {}  # pid -> (id, started, deadline)
    buf = b""
    stdin_open = True
    while stdin_open or running:
        if stdin_open:
            r, _, _ = select.select([0], [], [], 0.05)
            if r:
                data = os.read(0, 65536)
                if not data:
                    stdin_open = False
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    req = json.loads(line)
                    out.flush()
                    sys.stderr.flush()
                    pid = os.fork()
                    if pid == 0:
                        _forked(req)
                    running[pid] = (req["id"], time.monotonic(), time.monotonic() + req["timeout"])
        else:
            time.sleep(0.05)
        while running:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            rid, started, deadline = running.pop(pid)
            rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            out.write(json.dumps({"id": rid, "rc": rc, "maxrss_kib": ru.ru_maxrss,
                                  "seconds": time.monotonic() - started,
                                  "timed_out": time.monotonic() > deadline}) + "\n")
            out.flush()
        now = time.monotonic()
        for pid, (_, _, deadline) in list(running.items()):
            if now > deadline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _forked(req: dict) -> None:
    """The forked child: its own output file, cwd and environment; never returns."""
    try:
        fd = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        code = _child_main(req)
        try:
            atexit._run_exitfuncs()  # what a normal interpreter exit runs (MLflow ends runs there)
        except BaseException:  # noqa: BLE001
            pass
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        code = 1
    os._exit(code)


class Runner:
    """Starts commands (``kind="cli"``) and helper calls (``kind="call"``) in fresh processes."""

    def __init__(self, root: Path, fork: bool, env: dict[str, str]):
        self.root, self.fork, self.n = root, fork, 0
        (root / "logs").mkdir(parents=True, exist_ok=True)
        self.pending: dict[str, Any] = {}
        self.done: dict[str, dict] = {}
        self.zygote: Optional[subprocess.Popen] = None
        if fork:
            self.zygote = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--zygote"], env=env,
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(root))
            line = self.zygote.stdout.readline()
            if line.strip() != b"ready":
                raise SystemExit(f"erasure_check: the command server did not start ({line!r})")

    def close(self) -> None:
        if self.zygote is not None:
            self.zygote.stdin.close()
            try:
                self.zygote.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.zygote.kill()

    def start(self, kind: str, *, env: dict[str, str], cwd: Path, args: list[str] = (), fn: str = "",
              kwargs: Optional[dict] = None, timeout: float = 300) -> str:
        self.n += 1
        rid = f"{self.n:04d}"
        req = {"id": rid, "kind": kind, "args": list(args), "fn": fn, "kwargs": kwargs or {}, "env": env,
               "cwd": str(cwd), "timeout": timeout, "out": str(self.root / "logs" / f"{rid}.out"),
               "result": str(self.root / "logs" / f"{rid}.json")}
        if self.fork:
            self.zygote.stdin.write((json.dumps(req) + "\n").encode())
            self.zygote.stdin.flush()
            self.pending[rid] = req
        else:
            if kind == "cli":
                cmd = [sys.executable, str(CHILD), *args]
            else:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--call", json.dumps(req)]
            f = open(req["out"], "wb")
            p = subprocess.Popen(cmd, env=env, cwd=str(cwd), stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)
            f.close()
            self.pending[rid] = (req, p, time.monotonic())
        return rid

    def wait(self, rid: str) -> tuple[Result, Optional[Any]]:
        if self.fork:
            req = self.pending.pop(rid)
            while rid not in self.done:
                line = self.zygote.stdout.readline()
                if not line:
                    raise SystemExit("erasure_check: the command server died")
                msg = json.loads(line)
                self.done[msg["id"]] = msg
            msg = self.done.pop(rid)
            rc, rss, secs, to = msg["rc"], msg["maxrss_kib"], msg["seconds"], msg["timed_out"]
        else:
            req, p, started = self.pending.pop(rid)
            deadline, to = started + req["timeout"], False
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline and not to:
                    to = True
                    p.kill()
                time.sleep(0.02)
            p.returncode = rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            rss, secs = ru.ru_maxrss, time.monotonic() - started
        out = Path(req["out"]).read_text(errors="replace")
        res = Path(req["result"])
        value = json.loads(res.read_text()) if req["kind"] == "call" and res.exists() else None
        return Result(rc, out, rss / 1024, secs, to), value

    def run(self, kind: str, **kw) -> tuple[Result, Optional[Any]]:
        return self.wait(self.start(kind, **kw))


# =============================================================================================
# The workspace


class Workspace:
    """``root/ws`` is the workspace every command sees; ``root/saved/NAME`` are copies of its states.

    Record ids the cases use live in ``root/inputs`` (outside ``ws``: a request file holds ids in
    clear by definition); ``root/tmp`` is the commands' TMPDIR (scanned for clear text too).
    """

    def __init__(self, root: Path, fork: bool):
        self.root = root
        self.ws, self.saved, self.inputs, self.tmp = root / "ws", root / "saved", root / "inputs", root / "tmp"
        for d in (self.ws, self.saved, self.inputs, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self.marker = root / "PWNED"  # what hostile artifacts try to create
        self.runner = Runner(root, fork, self.env())
        self.scans: list[dict] = []

    @property
    def db(self) -> Path:
        return self.ws / "mlflow.db"

    def env(self, **over: Optional[str]) -> dict[str, str]:
        pp = [str(REPO), str(PLUGIN)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": os.pathsep.join(dict.fromkeys(pp)),
            "HOME": str(self.ws / "home"),
            "TMPDIR": str(self.tmp),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "MLFLOW_TRACKING_URI": f"sqlite:///{self.db}",
            "MLFLOW_AMNESIA_KEY": KEY,
            "MLFLOW_AMNESIA_LOCK_DIR": str(self.ws / "locks"),
            "MLFLOW_AMNESIA_QUIET": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "GIT_PYTHON_REFRESH": "quiet",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if os.environ.get("VIRTUAL_ENV"):
            env["VIRTUAL_ENV"] = os.environ["VIRTUAL_ENV"]
        for k, v in over.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    # -- commands -----------------------------------------------------------------------------

    def cli(self, *args: str, env: Optional[dict] = None, kill: Optional[str] = None, timeout: float = 300,
            extra_env: Optional[dict] = None) -> Result:
        e = dict(env or self.env())
        if kill:
            e["AMNESIA_TEST_KILL_AT"] = kill
        e.update(extra_env or {})
        return self.runner.run("cli", env=e, cwd=self.ws, args=list(args), timeout=timeout)[0]

    def start_cli(self, *args: str, extra_env: Optional[dict] = None, timeout: float = 300) -> str:
        return self.runner.start("cli", env={**self.env(), **(extra_env or {})}, cwd=self.ws, args=list(args),
                                 timeout=timeout)

    def call(self, fn: str, env: Optional[dict] = None, **kwargs) -> Any:
        res, value = self.runner.run("call", env=env or self.env(), cwd=self.ws, fn=fn, kwargs=kwargs, timeout=300)
        if res.rc != 0 or value is None:
            raise CheckError(f"helper {fn} failed (rc {res.rc}): {res.out.strip()[-600:]}")
        return value

    # -- states -------------------------------------------------------------------------------

    def save(self, name: str) -> None:
        dst = self.saved / name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(self.ws, dst, symlinks=True)

    def restore(self, name: Optional[str]) -> None:
        """Put a saved state back in place (artifact paths are absolute); None: an empty workspace."""
        shutil.rmtree(self.ws, ignore_errors=True)
        if name is None:
            self.ws.mkdir()
            (self.ws / "home").mkdir()
        else:
            shutil.copytree(self.saved / name, self.ws, symlinks=True)
        if self.marker.exists():
            self.marker.unlink()

    # -- what a case may not change -----------------------------------------------------------

    def db_state(self, db: Optional[Path] = None) -> dict[str, str]:
        """Per table of the sqlite database, a digest of its rows (empty when there is no database)."""
        db = db or self.db
        if not db.is_file():
            return {}
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
            out = {}
            for t in tables:
                rows = sorted(repr(r) for r in con.execute(f'select * from "{t}"'))
                out[t] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
            return out
        except sqlite3.DatabaseError:
            return {"<not a database>": hashlib.sha256(db.read_bytes()).hexdigest()}
        finally:
            con.close()

    def tree_state(self) -> dict[str, str]:
        """Every path under the workspace -> 'dir' or the file's sha256 (the database by its rows)."""
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.ws):
            for d in dirnames:
                out[os.path.relpath(os.path.join(dirpath, d), self.ws)] = "dir"
            for f in filenames:
                p = os.path.join(dirpath, f)
                rel = os.path.relpath(p, self.ws)
                if rel == "mlflow.db" or rel.startswith("mlflow.db-"):
                    continue  # compared row by row (db_state); -journal files come and go
                if f == "registered_model_meta" or rel.startswith("locks" + os.sep):
                    # MLflow writes the first into a model's local artifact directory whenever it is
                    # loaded through models:/ (name and version); a forget's lock file says who holds
                    # the lock (concurrency.py): neither is data a bad input may damage
                    continue
                try:
                    with open(p, "rb") as fh:
                        out[rel] = hashlib.sha256(fh.read()).hexdigest()
                except OSError as e:
                    out[rel] = f"unreadable {e.errno}"
        return out

    # -- clear text ---------------------------------------------------------------------------

    def scan(self, label: str, ids: list[str], record: bool = True, dirs: Optional[list[Path]] = None) -> dict:
        """Grep every file of the workspace and the commands' TMPDIR (or ``dirs``) for ``ids``
        (UTF-8 and UTF-16-LE; an id followed by a digit is another id)."""
        ids = sorted(set(ids))
        hits: list[str] = []
        files = nbytes = 0
        if ids:
            alts = []
            for i in ids:
                for enc in ("utf-8", "utf-16-le"):
                    alts.append(re.escape(i.encode(enc)))
            pat = re.compile(rb"(?<![0-9A-Za-z_])(?:" + b"|".join(alts) + rb")(?![0-9])")
            for top in dirs or (self.ws, self.tmp):
                for dirpath, _, filenames in os.walk(top):
                    for f in filenames:
                        p = os.path.join(dirpath, f)
                        try:
                            if os.path.getsize(p) > 1 << 30:
                                continue
                            with open(p, "rb") as fh:
                                data = fh.read()
                        except OSError:
                            continue
                        files += 1
                        nbytes += len(data)
                        for m in pat.finditer(data):
                            hits.append(f"{os.path.relpath(p, self.root)}: {m.group(0)[:40]!r}")
        s = {"label": label, "ids": len(ids), "files": files, "bytes": nbytes, "hits": hits}
        if record:
            self.scans.append(s)
        return s

    # -- files of a version -------------------------------------------------------------------

    def version_dir(self, model: str, version: int) -> Path:
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            row = con.execute("select storage_location, source from model_versions where name=? and version=?",
                              (model, version)).fetchone()
        finally:
            con.close()
        if row is None:
            raise CheckError(f"{model} v{version} is not registered")
        loc = row[0] or row[1]
        return Path(re.sub(r"^file://", "", loc))

    def info(self, model: str, version: int) -> dict:
        return json.loads((self.version_dir(model, version) / "data" / "amnesia.json").read_text())

    def store_dir(self, model: str = MODEL, version: int = 2) -> Path:
        return Path(self.info(model, version)["segments"][0]["store_url"])

    def training_dir(self, model: str = MODEL, version: int = 2) -> Path:
        return Path(self.info(model, version)["training_url"])

    def write_ids(self, name: str, ids: list[str]) -> str:
        p = self.inputs / name
        p.write_text("\n".join(ids) + "\n")
        return str(p)


class CheckError(Exception):
    """A case's check did not hold (its message says which)."""


# =============================================================================================
# Helper calls, run in a fresh process (they import mlflow; the driver never does)


def call_set_alias(model: str, alias: str, version: int) -> dict:
    from mlflow_amnesia import registry

    registry.client().set_registered_model_alias(model, alias, str(version))
    return {"ok": True}


def call_pick(model: str) -> dict:
    """Requests for the cases: F (the base forget), A and B (sharing a step), G (another one)."""
    from mlflow_amnesia.flavor import load_model
    from mlflow_amnesia.keys import load_key
    from mlflow_amnesia.records import list_records

    am = load_model(f"models:/{model}/1")
    idx = am.segments[0].open_index(load_key())
    ids = [rid for rid, _ in list_records(model, version=1, limit=400)]
    steps = {i: set(int(s) for s in idx.steps_for([i])) for i in ids}
    F, A = ids[:3], ids[3:5]
    sa = steps[A[0]] | steps[A[1]]
    share = next(i for i in ids[5:] if steps[i] & sa)
    other = next(i for i in ids[5:] if i != share and not steps[i] & sa)
    B = [share, other]
    used = set(F) | set(A) | set(B)
    sf = set().union(*(steps[i] for i in F))
    G = [i for i in ids[5:] if i not in used and not steps[i] <= sf][:2]
    holdout = [rid for rid, _ in list_records(model, version=1, part="holdout", limit=3)]
    return {"F": F, "A": A, "B": B, "G": G, "holdout": holdout,
            "steps": {k: sorted(set().union(*(steps[i] for i in v))) for k, v in (("F", F), ("A", A), ("B", B))}}


def _chunk_files(store: Path) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    d = store / "chunks"
    if d.is_dir():
        for p in d.iterdir():
            m = re.match(r"^(\d+)\.(\d+)\.", p.name)
            if m:
                out.setdefault(int(m.group(1)), []).append(p.name)
    return out


def call_facts(model: str, ids: list[str] = ()) -> dict:
    """What the invariants read: per version its tags, whether it loads, what it forgot, and its
    stores' purged steps against the chunk files really on disk (a listing, not the manifest)."""
    from urllib.parse import urlparse

    from mlflow_amnesia import registry
    from mlflow_amnesia.errors import PurgedVersionError
    from mlflow_amnesia.flavor import load_model
    from mlflow_amnesia.keys import hash_ids, load_key
    from mlflow_amnesia.store import DeltaStore

    c = registry.client()
    rm = c.get_registered_model(model)
    key = load_key()
    wanted = {bytes(h) for h in hash_ids(list(ids), key)} if ids else set()
    out = {"aliases": {a: int(v) for a, v in (rm.aliases or {}).items()}, "versions": []}
    search = getattr(registry, "search_versions", None)  # releases before issue 13: the plain filter
    mvs = search(model) if search else sorted(c.search_model_versions(f"name='{model}'"), key=lambda m: int(m.version))
    for mv in mvs:
        v = {"version": int(mv.version), "tags": dict(mv.tags or {}), "description": mv.description or ""}
        loc = Path(urlparse(c.get_model_version_download_uri(model, mv.version)).path)
        data = loc / "data"
        v["weights_file"] = (data / "weights.pt").exists()
        tomb = data / "purged.json"
        v["tombstone"] = json.loads(tomb.read_text()) if tomb.exists() else None
        try:
            am = load_model(f"models:/{model}/{mv.version}")
            v["load"] = "ok"
            v["rolled_back"] = sorted(int(s) for s in am.rolled_back)
            forgotten = {bytes(h) for h in am.forgotten}
            v["forgotten"] = sorted(h.hex() for h in forgotten)
            v["forgets_ids"] = sorted(i for i, h in zip(ids, hash_ids(list(ids), key)) if bytes(h) in forgotten) if ids else []
        except PurgedVersionError:
            v["load"] = "purged"
        except Exception as e:  # noqa: BLE001 - reported as a failed invariant
            v["load"] = f"{type(e).__name__}: {str(e)[:300]}"
        info = json.loads((data / "amnesia.json").read_text())
        v["stores"] = []
        for seg in info.get("segments", []):
            url = seg["store_url"]
            st = {"url": url, "first": seg["first_step"], "last": seg["last_step"]}
            try:
                store = DeltaStore.open(url)
                st["purged_steps"] = sorted(int(s) for s in store.purged_steps)
            except Exception as e:  # noqa: BLE001
                st["purged_steps"] = None
                st["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            st["chunk_files"] = {str(k): sorted(f) for k, f in _chunk_files(Path(urlparse(url).path if "://" in url else url)).items()}
            v["stores"].append(st)
        v["optimizer_state"] = (Path(info["training_url"]) / "optimizer_state.pt").exists() if info.get("training_url") else None
        out["versions"].append(v)
    out["wanted"] = len(wanted)
    return out


def call_weights(model: str, base: int, target: int, ids: list[str]) -> dict:
    """``target``'s weights against ``base``'s minus the sum of the deltas of ``target``'s
    rolled-back steps, each once (f32 codec: exact up to float rounding)."""
    import numpy as np

    from mlflow_amnesia.flavor import load_model
    from mlflow_amnesia.keys import load_key

    key = load_key()
    a, b = load_model(f"models:/{model}/{base}"), load_model(f"models:/{model}/{target}")
    steps = sorted(int(s) for s in b.rolled_back)
    store = a.segments[0].open_store(key)
    total = store.sum(steps)
    sa, sb = a.module.state_dict(), b.module.state_dict()
    diff = max(float(np.abs(sb[n].double().numpy() - (sa[n].double().numpy() - total[n])).max()) for n in total)
    smallest = min(max(float(np.abs(v).max()) for v in store.read(s).values()) for s in steps) if steps else 0.0
    idx = a.segments[0].open_index(key)
    expected = sorted(int(s) for s in idx.steps_for(ids))
    return {"steps": steps, "expected_steps": expected, "max_abs_diff": diff, "smallest_step_delta": smallest}


def call_forge_index(path: str) -> dict:
    """Replace a record index by a forged one: valid sha256s, 2**24 records of zeros that really
    decompress (256 MiB of hashes from a few KB): the attacker's 'huge counts' file."""
    import struct

    import zstandard

    data = Path(path).read_bytes()
    hlen = struct.unpack_from("<I", data, 8)[0]
    h = json.loads(data[44:44 + hlen])
    payload = data[44 + hlen:]
    blobs = {m["name"]: payload[m["offset"]:m["offset"] + m["size"]] for m in h["arrays"]}
    n = 1 << 24
    z = zstandard.ZstdCompressor(level=1)
    blobs.update(hashes=z.compress(bytes(16 * n)), record_counts=z.compress(bytes(4 * n)), record_steps=z.compress(b""))
    shapes = {"hashes": [n, 16], "record_counts": [n], "record_steps": [0]}
    body = b""
    for m in h["arrays"]:
        m["offset"], m["size"] = len(body), len(blobs[m["name"]])
        m["shape"] = shapes.get(m["name"], m["shape"])
        body += blobs[m["name"]]
    h.update(n_records=n, n_entries=0, payload_bytes=len(body), payload_sha256=hashlib.sha256(body).hexdigest())
    hb = json.dumps(h).encode()
    Path(path).write_bytes(data[:8] + struct.pack("<I", len(hb)) + hashlib.sha256(hb).digest() + hb + body)
    return {"bytes": Path(path).stat().st_size}


def call_plain_training_file(path: str, kind: str) -> dict:
    """Replace a sealed training file by a plausible one in clear (what a writer without the key can do)."""
    import numpy as np
    import torch

    if kind == "npy":
        with open(path, "wb") as fh:
            np.save(fh, np.zeros((2, 8), np.int64), allow_pickle=False)
    else:
        torch.save({"w": torch.zeros(3)}, path)
    return {"bytes": os.path.getsize(path)}


def call_npy_claiming(path: str) -> dict:
    """A .npy whose header claims 10**12 int64 values (8 TB) in a file of a few bytes."""
    header = "{'descr': '<i8', 'fortran_order': False, 'shape': (1000000000000,), }"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    Path(path).write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 16)
    return {"ok": True}


CALLS: dict[str, Callable[..., Any]] = {
    "set_alias": call_set_alias, "pick": call_pick, "facts": call_facts, "weights": call_weights,
    "forge_index": call_forge_index, "plain_training_file": call_plain_training_file, "npy_claiming": call_npy_claiming,
}


# =============================================================================================
# Cases


@dataclass
class Outcome:
    category: str
    name: str
    ok: bool
    detail: str
    seconds: float
    extra: dict = field(default_factory=dict)


class Check:
    """Collects the problems of one case."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def that(self, cond: bool, problem: str) -> bool:
        if not cond:
            self.problems.append(problem)
        return cond


def _short(s: str, n: int = 150) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


# --------------------------------------------------------------------------------------------
# bad inputs


@dataclass
class Bad:
    """One bad input: ``args`` of a command; ``names``: what its one Error line must contain."""

    name: str
    args: list[str]
    names: list[str]
    base: Optional[str] = "forgotten"
    setup: Optional[Callable[["Workspace", "Ctx"], None]] = None
    env: dict = field(default_factory=dict)  # None values unset a variable
    rc: Optional[int] = None  # None: any non-zero; 0: a documented success
    allow_run: bool = False  # a run marked FAILED is documented (a damaged chunk is found after the run started)
    ids: Optional[str] = None  # the request whose ids must not appear in clear
    rss_limit: Optional[float] = None  # MiB over a plain command's peak
    output_has: list[str] = field(default_factory=list)  # a success's output
    changes: bool = False  # a documented success that registers (the registry and files may change)
    quick: bool = False


@dataclass
class Ctx:
    """What the cases refer to: the requests picked at build time and the input files."""

    picks: dict
    files: dict[str, str]
    baseline_rss: float = 0.0


def _input_files(w: Workspace, picks: dict) -> dict[str, str]:
    d = w.inputs
    f = {}

    def put(name: str, data: bytes) -> None:
        (d / name).write_bytes(data)
        f[name] = str(d / name)

    put("empty.txt", b"")
    put("comments.txt", b"# nothing here\n\n   \n# still nothing\n")
    put("binary.txt", b"digits:1\n\x00\x01\x02\xff\xfe binary\n")
    put("latin1.txt", b"digits:1\ncaf\xe9\n")
    put("huge-line.txt", b"digits:" + b"9" * (1 << 20) + b"\n")
    put("control.txt", b"digits:1\ndigits:\x1b[31m2\n")
    put("unknown.txt", b"digits:999999\ndigits:1000001\n")
    put("other-dataset.txt", b"mnist:train:1\nmnist:train:2\ncifar100:train:3\n")
    put("holdout.txt", ("\n".join(picks["holdout"]) + "\n").encode())
    for k in ("F", "A", "B", "G"):
        put(f"{k}.txt", ("\n".join(picks[k]) + "\n").encode())
    big = d / "huge.txt"
    with open(big, "wb") as fh:
        fh.truncate(300 << 20)  # sparse: 300 MiB without writing them
    f["huge.txt"] = str(big)
    (d / "a-directory.txt").mkdir(exist_ok=True)
    f["dir"] = str(d / "a-directory.txt")
    f["missing"] = str(d / "no-such-file.txt")
    (d / "plainfile").write_text("not a directory\n")
    f["plainfile"] = str(d / "plainfile")
    return f


def _tamper(rel: str, how: str, version: int = 2, model: str = MODEL) -> Callable[[Workspace, Ctx], None]:
    """A setup that damages one file of a version: truncate, garbage, or replace with bytes."""

    def setup(w: Workspace, ctx: Ctx) -> None:
        p = w.version_dir(model, version) / rel
        raw = p.read_bytes()
        if how == "truncate":
            p.write_bytes(raw[: len(raw) // 2])
        elif how == "garbage":
            p.write_bytes(b"\x93NUMPY garbage " + os.urandom(64))
        else:
            raise ValueError(how)

    return setup


def _write_json(rel: str, change: Callable[[dict], dict], version: int = 2) -> Callable[[Workspace, Ctx], None]:
    def setup(w: Workspace, ctx: Ctx) -> None:
        p = w.version_dir(MODEL, version) / rel
        p.write_text(json.dumps(change(json.loads(p.read_text()))))

    return setup


def _hostile_arch(w: Workspace, ctx: Ctx) -> None:
    p = w.version_dir(MODEL, 2) / "data" / "arch.json"
    p.write_text(json.dumps({"arch": "builder", "builder": "os:system", "kwargs": {"command": f"touch {w.marker}"}}))


def _evil_module_arch(w: Workspace, ctx: Ctx) -> None:
    """A module on the path that creates the marker when imported or called, named by arch.json."""
    mod = w.inputs / "pymods" / "evil_builder.py"
    mod.parent.mkdir(exist_ok=True)
    mod.write_text(f"from pathlib import Path\nPath({str(w.marker)!r}).touch()\n"
                   f"def build(**kw):\n    Path({str(w.marker)!r}).touch()\n")
    p = w.version_dir(MODEL, 2) / "data" / "arch.json"
    p.write_text(json.dumps({"arch": "builder", "builder": "evil_builder:build", "kwargs": {}}))


def _store_manifest(how: str) -> Callable[[Workspace, Ctx], None]:
    def setup(w: Workspace, ctx: Ctx) -> None:
        p = w.store_dir() / "manifest.json"
        raw = p.read_bytes()
        if how == "garble":
            p.write_bytes(raw[: len(raw) // 3] + b"\x00garbled" + raw[len(raw) // 3 + 8:])
        else:  # a chunk entry of the store's own manifest that disagrees with the version's copy
            m = json.loads(raw)
            text = json.dumps(m)
            text2 = re.sub(r'"(blake3|sha256)": "([0-9a-f])',
                           lambda mm: f'"{mm.group(1)}": "' + ("0" if mm.group(2) != "0" else "1"), text, count=1)
            p.write_text(text2)

    return setup


def _chunks(how: str) -> Callable[[Workspace, Ctx], None]:
    """Damage the chunk files of the steps request G needs from v2 (not rolled back yet)."""

    def setup(w: Workspace, ctx: Ctx) -> None:
        d = w.store_dir() / "chunks"
        files = sorted(p for p in d.iterdir() if re.match(r"^\d+\.\d+\.zst$", p.name))
        for p in files:
            raw = p.read_bytes()
            if how == "flip":
                b = bytearray(raw)
                b[len(b) // 2] ^= 0xFF
                p.write_bytes(bytes(b))
            elif how == "truncate":
                p.write_bytes(raw[: len(raw) // 2])
            elif how == "delete":
                p.unlink()

    return setup


def _training_file(name: str, how: str) -> Callable[[Workspace, Ctx], None]:
    def setup(w: Workspace, ctx: Ctx) -> None:
        t = w.training_dir(MODEL, 1)
        if how == "clear":
            w.call("plain_training_file", path=str(t / name), kind="npy" if name.endswith(".npy") else "pt")
        elif how == "swap":
            shutil.copy(t / "initial_state.pt", t / name)

    return setup


def _alias(alias: str, version: int, model: str = MODEL) -> Callable[[Workspace, Ctx], None]:
    def setup(w: Workspace, ctx: Ctx) -> None:
        w.call("set_alias", model=model, alias=alias, version=version)

    return setup


def _forge(w: Workspace, ctx: Ctx) -> None:
    w.call("forge_index", path=str(w.version_dir(MODEL, 2) / "data" / "segments" / "0" / "record_index.bin"))


def _npy_claim(w: Workspace, ctx: Ctx) -> None:
    w.call("npy_claiming", path=str(w.version_dir(MODEL, 2) / "data" / "rolled_back.npy"))


def _write_file(rel: str, data: bytes) -> Callable[[Workspace, Ctx], None]:
    def setup(w: Workspace, ctx: Ctx) -> None:
        (w.ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (w.ws / rel).write_bytes(data)

    return setup


def bad_inputs(ctx: Ctx, w: Workspace) -> list[Bad]:
    """The cases (>= 70): each names what its one Error line must mention."""
    f = ctx.files
    Y = ["--yes", "--no-audit"]
    fg = lambda *a: ["forget", "--model", MODEL, *a]  # noqa: E731
    acc = ["--accuracy-only"]
    kid, oid = key_id(KEY), key_id(OTHER_KEY)
    cases = [
        # --- unknown model, version, alias, class --------------------------------------------
        Bad("forget: unknown model", ["forget", "--model", "nope", "--records", f["G.txt"], *Y], ["'nope'"], quick=True),
        Bad("records: unknown model", ["records", "--model", "nope"], ["'nope'"]),
        Bad("lineage: unknown model", ["lineage", "--model", "nope"], ["'nope'"]),
        Bad("audit: unknown model", ["audit", "--model", "nope", *acc], ["'nope'"]),
        Bad("verify: unknown model", ["verify", "--model", "nope"], ["'nope'"]),
        Bad("purge: unknown model", ["purge", "--model", "nope", "--version", "1", "--yes"], ["'nope'"]),
        Bad("forget: unknown version", fg("--version", "99", "--records", f["G.txt"], *Y), ["version 99"]),
        Bad("records: unknown version", ["records", "--model", MODEL, "--version", "99"], ["version 99"]),
        Bad("records: version -1", ["records", "--model", MODEL, "--version", "-1"], ["version -1"]),
        Bad("audit: unknown version", ["audit", "--model", MODEL, "--version", "99", *acc], ["version 99"]),
        Bad("verify: unknown version", ["verify", "--model", MODEL, "--version", "99"], ["version 99"]),
        Bad("purge: unknown version", ["purge", "--model", MODEL, "--version", "99", "--yes"], ["99"]),
        Bad("forget: unknown alias", fg("--alias", "nosuch", "--records", f["G.txt"], *Y), ["'nosuch'"]),
        Bad("records: unknown alias", ["records", "--model", MODEL, "--alias", "nosuch"], ["'nosuch'"]),
        Bad("audit: unknown alias", ["audit", "--model", MODEL, "--alias", "nosuch", *acc], ["'nosuch'"]),
        Bad("verify: unknown alias", ["verify", "--model", MODEL, "--alias", "nosuch"], ["'nosuch'"]),
        Bad("forget: --version and --alias", fg("--version", "2", "--alias", "x", "--records", f["G.txt"], *Y),
            ["--version", "--alias"]),
        Bad("forget: no --records nor --class", fg(*Y), ["--records", "--class"]),
        Bad("forget: unknown class index", fg("--class", "42", *Y), ["42"]),
        Bad("forget: unknown class name", fg("--class", "bogus", *Y), ["bogus"]),
        Bad("records: unknown class", ["records", "--model", MODEL, "--class", "99"], ["99"]),
        Bad("forget: from a superseded version", fg("--version", "1", "--records", f["G.txt"], *Y), ["superseded", "v2"]),
        # --- ids files -----------------------------------------------------------------------
        Bad("forget: ids file missing", fg("--records", f["missing"], *Y), [f["missing"]], quick=True),
        Bad("forget: ids file empty", fg("--records", f["empty.txt"], *Y), [f["empty.txt"]]),
        Bad("forget: ids file only comments", fg("--records", f["comments.txt"], *Y), [f["comments.txt"]]),
        Bad("forget: ids file binary", fg("--records", f["binary.txt"], *Y), [f["binary.txt"], "binary"]),
        Bad("forget: ids file not UTF-8", fg("--records", f["latin1.txt"], *Y), [f["latin1.txt"], "UTF-8"]),
        Bad("forget: ids file with a 1 MiB line", fg("--records", f["huge-line.txt"], *Y), [f["huge-line.txt"], "line 1"]),
        Bad("forget: id with control characters", fg("--records", f["control.txt"], *Y), [f["control.txt"], "line 2"]),
        Bad("forget: ids file is a directory", fg("--records", f["dir"], *Y), [f["dir"]]),
        Bad("forget: ids file of 300 MiB", fg("--records", f["huge.txt"], *Y), [f["huge.txt"], "MiB"]),
        Bad("forget: unknown ids", fg("--records", f["unknown.txt"], *Y), ["digits:999999"], ids="unknown.txt", quick=True),
        Bad("forget: ids of another data set", fg("--records", f["other-dataset.txt"], *Y), ["mnist:train:1", "digits"],
            ids="other-dataset.txt"),
        Bad("forget: held-out ids (never trained on)", fg("--records", f["holdout.txt"], *Y), [ctx.picks["holdout"][0]],
            ids="holdout.txt"),
        Bad("forget: ids already forgotten", fg("--records", f["F.txt"], *Y), ["already forgotten"], ids="F.txt"),
        # --- option values -------------------------------------------------------------------
        *[Bad(f"forget: --max-step-share {v}", fg("--records", f["G.txt"], "--max-step-share", v, *Y), ["--max-step-share"],
              ids="G.txt", quick=(v == "nan")) for v in ("nan", "-1", "0", "1.5", "inf")],
        *[Bad(f"forget: --repair-lr {v}", fg("--records", f["G.txt"], "--repair", "finetune", "--repair-lr", v, *Y),
              ["--repair-lr"]) for v in ("-1", "nan", "0")],
        Bad("forget: --method bogus", fg("--records", f["G.txt"], "--method", "bogus", *Y), ["bogus"]),
        Bad("forget: --repair bogus", fg("--records", f["G.txt"], "--repair", "bogus", *Y), ["--repair"]),
        Bad("forget: --epochs 0", fg("--records", f["G.txt"], "--method", "finetune", "--epochs", "0", *Y), ["--epochs"]),
        Bad("forget: --store-uri garbage://x", fg("--records", f["G.txt"], "--repair", "finetune", "--store-uri",
                                                    "garbage://x", *Y), ["garbage"]),
        Bad("forget: --store-uri unwritable (/proc)", fg("--records", f["G.txt"], "--repair", "finetune", "--store-uri",
                                                         "/proc/amnesia-store", *Y), ["/proc/amnesia-store"], ids="G.txt"),
        Bad("forget: --copies 0", fg("--records", f["G.txt"], "--method", "relabel", "--copies", "0", *Y), ["--copies"]),
        *[Bad(f"train: --lr {v}", [*TRAIN, "--lr", v], ["--lr"], quick=(v == "nan")) for v in ("0", "nan", "-1", "inf")],
        Bad("train: --momentum -1", [*TRAIN, "--momentum", "-1"], ["--momentum"]),
        Bad("train: --weight-decay nan", [*TRAIN, "--weight-decay", "nan"], ["--weight-decay"]),
        Bad("train: --codec bogus", ["train", "--arch", "cnn", "--codec", "bogus"], ["bogus"]),
        Bad("train: --store-uri garbage://x", [*TRAIN, "--store-uri", "garbage://x"], ["garbage"], quick=True),
        Bad("train: --store-uri unwritable (/proc)", [*TRAIN, "--store-uri", "/proc/amnesia-store"], ["/proc/amnesia-store"]),
        Bad("train: --store-uri unwritable (/sys)", [*TRAIN, "--store-uri", "/sys/amnesia-store"], ["/sys/amnesia-store"]),
        Bad("train: --store-uri under a file", [*TRAIN, "--store-uri", f["plainfile"] + "/sub"], [f["plainfile"]]),
        Bad("train: --epochs 0", ["train", "--arch", "cnn", "--epochs", "0"], ["--epochs"]),
        Bad("train: --batch-size 0", [*TRAIN, "--batch-size", "0"], ["--batch-size"]),
        Bad("train: --holdout-fraction 1", [*TRAIN, "--holdout-fraction", "1"], ["--holdout-fraction"]),
        Bad("train: --dataset bogus", [*TRAIN, "--dataset", "bogus"], ["bogus"]),
        Bad("train: --arch bogus", ["train", "--arch", "bogus", "--epochs", "1", "--no-audit"], ["bogus"]),
        Bad("audit: --shadows 1", ["audit", "--model", MODEL, "--shadows", "1"], ["--shadows"]),
        Bad("records: --limit 0", ["records", "--model", MODEL, "--limit", "0"], ["--limit"]),
        Bad("lineage: --format bogus", ["lineage", "--model", MODEL, "--format", "bogus"], ["--format"]),
        Bad("lineage: --output unwritable", ["lineage", "--model", MODEL, "--output", "/proc/lineage.txt"], ["/proc/lineage.txt"]),
        # --- tracking URIs -------------------------------------------------------------------
        Bad("records: tracking URI of an unknown scheme", ["records", "--model", MODEL], ["bogus://x"],
            env={"MLFLOW_TRACKING_URI": "bogus://x"}, quick=True),
        Bad("train: tracking URI of an unknown scheme", TRAIN, ["bogus://x"], env={"MLFLOW_TRACKING_URI": "bogus://x"}),
        Bad("records: registry URI of an unknown scheme", ["records", "--model", MODEL], ["bogus://y"],
            env={"MLFLOW_REGISTRY_URI": "bogus://y"}),
        Bad("records: sqlite file that is not a database", ["records", "--model", MODEL], ["notadb.db"],
            setup=_write_file("notadb.db", b"just some text, not sqlite\n" * 10),
            env={"MLFLOW_TRACKING_URI": f"sqlite:///{w.ws / 'notadb.db'}"}),
        Bad("train: sqlite file that is not a database", TRAIN, ["notadb.db"],
            setup=_write_file("notadb.db", b"just some text, not sqlite\n" * 10),
            env={"MLFLOW_TRACKING_URI": f"sqlite:///{w.ws / 'notadb.db'}"}),
        Bad("train: sqlite in a missing directory", TRAIN, [str(w.ws / "missing" / "dir")],
            env={"MLFLOW_TRACKING_URI": f"sqlite:///{w.ws / 'missing' / 'dir' / 'mlflow.db'}"}, quick=True),
        Bad("records: sqlite file that does not exist", ["records", "--model", MODEL], ["none.db"],
            env={"MLFLOW_TRACKING_URI": f"sqlite:///{w.ws / 'none.db'}"}),
        Bad("records: tracking server down", ["records", "--model", MODEL], ["127.0.0.1:9"],
            env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}),
        # --- keys ----------------------------------------------------------------------------
        Bad("forget: wrong key", fg("--records", f["G.txt"], *Y), [kid, oid], env={"MLFLOW_AMNESIA_KEY": OTHER_KEY},
            ids="G.txt", quick=True),
        Bad("records: wrong key", ["records", "--model", MODEL], [kid, oid], env={"MLFLOW_AMNESIA_KEY": OTHER_KEY}),
        Bad("audit --accuracy-only: wrong key", ["audit", "--model", MODEL, *acc], [kid, oid],
            env={"MLFLOW_AMNESIA_KEY": OTHER_KEY}),
        Bad("purge: wrong key", ["purge", "--model", MODEL, "--version", "1", "--yes"], [kid, oid],
            env={"MLFLOW_AMNESIA_KEY": OTHER_KEY}),
        Bad("forget: no key", fg("--records", f["G.txt"], *Y), ["MLFLOW_AMNESIA_KEY", kid], env={"MLFLOW_AMNESIA_KEY": None},
            ids="G.txt"),
        Bad("records: no key", ["records", "--model", MODEL], ["MLFLOW_AMNESIA_KEY"], env={"MLFLOW_AMNESIA_KEY": None}),
        Bad("audit --accuracy-only: no key", ["audit", "--model", MODEL, *acc], ["MLFLOW_AMNESIA_KEY"],
            env={"MLFLOW_AMNESIA_KEY": None}),
        Bad("purge: no key", ["purge", "--model", MODEL, "--version", "1", "--yes"], ["MLFLOW_AMNESIA_KEY"],
            env={"MLFLOW_AMNESIA_KEY": None}),
        Bad("records: malformed key", ["records", "--model", MODEL], ["MLFLOW_AMNESIA_KEY"], env={"MLFLOW_AMNESIA_KEY": "xyz"}),
        # --- model names with quotes: every command works ------------------------------------
        Bad("records: a name with both quotes", ["records", "--model", QUOTED, "--limit", "2"], [], rc=0,
            output_has=["digits:"], quick=True),
        Bad("lineage: a name with both quotes", ["lineage", "--model", QUOTED], [], rc=0, output_has=["v1"]),
        Bad("lineage --format json: a name with both quotes", ["lineage", "--model", QUOTED, "--format", "json"], [], rc=0,
            output_has=['"version"']),
        Bad("verify: a name with both quotes", ["verify", "--model", QUOTED], [], rc=0),
        Bad("forget --dry-run: a name with both quotes", ["forget", "--model", QUOTED, "--records", f["G.txt"], "--dry-run",
                                                          "--no-audit"], [], rc=0, output_has=["dry run"], ids="G.txt"),
        Bad("purge: a name with both quotes, current version", ["purge", "--model", QUOTED, "--version", "1", "--yes"],
            [QUOTED, "v1"]),
        # --- tampered artifacts --------------------------------------------------------------
        *[Bad(f"{cmd[0]}: arch.json naming os:system", cmd, ["arch.json", "os:system"], setup=_hostile_arch,
              quick=(cmd[0] == "records"))
          for cmd in (["records", "--model", MODEL], ["verify", "--model", MODEL],
                      fg("--records", f["G.txt"], "--dry-run", "--no-audit"), ["audit", "--model", MODEL, *acc],
                      fg("--records", f["G.txt"], *Y))],
        Bad("records: arch.json naming a module on the path", ["records", "--model", MODEL], ["arch.json", "evil_builder"],
            setup=_evil_module_arch, env={"PYTHONPATH": None}),  # set per case below
        Bad("lineage: arch.json naming os:system (reads no code)", ["lineage", "--model", MODEL], [], rc=0,
            setup=_hostile_arch, output_has=["v2"]),
        Bad("records: amnesia.json truncated", ["records", "--model", MODEL], ["amnesia.json"],
            setup=_tamper("data/amnesia.json", "truncate"), quick=True),
        Bad("forget: amnesia.json truncated", fg("--records", f["G.txt"], *Y), ["amnesia.json"],
            setup=_tamper("data/amnesia.json", "truncate")),
        Bad("verify: amnesia.json truncated", ["verify", "--model", MODEL], ["amnesia.json"],
            setup=_tamper("data/amnesia.json", "truncate")),
        Bad("forget: amnesia.json of a newer format", fg("--records", f["G.txt"], *Y), ["amnesia.json", "Upgrade"],
            setup=_write_json("data/amnesia.json", lambda d: {**d, "format_version": 99})),
        Bad("forget: weights.pt truncated", fg("--records", f["G.txt"], *Y), ["weights.pt"],
            setup=_tamper("data/weights.pt", "truncate")),
        Bad("audit --accuracy-only: weights.pt truncated", ["audit", "--model", MODEL, *acc], ["weights.pt"],
            setup=_tamper("data/weights.pt", "truncate")),
        Bad("forget: rolled_back.npy garbage", fg("--records", f["G.txt"], *Y), ["rolled_back.npy"],
            setup=_tamper("data/rolled_back.npy", "garbage")),
        Bad("verify: rolled_back.npy garbage", ["verify", "--model", MODEL], ["rolled_back.npy"],
            setup=_tamper("data/rolled_back.npy", "garbage")),
        Bad("forget: rolled_back.npy claiming 8 TB", fg("--records", f["G.txt"], *Y), ["rolled_back.npy"], setup=_npy_claim,
            rss_limit=200),
        Bad("records: forgotten.npy garbage", ["records", "--model", MODEL], ["forgotten.npy"],
            setup=_tamper("data/forgotten.npy", "garbage")),
        Bad("forget: forgotten.npy garbage", fg("--records", f["G.txt"], *Y), ["forgotten.npy"],
            setup=_tamper("data/forgotten.npy", "garbage")),
        Bad("records: arch.json claiming 10**12 classes", ["records", "--model", MODEL], ["weights.pt", "arch.json"],
            setup=_write_json("data/arch.json", lambda d: {**d, "num_classes": 10**12}), rss_limit=200),
        Bad("forget: MLmodel of another flavor (no data/)", fg("--records", f["G.txt"], *Y), ["mlflow_amnesia"],
            setup=lambda w, c: shutil.rmtree(w.version_dir(MODEL, 2) / "data")),
        Bad("forget: forged record index (2**24 records)", fg("--records", f["G.txt"], *Y), ["record_index.bin"],
            setup=_forge, rss_limit=200, quick=True),
        Bad("records: forged record index (2**24 records)", ["records", "--model", MODEL], ["record_index.bin"],
            setup=_forge, rss_limit=200),
        Bad("verify: store manifest garbled", ["verify", "--model", MODEL], ["manifest.json"], setup=_store_manifest("garble"),
            quick=True),
        Bad("verify: store manifest disagrees with the version's copy", ["verify", "--model", MODEL], ["manifest"],
            setup=_store_manifest("disagree")),
        Bad("purge: store manifest garbled", ["purge", "--model", MODEL, "--version", "1", "--yes"], ["manifest.json"],
            setup=_store_manifest("garble")),
        Bad("forget: manifest copy of the version garbled", fg("--records", f["G.txt"], *Y), ["segments/0/manifest.json"],
            setup=_tamper("data/segments/0/manifest.json", "truncate")),
        Bad("verify: manifest copy of the version garbled", ["verify", "--model", MODEL], ["segments/0/manifest.json"],
            setup=_tamper("data/segments/0/manifest.json", "truncate")),
        Bad("forget: store manifest copy of a newer format", fg("--records", f["G.txt"], *Y), ["format version 99"],
            setup=_write_json("data/segments/0/manifest.json", lambda d: {**d, "format_version": 99})),
        Bad("forget: corrupted chunks", fg("--records", f["G.txt"], *Y), ["chunk", "step"], setup=_chunks("flip"),
            allow_run=True, ids="G.txt", quick=True),
        Bad("verify: corrupted chunks", ["verify", "--model", MODEL], ["chunk"], setup=_chunks("flip")),
        Bad("verify: truncated chunks", ["verify", "--model", MODEL], ["chunk"], setup=_chunks("truncate")),
        Bad("forget: missing chunks", fg("--records", f["G.txt"], *Y), ["chunk", "missing"], setup=_chunks("delete"),
            allow_run=True, ids="G.txt"),
        Bad("forget --repair replay: batch_order.npy swapped for one in clear",
            fg("--records", f["G.txt"], "--repair", "replay", *Y), ["batch_order.npy"],
            setup=_training_file("batch_order.npy", "clear"), allow_run=True, ids="G.txt"),
        Bad("forget --method retrain: initial_state.pt swapped for one in clear",
            fg("--records", f["G.txt"], "--method", "retrain", *Y), ["initial_state.pt"],
            setup=_training_file("initial_state.pt", "clear"), allow_run=True, ids="G.txt"),
        Bad("forget --repair replay: batch_order.npy replaced by another role's file",
            fg("--records", f["G.txt"], "--repair", "replay", *Y), ["batch_order.npy", "initial_state.pt"],
            setup=_training_file("batch_order.npy", "swap"), allow_run=True, ids="G.txt"),
        Bad("forget: lock directory unusable (a path under a file)", fg("--records", f["G.txt"], *Y), [], rc=0,
            env={"MLFLOW_AMNESIA_LOCK_DIR": f["plainfile"] + "/locks", "MLFLOW_AMNESIA_QUIET": "0"},
            output_has=["cannot take the forget lock", "digits-cnn v3"], changes=True, ids="G.txt"),
        # --- purge refusals ------------------------------------------------------------------
        Bad("purge: the current (not superseded) version", ["purge", "--model", MODEL, "--version", "2", "--yes"],
            ["v2", "superseded"], quick=True),
        Bad("purge: a version an alias points at", ["purge", "--model", MODEL, "--version", "1", "--yes"],
            ["v1", "old"], setup=_alias("old", 1)),
        Bad("purge --dry-run: the current version", ["purge", "--model", MODEL, "--version", "2", "--dry-run"],
            ["v2", "superseded"]),
    ]
    for c in cases:
        if c.setup is _evil_module_arch:
            c.env = {"PYTHONPATH": w.env()["PYTHONPATH"] + os.pathsep + str(w.inputs / "pymods")}
    return cases


def run_bad(w: Workspace, ctx: Ctx, b: Bad) -> tuple[bool, str, dict]:
    chk = Check()
    w.restore(b.base)
    if b.setup:
        b.setup(w, ctx)
    db0, tree0 = w.db_state(), w.tree_state()
    r = w.cli(*b.args, env=w.env(**b.env), timeout=240)
    db1, tree1 = w.db_state(), w.tree_state()
    errs = r.error_lines()
    if b.rc == 0:
        chk.that(r.rc == 0, f"exit {r.rc}, expected 0: {_short(r.first_line())}")
        chk.that(not errs, f"an Error line: {_short(errs[0]) if errs else ''}")
        for s in b.output_has:
            chk.that(s in r.out, f"output lacks {s!r}")
    else:
        chk.that(r.rc > 0 and (b.rc is None or r.rc == b.rc), f"exit {r.rc}" if r.rc >= 0 else f"died by signal {-r.rc}")
        chk.that(len(errs) == 1, f"{len(errs)} Error lines")
        # verify is a report: a line per problem (naming the file), then one Error line summing up
        said = r.out if b.args[0] == "verify" else (errs[0] if errs else "")
        for s in b.names:
            chk.that(s.lower() in said.lower(), f"the {'report' if b.args[0] == 'verify' else 'Error line'} does not name {s!r}")
    chk.that("Traceback" not in r.out, "a Traceback: " + _short(r.out[r.out.find("Traceback"):][-300:]))
    chk.that(not r.timed_out, "timed out")
    # nothing registered, tagged, aliased; no run (unless documented), no file or directory
    for t in (() if b.changes else REGISTRY_TABLES):
        chk.that(db0.get(t) == db1.get(t), f"registry table {t} changed")
    other = {t for t in set(db0) | set(db1) if t not in REGISTRY_TABLES and db0.get(t) != db1.get(t)}
    if b.allow_run or b.changes:
        other -= set(RUN_TABLES_OK)
    chk.that(not other or b.changes, f"database tables changed: {sorted(other)}")
    new = sorted(set(tree1) - set(tree0))
    if b.allow_run or b.changes:
        new = [p for p in new if not p.startswith("mlruns")]
    chk.that(not new, f"created {new[:4]}")
    gone = sorted(set(tree0) - set(tree1))
    chk.that(not gone, f"deleted {gone[:4]}")
    changed = sorted(p for p in set(tree0) & set(tree1) if tree0[p] != tree1[p])
    chk.that(not changed, f"modified {changed[:4]}")
    chk.that(not w.marker.exists(), "the marker file was created: code named by an artifact ran")
    if b.ids:
        s = w.scan(f"bad input: {b.name}", ctx.picks.get(b.ids[:-4], []) or _ids_in(ctx.files[b.ids]), record=False)
        chk.that(not s["hits"], f"record ids in clear: {s['hits'][:3]}")
        w.scans.append({**s, "label": f"bad input: {b.name}", "bad_input": True})
    if b.rss_limit is not None and ctx.baseline_rss:
        grew = r.maxrss_mib - ctx.baseline_rss
        chk.that(grew < b.rss_limit, f"peak memory {r.maxrss_mib:.0f} MiB, {grew:.0f} MiB over a plain command")
    detail = f"exit {r.rc}: {_short(r.first_line(), 130)}"
    return not chk.problems, ("; ".join(chk.problems) + f" [{detail}]") if chk.problems else detail, \
        {"rc": r.rc, "line": r.first_line()[:400], "maxrss_mib": round(r.maxrss_mib)}


def _ids_in(path: str) -> list[str]:
    try:
        return [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    except (OSError, UnicodeDecodeError):
        return []


# --------------------------------------------------------------------------------------------
# kills, and the invariants a re-run must restore


def lineage_problems(f: dict, *, alias: Optional[str] = None, purged: tuple[int, ...] = (),
                     forgotten_ids: tuple[str, ...] = ()) -> list[str]:
    p: list[str] = []
    vs = {v["version"]: v for v in f["versions"]}
    if not vs:
        return ["no version registered"]
    latest = max(vs)
    children: dict[int, list[int]] = {}
    for v in vs.values():
        par = v["tags"].get("amnesia.parent_version")
        if par:
            children.setdefault(int(par), []).append(v["version"])
    for par, ch in children.items():
        if len(ch) > 1:
            p.append(f"v{par} has {len(ch)} children {ch}")
        if par in vs and vs[par]["tags"].get("amnesia.superseded_by") != str(ch[0]):
            p.append(f"v{par} is not tagged superseded_by v{ch[0]}")
        if par in vs and vs[ch[0]].get("forgotten") is not None and vs[par].get("forgotten") is not None:
            if not set(vs[par]["forgotten"]) <= set(vs[ch[0]]["forgotten"]):
                p.append(f"v{ch[0]} misses records its parent v{par} forgot")
    for n, v in vs.items():
        if n in purged:
            if v["load"] != "purged":
                p.append(f"v{n} should be purged, load says {v['load']}")
            if "amnesia.purged" not in v["tags"]:
                p.append(f"v{n} has no amnesia.purged tag")
            if v["weights_file"]:
                p.append(f"v{n}'s weights.pt is still there")
            if not (v["tombstone"] or {}).get("completed_at"):
                p.append(f"v{n}'s tombstone is not completed")
            if not v["description"].startswith("**Purged**"):
                p.append(f"v{n}'s description has no Purged note")
            ch = children.get(n, [])
            need = set(vs[ch[0]].get("rolled_back") or []) if ch else set()
            for st in v["stores"]:
                held = {s for s in need if st["first"] <= s <= st["last"]}
                if st["purged_steps"] is None:
                    p.append(f"store {st['url']}: {st.get('error')}")
                    continue
                if held - set(st["purged_steps"]):
                    p.append(f"steps {sorted(held - set(st['purged_steps']))} not purged in {st['url']}")
        elif v["load"] != "ok":
            p.append(f"v{n} does not load: {v['load']}")
        for st in v["stores"]:
            left = sorted(s for s in (st["purged_steps"] or []) if str(s) in st["chunk_files"])
            if left:
                p.append(f"chunk files of purged steps {left[:6]} still on disk in {st['url']}")
    if alias and f["aliases"].get(alias) != latest:
        p.append(f"alias {alias} is on v{f['aliases'].get(alias)}, not v{latest}")
    if forgotten_ids:
        missing = sorted(set(forgotten_ids) - set(vs[latest].get("forgets_ids") or []))
        if missing:
            p.append(f"v{latest} has not forgotten {len(missing)} requested record(s)")
    return p


def check_lineage(w: Workspace, chk: Check, model: str, *, alias: Optional[str] = None, purged: tuple[int, ...] = (),
                  forgotten_ids: tuple[str, ...] = (), records_check: bool = True) -> dict:
    """The invariants of a lineage after a re-run, read by a fresh process and through the CLI."""
    f = w.call("facts", model=model, ids=list(forgotten_ids))
    for prob in lineage_problems(f, alias=alias, purged=purged, forgotten_ids=forgotten_ids):
        chk.that(False, prob)
    for v in f["versions"]:
        r = w.cli("verify", "--model", model, "--version", str(v["version"]))
        chk.that(r.rc == 0 and "Traceback" not in r.out, f"verify v{v['version']}: exit {r.rc} {_short(r.first_line(), 160)}")
    if records_check and forgotten_ids:
        r = w.cli("records", "--model", model)
        listed = set(r.out.split())
        chk.that(r.rc == 0, f"records: exit {r.rc} {_short(r.first_line())}")
        back = sorted(set(forgotten_ids) & listed)
        chk.that(not back, f"records lists forgotten records {back[:3]}")
    return f


@dataclass
class Kill:
    name: str
    point: str
    kind: str  # train | schema | forget | forget-after | purge
    quick: bool = False


def kills() -> list[Kill]:
    out = [Kill(f"train killed at recording:{n}", f"recording:{n}", "train") for n in (1, 12, 24)]
    out += [Kill(f"train killed at {p}", p, "train") for p in ("upload", "registered", "described")]
    out += [Kill(f"first train killed at schema:{n}", f"schema:{n}", "schema", quick=(n == 420))
            for n in (1, 40, 420, 950, 1650)]
    out += [Kill(f"forget killed at {p}", p, "forget", quick=(p == "upload")) for p in ("audit", "upload")]
    out += [Kill(f"forget --set-alias --purge killed at {p}", p, "forget-after", quick=(p == "registered"))
            for p in ("registered", "described", "aliased", "superseded", "purging",
                      "purge:started", "purge:manifest-written", "purge:tagged")]
    out += [Kill(f"purge killed at {p}", f"purge:{p}", "purge", quick=(p == "manifest-written"))
            for p in ("started", "manifest-written", "chunks-deleted", "optimizer-deleted", "model-files-deleted",
                      "tombstone-completed", "described", "tagged")]
    return out


def run_kill(w: Workspace, ctx: Ctx, k: Kill) -> tuple[bool, str, dict]:
    chk = Check()
    A = ctx.picks["A"]
    if k.kind in ("train", "schema"):
        name = "crash-train" if k.kind == "train" else "first"
        w.restore("forgotten" if k.kind == "train" else None)
        args = [*TRAIN, "--model-name", name]
        before = []
    elif k.kind == "forget":
        w.restore("trained")
        name, args = MODEL, ["forget", "--model", MODEL, "--records", ctx.files["A.txt"], "--yes", "--no-audit"]
    elif k.kind == "forget-after":
        w.restore("trained")
        w.call("set_alias", model=MODEL, alias="production", version=1)
        name = MODEL
        args = ["forget", "--model", MODEL, "--alias", "production", "--records", ctx.files["A.txt"], "--yes",
                "--no-audit", "--set-alias", "production", "--purge"]
    else:
        w.restore("forgotten")
        name, args = MODEL, ["purge", "--model", MODEL, "--version", "1", "--yes"]
    r = w.cli(*args, kill=k.point)
    chk.that(r.rc == KILLED, f"not killed by SIGKILL (exit {r.rc}: {_short(r.first_line())})")
    if k.kind == "schema":
        db = w.db
        chk.that(not db.exists() or _complete_db(db), "a half-made database")
    if k.point == "purge:manifest-written" and k.kind == "purge":
        v = w.cli("verify", "--model", MODEL, "--version", "2")
        chk.that(v.rc == 1 and "Traceback" not in v.out, f"verify v2 after the kill: exit {v.rc}, expected 1 (chunk files left)")
        chk.that("purge --model" in v.out, "verify does not name the purge command")
    if k.point == "purge:started" and k.kind == "purge":
        v = w.cli("verify", "--model", MODEL, "--version", "1")
        chk.that(v.rc == 1 and "purge --model" in v.out, f"verify v1 after the kill: exit {v.rc}, expected 1 naming the purge")
    r2 = w.cli(*args)
    # killed after a forget's very last write (the purge's amnesia.purged tag) nothing is left to
    # finish: the re-run says what a finished request says (exit 1, "already forgotten")
    finished = k.kind == "forget-after" and k.point == "purge:tagged"
    chk.that(r2.rc == 0 or (finished and r2.rc == 1 and "already forgotten" in r2.out),
             f"re-run: exit {r2.rc}: {_short(r2.first_line(), 200)}")
    chk.that("Traceback" not in r2.out, "re-run printed a Traceback")
    if k.kind in ("train", "schema"):
        f = check_lineage(w, chk, name)
        n = len(f["versions"])
        want = 2 if k.point in ("registered", "described") else 1
        chk.that(n == want, f"{n} versions of {name}, expected {want}")
        if k.kind == "schema":
            extra = sorted(p.name for p in w.ws.iterdir() if p.name not in ("mlflow.db", "mlruns", "home", "locks"))
            chk.that(not extra, f"left in the workspace: {extra}")
    elif k.kind == "forget":
        f = check_lineage(w, chk, MODEL, forgotten_ids=tuple(A))
        chk.that([v["version"] for v in f["versions"]] == [1, 2], f"versions {[v['version'] for v in f['versions']]}")
    elif k.kind == "forget-after":
        f = check_lineage(w, chk, MODEL, alias="production", purged=(1,), forgotten_ids=tuple(A))
        chk.that([v["version"] for v in f["versions"]] == [1, 2], f"versions {[v['version'] for v in f['versions']]}")
        chk.that("completed the earlier registration" in r2.out or "purged" in r2.out or finished,
                 "the re-run did not say it completed the earlier registration")
        r3 = w.cli(*args)
        chk.that(r3.rc == 1 and "already forgotten" in r3.out, f"a third run: exit {r3.rc} {_short(r3.first_line())}")
    else:
        f = check_lineage(w, chk, MODEL, purged=(1,), forgotten_ids=tuple(ctx.picks["F"]))
        v1 = next(v for v in f["versions"] if v["version"] == 1)
        chk.that(v1["optimizer_state"] is False, "training/optimizer_state.pt still there")
        r3 = w.cli(*args)
        chk.that(r3.rc == 0 and "already purged" in r3.out, f"purge again: exit {r3.rc} {_short(r3.first_line())}")
    s = w.scan(f"after {k.name}", ctx.picks["A"] + ctx.picks["F"])
    chk.that(not s["hits"], f"record ids in clear: {s['hits'][:3]}")
    detail = f"killed, re-run exit {r2.rc}: {_short(r2.out.strip().splitlines()[-1] if r2.out.strip() else '', 110)}"
    return not chk.problems, "; ".join(chk.problems) if chk.problems else detail, {}


def _complete_db(db: Path) -> bool:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        return "alembic_version" in tables and "model_versions" in tables and not any(
            t.startswith("_alembic_tmp_") for t in tables)
    except sqlite3.DatabaseError:
        return False
    finally:
        con.close()


# --------------------------------------------------------------------------------------------
# concurrency


def run_concurrent(w: Workspace, ctx: Ctx, machines: int) -> tuple[bool, str, dict]:
    """Two forgets of requests A and B (sharing a step) from v1 at once: on one machine (one lock
    directory) they queue; on two (two lock directories, held together just before registering)
    one is refused and its re-run builds on the other. Either way: a chain, each step once."""
    chk = Check()
    w.restore("trained")
    files = [ctx.files["A.txt"], ctx.files["B.txt"]]
    extra = [{}, {}]
    if machines == 2:
        bar = w.root / "barrier"
        shutil.rmtree(bar, ignore_errors=True)
        bar.mkdir()
        extra = [{"MLFLOW_AMNESIA_LOCK_DIR": str(w.ws / f"locks-m{i}"), "AMNESIA_TEST_BARRIER": f"{bar}:2"} for i in (1, 2)]
    hs = [w.start_cli("forget", "--model", MODEL, "--records", fl, "--yes", "--no-audit", extra_env=e)
          for fl, e in zip(files, extra)]
    rs = [w.runner.wait(h)[0] for h in hs]
    for r in rs:
        chk.that("Traceback" not in r.out, "a Traceback")
    if machines == 1:
        chk.that([r.rc for r in rs] == [0, 0], f"exit statuses {[r.rc for r in rs]}: {[_short(r.first_line()) for r in rs]}")
    else:
        chk.that(sorted(r.rc for r in rs) == [0, 1], f"exit statuses {[r.rc for r in rs]}")
        losers = [i for i, r in enumerate(rs) if r.rc == 1]
        if losers:
            out = rs[losers[0]].out
            chk.that("another forget of" in out and "re-run the same command" in out,
                     f"the refusal says: {_short(rs[losers[0]].first_line())}")
            f = w.call("facts", model=MODEL)
            kids = [v["version"] for v in f["versions"] if v["tags"].get("amnesia.parent_version") == "1"]
            chk.that(len(kids) == 1, f"children of v1 before the re-run: {kids}")
            r = w.cli("forget", "--model", MODEL, "--records", files[losers[0]], "--yes", "--no-audit")
            chk.that(r.rc == 0, f"the loser's re-run: exit {r.rc} {_short(r.first_line())}")
    both = tuple(ctx.picks["A"] + ctx.picks["B"])
    f = check_lineage(w, chk, MODEL, forgotten_ids=both)
    vs = [v["version"] for v in f["versions"]]
    latest = max(vs)
    chain = [(v["version"], v["tags"].get("amnesia.parent_version")) for v in f["versions"]]
    chk.that(len(vs) == 3, f"versions {chain}")
    wt = w.call("weights", model=MODEL, base=1, target=latest, ids=list(both))
    chk.that(wt["steps"] == wt["expected_steps"], f"rolled back {wt['steps']}, the requests' steps are {wt['expected_steps']}")
    ok_w = wt["max_abs_diff"] < 1e-5 and wt["smallest_step_delta"] > 100 * max(wt["max_abs_diff"], 1e-12)
    chk.that(ok_w, f"v{latest} differs from v1 minus each rolled-back delta once by {wt['max_abs_diff']:.3g} "
                   f"(a step's delta is >= {wt['smallest_step_delta']:.3g})")
    shared = sorted(set(ctx.picks["steps"]["A"]) & set(ctx.picks["steps"]["B"]))
    s = w.scan(f"after two forgets at once ({machines} machine{'s' if machines > 1 else ''})", list(both))
    chk.that(not s["hits"], f"record ids in clear: {s['hits'][:3]}")
    detail = (f"chain {chain}; steps shared by the requests {shared}; v{latest} = v1 - sum of {len(wt['steps'])} deltas, "
              f"max diff {wt['max_abs_diff']:.2g} (one delta >= {wt['smallest_step_delta']:.2g})")
    return not chk.problems, "; ".join(chk.problems) if chk.problems else detail, {"weights": wt, "chain": chain}


# --------------------------------------------------------------------------------------------
# re-identification without the key


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    return max(0.0, 1.0 - sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(min(k, n + 1))))


def run_reidentify(w: Workspace, model: str, version: int) -> list[tuple[str, bool, str, dict]]:
    w.restore("forgotten")
    env = w.env()
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "reidentify.py"), "--model", model, "--version",
                        str(version), "--score", "--json", "--gradient-steps", "4"], env=env, cwd=str(w.ws),
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        return [("reidentify.py", False, f"exit {p.returncode}: {_short(p.stderr[-400:])}", {})]
    out = []
    for fig in json.loads(p.stdout):
        n = max(fig["n_records"], 1)
        pe = binom_sf(fig["correct"] or 0, fig["claimed"], 1 / n)
        pf = binom_sf(fig["forgotten_correct"] or 0, fig["forgotten_claimed"], 1 / n)
        ok = pe > 1e-3 and pf > 1e-3
        detail = (f"index entries re-identified {fig['correct']} / {fig['entries']} (chance {fig['chance']:.2f}), "
                  f"forgotten records {fig['forgotten_correct']} / {fig['forgotten']}; {fig['claimed']} unique claims; "
                  f"{_short(fig['source'], 90)}")
        out.append((f"{fig['attack']} on {model} v{version}, no key", ok, detail, fig))
    return out


# =============================================================================================
# Driver


class Report:
    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self.started = time.monotonic()

    def add(self, o: Outcome) -> None:
        self.outcomes.append(o)
        mark = "ok  " if o.ok else "FAIL"
        print(f"  {mark} {o.name}: {o.detail}", flush=True)

    def counts(self, cat: Optional[str] = None) -> tuple[int, int]:
        os_ = [o for o in self.outcomes if cat is None or o.category == cat]
        return sum(o.ok for o in os_), sum(not o.ok for o in os_)


def _case(rep: Report, cat: str, name: str, fn: Callable[[], tuple[bool, str, dict]]) -> None:
    t = time.monotonic()
    try:
        ok, detail, extra = fn()
    except CheckError as e:
        ok, detail, extra = False, str(e), {}
    except Exception as e:  # noqa: BLE001 - a broken case is a failed case, reported
        ok, detail, extra = False, f"the check itself failed: {type(e).__name__}: {e}", {}
        traceback.print_exc()
    rep.add(Outcome(cat, name, ok, detail, time.monotonic() - t, extra))


def build(w: Workspace) -> Ctx:
    """The saved states: 'trained' (digits-cnn v1, QUOTED v1), 'forgotten' (+ v2 forgetting F)."""
    w.restore(None)
    r = w.cli(*TRAIN, timeout=600)
    if r.rc != 0:
        raise SystemExit(f"erasure_check: train failed: {r.out[-2000:]}")
    r = w.cli("train", "--arch", "cnn", "--epochs", "1", "--no-audit", "--model-name", QUOTED, timeout=600)
    if r.rc != 0:
        raise SystemExit(f"erasure_check: train of {QUOTED} failed: {r.out[-2000:]}")
    picks = w.call("pick", model=MODEL)
    w.save("trained")
    files = _input_files(w, picks)
    r = w.cli("forget", "--model", MODEL, "--records", files["F.txt"], "--yes", "--no-audit")
    if r.rc != 0:
        raise SystemExit(f"erasure_check: the base forget failed: {r.out[-2000:]}")
    w.save("forgotten")
    w.scan("after train and a forget (the base workspace)", picks["F"])
    base = w.cli("records", "--model", MODEL, "--limit", "1")  # a plain command's peak memory
    return Ctx(picks=picks, files=files, baseline_rss=base.maxrss_mib)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a subset of every category (a few minutes)")
    ap.add_argument("--output", help="write the figures as JSON to this file")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR (created) and keep it, instead of a temp dir")
    ap.add_argument("--processes", action="store_true",
                    help="run every command as a fresh `python tests/reliability_child.py ...` (slower)")
    ap.add_argument("--only", default="", help="comma-separated categories: bad,kills,concurrency,reid")
    a = ap.parse_args(argv)
    only = set(filter(None, a.only.split(","))) or {"bad", "kills", "concurrency", "reid"}
    root = Path(a.keep).resolve() if a.keep else Path(tempfile.mkdtemp(prefix="erasure-check-"))
    if a.keep:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
    rep = Report()
    w = Workspace(root, fork=not a.processes)
    try:
        print(f"erasure check: workspace {root} ({'quick' if a.quick else 'full'}, "
              f"{'fresh processes' if a.processes else 'forked commands'})", flush=True)
        ctx = build(w)
        print(f"built the workspace in {time.monotonic() - rep.started:.0f} s", flush=True)
        cats = []
        if "bad" in only:
            cats.append("bad inputs")
            print("bad inputs", flush=True)
            for b in bad_inputs(ctx, w):
                if a.quick and not b.quick:
                    continue
                _case(rep, "bad inputs", b.name, lambda b=b: run_bad(w, ctx, b))
        if "kills" in only:
            cats.append("kills")
            print("kills", flush=True)
            for k in kills():
                if a.quick and not k.quick:
                    continue
                _case(rep, "kills", k.name, lambda k=k: run_kill(w, ctx, k))
        if "concurrency" in only:
            cats.append("concurrency")
            print("concurrency", flush=True)
            _case(rep, "concurrency", "two forgets at once, one machine (they queue)", lambda: run_concurrent(w, ctx, 1))
            if not a.quick:
                _case(rep, "concurrency", "two forgets register at once from two machines", lambda: run_concurrent(w, ctx, 2))
        cats.append("clear text")
        print("clear text", flush=True)
        states = [s for s in w.scans if not s.get("bad_input")]
        for s in states:
            rep.add(Outcome("clear text", s["label"], not s["hits"],
                            f"{len(s['hits'])} hits for {s['ids']} ids in {s['files']} files ({s['bytes'] / 1e6:.1f} MB)"
                            + (f": {s['hits'][:3]}" if s["hits"] else ""), 0.0))
        every = sorted({i for k in ("F", "A", "B", "G", "holdout") for i in ctx.picks[k]}
                       | {i for n in ("unknown.txt", "other-dataset.txt") for i in _ids_in(ctx.files[n])})
        s = w.scan("every saved state and the final workspace, every id any case used", every,
                   dirs=[w.saved, w.ws, w.tmp])
        rep.add(Outcome("clear text", s["label"], not s["hits"],
                        f"{len(s['hits'])} hits for {s['ids']} ids in {s['files']} files ({s['bytes'] / 1e6:.1f} MB)"
                        + (f": {s['hits'][:3]}" if s["hits"] else ""), 0.0))
        bscans = [s for s in w.scans if s.get("bad_input")]
        if bscans:
            hits = sum(len(s["hits"]) for s in bscans)
            rep.add(Outcome("clear text", f"after the {len(bscans)} bad inputs that named ids", hits == 0,
                            f"{hits} hits", 0.0))
        if "reid" in only:
            cats.append("re-identification")
            print("re-identification", flush=True)
            t = time.monotonic()
            for name, ok, detail, fig in run_reidentify(w, MODEL, 2):
                rep.add(Outcome("re-identification", name, ok, detail, time.monotonic() - t, fig))
        total = time.monotonic() - rep.started
        print()
        for c in cats:
            p, f = rep.counts(c)
            print(f"{c}: {p} passed, {f} failed")
        p, f = rep.counts()
        print(f"total: {p} passed, {f} failed in {total:.0f} s")
        if a.output:
            figures = {
                "quick": a.quick, "mode": "processes" if a.processes else "fork", "seconds": round(total, 1),
                "passed": p, "failed": f,
                "categories": {c: dict(zip(("passed", "failed"), rep.counts(c))) for c in cats},
                "clear_text_hits": sum(len(s["hits"]) for s in w.scans),
                "clear_text_scans": len(w.scans),
                "cases": [{"category": o.category, "name": o.name, "ok": o.ok, "detail": o.detail,
                           "seconds": round(o.seconds, 2), **({"extra": o.extra} if o.extra else {})} for o in rep.outcomes],
            }
            Path(a.output).write_text(json.dumps(figures, indent=2, default=str))
        return 1 if f else 0
    finally:
        w.runner.close()
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--zygote":
        _zygote()
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--call":
        req = json.loads(sys.argv[2])
        sys.exit(_child_main(req))
    sys.exit(main())
