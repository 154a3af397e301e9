"""``mlflow_amnesia.store.codecs``: kept as an import path; the code lives in :mod:`mlflow_amnesia.recording.store.codecs`."""

from mlflow_amnesia.recording.store.codecs import (  # noqa: F401 - re-exported
    CODEC_NAMES,
    CODECS,
    DEFAULT_CODEC,
    DEFAULT_LEVEL,
    INT8_BLOCK,
    Codec,
    codec_from_spec,
    get_codec,
)

__all__ = [
    "Codec",
    "codec_from_spec",
    "CODEC_NAMES",
    "CODECS",
    "DEFAULT_CODEC",
    "DEFAULT_LEVEL",
    "get_codec",
    "INT8_BLOCK",
]
