"""Sign in to Azure Databricks with an Azure managed identity, for databricks-sdk and for MLflow.

databricks-sdk's default credential chain has no managed-identity provider (on Azure Functions it
falls through to ``azure-cli``, which is not there). This module gives the SDK a
``CredentialsStrategy`` over azure-identity: an Entra access token for the Azure Databricks
resource (the AzureDatabricks application, ``2ff814a6-3304-4ab8-85cb-cd0e6f879c1d``; the SDK's
per-cloud login app id when the host names one), scope ``{app id}/.default``, sent as
``Authorization: Bearer …``. The token is cached and refreshed by the SDK's own ``Refreshable``
(renewed when half its life, at most 20 minutes, remains, and always 40 s before it expires).

- ``ManagedIdentityStrategy``: always the managed identity (``ManagedIdentityCredential``; the
  user-assigned one whose client id is ``AZURE_CLIENT_ID`` when set, else the system-assigned one).
  With ``DATABRICKS_AZURE_RESOURCE_ID`` set it also sends the workspace resource id and an Azure
  management token, as the SDK does for service principals, so an identity with Contributor on
  the workspace is added to it on first use.
- ``DefaultThenManagedIdentity``: the SDK's own chain first (a token, OAuth M2M, a config
  profile, ``az login`` on a developer's machine, ...), the managed identity when that finds
  nothing, or at once when ``DATABRICKS_AUTH_TYPE=azure-msi`` or ``ARM_USE_MSI=true``.

The MLflow side is ``shared.adapters.databricks.mlflow_auth``. Tokens never reach logs or errors.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from databricks.sdk import oauth
from databricks.sdk.credentials_provider import (
    CredentialsProvider,
    CredentialsStrategy,
    DefaultCredentials,
    OAuthCredentialsProvider,
)
from databricks.sdk.environments import ARM_DATABRICKS_RESOURCE_ID, get_environment_for_hostname

from shared.errors import TransientError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from databricks.sdk.config import Config

__all__ = [
    "AUTH_TYPE",
    "DATABRICKS_SCOPE",
    "DefaultThenManagedIdentity",
    "EntraTokenSource",
    "ManagedIdentityStrategy",
    "databricks_scope",
    "managed_identity_credential",
]

log = logging.getLogger("signalbox.databricks.auth")

AUTH_TYPE = "azure-msi"  # the name Terraform and the Go SDK give this method
DATABRICKS_SCOPE = f"{ARM_DATABRICKS_RESOURCE_ID}/.default"
_WORKSPACE_HEADER = "X-Databricks-Azure-Workspace-Resource-Id"
_MANAGEMENT_HEADER = "X-Databricks-Azure-SP-Management-Token"


def managed_identity_credential(client_id: str | None = None) -> TokenCredential:
    """The app's managed identity: the user-assigned one of ``client_id`` (default ``AZURE_CLIENT_ID``)."""
    from azure.identity import ManagedIdentityCredential

    client_id = client_id or os.environ.get("AZURE_CLIENT_ID") or None
    return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()


def databricks_scope(host: str | None) -> str:
    """The Entra scope of the workspace's login application (the AzureDatabricks one by default)."""
    app_id = None
    if host:
        hostname = urlsplit(host if "://" in host else f"https://{host}").hostname
        app_id = get_environment_for_hostname(hostname).azure_application_id
    return f"{app_id or ARM_DATABRICKS_RESOURCE_ID}/.default"


class EntraTokenSource(oauth.Refreshable):
    """Entra access tokens for one scope from an azure-identity credential, cached by the SDK's ``Refreshable``."""

    def __init__(self, credential: TokenCredential, scope: str = DATABRICKS_SCOPE) -> None:
        # Blocking refresh: a function invocation must not leave a refresh thread behind.
        super().__init__(disable_async=True)
        self._credential = credential
        self.scope = scope

    def refresh(self) -> oauth.Token:
        """A new token from the credential (azure-identity keeps its own cache underneath)."""
        granted = self._credential.get_token(self.scope)
        return oauth.Token(
            access_token=granted.token,
            token_type="Bearer",  # noqa: S106  # the scheme's name, not a secret
            expiry=datetime.fromtimestamp(granted.expires_on, tz=UTC),
        )


class ManagedIdentityStrategy(CredentialsStrategy):
    """A databricks-sdk ``CredentialsStrategy`` that signs in with an Azure managed identity."""

    def __init__(self, credential: TokenCredential | None = None, *, client_id: str | None = None) -> None:
        self._credential = credential
        self._client_id = client_id

    def auth_type(self) -> str:
        """The SDK's name for this method."""
        return AUTH_TYPE

    def __call__(self, cfg: Config) -> CredentialsProvider:
        """Headers for every request; a first token is fetched now so a missing identity fails here."""
        credential = self._credential or managed_identity_credential(self._client_id or cfg.azure_client_id)
        inner = EntraTokenSource(credential, databricks_scope(cfg.host))
        management: EntraTokenSource | None = None
        if cfg.azure_workspace_resource_id:
            endpoint = cfg.arm_environment.service_management_endpoint if cfg.arm_environment else None
            management = EntraTokenSource(credential, f"{endpoint or 'https://management.core.windows.net/'}.default")
        from azure.identity import CredentialUnavailableError

        try:
            inner.token()
        except CredentialUnavailableError as exc:
            # No identity here: the SDK reports a ValueError as a configuration problem.
            # (azure-identity's messages name the endpoint and the identity, never a token.)
            raise ValueError(f"no Azure managed identity token for Databricks: {type(exc).__name__}: {exc}") from None
        except Exception as exc:
            # The identity endpoint failed this time (not a ValueError: the SDK lets it through).
            raise TransientError(
                f"signing in to Databricks: the managed identity endpoint failed: {type(exc).__name__}: {exc}"
            ) from None
        log.info("signing in to Databricks with the Azure managed identity (scope %s)", inner.scope)

        def headers() -> dict[str, str]:
            token = inner.token()
            sent = {"Authorization": f"Bearer {token.access_token}"}
            if management is not None:
                sent[_WORKSPACE_HEADER] = cfg.azure_workspace_resource_id
                sent[_MANAGEMENT_HEADER] = management.token().access_token
            return sent

        return OAuthCredentialsProvider(headers, inner.token)


class DefaultThenManagedIdentity(CredentialsStrategy):
    """The SDK's default chain, then the managed identity when the chain finds no credentials."""

    def __init__(self, credential: TokenCredential | None = None, *, client_id: str | None = None) -> None:
        self._default = DefaultCredentials()
        self._managed = ManagedIdentityStrategy(credential, client_id=client_id)
        self._chosen: CredentialsStrategy | DefaultCredentials = self._default

    def auth_type(self) -> str:
        """The method in use (after the config called this strategy)."""
        return self._chosen.auth_type()

    def __call__(self, cfg: Config) -> CredentialsProvider:
        """The default chain's headers, else the managed identity's."""
        if _msi_requested(cfg):
            self._chosen = self._managed
            return self._managed(cfg)
        try:
            provider = self._default(cfg)
        except ValueError as default_failed:
            try:
                provider = self._managed(cfg)
            except ValueError as managed_failed:
                raise ValueError(f"{default_failed}; and {managed_failed}") from None
            self._chosen = self._managed
            return provider
        self._chosen = self._default
        return provider


def _msi_requested(cfg: Any) -> bool:
    return getattr(cfg, "auth_type", None) == AUTH_TYPE or bool(getattr(cfg, "azure_use_msi", False))
