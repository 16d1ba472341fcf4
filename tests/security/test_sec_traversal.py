"""Path traversal and injection: hostile model names, blob paths and route parameters have no effect.

Every case is answered 4xx (or 200 "ignored"/"refused" for an event, which Event Grid must not retry),
never 5xx; nothing is enqueued; no file outside the landing zone is opened; no MLflow filter is
built from user text. Validation points: the catalogue (model names), ``shared/events.py`` (BlobCreated
subject and URL), ``shared/adapters/local/landing.py`` (the landing root), ``shared/webhooks.py``
(version numbers), the host's route matching and ``resolve_route`` (endpoint names).
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests

from shared.adapters.local.landing import LocalLandingZone
from shared.catalogue import CatalogueError, load_catalogue
from shared.events import InboundEvent, InvalidEvent, interpret
from tests.security.stack import SecureHost
from tests.security.test_sec_signatures import _databricks_body, _dbx, _mlflow_body, mlflow_headers

HOSTILE_NAMES = [
    "../../etc",
    "..",
    ".",
    "iris/../../etc/passwd",
    "a'; DROP TABLE registered_models; --",
    'x" OR "1"="1',
    "iris-classifier' OR '1'='1",
    "iris-classifier%",
    "\u0456ris-classifier",  # Cyrillic small letter i
    "iris\u2010classifier",  # Unicode hyphen
    "iris-classifier\u2024",  # one-dot leader
    "IRIS-CLASSIFIER",
    "iris-classifier\x00",
    "iris-classifier\n",
    "x" * 5000,
]


def _raw(secure: SecureHost, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Send ``path`` exactly as given (requests/urllib3 would normalise "..")."""
    parts = urlsplit(secure.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", "0")
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def _no_effect(secure: SecureHost, before: int, status: int, body: bytes, allowed: tuple[int, ...]) -> None:
    assert status in allowed, f"{status}: {body[:300]!r}"
    assert status < 500
    assert secure.enqueued() == before


# -- model names in routes ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=lambda n: repr(n[:30]))
def test_hostile_model_names_in_routes_are_unknown_models(secure: SecureHost, name: str) -> None:
    key = {"x-functions-key": secure.host.function_key}
    encoded = quote(name, safe="") if name not in ("..", ".") else name
    for method, path in (
        ("GET", f"/api/status/{encoded}"),
        ("POST", f"/api/approvals/{encoded}/1/approve"),
        ("POST", f"/api/approvals/{encoded}/1/reject"),
    ):
        before = secure.enqueued()
        status, body = _raw(secure, method, path, key)
        _no_effect(secure, before, status, body, (400, 404, 405))
        assert b'"versions"' not in body  # not some model's lifecycle


ROUTE_PROBES = [
    # (method, path, key kind, accepted statuses)
    ("GET", "/api/status/iris%2F..%2F..", "function", (404,)),
    ("GET", "/api/status/..%2F..%2F..%2Fetc%2Fpasswd", "function", (404,)),
    ("GET", "/api/status/%2e%2e", "function", (404,)),
    ("POST", "/api/approvals/iris-classifier/1/..%2F..%2Fadmin", "function", (404,)),
    ("POST", "/api/approvals/iris-classifier/1%20OR%201=1/approve", "function", (404,)),
    ("POST", "/api/approvals/iris-classifier/-1/approve", "function", (404,)),
    # {version:int} is a 32-bit integer, as in Azure; a bigger one used to reach the registry (a 500).
    ("POST", "/api/approvals/iris-classifier/99999999999999999999999/approve", "function", (404,)),
    ("POST", "/api/approvals/iris-classifier/2147483648/approve", "function", (404,)),
    ("POST", "/api/approvals/iris-classifier/2147483647/approve", "function", (404,)),
    ("GET", "/api/ops/deadletters/..%2F..%2Fqueues.sqlite3", "admin", (400, 404)),
    ("GET", "/api/ops/deadletters/x'%20OR%20'1'='1", "admin", (400, 404)),
    ("GET", "/api/ops/deadletters/x?queue=..%2F..%2Fetc", "admin", (400, 404)),
    ("GET", "/api/ops/deadletters?queue=train'%20OR%201=1", "admin", (400,)),
    ("GET", "/api/ops/deadletters?queue=..%2Ftrain", "admin", (400,)),
    ("GET", "/api/ops/deadletters?message_id=%25&limit=-1", "admin", (400,)),
    ("POST", "/endpoints/../invocations", "none", (404,)),
    ("POST", "/endpoints/%2e%2e/invocations", "none", (404,)),
    ("POST", "/endpoints/iris%2F..%2F..%2F..%2F/invocations", "none", (404,)),
    ("POST", "/endpoints/a/../../invocations", "none", (404,)),
    ("GET", "/api/../admin/functions", "none", (404,)),
    ("GET", "/api/%2e%2e/admin/host/status", "none", (404,)),
    ("POST", "/admin/functions/..%2F..%2Fetc%2Fpasswd", "admin", (404,)),
    ("POST", "/runtime/webhooks/EventGrid?functionName=..%2Fstatus", "eventgrid", (404,)),
    ("POST", "/runtime/webhooks/EventGrid?functionName=status", "eventgrid", (400,)),
]


@pytest.mark.parametrize(("method", "path", "key", "allowed"), ROUTE_PROBES, ids=[p[1] for p in ROUTE_PROBES])
def test_route_parameters_that_try_traversal_or_injection(
    secure: SecureHost, method: str, path: str, key: str, allowed: tuple[int, ...]
) -> None:
    value = {
        "function": secure.host.function_key,
        "admin": secure.host.master,
        "eventgrid": secure.host.event_grid_key,
    }.get(key)
    before = secure.enqueued()
    status, body = _raw(secure, method, path, {"x-functions-key": value} if value else {})
    _no_effect(secure, before, status, body, allowed)


def test_a_request_line_too_long_is_refused(secure: SecureHost) -> None:
    status, _ = _raw(secure, "GET", "/api/status/" + "x" * 70_000, {"x-functions-key": secure.host.function_key})
    assert status == 414
    assert secure.host.process.poll() is None


# -- model names and versions in signed webhooks and events --------------------------------------------


def _post_mlflow(secure: SecureHost, name: str, version: str = "21") -> requests.Response:
    body = _mlflow_body(version).replace(b'"iris-classifier"', json.dumps(name).encode())
    return requests.post(f"{secure.url}/api/webhooks/mlflow", data=body, headers=mlflow_headers(body), timeout=60)


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=lambda n: repr(n[:30]))
def test_hostile_model_names_in_signed_webhooks_and_drift_alerts_are_ignored(secure: SecureHost, name: str) -> None:
    before = secure.enqueued()
    answer = _post_mlflow(secure, name)
    assert answer.status_code == 200 and answer.json() == {"outcome": "ignored"}, answer.text
    body = _databricks_body("22").replace(b'"iris-classifier"', json.dumps(name).encode())
    answer = requests.post(
        f"{secure.url}/api/webhooks/databricks", data=body, headers={"X-Databricks-Signature": _dbx(body)}, timeout=60
    )
    assert answer.status_code == 200 and answer.json() == {"outcome": "ignored"}, answer.text
    alert = {
        "specversion": "1.0",
        "type": "io.signalbox.drift.detected",
        "source": "/security/test",
        "id": str(uuid.uuid4()),
        "data": {"model_name": name},
    }
    answer = requests.post(
        f"{secure.url}/runtime/webhooks/EventGrid",
        params={"functionName": "alert_events"},
        headers={"x-functions-key": secure.host.event_grid_key, "Content-Type": "application/cloudevents+json"},
        data=json.dumps(alert),
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert secure.enqueued() == before


@pytest.mark.parametrize(
    "version", ["1' OR '1'='1", "../1", "1.0", "-1", "1e3", "\u0661", "latest", "2147483648", "9" * 30]
)
def test_a_webhook_version_that_is_not_a_number_is_a_400(secure: SecureHost, version: str) -> None:
    before = secure.enqueued()
    answer = _post_mlflow(secure, "iris-classifier", version)
    assert answer.status_code == 400 and "data.version" in answer.json()["error"], answer.text
    body = _databricks_body("x").replace(b'"x"', json.dumps(version).encode())
    answer = requests.post(
        f"{secure.url}/api/webhooks/databricks", data=body, headers={"X-Databricks-Signature": _dbx(body)}, timeout=60
    )
    assert answer.status_code == 400 and "version" in answer.json()["error"], answer.text
    assert secure.enqueued() == before


@pytest.mark.parametrize("version", ["2147483648", "9" * 30, 1e300, "1\n2"])
def test_a_model_registered_event_with_an_impossible_version_is_refused(secure: SecureHost, version: Any) -> None:
    event = {
        "id": str(uuid.uuid4()),
        "topic": "/subscriptions/local/resourceGroups/local/providers/Microsoft.MachineLearningServices/workspaces/w",
        "subject": "models/iris-classifier",
        "eventType": "Microsoft.MachineLearningServices.ModelRegistered",
        "eventTime": "2026-11-23T10:00:00Z",
        "dataVersion": "2",
        "data": {"ModelName": "iris-classifier", "ModelVersion": version},
    }
    before = secure.enqueued()
    answer = secure.deliver("workspace_events", [event])
    assert answer.status_code == 200, answer.text
    assert secure.enqueued() == before
    assert any(e["data"]["event_id"] == event["id"] for e in _events(secure, "EventRefused"))


# -- blob paths of BlobCreated --------------------------------------------------------------------------

LANDING_TOPIC = "/subscriptions/local/resourceGroups/local/providers/Microsoft.Storage/storageAccounts/local"


def _blob_event(subject_path: str, url: str, *, container: str = "landing") -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "topic": LANDING_TOPIC,
        "subject": f"/blobServices/default/containers/{container}/blobs/{subject_path}",
        "eventType": "Microsoft.Storage.BlobCreated",
        "eventTime": "2026-11-23T10:00:00Z",
        "dataVersion": "",
        "data": {"api": "PutBlob", "url": url, "contentLength": 10},
    }


