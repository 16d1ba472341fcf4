"""The ingress fuzzing's harness: one real ``signalbox host``, the oracle, and the figures the run prints.

Every payload is one HTTP request to the host. The oracle, checked after each one:

- the answer is 2xx or 4xx (never 5xx, never a dropped connection or a timeout);
- the host process is still alive;
- the local queues (``STATE_DIR/queues.sqlite3``) got no new message from invalid input, and for input
  that may be valid at most ``max_new`` messages, each for a model the input names (one per cause:
  message ids derive from the cause, so a repeated cause is dropped by duplicate detection).

No Service Bus or timer function runs in the fuzzed host, so nothing consumes what ingress queues and the
queues show exactly what each request added.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import requests
from hypothesis import HealthCheck, settings

from shared.adapters.local.queues import LocalQueues, OutboundMessage
from tests.hosting import RunningHost

# The catalogue of tests/fuzz/catalogue.toml: model → strings that name it in an event or a path.
CATALOGUE = Path(__file__).with_name("catalogue.toml")
MODELS = ("fz-trained", "fz-rules")
MONITORS = {"fz-monitor": "fz-trained"}
SECRETS = {
    "SIGNALBOX_MLFLOW_WEBHOOK_SECRET": "fuzz-mlflow-secret",
    "SIGNALBOX_DATABRICKS_WEBHOOK_SECRET": "fuzz-databricks-secret",
    "SIGNALBOX_GITHUB_WEBHOOK_SECRET": "fuzz-github-secret",
}

# Share of SIGNALBOX_FUZZ_EXAMPLES each ingress gets.
WEIGHTS = {
    "eventgrid": 0.28,
    "webhook:mlflow": 0.10,
    "webhook:databricks": 0.08,
    "webhook:databricks-jobs": 0.05,
    "webhook:github": 0.12,
    "approvals": 0.08,
    "status": 0.04,
    "ops (admin functions)": 0.08,
    "host admin": 0.03,
    "routing": 0.02,
    "openapi (schemathesis)": 0.12,
}
CI_DEFAULT_EXAMPLES = 500


def budget() -> int:
    """The total number of payloads: ``SIGNALBOX_FUZZ_EXAMPLES``, small by default so CI stays quick."""
    raw = os.environ.get("SIGNALBOX_FUZZ_EXAMPLES", "").strip()
    return int(raw) if raw else CI_DEFAULT_EXAMPLES


def examples_for(ingress: str) -> int:
    """This ingress's share of the budget (at least 10)."""
    return max(10, round(budget() * WEIGHTS[ingress]))


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def fuzz_settings(ingress: str) -> settings:
    """Hypothesis settings of one ingress: its share of the budget, no deadline, derandomized under CI,
    no example database (each run starts from a fresh host anyway)."""
    return settings(
        max_examples=examples_for(ingress),
        deadline=None,
        derandomize=in_ci(),
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


# -- figures ---------------------------------------------------------------------------------------


@dataclass
class IngressFigures:
    """What one ingress saw."""

    payloads: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: int = 0
    crashes: int = 0
    invalid_payloads: int = 0
    enqueued_by_invalid: int = 0
    enqueued_by_valid: int = 0
    oracle_failures: int = 0
    seconds: float = 0.0  # time spent waiting for answers


@dataclass
class Figures:
    """Every ingress's figures, printed at the end of the session (tests/fuzz/conftest.py)."""

    ingresses: dict[str, IngressFigures] = field(default_factory=dict)
    duplicate_message_ids: int | None = None

    def of(self, ingress: str) -> IngressFigures:
        return self.ingresses.setdefault(ingress, IngressFigures())

    def table(self) -> list[str]:
        """The printed table: payloads, status histogram, 5xx, crashes and what was enqueued, per ingress."""
        rows = [
            f"{'ingress':<24} {'payloads':>8} {'5xx':>4} {'crashes':>7} {'invalid':>7} {'enq(invalid)':>12} "
            f"{'enq(valid)':>10} {'ms/req':>6}  statuses"
        ]
        total = IngressFigures()
        for name, f in sorted(self.ingresses.items()):
            rows.append(_row(name, f))
            total.payloads += f.payloads
            total.statuses.update(f.statuses)
            total.server_errors += f.server_errors
            total.crashes += f.crashes
            total.invalid_payloads += f.invalid_payloads
            total.enqueued_by_invalid += f.enqueued_by_invalid
            total.enqueued_by_valid += f.enqueued_by_valid
            total.seconds += f.seconds
        rows.append(_row("TOTAL", total))
        # The time spent sending and checking, not the session's: other tests run in it too.
        wall = total.seconds
        rows.append(
            f"budget SIGNALBOX_FUZZ_EXAMPLES={budget()}; sent {total.payloads} payloads in {wall:.1f} s "
            f"({total.payloads / wall if wall else 0:.0f}/s); 5xx: {total.server_errors}; crashes: {total.crashes}; "
            f"messages enqueued by invalid input: {total.enqueued_by_invalid}"
            + (
                f"; duplicate message ids on the queues: {self.duplicate_message_ids}"
                if self.duplicate_message_ids is not None
                else ""
            )
        )
        return rows


def _row(name: str, f: IngressFigures) -> str:
    histogram = " ".join(f"{status}:{count}" for status, count in sorted(f.statuses.items()))
    latency = 1000 * f.seconds / max(f.payloads, 1)
    return (
        f"{name:<24} {f.payloads:>8} {f.server_errors:>4} {f.crashes:>7} {f.invalid_payloads:>7} "
        f"{f.enqueued_by_invalid:>12} {f.enqueued_by_valid:>10} {latency:>6.1f}  {histogram}"
    )


FIGURES = Figures()


# -- the queues ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Queued:
    """A message some request added."""

    queue: str
    message_id: str
    command: dict[str, Any]

    @property
    def model(self) -> str | None:
        model = self.command.get("model_name")
        return model if isinstance(model, str) else None


class QueueWatcher:
    """Reads the local queues' SQLite file directly (read-only) to see what each request added."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)

    def mark(self) -> dict[str, int]:
        """The last sequence number of every queue."""
        with self._connect() as conn:
            return dict(conn.execute("SELECT queue, last FROM sequences").fetchall())

    def since(self, mark: Mapping[str, int]) -> list[Queued]:
        """The messages sent after ``mark``."""
        out: list[Queued] = []
        with self._connect() as conn:
            for queue, last in conn.execute("SELECT queue, last FROM sequences").fetchall():
                if last <= mark.get(queue, 0):
                    continue
                rows = conn.execute(
                    "SELECT message_id, body FROM messages WHERE queue = ? AND seq > ?", (queue, mark.get(queue, 0))
                ).fetchall()
                out.extend(Queued(queue, message_id, _command_of(body)) for message_id, body in rows)
        return out

    def duplicate_message_ids(self) -> int:
        """Messages sharing a message id within a queue (duplicate detection should make this 0)."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM messages GROUP BY queue, message_id HAVING COUNT(*) > 1)"
            ).fetchone()
        return int(row[0])


