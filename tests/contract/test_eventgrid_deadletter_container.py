"""BlobEventGridDeadLetters drives the real azure-storage-blob client against Azurite.

The container is filled as Event Grid fills a subscription's dead-letter container (blob names
``[TOPIC/]SUBSCRIPTION/yyyy/m/d/h/<guid>.json``, a JSON array of events with the dead-letter
attributes); the operations of ``shared.deadletters.eventgrid`` then list, read, lease, rewrite and
delete through the SDK, and faults come from the proxy in front of Azurite.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import BlobServiceClient, ContainerClient

from shared.adapters.azure.eventgrid_deadletters import BlobEventGridDeadLetters
from shared.deadletters import eventgrid
from shared.deadletters.eventgrid import EventGridFilters
from shared.errors import TransientError
from tests.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, FaultProxy

KEY = AzureNamedKeyCredential(ACCOUNT, ACCOUNT_KEY)
LANDING = "EVGS-SIGNALBOX-LANDING-DEV/LANDING-EVENTS/2026/12/7/4"
DRIFT = "EVGT-SIGNALBOX-DEV/DRIFT-ALERTS/2026/12/7/5"


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    server = Azurite()
    yield server
    server.close()


@pytest.fixture
def proxy(azurite: Azurite) -> Iterator[FaultProxy]:
    fronted = FaultProxy(azurite.port)
    yield fronted
    fronted.close()


def dead_letter(event_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "eventTime": "2026-12-06T04:10:11.1234567Z",
        "eventType": "Microsoft.Storage.BlobCreated",
        "dataVersion": "",
        "metadataVersion": "1",
        "topic": "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/stland",
        "subject": f"/blobServices/default/containers/landing/blobs/iris/{event_id}.csv",
        "data": {"api": "PutBlob", "eTag": "0x8DE0000000000A1", "contentLength": 10, "blobType": "BlockBlob"},
        "deadLetterReason": "MaxDeliveryAttemptsExceeded",
        "deliveryAttempts": 30,
        "lastDeliveryOutcome": "GenericError",
        "lastHttpStatusCode": 500,
        "publishTime": "2026-12-06T04:10:12.0265758Z",
        "lastDeliveryAttemptTime": "2026-12-07T04:09:58.0465788Z",
        **extra,
    }


def new_container(azurite: Azurite, blobs: dict[str, list[dict[str, Any]]]) -> tuple[str, ContainerClient]:
    """A fresh dead-letter container holding ``blobs`` (name → events), written as Event Grid writes them."""
    name = f"eventgrid-deadletter-{uuid.uuid4().hex[:10]}"
    container = BlobServiceClient(azurite.url, credential=KEY).create_container(name)
    for blob, events in blobs.items():
        container.upload_blob(blob, json.dumps(events).encode())
    return f"{azurite.url}/{name}", container


class Recorder:
    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.delivered: list[tuple[str, str]] = []

    def deliver(self, function: str, event: Any, schema: str) -> int:
        self.delivered.append((function, str(event["id"])))
        return self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]


def names(container: ContainerClient) -> list[str]:
    return sorted(b.name for b in container.list_blobs())


def test_lists_reads_and_parses_what_event_grid_wrote(azurite):
    url, _ = new_container(
        azurite,
        {
            f"{LANDING}/a.json": [dead_letter("e1"), dead_letter("e2")],
            f"{DRIFT}/b.json": [
                {
                    "id": "c1",
                    "specversion": "1.0",
                    "source": "/signalbox",
                    "type": "io.signalbox.drift.detected",
                    "data": {"model_name": "iris"},
                    "deadletterreason": "TimeToLiveExceeded",
                    "deliveryattempts": 4,
                    "lastdeliveryoutcome": "Busy",
                    "publishtime": "2026-12-07T05:00:00.1234567Z",
                }
            ],
            "signalbox-replays/landing_events/e9.json": [{"id": "not a dead letter"}],
        },
    )
    store = BlobEventGridDeadLetters(url, credential=KEY)
    assert [b.name for b in store.blobs()] == [f"{LANDING}/a.json", f"{DRIFT}/b.json"]
    assert all(b.last_modified is not None for b in store.blobs())
    found = eventgrid.select(store)
    assert [(d.function, d.event_id, d.reason, d.schema, d.topic) for d in found] == [
        ("landing_events", "e1", "MaxDeliveryAttemptsExceeded", "eventgrid", "EVGS-SIGNALBOX-LANDING-DEV"),
        ("landing_events", "e2", "MaxDeliveryAttemptsExceeded", "eventgrid", "EVGS-SIGNALBOX-LANDING-DEV"),
        ("alert_events", "c1", "TimeToLiveExceeded", "cloudevents", "EVGT-SIGNALBOX-DEV"),
    ]
    # The blob's Last-Modified is when it was dead-lettered.
    assert all(d.dead_lettered_time == d.blob_time for d in found)
    assert [d.event_id for d in eventgrid.select(store, EventGridFilters(function="LANDING-EVENTS", limit=1))] == ["e1"]
    assert store.read(f"{LANDING}/gone.json") is None
    assert eventgrid.count(store) == 3


def test_a_replay_deletes_the_blob_only_after_the_function_accepted_it(azurite):
    url, container = new_container(azurite, {f"{LANDING}/a.json": [dead_letter("e1")]})
    store = BlobEventGridDeadLetters(url, credential=KEY)

    assert eventgrid.replay(store, Recorder(500)).counts() == {"failed": 1}
    assert f"{LANDING}/a.json" in names(container)
    # The count is a blob beside the dead letters, and the next look reads it.
    assert "signalbox-replays/landing_events/e1.json" in names(container)
    assert eventgrid.select(store)[0].replay_count == 1

    recorder = Recorder(200)
    report = eventgrid.replay(store, recorder)
    assert report.counts() == {"replayed": 1} and recorder.delivered == [("landing_events", "e1")]
    assert names(container) == ["signalbox-replays/landing_events/e1.json"]
    assert eventgrid.select(store) == []


def test_a_partly_replayed_blob_is_rewritten_with_the_events_still_dead_lettered(azurite):
    name = f"{LANDING}/a.json"
    url, container = new_container(azurite, {name: [dead_letter("e1"), dead_letter("e2"), dead_letter("e3")]})
    store = BlobEventGridDeadLetters(url, credential=KEY)
    report = eventgrid.replay(store, Recorder(200, 500, 200))
    assert [(o.event_id, o.status) for o in report.outcomes] == [
        ("e1", "replayed"),
        ("e2", "failed"),
        ("e3", "replayed"),
    ]
    kept = json.loads(container.download_blob(name).readall())
    assert [e["id"] for e in kept] == ["e2"] and kept[0]["deadLetterReason"] == "MaxDeliveryAttemptsExceeded"
    # The lease was given back: the blob can be leased (and so replayed) again.
    lease = container.get_blob_client(name).acquire_lease(lease_duration=15)
    lease.release()


def test_a_blob_another_run_holds_a_lease_on_is_skipped(azurite):
    name = f"{LANDING}/a.json"
    url, container = new_container(azurite, {name: [dead_letter("e1")]})
    other = container.get_blob_client(name).acquire_lease(lease_duration=15)
    store = BlobEventGridDeadLetters(url, credential=KEY)
    recorder = Recorder(200)
    report = eventgrid.replay(store, recorder)
    assert report.counts() == {"skipped": 1} and recorder.delivered == []
    assert eventgrid.purge(store, confirm="all").counts() == {"skipped": 1}
    # Nor can anything rewrite or delete it without that lease.
    with pytest.raises(TransientError, match=r"412|LeaseIdMissing|LeaseIdMismatch"):
        store.delete(name, str(uuid.uuid4()))
    other.release()
    assert eventgrid.purge(store, confirm="all").counts() == {"purged": 1}
    assert f"{LANDING}/a.json" not in names(container)


def test_dry_run_touches_nothing_in_the_container(azurite):
    url, container = new_container(azurite, {f"{LANDING}/a.json": [dead_letter("e1")]})
    before = {b.name: b.etag for b in container.list_blobs()}
    store = BlobEventGridDeadLetters(url, credential=KEY)
    recorder = Recorder(200)
    assert eventgrid.replay(store, recorder, dry_run=True).counts() == {"would_replay": 1}
    assert recorder.delivered == [] and {b.name: b.etag for b in container.list_blobs()} == before


def test_plain_text_5xx_from_the_account_are_transient(azurite, proxy):
    url, _ = new_container(azurite, {f"{LANDING}/a.json": [dead_letter("e1")]})
    scheme, rest = url.split("://", 1)
    fronted = f"{scheme}://127.0.0.1:{proxy.port}/{rest.split('/', 1)[1]}"
    proxy.faults("503")
    store = BlobEventGridDeadLetters(fronted, credential=KEY, retry_total=0)
    with pytest.raises(TransientError, match="answered 503"):
        list(store.blobs())
    # The ops page reports it instead of failing.
    proxy.faults("500")
    overview = eventgrid.overview_count(store)
    assert overview["eventgrid_dead_letters"] is None and "answered 500" in overview["eventgrid_dead_letters_error"]
    assert [d.event_id for d in eventgrid.select(store)] == ["e1"]  # the faults spent: it reads again
