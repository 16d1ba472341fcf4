"""Authentication and parsing of inbound webhooks: MLflow, GitHub and Databricks.

Standard library only, so the HTTP ingress functions stay cheap to import. Every
``verify_*`` function raises ``WebhookRejected`` with status 401 for anything wrong with
the authentication headers; every ``parse_*`` function raises it with status 400 for a
malformed body, naming the field. Messages never contain the secret or an expected
signature.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.errors import InvalidInput

__all__ = [
    "DatabricksEvent",
    "GithubPush",
    "MlflowEvent",
    "WebhookRejected",
    "parse_databricks",
    "parse_github",
    "parse_mlflow",
    "path_matches",
    "verify_databricks",
    "verify_github",
    "verify_mlflow",
]

MLFLOW_SIGNATURE_HEADER = "X-MLflow-Signature"
MLFLOW_DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
MLFLOW_TIMESTAMP_HEADER = "X-MLflow-Timestamp"
GITHUB_SIGNATURE_HEADER = "X-Hub-Signature-256"
GITHUB_EVENT_HEADER = "X-GitHub-Event"
GITHUB_DELIVERY_HEADER = "X-GitHub-Delivery"
DATABRICKS_SIGNATURE_HEADER = "X-Databricks-Signature"

# Bounds what we accept as an id that later ends up in message ids and logs.
_MAX_ID_LENGTH = 200


class WebhookRejected(InvalidInput):
    """An inbound webhook that must not be processed; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- helpers ------------------------------------------------------------------------------


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """The header's value, looked up case-insensitively; None when absent or empty."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            value = value.strip()
            return value or None
    return None


def _hmac_sha256(secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()


def _require_secret(secret: str) -> None:
    # An empty secret would make every signature computable by anyone: refuse, don't accept.
    if not secret:
        raise WebhookRejected(401, "no webhook secret is configured")


def _load_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise WebhookRejected(400, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise WebhookRejected(400, "body is not a JSON object")
    return data


def _missing(name: str) -> WebhookRejected:
    return WebhookRejected(400, f"missing field '{name}'")


def _invalid(name: str, expected: str) -> WebhookRejected:
    return WebhookRejected(400, f"field '{name}' must be {expected}")


def _object(data: Mapping[str, Any], key: str, path: str, *, required: bool = True) -> dict[str, Any] | None:
    value = data.get(key)
    if value is None:
        if required:
            raise _missing(path)
        return None
    if not isinstance(value, dict):
        raise _invalid(path, "an object")
    return value


def _str(data: Mapping[str, Any], key: str, path: str, *, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise _missing(path)
        return None
    if not isinstance(value, str):
        raise _invalid(path, "a string")
    return value


def _id(data: Mapping[str, Any], key: str, path: str, *, required: bool = True) -> str | None:
    """A string or integer identifier, as a string (Databricks sends either)."""
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise _missing(path)
        return None
    # bool is an int subclass; True is never a valid id.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _invalid(path, "a string or an integer")
    text = str(value)
    if len(text) > _MAX_ID_LENGTH:
        raise _invalid(path, f"at most {_MAX_ID_LENGTH} characters")
    return text


def _version(data: Mapping[str, Any], key: str, path: str, *, required: bool) -> str | None:
    """A registry version number: MLflow and Databricks number versions 1, 2, 3..."""
    from shared.domain import version_number  # standard library only

    value = _id(data, key, path, required=required)
    if value is None:
        return None
    try:
        # 32-bit, as the registries' version columns; one spelling per version ("01" is "1").
        return version_number(value)
    except ValueError:
        raise _invalid(path, "a version number") from None


def _str_tags(value: Any, path: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _invalid(path, "an object of strings")
    return dict(value)


# -- MLflow -------------------------------------------------------------------------------


def verify_mlflow(
    headers: Mapping[str, str], body: bytes, secret: str, *, now: float, tolerance_seconds: int = 300
) -> str:
    """Authenticate an MLflow registry webhook delivery; returns its delivery id.

    MLflow signs ``f"{delivery_id}.{timestamp}.{body}"`` with HMAC-SHA256 and sends
    ``X-MLflow-Signature: v1,<base64>``; the timestamp must lie within ``tolerance_seconds``
    of ``now`` in either direction, so a captured delivery cannot be replayed later.
    """
    _require_secret(secret)
    signature = _header(headers, MLFLOW_SIGNATURE_HEADER)
    delivery_id = _header(headers, MLFLOW_DELIVERY_ID_HEADER)
    timestamp = _header(headers, MLFLOW_TIMESTAMP_HEADER)
    if signature is None:
        raise WebhookRejected(401, f"missing {MLFLOW_SIGNATURE_HEADER} header")
    if delivery_id is None:
        raise WebhookRejected(401, f"missing {MLFLOW_DELIVERY_ID_HEADER} header")
    if timestamp is None:
        raise WebhookRejected(401, f"missing {MLFLOW_TIMESTAMP_HEADER} header")
    if len(delivery_id) > _MAX_ID_LENGTH or not delivery_id.isprintable():
        raise WebhookRejected(401, f"malformed {MLFLOW_DELIVERY_ID_HEADER} header")
    # Seconds since the epoch; more digits cannot be a time and would overflow the comparison below.
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise WebhookRejected(401, f"malformed {MLFLOW_TIMESTAMP_HEADER} header")

    # Signing the raw bytes equals MLflow's str.encode("utf-8") of the joined string.
    expected = _hmac_sha256(secret, f"{delivery_id}.{timestamp}.".encode() + body)
    # Standard Webhooks allows several space-separated signatures (key rotation).
    matched = False
    for candidate in signature.split():
        version, _, encoded = candidate.partition(",")
        if version != "v1" or not encoded:
            continue
        try:
            provided = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        # Compare every candidate, without an early exit, in constant time.
        matched |= hmac.compare_digest(expected, provided)
    if not matched:
        raise WebhookRejected(401, "signature does not match")

    if abs(now - int(timestamp)) > tolerance_seconds:
        raise WebhookRejected(401, f"timestamp is outside the {tolerance_seconds} s window")
    return delivery_id


@dataclass(frozen=True)
class MlflowEvent:
    """One MLflow registry webhook delivery, reduced to what Signalbox acts on."""

    delivery_id: str
    entity: str
    action: str
    model_name: str | None
    version: str | None
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)


def parse_mlflow(body: bytes, delivery_id: str) -> MlflowEvent:
    """Parse an authenticated MLflow webhook body (``{"entity","action","timestamp","data"}``)."""
    payload = _load_object(body)
    entity = _str(payload, "entity", "entity")
    action = _str(payload, "action", "action")
    data = _object(payload, "data", "data")
    assert entity is not None and action is not None and data is not None

    # Version events must name their version; registered-model events carry none.
    version_required = entity.startswith("model_version")
    model_name = _str(data, "name", "data.name")
    version = _version(data, "version", "data.version", required=version_required)
    run_id = _str(data, "run_id", "data.run_id", required=False)
    tags = _str_tags(data.get("tags"), "data.tags")
    if entity == "model_version_tag" and action == "set":
        key = _str(data, "key", "data.key")
        value = data.get("value", "")
        if not isinstance(value, str):
            raise _invalid("data.value", "a string")
        assert key is not None
        tags = {key: value}
    return MlflowEvent(
        delivery_id=delivery_id,
        entity=entity,
        action=action,
        model_name=model_name,
        version=version,
        run_id=run_id,
        tags=tags,
    )


# -- GitHub -------------------------------------------------------------------------------


def verify_github(headers: Mapping[str, str], body: bytes, secret: str) -> None:
    """Authenticate a GitHub webhook: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>``."""
    _require_secret(secret)
    signature = _header(headers, GITHUB_SIGNATURE_HEADER)
    if signature is None:
        raise WebhookRejected(401, f"missing {GITHUB_SIGNATURE_HEADER} header")
    scheme, _, provided = signature.partition("=")
    if scheme != "sha256" or not provided:
        raise WebhookRejected(401, f"malformed {GITHUB_SIGNATURE_HEADER} header")
    expected = _hmac_sha256(secret, body).hex()
    if not _same_hex(expected, provided):
        raise WebhookRejected(401, "signature does not match")


def _same_hex(expected: str, provided: str) -> bool:
    """Constant-time comparison of hex digests; any non-ASCII header text is simply a mismatch."""
    # compare_digest raises TypeError for non-ASCII str: compare bytes so such a header is a 401.
    return hmac.compare_digest(expected.encode(), provided.lower().encode("utf-8", "replace"))


@dataclass(frozen=True)
class GithubPush:
    """A push to a branch or tag of a GitHub repository."""

    delivery_id: str
    repository: str
    branch: str | None
    commit_sha: str
    deleted: bool
    changed_paths: tuple[str, ...]


def parse_github(headers: Mapping[str, str], body: bytes) -> GithubPush | Literal["ping"] | None:
    """A push event, ``"ping"`` for the hook's ping, or None for any other event."""
    delivery_id = _header(headers, GITHUB_DELIVERY_HEADER)
    if delivery_id is None:
        raise WebhookRejected(400, f"missing {GITHUB_DELIVERY_HEADER} header")
    if len(delivery_id) > _MAX_ID_LENGTH or not delivery_id.isprintable():
        raise WebhookRejected(400, f"malformed {GITHUB_DELIVERY_HEADER} header")
    event = _header(headers, GITHUB_EVENT_HEADER)
    if event is None:
        raise WebhookRejected(400, f"missing {GITHUB_EVENT_HEADER} header")
    if event == "ping":
        return "ping"
    if event != "push":
        return None

    payload = _load_object(_github_json(headers, body))
    ref = _str(payload, "ref", "ref")
    commit_sha = _str(payload, "after", "after")
    repository = _object(payload, "repository", "repository")
    assert ref is not None and commit_sha is not None and repository is not None
    full_name = _str(repository, "full_name", "repository.full_name")
    assert full_name is not None
    deleted = payload.get("deleted", False)
    if not isinstance(deleted, bool):
        raise _invalid("deleted", "a boolean")

    commits = payload.get("commits")
    commits = [] if commits is None else commits
    if not isinstance(commits, list):
        raise _invalid("commits", "a list")
    head_commit = payload.get("head_commit")
    if head_commit is not None:
        commits = [*commits, head_commit]
    paths: set[str] = set()
    for index, commit in enumerate(commits):
        path = "head_commit" if commit is head_commit else f"commits[{index}]"
        if not isinstance(commit, dict):
            raise _invalid(path, "an object")
        for kind in ("added", "modified", "removed"):
            files = commit.get(kind)
            files = [] if files is None else files
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                raise _invalid(f"{path}.{kind}", "a list of strings")
            paths.update(files)

    branch = ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None
    return GithubPush(
        delivery_id=delivery_id,
        repository=full_name,
        branch=branch,
        commit_sha=commit_sha,
        deleted=deleted,
        changed_paths=tuple(sorted(paths)),
    )


