"""The landing sweep over a long history: 100,000 landed files of which 10 are new, through Blob Storage's client.

``BlobLandingZone`` (azure-storage-blob's own ``ContainerClient``, pager and XML deserialiser) lists a
container served by a local HTTP server that answers List Blobs as the REST API documents it
(``EnumerationResults``: ``Blob`` with ``Properties``, ``BlobPrefix`` for a delimiter, ``NextMarker``, at
most 5,000 items a page), from a virtual container of 100,000 blobs; the server counts the requests and the
items it returned. The registry is MLflow's SQL store and the bus the local queues, wired by
``shared.bootstrap``. The sweep's watermark is an hour back, the 10 new files were written after it; the
figure is the wall time of ``sweep_landing`` (read the watermark, list, send 10 train commands, move the
watermark), with the storage calls and items it cost, in three layouts of the same 100,000 files:

- ``iris/<day>/``, 1,000 days of 100 files: the listing reads the partitions' names and the last two days;
- ``iris/<day>/``, 100 days of 1,000 files: the same, with ten times more files a day;
- ``iris/`` flat: no partition to skip, every name is listed (the cost without the layout).

The watermark is put back after each sample (untimed); the repeated sends are dropped by the local queue's
duplicate detection, as they would be on Service Bus. ``python -m bench.landing_sweep`` prints the rows.
"""

from __future__ import annotations

import bisect
import logging
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

from bench.host import CATALOGUE, MODEL
from bench.table import Row, median

if TYPE_CHECKING:
    from shared.services import Services

GOAL_SECONDS = 1.0
NEW = 10
TOTAL = 100_000
ACCOUNT = "benchlanding"
CONTAINER = "landing"
PAGE = 5000  # List Blobs' own maximum per page
# A fixed "now" late in the current UTC day: today's partition holds old files and the new ones.
NOW = datetime.now(UTC).replace(hour=23, minute=0, second=0, microsecond=0)
WATERMARK_AT = NOW - timedelta(hours=1)


# -- a container that answers List Blobs -----------------------------------------------------------------


@dataclass
class Container:
    """Blobs by name (sorted), each with its last-modified time; counts the List Blobs calls and items returned."""

    names: list[str]
    times: dict[str, datetime]
    requests: int = 0
    items: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, at: datetime) -> None:
        bisect.insort(self.names, name)
        self.times[name] = at

    def page(self, prefix: str, delimiter: str | None, marker: str | None, most: int) -> tuple[list[str], str | None]:
        """The names (and ``prefix/`` groups with a delimiter) of one page, and the next marker."""
        start = bisect.bisect_left(self.names, marker or prefix)
        found: list[str] = []
        index = start
        while index < len(self.names) and len(found) < most:
            name = self.names[index]
            if not name.startswith(prefix):
                break
            cut = name.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                group = name[: cut + len(delimiter or "")]
                found.append(group)
                # Past every name of the group: the next name that does not start with it.
                index = bisect.bisect_left(self.names, group[:-1] + chr(ord(group[-1]) + 1), index)
                continue
            found.append(name)
            index += 1
        more = index < len(self.names) and self.names[index].startswith(prefix)
        with self._lock:
            self.requests += 1
            self.items += len(found)
        return found, self.names[index] if more else None


def _xml(container: Container, base: str, query: dict[str, str]) -> bytes:
    prefix, delimiter = query.get("prefix", ""), query.get("delimiter")
    most = min(int(query.get("maxresults", PAGE)), PAGE)
    found, marker = container.page(prefix, delimiter, query.get("marker"), most)
    parts = [
        '<?xml version="1.0" encoding="utf-8"?>',
        f'<EnumerationResults ServiceEndpoint="{escape(base)}/" ContainerName="{CONTAINER}">',
        f"<Prefix>{escape(prefix)}</Prefix>",
        f"<MaxResults>{most}</MaxResults>",
    ]
    if delimiter:
        parts.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
    parts.append("<Blobs>")
    for name in found:
        if delimiter and name.endswith(delimiter):
            parts.append(f"<BlobPrefix><Name>{escape(name)}</Name></BlobPrefix>")
            continue
        at = container.times[name]
        stamp = format_datetime(at, usegmt=True)
        parts.append(
            f"<Blob><Name>{escape(name)}</Name><Properties><Creation-Time>{stamp}</Creation-Time>"
            f"<Last-Modified>{stamp}</Last-Modified><Etag>0x8DD{int(at.timestamp() * 1000):X}</Etag>"
            "<Content-Length>4551</Content-Length><Content-Type>text/csv</Content-Type>"
            "<BlobType>BlockBlob</BlobType><AccessTier>Hot</AccessTier><AccessTierInferred>true</AccessTierInferred>"
            "<LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState>"
            "<ServerEncrypted>true</ServerEncrypted></Properties><OrMetadata /></Blob>"
        )
    parts.append("</Blobs>")
    parts.append(f"<NextMarker>{escape(marker)}</NextMarker>" if marker else "<NextMarker />")
    parts.append("</EnumerationResults>")
    return "".join(parts).encode()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        if url.path != f"/{ACCOUNT}/{CONTAINER}" or query.get("comp") != "list":
            self.send_error(404)
            return
        body = _xml(self.server.container, f"http://127.0.0.1:{self.server.server_port}/{ACCOUNT}", query)
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-ms-version", self.headers.get("x-ms-version", "2025-01-05"))
        self.send_header("x-ms-request-id", "00000000-0000-0000-0000-000000000000")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, container: Container) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.container = container


