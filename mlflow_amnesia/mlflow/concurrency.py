"""Two forgets of one model at once: queue them on one machine, refuse the loser across machines.

A forget plans from a parent version and registers one child. Two forgets that both plan from
v1 and both register would leave two children of v1, each missing the other's records: a user
who then takes "the latest" silently gets back records someone asked to forget. Two guards stop
that:

* **A local lock** (:func:`one_forget_per_model`): forgets of the same model against the same
  tracking and registry URIs on one machine take an ``fcntl`` lock on a file under
  :func:`lock_dir` for the whole forget, so the second one waits, then plans from the first one's version: two chained
  versions, the second keeping the first's records forgotten. The kernel releases the lock
  when its holder dies, even by SIGKILL.
* **Optimistic concurrency at registration** (:func:`register_child`), for forgets on different
  machines (the tracking server may be remote, where no file lock reaches): just before
  registering, a forget checks that its parent still has no child; right after, it lists the
  parent's children again and the *lowest version number wins*. Version numbers are assigned
  by the registry in creation order, so every loser sees the winner (created before it) and the
  winner never sees a lower sibling: exactly one child survives. The loser deletes its own
  version and raises :class:`~mlflow_amnesia.errors.ForgetConflictError`; re-running it plans
  from the winner.

A loser killed between registering and deleting itself leaves a losing sibling behind;
:func:`check_forkable` recognises it (a lower-numbered sibling exists) and refuses to build on
it, naming the version to delete.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shlex
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from ..errors import ForgetConflictError, InputError
from ..progress import info as say
from ..tags import TAG_CONFLICT
from . import registry

LOCK_DIR_ENV = "MLFLOW_AMNESIA_LOCK_DIR"

F = TypeVar("F", bound=Callable[..., Any])


# --------------------------------------------------------------------------------------------
# the local lock


def lock_dir() -> Path:
    """Where forget locks live: ``$MLFLOW_AMNESIA_LOCK_DIR``, else ``$XDG_RUNTIME_DIR/mlflow-amnesia``,
    else ``<tmp>/mlflow-amnesia-<uid>`` (per user; locks need not outlive a reboot)."""
    env = os.environ.get(LOCK_DIR_ENV)
    if env:
        return Path(env)
    run = os.environ.get("XDG_RUNTIME_DIR")
    if run and os.path.isdir(run):
        return Path(run, "mlflow-amnesia")
    return Path(tempfile.gettempdir(), f"mlflow-amnesia-{_uid()}")


def _uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else 0


def _private_dir(d: Path) -> None:
    """Create ``d`` (0700); refuse one that is a symlink or someone else's (a shared /tmp)."""
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(d)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != _uid():
        raise PermissionError(f"{d} is not a directory owned by this user")


def _canonical_uri(uri: str) -> str:
    """One spelling per store: relative sqlite / file paths made absolute (the cwd differs)."""
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + os.path.realpath(uri[len("sqlite:///") :].split("?", 1)[0])
    if uri.startswith("file:"):
        return "file://" + os.path.realpath(urlparse(uri).path)
    if "://" not in uri:
        return "file://" + os.path.realpath(uri)
    return uri.rstrip("/")


def lock_path(model_name: str) -> Path:
    """The lock file of ``model_name`` under the current tracking and registry URIs."""
    import mlflow

    ident = "\n".join(
        [_canonical_uri(mlflow.get_tracking_uri()), _canonical_uri(mlflow.get_registry_uri()), model_name]
    )
    return lock_dir() / f"forget-{hashlib.sha256(ident.encode()).hexdigest()[:32]}.lock"


