"""The one helper that starts a ``signalbox host`` child: ready, kill -9, restart, stop, and its failures."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import requests

from signalbox.localhost.process import HostExited, HostProcess, free_port

pytestmark = pytest.mark.integration

APP = ("--app", "tests.apps.queue_app:app")
REPO = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict[str, str]:
    queues = str(REPO / "tests" / "apps" / "queues.json")
    records = str(tmp_path / "records.jsonl")
    return {**os.environ, "TEST_RECORD_FILE": records, "WORK_QUEUE": "train", "SIGNALBOX_QUEUES_FILE": queues}


def _status(host: HostProcess) -> int:
    answer = requests.get(f"{host.url}/admin/host/status", headers={"x-functions-key": host.master_key}, timeout=5)
    return answer.status_code


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # raises if someone listens there
    assert 1024 <= port <= 65535


def test_start_kill_restart_stop_on_one_port_and_state_dir(tmp_path: Path) -> None:
    host = HostProcess(tmp_path / "state", args=APP, env=_env(tmp_path))
    try:
        assert host.start(timeout=60) > 0
        assert host.running and _status(host) == 200
        port, keys, first = host.port, host.keys, host.process
        host.kill()
        assert first.returncode == -9 and not host.running
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{host.url}/admin/host/status", timeout=2)
        host.restart(timeout=60)
        assert host.process is not first and host.running
        assert host.port == port and host.keys == keys  # the same state dir: the same keys
        assert _status(host) == 200
        assert host.log_path.name == f"host-{port}-2.log" and (tmp_path / "state" / f"host-{port}-1.log").exists()
    finally:
        host.stop()
    assert host.process.returncode is not None and not host.running


def test_a_child_that_exits_is_reported_with_its_output(tmp_path: Path) -> None:
    host = HostProcess(tmp_path / "state", args=("--app", "tests.no_such_module:app"))
    with pytest.raises(HostExited, match="exited with") as caught:
        host.start(timeout=60)
    assert "no_such_module" in str(caught.value)  # the child's own error, from its last output
    assert not host.running


def test_a_host_that_is_never_ready_times_out_with_its_output_and_is_stopped(tmp_path: Path) -> None:
    host = HostProcess(tmp_path / "state", args=APP, env=_env(tmp_path))
    with pytest.raises(TimeoutError, match=r"was not ready after 3 s; its last output") as caught:
        host.start(timeout=3, until=lambda: None)
    assert str(host.log_path) in str(caught.value)
    tail = str(caught.value).split(":\n", 1)[1]
    assert tail.strip() and tail in host.output()  # the child's last lines when the wait gave up
    assert not host.running and host.process.returncode is not None