def _github_json(headers: Mapping[str, str], body: bytes) -> bytes:
    """The JSON document of a delivery; hooks set to form encoding send it as ``payload=``."""
    content_type = (_header(headers, "Content-Type") or "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return body
    try:
        form = urllib.parse.parse_qs(body.decode("ascii"), strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise WebhookRejected(400, "body is not a valid form") from None
    values = form.get("payload")
    if not values:
        raise _missing("payload")
    return values[0].encode("utf-8")


@functools.lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Compile a path glob: ``**`` spans directories, ``*`` and ``?`` stay within one."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                # "**/" also matches zero directories: "**/*.py" matches "a.py".
                out.append("(?:.*/)?")
                i += 1
            else:
                out.append(".*")
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.find("]", i + 2 if pattern.startswith(("[!", "[^"), i) else i + 1)
            if end == -1:
                out.append(re.escape(char))
            else:
                body = pattern[i + 1 : end]
                negate = body[:1] in ("!", "^")
                body = body[1:] if negate else body
                body = body.replace("\\", "\\\\")
                out.append(f"[{'^/' if negate else ''}{body}]")
                i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out))


def _normalize_path(path: str) -> str:
    path = path.strip()
    while path.startswith("./"):
        path = path[2:]
    return path.lstrip("/")