def _landing(secure: SecureHost) -> Path:
    return (secure.state / "landing" / "landing").resolve()


SECRET_FILE_TEXT = "sepal_length,target\n6.6,6\n"  # readable CSV: if it were opened, training would start


@pytest.fixture(scope="module")
def outside(secure: SecureHost) -> Path:
    """A readable CSV outside the landing zone (in the state dir, next to the keys)."""
    path = secure.state / "outside.csv"
    path.write_text(SECRET_FILE_TEXT)
    link = _landing(secure) / "iris" / "link.csv"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(path)
    return path.resolve()


BLOB_CASES: dict[str, Callable[[Path, Path], dict[str, Any]]] = {
    "dot-dot in the subject": lambda lz, out: _blob_event("iris/../../../outside.csv", (lz / "iris/x.csv").as_uri()),
    "encoded dot-dot in the subject": lambda lz, out: _blob_event("iris/%2e%2e/%2E%2E/outside.csv", out.as_uri()),
    "absolute blob path": lambda lz, out: _blob_event(f"/{out}", out.as_uri()),
    "dot-dot container": lambda lz, out: _blob_event("iris/x.csv", out.as_uri(), container=".."),
    "encoded slash in the container": lambda lz, out: _blob_event("iris/x.csv", out.as_uri(), container="landing%2F.."),
    "backslashes": lambda lz, out: _blob_event("iris\\..\\..\\outside.csv", out.as_uri()),
    "subject in the zone, url outside": lambda lz, out: _blob_event("iris/batch.csv", out.as_uri()),
    "url climbing out of the zone": lambda lz, out: _blob_event(
        "iris/outside.csv", (lz / "iris").as_uri() + "/../../../outside.csv"
    ),
    "url with encoded dot-dot": lambda lz, out: _blob_event(
        "iris/outside.csv", (lz / "iris").as_uri() + "/%2e%2e%2f%2e%2e%2f%2e%2e%2foutside.csv"
    ),
    "plain path, no scheme": lambda lz, out: _blob_event("iris/outside.csv", str(lz / "iris" / "outside.csv")),
    "file URL on another machine": lambda lz, out: _blob_event(
        "iris/x.csv", "file://attacker.example/landing/iris/x.csv"
    ),
    "https URL on another host": lambda lz, out: _blob_event(
        "iris/x.csv", "https://attacker.example/landing/iris/x.csv"
    ),
    "ftp URL": lambda lz, out: _blob_event("iris/x.csv", "ftp://127.0.0.1/landing/iris/x.csv"),
    "control character": lambda lz, out: _blob_event("iris/x%00.csv", (lz / "iris/x.csv").as_uri() + "%00"),
    "overlong name": lambda lz, out: _blob_event("iris/" + "a" * 1100, (lz / "iris").as_uri() + "/" + "a" * 1100),
}


