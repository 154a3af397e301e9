"""mlflow-amnesia: amnesiac machine learning for MLflow (Graves et al., AAAI 2021).

The flavor (``save_model``, ``log_model``, ``load_model``) is re-exported here, with the two
jobs users run: :func:`train` and :func:`forget`.
"""

from ._version import __version__  # noqa: E402
from .interrupts import guard_startup as _guard_startup  # noqa: E402 - stdlib only: before torch/mlflow load

_guard_startup()  # the mlflow-amnesia program only: Ctrl-C while loading is one line, exit 130


def _install_shadow_cache() -> None:
    from .audit.privacy import use_shadow_cache
    from .mlflow.shadow_cache import MlflowShadowCache

    use_shadow_cache(MlflowShadowCache())


# The old module paths mlflow_amnesia.forget and .train are loaded first: the functions below then
# take those names on the package (a module imported later would not rebind them).
from . import forget as _forget_path  # noqa: E402, F401
from . import train as _train_path  # noqa: E402, F401
from .errors import AmnesiaError  # noqa: E402
from .jobs.forget import forget  # noqa: E402
from .jobs.train import train  # noqa: E402
from .mlflow.flavor import FLAVOR_NAME, AmnesiaModel, load_model, log_model, save_model  # noqa: E402

_install_shadow_cache()  # the audit keeps its shadow models as MLflow runs (mlflow_amnesia.mlflow.shadow_cache)

__all__ = [
    "AmnesiaError",
    "AmnesiaModel",
    "FLAVOR_NAME",
    "forget",
    "load_model",
    "log_model",
    "save_model",
    "train",
    "__version__",
]
