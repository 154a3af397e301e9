"""A model version's or a run's artifacts through MLflow's artifact repositories.

:class:`ArtifactFiles` is the :class:`~mlflow_amnesia.version.files.FileSource` that purge and
verify read a version through (metadata only, never its weights), so they parse every file with
the same checks as loading; :func:`list_files` lists what is left, :func:`download` reads one file.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..errors import StoreError

__all__ = ["ArtifactFiles", "download", "list_files", "repo_at"]


def repo_at(location: str) -> Any:
    """The ArtifactRepository of an artifact location (a version's download URI, a run's artifact URI)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(location)


def download(repo: Any, path: str, *, optional: bool = False) -> bytes | None:
    """One artifact's bytes; None when ``optional`` and the file is not listed. A file that is
    listed but cannot be read is an error, never taken for an absent one."""
    if optional and path not in {f.path for f in repo.list_artifacts(path.rsplit("/", 1)[0] if "/" in path else None)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = repo.download_artifacts(path, dst_path=tmp)
            return Path(local).read_bytes()
        except Exception as e:  # noqa: BLE001 - every repository signals failure differently
            raise StoreError(
                f"cannot read {path} of the model version at {repo.artifact_uri} ({type(e).__name__}: {e}); "
                "what the versions need cannot be checked without it. Restore it, then re-run."
            ) from None


def list_files(repo: Any, path: str | None = None) -> list[tuple[str, int]]:
    """(path, bytes) of every file under ``path`` of an artifact repository, recursively."""
    out: list[tuple[str, int]] = []
    for f in repo.list_artifacts(path):
        if f.is_dir:
            out += list_files(repo, f.path)
        else:
            out.append((f.path, int(f.file_size or 0)))
    return out


class ArtifactFiles:
    """A version's files in an artifact repository (a :class:`~mlflow_amnesia.version.files.FileSource`)."""

    def __init__(self, repo: Any) -> None:
        self.repo = repo

    def read(self, rel: str, where: str, *, limit: int | None = None, optional: bool = False) -> bytes | None:
        return download(self.repo, rel, optional=optional)
