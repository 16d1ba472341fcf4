"""The composition root: settings → adapters → ``Services``. The only place adapters are chosen.

One table per port maps a setting's value to a factory in the vendor's adapter package; a new
backend is one package plus one entry here (and the value in ``Settings``' ``Literal``).
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from shared.adapters import Wiring, azure, azureml, databricks, local, mlflow, servicebus
from shared.catalogue import load_catalogue
from shared.services import Services
from shared.settings import Settings, check_cloud_settings, load_settings

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from shared.deadletters.eventgrid import EventGridDeadLetterStore
    from shared.deadletters.ports import DeadLetterSessions
    from shared.ports import Bus, Compute, Evaluator, LandingZone, LifecycleEvents, Registry, Serving
    from shared.queue_depths import QueueDepths


# SIGNALBOX_BUS → the bus, its dead letters and its queue depths (one access, chosen once).
QUEUES: Mapping[str, Callable[[Wiring], tuple[Bus, DeadLetterSessions, QueueDepths]]] = {
    "local": local.make_queues,
    "servicebus": servicebus.make_queues,
}
# SIGNALBOX_REGISTRY → the MLflow tracking and registry URIs.
MLFLOW_URIS: Mapping[str, Callable[[Settings], tuple[str, str | None]]] = {
    "mlflow": mlflow.uris,
    "azureml": azureml.mlflow_uris,
}
REGISTRY: Callable[[Wiring], Registry] = mlflow.make_registry
# SIGNALBOX_REGISTRY → the evaluator (Azure ML's model files are not MLflow's to download).
EVALUATOR: Mapping[str, Callable[[Wiring], Evaluator]] = {
    "mlflow": mlflow.make_evaluator,
    "azureml": azureml.make_evaluator,
}
# training.backend of a catalogue model → its compute.
COMPUTE: Mapping[str, Callable[[Wiring], Compute]] = {
    "local": local.make_compute,
    "databricks": databricks.make_compute,
    "azureml": azureml.make_compute,
}
# SIGNALBOX_SERVING → real-time endpoints.
SERVING: Mapping[str, Callable[[Wiring], Serving]] = {
    "local": local.make_serving,
    "databricks": databricks.make_serving,
    "azureml": azureml.make_serving,
}
# SIGNALBOX_LANDING → the landing zone.
LANDING: Mapping[str, Callable[[Wiring], LandingZone]] = {"local": local.make_landing, "blob": azure.make_landing}
# SIGNALBOX_EVENTS → lifecycle events out.
EVENTS: Mapping[str, Callable[[Wiring], LifecycleEvents]] = {"local": local.make_events, "eventgrid": azure.make_events}


def eventgrid_dead_letters(wiring: Wiring) -> EventGridDeadLetterStore:
    """SIGNALBOX_EVENTGRID_DEADLETTER_CONTAINER_URL's container when set, else the state dir's folder."""
    url = wiring.settings.eventgrid_deadletter_container_url
    if url:
        from shared.adapters.azure.eventgrid_deadletters import BlobEventGridDeadLetters

        return BlobEventGridDeadLetters(url)
    from shared.adapters.local.eventgrid_deadletters import local_eventgrid_dead_letters

    return local_eventgrid_dead_letters(wiring.settings.state_dir)


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
    wiring = Wiring(settings, *MLFLOW_URIS[settings.registry](settings), catalogue=catalogue)
    databricks.mlflow_sign_in(wiring)  # MLflow's databricks URIs with the app's identity, where wanted
    bus, dead_letters, queue_depths = QUEUES[settings.bus](wiring)
    return Services(
        settings=settings,
        catalogue=catalogue,
        bus=bus,
        registry=REGISTRY(wiring),
        compute={backend: COMPUTE[backend](wiring) for backend in backends | {"local"}},
        evaluator=EVALUATOR[settings.registry](wiring),
        serving=SERVING[settings.serving](wiring),
        landing=LANDING[settings.landing](wiring),
        events=EVENTS[settings.events](wiring),
        clock=_utcnow,
        code_version=code_version(settings.catalogue.parent),
        queue_depths=queue_depths,
        dead_letters=dead_letters,
        eventgrid_dead_letters=eventgrid_dead_letters(wiring),
    )
