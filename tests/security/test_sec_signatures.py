"""Signed ingress, from outside: every wrong signature or key is a 401 and enqueues nothing.

Each refusal is checked against a real ``signalbox host`` process and its SQLite queues; each ingress
also has a positive control (the right signature enqueues exactly one command), so a test that
refuses everything cannot pass. The answer for anything wrong with authentication is 401 with a
JSON problem that names the header, never the secret or the expected signature (README, "Security").
"""

from __future__ import annotations

import base64
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests

from shared import webhooks
from signalbox.localhost.config import HostKeys
from tests.security.stack import SECRETS, TOLERANCE_SECONDS, SecureHost, leaks

MODEL = "iris-classifier"
Headers = dict[str, str]


def _refused(secure: SecureHost, response: requests.Response, before: int, *, expected: str = "") -> None:
    assert response.status_code == 401, f"{response.status_code}: {response.text[:300]}"
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()  # a problem document that says what is wrong
    assert secure.enqueued() == before, "a refused request enqueued a command"
    assert not leaks(response.text, secure.all_secrets)
    if expected:
        assert expected not in response.text


# -- MLflow: X-MLflow-Signature v1,base64(HMAC-SHA256(secret, f"{delivery}.{timestamp}.{body}")) -----


def _mlflow_body(version: str) -> bytes:
    data = {"name": MODEL, "version": version, "source": "models:/m/1", "run_id": "abc", "tags": {}}
    payload = {"entity": "model_version", "action": "created", "timestamp": 1, "data": data}
    return json.dumps(payload).encode()


def _mlflow_digest(body: bytes, delivery: str, timestamp: str, *, secret: str, algorithm: str = "sha256") -> bytes:
    return hmac.new(secret.encode(), f"{delivery}.{timestamp}.".encode() + body, algorithm).digest()


def mlflow_headers(
    body: bytes,
    *,
    delivery: str = "delivery-1",
    timestamp: int | str | None = None,
    secret: str = SECRETS["SIGNALBOX_MLFLOW_WEBHOOK_SECRET"],
    algorithm: str = "sha256",
    scheme: str = "v1",
) -> Headers:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = _mlflow_digest(body, delivery, stamp, secret=secret, algorithm=algorithm)
    return {
        "X-MLflow-Signature": f"{scheme},{base64.b64encode(digest).decode()}",
        "X-MLflow-Delivery-Id": delivery,
        "X-MLflow-Timestamp": stamp,
        "Content-Type": "application/json",
    }


def _without(headers: Headers, name: str) -> Headers:
    return {k: v for k, v in headers.items() if k != name}


def _truncated_mlflow(body: bytes) -> tuple[Headers, bytes]:
    headers = mlflow_headers(body)
    stamp = headers["X-MLflow-Timestamp"]
    digest = _mlflow_digest(body, "delivery-1", stamp, secret=SECRETS["SIGNALBOX_MLFLOW_WEBHOOK_SECRET"])
    return {**headers, "X-MLflow-Signature": "v1," + base64.b64encode(digest[:16]).decode()}, body


def _now() -> int:
    # Read when the request is made: collection may be minutes before the test runs.
    return int(time.time())


MLFLOW_REFUSALS: dict[str, Callable[[bytes], tuple[Headers, bytes]]] = {
    "missing signature": lambda b: (_without(mlflow_headers(b), "X-MLflow-Signature"), b),
    "missing delivery id": lambda b: (_without(mlflow_headers(b), "X-MLflow-Delivery-Id"), b),
    "missing timestamp": lambda b: (_without(mlflow_headers(b), "X-MLflow-Timestamp"), b),
    "empty signature": lambda b: ({**mlflow_headers(b), "X-MLflow-Signature": "v1,"}, b),
    "wrong secret": lambda b: (mlflow_headers(b, secret="not-the-secret"), b),
    "stale timestamp": lambda b: (mlflow_headers(b, timestamp=_now() - 3600), b),
    # Inside MLflow's default 300 s but outside the host's SIGNALBOX_WEBHOOK_TOLERANCE_SECONDS: the setting rules.
    "stale for the configured tolerance": lambda b: (mlflow_headers(b, timestamp=_now() - TOLERANCE_SECONDS - 60), b),
    "future timestamp": lambda b: (mlflow_headers(b, timestamp=_now() + TOLERANCE_SECONDS + 30), b),
    "non-numeric timestamp": lambda b: (mlflow_headers(b, timestamp="2026-11-23T10:00:00Z"), b),
    # Correctly signed, but no integer that long is a time (it used to overflow into a 500).
    "absurd timestamp": lambda b: (mlflow_headers(b, timestamp="9" * 5000), b),
    "algorithm v0": lambda b: (mlflow_headers(b, scheme="v0"), b),
    "sha1 digest": lambda b: (mlflow_headers(b, algorithm="sha1"), b),
    "md5 digest": lambda b: (mlflow_headers(b, algorithm="md5"), b),
    "sha512 digest": lambda b: (mlflow_headers(b, algorithm="sha512"), b),
    "truncated digest": _truncated_mlflow,
    "signature cut short": lambda b: (
        {**mlflow_headers(b), "X-MLflow-Signature": mlflow_headers(b)["X-MLflow-Signature"][:-6]},
        b,
    ),
    "non-ascii signature": lambda b: ({**mlflow_headers(b), "X-MLflow-Signature": "v1,\u00e9\u00e9\u00e9="}, b),
    "valid signature replayed over a modified body": lambda b: (mlflow_headers(b), b.replace(b'"11"', b'"99"')),
    "valid signature under another delivery id": lambda b: (
        {**mlflow_headers(b), "X-MLflow-Delivery-Id": "delivery-2"},
        b,
    ),
}


