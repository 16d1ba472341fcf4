"""How Signalbox reaches its Service Bus namespace: chosen once, shared by every Service Bus adapter.

``shared/bootstrap.py`` builds one :class:`ServiceBusAccess` from the settings and hands it to
the bus, the dead letters and the queue depths. It holds the namespace and either a connection
string or a token credential (``DefaultAzureCredential``, the function app's managed identity,
when none is given), and builds the SDK clients on demand. The credential is made lazily, once
per access, so the adapters share one token cache. azure-servicebus and azure-identity are
imported only when a client is built.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from azure.servicebus import ServiceBusClient
    from azure.servicebus.management import ServiceBusAdministrationClient

    from shared.settings import Settings

__all__ = ["CONNECTION_SETTING", "NAMESPACE_SETTING", "ServiceBusAccess"]

NAMESPACE_SETTING = "ServiceBusConnection__fullyQualifiedNamespace"
CONNECTION_SETTING = "ServiceBusConnection"

# Secrets that can appear in a connection string or in text an SDK echoes back.
_SECRET_PATTERNS = (
    re.compile(r"(SharedAccessKey\s*=\s*)[^;\s]+", re.IGNORECASE),
    re.compile(r"(SharedAccessSignature\s*=?\s*)[^;\s]+", re.IGNORECASE),
    re.compile(r"(\bsig=)[^&;\s]+", re.IGNORECASE),
)


def _connection_fields(connection_string: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in connection_string.split(";"):
        key, sep, value = item.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    return fields


def _host(value: str) -> str:
    # Accept "sb://ns.servicebus.windows.net/" as well as the bare host the setting documents.
    if "://" in value:
        return urlsplit(value).hostname or value
    return value.strip().rstrip("/")


class ServiceBusAccess:
    """One namespace, reached with a managed identity (or a given credential) or a connection string."""

    def __init__(
        self,
        *,
        fully_qualified_namespace: str | None = None,
        connection_string: str | None = None,
        credential: Any = None,
    ) -> None:
        """Exactly one of ``fully_qualified_namespace`` (with ``credential``, default
        ``DefaultAzureCredential``) or a namespace-level ``connection_string``.

        Raises ``ValueError`` naming the setting to fix; the message never carries the key.
        """
        if bool(fully_qualified_namespace) == bool(connection_string):
            raise ValueError(
                f"Service Bus needs exactly one of {NAMESPACE_SETTING} (the namespace host, e.g. "
                f"sb-signalbox.servicebus.windows.net, used with a managed identity) or {CONNECTION_SETTING} "
                f"(a namespace connection string); got {'both' if fully_qualified_namespace else 'neither'}"
            )
        if connection_string and credential is not None:
            raise ValueError(f"credential applies only with {NAMESPACE_SETTING}, not with {CONNECTION_SETTING}")
        if connection_string:
            fields = _connection_fields(connection_string)
            endpoint = fields.get("endpoint", "")
            if not endpoint:
                raise ValueError(
                    f"{CONNECTION_SETTING} is not a Service Bus connection string: expected "
                    "Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=...;SharedAccessKey=..."
                )
            if fields.get("entitypath"):
                # A queue-scoped string cannot reach the other queues the pipeline chains over.
                raise ValueError(
                    f"{CONNECTION_SETTING} is scoped to one queue (EntityPath={fields['entitypath']}): "
                    "use a namespace-level connection string"
                )
            self.namespace = _host(endpoint)
        else:
            self.namespace = _host(fully_qualified_namespace or "")
        self._connection_string = connection_string or None
        self._credential = credential
        self._arm_credential: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceBusAccess:
        """From the Functions trigger's own settings; the namespace (managed identity) wins over a connection string."""
        if settings.servicebus_namespace:
            return cls(fully_qualified_namespace=settings.servicebus_namespace)
        return cls(connection_string=settings.servicebus_connection or None)

    def __repr__(self) -> str:
        return f"ServiceBusAccess(namespace={self.namespace!r}, by={self.how()!r})"

    @property
    def uses_connection_string(self) -> bool:
        """Whether a connection string (SAS) is used rather than a token credential."""
        return self._connection_string is not None

    def how(self) -> str:
        """How it authenticates, for logs: ``connection string`` or ``managed identity``/the credential's type."""
        if self._connection_string:
            return "connection string"
        credential = self._credential
        return type(credential).__name__ if credential is not None else "managed identity"

    def credential(self) -> Any:
        """The token credential (``None`` with a connection string); a default one is made once, on first use."""
        if self._connection_string:
            return None
        with self._lock:
            if self._credential is None:
                from azure.identity import DefaultAzureCredential

                self._credential = DefaultAzureCredential()
            return self._credential

    def arm_credential(self) -> Any:
        """A token credential for Azure Resource Manager (Azure Monitor metrics): the access's own, or,
        with a connection string (a SAS key is no Entra identity), a ``DefaultAzureCredential`` made once."""
        if not self._connection_string:
            return self.credential()
        with self._lock:
            if self._arm_credential is None:
                from azure.identity import DefaultAzureCredential

                self._arm_credential = DefaultAzureCredential()
            return self._arm_credential

    def client(self, *, retry_total: int = 3) -> ServiceBusClient:
        """A new ``ServiceBusClient`` (its owner closes it); ``retry_total`` is the SDK's own retry count."""
        from azure.servicebus import ServiceBusClient

        if self._connection_string:
            return ServiceBusClient.from_connection_string(self._connection_string, retry_total=retry_total)
        return ServiceBusClient(self.namespace, self.credential(), retry_total=retry_total)

    def admin_client(self) -> ServiceBusAdministrationClient:
        """A new ``ServiceBusAdministrationClient`` (runtime properties need Manage / Data Owner)."""
        from azure.servicebus.management import ServiceBusAdministrationClient

        if self._connection_string:
            return ServiceBusAdministrationClient.from_connection_string(self._connection_string)
        return ServiceBusAdministrationClient(self.namespace, credential=self.credential())

    def redact(self, text: str) -> str:
        """``text`` without the connection string, its key or any SAS signature."""
        if self._connection_string:
            text = text.replace(self._connection_string, f"<{CONNECTION_SETTING}>")
            key = _connection_fields(self._connection_string).get("sharedaccesskey")
            if key:
                text = text.replace(key, "***")
        for pattern in _SECRET_PATTERNS:
            text = pattern.sub(r"\1***", text)
        return text
