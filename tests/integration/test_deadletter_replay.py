"""Dead letters end to end: a real local host poisons a message, then the CLI and the admin functions
list, replay (after the cause is fixed) and purge it.

The host runs ``tests.apps.ops_app:app`` (the operations blueprint and a ``work`` trigger that
fails while a flag file exists) on the test queue definition: locks of 2 s, MaxDeliveryCount 3.
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.adapters.local.queues import LocalQueues, OutboundMessage
from shared.queues import load_queue_specs
from tests.hosting import REPO, RunningHost, start_host, wait_for

TEST_QUEUES = REPO / "tests" / "apps" / "queues.json"
TRAIN = "train"

pytestmark = pytest.mark.integration


@dataclass
class Setup:
    host: RunningHost
    queues: LocalQueues
    record_file: Path
    flag: Path

    @property
    def ops(self) -> str:
        return f"{self.host.url}/api/ops/deadletters"

    @property
    def admin(self) -> dict[str, str]:
        return {"x-functions-key": self.host.master}

    def records(self) -> list[dict[str, Any]]:
        if not self.record_file.exists():
            return []
        return [json.loads(line) for line in self.record_file.read_text().splitlines() if line.strip()]

    def send(self, ident: str, message_id: str, correlation_id: str) -> None:
        message = OutboundMessage(body=json.dumps({"id": ident}), message_id=message_id, correlation_id=correlation_id)
        assert self.queues.send(TRAIN, message)

    def dead_ids(self) -> list[str]:
        return [m.message_id for m in self.queues.peek(TRAIN, dead_letter=True)]

    def wait_dead(self, message_id: str) -> None:
        wait_for(
            lambda: message_id in self.dead_ids() and self.queues.counts(TRAIN)["active"] == 0,
            timeout=30,
            what=f"{message_id} to be dead-lettered",
        )

    def cli(self, *argv: str, host: bool = False) -> int:
        from signalbox import dlq

        parser = argparse.ArgumentParser(prog="signalbox")
        dlq.add_parser(parser.add_subparsers(dest="command", required=True))
        extra = ["--state-dir", str(self.host.state_dir)]
        if host:
            extra += ["--host-url", self.host.url]
        return dlq.run(parser.parse_args(["dlq", *argv, *extra]))


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    # The CLI, run in this process, reads the same queue definition as the host.
    monkeypatch.setenv("SIGNALBOX_QUEUES_FILE", str(TEST_QUEUES))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    flag = tmp_path / "cause-not-fixed"
    flag.touch()
    env = {
        "TEST_RECORD_FILE": str(tmp_path / "records.jsonl"),
        "TEST_FAIL_FLAG": str(flag),
        "WORK_QUEUE": TRAIN,
        "SIGNALBOX_QUEUES_FILE": str(TEST_QUEUES),
        "SIGNALBOX_CATALOGUE": str(REPO / "catalogue.toml"),
    }
    host = start_host(tmp_path / "state", app="tests.apps.ops_app:app", env=env)
    queues = LocalQueues(tmp_path / "state" / "queues.sqlite3", specs=load_queue_specs(TEST_QUEUES))
    try:
        yield Setup(host, queues, tmp_path / "records.jsonl", flag)
    finally:
        host.stop()


def test_poisoned_message_is_listed_dry_run_then_replayed_once_the_cause_is_fixed(setup: Setup, capsys):
    setup.send("job-1", "m-poison", "life-1")
    setup.wait_dead("m-poison")
    attempts = [r for r in setup.records() if r["id"] == "job-1" and r["event"] == "start"]
    assert [r["delivery"] for r in attempts] == [1, 2, 3] and {r["replay_count"] for r in attempts} == {0}

    # List: the CLI directly on the local queues ...
    assert setup.cli("list", TRAIN) == 0
    table = capsys.readouterr().out
    assert "m-poison" in table and "MaxDeliveryCountExceeded" in table and "life-1" in table
    assert "1 dead letter(s)" in table
    # ... and the admin function (through the CLI too).
    listed = requests.get(setup.ops, params={"queue": TRAIN}, headers=setup.admin, timeout=60)
    assert listed.status_code == 200, listed.text
    [row] = listed.json()["dead_letters"]
    assert (row["message_id"], row["reason"], row["correlation_id"]) == (
        "m-poison",
        "MaxDeliveryCountExceeded",
        "life-1",
    )
    assert row["delivery_count"] == 3 and row["replay_count"] == 0
    assert row["description"].startswith("Message could not be consumed after 3 delivery attempts.")  # short
    assert row["enqueued_time"] and row["dead_lettered_time"]
    assert setup.cli("list", "--json", host=True) == 0
    assert [r["message_id"] for r in json.loads(capsys.readouterr().out)["dead_letters"]] == ["m-poison"]
    shown = requests.get(f"{setup.ops}/m-poison", headers=setup.admin, timeout=30).json()
    assert json.loads(shown["body"]) == {"id": "job-1"} and "the cause is not fixed yet: job-1" in shown["description"]
    assert setup.cli("show", "m-poison") == 0
    assert '"id": "job-1"' in capsys.readouterr().out

    # Dry run: reports the move, moves nothing.
    assert setup.cli("replay", TRAIN, "--dry-run", host=True) == 0
    out = capsys.readouterr().out
    assert "would replay: train m-poison -> m-poison:replay-1 (replay 1)" in out and "nothing moved" in out
    assert setup.cli("replay", "--dry-run") == 0
    assert "would replay: train m-poison" in capsys.readouterr().out
    assert setup.dead_ids() == ["m-poison"] and setup.queues.counts(TRAIN)["active"] == 0
    assert len([r for r in setup.records() if r["id"] == "job-1"]) == 3

    # Fix the cause, replay (the CLI, directly), and the work finishes.
    setup.flag.unlink()
    assert setup.cli("replay", TRAIN, "--correlation-id", "life-1") == 0
    assert "replayed: train m-poison -> m-poison:replay-1 (replay 1)" in capsys.readouterr().out
    wait_for(
        lambda: any(r["id"] == "job-1" and r["event"] == "end" for r in setup.records()),
        timeout=30,
        what="the replayed work to finish",
    )
    wait_for(lambda: sum(setup.queues.counts(TRAIN).values()) == 0, timeout=10, what="the queue to empty")
    [finished] = [r for r in setup.records() if r["id"] == "job-1" and r["event"] == "end"]
    assert finished["replay_count"] == 1
    assert finished["message_id"] == "m-poison:replay-1" and finished["correlation_id"] == "life-1"
    assert len([r for r in setup.records() if r["id"] == "job-1" and r["event"] == "start"]) == 4  # once more
    assert requests.get(setup.ops, headers=setup.admin, timeout=30).json()["count"] == 0


def test_a_message_that_still_fails_returns_to_the_dlq_and_stops_at_max_replays(setup: Setup, capsys):
    setup.send("job-2", "m-2", "life-2")
    setup.wait_dead("m-2")

    # Replayed through the admin function, but the cause is not fixed: back to the DLQ, replay_count 1.
    answer = requests.post(
        f"{setup.ops}/replay", json={"queue": TRAIN, "max_replays": 1}, headers=setup.admin, timeout=60
    )
    assert answer.status_code == 200, answer.text
    assert [(o["status"], o["new_message_id"]) for o in answer.json()["outcomes"]] == [("replayed", "m-2:replay-1")]
    setup.wait_dead("m-2:replay-1")
    replays = [r for r in setup.records() if r["id"] == "job-2" and r["replay_count"] == 1]
    assert [r["delivery"] for r in replays] == [1, 2, 3]
    [row] = requests.get(setup.ops, headers=setup.admin, timeout=30).json()["dead_letters"]
    assert (row["message_id"], row["replay_count"]) == ("m-2:replay-1", 1)

    # At the maximum: skipped, by the admin function and by the CLI; it stays in the DLQ.
    again = requests.post(f"{setup.ops}/replay", json={"max_replays": 1}, headers=setup.admin, timeout=30).json()
    assert [o["status"] for o in again["outcomes"]] == ["skipped"] and "maximum is 1" in again["outcomes"][0]["detail"]
    assert setup.cli("replay", "--max-replays", "1") == 0
    assert "skipped: train m-2:replay-1" in capsys.readouterr().out
    assert setup.dead_ids() == ["m-2:replay-1"] and setup.queues.counts(TRAIN)["active"] == 0

    # Purge: refused without confirmation, done with it.
    no_confirm = requests.post(f"{setup.ops}/purge", json={"queue": TRAIN}, headers=setup.admin, timeout=30)
    assert no_confirm.status_code == 400 and "confirm with 'train'" in no_confirm.json()["error"]
    wrong = requests.post(
        f"{setup.ops}/purge", json={"queue": TRAIN, "confirm": "deploy"}, headers=setup.admin, timeout=30
    )
    assert wrong.status_code == 400
    assert setup.cli("purge", TRAIN, host=True) == 2  # no terminal, no --yes
    assert "refusing to purge without confirmation" in capsys.readouterr().err
    assert setup.cli("purge", TRAIN) == 2
    assert setup.dead_ids() == ["m-2:replay-1"]
    assert setup.cli("purge", TRAIN, "--yes", host=True) == 0
    assert "purged: train m-2:replay-1" in capsys.readouterr().out
    assert setup.dead_ids() == []

    # And the admin function's purge, with the confirmation in the body.
    setup.send("job-3", "m-3", "life-3")
    setup.wait_dead("m-3")
    purged = requests.post(
        f"{setup.ops}/purge", json={"queue": TRAIN, "confirm": TRAIN}, headers=setup.admin, timeout=30
    )
    assert purged.status_code == 200 and purged.json()["counts"] == {"purged": 1}
    assert setup.dead_ids() == []


def test_admin_endpoints_need_the_admin_key_and_reject_bad_input(setup: Setup, capsys):
    host = setup.host
    function_key = {"x-functions-key": host.function_key}
    assert requests.get(f"{host.url}/api/ping", headers=function_key, timeout=10).text == "pong"
    for method, url, body in (
        ("GET", setup.ops, None),
        ("GET", f"{setup.ops}/m-1", None),
        ("POST", f"{setup.ops}/replay", {}),
        ("POST", f"{setup.ops}/purge", {"confirm": "all"}),
    ):
        assert requests.request(method, url, json=body, headers=function_key, timeout=10).status_code == 401
        assert requests.request(method, url, json=body, timeout=10).status_code == 401

    def post(path: str, **kwargs: Any) -> requests.Response:
        return requests.post(f"{setup.ops}/{path}", headers=setup.admin, timeout=60, **kwargs)

    for response, message in (
        (requests.get(setup.ops, params={"queue": "nope"}, headers=setup.admin, timeout=60), "unknown queue 'nope'"),
        (requests.get(setup.ops, params={"since": "soon"}, headers=setup.admin, timeout=30), "since"),
        (requests.get(setup.ops, params={"limit": "0"}, headers=setup.admin, timeout=30), "limit"),
        (post("replay", data=b"{not json"), "JSON"),
        (post("replay", json=["train"]), "JSON object"),
        (post("replay", json={"queu": "train"}), "unknown field"),
        (post("replay", json={"max_replays": -1}), "max_replays"),
        (post("replay", json={"dry_run": "maybe"}), "dry_run"),
        (post("purge", json={"confirm": 3}), "confirm"),
    ):
        assert response.status_code == 400, response.text
        assert message in response.json()["error"]
    missing = requests.get(f"{setup.ops}/no-such-id", headers=setup.admin, timeout=30)
    assert missing.status_code == 404 and "no-such-id" in missing.json()["error"]
    # The CLI reads the admin key from the state dir; with another state dir it gets a 401 and says why.
    from signalbox import dlq

    parser = argparse.ArgumentParser(prog="signalbox")
    dlq.add_parser(parser.add_subparsers(dest="command", required=True))
    other = setup.host.state_dir.parent / "other-state"
    assert dlq.run(parser.parse_args(["dlq", "list", "--host-url", host.url, "--state-dir", str(other)])) == 1
    assert "host answered 401" in capsys.readouterr().err
    keyed = ["dlq", "list", "--host-url", host.url, "--state-dir", str(other), "--admin-key", host.master]
    assert dlq.run(parser.parse_args(keyed)) == 0
    assert "no dead letters" in capsys.readouterr().out
