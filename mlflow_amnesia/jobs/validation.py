"""Checking the options of ``train`` and ``forget`` before anything starts.

One set of checks for both callers: the CLI runs them as option callbacks, so a bad value stops
the command before a database, a run, a lock or a file exists, and the Python functions
:func:`mlflow_amnesia.jobs.train.train` and :func:`mlflow_amnesia.jobs.forget.forget` run them first.
Each check raises :class:`InputError` naming the option as its caller spells it (``--lr`` on
the command line, ``lr`` in Python), the value given and what would be valid. Nothing here
leaves anything behind: a store location is checked by making and removing an empty directory
in it, since permission bits do not tell (root passes them on /proc and read-only mounts).
"""

from __future__ import annotations

import math
import numbers
import os
import re
from urllib.parse import urlparse

from ..errors import InputError
from ..recording.fs import PROXY_SCHEMES


def _given(name: str, value: object) -> str:
    """``--lr nan`` (a flag) or ``lr=nan`` (a Python argument)."""
    return f"{name} {value}" if name.startswith("-") else f"{name}={value!r}"


def _number(value: object, name: str, rule: str) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x):
        raise InputError(f"{_given(name, value)}: {rule}")
    return x


def positive_number(value: object, name: str, what: str = "learning rate") -> float:
    """``value`` as a finite float above 0 (a learning rate)."""
    rule = f"the {what} must be a finite number above 0, e.g. 0.02"
    x = _number(value, name, rule)
    if x <= 0:
        raise InputError(f"{_given(name, value)}: {rule}")
    return x


def non_negative_number(value: object, name: str, what: str) -> float:
    """``value`` as a finite float >= 0 (momentum, weight decay: 0 turns them off)."""
    rule = f"the {what} must be a finite number, 0 or more (0 turns it off)"
    x = _number(value, name, rule)
    if x < 0:
        raise InputError(f"{_given(name, value)}: {rule}")
    return x


def whole_number(value: object, name: str, what: str) -> int:
    """``value`` as an int >= 1 (epochs, batch size)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{_given(name, value)}: the {what} must be a whole number of 1 or more")
    return int(value)


def known_codec(value: str | None, name: str = "--codec") -> str | None:
    """A codec name this package knows (``None`` or empty: the default)."""
    if value is None or str(value).strip() == "":
        return None
    from ..recording.store.codecs import CODEC_NAMES, get_codec

    try:
        get_codec(value)
    except InputError:
        raise InputError(f"{_given(name, value)}: unknown codec; choose one of {', '.join(CODEC_NAMES)}") from None
    return value


def writable_store_uri(value: str | None, name: str = "--store-uri") -> str | None:
    """A location the delta store can be written at (``None`` or empty: inside the run's artifacts).

    Its scheme must be one fsspec knows and can load here, and not an MLflow proxy scheme; a
    local path must be a writable directory or creatable under one (nothing is created now).
    """
    if value is None or str(value).strip() == "":
        return None
    uri = str(value)
    scheme = urlparse(uri).scheme
    if len(scheme) > 1 and scheme != "file":  # one letter: a Windows drive, a local path
        if scheme in PROXY_SCHEMES:
            raise InputError(
                f"{_given(name, uri)}: {scheme}: is served through MLflow, where the delta store cannot be "
                "written directly; give a location fsspec writes: a local path, s3://bucket/prefix, gs://..."
            )
        import fsspec

        if scheme not in fsspec.available_protocols():
            raise InputError(
                f"{_given(name, uri)}: unknown scheme {scheme!r} (not a file system fsspec knows); give a "
                "local path or a URL such as s3://bucket/prefix"
            )
        try:
            fsspec.get_filesystem_class(scheme)
        except ImportError as e:
            raise InputError(f"{_given(name, uri)}: {e} (the {scheme}:// driver is not installed here)") from None
        return value
    path = urlparse(uri).path if scheme == "file" else uri
    problem = _unwritable(os.path.abspath(path))
    if problem:
        raise InputError(f"{_given(name, uri)}: {problem}; give a directory you can write to")
    return value


def _unwritable(path: str) -> str | None:
    """Why a store directory could not be made at ``path`` (None: it can), creating nothing."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            return f"{path} exists and is not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"the directory {path} is not writable"
        return _probe(path, f"the directory {path} is not writable")
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent, up = os.path.dirname(parent), parent
        if parent == up:
            break
    if not os.path.isdir(parent):
        return f"it cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"it cannot be created: the directory {parent} is not writable"
    return _probe(parent, f"it cannot be created under {parent}")


def _probe(directory: str, what: str) -> str | None:
    """Make and remove an empty directory in ``directory``: permission bits do not tell (root passes
    them everywhere; /proc, read-only mounts and full quotas refuse anyway). Leaves nothing behind."""
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".amnesia-probe-", dir=directory))
    except OSError as e:
        return f"{what} ({e.strerror or e})"
    return None


