"""The landing sweep over fakes: a lost BlobCreated still trains its file, once; a sweep costs O(new files)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from shared import domain, handlers
from shared.catalogue import load_catalogue
from shared.contracts import Envelope, message_id_for
from shared.events import BlobCreated, interpret
from shared.handlers.ingress import landing_cause
from shared.handlers.landing_sweep import OVERLAP, WATERMARK, sweep_landing
from shared.ports import LandedFile
from signalbox.localhost.eventgrid import parse_delivery
from tests.fakes import REPO, FakeBus, FakeCompute, FakeRegistry, services

MODEL = "iris-classifier"
ACCOUNT_URL = "https://signalboxlanding.blob.core.windows.net"
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # the fakes' clock


@dataclass
class ListingLanding:
    """A landing zone that answers ``list_since`` as the port says, counting its calls and the files it returns."""

    files: list[LandedFile] = field(default_factory=list)
    calls: list[tuple[str, str, datetime | None, int]] = field(default_factory=list)
    returned: int = 0

    def size(self, uri: str) -> int:
        for landed in self.files:
            if landed.uri == uri:
                return landed.size
        raise OSError(f"{uri}: no such blob")

    def list_since(self, container: str, prefix: str, after: datetime | None, limit: int) -> list[LandedFile]:
        self.calls.append((container, prefix, after, limit))
        found = sorted(
            (
                f
                for f in self.files
                if f.container == container and f.path.startswith(prefix) and (after is None or f.last_modified > after)
            ),
            key=lambda f: (f.last_modified, f.path),
        )
        if len(found) > limit:
            last = found[limit - 1].last_modified
            found = [f for f in found if f.last_modified <= last]
        self.returned += len(found)
        return found

    def land(
        self, path: str, at: datetime, *, size: int = 100, etag: str | None = None, container: str = "landing"
    ) -> LandedFile:
        landed = LandedFile(
            uri=f"{ACCOUNT_URL}/{container}/{path}",
            container=container,
            path=path,
            size=size,
            last_modified=at,
            etag=etag or f"0x8DD{abs(hash((path, at))) % 10**12:012X}",
        )
        self.files.append(landed)
        return landed


@dataclass
class CountingRegistry(FakeRegistry):
    """The fake registry, counting the searches the sweep makes."""

    searches: int = 0

    def versions_with_tag(self, model_name: str, key: str, value: str) -> list:  # type: ignore[override]
        self.searches += 1
        return super().versions_with_tag(model_name, key, value)


def sweep_services(tmp_path: Path | None = None, catalogue_text: str | None = None):
    catalogue = None
    if catalogue_text is not None and tmp_path is not None:
        path = tmp_path / "catalogue.toml"
        path.write_text(catalogue_text)
        catalogue = load_catalogue(path)
    svc = services(catalogue)
    svc.landing = ListingLanding()
    svc.registry = CountingRegistry()
    return svc


def trains(svc) -> list[Envelope]:
    bus: FakeBus = svc.bus
    return [e for e, _ in bus.sent if e.command.kind == "train"]


def blob_event(landed: LandedFile, event_id: str, etag: str) -> BlobCreated:
    """The BlobCreated Event Grid would deliver for the file, parsed as the function app parses it."""
    raw = json.loads((REPO / "tests/fixtures/events/blob_created.eventgrid.json").read_text())
    raw[0]["id"] = event_id
    raw[0]["subject"] = f"/blobServices/default/containers/{landed.container}/blobs/{landed.path}"
    raw[0]["data"]["url"] = landed.uri
    raw[0]["data"]["eTag"] = etag
    raw[0]["data"]["contentLength"] = landed.size
    (delivered,) = parse_delivery(json.dumps(raw))
    known = interpret(delivered.event)
    assert isinstance(known, BlobCreated)
    return known


def model(svc, name: str = MODEL):
    return svc.catalogue.get(name)


# -- the cause: one per write of a file, whoever announces it ----------------------------------------


def test_the_cause_is_the_files_name_and_etag_whatever_quotes_carry_it():
    assert landing_cause("landing", "iris/a.csv", '"0x8DDAB3C1F2E4D5A"') == "blob:landing/iris/a.csv@0x8DDAB3C1F2E4D5A"
    assert landing_cause("landing", "iris/a.csv", "0x8DDAB3C1F2E4D5A") == "blob:landing/iris/a.csv@0x8DDAB3C1F2E4D5A"
    assert (
        landing_cause("landing", "iris/a.csv", 'W/"0x8DDAB3C1F2E4D5A"') == "blob:landing/iris/a.csv@0x8DDAB3C1F2E4D5A"
    )
    assert landing_cause("landing", "iris/a.csv", "0x1") != landing_cause("landing", "iris/a.csv", "0x2")
    assert landing_cause("landing", "iris/a.csv", "0x1") != landing_cause("landing", "iris/b.csv", "0x1")
    assert landing_cause("landing", "iris/a.csv", None) is None
    assert landing_cause("landing", "iris/a.csv", '""') is None


def test_two_deliveries_of_one_write_are_one_training_and_an_overwrite_is_another():
    svc = sweep_services()
    zone: ListingLanding = svc.landing
    landed = zone.land("iris/a.csv", NOW - timedelta(minutes=5), etag="0x8DDAB3C1F2E4D5A")
    assert handlers.land_blob(blob_event(landed, "delivery-1", '"0x8DDAB3C1F2E4D5A"'), svc) == "train"
    # Event Grid may deliver one event twice, and a storage retry may raise a second event (new id).
    assert handlers.land_blob(blob_event(landed, "delivery-2", '"0x8DDAB3C1F2E4D5A"'), svc) == "train"
    assert len(trains(svc)) == 1
    assert handlers.land_blob(blob_event(landed, "delivery-3", '"0x8DDAB3C1F2E4D5B"'), svc) == "train"
    assert len(trains(svc)) == 2


def test_an_event_without_an_etag_is_one_training_per_event_as_before():
    svc = sweep_services()
    landed = svc.landing.land("iris/a.csv", NOW - timedelta(minutes=5))
    event = blob_event(landed, "delivery-1", "x")
    event = BlobCreated(**{**event.__dict__, "etag": None})
    handlers.land_blob(event, svc)
    handlers.land_blob(event, svc)
    (sent,) = trains(svc)
    assert sent.message_id == message_id_for("train", "eventgrid:delivery-1")


# -- a lost or late event and the sweep: one training ---------------------------------------------------


@pytest.mark.parametrize("event_first", [False, True])
def test_a_late_event_and_the_sweep_make_one_training(event_first):
    svc = sweep_services()
    zone: ListingLanding = svc.landing
    landed = zone.land("iris/2026-11-23/batch-001.csv", NOW - timedelta(minutes=2), etag="0x8DDAB3C1F2E4D5A")
    event = blob_event(landed, "9aeb0fdf-c01e-0131-0922-9eb54906e209", '"0x8DDAB3C1F2E4D5A"')
    if event_first:
        handlers.land_blob(event, svc)
    counts = sweep_landing(model(svc), svc)
    if not event_first:
        handlers.land_blob(event, svc)  # Event Grid's redelivery, long after the sweep
    assert counts["files_new"] == 1 and counts["files_sent"] == 1
    (train,) = trains(svc)
    assert train.command.data_uri == landed.uri and train.command.reason == "landing"
    compute: FakeCompute = svc.compute["local"]
    handlers.train(train, svc)
    assert [job.data_uri for job in compute.launched] == [landed.uri]


def test_a_file_whose_event_was_lost_is_trained_by_the_sweep_alone():
    svc = sweep_services()
    landed = svc.landing.land("iris/lost.csv", NOW - timedelta(minutes=3))
    counts = sweep_landing(model(svc), svc)
    assert counts == {
        "files_listed": 1,
        "files_new": 1,
        "files_sent": 1,
        "files_trained": 0,
        "files_empty": 0,
        "files_waiting": 0,
        "files_overlap": 0,
    }
    (train,) = trains(svc)
    assert train.message_id == message_id_for("train", f"blob:landing/iris/lost.csv@{landed.etag}")
    assert train.environment == "dev" and train.correlation_id == train.message_id


# -- the watermark ----------------------------------------------------------------------------------


def test_the_watermark_moves_past_the_files_swept_and_the_next_sweep_resumes_a_little_before_it():
    svc = sweep_services()
    zone: ListingLanding = svc.landing
    first = zone.land("iris/a.csv", NOW - timedelta(minutes=10))
    second = zone.land("iris/b.csv", NOW - timedelta(minutes=9))
    sweep_landing(model(svc), svc)
    assert svc.registry.model_tags(MODEL)[WATERMARK] == second.last_modified.isoformat()
    assert zone.calls[0][2] == NOW - timedelta(days=1)  # never swept: one duplicate window back

    svc.clock.advance(minutes=5)
    third = zone.land("iris/c.csv", NOW + timedelta(minutes=1))
    counts = sweep_landing(model(svc), svc)
    assert zone.calls[-1][2] == second.last_modified - OVERLAP
    assert counts["files_new"] == 1 and counts["files_overlap"] == 1  # b.csv again, for duplicate detection
    assert svc.registry.model_tags(MODEL)[WATERMARK] == third.last_modified.isoformat()
    assert [t.command.data_uri for t in trains(svc)] == [first.uri, second.uri, third.uri]  # b.csv's repeat dropped


def test_files_written_within_the_grace_wait_for_the_next_sweep_and_hold_the_watermark_back():
    svc = sweep_services()
    zone: ListingLanding = svc.landing
    settled = zone.land("iris/a.csv", NOW - timedelta(minutes=1))
    copying = zone.land("iris/b.csv", NOW - timedelta(seconds=3))
    counts = sweep_landing(model(svc), svc, grace=timedelta(seconds=30))
    assert counts["files_sent"] == 1 and counts["files_waiting"] == 1
    assert svc.registry.model_tags(MODEL)[WATERMARK] == settled.last_modified.isoformat()
    svc.clock.advance(seconds=30)
    counts = sweep_landing(model(svc), svc, grace=timedelta(seconds=30))
    assert counts["files_sent"] == 1 and counts["files_waiting"] == 0
    assert [t.command.data_uri for t in trains(svc)] == [settled.uri, copying.uri]


def test_pages_cover_every_new_file_and_never_split_a_second():
    svc = sweep_services()
    zone: ListingLanding = svc.landing
    for i in range(10):  # pairs of files share a second
        zone.land(f"iris/{i:02}.csv", NOW - timedelta(minutes=30) + timedelta(seconds=i // 2))
    counts = sweep_landing(model(svc), svc, page=3)
    assert counts["files_sent"] == 10 and counts["files_listed"] == 10
    assert sorted(t.command.data_uri for t in trains(svc)) == sorted(f.uri for f in zone.files)
    assert len(zone.calls) >= 3
    assert svc.registry.model_tags(MODEL)[WATERMARK] == max(f.last_modified for f in zone.files).isoformat()


def test_a_watermark_that_is_not_a_time_is_swept_as_never_swept():
    svc = sweep_services()
    svc.registry.set_model_tag(MODEL, WATERMARK, "yesterday")
    svc.landing.land("iris/a.csv", NOW - timedelta(hours=2))
    assert sweep_landing(model(svc), svc)["files_sent"] == 1
    assert svc.landing.calls[0][2] == NOW - timedelta(days=1)


# -- already trained ------------------------------------------------------------------------------


def test_files_older_than_the_duplicate_window_are_retrained_only_without_a_training_record():
    svc = sweep_services()
    zone: ListingLanding = svc.landing
    registry: CountingRegistry = svc.registry
    # The sweep last ran three days ago; two files landed since, more than a day ago.
    registry.set_model_tag(MODEL, WATERMARK, (NOW - timedelta(days=3)).isoformat())
    trained = zone.land("iris/trained.csv", NOW - timedelta(days=2))
    untrained = zone.land("iris/untrained.csv", NOW - timedelta(days=2, minutes=-1))
    recent = zone.land("iris/recent.csv", NOW - timedelta(hours=2))
    registry.register(MODEL, run_id="r1", **{domain.DATA_URI: trained.uri})
    counts = sweep_landing(model(svc), svc)
    assert counts["files_new"] == 3 and counts["files_trained"] == 1 and counts["files_sent"] == 2
    assert [t.command.data_uri for t in trains(svc)] == [untrained.uri, recent.uri]
    # Only the files duplicate detection can no longer speak for were looked up.
    assert registry.searches == 2


def test_a_model_never_swept_does_not_retrain_files_older_than_one_duplicate_window():
    svc = sweep_services()
    zone: ListingLanding = svc.landing
    zone.land("iris/last-month.csv", NOW - timedelta(days=30))
    today = zone.land("iris/today.csv", NOW - timedelta(hours=1))
    counts = sweep_landing(model(svc), svc)
    assert counts["files_listed"] == 1
    assert [t.command.data_uri for t in trains(svc)] == [today.uri]


def test_a_first_sweep_looks_every_file_up_as_trainings_sent_before_it_had_other_causes():
    svc = sweep_services()
    zone: ListingLanding = svc.landing
    registry: CountingRegistry = svc.registry
    trained = zone.land("iris/trained-before.csv", NOW - timedelta(hours=3))
    untrained = zone.land("iris/lost.csv", NOW - timedelta(hours=2))
    registry.register(MODEL, run_id="r1", **{domain.DATA_URI: trained.uri})
    counts = sweep_landing(model(svc), svc)
    assert counts["files_trained"] == 1 and registry.searches == 2
    assert [t.command.data_uri for t in trains(svc)] == [untrained.uri]
    zone.land("iris/next.csv", NOW - timedelta(hours=1))
    registry.searches = 0
    sweep_landing(model(svc), svc)
    assert registry.searches == 0  # past the first sweep, the window's files are duplicate detection's


def test_a_repeated_sweep_sends_nothing_new():
    svc = sweep_services()
    zone: ListingLanding = svc.landing
    for i in range(5):
        zone.land(f"iris/{i}.csv", NOW - timedelta(minutes=10, seconds=-i))
    sweep_landing(model(svc), svc)
    before = len(trains(svc))
    for _ in range(3):
        svc.clock.advance(minutes=5)
        counts = sweep_landing(model(svc), svc)
        assert counts["files_new"] == 0 and counts["files_sent"] == 0
    assert len(trains(svc)) == before == 5


# -- what is not this model's, or not data --------------------------------------------------------------

TWO_MODELS = f"""
[models.iris-classifier]
training = {{ job = "signalbox.examples.iris.train" }}
data = {{ container = "landing", prefix = "iris/" }}
evaluation = {{ dataset = "{REPO}/signalbox/examples/iris/evaluation.csv", primary_metric = "accuracy" }}
deployment = {{ endpoint = "iris" }}

