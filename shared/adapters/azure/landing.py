"""The landing zone in Azure: blobs in the landing storage account, read with the managed identity.

Each failure is sorted by what Event Grid should do next. ``land_blob`` refuses the data on
``OSError`` (``DataRefused``, 200: Event Grid never delivers that event again); the function fails
on ``TransientError`` (500: Event Grid redelivers with backoff for 24 h, then dead-letters).

- 404 (``BlobNotFound``, ``ContainerNotFound``): the data is not there, no retry brings it back →
  ``OSError``.
- Everything else → ``TransientError``: 429 and 503 throttling, other 5xx, timeouts and refused
  connections, a token the credential could not get, and 401/403 too. A new role assignment takes
  minutes to reach the data plane, and a refusal would drop the data for good; a 403 that never heals
  ends, after Event Grid's last try (30 attempts or 24 h, infra/modules/subscriptions.bicep), in its
  dead-letter container, where an operator sees it. Other 4xx (400, 409, 412) and a credential with
  nothing to sign in with mean a request or configuration to fix, not bad data: the same rule.

The SDK's own retries are bounded so one delivery stays under Event Grid's 30 s: at most
``retry_total + 1`` attempts, each at most ``connection_timeout + read_timeout`` seconds, with
a pause of 0 to ``2 * retry_backoff`` seconds between them (defaults: 3 attempts, at most 8 s
each, 4 s of pauses: 28 s). Event Grid's redelivery is the long retry.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any, NoReturn
from urllib.parse import quote

from shared.adapters.local.landing import oldest
from shared.errors import PermanentError, TransientError
from shared.ports import LandedFile

# A date partition as the first path segment under a prefix: 2026-12-06/ or dt=2026-12-06/.
_DAY = re.compile(r"(?:[A-Za-z_]+=)?(\d{4})-(\d{2})-(\d{2})")
# One day of slack below the watermark's day covers producers that name partitions by a local day.
_DAY_SLACK = timedelta(days=1)


def _redact(text: str) -> str:
    """The first line of an SDK message, without query strings (a SAS signature lives there)."""
    first = (text.strip().splitlines() or [""])[0]
    return re.sub(r"\?\S*", "?…", first)[:200]


def _raise_for(exc: Exception, what: str) -> NoReturn:
    """Raise ``OSError`` when ``what`` is definitely not there, ``TransientError`` otherwise."""
    status = getattr(exc, "status_code", None)
    code = getattr(exc, "error_code", None)
    code = getattr(code, "value", code)  # StorageErrorCode is a str enum; a bare header is a str
    if status == 404:
        raise OSError(f"{what} cannot be read: {code or 'not found'}") from None
    if status is not None:
        hint = " (a new role assignment takes minutes to propagate)" if status in (401, 403) else ""
        raise TransientError(f"{what}: the storage account answered {status} {code or ''}".rstrip() + hint) from exc
    raise TransientError(f"{what}: {type(exc).__name__}: {_redact(str(exc))}") from exc


class BlobLandingZone:
    """Reads landed blobs' sizes from their URLs and lists what landed in a container.

    ``credential`` defaults to ``DefaultAzureCredential`` for ``https`` URLs (the managed identity in
    Azure); tests pass the storage emulator's shared key or a token credential of their own.
    ``account_url`` (``https://ACCOUNT.blob.core.windows.net``) is needed only by ``list_since``.
    ``ca_bundle`` trusts a test server's self-signed certificate; production keeps the system store.
    """

    def __init__(
        self,
        credential: Any = None,
        *,
        account_url: str | None = None,
        retry_total: int = 2,
        retry_backoff: int = 1,
        connection_timeout: float = 3.0,
        read_timeout: float = 5.0,
        ca_bundle: str | None = None,
    ) -> None:
        self._credential = credential
        self.account_url = account_url.rstrip("/") if account_url else None
        self.retry_total = retry_total
        self.retry_backoff = retry_backoff
        self.connection_timeout = connection_timeout
        self.read_timeout = read_timeout
        self.ca_bundle = ca_bundle

    def _credential_for(self, uri: str) -> Any:
        if self._credential is None and uri.startswith("https://"):
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        return self._credential

    def _options(self, uri: str) -> dict[str, Any]:
        from azure.storage.blob import LinearRetry

        options: dict[str, Any] = {
            "credential": self._credential_for(uri),
            # Storage's default is 3 exponential retries from 15 s and 300 s timeouts: minutes per call.
            "retry_policy": LinearRetry(
                backoff=self.retry_backoff, random_jitter_range=self.retry_backoff, retry_total=self.retry_total
            ),
            "connection_timeout": self.connection_timeout,
            "read_timeout": self.read_timeout,
        }
        if self.ca_bundle:
            options["connection_verify"] = self.ca_bundle
        return options

    def size(self, uri: str) -> int:
        """Bytes in the blob; ``OSError`` when it is not there, ``TransientError`` when it may be later."""
        from azure.core.exceptions import AzureError
        from azure.storage.blob import BlobClient

        what = f"blob {uri.split('?', 1)[0]}"
        try:
            client = BlobClient.from_blob_url(uri, **self._options(uri))
        except ValueError as exc:  # not a blob URL at all: no retry makes it one
            raise OSError(f"{what} cannot be read: {exc}") from None
        try:
            return int(client.get_blob_properties().size)
        except AzureError as exc:
            _raise_for(exc, what)

    def list_since(self, container: str, prefix: str, after: datetime | None, limit: int) -> list[LandedFile]:
        """Blobs under ``prefix`` last modified after ``after``, oldest first (see ``LandingZone``).

        A listing reads every blob name under the prefix (5,000 a page). When the first segment
        under a ``/``-ending prefix is a day (``2026-12-06/`` or ``dt=2026-12-06/``), partitions more
        than a day older than ``after`` are skipped unread, so a sweep costs the partitions' count
        plus the blobs of the last days; that assumes producers write into the day they upload.
        ``OSError`` when the container is not there, ``TransientError`` when it may work later,
        ``PermanentError`` without an account URL.
        """
        from azure.core.exceptions import AzureError
        from azure.storage.blob import ContainerClient

        if self.account_url is None:
            # A configuration to fix, not a retry: the landing sweep cannot list without the account.
            raise PermanentError(
                "the landing zone has no account URL to list containers with "
                "(set SIGNALBOX_LANDING_ACCOUNT_URL=https://ACCOUNT.blob.core.windows.net)"
            )
        if after is not None and after.tzinfo is None:
            raise ValueError("after must be timezone-aware")
        client = ContainerClient(self.account_url, container, **self._options(self.account_url))
        base = f"{self.account_url}/{quote(container)}"
        try:
            blobs = self._blobs(client, prefix, after)
            found = (
                LandedFile(
                    uri=f"{base}/{quote(blob.name, safe='~/')}",
                    container=container,
                    path=blob.name,
                    size=int(blob.size),
                    last_modified=blob.last_modified.astimezone(UTC),
                    etag=blob.etag,
                )
                for blob in blobs
                if after is None or blob.last_modified > after
            )
            return oldest(found, limit)
        except AzureError as exc:
            _raise_for(exc, f"container {base}")

    @staticmethod
    def _blobs(client: Any, prefix: str, after: datetime | None) -> Iterator[Any]:
        if after is None or (prefix and not prefix.endswith("/")):
            yield from client.list_blobs(name_starts_with=prefix or None)
            return
        from azure.storage.blob import BlobPrefix

        first_day = (after.astimezone(UTC) - _DAY_SLACK).date()
        for item in client.walk_blobs(name_starts_with=prefix or None, delimiter="/"):
            if not isinstance(item, BlobPrefix):
                yield item  # a blob right under the prefix
                continue
            day = _partition_day(item.name[len(prefix) :].rstrip("/"))
            if day is not None and day < first_day:
                continue
            yield from client.list_blobs(name_starts_with=item.name)


def _partition_day(segment: str) -> date | None:
    """The day a partition folder names, or ``None`` for any other folder."""
    match = _DAY.fullmatch(segment)
    if match is None:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:  # 2026-13-45 is a folder name, not a day
        return None
