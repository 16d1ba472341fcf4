"""Azure Machine Learning: command jobs, managed online endpoints and the workspace's MLflow registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.adapters import Wiring
    from shared.ports import Compute, Evaluator, Serving
    from shared.settings import Settings


def make_compute(wiring: Wiring) -> Compute:
    """Azure ML command jobs in the workspace."""
    from shared.adapters.azureml.compute import AzureMLCompute

    settings = wiring.settings
    return AzureMLCompute(
        subscription_id=settings.azureml_subscription_id,
        resource_group=settings.azureml_resource_group,
        workspace=settings.azureml_workspace,
    )


def make_serving(wiring: Wiring) -> Serving:
    """Azure ML managed online endpoints, blue/green by deployment."""
    from shared.adapters.azureml.serving import AzureMLServing

    settings = wiring.settings
    return AzureMLServing(
        subscription_id=settings.azureml_subscription_id,
        resource_group=settings.azureml_resource_group,
        workspace=settings.azureml_workspace,
        instance_type=settings.azureml_instance_type,
    )


def make_evaluator(wiring: Wiring) -> Evaluator:
    """MLflow's pyfunc evaluator, taking model files from the workspace (MLflow cannot read ``azureml://``).

    The workspace is the registry URI's; a registry elsewhere (an explicit non-Azure ML URI) is MLflow's alone.
    """
    from shared.adapters.azureml.mlflow_auth import workspace_of
    from shared.adapters.mlflow.evaluator import MlflowEvaluator

    workspace = workspace_of(wiring.registry_uri or wiring.tracking_uri)
    if workspace is None:
        return MlflowEvaluator(wiring.tracking_uri, wiring.registry_uri)
    from shared.adapters.azureml.model_files import AzureMLModelFiles

    subscription, resource_group, name = workspace
    files = AzureMLModelFiles(subscription_id=subscription, resource_group=resource_group, workspace=name)
    return MlflowEvaluator(wiring.tracking_uri, wiring.registry_uri, model_files=files)


def mlflow_uris(settings: Settings) -> tuple[str, str | None]:
    """The workspace's MLflow endpoint for tracking and registry (an explicit MLFLOW_TRACKING_URI wins).

    An explicit ``azureml://`` URI (what ``az ml workspace show`` prints) becomes its https form; with
    either form, MLflow's requests to Azure ML carry the app's Entra ID token (``mlflow_auth``).
    """
    if settings.tracking_uri:
        tracking, registry = settings.mlflow_tracking_uri, settings.registry_uri or None
        if not any(_is_azureml(uri) for uri in (tracking, registry) if uri):
            return tracking, registry
        from shared.adapters.azureml import mlflow_auth
        from shared.errors import PermanentError

        try:
            tracking = mlflow_auth.https_tracking_uri(tracking) if _is_azureml(tracking) else tracking
            registry = mlflow_auth.https_tracking_uri(registry) if registry and _is_azureml(registry) else registry
            mlflow_auth.enable()
        except ValueError as exc:
            raise PermanentError(f"MLflow tracking / registry URI: {exc}") from None
        return tracking, registry
    from shared.adapters.azureml.compute import workspace_tracking_uri

    uri = workspace_tracking_uri(
        settings.azureml_subscription_id, settings.azureml_resource_group, settings.azureml_workspace
    )
    return uri, uri


def _is_azureml(uri: str) -> bool:
    """Whether the URI is an Azure ML workspace's MLflow endpoint (``azureml://`` or https to its host)."""
    from urllib.parse import urlsplit

    from shared.adapters.azureml.mlflow_auth import token_scope

    parts = urlsplit(uri)
    return parts.scheme == "azureml" or (parts.scheme == "https" and token_scope(parts.hostname) is not None)
