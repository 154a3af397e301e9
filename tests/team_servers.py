"""A team's deployment on this machine, for tests/test_team_deployment.py (not a test module).

Three servers, every one on 127.0.0.1 only, each started and torn down by the test:

* :class:`Postgres`: a throwaway PostgreSQL cluster from Debian's packages (``initdb`` into a
  temp dir, a free port, its unix socket in that dir, password auth on TCP). ``initdb`` refuses
  to run as root, so as root the cluster runs as the ``postgres`` user (or ``nobody``);
* :class:`S3Server`: moto's S3 API in its own process (``python -m moto.server``);
* :class:`MlflowServer`: ``mlflow server`` with the PostgreSQL backend store and an S3
  artifact destination, in its own process, restartable (a server that goes away mid-forget).

:func:`why_no_postgres` says why the tests must skip (no PostgreSQL binaries, no driver).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

PG_USER, PG_PASSWORD, PG_DB = "amnesia", "team-secret", "mlflow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir() -> Optional[Path]:
    """The newest PostgreSQL server binaries here (Debian: /usr/lib/postgresql/<v>/bin), or None."""
    found = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        try:
            found.append((int(Path(initdb).parts[-3]), Path(initdb).parent))
        except ValueError:
            continue
    if found:
        return max(found)[1]
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path and shutil.which("pg_ctl") else None


def why_no_postgres() -> Optional[str]:
    """Why a PostgreSQL-backed tracking server cannot run here (None: it can)."""
    if pg_bindir() is None:
        return ("PostgreSQL is not installed (no initdb/pg_ctl): `apt-get install postgresql` (Debian's "
                "package; .ci/run installs it where it can)")
    try:
        import psycopg2  # noqa: F401 - MLflow's SQLAlchemy store needs a PostgreSQL driver
    except ImportError:
        return "the PostgreSQL driver psycopg2 is not installed: pip install -e '.[test]'"
    return None


def _wait(pred, what: str, timeout: float, log: Optional[Path] = None, proc: Optional[subprocess.Popen] = None) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {timeout:g} s: {_tail(log)}")
        time.sleep(0.2)


def _tail(log: Optional[Path], n: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-n:] if log else ""
    except OSError:
        return ""


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop(proc: Optional[subprocess.Popen], timeout: float = 5) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # its own process group: the server and its workers
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port>; :attr:`uri` for MLflow."""

    def __init__(self) -> None:
        self.bindir = pg_bindir()
        assert self.bindir is not None, why_no_postgres()
        self.port = free_port()
        # not under pytest's tmp dir: that is 0700 root's, and the cluster may run as another user
        self.dir = Path(tempfile.mkdtemp(prefix="amnesia-pg-"))
        self.data, self.log = self.dir / "data", self.dir / "postgres.log"
        self.user: Optional[str] = None
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as an unprivileged user
            for name in ("postgres", "nobody"):
                try:
                    pw = pwd.getpwnam(name)
                except KeyError:
                    continue
                self.user, self._uid, self._gid = name, pw.pw_uid, pw.pw_gid
                break
            assert self.user, "running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as"
            os.chown(self.dir, self._uid, self._gid)

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg2://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/{PG_DB}"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        kw = {"user": self._uid, "group": self._gid, "extra_groups": []} if self.user else {}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8",
               "HOME": str(self.dir), "PGPASSWORD": PG_PASSWORD}
        r = subprocess.run([str(self.bindir / args[0]), *args[1:]], cwd=self.dir, env=env, capture_output=True,
                           text=True, timeout=120, **kw)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]} "
                               f"{_tail(self.log)}")
        return r

    def start(self) -> "Postgres":
        pwfile = self.dir / "pwfile"
        pwfile.write_text(PG_PASSWORD + "\n")
        if self.user:
            os.chown(pwfile, self._uid, self._gid)
        self._run("initdb", "-D", str(self.data), "-U", PG_USER, f"--pwfile={pwfile}", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync", "--no-instructions")
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.dir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, PG_DB)
        return self

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class S3Server:
    """moto's S3 API in a child process on 127.0.0.1:<free port>."""

    def __init__(self, log: Path) -> None:
        self.port, self.log, self.proc = free_port(), log, None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "S3Server":
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait(lambda: _listening(self.port), "the moto S3 server", 60, self.log, self.proc)
        return self

    def stop(self) -> None:
        _stop(self.proc)


class MlflowServer:
    """``mlflow server`` on 127.0.0.1:<port>: ``backend`` store, artifacts proxied to ``artifacts``."""

    def __init__(self, backend: str, artifacts: str, env: dict[str, str], log: Path) -> None:
        self.backend, self.artifacts, self.env, self.log = backend, artifacts, env, log
        self.port, self.proc = free_port(), None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend,
                "--artifacts-destination", self.artifacts, "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", "2"]

    def start(self, timeout: float = 180) -> "MlflowServer":
        import requests

        def healthy() -> bool:
            try:
                return requests.get(f"{self.uri}/health", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(self.command(), env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        _wait(healthy, "mlflow server", timeout, self.log, self.proc)
        return self

    def kill(self) -> None:
        """The server goes away at once (SIGKILL to its process group: no graceful shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        _wait(lambda: not _listening(self.port), "the killed mlflow server's port to close", 30)

    def stop(self) -> None:
        _stop(self.proc)
