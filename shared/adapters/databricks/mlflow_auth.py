"""MLflow's ``databricks`` / ``databricks-uc`` URIs signed in with the Azure managed identity.

MLflow resolves Databricks credentials in ``mlflow.utils.databricks_utils.get_databricks_host_creds``,
which every Databricks store and artifact repository calls before each request (the tracking
``RestStore``, the workspace registry, ``UcModelRegistryStore``, the models artifact repositories).
It first tries databricks-sdk's default chain (no managed identity there, see ``auth``), then its
chain of ``DatabricksConfigProvider`` s: environment variables, then the *dynamic token provider*
(``databricks_utils._dynamic_token_config_provider``, the slot Databricks runtimes fill with a
provider that returns the current token on every call), then ``~/.databrickscfg``.

``install_managed_identity`` puts a provider in that slot that returns ``DATABRICKS_HOST`` and an
Entra token of the managed identity (``auth.EntraTokenSource``: cached, renewed before expiry), so
MLflow sends ``Authorization: Bearer <token>`` through its own request code. It also sets
``MLFLOW_ENABLE_DB_SDK=false`` unless the app settings set it, so MLflow does not first build an SDK
client that cannot sign in (a host-metadata request and a warning before every call).

It applies to the plain ``databricks`` and ``databricks-uc`` URIs (``databricks://PROFILE`` reads
that profile) and only when ``DATABRICKS_TOKEN`` is unset: a token in the environment wins.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from shared.adapters.databricks.auth import AUTH_TYPE, EntraTokenSource, databricks_scope, managed_identity_credential
from shared.errors import PermanentError, TransientError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = ["install_if_wanted", "install_managed_identity"]

log = logging.getLogger("signalbox.databricks.auth")

_SLOT = "_dynamic_token_config_provider"


def install_managed_identity(
    host: str | None = None, credential: TokenCredential | None = None, *, client_id: str | None = None
) -> Any:
    """Make MLflow's Databricks URIs sign in with the managed identity; returns the provider installed.

    ``host`` defaults to ``DATABRICKS_HOST``; ``credential`` to ``ManagedIdentityCredential`` with
    ``client_id`` (default ``AZURE_CLIENT_ID``). No token is fetched until MLflow asks for one.
    """
    from mlflow.legacy_databricks_cli.configure.provider import DatabricksConfig, DatabricksConfigProvider
    from mlflow.utils import databricks_utils

    workspace = (host or os.environ.get("DATABRICKS_HOST") or "").strip().rstrip("/")
    if not workspace:
        raise PermanentError("MLflow on Databricks needs DATABRICKS_HOST (https://adb-….azuredatabricks.net)")
    if not workspace.startswith(("https://", "http://")):
        workspace = f"https://{workspace}"
    if not hasattr(databricks_utils, _SLOT):
        raise PermanentError(
            "this MLflow version has no dynamic Databricks token provider; set DATABRICKS_TOKEN instead"
        )
    source = EntraTokenSource(credential or managed_identity_credential(client_id), databricks_scope(workspace))

    class ManagedIdentityConfigProvider(DatabricksConfigProvider):
        """The workspace host and a current managed-identity token, on every call."""

        def get_config(self) -> Any:
            from azure.identity import CredentialUnavailableError

            try:
                token = source.token().access_token
            except CredentialUnavailableError as exc:
                raise PermanentError(
                    f"MLflow on Databricks: no Azure managed identity here ({exc}); set DATABRICKS_TOKEN, "
                    "or run where the app's identity (AZURE_CLIENT_ID) is assigned"
                ) from None
            except Exception as exc:  # the identity endpoint failed this time
                reason = f"{type(exc).__name__}: {exc}"
                raise TransientError(f"MLflow on Databricks: no managed identity token: {reason}") from exc
            return DatabricksConfig.from_token(host=workspace, token=token)

    provider = ManagedIdentityConfigProvider()
    setattr(databricks_utils, _SLOT, provider)
    os.environ.setdefault("MLFLOW_ENABLE_DB_SDK", "false")
    log.info("MLflow signs in to Databricks %s with the Azure managed identity", workspace)
    return provider


def install_if_wanted(*uris: str | None, host: str | None = None, token: str | None = None) -> bool:
    """``install_managed_identity`` when it is wanted; whether it was installed.

    With a token (and no OAuth client secret, which needs the SDK), MLflow is set to its requests
    path instead (``MLFLOW_ENABLE_DB_SDK=false`` unless the app settings set it).

    Wanted when one of the MLflow URIs is a plain ``databricks`` / ``databricks-uc`` one, no
    credential is configured (``token``, ``DATABRICKS_TOKEN``, ``DATABRICKS_CLIENT_SECRET``), and a
    managed identity is there (App Service / Functions set ``IDENTITY_ENDPOINT``) or asked for
    (``DATABRICKS_AUTH_TYPE=azure-msi`` or ``ARM_USE_MSI=true``). Elsewhere MLflow keeps its own
    resolution (a developer's ``az login`` or ``~/.databrickscfg``).
    """
    if not any(uri and uri.strip() in ("databricks", "databricks-uc") for uri in uris):
        return False
    personal_token = token or os.environ.get("DATABRICKS_TOKEN")
    client_secret = os.environ.get("DATABRICKS_CLIENT_SECRET")
    if personal_token or client_secret:
        if not client_secret:
            # A personal access token needs no SDK: MLflow's requests path reads it from the environment
            # and honours MLFLOW_HTTP_REQUEST_TIMEOUT, where its SDK path allows 60 s per request.
            os.environ.setdefault("MLFLOW_ENABLE_DB_SDK", "false")
        return False
    asked = os.environ.get("DATABRICKS_AUTH_TYPE") == AUTH_TYPE or os.environ.get("ARM_USE_MSI", "").lower() in (
        "1",
        "true",
    )
    if not (asked or os.environ.get("IDENTITY_ENDPOINT")):
        return False
    install_managed_identity(host)
    return True
