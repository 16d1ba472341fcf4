"""Event Grid's dead-letter container in Azure Storage, read and settled with azure-storage-blob.

The container is the one infra gives every subscription (``infra/modules/functionapp.bicep``,
``SIGNALBOX_EVENTGRID_DEADLETTER_CONTAINER_URL``); the app's identity holds Storage Blob Data
Owner on that account (``infra/modules/roles.bicep``), which covers list, read, lease, write and
delete. A run leases a blob (60 s, renewed by nothing: one blob's events are delivered well within
it) before it replays or purges its events; the rewrite and the delete carry the lease, so a run
whose lease lapsed fails instead of clobbering another's work. The replay counts are small blobs
``signalbox-replays/<function>/<event id>.json`` in the same container, the count in their metadata
(``replaycount``) so one listing reads them all.

Errors: the SDK's ``HttpResponseError`` becomes ``TransientError`` (the operation reports the
dead letter as failed and it stays in place); a blob that is gone is ``None`` / skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import quote, unquote

from shared.deadletters.eventgrid import REPLAYS_PREFIX, StoredBlob
from shared.errors import TransientError

LEASE_SECONDS = 60


def _raise(exc: Exception, what: str) -> NoReturn:
    status = getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None)
    code = getattr(code, "value", code)
    detail = f"{status} {code or ''}".strip() if status is not None else type(exc).__name__
    hint = " (the app's identity needs Storage Blob Data Contributor on it)" if status in (401, 403) else ""
    raise TransientError(f"{what}: the storage account answered {detail}{hint}") from exc


class BlobEventGridDeadLetters:
    """The dead-letter container at ``container_url`` (``https://ACCOUNT.blob.core.windows.net/CONTAINER``).

    ``credential`` defaults to ``DefaultAzureCredential`` (the managed identity in Azure); tests pass
    the storage emulator's shared key.
    """

    def __init__(self, container_url: str, credential: Any = None, **client: Any) -> None:
        if not container_url.startswith(("https://", "http://")):
            raise ValueError(f"the dead-letter container URL must be http(s), got {container_url!r}")
        self.where = container_url.split("?", 1)[0]
        self._url, self._credential, self._client_options = container_url, credential, client
        self._client: Any = None

    @property
    def _container(self) -> Any:
        # Built on first use: the SDK is imported by an operation, never by bootstrap (cold start).
        if self._client is None:
            from azure.storage.blob import ContainerClient

            credential = self._credential
            if credential is None:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
            self._client = ContainerClient.from_container_url(self._url, credential=credential, **self._client_options)
        return self._client

    def blobs(self) -> Iterator[StoredBlob]:
        from azure.core.exceptions import HttpResponseError

        try:
            for blob in self._container.list_blobs():
                if blob.name.startswith(REPLAYS_PREFIX):
                    continue
                yield StoredBlob(blob.name, blob.last_modified)
        except HttpResponseError as exc:
            _raise(exc, f"listing {self.where}")

    def read(self, name: str) -> bytes | None:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            return bytes(self._container.download_blob(name).readall())
        except ResourceNotFoundError:
            return None
        except HttpResponseError as exc:
            _raise(exc, f"reading {name}")

    def lock(self, name: str) -> str | None:
        from azure.core.exceptions import HttpResponseError

        try:
            lease = self._container.get_blob_client(name).acquire_lease(lease_duration=LEASE_SECONDS)
        except HttpResponseError as exc:
            # 404: settled meanwhile; 409 LeaseAlreadyPresent: another run holds it.
            if exc.status_code in (404, 409):
                return None
            _raise(exc, f"leasing {name}")
        return str(lease.id)

    def replace(self, name: str, data: bytes, lease: str) -> None:
        from azure.core.exceptions import HttpResponseError

        try:
            self._container.get_blob_client(name).upload_blob(data, overwrite=True, lease=lease)
        except HttpResponseError as exc:
            _raise(exc, f"rewriting {name}")

    def delete(self, name: str, lease: str) -> None:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            self._container.get_blob_client(name).delete_blob(lease=lease)
        except ResourceNotFoundError:
            return
        except HttpResponseError as exc:
            _raise(exc, f"deleting {name}")

    def release(self, name: str, lease: str) -> None:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
        from azure.storage.blob import BlobLeaseClient

        try:
            BlobLeaseClient(self._container.get_blob_client(name), lease_id=lease).release()
        except ResourceNotFoundError:
            return  # deleted: nothing to give back
        except HttpResponseError as exc:
            _raise(exc, f"releasing the lease on {name}")

    @staticmethod
    def _count_name(key: str) -> str:
        owner, _, event_id = key.partition("/")
        return f"{REPLAYS_PREFIX}{owner}/{quote(event_id, safe='')}.json"

    @staticmethod
    def _count_of(metadata: Any) -> int:
        value = str((metadata or {}).get("replaycount", "0"))
        return int(value) if value.isdigit() else 0

    def replay_counts(self) -> dict[str, int]:
        from azure.core.exceptions import HttpResponseError

        out: dict[str, int] = {}
        try:
            for blob in self._container.list_blobs(name_starts_with=REPLAYS_PREFIX, include=["metadata"]):
                owner, _, file = blob.name[len(REPLAYS_PREFIX) :].partition("/")
                out[f"{owner}/{unquote(file.removesuffix('.json'))}"] = self._count_of(blob.metadata)
        except HttpResponseError as exc:
            _raise(exc, "reading the replay counts")
        return out

    def replay_count(self, key: str) -> int:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            return self._count_of(self._container.get_blob_client(self._count_name(key)).get_blob_properties().metadata)
        except ResourceNotFoundError:
            return 0
        except HttpResponseError as exc:
            _raise(exc, f"reading the replay count of {key}")

    def set_replay_count(self, key: str, count: int) -> None:
        from azure.core.exceptions import HttpResponseError

        name = self._count_name(key)
        entry = {"key": key, "replay_count": count, "at": datetime.now(UTC).isoformat()}
        try:
            self._container.upload_blob(
                name, json.dumps(entry).encode(), overwrite=True, metadata={"replaycount": str(count)}
            )
        except HttpResponseError as exc:
            _raise(exc, f"writing the replay count {name}")
