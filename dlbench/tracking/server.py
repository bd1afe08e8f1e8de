"""A tracking server named by an ``http(s)://`` URI: whether one answers there.

A command that only reads from the store (``report``, ``reproduce``) or only points at it
(``ui``) asks first, in a second: MLflow's client retries a refused connection for about four
minutes before it says so, and then in words that blame the run id. Any HTTP answer counts as a
server (a reverse proxy that wants a password answers too); a TLS problem is left to MLflow,
which has its own certificate settings (``MLFLOW_TRACKING_SERVER_CERT_PATH``, ...).
"""

from __future__ import annotations

import requests

from dlbench.errors import UserError
from dlbench.tracking.resilient import outage_reason

PROBE_TIMEOUT_S = 5.0


def is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def unreachable(tracking_uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why nothing answers at the server ``tracking_uri`` (``connection refused``, ...), or None
    when something does."""
    try:
        requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s)
    except requests.exceptions.SSLError:
        return None  # something answers; MLflow's own TLS settings decide
    except requests.exceptions.RequestException as exc:
        if "resolve" in str(exc) or "not known" in str(exc):
            return "no such host name"
        return outage_reason(exc) or type(exc).__name__
    return None


def require_reachable(tracking_uri: str) -> None:
    """Nothing for a local store or a server that answers; else a :class:`UserError` saying so."""
    if is_server(tracking_uri) and (why := unreachable(tracking_uri)):
        raise UserError(f"--tracking-uri {tracking_uri}: no MLflow tracking server answers there ({why}). "
                        "Start it (`mlflow server ...`, see the README's Team setup), open the SSH tunnel to it, "
                        "or check the address and port.")
