"""The embedded default: SQLite queues, local jobs, a watched folder, local scoring servers."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.adapters import Wiring
    from shared.deadletters.ports import DeadLetterSessions
    from shared.ports import Bus, Compute, LandingZone, LifecycleEvents, Serving
    from shared.queue_depths import QueueDepths


def make_queues(wiring: Wiring) -> tuple[Bus, DeadLetterSessions, QueueDepths]:
    """The bus, the dead letters and the queue depths over one set of SQLite queues in the state dir."""
    from shared.adapters.local.bus import LocalBus
    from shared.adapters.local.deadletters import local_dead_letters
    from shared.adapters.local.queues import LocalQueues
    from shared.queue_depths import LocalQueueDepths

    local = LocalQueues(wiring.settings.state_dir / "queues.sqlite3")
    return LocalBus(local), local_dead_letters(local), LocalQueueDepths(local)


def make_compute(wiring: Wiring) -> Compute:
    """Training and scoring jobs as local processes, logging to the tracking server."""
    from shared.adapters.local.compute import LocalCompute

    return LocalCompute(wiring.settings.state_dir, wiring.tracking_uri)


def make_serving(wiring: Wiring) -> Serving:
    """MLflow scoring servers behind a stable local URL."""
    from shared.adapters.local.serving import LocalServing

    settings = wiring.settings
    return LocalServing(settings.state_dir, wiring.tracking_uri, settings.host_url, registry_uri=wiring.registry_uri)


def make_landing(wiring: Wiring) -> LandingZone:
    """A local folder as the landing zone."""
    from shared.adapters.local.landing import LocalLandingZone

    return LocalLandingZone(wiring.settings.landing_dir)


def make_events(wiring: Wiring) -> LifecycleEvents:
    """Lifecycle events appended to ``STATE_DIR/events.jsonl``."""
    from shared.adapters.local.landing import LocalLifecycleEvents

    return LocalLifecycleEvents(wiring.settings.state_dir / "events.jsonl")