[models.iris-special]
training = {{ job = "signalbox.examples.iris.train" }}
data = {{ container = "landing", prefix = "iris/special/" }}
evaluation = {{ dataset = "{REPO}/signalbox/examples/iris/evaluation.csv", primary_metric = "accuracy" }}
deployment = {{ endpoint = "iris-special" }}
"""


def test_a_file_under_another_models_longer_prefix_is_left_to_that_model(tmp_path):
    svc = sweep_services(tmp_path, TWO_MODELS)
    zone: ListingLanding = svc.landing
    mine = zone.land("iris/a.csv", NOW - timedelta(minutes=5))
    theirs = zone.land("iris/special/b.csv", NOW - timedelta(minutes=4))
    counts = sweep_landing(model(svc), svc)
    assert counts["files_listed"] == 2 and counts["files_new"] == 1
    assert svc.registry.model_tags(MODEL)[WATERMARK] == theirs.last_modified.isoformat()
    sweep_landing(model(svc, "iris-special"), svc)
    assert [(t.command.model_name, t.command.data_uri) for t in trains(svc)] == [
        (MODEL, mine.uri),
        ("iris-special", theirs.uri),
    ]


def test_an_empty_file_is_counted_and_not_trained():
    svc = sweep_services()
    svc.landing.land("iris/empty.csv", NOW - timedelta(minutes=5), size=0)
    counts = sweep_landing(model(svc), svc)
    assert counts["files_empty"] == 1 and counts["files_sent"] == 0
    assert trains(svc) == []


# -- dry run and cost ----------------------------------------------------------------------------------


def test_a_dry_run_sends_nothing_and_keeps_the_watermark():
    svc = sweep_services()
    zone: ListingLanding = svc.landing
    zone.land("iris/a.csv", NOW - timedelta(minutes=5))
    zone.land("iris/b.csv", NOW - timedelta(minutes=4))
    counts = sweep_landing(model(svc), svc, dry_run=True)
    assert counts["files_sent"] == 2  # what a sweep would send
    assert svc.bus.sent == []
    assert WATERMARK not in svc.registry.model_tags(MODEL)
    assert sweep_landing(model(svc), svc)["files_sent"] == 2  # the real sweep still finds both
    assert len(trains(svc)) == 2


def test_a_sweep_costs_the_new_files_not_the_history():
    svc = sweep_services()
    zone: ListingLanding = svc.landing
    registry: CountingRegistry = svc.registry
    old = NOW - timedelta(days=40)
    for i in range(20_000):
        zone.land(f"iris/old/{i}.csv", old + timedelta(seconds=i))
    registry.set_model_tag(MODEL, WATERMARK, (NOW - timedelta(hours=1)).isoformat())
    new = [zone.land(f"iris/new/{i}.csv", NOW - timedelta(minutes=30, seconds=-i)) for i in range(10)]
    counts = sweep_landing(model(svc), svc)
    assert counts["files_sent"] == 10 and counts["files_listed"] == 10
    assert len(zone.calls) == 1 and zone.returned == 10  # one listing, the new files only
    assert registry.searches == 0  # within the duplicate window: no registry read per file
    assert sorted(t.command.data_uri for t in trains(svc)) == sorted(f.uri for f in new)


# -- the local landing watcher: what it announced survives the host --------------------------------


@dataclass
class _Host:
    """What the watcher reads of the host: where to deliver."""

    base_url: str
    settings: object


def watcher(root: Path):
    """A landing watcher over ``root``, as the embedded default starts it, looking every 20 ms."""
    from signalbox.embedded import LandingWatcher

    host = _Host("http://127.0.0.1:1", SimpleNamespace(state_dir=root.parent))
    return LandingWatcher(root, host, interval=0.02)  # type: ignore[arg-type]


@pytest.fixture
def delivered(monkeypatch) -> list[dict]:
    """The BlobCreated events the watcher delivers, kept instead of posted."""
    import signalbox.client

    kept: list[dict] = []
    monkeypatch.setattr(
        signalbox.client, "deliver_event_grid", lambda url, state, function, events: kept.extend(events)
    )
    return kept


def drop(root: Path, name: str, text: str = "a,b\n1,2\n") -> Path:
    target = root / "landing" / "iris" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def run_until(watch, condition, timeout: float = 10.0) -> None:
    """Run a watcher until ``condition`` holds, a few more looks, then stop it."""
    watch.start()
    try:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "the watcher did not deliver in time"
            time.sleep(0.02)
        time.sleep(0.2)  # a few more looks: nothing else may be delivered
    finally:
        watch.stop()
        time.sleep(0.1)


def test_the_watcher_announces_at_start_what_landed_while_it_was_down(tmp_path, delivered):
    root = tmp_path / "landing"
    before = drop(root, "before-first-start.csv")
    run_until(watcher(root), lambda: (root.parent / "landing-announced.jsonl").exists())
    assert delivered == []  # a state dir's first start takes what is there as announced

    while_down = drop(root, "while-down.csv")
    run_until(watcher(root), lambda: len(delivered) >= 1)
    assert [e["subject"].rsplit("/blobs/", 1)[1] for e in delivered] == ["iris/while-down.csv"]

    # Restarted again: nothing new, nothing announced twice.
    run_until(watcher(root), lambda: True)
    assert len(delivered) == 1
    record = [json.loads(line) for line in (root.parent / "landing-announced.jsonl").read_text().splitlines()]
    assert {r["path"] for r in record} == {"landing/iris/before-first-start.csv", "landing/iris/while-down.csv"}
    assert before.exists() and while_down.exists()


def test_the_watchers_event_and_the_local_listing_name_one_write_alike(tmp_path, delivered):
    from shared.adapters.local.landing import LocalLandingZone

    root = tmp_path / "landing"
    run_until(watcher(root), lambda: True)
    landed = drop(root, "a.csv")
    run_until(watcher(root), lambda: len(delivered) >= 1)
    (event,) = delivered
    (listed,) = LocalLandingZone(root).list_since("landing", "iris/", None, 10)
    assert listed.uri == event["data"]["url"] == landed.resolve().as_uri()
    cause = landing_cause("landing", "iris/a.csv", event["data"]["eTag"])
    assert cause is not None and cause == landing_cause(listed.container, listed.path, listed.etag)

    # A new write of the same file is a new ETag, so a new training.
    time.sleep(0.01)
    landed.write_text("a,b\n3,4\n5,6\n")
    (again,) = LocalLandingZone(root).list_since("landing", "iris/", None, 10)
    assert landing_cause(again.container, again.path, again.etag) != cause


def test_a_container_not_there_yet_is_nothing_to_sweep(tmp_path):
    from shared.adapters.local.landing import LocalLandingZone

    svc = sweep_services()
    svc.landing = LocalLandingZone(tmp_path / "landing")  # nothing has landed: not even the container folder
    (tmp_path / "landing").mkdir()
    counts = sweep_landing(model(svc), svc)
    assert counts["files_listed"] == 0 and trains(svc) == []
    assert WATERMARK not in svc.registry.model_tags(MODEL)
