"""Inbound Event Grid events: typed views of the events Signalbox acts on.

The Python worker binds one event per invocation: ``azure.functions.EventGridEvent`` on an Event Grid
schema subscription, ``azure.functions.CloudEvent`` on a CloudEvents 1.0 one.
:meth:`InboundEvent.from_function_event` reads either; :func:`interpret` turns the result into a typed
event (:class:`BlobCreated`, :class:`ModelRegistered`, :class:`RunCompleted`, :class:`RunStatusChanged`,
:class:`DatasetDriftDetected`, :class:`DriftAlert`), or ``None`` for a type Signalbox does not act on.
Anything malformed raises :class:`InvalidEvent`, whose message names the field. (Whole HTTP deliveries and
the subscription handshake are the host's business: see ``signalbox/localhost/eventgrid.py`` locally.)

This module imports only the standard library: the function app imports it at cold start.

Signalbox's own CloudEvent: ``io.signalbox.drift.detected``
-------------------------------------------------------------

A drift monitor tells Signalbox that a model's inputs or predictions drifted by publishing this CloudEvent
(CloudEvents 1.0, JSON) to the Event Grid topic Signalbox subscribes to. ``source`` is any URI naming the
monitor. ``data.model_name`` is required; ``metric``, ``score`` and ``threshold`` are optional and only
reported. The same event in Event Grid schema (``eventType`` = the same type) is accepted too. ``time``, when
present, must be UTC ("Z" or "+00:00") or carry no offset: the azure-functions converter fails the
invocation on any other offset, before Signalbox sees the event (Event Grid then retries it). Example::

    {
      "specversion": "1.0",
      "type": "io.signalbox.drift.detected",
      "source": "/signalbox/drift-monitor",
      "id": "5f0c7a3e-8c1d-4b7e-9a51-2d4c6e8f1a20",
      "time": "2026-11-23T08:30:00Z",
      "subject": "models/iris-classifier",
      "datacontenttype": "application/json",
      "data": {
        "model_name": "iris-classifier",
        "metric": "psi",
        "score": 0.31,
        "threshold": 0.2
      }
    }
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias
from urllib.parse import unquote, urlsplit

from shared.errors import InvalidInput

__all__ = [
    "BLOB_CREATED_TYPE",
    "CLOUDEVENTS_SPECVERSION",
    "DATASET_DRIFT_DETECTED_TYPE",
    "DRIFT_ALERT_TYPE",
    "MODEL_REGISTERED_TYPE",
    "RUN_COMPLETED_TYPE",
    "RUN_STATUS_CHANGED_TYPE",
    "BlobCreated",
    "DatasetDriftDetected",
    "DriftAlert",
    "InboundEvent",
    "InvalidEvent",
    "KnownEvent",
    "ModelRegistered",
    "RunCompleted",
    "RunStatusChanged",
    "Schema",
    "interpret",
    "parse_time",
]

DRIFT_ALERT_TYPE = "io.signalbox.drift.detected"
BLOB_CREATED_TYPE = "Microsoft.Storage.BlobCreated"
MODEL_REGISTERED_TYPE = "Microsoft.MachineLearningServices.ModelRegistered"
RUN_COMPLETED_TYPE = "Microsoft.MachineLearningServices.RunCompleted"
RUN_STATUS_CHANGED_TYPE = "Microsoft.MachineLearningServices.RunStatusChanged"
DATASET_DRIFT_DETECTED_TYPE = "Microsoft.MachineLearningServices.DatasetDriftDetected"

CLOUDEVENTS_SPECVERSION = "1.0"

Schema: TypeAlias = Literal["eventgrid", "cloudevents"]

# Azure sends 7 fractional digits (100 ns ticks); datetime holds 6.
_EXTRA_FRACTION = re.compile(r"(\.\d{6})\d+")
_BLOB_SUBJECT = re.compile(r"^/?blobServices/default/containers/(?P<container>[^/]+)/blobs/(?P<path>.+)$")
_STORAGE_ACCOUNT = re.compile(r"/storageAccounts/(?P<name>[^/]+)", re.IGNORECASE)
_WORKSPACE = re.compile(r"/workspaces/(?P<name>[^/]+)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_BLOB_NAME = 1024  # Azure Storage's limit on a blob name
_MAX_VERSION = 2**31 - 1


class InvalidEvent(InvalidInput):
    """A delivery or event that is not valid; ``field`` names what is wrong, ``problem`` says how."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class InboundEvent:
    """One event of a delivery, in either schema; ``source`` is the Event Grid ``topic`` or CloudEvents ``source``."""

    id: str
    type: str
    source: str
    subject: str
    time: datetime | None
    data: Any
    data_version: str | None
    schema: Schema

    @classmethod
    def from_function_event(cls, event: Any) -> InboundEvent:
        """Build from the ``azure.functions.CloudEvent`` or ``azure.functions.EventGridEvent`` the worker bound.

        The worker's converter binds a ``CloudEvent`` when the event carries ``specversion`` (a CloudEvents
        subscription) and an ``EventGridEvent`` otherwise; it checks nothing, so every attribute may be
        missing (None) or of any JSON type here, and is checked.
        """
        if hasattr(event, "specversion"):
            specversion = event.specversion
            if specversion != CLOUDEVENTS_SPECVERSION:
                raise InvalidEvent("event.specversion", f"unsupported CloudEvents version {specversion!r} (only 1.0)")
            data = event.get_json()
            extensions = getattr(event, "extension_attrs", None) or {}
            if data is None and "data_base64" in extensions:
                data = _base64_data(extensions["data_base64"])
            return cls(
                id=_required_attr(event, "id"),
                type=_required_attr(event, "type"),
                source=_required_attr(event, "source"),
                subject=_optional_attr(event, "subject") or "",
                time=_worker_time(getattr(event, "time", None), "event.time"),
                data=data,
                data_version=None,
                schema="cloudevents",
            )
        return cls(
            id=_required_attr(event, "id"),
            type=_required_attr(event, "event_type"),
            source=_optional_attr(event, "topic") or "",
            subject=_optional_attr(event, "subject") or "",
            time=_worker_time(getattr(event, "event_time", None), "event.event_time"),
            data=event.get_json(),
            data_version=_optional_attr(event, "data_version"),
            schema="eventgrid",
        )


