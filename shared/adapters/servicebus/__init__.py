"""Azure Service Bus: the command bus and its dead-letter queues."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.adapters import Wiring
    from shared.deadletters.ports import DeadLetterSessions
    from shared.ports import Bus
    from shared.queue_depths import QueueDepths


def make_queues(wiring: Wiring) -> tuple[Bus, DeadLetterSessions, QueueDepths]:
    """The bus, the dead letters and the queue depths over one access (namespace and credential chosen once).

    The depths come from Azure Monitor metrics (Monitoring Reader) when ``SIGNALBOX_SERVICEBUS_RESOURCE_ID``
    names the namespace, else from the Service Bus administration API (Manage / Data Owner).
    """
    from shared.adapters.servicebus.access import ServiceBusAccess
    from shared.adapters.servicebus.bus import ServiceBusBus
    from shared.adapters.servicebus.deadletters import servicebus_dead_letters
    from shared.queue_depths import MonitorQueueDepths, ServiceBusQueueDepths

    access = ServiceBusAccess.from_settings(wiring.settings)
    resource_id = wiring.settings.servicebus_resource_id
    depths: QueueDepths = (
        MonitorQueueDepths(resource_id, access.arm_credential) if resource_id else ServiceBusQueueDepths(access)
    )
    return ServiceBusBus(access), servicebus_dead_letters(access), depths