def _command_of(body: bytes | str) -> dict[str, Any]:
    try:
        command = json.loads(body).get("command", {})
    except (ValueError, AttributeError):
        return {}
    return command if isinstance(command, dict) else {}


# -- the oracle ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """What a payload may queue: at most ``max_new`` messages, each for one of ``models``."""

    models: frozenset[str] = frozenset()
    max_new: int = 0

    @property
    def invalid(self) -> bool:
        return self.max_new == 0


NOTHING = Expect()


def named_models(*values: Any) -> frozenset[str]:
    """The catalogue models a payload names: a string equal to a model (or one of its drift monitors), or
    holding ``model/`` (a landing path, a blob subject or URL, a code path), percent-decoded or not."""
    found: set[str] = set()
    for text in _strings(values):
        for candidate in {text, unquote(text)}:
            for model in MODELS:
                if candidate == model or f"{model}/" in candidate:
                    found.add(model)
            if candidate in MONITORS:
                found.add(MONITORS[candidate])
    return frozenset(found)


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _strings(item)


def may_queue(*values: Any, per_model: int = 1, at_most: int | None = None) -> Expect:
    """The expectation for input that may be valid: only the models it names, ``at_most`` messages."""
    models = named_models(*values)
    if not models:
        return NOTHING
    return Expect(models, at_most if at_most is not None else per_model * len(models))


