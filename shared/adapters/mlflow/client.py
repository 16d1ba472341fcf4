"""What the MLflow adapters share: bounded HTTP settings, registry capabilities, error translation.

Nothing here imports MLflow at module level; each function imports what it needs when called.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from shared.errors import PermanentError, SignalboxError, TransientError, UnknownVersion

__all__ = ["HTTP_DEFAULTS", "Capabilities", "bound_http_defaults", "translate"]

# MLflow's own defaults (a 120 s timeout, 7 retries with a backoff factor of 2, and a 500 s retry
# budget on the Databricks SDK path) let one call run for minutes, longer than Event Grid's 30 s
# delivery timeout and a Service Bus lock. These bound a call to about 25 s on the requests path
# (3 attempts of at most 8 s, 0 s then 2 s apart) and retries to 20 s on the Databricks SDK path.
# A transient failure then reaches Signalbox's own scheduled retry, which backs off for real.
HTTP_DEFAULTS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "8",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT": "20",
}


def bound_http_defaults() -> None:
    """Set each of ``HTTP_DEFAULTS`` in the environment unless the app settings already set it.

    MLflow reads these variables on every request, so they must be in place before the first call;
    a value the user set (an app setting) always wins.
    """
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


@dataclass
class Capabilities:
    """What the registry behind a URI can do, known from its scheme.

    - ``aliases``: the Databricks workspace registry has none (MLflow raises ``INTERNAL_ERROR``
      "unsupported for models in the Workspace Model Registry" without a request).
    - ``tag_search``: only MLflow's own stores (SQL, file, an MLflow server) filter searches on
      tags; Databricks (workspace and Unity Catalog) accepts one ``name=`` or ``run_id=`` condition.
    - ``search_tags``: Unity Catalog searches return versions without tags or aliases
      (``ModelVersionSearch``); a ``get_model_version`` per version reads them.
    """

    aliases: bool = True
    tag_search: bool = True
    search_tags: bool = True
    unity_catalog: bool = False

    @classmethod
    def of(cls, registry_uri: str) -> Capabilities:
        """The capabilities of the registry MLflow resolved for this URI."""
        from mlflow.utils.uri import is_databricks_unity_catalog_uri, is_databricks_uri

        if is_databricks_unity_catalog_uri(registry_uri):
            return cls(aliases=True, tag_search=False, search_tags=False, unity_catalog=True)
        if is_databricks_uri(registry_uri):
            return cls(aliases=False, tag_search=False, search_tags=True)
        return cls()


_REPORTED_STATUS = re.compile(r"failed with status code (\d{3})\b")


def _status(error: Exception) -> int | None:
    """The HTTP status MLflow's error stands for (from its error code), if it is MLflow's."""
    from mlflow.exceptions import MlflowException

    if not isinstance(error, MlflowException):
        return None
    status = error.get_http_status_code()
    if status == 500:
        # MLflow's artifact repositories report a refused request as INTERNAL_ERROR, saying the real
        # status only in the text ("... failed with status code 403. Response body: ...").
        reported = _REPORTED_STATUS.search(str(error))
        if reported:
            return int(reported[1])
    return status if isinstance(status, int) else None


def workspace_registry_refusal(error: Exception) -> bool:
    """MLflow's refusal of an alias method on the Databricks workspace registry."""
    return "unsupported for models in the Workspace Model Registry" in str(error)


def translate(error: Exception, what: str) -> Exception:
    """Signalbox's error for an MLflow failure while doing ``what``; other errors unchanged.

    429, 5xx and timeouts are transient (MLflow reports a failed or timed-out request as
    ``INTERNAL_ERROR``; on the Databricks SDK path a retry budget spent on 429/503 escapes as the
    builtin ``TimeoutError``); 404 is ``UnknownVersion`` (a ``LookupError``); 401/403 and other 4xx are permanent.
    """
    if isinstance(error, SignalboxError):
        return error
    if _unanswered(error):
        return TransientError(f"{what}: no answer in time ({type(error).__name__}: {_message(error)})")
    status = _status(error)
    if status is None:
        return error
    message = f"{what}: {_message(error)}"
    if status == 429 or status >= 500:
        return TransientError(message)
    if status == 404:
        return UnknownVersion(message)
    if status in (401, 403):
        return PermanentError(f"{message} (check the app's Databricks or MLflow credentials and grants)")
    return PermanentError(message)


def _unanswered(error: Exception) -> bool:
    """A timeout or a broken connection that escaped MLflow's own wrapping."""
    if isinstance(error, TimeoutError | ConnectionError):
        return True
    import requests

    return isinstance(error, requests.exceptions.Timeout | requests.exceptions.ConnectionError)


def _message(error: Any) -> str:
    text = str(getattr(error, "message", None) or error)
    return text if len(text) <= 500 else text[:500] + "..."