@pytest.mark.parametrize("case", list(BLOB_CASES))
def test_blob_paths_that_leave_the_landing_zone_are_refused(secure: SecureHost, outside: Path, case: str) -> None:
    event = BLOB_CASES[case](_landing(secure), outside)
    before = secure.enqueued()
    answer = secure.deliver("landing_events", [event], **{"aeg-event-type": "Notification"})
    # Refused once and recorded (EventRefused); a 5xx would make Event Grid retry it for a day.
    assert answer.status_code == 200, answer.text
    assert secure.enqueued() == before
    refused = _events(secure, "EventRefused")
    assert any(e["data"]["event_id"] == event["id"] for e in refused), f"no EventRefused for {case}"


def test_a_symlink_out_of_the_landing_zone_is_refused_unread(secure: SecureHost, outside: Path) -> None:
    link = _landing(secure) / "iris" / "link.csv"
    event = _blob_event("iris/link.csv", link.as_uri())
    before = secure.enqueued()
    answer = secure.deliver("landing_events", [event])
    assert answer.status_code == 200, answer.text
    assert secure.enqueued() == before
    (refusal,) = [e for e in _events(secure, "DataRefused") if e["data"]["data_uri"] == link.as_uri()]
    assert "outside the landing zone" in refusal["data"]["reason"]


