"""Databricks: Jobs (training) and Model Serving, through databricks-sdk."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.adapters import Wiring
    from shared.ports import Compute, Serving


def compute(wiring: Wiring) -> Compute:
    """Databricks Jobs (a token, or the app's managed identity when none is set)."""
    from shared.adapters.databricks.compute import DatabricksCompute

    settings = wiring.settings
    return DatabricksCompute(
        host=settings.databricks_host or None,
        token=settings.databricks_token or None,
        http_timeout_seconds=settings.databricks_http_timeout_seconds,
    )


def serving(wiring: Wiring) -> Serving:
    """Databricks Model Serving endpoints, blue/green by served entity."""
    from shared.adapters.databricks.serving import DatabricksServing

    settings = wiring.settings
    return DatabricksServing(
        host=settings.databricks_host or None,
        token=settings.databricks_token or None,
        http_timeout_seconds=settings.databricks_http_timeout_seconds,
    )
