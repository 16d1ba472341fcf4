"""Start a real ``signalbox host`` process for a benchmark and talk to it over HTTP."""

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
CATALOGUE = REPO / "catalogue.toml"
MODEL = "iris-classifier"  # a trained catalogue model; its landing prefix is iris/


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it is truthy; ``TimeoutError`` naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Host:
    """A running ``signalbox host`` process with its state dir."""

    process: subprocess.Popen[bytes]
    url: str
    state_dir: Path
    log_path: Path

    @property
    def keys(self) -> dict[str, Any]:
        """The keys the host generated into its state dir."""
        return dict(json.loads((self.state_dir / "host-keys.json").read_text()))

    @property
    def event_grid_url(self) -> str:
        """Where Event Grid posts, without the function name."""
        return f"{self.url}/runtime/webhooks/EventGrid"

    def log(self) -> str:
        """The host's output so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_host(state_dir: Path, functions: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Host:
    """Start ``signalbox host`` on a free port with the embedded defaults; return once it answers."""
    port = free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / f"host-{port}.log"
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "SIGNALBOX_CATALOGUE": str(CATALOGUE),
        **(env or {}),
    }
    args = [sys.executable, "-m", "signalbox.cli", "host", "--port", str(port), "--state-dir", str(state_dir)]
    if functions:
        args += ["--functions", *functions]
    with log_path.open("wb") as handle:
        process = subprocess.Popen(args, cwd=REPO, env=full_env, stdout=handle, stderr=subprocess.STDOUT)
    host = Host(process=process, url=f"http://127.0.0.1:{port}", state_dir=state_dir, log_path=log_path)

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"host exited with {process.returncode}:\n{host.log()}")
        try:
            key = host.keys["masterKey"]
            answer = requests.get(f"{host.url}/admin/host/status", headers={"x-functions-key": key}, timeout=2)
        except (OSError, ValueError, KeyError, requests.RequestException):
            return False
        return answer.status_code == 200

    try:
        wait_for(ready, timeout=60, what="the local host to start")
    except BaseException:
        host.stop()
        raise
    return host