_ALIAS = re.compile(r"[\w\-]{1,255}")
_VERSION_ALIAS = re.compile(r"[vV]\d+")


def alias_name(value: str, name: str = "--set-alias") -> str:
    """An alias MLflow will take (letters, digits, ``_`` and ``-``, at most 255; not ``latest``,
    not ``v3``-like, which name versions), checked before a forget registers anything: MLflow
    refuses the others only when the alias is set, after the new version exists."""
    v = str(value)
    if not _ALIAS.fullmatch(v):
        why = "letters, digits, _ and - only, 1 to 255 of them"
    elif v.lower() == "latest" or _VERSION_ALIAS.fullmatch(v):
        why = "reserved by MLflow (latest and v<N> name versions)"
    else:
        return v
    raise InputError(f"{_given(name, value)}: not an alias MLflow accepts ({why}); choose another, e.g. production")


def registered_model_name(value: str, name: str = "--model-name") -> str:
    """A name MLflow can register (not blank, no ``/`` or ``:``, not ``.`` or ``..``-led; ``""`` is
    the default name), checked before training: MLflow refuses the others only at registration,
    after the whole run."""
    v = str(value)
    if not v:  # "" is "not given" (the MLproject's default): <dataset>-<arch>
        return v
    if not v.strip():
        why = "it is blank"
    elif "/" in v or ":" in v:
        why = "MLflow names cannot contain / or :"
    elif v == "." or v.startswith(".."):
        why = "MLflow refuses . and a name starting with .."
    else:
        return v
    raise InputError(f"{_given(name, value)}: not a model name MLflow accepts ({why}); choose another, e.g. digits-cnn")


def check_train_options(
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    codec: str | None,
    store_uri: str | None,
    model_name: str | None = None,
) -> None:
    """The arguments of :func:`mlflow_amnesia.jobs.train.train` that could fail later, checked first."""
    if model_name is not None:
        registered_model_name(model_name, "model_name")
    whole_number(epochs, "epochs", "number of epochs")
    whole_number(batch_size, "batch_size", "batch size")
    positive_number(lr, "lr")
    non_negative_number(momentum, "momentum", "momentum")
    non_negative_number(weight_decay, "weight_decay", "weight decay")
    known_codec(codec, "codec")
    writable_store_uri(store_uri, "store_uri")


def check_forget_options(*, repair_lr: float | None, store_uri: str | None, set_alias: str | None = None) -> None:
    """The arguments of :func:`mlflow_amnesia.jobs.forget.forget` checked before any lock, run or rollback."""
    if set_alias is not None:
        alias_name(set_alias, "set_alias")
    if repair_lr is not None:
        positive_number(repair_lr, "repair_lr", "repair learning rate")
    writable_store_uri(store_uri, "store_uri")


class ModelRef:
    """What ``--model`` named: a registered model and, from a URI, a version or an alias."""

    __slots__ = ("name", "version", "alias")

    def __init__(self, name: str, version: int | None = None, alias: str | None = None) -> None:
        self.name, self.version, self.alias = name, version, alias

    def __repr__(self) -> str:
        return f"ModelRef({self.name!r}, version={self.version!r}, alias={self.alias!r})"


