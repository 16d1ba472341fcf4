"""A file dropped while the host was down trains once, as a new user would try it.

``signalbox host --with-mlflow`` (the whole embedded default) is started, killed with ``kill -9``,
a CSV is dropped in its landing folder while nothing runs, and the host is started again on the
same state dir:

- the landing watcher announces the file (it keeps what it announced in
  ``landing-announced.jsonl``), it trains exactly once, and announcing it again (another restart,
  an explicit BlobCreated with the same ETag) trains nothing more;
- where the watcher does not announce it (a state dir from before that record: its first start
  takes every file there as announced), the landing sweep does, when the reconcile timer fires
  (``POST /admin/functions/reconcile``): one training, and a late BlobCreated of the same write or
  another sweep adds none.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import requests

from signalbox.client import blob_created_event
from signalbox.examples.iris.data import write_batch
from signalbox.localhost.process import HostProcess
from tests.hosting import wait_for
from tests.integration.test_crash_recovery import _launch
from tests.integration.test_lifecycle import CATALOGUE, Stack, _clean_env, _ours, _stop

pytestmark = pytest.mark.integration

MODEL = "lc-main"


def _trainings(stack: Stack) -> list[dict]:
    return stack.events(MODEL, "TrainingStarted")


def _versions_trained_on(stack: Stack, uri: str) -> list[str]:
    return [v for v in stack.versions(MODEL) if stack.tags(MODEL, v).get("signalbox.data_uri") == uri]


def _host(tmp_path: Path) -> HostProcess:
    (tmp_path / "state").mkdir()
    return HostProcess(
        tmp_path / "state",
        args=("--with-mlflow",),
        # The sweeps run when the test fires them, never on their own (a timer fire racing the test's
        # would take its minute: one sweep per model per minute, whoever sends it).
        env={**_clean_env(), "SIGNALBOX_CATALOGUE": CATALOGUE, "SIGNALBOX_RECONCILE_SCHEDULE": "0 0 0 1 1 *"},
        log_dir=tmp_path,
        new_session=True,
    )


def _drop(tmp_path: Path, state: Path) -> Path:
    """A batch dropped whole into the landing folder (written aside, renamed in)."""
    aside = write_batch(tmp_path / "incoming" / "batch-001.csv", "small", seed=3)
    target = state / "landing" / "landing" / MODEL / "batch-001.csv"
    target.parent.mkdir(parents=True)
    os.replace(aside, target)
    return target


def _restart(host: HostProcess, stack: Stack) -> None:
    stack.mlflow_url = _launch(host)
    stack.process, stack.log_path = host.process, host.log_path
    stack.__dict__.pop("mlflow", None)  # the cached client


_FIRED: dict[str, str] = {}


def _sweep_minute() -> str:
    """The minute a fire counts for (shared/handlers/reconcile.py schedule_sweeps: the nearest minute)."""
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M")


def _fire_reconcile(stack: Stack) -> None:
    """Fire the reconcile timer by hand, in a minute no earlier fire of this stack took."""
    while _sweep_minute() == _FIRED.get(stack.url):
        time.sleep(1)
    _FIRED[stack.url] = _sweep_minute()
    answer = requests.post(
        f"{stack.url}/admin/functions/reconcile", headers={"x-functions-key": stack.master_key}, timeout=30
    )
    assert answer.status_code == 202, answer.text


def test_a_file_dropped_while_the_host_was_killed_trains_exactly_once_after_the_restart(tmp_path: Path) -> None:
    host = _host(tmp_path)
    state = host.state_dir
    mlflow_url = _launch(host)
    stack = Stack(process=host.process, url=host.url, state=state, log_path=host.log_path, mlflow_url=mlflow_url)
    record = state / "landing-announced.jsonl"
    try:
        wait_for(record.exists, timeout=30, what="the landing watcher to start")
        host.kill()

        # Dropped while no host runs: no watcher, no event.
        target = _drop(tmp_path, state)
        uri = target.resolve().as_uri()

        _restart(host, stack)
        stack.wait("the dropped file's version", lambda: _versions_trained_on(stack, uri))
        stack.settle()
        assert len(_trainings(stack)) == 1, _trainings(stack)
        assert _versions_trained_on(stack, uri) == ["1"]
        announced = [json.loads(line) for line in record.read_text().splitlines()]
        assert [a["path"] for a in announced] == [f"landing/{MODEL}/batch-001.csv"]

        # Announced again: by Event Grid's own retry (same write, same ETag) and by a restart that
        # lost its record. Neither trains it twice.
        event = blob_created_event(target, "landing", f"{MODEL}/batch-001.csv")
        event["id"] = "another-delivery-of-the-same-write"
        assert stack.event_grid("landing_events", [event]).status_code in (200, 202)
        host.stop()
        record.write_text("")  # as if the record were lost: the file is announced at the next start
        _restart(host, stack)
        wait_for(lambda: record.read_text().strip(), timeout=30, what="the watcher to announce the file again")
        time.sleep(1)
        stack.settle()
        assert len(_trainings(stack)) == 1, _trainings(stack)
        assert _versions_trained_on(stack, uri) == ["1"]
        assert stack.versions(MODEL) == ["1"]
    finally:
        not_stopped, _ended = _stop(stack)
        left = _ours(state)
    assert not left, f"processes still running after the teardown: {left}"
    assert not not_stopped, f"the host did not stop these on SIGTERM: {not_stopped}"


def test_a_file_the_watcher_never_announced_is_trained_once_by_the_landing_sweep(tmp_path: Path) -> None:
    host = _host(tmp_path)
    state = host.state_dir
    mlflow_url = _launch(host)
    stack = Stack(process=host.process, url=host.url, state=state, log_path=host.log_path, mlflow_url=mlflow_url)
    record = state / "landing-announced.jsonl"
    try:
        wait_for(record.exists, timeout=30, what="the landing watcher to start")
        host.kill()
        target = _drop(tmp_path, state)
        uri = target.resolve().as_uri()
        record.unlink()  # a state dir from before the record: the next start takes the file as announced

        _restart(host, stack)
        wait_for(record.exists, timeout=30, what="the landing watcher to start again")
        assert f"landing/{MODEL}/batch-001.csv" in record.read_text()
        time.sleep(2)  # a few of the watcher's looks
        assert _trainings(stack) == [], "the watcher announced a file it took as announced"

        # The sweep leaves files younger than its grace (30 s) for the next sweep: fire it after that.
        time.sleep(max(0.0, target.stat().st_mtime + 31 - time.time()))
        _fire_reconcile(stack)
        stack.wait("the swept file's version", lambda: _versions_trained_on(stack, uri))
        stack.settle()
        assert len(_trainings(stack)) == 1, _trainings(stack)
        swept = [e["data"].get("landing", {}) for e in stack.events(MODEL, "Reconciled")]
        assert any(counts.get("files_sent") == 1 for counts in swept), swept

        # The event that was lost arrives after all (same write, same ETag), and the sweep runs again.
        event = blob_created_event(target, "landing", f"{MODEL}/batch-001.csv")
        assert stack.event_grid("landing_events", [event]).status_code in (200, 202)
        reconciled = len(stack.events(MODEL, "Reconciled"))
        _fire_reconcile(stack)
        stack.wait("the second sweep", lambda: len(stack.events(MODEL, "Reconciled")) > reconciled)
        stack.settle()
        assert len(_trainings(stack)) == 1, _trainings(stack)
        assert stack.versions(MODEL) == ["1"]
        assert stack.events(MODEL, "Reconciled")[-1]["data"]["landing"]["files_new"] == 0
    finally:
        not_stopped, _ended = _stop(stack)
        left = _ours(state)
    assert not left, f"processes still running after the teardown: {left}"
    assert not not_stopped, f"the host did not stop these on SIGTERM: {not_stopped}"
