"""``Services``: the ports handlers use, wired once by ``shared.bootstrap`` (the composition root)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shared.errors import PermanentError

if TYPE_CHECKING:
    from shared.catalogue import Catalogue, ModelEntry
    from shared.deadletters.eventgrid import EventGridDeadLetterStore
    from shared.deadletters.ports import DeadLetterSessions
    from shared.ports import Bus, Clock, Compute, Evaluator, LandingZone, LifecycleEvents, Registry, Serving
    from shared.queue_depths import QueueDepths
    from shared.settings import Settings


@dataclass
class Services:
    """The ports handlers use, wired once by ``shared.bootstrap``."""

    settings: Settings
    catalogue: Catalogue
    bus: Bus
    registry: Registry
    compute: Mapping[str, Compute]
    evaluator: Evaluator
    serving: Serving
    landing: LandingZone
    events: LifecycleEvents
    clock: Clock
    # One dead-letter session per operation: each owns the locks it takes.
    dead_letters: DeadLetterSessions
    code_version: Mapping[str, str] = field(default_factory=dict)
    queue_depths: QueueDepths | None = None
    # Event Grid's own dead letters (the subscriptions' dead-letter container, or the local folder).
    eventgrid_dead_letters: EventGridDeadLetterStore | None = None
    # Models this worker has already recorded landed data for (see ``land_blob``).
    landed: set[str] = field(default_factory=set)

    def compute_for(self, model: ModelEntry) -> Compute:
        """The compute backend the model's catalogue entry names."""
        backend = model.training.backend
        if backend not in self.compute:
            raise PermanentError(
                f"model {model.name}: training.backend {backend!r} is not configured here "
                f"(available: {', '.join(sorted(self.compute))})"
            )
        return self.compute[backend]