_URI_FORMS = "give a registered model name, models:/NAME/N or models:/NAME@ALIAS"


def model_reference(value: str, name: str = "--model") -> ModelRef:
    """``NAME``, ``models:/NAME``, ``models:/NAME/N``, ``models:/NAME/latest`` or
    ``models:/NAME@ALIAS`` as a :class:`ModelRef`; anything else (another URI scheme, a logged
    model id, a version that is not a number) is an :class:`InputError` naming the value."""
    v = str(value).strip()
    if not v:
        raise InputError(f"{name} is empty: {_URI_FORMS}")
    if "://" in v or (":" in v.split("/", 1)[0] and not v.startswith("models:/")):
        raise InputError(f"{name} {value}: not a registered model; {_URI_FORMS}")
    if not v.startswith("models:/"):
        return ModelRef(v)
    rest = v[len("models:/") :]
    if "@" in rest:
        model, alias = rest.rsplit("@", 1)
        if model and alias and "/" not in alias and "/" not in model:
            return ModelRef(model, alias=alias)
        raise InputError(f"{name} {value}: expected models:/NAME@ALIAS; {_URI_FORMS}")
    parts = rest.split("/")
    if len(parts) == 1 and parts[0]:
        if parts[0].startswith("m-"):
            raise InputError(f"{name} {value}: a logged model id, not a registered model; {_URI_FORMS}")
        return ModelRef(parts[0])
    if len(parts) == 2 and parts[0] and parts[1] == "latest":
        return ModelRef(parts[0])
    if len(parts) == 2 and parts[0] and parts[1].isdigit() and int(parts[1]) >= 1:
        return ModelRef(parts[0], version=int(parts[1]))
    raise InputError(f"{name} {value}: the version must be a number >= 1 (models:/NAME/N); {_URI_FORMS}")


def merge_reference(ref: ModelRef, version: int | None, alias: str | None, name: str = "--model") -> ModelRef:
    """``ref`` with ``--version``/``--alias``: the same choice twice is fine, two different ones are refused."""
    if ref.version is not None and version is not None and version != ref.version:
        raise InputError(f"{name} models:/{ref.name}/{ref.version} and --version {version} disagree: give one of them")
    if ref.alias is not None and alias is not None and alias != ref.alias:
        raise InputError(f"{name} models:/{ref.name}@{ref.alias} and --alias {alias} disagree: give one of them")
    out = ModelRef(ref.name, ref.version if ref.version is not None else version, ref.alias or alias)
    if out.version is not None and out.alias is not None:
        v = f"{name} models:/{ref.name}/{ref.version}" if ref.version is not None else f"--version {version}"
        a = f"{name} models:/{ref.name}@{ref.alias}" if ref.alias is not None else f"--alias {alias}"
        raise InputError(f"{v} and {a}: a version and an alias both given; give one of them")
    return out


def received_date(value: object, name: str = "--received", *, today: object = None) -> str:
    """``value`` as the ISO date ``YYYY-MM-DD`` a deletion request was received: a real calendar
    date, not after today (the one-month deadline counts from it). ``None`` -> today."""
    import datetime as dt

    now = today if isinstance(today, dt.date) else dt.date.today()
    if value is None or (isinstance(value, str) and not value.strip()):
        return now.isoformat()
    if isinstance(value, dt.date):
        d = value
    else:
        s = str(value).strip()
        try:
            if len(s) != 10:
                raise ValueError
            d = dt.date.fromisoformat(s)
        except ValueError:
            raise InputError(
                f"{_given(name, value)}: not a date; give the day the deletion request was received as YYYY-MM-DD, "
                f"e.g. {now.isoformat()} (the default is today)"
            ) from None
    if d > now:
        raise InputError(
            f"{_given(name, value)}: that day is after today ({now.isoformat()}); give the day the deletion request "
            "was received (the one-month deadline counts from it)"
        )
    return d.isoformat()
