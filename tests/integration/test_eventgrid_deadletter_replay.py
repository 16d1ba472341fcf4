"""Event Grid dead letters end to end, through a real local host.

The host runs ``tests.apps.eventgrid_app:app``: the operations blueprint and a ``landing_events``
Event Grid trigger that fails (500) while a flag file exists. A BlobCreated delivery that keeps
failing — from ``signalbox send blob`` and from the landing watcher — is retried by the local
stack as Event Grid retries (here 3 attempts, 0.2 s apart) and then written to
``STATE_DIR/eventgrid-deadletters/landing_events/`` in Event Grid's dead-letter format;
``signalbox dlq --source eventgrid`` lists it, a dry run delivers nothing, a replay while the cause
is not fixed is counted and keeps it, and a replay after the fix reaches the function exactly once
and removes it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from signalbox.localhost.process import free_port
from tests.hosting import REPO, RunningHost, start_host, wait_for

pytestmark = pytest.mark.integration

ATTEMPTS = 3
CLI = (sys.executable, "-m", "signalbox.cli")


@dataclass
class Setup:
    host: RunningHost
    state: Path
    record_file: Path
    flag: Path
    env: dict[str, str]

    def records(self, kind: str, event_id: str | None = None) -> list[dict[str, Any]]:
        if not self.record_file.exists():
            return []
        rows = [json.loads(line) for line in self.record_file.read_text().splitlines() if line.strip()]
        return [r for r in rows if r["event"] == kind and (event_id is None or r["id"] == event_id)]

    def dlq(self, *argv: str, host: bool = False) -> tuple[int, Any]:
        """``signalbox dlq ... --source eventgrid --json`` in this process; the exit code and the JSON."""
        import contextlib
        import io

        from signalbox import dlq

        parser = argparse.ArgumentParser(prog="signalbox")
        dlq.add_parser(parser.add_subparsers(dest="command", required=True))
        extra = ["--state-dir", str(self.state), "--source", "eventgrid", "--json"]
        extra += ["--host-url", self.host.url] if host else ["--deliver-to", self.host.url]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = dlq.run(parser.parse_args(["dlq", *argv, *extra]))
        text = out.getvalue()
        return code, json.loads(text) if text.strip() else None

    def dead_letter_files(self) -> list[Path]:
        return sorted((self.state / "eventgrid-deadletters" / "landing_events").rglob("*.json"))


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    flag = tmp_path / "cause-not-fixed"
    flag.touch()
    port = free_port()
    env = {
        "TEST_RECORD_FILE": str(tmp_path / "records.jsonl"),
        "TEST_FAIL_FLAG": str(flag),
        "SIGNALBOX_CATALOGUE": str(REPO / "catalogue.toml"),
        # The admin function's replay delivers to this host's own Event Grid webhook.
        "SIGNALBOX_HOST_URL": f"http://127.0.0.1:{port}",
        "SIGNALBOX_LOCAL_EVENTGRID_MAX_ATTEMPTS": str(ATTEMPTS),
        "SIGNALBOX_LOCAL_EVENTGRID_RETRY_SECONDS": "0.2",
    }
    for name, value in env.items():  # the watcher and the CLI run in this process too
        monkeypatch.setenv(name, value)
    state = tmp_path / "state"
    host = start_host(state, app="tests.apps.eventgrid_app:app", env=env, port=port)
    try:
        yield Setup(host, state, tmp_path / "records.jsonl", flag, env)
    finally:
        host.stop()


def test_a_delivery_that_keeps_failing_is_dead_lettered_listed_and_replayed_once_fixed(setup: Setup, tmp_path):
    data = tmp_path / "batch-001.csv"
    data.write_text("a,b\n1,2\n")
    sent = subprocess.run(
        [*CLI, "send", "blob", str(data), "--state-dir", str(setup.state), "--host-url", setup.host.url],
        cwd=REPO,
        env={**os.environ, **setup.env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert sent.returncode == 1 and "dead-lettered" in sent.stderr and "Traceback" not in sent.stderr, sent.stderr
    [started] = {r["id"] for r in setup.records("start")}
    assert len(setup.records("start", started)) == ATTEMPTS and setup.records("end") == []
    [file] = setup.dead_letter_files()
    [written] = json.loads(file.read_text())
    assert written["id"] == started and written["eventType"] == "Microsoft.Storage.BlobCreated"
    assert (written["deadLetterReason"], written["deliveryAttempts"], written["lastHttpStatusCode"]) == (
        "MaxDeliveryAttemptsExceeded",
        ATTEMPTS,
        500,
    )

    # Listed: directly on the folder, and by the host's admin function.
    code, listing = setup.dlq("list")
    assert code == 0 and listing["count"] == 1
    [row] = listing["dead_letters"]
    assert (row["event_id"], row["function"], row["reason"], row["replay_count"]) == (
        started,
        "landing_events",
        "MaxDeliveryAttemptsExceeded",
        0,
    )
    through_host = requests.get(
        f"{setup.host.url}/api/ops/deadletters",
        params={"source": "eventgrid"},
        headers={"x-functions-key": setup.host.master},
        timeout=60,
    )
    assert through_host.status_code == 200, through_host.text
    assert [r["event_id"] for r in through_host.json()["dead_letters"]] == [started]

    # A dry run delivers nothing.
    code, dry = setup.dlq("replay", "--dry-run", host=True)
    assert code == 0 and dry["counts"] == {"would_replay": 1}
    assert len(setup.records("start", started)) == ATTEMPTS and setup.dead_letter_files() == [file]

    # A replay before the cause is fixed: delivered, refused, counted, kept; then the maximum stops it.
    code, refused = setup.dlq("replay", "--max-replays", "1", host=True)
    assert code == 1 and refused["counts"] == {"failed": 1} and refused["outcomes"][0]["http_status"] == 500
    assert len(setup.records("start", started)) == ATTEMPTS + 1 and setup.dead_letter_files() == [file]
    code, skipped = setup.dlq("replay", "--max-replays", "1", host=True)
    assert code == 0 and skipped["counts"] == {"skipped": 1}
    assert len(setup.records("start", started)) == ATTEMPTS + 1

    # Fixed: replayed through the host's Event Grid webhook, exactly once, then gone.
    setup.flag.unlink()
    code, replayed = setup.dlq("replay", "landing_events", host=True)
    assert code == 0 and replayed["counts"] == {"replayed": 1} and replayed["outcomes"][0]["replay_count"] == 2
    assert len(setup.records("end", started)) == 1
    assert setup.dead_letter_files() == []
    code, empty = setup.dlq("list")
    assert code == 0 and empty["count"] == 0
    code, again = setup.dlq("replay", host=True)
    assert code == 0 and again["counts"] == {} and len(setup.records("end", started)) == 1


def test_the_landing_watcher_dead_letters_what_it_cannot_deliver_and_a_replay_delivers_it(setup: Setup):
    from signalbox.embedded import LandingWatcher

    root = setup.state / "landing"
    stand_in = SimpleNamespace(base_url=setup.host.url, settings=SimpleNamespace(state_dir=setup.state))
    watcher = LandingWatcher(root, stand_in, interval=0.1)  # type: ignore[arg-type]
    watcher.start()
    try:
        target = root / "landing" / "iris" / "batch-002.csv"
        target.parent.mkdir(parents=True)
        target.write_text("a,b\n3,4\n")
        [file] = wait_for(setup.dead_letter_files, timeout=60, what="the watcher to dead-letter the BlobCreated")
        [event_id] = {r["id"] for r in setup.records("start")}
        assert len(setup.records("start", event_id)) == ATTEMPTS
        # Dead-lettered counts as announced: the watcher does not deliver it again by itself.
        announced = [json.loads(line)["path"] for line in watcher.record.read_text().splitlines()]
        assert announced == ["landing/iris/batch-002.csv"]
        time.sleep(1)  # ten more looks of the watcher
        assert len(setup.records("start", event_id)) == ATTEMPTS
    finally:
        watcher.stop()

    written = json.loads(file.read_text())[0]
    assert written["subject"] == "/blobServices/default/containers/landing/blobs/iris/batch-002.csv"
    code, dry = setup.dlq("replay", "--dry-run")
    assert code == 0 and dry["counts"] == {"would_replay": 1} and setup.records("end") == []

    setup.flag.unlink()
    # Directly on the folder, delivered to the host with its Event Grid system key.
    code, replayed = setup.dlq("replay", "--event-id", event_id)
    assert code == 0 and replayed["counts"] == {"replayed": 1}
    assert len(setup.records("end", event_id)) == 1 and setup.dead_letter_files() == []