@pytest.mark.parametrize("case", list(MLFLOW_REFUSALS))
def test_mlflow_webhook_refuses(secure: SecureHost, case: str) -> None:
    headers, body = MLFLOW_REFUSALS[case](_mlflow_body("11"))
    before = secure.enqueued()
    answer = requests.post(f"{secure.url}/api/webhooks/mlflow", data=body, headers=headers, timeout=30)
    _refused(secure, answer, before)


def test_mlflow_webhook_accepts_the_right_signature_once(secure: SecureHost) -> None:
    body = _mlflow_body("11")
    before = secure.enqueued()
    for _ in range(2):  # the same delivery again (a replay inside the window) adds nothing
        answer = requests.post(f"{secure.url}/api/webhooks/mlflow", data=body, headers=mlflow_headers(body), timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"outcome": "evaluate"}
    assert secure.enqueued() == before + 1


# -- Databricks: X-Databricks-Signature = hex HMAC-SHA256(secret, body) ----------------------------


def _databricks_body(version: str) -> bytes:
    payload = {
        "event": "MODEL_VERSION_CREATED",
        "webhook_id": "w1",
        "event_timestamp": 1763888102000,
        "model_name": MODEL,
        "version": version,
    }
    return json.dumps(payload).encode()


def _dbx(
    body: bytes, *, secret: str = SECRETS["SIGNALBOX_DATABRICKS_WEBHOOK_SECRET"], algorithm: str = "sha256"
) -> str:
    return hmac.new(secret.encode(), body, algorithm).hexdigest()


DATABRICKS_REFUSALS: dict[str, Callable[[bytes], tuple[Headers, bytes]]] = {
    "missing signature": lambda b: ({}, b),
    "empty signature": lambda b: ({"X-Databricks-Signature": ""}, b),
    "wrong secret": lambda b: ({"X-Databricks-Signature": _dbx(b, secret="not-the-secret")}, b),
    "sha1 digest": lambda b: ({"X-Databricks-Signature": _dbx(b, algorithm="sha1")}, b),
    "md5 digest": lambda b: ({"X-Databricks-Signature": _dbx(b, algorithm="md5")}, b),
    "algorithm prefix": lambda b: ({"X-Databricks-Signature": "sha256=" + _dbx(b)}, b),
    "base64 instead of hex": lambda b: (
        {"X-Databricks-Signature": base64.b64encode(bytes.fromhex(_dbx(b))).decode()},
        b,
    ),
    "truncated": lambda b: ({"X-Databricks-Signature": _dbx(b)[:32]}, b),
    "non-ascii signature": lambda b: ({"X-Databricks-Signature": "\u00e9" * 64}, b),
    "valid signature replayed over a modified body": lambda b: (
        {"X-Databricks-Signature": _dbx(b)},
        b.replace(b'"12"', b'"99"'),
    ),
}


@pytest.mark.parametrize("case", list(DATABRICKS_REFUSALS))
def test_databricks_webhook_refuses(secure: SecureHost, case: str) -> None:
    headers, body = DATABRICKS_REFUSALS[case](_databricks_body("12"))
    before = secure.enqueued()
    answer = requests.post(f"{secure.url}/api/webhooks/databricks", data=body, headers=headers, timeout=30)
    _refused(secure, answer, before, expected=_dbx(_databricks_body("12")))


def test_databricks_webhook_accepts_the_right_signature_once(secure: SecureHost) -> None:
    # Databricks signs the body only (no timestamp): a replayed delivery is absorbed by deduplication.
    body = _databricks_body("12")
    before = secure.enqueued()
    for _ in range(2):
        answer = requests.post(
            f"{secure.url}/api/webhooks/databricks",
            data=body,
            headers={"X-Databricks-Signature": _dbx(body)},
            timeout=60,
        )
        assert answer.status_code == 200 and answer.json() == {"outcome": "evaluate"}, answer.text
    assert secure.enqueued() == before + 1