def _required_attr(event: Any, name: str) -> str:
    value = getattr(event, name, None)
    if value is None or value == "":
        raise InvalidEvent(f"event.{name}", "missing")
    if not isinstance(value, str):
        raise InvalidEvent(f"event.{name}", "not a string")
    return value


def _optional_attr(event: Any, name: str) -> str | None:
    value = getattr(event, name, None)
    if value is not None and not isinstance(value, str):
        raise InvalidEvent(f"event.{name}", "not a string")
    return value


def _base64_data(encoded: Any) -> bytes:
    if not isinstance(encoded, str):
        raise InvalidEvent("event.data_base64", "not a string")
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise InvalidEvent("event.data_base64", "not valid base64") from None


# -- typed views -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlobCreated:
    """``Microsoft.Storage.BlobCreated``: a blob was written (a landing batch, typically)."""

    event_id: str
    url: str
    account: str | None
    container: str
    blob_path: str
    content_length: int | None
    content_type: str | None
    etag: str | None
    api: str | None


@dataclass(frozen=True)
class ModelRegistered:
    """``Microsoft.MachineLearningServices.ModelRegistered``: a model version was registered."""

    event_id: str
    model_name: str
    model_version: str
    tags: dict[str, Any]
    properties: dict[str, Any]
    workspace: str | None


@dataclass(frozen=True)
class _RunEvent:
    """The fields Azure ML's run events share."""

    event_id: str
    experiment_id: str | None
    experiment_name: str | None
    run_id: str
    run_type: str | None
    run_status: str
    tags: dict[str, Any]
    properties: dict[str, Any]
    workspace: str | None


@dataclass(frozen=True)
class RunCompleted(_RunEvent):
    """``Microsoft.MachineLearningServices.RunCompleted``: a run finished successfully."""


