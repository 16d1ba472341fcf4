"""Start a real ``signalbox host`` process for tests and talk to it from outside."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from signalbox.localhost.process import HostProcess

REPO = Path(__file__).resolve().parents[1]


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")


class RunningHost(HostProcess):
    """A started host with the keys a test sends."""

    @property
    def master(self) -> str:
        return self.master_key

    @property
    def function_key(self) -> str:
        return str(self.keys["functionKeys"]["default"])

    @property
    def event_grid_key(self) -> str:
        return str(self.keys["systemKeys"]["eventgrid_extension"])

    def log(self) -> str:
        return self.output()


def start_host(
    state_dir: Path,
    *,
    app: str = "function_app:app",
    env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
    port: int | None = None,
) -> RunningHost:
    """``signalbox host --app APP`` on `port` (a free one by default), with `env` over this environment."""
    host = RunningHost(state_dir, args=("--app", app, *extra_args), env={**os.environ, **(env or {})}, port=port)
    host.start(timeout=60)
    return host
