"""Databricks: Jobs (training) and Model Serving, through databricks-sdk."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.adapters import Wiring
    from shared.ports import Compute, Serving


def make_compute(wiring: Wiring) -> Compute:
    """Databricks Jobs (a token, or the app's managed identity when none is set)."""
    from shared.adapters.databricks.compute import DatabricksCompute

    settings = wiring.settings
    return DatabricksCompute(
        host=settings.databricks_host or None,
        token=settings.databricks_token or None,
        http_timeout_seconds=settings.databricks_http_timeout_seconds,
    )


def make_serving(wiring: Wiring) -> Serving:
    """Databricks Model Serving endpoints, blue/green by served entity, sized by the catalogue."""
    from shared.adapters.databricks.serving import DatabricksServing, sizing_from_catalogue

    settings = wiring.settings
    catalogue = wiring.catalogue  # each endpoint's workload_size / scale_to_zero_enabled
    return DatabricksServing(
        host=settings.databricks_host or None,
        token=settings.databricks_token or None,
        http_timeout_seconds=settings.databricks_http_timeout_seconds,
        sizing=sizing_from_catalogue(catalogue) if catalogue is not None else None,
    )


def mlflow_sign_in(wiring: Wiring) -> bool:
    """Let MLflow's plain ``databricks`` / ``databricks-uc`` URIs sign in with the app's managed identity.

    Only where no Databricks credential is set and an identity is there (Functions) or asked for;
    whether it was installed. Call once, before the first MLflow request.
    """
    from shared.adapters.databricks.mlflow_auth import install_if_wanted

    settings = wiring.settings
    return install_if_wanted(
        wiring.tracking_uri,
        wiring.registry_uri,
        host=settings.databricks_host or None,
        token=settings.databricks_token or None,
    )