# -- GitHub: X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)> ----------------------------


def _github_body(sha: str) -> bytes:
    payload: dict[str, Any] = {
        "ref": "refs/heads/main",
        "after": sha,
        "deleted": False,
        "repository": {"full_name": "contoso/signalbox"},
        "head_commit": {"id": sha, "added": [], "removed": [], "modified": ["src/train.py"]},
    }
    return json.dumps(payload).encode()


def _gh(body: bytes, *, secret: str = SECRETS["SIGNALBOX_GITHUB_WEBHOOK_SECRET"], algorithm: str = "sha256") -> str:
    return hmac.new(secret.encode(), body, algorithm).hexdigest()


def github_headers(**extra: str) -> Headers:
    return {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "Content-Type": "application/json",
        **extra,
    }


GITHUB_REFUSALS: dict[str, Callable[[bytes], tuple[Headers, bytes]]] = {
    "missing signature": lambda b: (github_headers(), b),
    # The legacy SHA-1 header alone, correctly signed: SHA-1 is not accepted.
    "sha1-only X-Hub-Signature": lambda b: (
        github_headers(**{"X-Hub-Signature": "sha1=" + _gh(b, algorithm="sha1")}),
        b,
    ),
    "sha1 in the 256 header": lambda b: (
        github_headers(**{"X-Hub-Signature-256": "sha1=" + _gh(b, algorithm="sha1")}),
        b,
    ),
    "md5": lambda b: (github_headers(**{"X-Hub-Signature-256": "md5=" + _gh(b, algorithm="md5")}), b),
    "sha512": lambda b: (github_headers(**{"X-Hub-Signature-256": "sha512=" + _gh(b, algorithm="sha512")}), b),
    "no algorithm prefix": lambda b: (github_headers(**{"X-Hub-Signature-256": _gh(b)}), b),
    "wrong secret": lambda b: (github_headers(**{"X-Hub-Signature-256": "sha256=" + _gh(b, secret="nope")}), b),
    "truncated": lambda b: (github_headers(**{"X-Hub-Signature-256": "sha256=" + _gh(b)[:40]}), b),
    "non-ascii signature": lambda b: (github_headers(**{"X-Hub-Signature-256": "sha256=" + "\u00e9" * 64}), b),
    "valid signature replayed over a modified body": lambda b: (
        github_headers(**{"X-Hub-Signature-256": "sha256=" + _gh(b)}),
        b.replace(b"refs/heads/main", b"refs/heads/release"),
    ),
}


@pytest.fixture(scope="module")
def landed(secure: SecureHost) -> None:
    """iris-classifier has landed data, so a signed push to main would retrain it (the positive control)."""
    target = secure.state / "landing" / "landing" / "iris" / "signed.csv"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("sepal_length,target\n1.0,0\n")
    event = {
        "id": str(uuid.uuid4()),
        "topic": "/subscriptions/local/resourceGroups/local/providers/Microsoft.Storage/storageAccounts/local",
        "subject": "/blobServices/default/containers/landing/blobs/iris/signed.csv",
        "eventType": "Microsoft.Storage.BlobCreated",
        "eventTime": "2026-11-23T10:00:00Z",
        "dataVersion": "",
        "data": {"api": "PutBlob", "url": target.resolve().as_uri(), "contentLength": 24},
    }
    answer = secure.deliver("landing_events", [event])
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("case", list(GITHUB_REFUSALS))
def test_github_webhook_refuses(secure: SecureHost, landed: None, case: str) -> None:
    headers, body = GITHUB_REFUSALS[case](_github_body("a" * 40))
    before = secure.enqueued()
    answer = requests.post(f"{secure.url}/api/webhooks/github", data=body, headers=headers, timeout=30)
    _refused(secure, answer, before, expected=_gh(_github_body("a" * 40)))


def test_github_webhook_accepts_the_right_signature(secure: SecureHost, landed: None) -> None:
    body = _github_body("b" * 40)
    before = secure.enqueued()
    headers = github_headers(**{"X-Hub-Signature-256": "sha256=" + _gh(body)})
    answer = requests.post(f"{secure.url}/api/webhooks/github", data=body, headers=headers, timeout=60)
    assert answer.status_code == 200 and answer.json() == {"outcome": "train", "models": [MODEL]}, answer.text
    assert secure.enqueued() == before + 1


# -- Event Grid: the system key on /runtime/webhooks/EventGrid ---------------------------------------


