"""BlobLandingZone drives the real azure-storage-blob client against Azurite, Microsoft's storage emulator.

Faults come from a proxy in front of Azurite (plain-text 5xx, 429 with Retry-After, a stalled
answer), and 403s and token failures from Azurite itself over HTTPS with OAuth on.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken, AzureNamedKeyCredential
from azure.core.exceptions import ClientAuthenticationError, ResourceExistsError
from azure.storage.blob import BlobServiceClient

from shared import handlers
from shared.adapters.azure.landing import BlobLandingZone
from shared.adapters.local.landing import LocalLandingZone, oldest
from shared.catalogue import Data
from shared.errors import PermanentError, TransientError
from shared.events import BlobCreated
from shared.handlers.ingress import landing_cause
from shared.handlers.landing_sweep import WATERMARK, sweep_landing
from shared.ports import LandedFile
from tests.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, FaultProxy, free_port
from tests.fakes import services
from tests.tls import self_signed_certificate

KEY = AzureNamedKeyCredential(ACCOUNT, ACCOUNT_KEY)
EVENT_GRID_DELIVERY_SECONDS = 30  # Event Grid waits this long for a webhook (function) to answer


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    server = Azurite()
    yield server
    server.close()


@pytest.fixture(scope="module")
def tls_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Azurite, Path]]:
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("azurite-tls"))
    server = Azurite(cert, key)
    yield server, cert
    server.close()


@pytest.fixture
def proxy(azurite: Azurite) -> Iterator[FaultProxy]:
    fronted = FaultProxy(azurite.port)
    yield fronted
    fronted.close()


def new_container(account_url: str, blobs: dict[str, bytes], **client: Any) -> str:
    """A fresh container holding ``blobs``, written through the SDK with the emulator's key."""
    name = f"landing-{uuid.uuid4().hex[:12]}"
    service = BlobServiceClient(account_url, credential=KEY, **client)
    container = service.create_container(name)
    for path, data in blobs.items():
        container.upload_blob(path, data)
    return name


