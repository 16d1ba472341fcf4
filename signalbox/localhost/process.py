"""A ``signalbox host`` child process, driven from outside: the benchmarks, ``signalbox chaos`` and the tests.

Start it on a free port with a state dir and an environment, wait until ``/admin/host/status`` answers,
``kill -9`` it, start it again on the same port and state dir, stop it. A start that fails says why with
the child's last output: :class:`HostExited` when the child ended, :class:`TimeoutError` when it never
answered.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.adapters.local.net import free_port

if TYPE_CHECKING:
    import requests

__all__ = ["ROOT", "HostExited", "HostProcess", "free_port"]

# Holds function_app.py and the signalbox package: the child's working directory.
ROOT = Path(__file__).resolve().parents[2]
_TAIL_LINES = 40


class HostExited(RuntimeError):
    """The host process ended before it answered."""


class HostProcess:
    """``python -m signalbox.cli host`` as a child process on one port and one state dir.

    `env` is the child's whole environment (default: this process's); ``PYTHONUNBUFFERED`` is set so
    its output can be read as it happens, and `ROOT` is put first on ``PYTHONPATH``. `args` are the
    host's other options (``--app``, ``--functions``, ``--with-mlflow``...). Each start writes its own
    log, ``host-<port>-<start>.log`` in `log_dir` (default: the state dir).
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        log_dir: Path | None = None,
        new_session: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.args = tuple(args)
        self.env = dict(os.environ if env is None else env)
        self.port = port or free_port()
        self.log_dir = Path(log_dir) if log_dir is not None else self.state_dir
        self.new_session = new_session
        self.starts = 0
        self.log_path = self._log_for(1)
        self._process: subprocess.Popen[bytes] | None = None

    # -- what it is ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Where the host listens."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The current (or last) child process."""
        if self._process is None:
            raise RuntimeError("the host has not been started")
        return self._process

    @property
    def running(self) -> bool:
        """Started and not exited."""
        return self._process is not None and self._process.poll() is None

    @property
    def keys(self) -> dict[str, Any]:
        """The keys the host keeps in its state dir (``host-keys.json``)."""
        return dict(json.loads((self.state_dir / "host-keys.json").read_text(encoding="utf-8")))

    @property
    def master_key(self) -> str:
        """The master key (``/admin`` routes)."""
        return str(self.keys["masterKey"])

    def output(self, lines: int | None = None) -> str:
        """What the current (or last) start wrote so far: all of it, or its last `lines` lines."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text if lines is None else "\n".join(text.splitlines()[-lines:])

    # -- starting ------------------------------------------------------------------------------

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the child and return at once (see :meth:`wait_ready`); refuses while one runs."""
        if self.running:
            raise RuntimeError(f"the host on {self.url} is already running")
        self.starts += 1
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self._log_for(self.starts)
        command = [
            sys.executable,
            *("-m", "signalbox.cli", "host"),
            *("--port", str(self.port), "--state-dir", str(self.state_dir)),
            *self.args,
        ]
        path = os.pathsep.join(part for part in (str(ROOT), self.env.get("PYTHONPATH", "")) if part)
        env = {**self.env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
        with self.log_path.open("wb") as out:
            self._process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=self.new_session
            )
        return self._process

    def wait_ready(self, timeout: float = 60.0, until: Callable[[], Any] | None = None) -> Any:
        """Wait until the host answers ``/admin/host/status`` (and `until` returns something truthy).

        Returns what `until` returned (True without it). Raises :class:`HostExited` if the child ends
        first and :class:`TimeoutError` after `timeout` seconds, both with the child's last output.
        """
        import requests  # here, so that free_port alone (signalbox.mlflow_server) stays a cheap import

        deadline = time.monotonic() + timeout
        with requests.Session() as session:
            session.trust_env = False  # 127.0.0.1 never goes through a proxy from the environment
            while True:
                code = self.process.poll()
                if code is not None:
                    raise HostExited(f"signalbox host exited with {code} before it answered; {self._tail()}")
                found = self._answers(session) and (until() if until is not None else True)
                if found:
                    return found
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"signalbox host on {self.url} was not ready after {timeout:.0f} s; {self._tail()}"
                    )
                time.sleep(0.1)

    def start(self, timeout: float = 60.0, until: Callable[[], Any] | None = None) -> float:
        """Launch and wait until ready; returns the seconds it took. A failed start is stopped again."""
        began = time.monotonic()
        self.launch()
        try:
            self.wait_ready(timeout, until)
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - began

    def restart(self, timeout: float = 60.0, until: Callable[[], Any] | None = None) -> float:
        """Start again on the same port and state dir (a running host is stopped first)."""
        self.stop()
        return self.start(timeout, until)

    # -- ending --------------------------------------------------------------------------------

    def kill(self) -> None:
        """``kill -9``: no chance to finish, complete or abandon anything."""
        if self.running:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then ``kill -9`` if it has not exited after `timeout` seconds."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    # -- inside --------------------------------------------------------------------------------

    def _log_for(self, start: int) -> Path:
        return self.log_dir / f"host-{self.port}-{start}.log"

    def _answers(self, session: requests.Session) -> bool:
        import requests

        try:
            key = self.master_key
            answer = session.get(f"{self.url}/admin/host/status", headers={"x-functions-key": key}, timeout=2)
        except (OSError, ValueError, KeyError, requests.RequestException):
            return False  # no keys yet, keys half written, or nobody listening yet
        return answer.status_code == 200

    def _tail(self) -> str:
        return f"its last output ({self.log_path}):\n{self.output(_TAIL_LINES)}"
