"""The security tests' shared stack: one real ``signalbox host`` with every secret configured.

A module of its own (not conftest.py) so the secrets are made once, whoever imports them.

The host runs the app's HTTP and Event Grid functions only (no Service Bus pumps), so whatever an
ingress enqueues stays in ``STATE_DIR/queues.sqlite3`` for the tests to count.
"""

from __future__ import annotations

import base64
import secrets
import sqlite3
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.app_functions import registered_functions
from tests.hosting import RunningHost

TOLERANCE_SECONDS = 120  # SIGNALBOX_WEBHOOK_TOLERANCE_SECONDS of the host (the default is 300)
REQUEST_TIMEOUT_SECONDS = 2.0  # the host's --request-timeout, short so slow-client tests stay fast


def _fresh(prefix: str) -> str:
    # Made up per run: no secret lives in the code, and each is easy to search for in logs.
    return f"{prefix}{secrets.token_urlsafe(24)}"


# Every secret setting Signalbox reads, set to a value that cannot make the run leave the machine:
# the bus, events and serving stay local, so the cloud credentials are configured but never used.
SECRETS: dict[str, str] = {
    "SIGNALBOX_MLFLOW_WEBHOOK_SECRET": _fresh("mlflowsecret"),
    "SIGNALBOX_GITHUB_WEBHOOK_SECRET": _fresh("githubsecret"),
    "SIGNALBOX_DATABRICKS_WEBHOOK_SECRET": _fresh("dbxsecret"),
    "DATABRICKS_TOKEN": "dapi" + secrets.token_hex(16),
    "SIGNALBOX_EVENTGRID_KEY": _fresh("egtopickey"),
    "ServiceBusConnection": "Endpoint=sb://127.0.0.1/;SharedAccessKeyName=RootManageSharedAccessKey;"
    f"SharedAccessKey={_fresh('sbkey')}",
}


def secret_forms(value: str) -> set[str]:
    """A secret as it could leak: plain, base64, URL-encoded, hex of its bytes."""
    raw = value.encode()
    return {
        value,
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value),
        raw.hex(),
    }


def leaks(text: str, values: dict[str, str]) -> list[str]:
    """Names of the secrets (in any form of :func:`secret_forms`) that ``text`` contains."""
    return sorted(name for name, value in values.items() if any(form in text for form in secret_forms(value)))




def http_functions() -> list[dict[str, Any]]:
    """The app's HTTP-triggered functions."""
    return [f for f in registered_functions() if f["trigger"] == "httpTrigger"]


def event_grid_functions() -> list[str]:
    """Names of the app's Event Grid-triggered functions."""
    return [f["name"] for f in registered_functions() if f["trigger"] == "eventGridTrigger"]


def enqueued(state: Path) -> int:
    """Every message in the local queues, dead letters included (0 before the first send)."""
    path = state / "queues.sqlite3"
    if not path.exists():
        return 0
    with sqlite3.connect(path) as conn:
        try:
            return int(conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        except sqlite3.OperationalError:  # the table is made on the first send
            return 0


@dataclass
class SecureHost:
    """A running host with every secret configured, and what the tests need to talk to it."""

    host: RunningHost
    state: Path

    @property
    def url(self) -> str:
        return self.host.url

    @property
    def all_secrets(self) -> dict[str, str]:
        """The configured secrets and the host's own keys."""
        return {
            **SECRETS,
            "masterKey": self.host.master,
            "functionKey": self.host.function_key,
            "eventGridKey": self.host.event_grid_key,
        }

    def enqueued(self) -> int:
        return enqueued(self.state)

    def deliver(self, function: str, events: list[dict[str, Any]], **headers: str) -> requests.Response:
        """An Event Grid delivery of ``events`` to ``function``, with the Event Grid system key."""
        return requests.post(
            f"{self.url}/runtime/webhooks/EventGrid",
            params={"functionName": function},
            headers={"x-functions-key": self.host.event_grid_key, **headers},
            json=events,
            timeout=60,
        )

    def invocations(self, function: str) -> int:
        """How many times the host ran ``function`` (succeeded or failed)."""
        status = requests.get(
            f"{self.url}/admin/host/status", headers={"x-functions-key": self.host.master}, timeout=10
        ).json()
        counts: dict[str, int] = status["invocations"]
        return sum(n for key, n in counts.items() if key.rsplit(":", 1)[0] == function)