def via(proxy: FaultProxy, url: str) -> str:
    """The same URL through the fault proxy."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://127.0.0.1:{proxy.port}/{rest.split('/', 1)[1]}"


# -- size: a landed blob, a missing one -----------------------------------------------------------


def test_size_reads_the_blob_properties(azurite):
    name = new_container(azurite.url, {"iris/batch-001.csv": b"x" * 2717, "iris/empty.csv": b""})
    landing = BlobLandingZone(KEY)
    assert landing.size(f"{azurite.url}/{name}/iris/batch-001.csv") == 2717
    assert landing.size(f"{azurite.url}/{name}/iris/empty.csv") == 0


def test_a_missing_blob_or_container_is_a_refusal_naming_it(azurite):
    name = new_container(azurite.url, {"iris/a.csv": b"1"})
    with pytest.raises(OSError, match=rf"{name}/iris/nope\.csv cannot be read: BlobNotFound"):
        BlobLandingZone(KEY).size(f"{azurite.url}/{name}/iris/nope.csv")
    with pytest.raises(OSError, match=r"nocontainer/iris/a\.csv cannot be read: ContainerNotFound"):
        BlobLandingZone(KEY).size(f"{azurite.url}/nocontainer/iris/a.csv")


def test_a_url_that_names_no_blob_is_a_refusal():
    with pytest.raises(OSError, match="cannot be read"):
        BlobLandingZone(KEY).size("https://")


# -- size: what Event Grid must retry ------------------------------------------------------------


def test_plain_text_5xx_are_transient_after_the_sdk_retries(azurite, proxy):
    name = new_container(azurite.url, {"iris/a.csv": b"abc"})
    url = via(proxy, f"{azurite.url}/{name}/iris/a.csv")
    proxy.faults("503", "500", "503")
    with pytest.raises(TransientError, match="answered 503"):
        BlobLandingZone(KEY).size(url)
    assert [(method, fault) for method, _, fault in proxy.seen] == [("HEAD", "503"), ("HEAD", "500"), ("HEAD", "503")]


def test_the_sdk_retries_ride_out_a_short_outage(azurite, proxy):
    name = new_container(azurite.url, {"iris/a.csv": b"abc"})
    proxy.faults("503", "500")
    assert BlobLandingZone(KEY).size(via(proxy, f"{azurite.url}/{name}/iris/a.csv")) == 3
    assert [fault for _, _, fault in proxy.seen] == ["503", "500", "pass"]


def test_throttling_429_is_transient(azurite, proxy):
    name = new_container(azurite.url, {"iris/a.csv": b"abc"})
    proxy.faults("429", "429", "429")
    with pytest.raises(TransientError, match="answered 429"):
        BlobLandingZone(KEY).size(via(proxy, f"{azurite.url}/{name}/iris/a.csv"))
    # Storage's retry policy does not retry a 429 (Storage throttles with 503): one attempt, bounded.
    assert 1 <= len(proxy.seen) <= 3


def test_a_stalled_answer_times_out_transient_within_one_event_grid_delivery(azurite, proxy):
    name = new_container(azurite.url, {"iris/a.csv": b"abc"})
    proxy.faults("stall", "stall", "stall")
    landing = BlobLandingZone(KEY)  # production's timeouts and retries, not test-sized ones
    started = time.monotonic()
    with pytest.raises(TransientError, match="ServiceResponse"):
        landing.size(via(proxy, f"{azurite.url}/{name}/iris/a.csv"))
    elapsed = time.monotonic() - started
    assert len(proxy.seen) == landing.retry_total + 1
    assert landing.read_timeout * len(proxy.seen) <= elapsed < EVENT_GRID_DELIVERY_SECONDS


def test_a_refused_connection_is_transient():
    with pytest.raises(TransientError, match="ServiceRequestError"):
        BlobLandingZone(KEY, retry_total=1).size(f"http://127.0.0.1:{free_port()}/{ACCOUNT}/landing/iris/a.csv")


def test_a_403_from_the_account_is_transient_not_a_refusal(azurite):
    name = new_container(azurite.url, {"iris/a.csv": b"abc"})
    wrong = AzureNamedKeyCredential(ACCOUNT, base64.b64encode(b"not the account key").decode())
    with pytest.raises(TransientError, match=r"answered 403 AuthorizationFailure .*role assignment"):
        BlobLandingZone(wrong).size(f"{azurite.url}/{name}/iris/a.csv")


def test_land_blob_fails_for_event_grid_to_redeliver_and_refuses_nothing(azurite, proxy):
    container = BlobServiceClient(azurite.url, credential=KEY).get_container_client("landing")
    with contextlib.suppress(ResourceExistsError):  # the catalogue's iris-classifier lands in landing/iris/
        container.create_container()
    path = f"iris/batch-{uuid.uuid4().hex[:8]}.csv"
    container.upload_blob(path, b"a,b\n1,2\n")
    svc = services()
    svc.landing = BlobLandingZone(KEY)
    url = via(proxy, f"{azurite.url}/landing/{path}")
    blob = BlobCreated("evt-1", url, ACCOUNT, "landing", path, 8, "text/csv", None, "PutBlob")
    proxy.faults("503", "503", "503")
    with pytest.raises(TransientError):
        handlers.land_blob(blob, svc)
    assert svc.events.published == [] and svc.bus.sent == []  # nothing refused, nothing sent
    assert handlers.land_blob(blob, svc) == "train"  # Event Grid's redelivery, once the account answers
    assert [event_type for event_type, _, _ in svc.events.published] == ["DataLanded"]
    gone = BlobCreated(
        "evt-2", url.replace(path, "iris/gone.csv"), ACCOUNT, "landing", "iris/gone.csv", 8, None, None, None
    )
    assert handlers.land_blob(gone, svc) == "refused"  # a blob that is not there is refused at once
    assert "BlobNotFound" in str(svc.events.published[-1][2]["reason"])


# -- size over HTTPS with a token, as the managed identity reads it ---------------------------


def jwt(**claims: object) -> str:
    """An unsigned token with Entra ID's claims (Azurite's OAuth "basic" checks claims, not signatures)."""

    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    now = int(time.time())
    body = {
        "aud": "https://storage.azure.com",
        "iss": "https://sts.windows.net/ab1f708d-50f6-404c-a006-d71b2ac7a606/",
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + 3600,
        **claims,
    }
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(body)}.c2lnbmF0dXJl"


class StaticToken:
    """A TokenCredential handing out one token (or failing as a managed identity endpoint can)."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.calls += 1
        if self.token is None:
            raise ClientAuthenticationError("ManagedIdentityCredential: the identity endpoint did not answer")
        return AccessToken(self.token, int(time.time()) + 3600)