@dataclass(frozen=True)
class RunStatusChanged(_RunEvent):
    """``Microsoft.MachineLearningServices.RunStatusChanged``: a run moved to ``run_status``."""


@dataclass(frozen=True)
class DatasetDriftDetected:
    """``Microsoft.MachineLearningServices.DatasetDriftDetected``: an Azure ML dataset monitor found drift."""

    event_id: str
    data_drift_id: str
    data_drift_name: str
    run_id: str | None
    base_dataset_id: str | None
    target_dataset_id: str | None
    drift_coefficient: float | None
    start_time: datetime | None
    end_time: datetime | None
    workspace: str | None


@dataclass(frozen=True)
class DriftAlert:
    """``io.signalbox.drift.detected``: Signalbox's own drift CloudEvent (see the module docstring)."""

    event_id: str
    model_name: str
    metric: str | None
    score: float | None
    threshold: float | None
    source: str


KnownEvent: TypeAlias = (
    BlobCreated | ModelRegistered | RunCompleted | RunStatusChanged | DatasetDriftDetected | DriftAlert
)


# -- interpreting an event -------------------------------------------------------------------------


def interpret(event: InboundEvent) -> KnownEvent | None:
    """The typed view of ``event``, or None for a type Signalbox does not act on.

    Raises :class:`InvalidEvent` naming the field when a known type lacks a required field.
    """
    # Event Grid matches event types case-insensitively in its filters; do the same.
    kind = event.type.casefold()
    if kind == BLOB_CREATED_TYPE.casefold():
        return _blob_created(event)
    if kind == MODEL_REGISTERED_TYPE.casefold():
        return _model_registered(event)
    if kind == RUN_COMPLETED_TYPE.casefold():
        return RunCompleted(**_run_fields(event, status_required=False))
    if kind == RUN_STATUS_CHANGED_TYPE.casefold():
        return RunStatusChanged(**_run_fields(event, status_required=True))
    if kind == DATASET_DRIFT_DETECTED_TYPE.casefold():
        return _dataset_drift_detected(event)
    if kind == DRIFT_ALERT_TYPE.casefold():
        return _drift_alert(event)
    return None


def _blob_created(event: InboundEvent) -> BlobCreated:
    data = _data(event)
    url = _required(data, "url")
    match = _BLOB_SUBJECT.match(event.subject)
    from_url = _blob_url_parts(url)
    if match is not None:
        container, blob_path = unquote(match["container"]), unquote(match["path"])
    elif from_url is not None:
        container, blob_path = from_url[1], from_url[2]
    else:
        raise InvalidEvent("subject", "not /blobServices/default/containers/{container}/blobs/{path}")
    account_match = _STORAGE_ACCOUNT.search(event.source)
    account = account_match["name"] if account_match else (from_url[0] if from_url else None)
    _check_blob(container, blob_path)
    _check_blob_url(url, container, blob_path, account if account_match else None)
    return BlobCreated(
        event_id=event.id,
        url=url,
        account=account,
        container=container,
        blob_path=blob_path,
        content_length=_integer(data, "contentLength"),
        content_type=_text(data, "contentType"),
        etag=_text(data, "eTag"),
        api=_text(data, "api"),
    )


def _model_registered(event: InboundEvent) -> ModelRegistered:
    data = _data(event)
    return ModelRegistered(
        event_id=event.id,
        model_name=_required(data, "ModelName"),
        model_version=_model_version(data),
        tags=_mapping(data, "ModelTags"),
        properties=_mapping(data, "ModelProperties"),
        workspace=_workspace(event),
    )


def _run_fields(event: InboundEvent, *, status_required: bool) -> dict[str, Any]:
    data = _data(event)
    # RunCompleted carries no runStatus: its status is implied by its type.
    status = _required(data, "runStatus") if status_required else (_text(data, "runStatus") or "Completed")
    return {
        "event_id": event.id,
        "experiment_id": _text(data, "experimentId"),
        "experiment_name": _text(data, "experimentName"),
        "run_id": _required(data, "runId"),
        "run_type": _text(data, "runType"),
        "run_status": status,
        "tags": _mapping(data, "runTags"),
        "properties": _mapping(data, "runProperties"),
        "workspace": _workspace(event),
    }