def _model_registered(version: str) -> list[dict[str, Any]]:
    return [
        {
            "id": str(uuid.uuid4()),
            "topic": "/subscriptions/local/resourceGroups/local/providers/Microsoft.MachineLearningServices/"
            "workspaces/local",
            "subject": f"models/{MODEL}:{version}",
            "eventType": "Microsoft.MachineLearningServices.ModelRegistered",
            "eventTime": "2026-11-23T10:00:00Z",
            "dataVersion": "2",
            "data": {"ModelName": MODEL, "ModelVersion": version},
        }
    ]


# Event Grid authenticates the subscription by the key alone (nothing signs the body, so there is no
# timestamp or algorithm to get wrong): a wrong, partial or misplaced key is what can be tried.
EVENT_GRID_REFUSALS: dict[str, Callable[[SecureHost], tuple[dict[str, str], Headers]]] = {
    "no key": lambda s: ({}, {}),
    "wrong key": lambda s: ({"code": "not-a-key"}, {}),
    "empty key": lambda s: ({"code": ""}, {"x-functions-key": ""}),
    "truncated key": lambda s: ({"code": s.host.event_grid_key[:-4]}, {}),
    "key with a suffix": lambda s: ({"code": s.host.event_grid_key + "x"}, {}),
    "key in another case": lambda s: ({"code": s.host.event_grid_key.swapcase()}, {}),
    # A function key opens function endpoints (approvals, status), not an extension's webhook.
    "function key": lambda s: ({}, {"x-functions-key": s.host.function_key}),
    "key in Event Grid's topic header": lambda s: ({}, {"aeg-sas-key": s.host.event_grid_key}),
}


@pytest.mark.parametrize("case", list(EVENT_GRID_REFUSALS))
def test_event_grid_refuses(secure: SecureHost, case: str) -> None:
    params, headers = EVENT_GRID_REFUSALS[case](secure)
    before = secure.enqueued()
    answer = requests.post(
        f"{secure.url}/runtime/webhooks/EventGrid",
        params={"functionName": "workspace_events", **params},
        headers={"aeg-event-type": "Notification", **headers},
        json=_model_registered("13"),
        timeout=30,
    )
    _refused(secure, answer, before)


@pytest.mark.parametrize(
    ("version", "where", "key"),
    [("14", "header", "eventGridKey"), ("15", "query", "eventGridKey"), ("16", "header", "masterKey")],
)
def test_event_grid_accepts_the_system_key_or_the_master_key(
    secure: SecureHost, version: str, where: str, key: str
) -> None:
    value = secure.all_secrets[key]
    before = secure.enqueued()
    answer = requests.post(
        f"{secure.url}/runtime/webhooks/EventGrid",
        params={"functionName": "workspace_events", **({"code": value} if where == "query" else {})},
        headers={"aeg-event-type": "Notification", **({"x-functions-key": value} if where == "header" else {})},
        json=_model_registered(version),
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert secure.enqueued() == before + 1


# -- constant-time comparison (unit level) ------------------------------------------------------------


def test_every_signature_check_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(webhooks.hmac, "compare_digest", spy)
    body = b'{"event": "x"}'
    checks = {
        "mlflow": lambda: webhooks.verify_mlflow(
            {"X-MLflow-Signature": "v1,AAAA", "X-MLflow-Delivery-Id": "d", "X-MLflow-Timestamp": str(_now())},
            body,
            "s",
            now=_now(),
        ),
        "github": lambda: webhooks.verify_github({"X-Hub-Signature-256": "sha256=" + "0" * 64}, body, "s"),
        "databricks": lambda: webhooks.verify_databricks({"X-Databricks-Signature": "0" * 64}, body, "s"),
    }
    for name, check in checks.items():
        calls.clear()
        with pytest.raises(webhooks.WebhookRejected) as refused:
            check()
        assert refused.value.status == 401, name
        assert calls, f"{name}: the signature was not compared with hmac.compare_digest"


def test_host_keys_compare_in_constant_time_and_keep_key_kinds_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    import secrets as secrets_module

    calls: list[tuple[bytes, bytes]] = []
    real = secrets_module.compare_digest
    monkeypatch.setattr(
        "signalbox.localhost.config.secrets.compare_digest", lambda a, b: calls.append((a, b)) or real(a, b)
    )
    keys = HostKeys(master="m" * 43, function_default="f" * 43, event_grid="e" * 43)
    assert keys.allows("admin", "m" * 43) and not keys.allows("admin", "f" * 43) and not keys.allows("admin", "e" * 43)
    assert keys.allows("function", "f" * 43) and keys.allows("function", "m" * 43)
    assert not keys.allows("function", "e" * 43)
    assert keys.allows("function", "e" * 43, system=True) and keys.allows("function", "m" * 43, system=True)
    assert not keys.allows("function", "f" * 43, system=True)
    assert not keys.allows("admin", None) and not keys.allows("function", "")
    assert calls and all(isinstance(a, bytes) for a, _ in calls)
