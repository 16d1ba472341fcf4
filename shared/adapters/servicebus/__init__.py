"""Azure Service Bus: the command bus and its dead-letter queues."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.adapters import Wiring
    from shared.deadletters.ports import DeadLetterSessions
    from shared.ports import Bus
    from shared.queue_depths import QueueDepths


def queues(wiring: Wiring) -> tuple[Bus, DeadLetterSessions, QueueDepths]:
    """The bus, the dead letters and the queue depths over one access (namespace and credential chosen once)."""
    from shared.adapters.servicebus.access import ServiceBusAccess
    from shared.adapters.servicebus.bus import ServiceBusBus
    from shared.adapters.servicebus.deadletters import servicebus_dead_letters
    from shared.queue_depths import ServiceBusQueueDepths

    access = ServiceBusAccess.from_settings(wiring.settings)
    return ServiceBusBus(access), servicebus_dead_letters(access), ServiceBusQueueDepths(access)
