"""mlflow-amnesia: amnesiac machine learning for MLflow (Graves et al., AAAI 2021).

The flavor (``save_model``, ``log_model``, ``load_model``) is re-exported here, with the two
jobs users run: :func:`train` and :func:`forget`.
"""

__version__ = "0.1.0"

from .interrupts import guard_startup as _guard_startup  # noqa: E402 - stdlib only: before torch/mlflow load

_guard_startup()  # the mlflow-amnesia program only: Ctrl-C while loading is one line, exit 130

from .errors import AmnesiaError  # noqa: E402
from .flavor import FLAVOR_NAME, AmnesiaModel, load_model, log_model, save_model  # noqa: E402
from .forget import forget  # noqa: E402
from .train import train  # noqa: E402

__all__ = ["AmnesiaError", "AmnesiaModel", "FLAVOR_NAME", "forget", "load_model", "log_model", "save_model", "train", "__version__"]
