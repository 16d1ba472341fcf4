"""How much work waits on each queue: a small read-only port for the ops page.

``depths()`` answers ``{queue: {"active", "scheduled", "locked", "dead_letter"}}`` for every
queue of ``shared/queues.json``. The embedded default counts the local SQLite queues; in
Azure, Azure Monitor's Service Bus metrics (a reader role, ``SIGNALBOX_SERVICEBUS_RESOURCE_ID``)
or, without that setting, the Service Bus administration API (Manage / Data Owner) report them.
``shared.adapters.servicebus.make_queues`` picks one. The SDKs load only inside the adapter that
needs them (this module is import-light).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from shared.errors import PermanentError, TransientError
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
    raises and the ops page shows the lifecycle with "queue depths unavailable". Used only when
    ``SIGNALBOX_SERVICEBUS_RESOURCE_ID`` is empty (e.g. a connection string on a workstation);
    :class:`MonitorQueueDepths` needs only a reader role.
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


# Azure Monitor metric (Microsoft.ServiceBus/namespaces, dimension EntityName, PT1M) → count.
SERVICE_BUS_METRICS = {
    "ActiveMessages": "active",
    "ScheduledMessages": "scheduled",
    "DeadletteredMessages": "dead_letter",
}
MONITORING_READER = "43d0d8ad-25c7-4714-9337-8ba259a9fe05"


class MonitorQueueDepths:
    """Queue depths from Azure Monitor's platform metrics of the Service Bus namespace.

    ``MetricsQueryClient.query_resource`` (azure-monitor-query) reads ``ActiveMessages``,
    ``ScheduledMessages`` and ``DeadletteredMessages`` (aggregation Average, one-minute grain,
    split by ``EntityName``) over the last ``lookback``; each count is the latest minute that has
    a value. Reading metrics needs only **Monitoring Reader** on the namespace (no Service Bus
    data or management rights). Metrics lag the queues by a minute or two, a queue with no
    series yet counts 0, and locked messages are not reported (``locked`` is 0). Answers are
    cached for ``cache_seconds`` (the ops page refreshes faster than the metrics change).
    An answer the ops page cannot use raises :class:`PermanentError` (what to fix) or
    :class:`TransientError` (throttled, unreachable, 5xx).
    """

    def __init__(
        self,
        resource_id: str,
        credential: Callable[[], Any],
        *,
        names: Iterable[str] | None = None,
        client: Any = None,
        endpoint: str = "https://management.azure.com",
        lookback: timedelta = timedelta(minutes=10),
        cache_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        **client_options: Any,
    ) -> None:
        """Read the namespace ``resource_id`` (its ARM id) with the token credential ``credential()``
        returns (called once, on first use); ``client`` replaces the ``MetricsQueryClient`` (tests),
        ``client_options`` go to it (e.g. ``connection_verify``)."""
        self.resource_id = resource_id
        self.names = tuple(names if names is not None else QUEUES)
        self.endpoint = endpoint
        self.lookback = lookback
        self.cache_seconds = cache_seconds
        self._credential = credential
        self._client = client
        self._client_options = client_options
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, dict[str, int]]] | None = None

    def __repr__(self) -> str:
        return f"MonitorQueueDepths(resource_id={self.resource_id!r})"

    def depths(self) -> dict[str, dict[str, int]]:
        """The latest active, scheduled and dead-lettered counts of each queue (locked: not reported, 0)."""
        with self._lock:
            now = self._clock()
            if self._cached is not None and now - self._cached[0] < self.cache_seconds:
                return {name: dict(counts) for name, counts in self._cached[1].items()}
            answer = self._query()
            self._cached = (now, answer)
            return {name: dict(counts) for name, counts in answer.items()}

    def _query(self) -> dict[str, dict[str, int]]:
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

        client = self._metrics_client()
        end = datetime.now(UTC).replace(second=0, microsecond=0)
        entity_filter = " or ".join(f"EntityName eq '{name}'" for name in self.names)
        try:
            result = client.query_resource(
                self.resource_id,
                list(SERVICE_BUS_METRICS),
                # start/end: the timespan format the REST reference documents (a bare duration is the SDK's own)
                timespan=(end - self.lookback, end),
                granularity=timedelta(minutes=1),
                aggregations=["Average"],
                filter=entity_filter,
                max_results=len(self.names),
                metric_namespace="Microsoft.ServiceBus/namespaces",
            )
        except ClientAuthenticationError as exc:  # no token, or 401 from Azure Resource Manager
            raise PermanentError(
                f"Azure Monitor refused the credential reading metrics of {self.resource_id}: check the function "
                f"app's managed identity (AZURE_CLIENT_ID) ({_reason(exc)})"
            ) from None
        except HttpResponseError as exc:
            raise self._translate(exc) from None
        except ServiceRequestError as exc:
            raise TransientError(
                f"Azure Monitor unreachable at {self.endpoint}, retry later ({_reason(exc)})"
            ) from None
        return self._counts(result)

    def _translate(self, exc: Any) -> Exception:
        status = getattr(exc, "status_code", None)
        reason = _reason(exc)
        if status == 403:
            return PermanentError(
                f"not authorized to read the metrics of {self.resource_id}: grant the function app's identity "
                f"'Monitoring Reader' ({MONITORING_READER}) on the namespace ({reason})"
            )
        if status == 404:
            return PermanentError(
                f"{self.resource_id} not found: check SIGNALBOX_SERVICEBUS_RESOURCE_ID "
                f"(the namespace's ARM id) ({reason})"
            )
        if status is not None and (status == 429 or status >= 500):
            return TransientError(f"Azure Monitor answered {status} for {self.resource_id}, retry later ({reason})")
        return PermanentError(f"Azure Monitor refused the metrics query for {self.resource_id} ({reason})")

    def _counts(self, result: Any) -> dict[str, dict[str, int]]:
        by_key = {name.lower(): name for name in self.names}
        out = {name: {"active": 0, "scheduled": 0, "locked": 0, "dead_letter": 0} for name in self.names}
        for metric in result.metrics:
            count = SERVICE_BUS_METRICS.get(metric.name)
            if count is None:
                continue
            for series in metric.timeseries:
                # ARM spells the dimension "EntityName" or "entityname"; entity names are case-insensitive.
                dims = {str(k).lower(): str(v) for k, v in (series.metadata_values or {}).items()}
                queue = by_key.get(dims.get("entityname", "").lower())
                if queue is None:
                    continue
                values = [point.average for point in series.data if point.average is not None]
                if values:
                    out[queue][count] = round(values[-1])
        return out

    def _metrics_client(self) -> Any:
        # Called with self._lock held: one client per process, built on first use.
        if self._client is None:
            from azure.monitor.query import MetricsQueryClient

            self._client = MetricsQueryClient(
                self._credential(),
                endpoint=self.endpoint,
                retry_total=0,  # the ops page asks again at its next refresh
                connection_timeout=5,
                read_timeout=10,
                **self._client_options,
            )
        return self._client


def _reason(exc: Any) -> str:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = getattr(error, "message", None) or str(getattr(exc, "message", "") or exc)
    first_line = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    return f"{code}: {first_line[:300]}" if code else f"{type(exc).__name__}: {first_line[:300]}"