def test_a_token_credential_reads_over_https(tls_azurite):
    server, cert = tls_azurite
    name = new_container(server.url, {"iris/a.csv": b"abcd"}, connection_verify=str(cert))
    credential = StaticToken(jwt())
    assert BlobLandingZone(credential, ca_bundle=str(cert)).size(f"{server.url}/{name}/iris/a.csv") == 4
    assert credential.calls == 1


def test_a_token_the_credential_cannot_get_is_transient(tls_azurite):
    server, cert = tls_azurite
    name = new_container(server.url, {"iris/a.csv": b"abcd"}, connection_verify=str(cert))
    with pytest.raises(TransientError, match="ClientAuthenticationError"):
        BlobLandingZone(StaticToken(None), ca_bundle=str(cert)).size(f"{server.url}/{name}/iris/a.csv")


def test_a_token_the_account_refuses_is_transient(tls_azurite):
    server, cert = tls_azurite
    name = new_container(server.url, {"iris/a.csv": b"abcd"}, connection_verify=str(cert))
    expired = StaticToken(jwt(nbf=int(time.time()) - 7200, exp=int(time.time()) - 3600))
    with pytest.raises(TransientError, match="answered 403 AuthenticationFailed"):
        BlobLandingZone(expired, ca_bundle=str(cert)).size(f"{server.url}/{name}/iris/a.csv")


# -- list_since ----------------------------------------------------------------------------------


def test_list_since_returns_what_landed_after_the_watermark(azurite):
    name = new_container(azurite.url, {"iris/a.csv": b"1", "iris/b.csv": b"22", "wine/c.csv": b"333"})
    landing = BlobLandingZone(KEY, account_url=azurite.url)
    everything = landing.list_since(name, "iris/", None, 100)
    assert [(f.path, f.size, f.container) for f in everything] == [("iris/a.csv", 1, name), ("iris/b.csv", 2, name)]
    assert all(landing.size(f.uri) == f.size for f in everything)  # each URI is the blob's own
    watermark = max(f.last_modified for f in everything)
    time.sleep(1.1)  # Last-Modified has one-second resolution
    new_container_client = BlobServiceClient(azurite.url, credential=KEY).get_container_client(name)
    new_container_client.upload_blob("iris/d.csv", b"4444")
    later = landing.list_since(name, "iris/", watermark, 100)
    assert [(f.path, f.size) for f in later] == [("iris/d.csv", 4)]
    assert later[0].last_modified > watermark and later[0].last_modified.tzinfo is not None


def test_list_since_keeps_the_oldest_within_the_limit(azurite):
    name = new_container(azurite.url, {f"iris/{i}.csv": b"x" for i in range(6)})
    landing = BlobLandingZone(KEY, account_url=azurite.url)
    every = landing.list_since(name, "iris/", None, 100)
    some = landing.list_since(name, "iris/", None, 2)
    last = some[-1].last_modified
    assert len(some) >= 2
    assert some == [f for f in every if f.last_modified <= last]  # oldest first, no tie left behind


