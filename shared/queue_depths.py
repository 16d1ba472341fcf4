"""How much work waits on each queue: a small read-only port for the ops page.

``depths()`` answers ``{queue: {"active", "scheduled", "locked", "dead_letter"}}`` for every
queue of ``shared/queues.json``. The embedded default counts the local SQLite queues; in
Azure the Service Bus administration API reports the runtime properties of each queue.
The SDKs load only inside the adapter that needs them (this module is import-light).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from shared.queues import QUEUES

if TYPE_CHECKING:
    from shared.adapters.local.queues import LocalQueues
    from shared.settings import Settings

COUNTS = ("active", "scheduled", "locked", "dead_letter")


class QueueDepths(Protocol):
    """Message counts per queue."""

    def depths(self) -> dict[str, dict[str, int]]:
        """``{queue: {"active": n, "scheduled": n, "locked": n, "dead_letter": n}}`` for every queue."""
        ...


class LocalQueueDepths:
    """Counts of the local queues (``STATE_DIR/queues.sqlite3``) the local host pumps."""

    def __init__(self, queues: LocalQueues, names: Iterable[str] | None = None) -> None:
        self.queues = queues
        self.names = tuple(names if names is not None else queues.specs)

    def depths(self) -> dict[str, dict[str, int]]:
        """Available now, scheduled for later, locked by a receiver, dead-lettered."""
        return {name: self.queues.counts(name) for name in self.names}


class ServiceBusQueueDepths:
    """Runtime properties of the Service Bus queues (administration API, Azure RBAC or SAS).

    Service Bus reports no count of locked messages: a locked message is still ``active``
    there, so ``locked`` is always 0. Reading runtime properties is a management operation:
    the identity needs Azure Service Bus Data Owner on the namespace (Data Sender and Receiver
    are not enough), a connection string a SAS rule with Manage. Without them ``depths()``
    raises and the ops page shows the lifecycle with "queue depths unavailable".
    """

    def __init__(
        self,
        *,
        fully_qualified_namespace: str | None = None,
        connection_string: str | None = None,
        names: Iterable[str] | None = None,
        client: Any = None,
    ) -> None:
        if client is None and not (fully_qualified_namespace or connection_string):
            raise ValueError(
                "ServiceBusQueueDepths needs ServiceBusConnection__fullyQualifiedNamespace or ServiceBusConnection"
            )
        self.fully_qualified_namespace = fully_qualified_namespace
        self._connection_string = connection_string
        self.names = tuple(names if names is not None else QUEUES)
        self._client = client
        self._lock = threading.Lock()

    def depths(self) -> dict[str, dict[str, int]]:
        """Active, scheduled and dead-lettered messages of each queue (locked: not reported, 0)."""
        client = self._admin_client()
        out: dict[str, dict[str, int]] = {}
        for name in self.names:
            props = client.get_queue_runtime_properties(name)
            out[name] = {
                "active": int(props.active_message_count or 0),
                "scheduled": int(props.scheduled_message_count or 0),
                "locked": 0,
                "dead_letter": int(props.dead_letter_message_count or 0),
            }
        return out

    def _admin_client(self) -> Any:
        # One client per process, built on first use: DefaultAzureCredential is slow to create.
        with self._lock:
            if self._client is None:
                from azure.servicebus.management import ServiceBusAdministrationClient

                if self.fully_qualified_namespace:
                    from azure.identity import DefaultAzureCredential

                    self._client = ServiceBusAdministrationClient(
                        self.fully_qualified_namespace, credential=DefaultAzureCredential()
                    )
                else:
                    self._client = ServiceBusAdministrationClient.from_connection_string(str(self._connection_string))
            return self._client


def queue_depths(settings: Settings) -> QueueDepths:
    """The adapter ``SIGNALBOX_BUS`` selects (the namespace, with a managed identity, wins over a connection string).

    To move into ``shared/bootstrap.py`` beside ``_bus`` (one composition root).
    """
    if settings.bus == "servicebus":
        return ServiceBusQueueDepths(
            fully_qualified_namespace=settings.servicebus_namespace or None,
            connection_string=None if settings.servicebus_namespace else settings.servicebus_connection or None,
        )
    from shared.adapters.local.queues import LocalQueues

    return LocalQueueDepths(LocalQueues(settings.state_dir / "queues.sqlite3"))
