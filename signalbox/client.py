"""Talk to a running local host the way Azure and webhooks would: Event Grid deliveries, signed webhooks."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests


class ClientError(RuntimeError):
    """The host could not be reached or refused the request; the message says why."""

    status: int | None = None  # the HTTP status when the host answered


def delivery_policy() -> Any:
    """The local Event Grid retry policy (``RetryPolicy``): Event Grid's 30 attempts / 24 h, a pause between.

    ``SIGNALBOX_LOCAL_EVENTGRID_MAX_ATTEMPTS``, ``..._TTL_SECONDS`` and ``..._RETRY_SECONDS`` change it
    (tests: a few attempts, a short pause). Local only: in Azure the subscription's retry policy rules.
    """
    from shared.adapters.local.eventgrid_deadletters import RetryPolicy

    return RetryPolicy(
        max_attempts=int(os.environ.get("SIGNALBOX_LOCAL_EVENTGRID_MAX_ATTEMPTS") or 30),
        time_to_live=float(os.environ.get("SIGNALBOX_LOCAL_EVENTGRID_TTL_SECONDS") or 24 * 3600),
        pause=float(os.environ.get("SIGNALBOX_LOCAL_EVENTGRID_RETRY_SECONDS") or 1.0),
    )


def deliver_retrying(state_dir: Path, function: str, events: list[dict[str, Any]], deliver: Any) -> None:
    """``deliver()`` as Event Grid delivers: retried by :func:`delivery_policy`, then dead-lettered.

    A delivery the host keeps refusing (an HTTP error: the function failed) is retried and, once
    the retries are spent, written to ``STATE_DIR/eventgrid-deadletters/<function>/`` (``signalbox
    dlq list --source eventgrid``) and raises ``ClientError`` saying so. A host that cannot be
    reached fails at once: a command line cannot wait out Event Grid's 24 hours for it to come back.
    """
    from shared.adapters.local.eventgrid_deadletters import DeliveryFailed, deliver_with_retries

    last: list[ClientError] = []

    def attempt() -> None:
        try:
            deliver()
        except ClientError as exc:
            if exc.status is None:
                raise
            last[:] = [exc]
            raise DeliveryFailed(str(exc), exc.status) from exc

    dead = deliver_with_retries(attempt, state_dir, function, events, delivery_policy())
    if dead is not None:
        raise ClientError(
            f"{function}: not delivered ({last[0] if last else 'no answer'}); Event Grid would give up here: "
            f"dead-lettered to {dead} (signalbox dlq list --source eventgrid)"
        )


def host_keys(state_dir: Path) -> dict[str, Any]:
    """The host's keys from its state dir ({} when the host runs without them)."""
    path = state_dir / "host-keys.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def webhook_secrets(state_dir: Path) -> dict[str, str]:
    """Webhook secrets the embedded default generated (environment variables win)."""
    path = state_dir / "webhook-secrets.json"
    stored = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return {
        name: os.environ.get(name) or stored.get(name, "")
        for name in (
            "SIGNALBOX_MLFLOW_WEBHOOK_SECRET",
            "SIGNALBOX_GITHUB_WEBHOOK_SECRET",
            "SIGNALBOX_DATABRICKS_WEBHOOK_SECRET",
        )
    }


def _post(url: str, **kwargs: Any) -> requests.Response:
    from signalbox.localhost.config import redact_keys

    try:
        return requests.post(url, timeout=30, **kwargs)
    except requests.RequestException as exc:
        # requests names the full URL in its errors, and a key may ride in it as ?code=.
        raise ClientError(f"cannot reach the host at {url.split('?')[0]}: {redact_keys(str(exc))}") from None


def _check(response: requests.Response) -> requests.Response:
    if response.status_code >= 400:
        try:
            message = response.json().get("message") or response.json().get("error")
        except ValueError:
            message = response.text[:300]
        error = ClientError(f"host answered {response.status_code}: {message}")
        error.status = response.status_code
        raise error
    return response


def deliver_event_grid(host_url: str, state_dir: Path, function: str, events: list[dict[str, Any]]) -> None:
    """POST an Event Grid schema delivery, as an Event Grid subscription would."""
    code = host_keys(state_dir).get("systemKeys", {}).get("eventgrid_extension", "")
    _check(
        _post(
            f"{host_url}/runtime/webhooks/EventGrid",
            params={"functionName": function, "code": code},
            json=events,
            headers={"aeg-event-type": "Notification"},
        )
    )


def deliver_cloud_event(host_url: str, state_dir: Path, function: str, event: dict[str, Any]) -> None:
    """POST a CloudEvents 1.0 structured-mode delivery."""
    code = host_keys(state_dir).get("systemKeys", {}).get("eventgrid_extension", "")
    _check(
        _post(
            f"{host_url}/runtime/webhooks/EventGrid",
            params={"functionName": function, "code": code},
            data=json.dumps(event),
            headers={"Content-Type": "application/cloudevents+json"},
        )
    )