def test_list_since_skips_day_partitions_older_than_the_watermark_unread(azurite, proxy):
    today = datetime.now(UTC).date().isoformat()
    name = new_container(
        azurite.url, {"iris/2026-01-01/old.csv": b"1", f"iris/{today}/new.csv": b"22", "iris/loose.csv": b"3"}
    )
    landing = BlobLandingZone(KEY, account_url=via(proxy, azurite.url))
    recent = landing.list_since(name, "iris/", datetime.now(UTC) - timedelta(hours=1), 100)
    # old.csv was written just now too, but its partition names a day long gone: it is not read.
    assert sorted(f.path for f in recent) == [f"iris/{today}/new.csv", "iris/loose.csv"]
    listed = [path for _, path, _ in proxy.seen]
    assert not any("2026-01-01" in path for path in listed)
    assert any(f"{today}" in path for path in listed)
    assert len(landing.list_since(name, "iris/", None, 100)) == 3  # no watermark: everything


def test_list_since_a_missing_container_is_an_os_error(azurite):
    with pytest.raises(OSError, match="ContainerNotFound"):
        BlobLandingZone(KEY, account_url=azurite.url).list_since("nocontainer", "iris/", None, 10)


def test_list_since_plain_text_503s_are_transient(azurite, proxy):
    name = new_container(azurite.url, {"iris/a.csv": b"1"})
    proxy.faults("503", "503", "503")
    with pytest.raises(TransientError, match="answered 503"):
        BlobLandingZone(KEY, account_url=via(proxy, azurite.url)).list_since(name, "iris/", None, 10)
    assert [method for method, _, _ in proxy.seen] == ["GET"] * 3


def test_list_since_wants_an_account_and_an_aware_watermark():
    with pytest.raises(PermanentError, match="SIGNALBOX_LANDING_ACCOUNT_URL"):
        BlobLandingZone(KEY).list_since("landing", "iris/", None, 10)
    with pytest.raises(ValueError, match="timezone-aware"):
        BlobLandingZone(KEY, account_url="http://127.0.0.1:1/x").list_since("landing", "", datetime(2026, 1, 1), 1)


# -- ETags: a listing and the BlobCreated event name one write alike ---------------------------------


def test_list_since_carries_each_blobs_etag_and_an_overwrite_changes_it(azurite):
    name = new_container(azurite.url, {})
    container = BlobServiceClient(azurite.url, credential=KEY).get_container_client(name)
    uploaded = container.get_blob_client("iris/a.csv").upload_blob(b"1")["etag"]
    landing = BlobLandingZone(KEY, account_url=azurite.url)
    (listed,) = landing.list_since(name, "iris/", None, 10)
    properties = container.get_blob_client("iris/a.csv").get_blob_properties()
    assert listed.etag is not None and listed.etag.strip('"') == uploaded.strip('"') == properties.etag.strip('"')
    # Event Grid's eTag is the same value in quotes (tests/fixtures/events/blob_created.eventgrid.json).
    cause = landing_cause(name, "iris/a.csv", f'"{uploaded.strip(chr(34))}"')
    assert cause is not None and cause == landing_cause(listed.container, listed.path, listed.etag)
    container.upload_blob("iris/a.csv", b"22", overwrite=True)
    (rewritten,) = landing.list_since(name, "iris/", None, 10)
    assert rewritten.etag != listed.etag
    assert landing_cause(name, "iris/a.csv", rewritten.etag) != cause