def _dataset_drift_detected(event: InboundEvent) -> DatasetDriftDetected:
    data = _data(event)
    return DatasetDriftDetected(
        event_id=event.id,
        data_drift_id=_required(data, "DataDriftId"),
        data_drift_name=_required(data, "DataDriftName"),
        run_id=_text(data, "RunId"),
        base_dataset_id=_text(data, "BaseDatasetId"),
        target_dataset_id=_text(data, "TargetDatasetId"),
        drift_coefficient=_number(data, "DriftCoefficient"),
        start_time=_time(data, "StartTime"),
        end_time=_time(data, "EndTime"),
        workspace=_workspace(event),
    )


def _drift_alert(event: InboundEvent) -> DriftAlert:
    data = _data(event)
    return DriftAlert(
        event_id=event.id,
        model_name=_required(data, "model_name"),
        metric=_text(data, "metric"),
        score=_number(data, "score"),
        threshold=_number(data, "threshold"),
        source=event.source,
    )


# -- reading data fields ---------------------------------------------------------------------------


def _lookup(data: Mapping[str, Any], name: str) -> Any:
    """``data[name]`` matched case-insensitively (None when absent): Azure ML mixes PascalCase and camelCase."""
    if name in data:
        return data[name]
    folded = name.casefold()
    for key, value in data.items():
        if isinstance(key, str) and key.casefold() == folded:
            return value
    return None


def _data(event: InboundEvent) -> Mapping[str, Any]:
    if not isinstance(event.data, Mapping):
        raise InvalidEvent("data", "not a JSON object")
    return event.data


def _text(data: Mapping[str, Any], name: str) -> str | None:
    value = _lookup(data, name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"data.{name}", "not a string")
    return value


def _required(data: Mapping[str, Any], name: str) -> str:
    value = _text(data, name)
    if value is None:
        raise InvalidEvent(f"data.{name}", "missing")
    return value


