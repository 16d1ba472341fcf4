"""The local host's schedule monitor: a timer occurrence missed while the host was down fires at start-up.

As Azure's timer extension does with ``useMonitor`` (on by default for schedules of a minute or more):
the schedule status (``Last``, ``Next``, ``LastUpdated``) is kept across restarts, the function gets it
as ``TimerRequest.schedule_status``, and a start after a missed occurrence fires once with ``past_due``.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func

from signalbox.localhost.index import HostedFunction
from signalbox.localhost.triggers import TimerRunner

HOURLY = "0 0 * * * *"


def timer(schedule: str, calls: list[func.TimerRequest], **trigger: Any) -> HostedFunction:
    fired = threading.Event()

    def reconcile(sweep: func.TimerRequest) -> None:
        calls.append(sweep)
        fired.set()

    function = HostedFunction(
        name="reconcile",
        trigger_type="timerTrigger",
        trigger={"name": "sweep", "schedule": schedule, **trigger},
        bindings=[],
        user_function=reconcile,
    )
    function.fired = fired  # type: ignore[attr-defined]
    return function


def started(function: HostedFunction, status_dir: Path) -> TimerRunner:
    runner = TimerRunner(function, lambda *args: None, status_dir)
    runner.start()
    return runner


def run_for(function: HostedFunction, status_dir: Path, seconds: float) -> tuple[bool, TimerRunner]:
    """Start a runner, wait up to ``seconds`` for the function to fire, stop it: (fired, the runner)."""
    runner = started(function, status_dir)
    try:
        return function.fired.wait(seconds), runner  # type: ignore[attr-defined]
    finally:
        runner.stop()


def status_of(folder: Path) -> dict[str, str]:
    return json.loads((folder / "reconcile.json").read_text(encoding="utf-8"))


def test_an_occurrence_missed_while_down_fires_once_at_start_up_as_past_due(tmp_path: Path) -> None:
    # The host last ran three hours ago: the next hourly occurrence after that has passed.
    before = datetime.now(UTC) - timedelta(hours=3)
    (tmp_path / "reconcile.json").write_text(
        json.dumps(
            {
                "Last": before.isoformat(),
                "Next": (before + timedelta(hours=1)).isoformat(),
                "LastUpdated": before.isoformat(),
            }
        )
    )
    calls: list[func.TimerRequest] = []
    fired, _ = run_for(timer(HOURLY, calls), tmp_path, 10)
    assert fired
    assert len(calls) == 1 and calls[0].past_due
    assert calls[0].schedule_status["Last"] == before.isoformat()  # what the function is told about the last run
    status = status_of(tmp_path)
    assert datetime.fromisoformat(status["Last"]) > before  # the missed occurrence is now the last one run
    assert datetime.fromisoformat(status["Next"]) > datetime.now(UTC)


def test_no_missed_occurrence_no_fire_and_the_status_says_what_is_next(tmp_path: Path) -> None:
    calls: list[func.TimerRequest] = []
    fired, runner = run_for(timer(HOURLY, calls), tmp_path, 1)
    assert not fired
    assert calls == []
    assert datetime.fromisoformat(status_of(tmp_path)["Next"]) == runner.next_fire


def test_a_restart_before_the_next_occurrence_fires_nothing(tmp_path: Path) -> None:
    first = started(timer(HOURLY, []), tmp_path)
    first.stop()
    calls: list[func.TimerRequest] = []
    fired, _ = run_for(timer(HOURLY, calls), tmp_path, 1)
    assert not fired
    assert calls == []


def test_without_the_monitor_nothing_is_kept_or_caught_up(tmp_path: Path) -> None:
    before = datetime.now(UTC) - timedelta(hours=3)
    (tmp_path / "reconcile.json").write_text(
        json.dumps({"Last": before.isoformat(), "LastUpdated": before.isoformat()})
    )
    for function in (timer(HOURLY, [], useMonitor=False), timer("*/5 * * * * *", [])):  # off, and sub-minute
        runner = TimerRunner(function, lambda *args: None, tmp_path)
        assert runner.status_file is None
    calls: list[func.TimerRequest] = []
    fired, _ = run_for(timer(HOURLY, calls, useMonitor=False), tmp_path, 1)
    assert not fired
    assert calls == []