def test_the_landing_sweep_over_blob_storage_reads_only_recent_partitions_and_trains_a_lost_file_once(azurite, proxy):
    today = datetime.now(UTC).date().isoformat()
    old = {f"iris/2026-0{month}-01/batch-{i}.csv": b"old" for month in range(1, 4) for i in range(3)}
    name = new_container(azurite.url, old)
    client = BlobServiceClient(azurite.url, credential=KEY).get_container_client(name)
    etag = client.get_blob_client(f"iris/{today}/lost.csv").upload_blob(b"sepal_length,target\n5.1,setosa\n")["etag"]
    svc = services()
    entry = svc.catalogue.get("iris-classifier").model_copy(update={"data": Data(container=name, prefix="iris/")})
    svc.catalogue = svc.catalogue.model_copy(update={"models": {entry.name: entry}})
    svc.landing = BlobLandingZone(KEY, account_url=via(proxy, azurite.url))
    svc.clock = lambda: datetime.now(UTC) + timedelta(minutes=1)  # past the sweep's grace

    counts = sweep_landing(entry, svc)

    # The old files were written just now too: their partitions name days long gone, so no listing reads them.
    assert not any("2026-0" in path for _, path, _ in proxy.seen), proxy.seen
    assert any(today in path for _, path, _ in proxy.seen), proxy.seen
    assert counts["files_listed"] == 1 and counts["files_sent"] == 1
    (train,) = [e for e, _ in svc.bus.sent]
    assert train.command.data_uri.endswith(f"/{name}/iris/{today}/lost.csv")
    assert svc.registry.model_tags(entry.name)[WATERMARK]
    # Event Grid's delivery, late: the same write, so the same message id, dropped by duplicate detection.
    late = BlobCreated(
        event_id="9aeb0fdf-c01e-0131-0922-9eb54906e209",
        url=train.command.data_uri,
        account=ACCOUNT,
        container=name,
        blob_path=f"iris/{today}/lost.csv",
        content_length=None,
        content_type="text/csv",
        etag=f'"{etag.strip(chr(34))}"',
        api="PutBlob",
    )
    assert handlers.land_blob(late, svc) == "train"
    assert [e.message_id for e, _ in svc.bus.sent] == [train.message_id]


# -- the same listing on the local landing zone -------------------------------------------------


def land(root: Path, path: str, data: bytes, at: datetime) -> None:
    file = root / path
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(data)
    os.utime(file, (at.timestamp(), at.timestamp()))


def test_local_list_since_filters_by_prefix_and_watermark(tmp_path):
    root = tmp_path / "landing"
    t0 = datetime(2026, 12, 1, 10, tzinfo=UTC)
    land(root, "landing/iris/a.csv", b"1", t0)
    land(root, "landing/iris/2026-12-02/b.csv", b"22", t0 + timedelta(days=1))
    land(root, "landing/irises/x.csv", b"9", t0 + timedelta(days=2))
    land(root, "landing/wine/c.csv", b"333", t0 + timedelta(days=3))
    zone = LocalLandingZone(root)
    files = zone.list_since("landing", "iris/", None, 10)
    assert [(f.path, f.size) for f in files] == [("iris/a.csv", 1), ("iris/2026-12-02/b.csv", 2)]
    assert all(zone.size(f.uri) == f.size for f in files)
    assert [f.path for f in zone.list_since("landing", "iris/", t0, 10)] == ["iris/2026-12-02/b.csv"]
    assert [f.path for f in zone.list_since("landing", "iris", t0, 10)] == ["iris/2026-12-02/b.csv", "irises/x.csv"]
    assert files[1].last_modified == t0 + timedelta(days=1)


def test_local_list_since_lists_nothing_outside_its_root(tmp_path):
    root = tmp_path / "landing"
    land(root, "landing/iris/a.csv", b"1", datetime(2026, 12, 1, tzinfo=UTC))
    secret = tmp_path / "secret.csv"
    secret.write_text("top secret")
    (root / "landing" / "iris" / "link.csv").symlink_to(secret)
    (root / "landing" / "iris" / "linked").symlink_to(tmp_path, target_is_directory=True)
    zone = LocalLandingZone(root)
    assert [f.path for f in zone.list_since("landing", "", None, 10)] == ["iris/a.csv"]
    for container in ("..", "../landing", "landing/../..", ""):
        with pytest.raises(OSError, match="outside the landing zone"):
            zone.list_since(container, "", None, 10)
    with pytest.raises(OSError, match="not in the landing zone"):
        zone.list_since("nope", "", None, 10)


def test_oldest_never_splits_a_group_of_equal_times():
    t = datetime(2026, 12, 1, tzinfo=UTC)
    files = [LandedFile(f"u{i}", "c", f"p{i}", 1, t + timedelta(seconds=i // 3)) for i in range(3000)]
    picked = oldest(reversed(files), 4)
    assert [f.path for f in picked] == ["p0", "p1", "p2", "p3", "p4", "p5"]
    assert [f.path for f in oldest(files, 3)] == ["p0", "p1", "p2"]
    assert oldest([], 5) == []
    with pytest.raises(ValueError):
        oldest(files, 0)
