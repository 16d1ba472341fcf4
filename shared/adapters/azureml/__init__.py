"""Azure Machine Learning: command jobs, managed online endpoints and the workspace's MLflow registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.adapters import Wiring
    from shared.ports import Compute, Serving
    from shared.settings import Settings


def compute(wiring: Wiring) -> Compute:
    """Azure ML command jobs in the workspace."""
    from shared.adapters.azureml.compute import AzureMLCompute

    settings = wiring.settings
    return AzureMLCompute(
        subscription_id=settings.azureml_subscription_id,
        resource_group=settings.azureml_resource_group,
        workspace=settings.azureml_workspace,
    )


def serving(wiring: Wiring) -> Serving:
    """Azure ML managed online endpoints, blue/green by deployment."""
    from shared.adapters.azureml.serving import AzureMLServing

    settings = wiring.settings
    return AzureMLServing(
        subscription_id=settings.azureml_subscription_id,
        resource_group=settings.azureml_resource_group,
        workspace=settings.azureml_workspace,
        instance_type=settings.azureml_instance_type,
    )


def mlflow_uris(settings: Settings) -> tuple[str, str | None]:
    """The workspace's MLflow endpoint for tracking and registry (an explicit MLFLOW_TRACKING_URI wins)."""
    if settings.tracking_uri:
        return settings.mlflow_tracking_uri, settings.registry_uri or None
    from shared.adapters.azureml.compute import workspace_tracking_uri

    uri = workspace_tracking_uri(
        settings.azureml_subscription_id, settings.azureml_resource_group, settings.azureml_workspace
    )
    return uri, uri
