"""A model version: its metadata (:mod:`.info`), its files (:mod:`.files`), the loaded model (:mod:`.model`).

Independent of MLflow: the MLflow flavor (:mod:`mlflow_amnesia.mlflow.flavor`) saves and loads these
through MLflow's artifact stores.
"""

from .files import VersionFiles
from .info import VersionInfo
from .model import AmnesiaModel, read_model

__all__ = ["AmnesiaModel", "VersionFiles", "VersionInfo", "read_model"]