def path_matches(path: str, patterns: Sequence[str]) -> bool:
    """Whether a repository path matches the globs, as GitHub Actions ``paths`` filters do.

    ``**`` matches across directories, ``*`` and ``?`` never match ``/``; a pattern
    starting with ``!`` excludes, and the last matching pattern wins. No patterns match
    every path.
    """
    if not patterns:
        return True
    path = _normalize_path(path)
    # Only exclusions: everything else is included.
    matched = all(p.startswith("!") for p in patterns)
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = _normalize_path(raw[1:] if negated else raw)
        if pattern and _glob_regex(pattern).fullmatch(path):
            matched = not negated
    return matched


# -- Databricks ---------------------------------------------------------------------------


def verify_databricks(headers: Mapping[str, str], body: bytes, secret: str) -> None:
    """Authenticate a Databricks registry webhook: ``X-Databricks-Signature`` = hex HMAC-SHA256 of the body."""
    _require_secret(secret)
    signature = _header(headers, DATABRICKS_SIGNATURE_HEADER)
    if signature is None:
        raise WebhookRejected(401, f"missing {DATABRICKS_SIGNATURE_HEADER} header")
    expected = _hmac_sha256(secret, body).hex()
    if not _same_hex(expected, signature):
        raise WebhookRejected(401, "signature does not match")