@dataclass
class Fuzzer:
    """Sends payloads to the host and checks the oracle after each one."""

    host: RunningHost
    session: requests.Session
    watcher: QueueWatcher
    figures: Figures = field(default_factory=lambda: FIGURES)

    def send(
        self,
        ingress: str,
        method: str,
        path: str,
        expect: Expect,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
    ) -> tuple[requests.Response, list[Queued]]:
        """One request; raises AssertionError (naming the request) when the oracle fails."""
        figures = self.figures.of(ingress)
        mark = self.watcher.mark()
        figures.payloads += 1
        figures.invalid_payloads += expect.invalid
        where = f"{method} {path} params={dict(params or {})!r} headers={dict(headers or {})!r} body={data!r:.800}"
        started = time.monotonic()
        try:
            response = self.session.request(
                method, f"{self.host.url}{path}", params=params, headers=_sendable(headers), data=data, timeout=60
            )
        except requests.RequestException as exc:
            figures.crashes += 1
            raise AssertionError(f"{ingress}: no answer ({type(exc).__name__}: {exc}) to {where}") from None
        finally:
            figures.seconds += time.monotonic() - started
        return response, self.check(ingress, response.status_code, response.text, expect, mark, where)

    def check(
        self, ingress: str, status: int, text: str, expect: Expect, mark: Mapping[str, int], where: str
    ) -> list[Queued]:
        """The oracle for one answer; returns what the request queued."""
        figures = self.figures.of(ingress)
        figures.statuses[status] += 1
        if self.host.process.poll() is not None:
            figures.crashes += 1
            raise AssertionError(f"{ingress}: the host exited with {self.host.process.returncode} after {where}")
        new = self.watcher.since(mark)
        if expect.invalid:
            figures.enqueued_by_invalid += len(new)
        else:
            figures.enqueued_by_valid += len(new)
        problem = None
        if status >= 500:
            figures.server_errors += 1
            problem = f"answered {status}"
        elif not 200 <= status < 500:
            problem = f"answered {status}"
        elif len(new) > expect.max_new or any(m.model not in expect.models for m in new):
            problem = (
                f"queued {[(m.queue, m.model) for m in new]}; allowed: {expect.max_new} for {sorted(expect.models)}"
            )
        elif bad := [m.command.get("version") for m in new if not canonical_version(m.command.get("version"))]:
            # Two spellings of one version ("1", "01") are one cause: they must not make two messages.
            problem = f"queued commands for versions {bad!r}, not in canonical form"
        if problem:
            figures.oracle_failures += 1
            raise AssertionError(f"{ingress}: {problem}; answer {status} {text[:400]!r} to {where}")
        return new


def _sendable(headers: Mapping[str, str] | None) -> dict[str, str | bytes]:
    """Header values as a client can send them: no leading blank (requests refuses it), and text beyond
    latin-1 as its UTF-8 bytes (what a client sending UTF-8 puts on the wire)."""
    out: dict[str, str | bytes] = {}
    for name, value in (headers or {}).items():
        value = value.replace("\r", "").replace("\n", "").lstrip()
        try:
            value.encode("latin-1")
            out[name] = value
        except UnicodeEncodeError:
            out[name] = value.encode("utf-8")
    return out


def canonical_version(version: Any) -> bool:
    """Whether a queued command's version has its one spelling: a version number without leading zeros
    ("1", not "01" or "0"), or a version name (Azure ML also names versions with text, "1.2")."""
    if version is None:
        return True
    if not isinstance(version, str) or not version:
        return False
    if version.isascii() and version.isdigit():
        return version == str(int(version)) and int(version) > 0
    return True


# -- the world --------------------------------------------------------------------------------------

# Versions of fz-trained the fuzzed host's registry holds: 1 waits for approval, 2 is in production.
PENDING_VERSION = "1"
PRODUCTION_VERSION = "2"
DEAD_LETTER_QUEUE = "deploy"


@dataclass
class FuzzWorld:
    """The running host and what was seeded for valid input to be possible."""

    host: RunningHost
    fuzzer: Fuzzer
    landed_uri: str
    queues: LocalQueues

    def seed_dead_letters(self, count: int = 2) -> None:
        """Dead letters for the ops functions to list, show, replay and purge.

        They go to the deploy queue, which no fuzzed ingress sends to (only replays put messages back
        there); each in its own session so that it can be received at once.
        """
        for _ in range(count):
            n = self._next_id()
            message_id, session = f"fuzz-dead-{n}", f"fuzz-seed-{n}"
            body = {"command": {"kind": "deploy", "model_name": "fz-trained", "version": PRODUCTION_VERSION}}
            message = OutboundMessage(body=json.dumps(body), message_id=message_id, session_id=session)
            assert self.queues.send(DEAD_LETTER_QUEUE, message)
            for received in self.queues.receive(DEAD_LETTER_QUEUE, max_messages=100):
                if received.message_id == message_id:
                    self.queues.dead_letter(
                        DEAD_LETTER_QUEUE, received.lock_token, reason="FuzzSeed", description="seeded by the fuzzing"
                    )
                else:
                    self.queues.abandon(DEAD_LETTER_QUEUE, received.lock_token)

    def dead_letters(self) -> int:
        return self.queues.counts(DEAD_LETTER_QUEUE)["dead_letter"]

    _counter = 0

    def _next_id(self) -> int:
        FuzzWorld._counter += 1
        return FuzzWorld._counter
