"""Lifecycle events out to an Event Grid custom topic, as CloudEvents 1.0 (azure-eventgrid).

The events are those :class:`shared.adapters.local.landing.LocalLifecycleEvents` writes locally:
type ``io.signalbox.<EventType>``, the model name as subject, the facts as JSON data.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from shared.domain import LifecycleEvent
from shared.errors import PermanentError, TransientError

__all__ = ["EVENT_TYPE_PREFIX", "LIFECYCLE_EVENT_TYPES", "EventGridLifecycleEvents"]

log = logging.getLogger("signalbox.eventgrid")

EVENT_TYPE_PREFIX = "io.signalbox."
ENDPOINT_SETTING = "SIGNALBOX_EVENTGRID_ENDPOINT"
KEY_SETTING = "SIGNALBOX_EVENTGRID_KEY"

# Every event type the handlers publish (subscriptions filter on f"{EVENT_TYPE_PREFIX}{type}").
LIFECYCLE_EVENT_TYPES: tuple[str, ...] = tuple(event.value for event in LifecycleEvent)

# Per-call pipeline options: azure-eventgrid 4.2x drops client-level options for basic topics,
# and its default (10 retries, backoff up to 120 s) would outlast a function invocation.
_PIPELINE_OPTIONS = frozenset(
    {"retry_total", "retry_backoff_factor", "retry_backoff_max", "connection_timeout", "read_timeout"}
)
_SERIALIZATION_LOGGER = "azure.eventgrid._legacy._generated._serialization"


class _IgnorePipelineOptionWarnings(logging.Filter):
    """Drops the SDK's warning that each per-call pipeline option is not a CloudEvent attribute."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno == logging.WARNING
            and str(record.msg).startswith("%s is not a known attribute")
            and isinstance(record.args, tuple)
            and bool(record.args)
            and record.args[0] in _PIPELINE_OPTIONS
        )


_filter_installed = threading.Lock()


