"""The composition root: settings → adapters → ``Services``. The only place adapters are chosen."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from shared.catalogue import load_catalogue
from shared.services import Services
from shared.settings import Settings, check_cloud_settings, load_settings

if TYPE_CHECKING:
    from shared.deadletters.ports import DeadLetterSessions
    from shared.ports import Bus, Compute, LandingZone, LifecycleEvents, Serving
    from shared.queue_depths import QueueDepths


def _utcnow() -> datetime:
    return datetime.now(UTC)


def code_version(root: Path) -> dict[str, str]:
    """Commit and repository of the deployed code: app settings in Azure, git locally."""
    commit = os.environ.get("SIGNALBOX_CODE_COMMIT", "")
    repository = os.environ.get("SIGNALBOX_CODE_REPOSITORY", "")
    if not commit:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=False
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = ""
    out = {}
    if commit:
        out["commit_sha"] = commit
    if repository or commit:
        out["repository"] = repository or root.resolve().name
    return out


APP_ROOT = Path(__file__).resolve().parents[1]


def catalogue_path(path: Path) -> Path:
    """A relative catalogue path from the working directory, else from the app's folder.

    The Functions worker does not run in the app folder (``/home/site/wwwroot``).
    """
    if path.is_absolute() or path.exists():
        return path
    return APP_ROOT / path


def bootstrap(settings: Settings | None = None) -> Services:
    """Wire the services from settings; a missing or wrong setting fails here, naming it."""
    from shared import observability

    observability.install()
    settings = settings or load_settings()
    catalogue = load_catalogue(catalogue_path(settings.catalogue))
    backends: set[str] = {m.training.backend for m in catalogue.models.values()}
    check_cloud_settings(settings, backends)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    tracking, registry_uri = _mlflow_uris(settings)

    from shared.adapters.mlflow.evaluator import MlflowEvaluator
    from shared.adapters.mlflow.registry import MlflowRegistry

    bus, dead_letters, queue_depths = _queues(settings)
    return Services(
        settings=settings,
        catalogue=catalogue,
        bus=bus,
        registry=MlflowRegistry(tracking, registry_uri),
        compute={backend: _compute(backend, settings, tracking) for backend in backends | {"local"}},
        evaluator=MlflowEvaluator(tracking, registry_uri),
        serving=_serving(settings, tracking, registry_uri),
        landing=_landing(settings),
        events=_events(settings),
        clock=_utcnow,
        code_version=code_version(settings.catalogue.parent),
        queue_depths=queue_depths,
        dead_letters=dead_letters,
    )


def _mlflow_uris(settings: Settings) -> tuple[str, str | None]:
    if settings.registry == "azureml" and not settings.tracking_uri:
        from shared.adapters.azureml.compute import workspace_tracking_uri

        uri = workspace_tracking_uri(
            settings.azureml_subscription_id, settings.azureml_resource_group, settings.azureml_workspace
        )
        return uri, uri
    return settings.mlflow_tracking_uri, settings.registry_uri or None


def _queues(settings: Settings) -> tuple[Bus, DeadLetterSessions, QueueDepths]:
    """The bus, the dead letters and the queue depths over one Service Bus access (namespace and
    credential chosen once) or one set of local queues."""
    if settings.bus == "servicebus":
        from shared.adapters.servicebus.access import ServiceBusAccess
        from shared.adapters.servicebus.bus import ServiceBusBus
        from shared.adapters.servicebus.deadletters import servicebus_dead_letters
        from shared.queue_depths import ServiceBusQueueDepths

        access = ServiceBusAccess.from_settings(settings)
        return ServiceBusBus(access), servicebus_dead_letters(access), ServiceBusQueueDepths(access)
    from shared.adapters.local.bus import LocalBus
    from shared.adapters.local.deadletters import local_dead_letters
    from shared.adapters.local.queues import LocalQueues
    from shared.queue_depths import LocalQueueDepths

    queues = LocalQueues(settings.state_dir / "queues.sqlite3")
    return LocalBus(queues), local_dead_letters(queues), LocalQueueDepths(queues)


def _compute(backend: str, settings: Settings, tracking: str) -> Compute:
    if backend == "databricks":
        from shared.adapters.databricks.compute import DatabricksCompute

        return DatabricksCompute(
            host=settings.databricks_host or None,
            token=settings.databricks_token or None,
            http_timeout_seconds=settings.databricks_http_timeout_seconds,
        )
    if backend == "azureml":
        from shared.adapters.azureml.compute import AzureMLCompute

        return AzureMLCompute(
            subscription_id=settings.azureml_subscription_id,
            resource_group=settings.azureml_resource_group,
            workspace=settings.azureml_workspace,
        )
    from shared.adapters.local.compute import LocalCompute

    return LocalCompute(settings.state_dir, tracking)


def _serving(settings: Settings, tracking: str, registry_uri: str | None) -> Serving:
    if settings.serving == "databricks":
        from shared.adapters.databricks.serving import DatabricksServing

        return DatabricksServing(
            host=settings.databricks_host or None,
            token=settings.databricks_token or None,
            http_timeout_seconds=settings.databricks_http_timeout_seconds,
        )
    if settings.serving == "azureml":
        from shared.adapters.azureml.serving import AzureMLServing

        return AzureMLServing(
            subscription_id=settings.azureml_subscription_id,
            resource_group=settings.azureml_resource_group,
            workspace=settings.azureml_workspace,
            instance_type=settings.azureml_instance_type,
        )
    from shared.adapters.local.serving import LocalServing

    return LocalServing(settings.state_dir, tracking, settings.host_url, registry_uri=registry_uri)


def _landing(settings: Settings) -> LandingZone:
    if settings.landing == "blob":
        from shared.adapters.azure.landing import BlobLandingZone

        return BlobLandingZone()
    from shared.adapters.local.landing import LocalLandingZone

    return LocalLandingZone(settings.landing_dir)


def _events(settings: Settings) -> LifecycleEvents:
    if settings.events == "eventgrid":
        from shared.adapters.azure.events import EventGridLifecycleEvents

        return EventGridLifecycleEvents(settings.eventgrid_endpoint, key=settings.eventgrid_key or None)
    from shared.adapters.local.landing import LocalLifecycleEvents

    return LocalLifecycleEvents(settings.state_dir / "events.jsonl")