def blob_created_event(path: Path, container: str, blob_path: str) -> dict[str, Any]:
    """A BlobCreated event for a landed file; its id is fixed by the file's path, size and time.

    Its ``eTag`` is the local landing zone's (``file_etag``), so the event and a landing sweep name one write alike.
    """
    from shared.adapters.local.landing import file_etag

    stat = path.stat()
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"))
    return {
        "id": event_id,
        "topic": "/subscriptions/local/resourceGroups/local/providers/Microsoft.Storage/storageAccounts/local",
        "subject": f"/blobServices/default/containers/{container}/blobs/{blob_path}",
        "eventType": "Microsoft.Storage.BlobCreated",
        "eventTime": datetime.now(UTC).isoformat(),
        "dataVersion": "",
        "metadataVersion": "1",
        "data": {
            "api": "PutBlob",
            "contentType": "text/csv",
            "contentLength": stat.st_size,
            "eTag": f'"{file_etag(stat)}"',
            "blobType": "BlockBlob",
            "url": path.resolve().as_uri(),
            "sequencer": f"{stat.st_mtime_ns:032x}",
        },
    }


def land(state_dir: Path, source: Path, container: str, blob_path: str) -> Path:
    """Copy a file into the local landing zone."""
    if not source.is_file():
        raise ClientError(f"{source}: no such file")
    target = state_dir / "landing" / container / blob_path
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def send(args: argparse.Namespace) -> Any:
    """``signalbox send ...``."""
    if args.kind == "blob":
        blob_path = args.path or f"iris/{args.file.name}"
        target = land(args.state_dir, args.file, args.container, blob_path)
        events = [blob_created_event(target, args.container, blob_path)]
        deliver_retrying(
            args.state_dir,
            "landing_events",
            events,
            lambda: deliver_event_grid(args.host_url, args.state_dir, "landing_events", events),
        )
        return f"landed {target} and delivered BlobCreated"
    if args.kind == "drift":
        event = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "/signalbox/cli",
            "type": "io.signalbox.drift.detected",
            "time": datetime.now(UTC).isoformat(),
            "datacontenttype": "application/json",
            "data": {"model_name": args.model, "metric": "psi", "score": args.score, "threshold": 0.2},
        }
        deliver_retrying(
            args.state_dir,
            "alert_events",
            [event],
            lambda: deliver_cloud_event(args.host_url, args.state_dir, "alert_events", event),
        )
        return f"delivered drift alert {event['id']} for {args.model}"
    if args.kind == "model-registered":
        event = {
            "id": str(uuid.uuid4()),
            "topic": "/subscriptions/local/resourceGroups/local/providers/Microsoft.MachineLearningServices/"
            "workspaces/local",
            "subject": f"models/{args.model}:{args.version}",
            "eventType": "Microsoft.MachineLearningServices.ModelRegistered",
            "eventTime": datetime.now(UTC).isoformat(),
            "dataVersion": "2",
            "metadataVersion": "1",
            "data": {"ModelName": args.model, "ModelVersion": args.version, "ModelTags": {}, "ModelProperties": {}},
        }
        deliver_retrying(
            args.state_dir,
            "workspace_events",
            [event],
            lambda: deliver_event_grid(args.host_url, args.state_dir, "workspace_events", [event]),
        )
        return f"delivered ModelRegistered for {args.model} v{args.version}"
    secret = webhook_secrets(args.state_dir)["SIGNALBOX_GITHUB_WEBHOOK_SECRET"]
    if not secret:
        raise ClientError("no GitHub webhook secret: set SIGNALBOX_GITHUB_WEBHOOK_SECRET")
    sha = args.sha or hashlib.sha1(uuid.uuid4().bytes).hexdigest()  # noqa: S324 - a fake commit id, not security
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    payload = {
        "ref": f"refs/heads/{args.branch}",
        "before": "0" * 40,
        "after": sha,
        "deleted": False,
        "repository": {"full_name": args.repository},
        "head_commit": {"id": sha, "added": [], "removed": [], "modified": paths},
        "commits": [{"id": sha, "added": [], "removed": [], "modified": paths}],
    }
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    response = _check(
        _post(
            f"{args.host_url}/api/webhooks/github",
            data=body,
            headers={
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": str(uuid.uuid4()),
                "X-Hub-Signature-256": signature,
                "Content-Type": "application/json",
            },
        )
    )
    return response.json()


def _function_key(state_dir: Path) -> str:
    return str(host_keys(state_dir).get("functionKeys", {}).get("default", ""))


