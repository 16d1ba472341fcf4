"""Entra ID bearer tokens on MLflow's own REST calls to an Azure ML workspace (no azureml-mlflow plugin).

An Azure ML workspace is an MLflow server at ``https://{host}/mlflow/v2.0/subscriptions/…/workspaces/{ws}``
(the base the azureml-mlflow plugin builds from the ``azureml://{host}/mlflow/v1.0/…`` tracking URI for
MLflow 2 and 3). MLflow's plain ``RestStore`` serves that URI; what it lacks is the token. MLflow asks
a *request auth provider* for one per request when ``MLFLOW_TRACKING_AUTH`` names it: this module is
that provider (entry point ``mlflow.request_auth_provider`` → ``signalbox-azureml``). Its
``requests`` auth object sees each request's URL, so the token goes only over HTTPS to Azure ML's
MLflow hosts (``*.api.azureml.ms`` and the sovereign clouds' equivalents), never elsewhere.

Tokens come from azure-identity (``DefaultAzureCredential``: the app's managed identity, a
user-assigned one when ``AZURE_CLIENT_ID`` is set) for the cloud's Resource Manager scope, which is
what the plugin asks for too, and are cached until five minutes before they expire.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Any

import requests
from mlflow.tracking.request_auth.abstract_request_auth_provider import RequestAuthProvider

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = [
    "AUTH_NAME",
    "AzureMLRequestAuthProvider",
    "EntraBearerAuth",
    "enable",
    "https_tracking_uri",
    "token_scope",
    "workspace_of",
]

log = logging.getLogger(__name__)

AUTH_NAME = "signalbox-azureml"
# Azure ML's MLflow hosts by cloud (regional ``{region}.api.…`` and private-link
# ``{id}.workspace.{region}.api.…`` alike), and the Resource Manager scope of that cloud.
_CLOUD_SCOPES = {
    ".api.azureml.ms": "https://management.azure.com/.default",
    ".api.ml.azure.us": "https://management.usgovcloudapi.net/.default",
    ".api.ml.azure.cn": "https://management.chinacloudapi.cn/.default",
}
# Refresh this long before expiry: a token must not lapse during a request or MLflow's retries.
REFRESH_MARGIN = 300.0
_AZUREML_URI = re.compile(
    r"^azureml://(?P<netloc>[A-Za-z0-9.-]+(?::\d+)?)/mlflow/v[12]\.0"
    r"(?P<scope>/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.MachineLearningServices"
    r"/workspaces/[^/?#]+)/?$"
)


def token_scope(host: str | None) -> str | None:
    """The token scope for an Azure ML MLflow host; ``None`` for any other host."""
    name = (host or "").lower().rstrip(".")
    return next((scope for suffix, scope in _CLOUD_SCOPES.items() if name.endswith(suffix)), None)


def https_tracking_uri(uri: str) -> str:
    """The HTTPS MLflow base URL of a workspace's ``azureml://`` tracking URI (an https URI unchanged)."""
    if uri.startswith("https://"):
        return uri
    match = _AZUREML_URI.match(uri)
    if match is None or token_scope(match["netloc"].split(":")[0]) is None:
        raise ValueError(f"not an Azure ML workspace tracking URI: {uri!r}")
    # MLflow 2 and 3 speak the workspace's v2.0 MLflow API, whatever version the workspace reports.
    return f"https://{match['netloc']}/mlflow/v2.0{match['scope']}"


_WORKSPACE_PATH = re.compile(
    r"/mlflow/v[12]\.0/subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<resource_group>[^/]+)"
    r"/providers/Microsoft\.MachineLearningServices/workspaces/(?P<workspace>[^/?#]+)/?$",
    re.IGNORECASE,
)