# -- the layouts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How the files are named: day partitions of ``per_day`` files, or flat (``per_day`` 0)."""

    per_day: int

    def label(self, total: int) -> str:
        """The layout in words, for ``total`` files."""
        if not self.per_day:
            return "flat, no partitions"
        return f"day partitions, {-(-total // self.per_day):,} days x {self.per_day:,} files"


LAYOUTS = (Layout(100), Layout(1000), Layout(0))


def build(layout: Layout, total: int) -> tuple[Container, list[str]]:
    """The container's history (all older than the watermark) and its ``NEW`` files written after it."""
    names: list[str] = []
    times: dict[str, datetime] = {}
    today = NOW.replace(hour=0)
    for n in range(total):
        day = today - timedelta(days=n // layout.per_day) if layout.per_day else today - timedelta(days=n // 1000)
        at = day + timedelta(seconds=30 * (n % 1000))  # within the first nine hours of its day
        name = f"iris/{day.date().isoformat()}/batch-{n:06}.csv" if layout.per_day else f"iris/batch-{n:06}.csv"
        names.append(name)
        times[name] = at
    names.sort()
    container = Container(names, times)
    new = []
    for i in range(NEW):
        at = WATERMARK_AT + timedelta(minutes=10, seconds=i)
        name = f"iris/{NOW.date().isoformat()}/new-{i:02}.csv" if layout.per_day else f"iris/new-{i:02}.csv"
        container.add(name, at)
        new.append(name)
    return container, new


class _Counting:
    """A registry port that counts its calls."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if not callable(method):
            return method

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return method(*args, **kwargs)

        return counted


def services(root: Path) -> tuple[Services, _Counting]:
    """Services over an MLflow SQL store and local queues in ``root``, registry counted, clock at ``NOW``."""
    from shared.bootstrap import bootstrap
    from shared.settings import Settings

    state = root / "state"
    settings = Settings(  # type: ignore[call-arg]
        SIGNALBOX_STATE_DIR=state,
        SIGNALBOX_CATALOGUE=CATALOGUE,
        MLFLOW_TRACKING_URI=f"sqlite:///{(state / 'mlflow.db').resolve()}",
        SIGNALBOX_CODE_COMMIT="bench",
    )
    svc = bootstrap(settings)
    counting = _Counting(svc.registry)
    svc.registry = counting
    svc.clock = lambda: NOW
    return svc, counting


@dataclass(frozen=True)
class Sample:
    """One sweep: its wall time, storage calls and items, registry calls, files sent."""

    seconds: float
    storage_calls: int
    storage_items: int
    registry_calls: int
    sent: int


def sweep(svc: Services, counting: _Counting, container: Container) -> Sample:
    """One timed sweep of the bench model; the watermark is put back after it (untimed)."""
    from shared.handlers.landing_sweep import WATERMARK, sweep_landing

    entry = svc.catalogue.get(MODEL)
    counting.calls.clear()
    container.requests = container.items = 0
    started = time.perf_counter()
    counts = sweep_landing(entry, svc)
    elapsed = time.perf_counter() - started
    sample = Sample(elapsed, container.requests, container.items, sum(counting.calls.values()), counts["files_sent"])
    counting.inner.set_model_tag(MODEL, WATERMARK, WATERMARK_AT.isoformat())
    return sample


def measure(svc: Services, counting: _Counting, layout: Layout, total: int, repeats: int) -> list[Sample]:
    """``repeats`` sweeps of one layout, served by its own List Blobs server."""
    from shared.adapters.azure.landing import BlobLandingZone
    from shared.handlers.landing_sweep import WATERMARK

    container, _ = build(layout, total)
    server = _Server(container)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        svc.landing = BlobLandingZone(None, account_url=f"http://127.0.0.1:{server.server_port}/{ACCOUNT}")
        counting.inner.set_model_tag(MODEL, WATERMARK, WATERMARK_AT.isoformat())
        return [sweep(svc, counting, container) for _ in range(repeats)]
    finally:
        server.shutdown()
        server.server_close()


def run(quick: bool) -> list[Row]:
    """Median sweep time, storage calls and items per layout."""
    total, repeats = (2_000, 2) if quick else (TOTAL, 7)
    logging.getLogger("signalbox").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="signalbox-bench-") as tmp:
        svc, counting = services(Path(tmp))
        measure(svc, counting, LAYOUTS[0], 1000, 1)  # pays for lazy imports and connections
        for layout in LAYOUTS:
            # Listing every name without partitions takes minutes: one sample says enough.
            samples = measure(svc, counting, layout, total, repeats if layout.per_day else 1)
            rows.append(_row(layout, total, samples))
    return rows


def _row(layout: Layout, total: int, samples: list[Sample]) -> Row:
    if any(s.sent != NEW for s in samples):
        raise RuntimeError(f"{layout.label(total)}: the sweep did not send the {NEW} new files: {samples}")
    seconds = median([s.seconds for s in samples])
    last = samples[-1]
    if layout.per_day:
        # The partitions' names, then the files of the last two days (the watermark's day and one of slack).
        bound = -(-total // layout.per_day) + 2 * layout.per_day + NEW
        goal = f"<= {GOAL_SECONDS:.0f} s, <= {bound:,} items (partitions + 2 days)"
        met: bool | None = seconds <= GOAL_SECONDS and last.storage_items <= bound
    else:
        goal, met = "report: the cost without partitions", None
    return Row(
        f"landing sweep, {total:,} files ({NEW} new), {layout.label(total)}",
        f"{seconds * 1000:.0f} ms, {last.storage_calls} storage calls, {last.storage_items:,} items listed, "
        f"{last.registry_calls} registry calls",
        goal=goal,
        met=met,
    )


if __name__ == "__main__":
    import sys

    from bench.table import render

    print(render(run(quick="--quick" in sys.argv), quick="--quick" in sys.argv))