def status(args: argparse.Namespace) -> Any:
    """``signalbox status [MODEL]``: read through the host's status function."""
    path = f"/api/status/{args.model}" if args.model else "/api/status"
    try:
        response = requests.get(
            f"{args.host_url}{path}", headers={"x-functions-key": _function_key(args.state_dir)}, timeout=30
        )
    except requests.RequestException as exc:
        raise ClientError(f"cannot reach the host at {args.host_url}: {exc}") from None
    data = _check(response).json()
    if args.json:
        return data
    if args.model:
        return format_lifecycle(data)
    return format_overview(data)


def format_overview(data: dict[str, Any]) -> str:
    """All models, then the approvals waiting."""
    blocks = [format_lifecycle(model) for model in data["models"]]
    pending = data["pending_approvals"]
    lines = [f"pending approvals ({data['environment']}): {len(pending) or 'none'}"]
    lines += [f"  {p['model']} v{p['version']}: {p.get('reason') or ''}" for p in pending]
    return "\n\n".join([*blocks, "\n".join(lines)])


def format_lifecycle(data: dict[str, Any]) -> str:
    """A lifecycle as a table with its decision records."""
    lines = [
        f"model {data['model']} ({data['kind']})  champion: v{data['champion'] or '-'}  "
        f"challenger: v{data['challenger'] or '-'}"
    ]
    if data.get("endpoint"):
        lines.append(f"endpoint: {data['endpoint']}")
    lines.append(f"{'version':>7}  {'stage':<10}  {'aliases':<20}  {'approval':<9}  decision")
    for v in data["versions"]:
        decision = (v.get("decision") or {}).get("reason", "") or ""
        deployment = v.get("deployment") or {}
        if deployment.get("status") == "rolled_back":
            decision += f" | rolled back: {deployment.get('reason')}"
        if v.get("outcome"):
            decision += f" | {v['outcome']}"
        lines.append(
            f"{v['version']:>7}  {v.get('stage') or '-':<10}  {','.join(v['aliases']) or '-':<20}  "
            f"{v.get('approval') or '-':<9}  {decision}"
        )
    for key in ("last_refusal", "last_failure"):
        if data.get(key):
            lines.append(f"{key.replace('_', ' ')}: {data[key].get('reason')} ({data[key].get('at')})")
    if data.get("held"):
        held = data["held"]
        lines.insert(
            1, f"HELD by {held.get('by')} since {held.get('at')}: {held.get('reason')} (no automatic deployment)"
        )
    return "\n".join(lines)


def decide(args: argparse.Namespace, *, approve: bool) -> Any:
    """``signalbox approve|reject MODEL VERSION``."""
    decision = "approve" if approve else "reject"
    response = _post(
        f"{args.host_url}/api/approvals/{args.model}/{args.version}/{decision}",
        json={"by": args.by, **({"reason": args.reason} if args.reason else {})},
        headers={"x-functions-key": _function_key(args.state_dir)},
    )
    return _check(response).json()


def operate(args: argparse.Namespace) -> Any:
    """``signalbox rollback|hold|release MODEL``: one request id per invocation (a retry of it is the same action)."""
    body: dict[str, Any] = {"by": args.by, "reason": args.reason, "request_id": f"cli-{uuid.uuid4()}"}
    if args.command == "rollback":
        body["to"] = args.to
    return _check(
        _post(
            f"{args.host_url}/api/models/{args.model}/{args.command}",
            json=body,
            headers={"x-functions-key": _function_key(args.state_dir)},
        )
    ).json()


def history(args: argparse.Namespace) -> Any:
    """``signalbox history MODEL [--since 7d] [--json]``: read through the host's history function."""
    params = {"since": args.since} if args.since else {}
    try:
        response = requests.get(
            f"{args.host_url}/api/history/{args.model}",
            params=params,
            headers={"x-functions-key": _function_key(args.state_dir)},
            timeout=30,
        )
    except requests.RequestException as exc:
        raise ClientError(f"cannot reach the host at {args.host_url}: {exc}") from None
    data = _check(response).json()
    return data if args.json else format_history(data)


def format_history(data: dict[str, Any]) -> str:
    """A model's history as lines, newest first: when, what, who, why, and the correlation id."""
    since = f" since {data['since']}" if data.get("since") else ""
    lines = [f"history of {data['model']}{since}: {len(data['entries'])} entries, newest first"]
    for entry in data["entries"]:
        why = f" — {entry['why']}" if entry.get("why") else ""
        lines.append(f"{entry['at']}  {entry['kind']:<10}  {entry['what']}  [{entry['who']}]{why}")
        lines.append(f"{'':32}correlation {entry.get('correlation_id') or '-'}  cause {entry.get('cause') or '-'}")
    return "\n".join(lines)