def workspace_of(uri: str | None) -> tuple[str, str, str] | None:
    """(subscription, resource group, workspace) of an Azure ML MLflow URI (https or azureml); else ``None``."""
    parts = requests.utils.urlparse(uri or "")
    if parts.scheme not in ("https", "azureml") or token_scope(parts.hostname) is None:
        return None
    match = _WORKSPACE_PATH.match(parts.path)
    return (match["subscription"], match["resource_group"], match["workspace"]) if match else None


def _now() -> float:
    return time.time()


class EntraBearerAuth(requests.auth.AuthBase):
    """Adds ``Authorization: Bearer …`` to HTTPS requests for Azure ML MLflow hosts, leaving others alone."""

    def __init__(self, credential: TokenCredential | None = None) -> None:
        self._credential = credential
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def use(self, credential: TokenCredential | None) -> None:
        """Take tokens from this credential from now on (``None``: ``DefaultAzureCredential``)."""
        with self._lock:
            self._credential = credential
            self._tokens.clear()

    def token(self, scope: str) -> str:
        """A token for the scope, from the cache unless it expires within ``REFRESH_MARGIN`` seconds."""
        with self._lock:
            cached = self._tokens.get(scope)
            if cached is not None and cached[1] - _now() > REFRESH_MARGIN:
                return cached[0]
            if self._credential is None:
                from azure.identity import DefaultAzureCredential

                # A user-assigned managed identity is picked by AZURE_CLIENT_ID, as for every Azure SDK.
                self._credential = DefaultAzureCredential()
            access = self._credential.get_token(scope)
            self._tokens[scope] = (access.token, float(access.expires_on))
            log.debug("Entra ID token for %s obtained; valid for %.0f s", scope, access.expires_on - _now())
            return access.token

    def forget(self, token: str) -> None:
        """Drop a token the service refused, so the next request asks for a new one."""
        with self._lock:
            for scope, (cached, _) in list(self._tokens.items()):
                if cached == token:
                    del self._tokens[scope]

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        parts = requests.utils.urlparse(request.url or "")
        scope = token_scope(parts.hostname) if parts.scheme == "https" else None
        if scope is None:
            return request
        token = self.token(scope)
        request.headers["Authorization"] = f"Bearer {token}"

        def refused(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
            if response.status_code == 401:
                self.forget(token)
            return response

        request.register_hook("response", refused)
        return request


_AUTH = EntraBearerAuth()


class AzureMLRequestAuthProvider(RequestAuthProvider):
    """MLflow's request auth provider named ``signalbox-azureml`` (select it with ``MLFLOW_TRACKING_AUTH``)."""

    def get_name(self) -> str:
        return AUTH_NAME

    def get_auth(self) -> EntraBearerAuth:
        # MLflow asks once per request: one shared object keeps one token cache.
        return _AUTH


def enable(credential: TokenCredential | None = None) -> None:
    """Make MLflow's REST calls in this process carry Entra ID tokens to Azure ML hosts.

    Sets ``MLFLOW_TRACKING_AUTH`` (read by MLflow on every request); refuses to replace another provider.
    """
    from mlflow.environment_variables import MLFLOW_TRACKING_AUTH

    # Set here, so the function app needs no such setting; one someone set for another provider wins.
    current = MLFLOW_TRACKING_AUTH.get()
    if current and current != AUTH_NAME:
        raise ValueError(f"MLFLOW_TRACKING_AUTH is {current!r}; Azure ML needs {AUTH_NAME!r} (or leave it unset)")
    MLFLOW_TRACKING_AUTH.set(AUTH_NAME)
    _register()
    if credential is not None:
        _AUTH.use(credential)


def _register() -> None:
    """Register the provider with MLflow unless its entry point did.

    An Azure Functions deployment runs Signalbox from its files with requirements.txt installed, not as
    an installed package: there is no entry point metadata for MLflow to find there.
    """
    from mlflow.tracking.request_auth import registry

    providers = registry._request_auth_provider_registry
    if not any(provider.get_name() == AUTH_NAME for provider in providers):
        providers.register(AzureMLRequestAuthProvider)