@contextlib.contextmanager
def model_lock(model_name: str) -> Iterator[Path | None]:
    """Hold the local forget lock of ``model_name``; wait (saying so) while another holds it.

    Yields the lock file, or None where no lock can be taken (no ``fcntl``, an unwritable lock
    directory): the registry check of :func:`register_child` still guards that case.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: the registry check alone
        yield None
        return
    path = lock_path(model_name)
    try:
        if os.environ.get(LOCK_DIR_ENV):  # the user's choice, perhaps shared by a group: as it is
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            _private_dir(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except OSError as e:
        say(
            f"note: cannot take the forget lock {path} ({e.strerror or e}); concurrent forgets of "
            f"{model_name} are still refused at registration, but not queued"
        )
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(
                f"waiting for another forget of {model_name} on this machine ({_holder(fd)}) to finish; "
                f"this one then builds on its version (lock {path})"
            )
            fcntl.flock(fd, fcntl.LOCK_EX)
        me = json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "model": model_name,
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        ).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, me, 0)
        yield path
    finally:
        os.close(fd)  # releases the lock (the kernel does the same for a killed process)


def _holder(fd: int) -> str:
    try:
        h = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {h['pid']} since {h['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


def one_forget_per_model(fn: F) -> F:
    """Decorator for ``forget(model_name, *, dry_run=False, ...)``: hold :func:`model_lock`
    for the whole call, except for a dry run (which changes nothing)."""

    @functools.wraps(fn)
    def wrapper(model_name: str, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("dry_run"):
            return fn(model_name, *args, **kwargs)
        with model_lock(model_name):
            return fn(model_name, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# the registry check


def children_of(name: str, version: int | str) -> list[int]:
    """Versions of ``name`` whose ``amnesia.parent_version`` tag is ``version``, ascending."""
    from mlflow.exceptions import MlflowException

    want = str(int(version))
    try:
        found = registry.search_versions(name, tags={registry.TAG_PARENT: want})
    except MlflowException:  # a registry without tag filters: filter here
        found = [v for v in registry.search_versions(name) if (v.tags or {}).get(registry.TAG_PARENT) == want]
    return sorted(int(v.version) for v in found)


def check_forkable(mv) -> None:
    """Refuse to forget from ``mv`` when that would drop records a later forget removed.

    ``mv`` is unfit as a parent when it was superseded (tag), already has a child (the tag is
    set last, so a forget killed just before it leaves only the child), or is the losing
    sibling of a concurrent forget that was killed before deleting itself.
    """
    name, v = mv.name, int(mv.version)
    kids = children_of(name, v)
    sup = (mv.tags or {}).get(registry.TAG_SUPERSEDED) or (str(kids[0]) if kids else None)
    if sup:
        raise InputError(
            f"{name} v{v} was superseded by v{sup}, which forgot records this version still holds; "
            f"forget from v{sup} (or the latest version) so those earlier forgets are kept."
        )
    parent = (mv.tags or {}).get(registry.TAG_PARENT)
    if parent:
        first = children_of(name, parent)
        if first and first[0] < v:
            raise ForgetConflictError(
                f"{name} v{v} and v{first[0]} were both forgotten from v{parent} at the same time and v{v} lost: "
                f"it misses the records v{first[0]} forgot (the forget that made it was stopped before it could "
                f"remove itself). Forget from v{first[0]} (`mlflow-amnesia forget --model {shlex.quote(name)} --version "
                f"{first[0]} ...`), and delete v{v} in the MLflow UI (Models > {name} > Version {v} > Delete)."
            )


def _conflict(name: str, parent: int, winner: int, run_id: str | None, what: str) -> ForgetConflictError:
    run = f" (its work is in run {run_id}, marked FAILED)" if run_id else ""
    return ForgetConflictError(
        f"another forget of {name} registered v{winner} from v{parent} while this one ran; {what}{run}. "
        f"Nothing else changed: re-run the same command, it builds on v{winner} so both requests' "
        "records stay forgotten."
    )


def _during_registration(e: Exception, version: int | None) -> None:
    """Mark ``e`` as raised while registering (``registering``) and with the version number the
    registry gave, if it gave one (``registered_version``): what is left then differs (jobs.forget)."""
    e.registering = True  # type: ignore[attr-defined]
    e.registered_version = version  # type: ignore[attr-defined]


def register_child(name: str, model_uri: str, *, parent: int, tags: Mapping[str, object], run_id: str | None = None):
    """Register ``model_uri`` (a logged model whose artifacts are all uploaded) as the one child
    of ``parent``, with ``tags`` set in the same call; return its ModelVersion.

    Raises :class:`ForgetConflictError`, leaving no version registered, when ``parent``
    already has a child or another forget's child wins the race (lower version number).
    """
    import mlflow

    c = registry.client()
    pmv = c.get_model_version(name, str(parent))
    kids = children_of(name, parent)
    sup = (pmv.tags or {}).get(registry.TAG_SUPERSEDED)
    if kids or sup:
        raise _conflict(name, parent, kids[0] if kids else int(str(sup)), run_id, "this one registered nothing")
    try:
        mv = mlflow.register_model(
            model_uri, name, tags={k: str(v) for k, v in {**tags, registry.TAG_PARENT: parent}.items()}
        )
    except Exception as e:
        _during_registration(e, None)
        raise
    mine = int(mv.version)
    try:
        kids = children_of(name, parent)
    except Exception as e:
        _during_registration(e, mine)
        raise
    winner = min(kids + [mine])  # + mine: a listing that lags behind its own write still counts it
    if winner != mine:
        c.delete_model_version(name, str(mine))
        if run_id:
            c.set_tag(run_id, TAG_CONFLICT, f"lost to v{winner}; v{mine} deleted")
        raise _conflict(
            name,
            parent,
            winner,
            run_id,
            f"v{mine}, registered at the same moment, lost (lower version wins) and was deleted",
        )
    return mv