def test_a_blob_inside_the_landing_zone_still_trains(secure: SecureHost) -> None:
    landed = _landing(secure) / "iris" / "2026" / "batch 7+x.csv"
    landed.parent.mkdir(parents=True, exist_ok=True)
    landed.write_text(SECRET_FILE_TEXT)
    before = secure.enqueued()
    answer = requests.post(
        f"{secure.url}/runtime/webhooks/EventGrid",
        params={"functionName": "landing_events"},
        headers={"x-functions-key": secure.host.event_grid_key},
        json=[_blob_event(quote("iris/2026/batch 7+x.csv"), landed.as_uri())],
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert secure.enqueued() == before + 1


def _events(secure: SecureHost, kind: str) -> list[dict[str, Any]]:
    path = secure.state / "events.jsonl"
    deadline = time.monotonic() + 5
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["type"] == f"io.signalbox.{kind}"]


# -- the validation points, directly ------------------------------------------------------------------


def test_the_local_landing_zone_opens_nothing_outside_its_root(tmp_path: Path) -> None:
    root = tmp_path / "landing"
    (root / "iris").mkdir(parents=True)
    inside = root / "iris" / "a.csv"
    inside.write_text("x\n1\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (root / "iris" / "link.csv").symlink_to(secret)
    zone = LocalLandingZone(root)
    assert zone.size(inside.as_uri()) == 4
    assert zone.size(str(inside)) == 4
    for uri in (
        secret.as_uri(),
        str(secret),
        (root / "iris").as_uri() + "/../../secret.txt",
        (root / "iris").as_uri() + "/%2e%2e/%2e%2e/secret.txt",
        (root / "iris" / "link.csv").as_uri(),
        "file:///etc/hostname",
    ):
        with pytest.raises(OSError, match="outside the landing zone"):
            zone.size(uri)


@pytest.mark.parametrize(
    ("subject", "url", "field"),
    [
        ("iris/../x.csv", "https://local.blob.core.windows.net/landing/x.csv", "subject"),
        ("iris/./x.csv", "https://local.blob.core.windows.net/landing/iris/./x.csv", "subject"),
        ("iris/x.csv", "https://local.blob.core.windows.net/landing/iris/y.csv", "data.url"),
        ("iris/x.csv", "https://other.blob.core.windows.net/landing/iris/x.csv", "data.url"),
        ("iris/x.csv", "http://127.0.0.1:10000/other/landing/iris/x.csv", "data.url"),
        ("iris/x.csv", "javascript:alert(1)//landing/iris/x.csv", "data.url"),
    ],
)
def test_blob_created_names_one_blob_of_the_topics_account(subject: str, url: str, field: str) -> None:
    event = InboundEvent(
        id="e",
        type="Microsoft.Storage.BlobCreated",
        source=LANDING_TOPIC,
        subject=f"/blobServices/default/containers/landing/blobs/{subject}",
        time=None,
        data={"url": url},
        data_version="",
        schema="eventgrid",
    )
    with pytest.raises(InvalidEvent) as refused:
        interpret(event)
    assert refused.value.field == field


@pytest.mark.parametrize(
    "name", [n for n in HOSTILE_NAMES if n not in ("IRIS-CLASSIFIER",)], ids=lambda n: repr(n[:30])
)
def test_the_catalogue_refuses_hostile_model_names(tmp_path: Path, name: str) -> None:
    path = tmp_path / "catalogue.toml"
    entry = '[models.{}]\nkind = "rule_based"\ntraining = {{ job = "j" }}\ndata = {{ container = "landing" }}\n'
    path.write_text(entry.format(json.dumps(name)), encoding="utf-8")
    with pytest.raises(CatalogueError, match=r": name: "):
        load_catalogue(path)


def test_the_catalogue_keeps_ordinary_and_unity_catalog_names(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.toml"
    entry = '[models."{}"]\nkind = "rule_based"\ntraining = {{ job = "j" }}\ndata = {{ container = "landing" }}\n'
    names = ["iris-classifier", "main.ml.churn_v2", "A1"]
    path.write_text("".join(entry.format(n) for n in names), encoding="utf-8")
    assert sorted(load_catalogue(path).models) == sorted(names)


def test_mlflow_searches_never_take_user_text_as_filter_syntax(tmp_path: Path) -> None:
    from shared.adapters.mlflow.registry import MlflowRegistry

    registry = MlflowRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = registry._client
    client.create_registered_model("iris-classifier")
    client.create_model_version("iris-classifier", source=tmp_path.as_uri(), run_id=None)
    assert [v.version for v in registry.list_versions("iris-classifier")] == ["1"]  # the control
    for hostile in (
        "x' OR name='iris-classifier",
        'x" OR name="iris-classifier',
        'x\' OR "1"="1',
        "iris-classifier' OR '1'='1",
        "iris%",
        "%",
        "iris-classifier' --",
    ):
        assert registry.list_versions(hostile) == [], hostile
    for hostile in ("x' OR name='iris-classifier", "' OR 1=1 --", "../x"):
        with pytest.raises(ValueError, match="not a run id"):
            registry.versions_of_run(hostile)
