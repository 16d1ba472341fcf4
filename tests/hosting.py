"""Start a real ``signalbox host`` process for tests and talk to it from outside."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")


@dataclass
class RunningHost:
    process: subprocess.Popen[bytes]
    url: str
    state_dir: Path
    log_path: Path

    @property
    def keys(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "host-keys.json").read_text())

    @property
    def master(self) -> str:
        return str(self.keys["masterKey"])

    @property
    def function_key(self) -> str:
        return str(self.keys["functionKeys"]["default"])

    @property
    def event_grid_key(self) -> str:
        return str(self.keys["systemKeys"]["eventgrid_extension"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9: no chance to settle anything."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def start_host(
    state_dir: Path,
    *,
    app: str = "function_app:app",
    env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
    port: int | None = None,
) -> RunningHost:
    port = port or free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / f"host-{port}-{time.monotonic_ns()}.log"
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
    handle = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "signalbox.cli",
            "host",
            "--port",
            str(port),
            "--state-dir",
            str(state_dir),
            "--app",
            app,
            *extra_args,
        ],
        cwd=REPO,
        env=full_env,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    host = RunningHost(process=process, url=f"http://127.0.0.1:{port}", state_dir=state_dir, log_path=log_path)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"host exited with {process.returncode}:\n{host.log()}")
        try:
            keys = host.keys
            response = requests.get(
                f"{host.url}/admin/host/status", headers={"x-functions-key": keys["masterKey"]}, timeout=2
            )
            return response.status_code == 200
        except (OSError, ValueError, KeyError, requests.RequestException):
            return False

    wait_for(ready, timeout=60, what="the local host to start")
    return host
