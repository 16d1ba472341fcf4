"""How much work waits on each queue: a small read-only port for the ops page.

``depths()`` answers ``{queue: {"active", "scheduled", "locked", "dead_letter"}}`` for every
queue of ``shared/queues.json``. The embedded default counts the local SQLite queues; in
Azure the Service Bus administration API reports the runtime properties of each queue.
``shared/bootstrap.py`` picks one. The SDKs load only inside the adapter that needs them
(this module is import-light).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from shared.queues import QUEUES

if TYPE_CHECKING:
    from shared.adapters.local.queues import LocalQueues
    from shared.adapters.servicebus.access import ServiceBusAccess

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

    def __init__(self, access: ServiceBusAccess, *, names: Iterable[str] | None = None, client: Any = None) -> None:
        """Read over ``access`` (the namespace and credential bootstrap chose); ``client`` replaces the
        ``ServiceBusAdministrationClient`` (tests)."""
        self.access = access
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
        # One client per process, built on first use (the access makes its credential once, too).
        with self._lock:
            if self._client is None:
                self._client = self.access.admin_client()
            return self._client

