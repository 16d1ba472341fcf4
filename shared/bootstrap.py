"""The composition root: settings → adapters → ``Services``. The only place adapters are chosen."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from shared.catalogue import load_catalogue
from shared.handlers import Services
from shared.settings import Settings, load_settings


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


def bootstrap(settings: Settings | None = None) -> Services:
    """Wire the services from settings (the embedded default: local adapters)."""
    from shared.adapters.local_bus import LocalBus
    from shared.adapters.local_compute import LocalCompute
    from shared.adapters.local_landing import LocalLandingZone, LocalLifecycleEvents
    from shared.adapters.local_queues import LocalQueues
    from shared.adapters.local_serving import LocalServing
    from shared.adapters.mlflow_evaluator import MlflowEvaluator
    from shared.adapters.mlflow_registry import MlflowRegistry

    settings = settings or load_settings()
    catalogue = load_catalogue(settings.catalogue)
    state = settings.state_dir
    state.mkdir(parents=True, exist_ok=True)
    tracking = settings.mlflow_tracking_uri
    registry_uri = settings.registry_uri or None
    return Services(
        settings=settings,
        catalogue=catalogue,
        bus=LocalBus(LocalQueues(state / "queues.sqlite3")),
        registry=MlflowRegistry(tracking, registry_uri),
        compute={"local": LocalCompute(state, tracking)},
        evaluator=MlflowEvaluator(tracking, registry_uri),
        serving=LocalServing(state, tracking, settings.host_url, registry_uri=registry_uri),
        landing=LocalLandingZone(),
        events=LocalLifecycleEvents(state / "events.jsonl"),
        clock=_utcnow,
        code_version=code_version(settings.catalogue.parent),
    )
