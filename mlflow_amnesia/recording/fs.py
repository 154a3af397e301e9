"""Files on any fsspec URL: resolving a URL, and the one way this package writes a whole file.

Every file mlflow-amnesia writes and later trusts (a store's manifest, markers and chunks, a
record index, a phase's training files, a shadow-model set) goes through :func:`write_file`:

* **local disk**: the bytes go to a temporary file beside the target (``<name>.tmp-<hex>``),
  which is fsync'ed, renamed over the target, and the directory fsync'ed, so after a crash a
  reader finds the old file or the new one, never a part, and a returned write survives a
  power cut. ``atomic=False`` (a chunk, whose name only counts once a later marker commits
  it) writes the file in place and fsyncs it; the marker's directory fsync covers its entry.
* **object stores** (``s3://``...): one PUT (``pipe_file``), which they apply atomically; a
  temporary object and a "move" would be a copy and a delete there, and creating the
  "directory" would make s3fs create a bucket.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..errors import InputError

__all__ = ["PROXY_SCHEMES", "TMP_MARK", "is_local", "url_to_fs", "write_file", "write_local", "write_url"]

_S3_SCHEMES = ("s3://", "s3a://")
#: Schemes MLflow serves through its own server or registry: fsspec cannot write a store there
#: (``http(s)`` it reads only).
PROXY_SCHEMES = frozenset({"mlflow-artifacts", "runs", "models", "dbfs", "http", "https"})
#: Part of every temporary file's name: what a reader ignores and a writer's clean-up removes.
TMP_MARK = ".tmp-"


def url_to_fs(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """``fsspec.core.url_to_fs`` with MLflow's S3 endpoint as the default for ``s3://`` URLs.

    MLflow reaches S3-compatible storage (MinIO, Ceph, ...) through ``MLFLOW_S3_ENDPOINT_URL``;
    s3fs reads only its own settings. Without this, a store next to a run's artifacts would
    go to AWS instead of the endpoint the artifacts went to. Precedence: ``storage_options``,
    then fsspec's configuration (``FSSPEC_S3_ENDPOINT_URL``...), then ``MLFLOW_S3_ENDPOINT_URL``,
    then botocore's own (``AWS_ENDPOINT_URL_S3``).
    """
    options = dict(storage_options or {})
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL", "").strip()
    if endpoint and str(url).startswith(_S3_SCHEMES):
        conf = fsspec.config.conf.get("s3", {})
        configured = [
            src.get("endpoint_url") or (src.get("client_kwargs") or {}).get("endpoint_url") for src in (options, conf)
        ]
        if not any(configured):
            options["endpoint_url"] = endpoint
    return fsspec.core.url_to_fs(url, **options)


def is_local(fs: Any) -> bool:
    """Whether ``fs`` is the local file system (where renames and fsync exist)."""
    return isinstance(fs, LocalFileSystem)


def write_file(fs: Any, path: str, data: bytes | memoryview, *, atomic: bool = True) -> None:
    """Write ``data`` as the whole file ``path`` of ``fs`` (module docstring: durable, atomic)."""
    if is_local(fs):
        write_local(path, data, atomic=atomic)
    else:
        fs.pipe_file(path, bytes(data))


def write_local(path: str | os.PathLike[str], data: bytes | memoryview, *, atomic: bool = True) -> None:
    """:func:`write_file` on local disk: temp file, fsync, rename, directory fsync."""
    target = os.fspath(path)
    tmp = f"{target}{TMP_MARK}{uuid.uuid4().hex}" if atomic else target
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if atomic:
            os.replace(tmp, target)
            fsync_dir(os.path.dirname(target) or ".")  # persist the rename itself (and the entries beside it)
    except BaseException:
        if atomic and os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_url(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` whole (:func:`write_file`); a local directory is created first.

    An object store that refuses the write (a missing bucket, no permission) is an
    :class:`InputError` naming the URL.
    """
    fs, path = url_to_fs(url)
    if not is_local(fs):
        try:
            fs.pipe_file(path, bytes(data))
        except (FileNotFoundError, PermissionError) as e:
            raise InputError(f"cannot write {url}: {e!r}. Check that the bucket exists and is writable.") from e
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_local(path, data)


def fsync_dir(directory: str, *, best_effort: bool = False) -> None:
    """Persist ``directory``'s entries (a rename or link into it); ``best_effort``: where a file
    system cannot sync a directory, carry on instead of raising."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        if best_effort:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not best_effort:
            raise
    finally:
        os.close(fd)
