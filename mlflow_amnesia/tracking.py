"""Reaching the tracking server: fail in seconds, not minutes, when it is down.

MLflow's HTTP client retries a refused connection with exponential backoff (7 retries, about
four minutes) before it reports anything. That suits a blip in the middle of a long run, not a
server that was never started: every command first asks an ``http(s)`` tracking or registry
server for ``/health`` once, with a short timeout, and stops with a message naming the URI.
Any HTTP answer (even an error status, e.g. behind a proxy that has no ``/health``) counts as
reachable; TLS problems are left to MLflow, whose settings (custom CA, insecure TLS) this probe
does not replicate.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from .errors import TrackingServerError

PROBE_TIMEOUT_ENV = "MLFLOW_AMNESIA_PROBE_TIMEOUT"
DEFAULT_PROBE_TIMEOUT = 10.0


def check_reachable(timeout: float | None = None) -> None:
    """Raise :class:`TrackingServerError` if the tracking or registry server does not answer."""
    import mlflow
    import requests

    if timeout is None:
        timeout = float(os.environ.get(PROBE_TIMEOUT_ENV, DEFAULT_PROBE_TIMEOUT))
    seen = set()
    for what, uri in (("tracking", mlflow.get_tracking_uri()), ("registry", mlflow.get_registry_uri())):
        if urlparse(uri).scheme not in ("http", "https") or uri in seen:
            continue
        seen.add(uri)
        try:
            requests.get(uri.rstrip("/") + "/health", timeout=timeout)
        except requests.exceptions.SSLError:
            continue  # MLflow's own TLS settings may make it work: let MLflow decide
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            reason = f"no answer within {timeout:g} s" if isinstance(e, requests.exceptions.Timeout) else "connection failed"
            raise TrackingServerError(
                f"cannot reach the {what} server at {uri} ({reason}): start it, or set "
                f"MLFLOW_TRACKING_URI{' / MLFLOW_REGISTRY_URI' if what == 'registry' else ''} to a server that runs. "
                "Nothing was changed."
            ) from None
