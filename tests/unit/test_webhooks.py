"""Inbound webhooks are authenticated and parsed the way each sender documents them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from shared.webhooks import (
    DatabricksEvent,
    GithubPush,
    MlflowEvent,
    WebhookRejected,
    parse_databricks,
    parse_github,
    parse_mlflow,
    path_matches,
    verify_databricks,
    verify_github,
    verify_mlflow,
)

REPO = Path(__file__).resolve().parents[2]

SECRET = "s3cr3t-for-tests"
NOW = 1_760_000_000


def _json(payload: Any) -> bytes:
    return json.dumps(payload).encode()


# -- MLflow ----------------------------------------------------------------------------------


def mlflow_headers(body: bytes, *, secret: str = SECRET, timestamp: int = NOW, delivery: str = "d-1") -> dict[str, str]:
    """Headers as mlflow/webhooks/delivery.py builds them."""
    signed = f"{delivery}.{timestamp}.{body.decode()}".encode()
    signature = base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery,
        "X-MLflow-Timestamp": str(timestamp),
        "X-MLflow-Signature": f"v1,{signature}",
    }


MLFLOW_CREATED = {
    "entity": "model_version",
    "action": "created",
    "timestamp": "2025-10-09T08:53:20.000000+00:00",
    "data": {
        "name": "churn",
        "version": "3",
        "source": "models:/m-123",
        "run_id": "0123456789abcdef0123456789abcdef",
        "tags": {"team": "ml"},
        "description": None,
    },
}


def reason(error: pytest.ExceptionInfo[WebhookRejected]) -> str:
    return str(error.value)


class TestVerifyMlflow:
    def test_valid_signature_returns_the_delivery_id(self) -> None:
        body = _json(MLFLOW_CREATED)
        assert verify_mlflow(mlflow_headers(body), body, SECRET, now=NOW) == "d-1"

    def test_headers_are_case_insensitive(self) -> None:
        body = _json(MLFLOW_CREATED)
        headers = {k.lower(): v for k, v in mlflow_headers(body).items()}
        assert verify_mlflow(headers, body, SECRET, now=NOW) == "d-1"

    def test_non_ascii_body_is_signed_as_utf8(self) -> None:
        body = json.dumps({**MLFLOW_CREATED, "data": {"name": "modèle", "version": "1"}}, ensure_ascii=False).encode()
        assert verify_mlflow(mlflow_headers(body), body, SECRET, now=NOW) == "d-1"

    def test_any_of_several_signatures_may_match(self) -> None:
        body = _json(MLFLOW_CREATED)
        headers = mlflow_headers(body)
        headers["X-MLflow-Signature"] = f"v1,{base64.b64encode(b'x' * 32).decode()} {headers['X-MLflow-Signature']}"
        assert verify_mlflow(headers, body, SECRET, now=NOW) == "d-1"

    def test_wrong_secret_is_401_and_reveals_nothing(self) -> None:
        body = _json(MLFLOW_CREATED)
        headers = mlflow_headers(body, secret="another")
        with pytest.raises(WebhookRejected) as error:
            verify_mlflow(headers, body, SECRET, now=NOW)
        assert error.value.status == 401
        assert "signature" in reason(error)
        expected = mlflow_headers(body)["X-MLflow-Signature"]
        assert SECRET not in reason(error) and expected not in reason(error)

    def test_tampered_body_is_401(self) -> None:
        body = _json(MLFLOW_CREATED)
        headers = mlflow_headers(body)
        with pytest.raises(WebhookRejected) as error:
            verify_mlflow(headers, body.replace(b'"3"', b'"4"'), SECRET, now=NOW)
        assert error.value.status == 401

    def test_tampered_delivery_id_or_timestamp_is_401(self) -> None:
        body = _json(MLFLOW_CREATED)
        for header, value in (("X-MLflow-Delivery-Id", "d-2"), ("X-MLflow-Timestamp", str(NOW + 1))):
            headers = {**mlflow_headers(body), header: value}
            with pytest.raises(WebhookRejected) as error:
                verify_mlflow(headers, body, SECRET, now=NOW)
            assert error.value.status == 401

    @pytest.mark.parametrize("header", ["X-MLflow-Signature", "X-MLflow-Delivery-Id", "X-MLflow-Timestamp"])
    def test_missing_header_is_401_naming_it(self, header: str) -> None:
        body = _json(MLFLOW_CREATED)
        headers = mlflow_headers(body)
        del headers[header]
        with pytest.raises(WebhookRejected) as error:
            verify_mlflow(headers, body, SECRET, now=NOW)
        assert error.value.status == 401
        assert header in reason(error)

    @pytest.mark.parametrize("signature", ["", "v1,", "v2,abcd", "v1,not base64!", "garbage"])
    def test_malformed_signature_is_401(self, signature: str) -> None:
        body = _json(MLFLOW_CREATED)
        headers = {**mlflow_headers(body), "X-MLflow-Signature": signature}
        with pytest.raises(WebhookRejected) as error:
            verify_mlflow(headers, body, SECRET, now=NOW)
        assert error.value.status == 401

    def test_non_numeric_timestamp_is_401(self) -> None:
        body = _json(MLFLOW_CREATED)
        headers = {**mlflow_headers(body), "X-MLflow-Timestamp": "yesterday"}
        with pytest.raises(WebhookRejected) as error:
            verify_mlflow(headers, body, SECRET, now=NOW)
        assert error.value.status == 401

    @pytest.mark.parametrize("offset", [-301, 301, -3600, 3600])
    def test_timestamp_outside_the_window_is_401(self, offset: int) -> None:
        body = _json(MLFLOW_CREATED)
        headers = mlflow_headers(body, timestamp=NOW + offset)
        with pytest.raises(WebhookRejected) as error:
            verify_mlflow(headers, body, SECRET, now=NOW)
        assert error.value.status == 401
        assert "window" in reason(error)

    @pytest.mark.parametrize("offset", [-300, 0, 300])
    def test_timestamp_inside_the_window_passes(self, offset: int) -> None:
        body = _json(MLFLOW_CREATED)
        assert verify_mlflow(mlflow_headers(body, timestamp=NOW + offset), body, SECRET, now=NOW) == "d-1"

    def test_tolerance_is_configurable(self) -> None:
        body = _json(MLFLOW_CREATED)
        headers = mlflow_headers(body, timestamp=NOW - 20)
        with pytest.raises(WebhookRejected):
            verify_mlflow(headers, body, SECRET, now=NOW, tolerance_seconds=10)

    def test_an_empty_secret_never_verifies(self) -> None:
        body = _json(MLFLOW_CREATED)
        with pytest.raises(WebhookRejected) as error:
            verify_mlflow(mlflow_headers(body, secret=""), body, "", now=NOW)
        assert error.value.status == 401


class TestParseMlflow:
    def test_model_version_created(self) -> None:
        event = parse_mlflow(_json(MLFLOW_CREATED), "d-1")
        assert event == MlflowEvent(
            delivery_id="d-1",
            entity="model_version",
            action="created",
            model_name="churn",
            version="3",
            run_id="0123456789abcdef0123456789abcdef",
            tags={"team": "ml"},
        )

    def test_null_run_id_and_missing_tags(self) -> None:
        payload = {**MLFLOW_CREATED, "data": {"name": "churn", "version": "1", "run_id": None}}
        event = parse_mlflow(_json(payload), "d-1")
        assert event.run_id is None and event.tags == {}

    def test_tag_set_carries_the_tag(self) -> None:
        payload = {
            "entity": "model_version_tag",
            "action": "set",
            "timestamp": "t",
            "data": {"name": "churn", "version": "2", "key": "stage", "value": "staged"},
        }
        event = parse_mlflow(_json(payload), "d-9")
        assert (event.entity, event.action, event.version, event.tags) == (
            "model_version_tag",
            "set",
            "2",
            {"stage": "staged"},
        )

    def test_registered_model_created_has_no_version(self) -> None:
        payload = {"entity": "registered_model", "action": "created", "data": {"name": "churn", "tags": {}}}
        event = parse_mlflow(_json(payload), "d-1")
        assert event.model_name == "churn" and event.version is None

    @pytest.mark.parametrize("body", [b"not json", b"\xff\xfe", b"[1, 2]", b'"text"'])
    def test_malformed_body_is_400(self, body: bytes) -> None:
        with pytest.raises(WebhookRejected) as error:
            parse_mlflow(body, "d-1")
        assert error.value.status == 400

    @pytest.mark.parametrize(
        ("mutate", "field"),
        [
            (lambda p: p.pop("entity"), "entity"),
            (lambda p: p.pop("action"), "action"),
            (lambda p: p.pop("data"), "data"),
            (lambda p: p["data"].pop("name"), "data.name"),
            (lambda p: p["data"].pop("version"), "data.version"),
            (lambda p: p.__setitem__("data", []), "data"),
            (lambda p: p.__setitem__("entity", 7), "entity"),
            (lambda p: p["data"].__setitem__("run_id", 5), "data.run_id"),
            (lambda p: p["data"].__setitem__("tags", {"a": 1}), "data.tags"),
        ],
    )
    def test_missing_or_wrong_field_is_400_naming_it(self, mutate: Any, field: str) -> None:
        payload = json.loads(json.dumps(MLFLOW_CREATED))
        mutate(payload)
        with pytest.raises(WebhookRejected) as error:
            parse_mlflow(_json(payload), "d-1")
        assert error.value.status == 400
        assert f"'{field}'" in reason(error)


# -- GitHub ----------------------------------------------------------------------------------


def github_headers(body: bytes, event: str = "push", *, secret: str = SECRET) -> dict[str, str]:
    """Headers as GitHub documents them for a JSON delivery."""
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
    }


SHA = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
PUSH = {
    "ref": "refs/heads/main",
    "before": "9049f1265b7d61be4a8904a9a27120d2064dab3b",
    "after": SHA,
    "created": False,
    "deleted": False,
    "forced": False,
    "repository": {"full_name": "contoso/churn-model", "name": "churn-model"},
    "commits": [
        {"id": "a" * 40, "added": ["src/features.py"], "modified": ["README.md"], "removed": []},
        {"id": SHA, "added": [], "modified": ["src/train.py"], "removed": ["jobs/old.py"]},
    ],
    "head_commit": {"id": SHA, "added": ["jobs/new.py"], "modified": ["src/train.py"], "removed": []},
}


class TestGithub:
    def test_valid_signature(self) -> None:
        body = _json(PUSH)
        verify_github(github_headers(body), body, SECRET)

    def test_wrong_secret_tampered_body_and_missing_header_are_401(self) -> None:
        body = _json(PUSH)
        cases = [
            (github_headers(body, secret="other"), body),
            (github_headers(body), body + b" "),
            ({k: v for k, v in github_headers(body).items() if k != "X-Hub-Signature-256"}, body),
            ({**github_headers(body), "X-Hub-Signature-256": "sha1=abc"}, body),
            ({**github_headers(body), "X-Hub-Signature-256": "sha256="}, body),
        ]
        for headers, sent in cases:
            with pytest.raises(WebhookRejected) as error:
                verify_github(headers, sent, SECRET)
            assert error.value.status == 401
            assert SECRET not in reason(error)

    def test_ping(self) -> None:
        body = _json({"zen": "Keep it logically awesome.", "hook_id": 1})
        assert parse_github(github_headers(body, "ping"), body) == "ping"

    def test_push_to_a_branch(self) -> None:
        body = _json(PUSH)
        push = parse_github({k.lower(): v for k, v in github_headers(body).items()}, body)
        assert push == GithubPush(
            delivery_id="72d3162e-cc78-11e3-81ab-4c9367dc0958",
            repository="contoso/churn-model",
            branch="main",
            commit_sha=SHA,
            deleted=False,
            changed_paths=("README.md", "jobs/new.py", "jobs/old.py", "src/features.py", "src/train.py"),
        )

    def test_branch_with_slashes(self) -> None:
        body = _json({**PUSH, "ref": "refs/heads/feature/x"})
        push = parse_github(github_headers(body), body)
        assert isinstance(push, GithubPush) and push.branch == "feature/x"

    def test_branch_deletion(self) -> None:
        payload = {**PUSH, "after": "0" * 40, "deleted": True, "commits": [], "head_commit": None}
        body = _json(payload)
        push = parse_github(github_headers(body), body)
        assert isinstance(push, GithubPush)
        assert push.deleted and push.branch == "main" and push.changed_paths == ()

    def test_tag_push_has_no_branch(self) -> None:
        body = _json({**PUSH, "ref": "refs/tags/v1.2.0", "commits": []})
        push = parse_github(github_headers(body), body)
        assert isinstance(push, GithubPush) and push.branch is None and push.commit_sha == SHA

    def test_form_encoded_delivery(self) -> None:
        body = urllib.parse.urlencode({"payload": json.dumps(PUSH)}).encode()
        headers = {**github_headers(body), "Content-Type": "application/x-www-form-urlencoded"}
        verify_github(headers, body, SECRET)
        push = parse_github(headers, body)
        assert isinstance(push, GithubPush) and push.commit_sha == SHA

    def test_other_events_are_ignored(self) -> None:
        body = _json({"action": "opened"})
        assert parse_github(github_headers(body, "pull_request"), body) is None

    def test_missing_delivery_or_event_header_is_400(self) -> None:
        body = _json(PUSH)
        for header in ("X-GitHub-Delivery", "X-GitHub-Event"):
            headers = github_headers(body)
            del headers[header]
            with pytest.raises(WebhookRejected) as error:
                parse_github(headers, body)
            assert error.value.status == 400
            assert header in reason(error)

    @pytest.mark.parametrize(
        ("mutate", "field"),
        [
            (lambda p: p.pop("ref"), "ref"),
            (lambda p: p.pop("after"), "after"),
            (lambda p: p.pop("repository"), "repository"),
            (lambda p: p["repository"].pop("full_name"), "repository.full_name"),
            (lambda p: p.__setitem__("deleted", "yes"), "deleted"),
            (lambda p: p.__setitem__("commits", {}), "commits"),
            (lambda p: p["commits"][1].__setitem__("added", "x.py"), "commits[1].added"),
            (lambda p: p["head_commit"].__setitem__("removed", [1]), "head_commit.removed"),
        ],
    )
    def test_malformed_push_is_400_naming_the_field(self, mutate: Any, field: str) -> None:
        payload = json.loads(json.dumps(PUSH))
        mutate(payload)
        body = _json(payload)
        with pytest.raises(WebhookRejected) as error:
            parse_github(github_headers(body), body)
        assert error.value.status == 400
        assert f"'{field}'" in reason(error)

    def test_invalid_json_is_400(self) -> None:
        with pytest.raises(WebhookRejected) as error:
            parse_github(github_headers(b"{"), b"{")
        assert error.value.status == 400


@pytest.mark.parametrize(
    ("path", "patterns", "expected"),
    [
        ("anything/at/all.py", [], True),
        ("src/a/b.py", ["src/**"], True),
        ("src/x.py", ["src/**"], True),
        ("srcx/a.py", ["src/**"], False),
        ("lib/src/a.py", ["src/**"], False),
        ("jobs/x.py", ["jobs/*.py"], True),
        ("jobs/x/y.py", ["jobs/*.py"], False),
        ("jobs/x.txt", ["jobs/*.py"], False),
        ("a.py", ["**/*.py"], True),
        ("deep/er/a.py", ["**/*.py"], True),
        ("deep/er/a.pyc", ["**/*.py"], False),
        ("README.md", ["*.md"], True),
        ("docs/README.md", ["*.md"], False),
        ("src/a/tests/b.py", ["src/**/tests/*.py"], True),
        ("src/tests/b.py", ["src/**/tests/*.py"], True),
        ("jobs/a1.py", ["jobs/a?.py"], True),
        ("jobs/a12.py", ["jobs/a?.py"], False),
        ("data/v2.csv", ["data/v[0-9].csv"], True),
        ("data/vx.csv", ["data/v[0-9].csv"], False),
        ("src/a.py", ["./src/**"], True),
        ("/src/a.py", ["src/**"], True),
        ("docs/a.md", ["src/**", "docs/**"], True),
        ("src/a.md", ["src/**", "!src/**/*.md"], False),
        ("src/a.py", ["src/**", "!src/**/*.md"], True),
        ("src/a.py", ["!docs/**"], True),
        ("docs/a.py", ["!docs/**"], False),
        ("a+b(c).py", ["a+b(c).py"], True),
    ],
)
def test_path_matches(path: str, patterns: list[str], expected: bool) -> None:
    assert path_matches(path, patterns) is expected


# -- Databricks ------------------------------------------------------------------------------


def databricks_headers(body: bytes, *, secret: str = SECRET) -> dict[str, str]:
    """The header Databricks registry webhooks send: hex HMAC-SHA256 of the body."""
    return {"X-Databricks-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()}


REGISTRY_CREATED = {
    "event": "MODEL_VERSION_CREATED",
    "webhook_id": "c5596721253c4b429368cf6f4341b88a",
    "event_timestamp": 1589859029343,
    "model_name": "Airline_Delay_SparkML",
    "version": "8",
    "to_stage": "Production",
    "from_stage": "None",
    "text": "Registered model 'someModel' version 8 transitioned from None to Production.",
}
JOB_SUCCESS = {
    "event_type": "jobs.on_success",
    "workspace_id": 1234567890,
    "run": {"run_id": 41847992357943},
    "job": {"job_id": 281874479417551, "name": "train-churn"},
}


class TestDatabricks:
    def test_valid_signature(self) -> None:
        body = _json(REGISTRY_CREATED)
        verify_databricks(databricks_headers(body), body, SECRET)
        verify_databricks({"x-databricks-signature": databricks_headers(body)["X-Databricks-Signature"]}, body, SECRET)

    def test_wrong_missing_or_tampered_signature_is_401(self) -> None:
        body = _json(REGISTRY_CREATED)
        cases = [
            (databricks_headers(body, secret="other"), body),
            (databricks_headers(body), body.replace(b'"8"', b'"9"')),
            ({}, body),
            ({"X-Databricks-Signature": base64.b64encode(b"x" * 32).decode()}, body),
        ]
        for headers, sent in cases:
            with pytest.raises(WebhookRejected) as error:
                verify_databricks(headers, sent, SECRET)
            assert error.value.status == 401
            assert SECRET not in reason(error)

    def test_registry_event(self) -> None:
        event = parse_databricks(_json(REGISTRY_CREATED))
        assert event == DatabricksEvent(
            event="MODEL_VERSION_CREATED",
            model_name="Airline_Delay_SparkML",
            version="8",
            run_id=None,
            job_id=None,
            delivery_key="registry:c5596721253c4b429368cf6f4341b88a:MODEL_VERSION_CREATED:Airline_Delay_SparkML:8:1589859029343",
        )

    def test_registry_delivery_key_is_stable_and_distinguishes_events(self) -> None:
        first = parse_databricks(_json(REGISTRY_CREATED)).delivery_key
        again = parse_databricks(json.dumps(REGISTRY_CREATED, indent=2).encode()).delivery_key
        other = parse_databricks(_json({**REGISTRY_CREATED, "version": "9"})).delivery_key
        assert first == again != other

    def test_job_notification(self) -> None:
        event = parse_databricks(_json(JOB_SUCCESS))
        assert event == DatabricksEvent(
            event="jobs.on_success",
            model_name=None,
            version=None,
            run_id="41847992357943",
            job_id="281874479417551",
            delivery_key="job:1234567890:41847992357943:jobs.on_success",
            job_name="train-churn",
        )

    def test_job_failure_and_task_notifications(self) -> None:
        task = {
            "event_type": "jobs.on_failure",
            "workspace_id": "your_workspace_id",
            "task": {"task_key": "train"},
            "run": {"run_id": "777", "parent_run_id": "41847992357943"},
            "job": {"job_id": "281874479417551", "name": "train-churn"},
        }
        event = parse_databricks(_json(task))
        assert (event.event, event.run_id, event.job_id) == ("jobs.on_failure", "777", "281874479417551")
        success = parse_databricks(_json(JOB_SUCCESS)).delivery_key
        failure = parse_databricks(_json({**JOB_SUCCESS, "event_type": "jobs.on_failure"})).delivery_key
        assert success != failure

    @pytest.mark.parametrize(
        ("payload", "field"),
        [
            ({"text": "hello"}, "event"),
            ({**REGISTRY_CREATED, "model_name": None}, "model_name"),
            ({k: v for k, v in REGISTRY_CREATED.items() if k != "version"}, "version"),
            ({k: v for k, v in REGISTRY_CREATED.items() if k != "event_timestamp"}, "event_timestamp"),
            ({**REGISTRY_CREATED, "version": True}, "version"),
            ({**JOB_SUCCESS, "run": None}, "run"),
            ({**JOB_SUCCESS, "run": {}}, "run.run_id"),
            ({**JOB_SUCCESS, "run": {"run_id": [1]}}, "run.run_id"),
            ({**JOB_SUCCESS, "job": {"job_id": {"x": 1}}}, "job.job_id"),
            ({**JOB_SUCCESS, "event_type": 3}, "event_type"),
        ],
    )
    def test_malformed_payload_is_400_naming_the_field(self, payload: dict[str, Any], field: str) -> None:
        with pytest.raises(WebhookRejected) as error:
            parse_databricks(_json(payload))
        assert error.value.status == 400
        assert f"'{field}'" in reason(error)

    def test_registered_model_created_has_no_version(self) -> None:
        payload = {k: v for k, v in REGISTRY_CREATED.items() if k != "version"}
        event = parse_databricks(_json({**payload, "event": "REGISTERED_MODEL_CREATED"}))
        assert event.version is None and event.model_name == "Airline_Delay_SparkML"

    def test_invalid_json_is_400(self) -> None:
        with pytest.raises(WebhookRejected) as error:
            parse_databricks(b"<html>")
        assert error.value.status == 400
