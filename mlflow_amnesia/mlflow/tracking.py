"""Reaching the tracking store: fail in seconds with one line, never a traceback or debris.

:func:`check_reachable` probes a tracking server; :func:`check_tracking_store` checks the
URIs and a local sqlite database before MLflow touches them, and creates a new one whole.

A server that is down: MLflow's HTTP client retries a refused connection with exponential backoff (7 retries, about
four minutes) before it reports anything. That suits a blip in the middle of a long run, not a
server that was never started: every command first asks an ``http(s)`` tracking or registry
server for ``/health`` once, with a short timeout, and stops with a message naming the URI.
Any HTTP answer (even an error status, e.g. behind a proxy that has no ``/health``) counts as
reachable; TLS problems are left to MLflow, whose settings (custom CA, insecure TLS) this probe
does not replicate.

A server that goes away *during* a command: :func:`bound_retries` gives MLflow's client a budget
that rides out a restart (4 retries, backoff 2: about 30 s) instead of four minutes per request,
unless the user set ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``..._BACKOFF_FACTOR`` themselves;
:func:`is_unreachable` tells such a failure from any other MLflow error, :func:`stop_retrying`
makes the clean-up calls that follow it (ending the run) fail at once instead of retrying again.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shlex
import socket
import sqlite3
import urllib.request
from collections.abc import Iterator
from urllib.parse import urlparse

from ..errors import InputError, TrackingServerError
from ..recording.fs import fsync_dir

PROBE_TIMEOUT_ENV = "MLFLOW_AMNESIA_PROBE_TIMEOUT"
DEFAULT_PROBE_TIMEOUT = 10.0

# MLflow's own environment variables for its HTTP client (mlflow.environment_variables).
RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
BACKOFF_ENV = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
#: Sleeps 0, 4, 8, 16 s (+ up to 1 s jitter each) between the attempts: ~30 s, a server restart.
DEFAULT_RETRIES, DEFAULT_BACKOFF = 4, 2

# What MLflow's and urllib3's messages say when a request never got an answer.
_UNREACHABLE = (
    "Max retries exceeded",
    "Connection refused",
    "Connection aborted",
    "ConnectionError",
    "NewConnectionError",
    "Read timed out",
    "RemoteDisconnected",
    "Connection reset",
)
# ... and those of them where the request certainly never reached the server.
_NOT_DELIVERED = ("NewConnectionError", "Connection refused")


@contextlib.contextmanager
def bound_retries() -> Iterator[None]:
    """For the duration of a command, the retry budget above where the user did not choose one;
    and :func:`stop_retrying` undone at the end (the environment is as it was)."""
    saved = {k: os.environ.get(k) for k in (RETRIES_ENV, BACKOFF_ENV)}
    os.environ.setdefault(RETRIES_ENV, str(DEFAULT_RETRIES))
    os.environ.setdefault(BACKOFF_ENV, str(DEFAULT_BACKOFF))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def retries_restored() -> Iterator[None]:
    """Undo a :func:`stop_retrying` inside the block when it ends (a long-lived process, e.g. a
    notebook calling ``forget``, keeps MLflow's retries for its next calls)."""
    saved = os.environ.get(RETRIES_ENV)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(RETRIES_ENV, None)
        else:
            os.environ[RETRIES_ENV] = saved


def stop_retrying() -> None:
    """MLflow's requests fail at their first refusal (the server is gone), until the enclosing
    :func:`retries_restored` or :func:`bound_retries` block ends."""
    os.environ[RETRIES_ENV] = "0"


def is_unreachable(e: BaseException) -> bool:
    """Whether ``e`` (an MLflow or requests error) means the server did not answer."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import ConnectionError, Timeout

    if isinstance(e, (ConnectionError, Timeout)):
        return True
    return isinstance(e, MlflowException) and any(m in str(e) for m in _UNREACHABLE)


def was_not_delivered(e: BaseException) -> bool:
    """Whether the failed request certainly never reached the server (refused, not cut off)."""
    return any(m in str(e) for m in _NOT_DELIVERED)


def server_answers(timeout: float = 5.0) -> bool:
    """Whether the tracking (and registry) server answers ``/health`` now (True for non-HTTP stores)."""
    try:
        check_reachable(timeout)
    except TrackingServerError:
        return False
    return True


def check_reachable(timeout: float | None = None) -> None:
    """Raise :class:`TrackingServerError` if the tracking or registry server does not answer."""
    import mlflow
    import requests

    if timeout is None:
        timeout = float(os.environ.get(PROBE_TIMEOUT_ENV, DEFAULT_PROBE_TIMEOUT))
    seen = set()
    for what, uri in (("tracking", mlflow.get_tracking_uri()), ("registry", mlflow.get_registry_uri())):
        if urlparse(uri).scheme not in ("http", "https") or uri in seen:
            continue
        seen.add(uri)
        try:
            requests.get(uri.rstrip("/") + "/health", timeout=timeout)
        except requests.exceptions.SSLError:
            continue  # MLflow's own TLS settings may make it work: let MLflow decide
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            reason = (
                f"no answer within {timeout:g} s" if isinstance(e, requests.exceptions.Timeout) else "connection failed"
            )
            raise TrackingServerError(
                f"cannot reach the {what} server at {uri} ({reason}): start it, or set "
                f"MLFLOW_TRACKING_URI{' / MLFLOW_REGISTRY_URI' if what == 'registry' else ''} to a server that runs. "
                "Nothing was changed."
            ) from None


# --------------------------------------------------------------------------------------------
# The tracking store at start-up: a URI MLflow cannot use, a database that is missing, wedged or
# not a database at all are one-line errors before MLflow touches anything; `train` creates a
# new local sqlite database whole.
#
# MLflow creates a new sqlite database in place: about 1,700 statements (~1 s) of table creation
# and migrations, not one transaction. A process killed in there used to leave a file MLflow
# could never open again (`table _alembic_tmp_jobs already exists`, an out-of-date schema). So
# the schema is built in a temp file beside the target, which is then hard-linked into place:
# a kill leaves no database or a complete one (and a temp file the next `train` removes), and a
# database another process created meanwhile is never overwritten.

SQLITE_HEADER = b"SQLite format 3\x00"
_TEMP_TAG = "amnesia-init"


def check_tracking_store(*, create: bool = False) -> None:
    """Refuse a tracking or registry URI that cannot work, before MLflow touches it.

    An unknown scheme, or a local sqlite database that is missing (commands other than
    ``train`` never create one), in a directory that does not exist, not a database, or left
    half-made or half-migrated: :class:`InputError` naming the URI and the fix. With
    ``create=True`` (``train``) a missing sqlite database is created whole, atomically.
    """
    import mlflow

    roles = (
        ("tracking", "MLFLOW_TRACKING_URI", mlflow.get_tracking_uri()),
        ("registry", "MLFLOW_REGISTRY_URI", mlflow.get_registry_uri()),
    )
    uris: dict[str, tuple[str, str]] = {}
    for what, env, uri in roles:
        _check_scheme(what, env, uri)  # one URI for both: the registry may still not take it
        uris.setdefault(uri, (what, env))
    databases = [(os.path.abspath(p), uri, env) for uri, (_, env) in uris.items() if (p := sqlite_path(uri))]
    missing = [(path, env) for path, uri, env in databases if not _check_sqlite(path, uri, env, create)]
    for path, env in missing:  # every URI checked first: a bad second one creates nothing
        create_sqlite_database(path)
        problem = sqlite_problem(path, env)
        if problem:
            raise InputError(problem)
    if create:  # a creator killed between linking its database and removing its temp file
        for path, _, _ in databases:
            _remove_stale_temps(*os.path.split(path))


def sqlite_path(uri: str) -> str | None:
    """The file of a ``sqlite:`` URI (relative to the current directory, as sqlite reads it);
    None for another scheme, an in-memory database or a ``file:`` URI with options."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    try:
        url = make_url(uri)
    except Exception:  # noqa: BLE001 - a malformed URI: MLflow will say so
        return None
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:") or "uri" in url.query:
        return None
    return db


def _check_scheme(what: str, env: str, uri: str) -> None:
    try:
        from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

        if what == "tracking":
            from mlflow.tracking._tracking_service.utils import _tracking_store_registry as stores
        else:
            from mlflow.tracking._model_registry.utils import _get_store_registry

            stores = _get_store_registry()
    except (ImportError, AttributeError):  # MLflow moved its internals: MLflow itself will refuse
        return
    try:
        stores.get_store_builder(uri)
    except UnsupportedModelRegistryStoreURIException as e:
        known = ", ".join(s for s in e.supported_uri_schemes if s) or "?"
        raise InputError(
            f"the {what} URI {uri} ({env}) has a scheme MLflow does not know ({urlparse(uri).scheme!r}; it knows "
            f"{known}): set {env} to e.g. sqlite:///mlflow.db or http://HOST:5000. Nothing was changed."
        ) from None
    if urlparse(uri).scheme in ("", "file") and not _file_store_allowed():
        raise InputError(
            f"the {what} URI {uri} ({env}) is a file store, which MLflow 3 refuses: set {env} to e.g. "
            f"sqlite:///mlflow.db (`mlflow migrate-filestore` moves an existing one), or MLFLOW_ALLOW_FILE_STORE=true "
            f"to use it anyway. Nothing was changed."
        )


def _file_store_allowed() -> bool:
    try:
        from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
    except ImportError:  # an MLflow without the switch: it takes file stores
        return True
    return bool(MLFLOW_ALLOW_FILE_STORE.get())


def _check_sqlite(path: str, uri: str, env: str, create: bool) -> bool:
    """True if the database at ``path`` is usable; False if it is missing and may be created."""
    if not os.path.exists(path):
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            fix = (
                f"create it first (mkdir -p {shlex.quote(parent)}) or fix the path"
                if create
                else "fix the path, or run `mlflow-amnesia train` to create a database where the directory exists"
            )
            raise InputError(
                f"{env} is {uri}, but the directory {parent} does not exist (a typo?): {fix}. Nothing was created."
            )
        if not create:
            raise InputError(
                f"there is no MLflow database at {path} ({env} is {uri}): run `mlflow-amnesia train` to create one, "
                f"or set {env} to the database that holds your models. Nothing was created."
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(
                f"cannot create the MLflow database {path}: the directory {parent} is not writable; "
                f"set {env} to a database in a directory you can write to"
            )
        return False
    problem = sqlite_problem(path, env)
    if problem:
        raise InputError(problem)
    return True


def sqlite_problem(path: str, env: str = "MLFLOW_TRACKING_URI") -> str | None:
    """Why the sqlite file ``path`` is not a usable MLflow database, with the fix (None: it is).

    Reads only: a file that is not a database, an empty one, a newer MLflow's, or one whose
    schema is out of date or was left half-made (tables missing, leftover ``_alembic_tmp_*``
    tables of an interrupted migration). Whether it holds runs decides the fix: removing a
    database that holds nothing loses nothing; one with runs needs ``mlflow db upgrade``.
    """
    q = shlex.quote(path)
    if os.path.isdir(path):
        return f"{path} ({env}) is a directory, not an SQLite database: set {env} to a database file, e.g. sqlite:///{path}/mlflow.db"
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as e:
        return f"cannot read the MLflow database {path} ({env}): {e.strerror}"
    if not head:
        return (
            f"{path} ({env}) is an empty file, not an MLflow database: it holds nothing, so remove it (rm {q}) "
            "and re-run; `mlflow-amnesia train` creates the database"
        )
    if head != SQLITE_HEADER:
        return (
            f"{path} ({env}) is not an SQLite database: set {env} to your MLflow database, or move {path} out of "
            "the way and let `mlflow-amnesia train` create one"
        )
    try:
        tables, revision, runs, models = _read_schema(path)
    except sqlite3.DatabaseError as e:
        return f"{path} ({env}) is a damaged SQLite database ({e}): restore it from a backup, or set {env} to another database"
    import mlflow
    import mlflow.store.db.utils  # noqa: F401 - imports every ORM model: Base then lists all tables
    from mlflow.store.db.base_sql_model import Base

    expected = set(Base.metadata.tables)
    missing = sorted(expected - tables)
    leftover = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    head_revision = _head_revision()
    if revision == head_revision and not missing and not leftover:
        return None
    what = f"the MLflow database {path} ({env}) cannot be used"
    if not tables:
        return f"{what}: it is empty (no tables), so it holds nothing; remove it (rm {q}) and re-run"
    if revision is None and not tables & expected:
        return (
            f"{path} ({env}) is an SQLite database but not an MLflow one (none of MLflow's tables): set {env} "
            f"to your MLflow database, or move {path} out of the way"
        )
    if revision is not None and revision != head_revision and not _known_revision(revision):
        return (
            f"{what} by MLflow {mlflow.__version__}: its schema (revision {revision}) is newer, made by a newer "
            "MLflow: upgrade MLflow here (pip install -U mlflow)"
        )
    if leftover:
        why = f"a schema migration of it was interrupted (leftover table {', '.join(leftover)})"
    elif revision is None:
        why = "its creation was interrupted (MLflow's tables are there in part, with no schema version)"
    elif revision != head_revision:
        why = f"its schema is out of date or half-migrated (revision {revision}; MLflow {mlflow.__version__} needs {head_revision})"
    else:
        why = f"tables are missing ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}): its creation was interrupted"
    if runs == 0 and models == 0:
        return f"{what}: {why}. It holds no runs and no registered models, so nothing is lost by removing it: rm {q}, then re-run"
    held = f"It holds {runs} run(s) and {models} registered model(s): back it up (cp {q} {q}.bak), then"
    if leftover:
        return (
            f"{what}: {why}. {held} finish the migration by hand (for each leftover _alembic_tmp_T: drop it if "
            f"table T exists, else rename it to T) and run `mlflow db upgrade sqlite:///{path}`"
        )
    return f"{what}: {why}. {held} run `mlflow db upgrade sqlite:///{path}`"


def _read_schema(path: str) -> tuple[set[str], str | None, int, int]:
    """(table names, alembic revision or None, number of runs, number of registered models)."""
    con = sqlite3.connect(f"file:{urllib.request.pathname2url(path)}?mode=rw", uri=True, timeout=30)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revision = None
        if "alembic_version" in tables:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
            revision = row[0] if row else None

        def count(table: str) -> int:
            return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] if table in tables else 0

        return tables, revision, count("runs"), count("registered_models")
    finally:
        con.close()


@functools.lru_cache(maxsize=1)
def _head_revision() -> str:
    """The schema revision this MLflow creates and expects (read once: its migration scripts)."""
    import mlflow.store.db.utils as db_utils

    return db_utils._get_latest_schema_revision()


def _known_revision(revision: str) -> bool:
    import mlflow.store.db.utils as db_utils
    from alembic.script import ScriptDirectory

    try:
        return ScriptDirectory.from_config(db_utils._get_alembic_config("")).get_revision(revision) is not None
    except Exception:  # noqa: BLE001 - alembic raises several kinds for an unknown revision
        return False


def create_sqlite_database(path: str) -> bool:
    """Create an MLflow sqlite database at ``path`` whole; False if another process made one first.

    The schema is created in a temp file in the same directory, fsync'ed and hard-linked to
    ``path`` (``os.link`` never replaces a file): a process killed at any moment leaves no
    database or a complete one. Creators in one directory queue on a lock of the directory;
    the temp files of dead creators are removed first.
    """
    import mlflow.store.db.utils as db_utils

    from ..progress import info as say

    parent, name = os.path.split(path)
    with _locked(parent):
        _remove_stale_temps(parent, name)
        if os.path.exists(path):
            return False
        tmp = os.path.join(parent, f".{name}.{_TEMP_TAG}.{_host()}.{os.getpid()}.{os.urandom(4).hex()}")
        try:
            say(f"creating the MLflow database {path}")
            engine = db_utils.create_sqlalchemy_engine(f"sqlite:///{tmp}")
            try:
                db_utils._initialize_tables(engine)
                db_utils._verify_schema(engine)
            finally:
                engine.dispose()
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError:  # no hard links on this file system: rename, after a check under the lock
                if os.path.exists(path):
                    return False
                os.rename(tmp, path)
            fsync_dir(parent, best_effort=True)
            return True
        finally:
            for f in (tmp, f"{tmp}-journal", f"{tmp}-wal", f"{tmp}-shm"):
                try:
                    os.unlink(f)
                except FileNotFoundError:
                    pass


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``directory`` (no lock file); without one where it cannot."""
    try:
        import fcntl

        fd = os.open(directory, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # no locks on this file system: os.link still never overwrites a database
        yield
    finally:
        os.close(fd)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"


def _remove_stale_temps(parent: str, name: str) -> None:
    """Remove the temp files of creators on this host that died (killed mid-creation)."""
    prefix = f".{name}.{_TEMP_TAG}.{_host()}."
    for entry in os.listdir(parent):
        if not entry.startswith(prefix):
            continue
        pid = entry[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            try:
                os.unlink(os.path.join(parent, entry))
            except FileNotFoundError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True