def _install_warning_filter() -> None:
    with _filter_installed:
        logger = logging.getLogger(_SERIALIZATION_LOGGER)
        if not any(isinstance(f, _IgnorePipelineOptionWarnings) for f in logger.filters):
            logger.addFilter(_IgnorePipelineOptionWarnings())


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _publish_url(endpoint: str) -> str:
    # The portal shows the topic endpoint with /api/events; a bare host gets the same path.
    parts = urlsplit(endpoint.strip())
    path = parts.path if parts.path not in ("", "/") else "/api/events"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class EventGridLifecycleEvents:
    """Publishes lifecycle events as CloudEvents 1.0 to an Event Grid custom topic."""

    def __init__(
        self,
        endpoint: str,
        *,
        key: str | None = None,
        credential: Any = None,
        source: str = "/signalbox",
        retry_total: int = 2,
        timeout: float = 10.0,
    ) -> None:
        """Authenticate with the topic's access ``key``, a ``credential``, or else DefaultAzureCredential.

        ``retry_total`` and ``timeout`` (seconds, per connect and per read) bound the SDK's own retries,
        so a failing publish ends well within the function's timeout.
        """
        if not endpoint:
            raise ValueError(f"{ENDPOINT_SETTING} is empty: set it to the custom topic's endpoint")
        if key and credential is not None:
            raise ValueError(f"give either {KEY_SETTING} (key) or a credential, not both")
        parts = urlsplit(endpoint.strip())
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(
                f"{ENDPOINT_SETTING} must be an https URL like "
                f"https://<topic>.<region>-1.eventgrid.azure.net/api/events, got {parts.scheme or 'no'} scheme"
            )
        # Plain http would send the key in clear; only a local fake on loopback may use it.
        if parts.scheme == "http" and not (key and _is_loopback(parts.hostname)):
            raise ValueError(f"{ENDPOINT_SETTING} must use https (http is accepted only on loopback with a key)")
        self.endpoint = _publish_url(endpoint)
        self.source = source
        self._key = key or None
        self._credential = credential
        self._options: dict[str, Any] = {
            "retry_total": retry_total,
            "retry_backoff_factor": 0.5,
            "retry_backoff_max": 8,
            "connection_timeout": timeout,
            "read_timeout": timeout,
        }
        self._lock = threading.Lock()
        self._client: Any = None

    def __repr__(self) -> str:
        return f"EventGridLifecycleEvents(endpoint={self._safe_endpoint!r})"

    @property
    def _safe_endpoint(self) -> str:
        parts = urlsplit(self.endpoint)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))

    def publish(self, event_type: str, subject: str, data: Mapping[str, object]) -> None:
        """Publish one event of type ``io.signalbox.<event_type>`` about ``subject``."""
        from azure.core.exceptions import AzureError
        from azure.core.messaging import CloudEvent

        event = CloudEvent(
            source=self.source,
            type=f"{EVENT_TYPE_PREFIX}{event_type}",
            subject=subject,
            # The same JSON the local publisher writes (non-JSON values as strings).
            data=json.loads(json.dumps(dict(data), default=str)),
            datacontenttype="application/json",
        )
        try:
            self._get_client().send([event], **self._options)
        except AzureError as exc:
            raise self._translate(exc, event_type) from None

    def close(self) -> None:
        """Close the HTTP session; a later publish opens a new one."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                from azure.eventgrid import EventGridPublisherClient

                _install_warning_filter()
                credential = self._credential
                if self._key:
                    from azure.core.credentials import AzureKeyCredential

                    credential = AzureKeyCredential(self._key)
                elif credential is None:
                    from azure.identity import DefaultAzureCredential

                    credential = self._credential = DefaultAzureCredential()
                self._client = EventGridPublisherClient(self.endpoint, credential)
                log.info("Event Grid publisher for %s (%s)", self._safe_endpoint, type(credential).__name__)
            return self._client

    def _translate(self, exc: Exception, event_type: str) -> Exception:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        if isinstance(exc, ResourceNotFoundError) and isinstance(exc.__cause__, HttpResponseError):
            # azure-eventgrid re-raises a 404 without its response, with advice for namespace topics.
            exc = exc.__cause__
        what = f"publishing {EVENT_TYPE_PREFIX}{event_type} to {self._safe_endpoint}"
        detail = f"{type(exc).__name__}: {self._redact(_reason(exc))}"
        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            return TransientError(f"{what} failed: the topic could not be reached, retry later ({detail})")
        status = getattr(exc, "status_code", None)
        if isinstance(exc, ResourceNotFoundError):
            status = 404
        if isinstance(exc, ClientAuthenticationError) and status is None:
            return PermanentError(
                f"{what} failed: no Azure credential could get a token for Event Grid: give the function app "
                f"a managed identity with the 'EventGrid Data Sender' role, or set {KEY_SETTING} ({detail})"
            )
        if status == 401:
            return PermanentError(
                f"{what} failed: the topic refused the credentials: check {KEY_SETTING} is one of the topic's "
                f"access keys, or that the identity has the 'EventGrid Data Sender' role on it ({detail})"
            )
        if status == 403:
            return PermanentError(
                f"{what} failed: forbidden: grant the function app's identity the 'EventGrid Data Sender' role "
                f"on the topic, and check the topic's network access rules ({detail})"
            )
        if status == 404:
            return PermanentError(
                f"{what} failed: no such topic: check {ENDPOINT_SETTING} is the custom topic's endpoint "
                f"(https://<topic>.<region>-1.eventgrid.azure.net/api/events) ({detail})"
            )
        if status == 413:
            return PermanentError(
                f"{what} failed: the event is over Event Grid's 1 MB limit: send less data ({detail})"
            )
        if isinstance(exc, HttpResponseError) and status is not None and (status in (408, 429) or status >= 500):
            return TransientError(f"{what} failed: Event Grid is throttling or unavailable, retry later ({detail})")
        if isinstance(exc, HttpResponseError) and status is not None:
            return PermanentError(f"{what} failed: Event Grid refused the event ({detail})")
        return TransientError(f"{what} failed, retry later ({detail})")

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


def _reason(exc: Exception) -> str:
    # HttpResponseError's text can run over many lines (the whole error body); the first says why.
    status = getattr(exc, "status_code", None)
    reason = getattr(exc, "reason", None)
    message = str(getattr(exc, "message", None) or exc).strip().splitlines()
    first = message[0] if message else ""
    prefix = f"{status} {reason}: " if status is not None and reason else ""
    return (prefix + first)[:300]
