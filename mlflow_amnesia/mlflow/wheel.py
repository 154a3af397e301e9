"""This package as a wheel, built from the files of the installed package, for a model's artifacts.

A model's ``requirements.txt`` must name something pip can install where the model is served
(``mlflow models serve`` with the default virtualenv manager, ``build-docker``, ``spark_udf``),
and ``mlflow-amnesia`` is on no index. So every model carries the wheel of the release that
wrote it (``wheels/<name>.whl``, referenced from ``requirements.txt``). It is built here, from
the package's own installed files and distribution metadata (``METADATA`` with its
``Requires-Dist``, entry points), with no build backend, no network and no source tree: an
editable install and a wheel install give the same wheel. Its version carries a digest of the
files (``0.1.0+<12 hex>``) so an environment cached by MLflow for another build of the same
release is never reused (MLflow keys its environments by the requirement lines).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import re
import zipfile
from importlib import metadata
from pathlib import Path

__all__ = ["package_wheel", "WheelFile"]

DIST = "mlflow-amnesia"
_PKG = "mlflow_amnesia"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same files give the same wheel bytes


class WheelFile:
    """A built wheel: its file name (``mlflow_amnesia-<version>-py3-none-any.whl``) and bytes."""

    def __init__(self, name: str, data: bytes, version: str) -> None:
        self.name, self.data, self.version = name, data, version


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _package_files() -> list[tuple[str, bytes]]:
    root = Path(__file__).resolve().parents[1]  # .../mlflow_amnesia
    files = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root.parent).as_posix()
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".typed", ".json"):
            files.append((rel, p.read_bytes()))
    return files


def _installed_metadata() -> tuple[str, str | None]:
    """(METADATA, entry_points.txt) of the installed distribution. An installed one (``.dist-info``,
    with METADATA) wins over a source tree's ``mlflow_amnesia.egg-info`` (PKG-INFO only, left by
    ``pip install -e .``, found first when the checkout is on sys.path, and possibly stale); a
    checkout never installed gets a name-only METADATA."""
    found = list(metadata.distributions(name=DIST))
    for dist in sorted(found, key=lambda d: not d.read_text("METADATA")):
        meta = dist.read_text("METADATA") or dist.read_text("PKG-INFO")
        if meta:
            return meta, dist.read_text("entry_points.txt")
    return f"Metadata-Version: 2.1\nName: {DIST}\n", None


@functools.lru_cache(maxsize=1)
def package_wheel() -> WheelFile:
    """The wheel of the running ``mlflow_amnesia`` (built once per process)."""
    from .._version import __version__

    files = _package_files()
    digest = hashlib.sha256()
    for rel, data in files:
        digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    version = f"{__version__}+{digest.hexdigest()[:12]}"
    meta, entry_points = _installed_metadata()
    meta = (
        re.sub(r"(?m)^Version: .*$", f"Version: {version}", meta)
        if "\nVersion:" in meta
        else meta.replace(f"Name: {DIST}\n", f"Name: {DIST}\nVersion: {version}\n", 1)
    )
    info = f"{_PKG}-{version}.dist-info"
    wheel_meta = "Wheel-Version: 1.0\nGenerator: mlflow-amnesia\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    extra = [(f"{info}/METADATA", meta.encode()), (f"{info}/WHEEL", wheel_meta.encode())]
    if entry_points:
        extra.append((f"{info}/entry_points.txt", entry_points.encode()))
    entries = files + extra
    record = "".join(f"{rel},{_record_hash(data)},{len(data)}\n" for rel, data in entries) + f"{info}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for rel, data in [*entries, (f"{info}/RECORD", record.encode())]:
            zi = zipfile.ZipInfo(rel, _EPOCH)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            z.writestr(zi, data)
    return WheelFile(f"{_PKG}-{version}-py3-none-any.whl", buf.getvalue(), version)
