"""``mlflow_amnesia.validation``: kept as an import path; the code lives in :mod:`mlflow_amnesia.jobs.validation`."""

from mlflow_amnesia.jobs.validation import (  # noqa: F401 - re-exported
    check_forget_options,
    check_train_options,
    known_codec,
    non_negative_number,
    positive_number,
    whole_number,
    writable_store_uri,
)

__all__ = [
    "check_forget_options",
    "check_train_options",
    "known_codec",
    "non_negative_number",
    "positive_number",
    "whole_number",
    "writable_store_uri",
]