@dataclass(frozen=True)
class DatabricksEvent:
    """A Databricks registry webhook event or job run notification."""

    event: str
    model_name: str | None
    version: str | None
    run_id: str | None
    job_id: str | None
    delivery_key: str
    job_name: str | None = None


def parse_databricks(body: bytes) -> DatabricksEvent:
    """Parse a Databricks registry webhook (``event``) or job notification (``event_type``).

    ``delivery_key`` is stable across redeliveries of the same event, for deduplication.
    """
    payload = _load_object(body)
    if "event_type" in payload:
        return _parse_databricks_job(payload)
    if "event" in payload:
        return _parse_databricks_registry(payload)
    raise WebhookRejected(400, "missing field 'event' (registry webhook) or 'event_type' (job notification)")


def _parse_databricks_registry(payload: Mapping[str, Any]) -> DatabricksEvent:
    event = _str(payload, "event", "event")
    model_name = _str(payload, "model_name", "model_name")
    # Databricks sends the timestamp on every event; without it redeliveries cannot be told apart.
    event_timestamp = _id(payload, "event_timestamp", "event_timestamp")
    version = _version(payload, "version", "version", required=event != "REGISTERED_MODEL_CREATED")
    run_id = _id(payload, "run_id", "run_id", required=False)
    webhook_id = _id(payload, "webhook_id", "webhook_id", required=False)
    assert event is not None and model_name is not None
    key = f"registry:{webhook_id or ''}:{event}:{model_name}:{version or ''}:{event_timestamp}"
    return DatabricksEvent(
        event=event, model_name=model_name, version=version, run_id=run_id, job_id=None, delivery_key=key
    )


def _parse_databricks_job(payload: Mapping[str, Any]) -> DatabricksEvent:
    event = _str(payload, "event_type", "event_type")
    run = _object(payload, "run", "run")
    assert event is not None and run is not None
    run_id = _id(run, "run_id", "run.run_id")
    job = _object(payload, "job", "job", required=False)
    job_id = _id(job, "job_id", "job.job_id", required=False) if job is not None else None
    job_name = _str(job, "name", "job.name", required=False) if job is not None else None
    workspace_id = _id(payload, "workspace_id", "workspace_id", required=False)
    # Run ids are unique within a workspace; a task notification carries the task run's own id.
    key = f"job:{workspace_id or ''}:{run_id}:{event}"
    return DatabricksEvent(
        event=event, model_name=None, version=None, run_id=run_id, job_id=job_id, delivery_key=key, job_name=job_name
    )