def _model_version(data: Mapping[str, Any]) -> str:
    value = _lookup(data, "ModelVersion")
    if value is None or value == "":
        raise InvalidEvent("data.ModelVersion", "missing")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidEvent("data.ModelVersion", "not a string or integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise InvalidEvent("data.ModelVersion", f"not an integer: {value!r}")
        value = int(value)
    text = str(value)
    # Registries keep version numbers in 32-bit columns; a bigger one would fail there, not here.
    if len(text) > 64 or _CONTROL.search(text) or (text.isascii() and text.isdigit() and int(text) > _MAX_VERSION):
        raise InvalidEvent("data.ModelVersion", f"not a version number: {text[:64]!r}")
    if text.isascii() and text.isdigit():
        from shared.domain import version_number  # standard library only, like this module

        try:
            return version_number(text)  # one spelling per version number ("01" is "1")
        except ValueError:
            raise InvalidEvent("data.ModelVersion", f"not a version number: {text!r}") from None
    return text  # Azure ML also names versions with text ("1.2")


def _mapping(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = _lookup(data, name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidEvent(f"data.{name}", "not a JSON object")
    return dict(value)


def _integer(data: Mapping[str, Any], name: str) -> int | None:
    value = _lookup(data, name)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise InvalidEvent(f"data.{name}", f"not an integer: {value!r}")


def _number(data: Mapping[str, Any], name: str) -> float | None:
    value = _lookup(data, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidEvent(f"data.{name}", f"not a number: {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidEvent(f"data.{name}", f"not a number: {value!r}") from None
    if not math.isfinite(number):
        raise InvalidEvent(f"data.{name}", f"not a finite number: {value!r}")
    return number


def _time(data: Mapping[str, Any], name: str) -> datetime | None:
    text = _text(data, name)
    if text is None:
        return None
    parsed = parse_time(text)
    if parsed is None:
        raise InvalidEvent(f"data.{name}", f"not an ISO 8601 time: {text!r}")
    return parsed


def _workspace(event: InboundEvent) -> str | None:
    match = _WORKSPACE.search(event.source)
    return match["name"] if match else None


def _blob_url_parts(url: str) -> tuple[str | None, str, str] | None:
    """(account, container, blob path) from a blob URL, or None when it has no container and path."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    segments = parts.path.lstrip("/").split("/")
    if _is_local_host(host):
        # Azurite and other emulators put the account first in the path: http://127.0.0.1:10000/{account}/...
        account: str | None = segments.pop(0) if segments and segments[0] else None
    else:
        account = host.split(".", 1)[0] or None
    if len(segments) < 2 or not segments[0] or not segments[-1]:
        return None
    return account, unquote(segments[0]), unquote("/".join(segments[1:]))


def _check_blob(container: str, blob_path: str) -> None:
    """Refuse a blob name that could climb out of its container when it becomes a path (``..``, ``/x``, ``\\``)."""
    if not container or container in (".", "..") or "/" in container or "\\" in container or _CONTROL.search(container):
        raise InvalidEvent("subject", f"not a container name: {container!r}")
    if len(blob_path) > _MAX_BLOB_NAME:
        raise InvalidEvent("subject", f"blob name longer than {_MAX_BLOB_NAME} characters")
    if blob_path.startswith("/") or "\\" in blob_path or _CONTROL.search(blob_path):
        raise InvalidEvent("subject", f"blob name {blob_path!r} is absolute or has a backslash or control character")
    if any(segment in (".", "..") for segment in blob_path.split("/")):
        raise InvalidEvent("subject", f"blob name {blob_path!r} has a '.' or '..' segment")


def _check_blob_url(url: str, container: str, blob_path: str, account: str | None) -> None:
    """The URL Signalbox will read must be the blob the subject names, in the topic's account."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http", "file"):
        raise InvalidEvent("data.url", f"not an http(s) or file URL: {url[:200]!r}")
    if scheme == "file" and parts.netloc not in ("", "localhost"):
        raise InvalidEvent("data.url", f"a file URL on another machine: {url[:200]!r}")
    path = unquote(parts.path)
    if "\\" in path or _CONTROL.search(path) or any(s in (".", "..") for s in path.split("/")):
        raise InvalidEvent(
            "data.url", f"path has a '.' or '..' segment, a backslash or a control character: {url[:200]!r}"
        )
    if not path.endswith(f"/{container}/{blob_path}"):
        raise InvalidEvent("data.url", f"names another blob than the subject ({container}/{blob_path[:200]})")
    host = (parts.hostname or "").lower()
    if not account or scheme == "file":
        return
    # The blob endpoint is https://<account>.blob.core.windows.net; emulators put the account in the path.
    local = _is_local_host(host)
    if (local and not path.lower().startswith(f"/{account.lower()}/")) or (
        not local and host.split(".", 1)[0] != account.lower()
    ):
        raise InvalidEvent("data.url", f"{host}{path[:200]} is not in the storage account {account!r} of the topic")


def _is_local_host(host: str) -> bool:
    if host == "localhost" or "." not in host:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# -- times -----------------------------------------------------------------------------------------


def parse_time(text: str) -> datetime | None:
    """An aware UTC datetime from ISO 8601 text ("Z", 7 fractional digits and no offset accepted), else None."""
    normalized = text.strip()
    if normalized[-1:] in ("Z", "z"):
        normalized = normalized[:-1] + "+00:00"
    normalized = _EXTRA_FRACTION.sub(r"\1", normalized, count=1)
    try:
        parsed = datetime.fromisoformat(normalized)
    except ValueError:
        return None
    return _aware(parsed)


def _worker_time(value: Any, field: str) -> datetime | None:
    """A time bound by the worker (a datetime, or ISO 8601 text from a hand-made event) as aware UTC."""
    if value is None or isinstance(value, datetime):
        return _aware(value)
    if isinstance(value, str):
        parsed = parse_time(value)
        if parsed is not None:
            return parsed
    raise InvalidEvent(field, f"not a time: {value!r}")


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    # Azure ML writes some times without an offset; they are UTC.
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
