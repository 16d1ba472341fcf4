"""A local ``mlflow server`` for the embedded default: SQL store, proxied artifacts, webhooks on.

MLflow only fires registry webhooks from ``mlflow server`` over a SQL store, and only
delivers to plain-HTTP, loopback URLs when told to; this module starts such a server in a
state directory and keeps the key that encrypts webhook secrets there, so a restart can
still read the webhooks it stored.

One server per state dir: ``mlflow-server.json`` records the running one (pid, start time, port,
owner). A start finds a server that a killed owner left behind, stops it and starts again on its
port (so jobs still running against that URL reach the new server); with ``die_with_parent`` the
server is also ended (SIGTERM, which ``mlflow server`` forwards to uvicorn) when its owner dies.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from signalbox.localhost.process import free_port as _free_port

__all__ = ["MlflowServer", "MlflowServerError", "ensure_model_version_webhook", "webhook_encryption_key"]

_log = logging.getLogger(__name__)

KEY_FILE = "mlflow-webhook.key"
RECORD_FILE = "mlflow-server.json"
LOG_FILE = Path("logs") / "mlflow-server.log"
_POLL_SECONDS = 0.1
_STOP_TIMEOUT_SECONDS = 10.0
_LOG_TAIL_LINES = 40
# An auto-picked port can be taken between our probe and the server's bind; try again then.
_PORT_ATTEMPTS = 3
# Run before mlflow: ask Linux to SIGTERM this process when its parent dies (PR_SET_PDEATHSIG = 1, kept
# across exec), give up if the parent already died, then become mlflow itself. A separate interpreter and
# not a preexec_fn, which is unsafe in a process with threads.
_LIFELINE = (
    "import ctypes, os, signal, sys\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0) != 0:\n"
    "    print('signalbox: PR_SET_PDEATHSIG failed; the server will outlive its owner', file=sys.stderr)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('signalbox: the owner died before the MLflow server started')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class MlflowServerError(RuntimeError):
    """The MLflow server did not come up (the message carries the end of its log)."""


def webhook_encryption_key(state_dir: Path) -> str:
    """The Fernet key that encrypts webhook secrets, created once (mode 0600) in the state dir."""
    path = state_dir / KEY_FILE
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two starters racing on a fresh state dir must not end with different keys.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text(encoding="ascii").strip()
        _check_fernet_key(key, path)
        return key
    # A Fernet key is 32 random bytes, url-safe base64; no need to import cryptography here.
    key = base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key + "\n")
    return key


def _check_fernet_key(key: str, path: Path) -> None:
    try:
        valid = len(base64.urlsafe_b64decode(key.encode("ascii"))) == 32
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise MlflowServerError(f"{path} does not hold a Fernet key (32 url-safe base64 bytes)")


def _log_tail(path: Path, offset: int = 0, lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines the server wrote after ``offset`` (earlier runs share the file)."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class MlflowServer:
    """A ``mlflow server`` subprocess over ``sqlite:///<state_dir>/mlflow.db``, artifacts proxied."""

    def __init__(
        self,
        state_dir: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        webhook_cache_ttl: int = 1,
        die_with_parent: bool = False,
    ) -> None:
        """``die_with_parent`` (Linux): the server gets SIGTERM when the thread that calls ``start`` ends."""
        self.state_dir = Path(state_dir).resolve()
        self.host = host
        self._requested_port = port
        self._port: int | None = port or None
        self._webhook_cache_ttl = webhook_cache_ttl
        self._die_with_parent = die_with_parent and sys.platform.startswith("linux")
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.started_in: float | None = None

    # -- properties --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server's base URL (its tracking and registry URI)."""
        if self._port is None:
            raise MlflowServerError("the server has no port yet: call start() first")
        # A wildcard bind is reached through loopback from this machine.
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)  # noqa: S104
        return f"http://[{host}]:{self._port}" if ":" in host else f"http://{host}:{self._port}"

    @property
    def pid(self) -> int | None:
        """The process id of the server (leader of its process group), while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path:
        """Where the server writes its output."""
        return self.state_dir / LOG_FILE

    @property
    def record_path(self) -> Path:
        """Where the running server of this state dir is recorded."""
        return self.state_dir / RECORD_FILE

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        """Start the server and wait until ``GET /health`` answers 200; no-op when running."""
        if self.running:
            return
        began = time.monotonic()
        deadline = began + timeout
        left_port = self._take_over_state_dir()
        if not self._requested_port and self._port is None and left_port and _port_free(self.host, left_port):
            self._port = left_port
        attempts = 1 if self._requested_port else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            # A restart keeps its URL when it can, so clients built before stop() still work.
            if not self._requested_port and (self._port is None or attempt > 1):
                self._port = _free_port(self.host)
            try:
                self._launch()
                self._wait_healthy(deadline)
                break
            except MlflowServerError as error:
                lost_port_race = "address already in use" in str(error).lower()
                self.stop()
                if attempt == attempts or not lost_port_race or time.monotonic() >= deadline:
                    raise
                _log.warning("port %s was taken before MLflow bound it; trying another", self._port)
        self.started_in = time.monotonic() - began
        self._write_record()
        _log.info("MLflow server up at %s (pid %s) in %.1f s", self.url, self.pid, self.started_in)

    def _take_over_state_dir(self) -> int | None:
        """Stop the server a dead owner left on this state dir; returns the port it had.

        A live server of a live owner (another host on the same state dir) is refused: two servers
        over one SQLite store would each cache webhooks and fight over the database.
        """
        path = self.record_path
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            _log.warning("ignoring unreadable %s: %s", path, exc)
            path.unlink(missing_ok=True)
            return None
        pid, owner = record.get("pid"), record.get("owner_pid")
        if isinstance(pid, int) and _is_process(pid, record.get("proc_start")):
            if isinstance(owner, int) and _is_process(owner, record.get("owner_start")):
                raise MlflowServerError(
                    f"an MLflow server (pid {pid}, {record.get('url')}) of process {owner} already serves "
                    f"{self.state_dir}; stop that process first"
                )
            _log.warning(
                "stopping the MLflow server (pid %s, %s) that a stopped host (pid %s) left on %s",
                pid,
                record.get("url"),
                owner,
                self.state_dir,
            )
            _stop_group(pid, _STOP_TIMEOUT_SECONDS)
        path.unlink(missing_ok=True)
        port = record.get("port")
        return port if isinstance(port, int) else None

    def _write_record(self) -> None:
        assert self._process is not None
        record = {
            "pid": self._process.pid,
            "proc_start": _start_ticks(self._process.pid),
            "port": self._port,
            "url": self.url,
            "owner_pid": os.getpid(),
            "owner_start": _start_ticks(os.getpid()),
            "started_at": datetime.now(UTC).isoformat(),
        }
        partial = self.record_path.with_name(f".{RECORD_FILE}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(record, indent=2), encoding="utf-8")
        os.replace(partial, self.record_path)

    def _command(self) -> list[str]:
        assert self._port is not None
        db = self.state_dir / "mlflow.db"
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{db}",
            # Clients upload and download through the server (mlflow-artifacts:/), so they need
            # no access to the directory itself.
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.state_dir / "mlartifacts"),
            "--host",
            self.host,
            "--port",
            str(self._port),
            # One worker starts fastest, and keeps the webhook list cache in a single process.
            "--workers",
            "1",
        ]

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                # Local receivers listen on http://127.0.0.1; MLflow refuses both by default.
                "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
                "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": webhook_encryption_key(self.state_dir),
                "MLFLOW_WEBHOOK_CACHE_TTL": str(self._webhook_cache_ttl),
                "PYTHONUNBUFFERED": "1",
            }
        )
        # The server's job runner (GenAI scorers, huey consumers) is unused here and slows start-up.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        return env

    def _launch(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            log.write(f"--- starting mlflow server on {self.url} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode())
            log.flush()
            command = self._command()
            if self._die_with_parent:
                command = [sys.executable, "-c", _LIFELINE, str(os.getpid()), *command]
            self._process = subprocess.Popen(
                command,
                cwd=self.state_dir,  # MLflow falls back to ./mlruns and ./mlartifacts relative to cwd
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: MLflow spawns uvicorn, and stop() must reach both.
                start_new_session=True,
            )

    def _wait_healthy(self, deadline: float) -> None:
        assert self._process is not None
        health = f"{self.url}/health"
        while True:
            code = self._process.poll()
            if code is not None:
                raise MlflowServerError(
                    f"mlflow server exited with code {code} before answering {health}; "
                    f"log {self.log_path}:\n{_log_tail(self.log_path, self._log_offset)}"
                )
            try:
                with urllib.request.urlopen(health, timeout=2) as response:  # noqa: S310 - our own URL
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise MlflowServerError(
                    f"mlflow server did not answer {health} in time; "
                    f"log {self.log_path}:\n{_log_tail(self.log_path, self._log_offset)}"
                )
            time.sleep(_POLL_SECONDS)

    def stop(self, timeout: float = _STOP_TIMEOUT_SECONDS) -> None:
        """Terminate the server's whole process group and wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.record_path.read_text(encoding="utf-8")).get("pid") == process.pid:
                self.record_path.unlink()
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait(timeout=timeout)
        # The uvicorn worker may outlive its parent for a moment; don't leave it behind.
        deadline = time.monotonic() + timeout
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)
        if _group_alive(process.pid):
            _signal_group(process, signal.SIGKILL)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signum)  # start_new_session made pid the group id
        else:  # pragma: no cover - Windows has no process groups of this kind
            process.send_signal(signum)


def _group_alive(pgid: int) -> bool:
    if not hasattr(os, "killpg"):  # pragma: no cover
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid from ours."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def _is_process(pid: int, start_ticks: object) -> bool:
    """Whether ``pid`` runs (not a zombie) and is the process recorded with ``start_ticks``."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    fields = _stat_fields(pid)
    if fields is None:
        return True  # no /proc: the pid is all there is to go by
    return fields[0] != "Z" and (not isinstance(start_ticks, int) or int(fields[19]) == start_ticks)


def _live_members(pgid: int) -> bool:
    """Whether a non-zombie process is left in the group (an orphaned zombie nobody reaps is dead)."""
    if not _group_alive(pgid):
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.glob("[0-9]*"):
        fields = _stat_fields(int(entry.name))
        if fields and fields[0] != "Z" and fields[2] == str(pgid):
            return True
    return False


def _stop_group(pgid: int, timeout: float) -> None:
    """SIGTERM a process group that is not our child, SIGKILL it after ``timeout``; wait until it is gone."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)
        deadline = time.monotonic() + timeout
        while _live_members(pgid) and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)
        if not _live_members(pgid):
            return


def _port_free(host: str, port: int) -> bool:
    """Whether nobody listens on ``port`` now (a restart takes its old port back when it can)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ensure_model_version_webhook(tracking_uri: str, name: str, url: str, secret: str) -> str:
    """Create, or update in place, the registry webhook ``name`` for ``model_version.created``; returns its id."""
    from mlflow import MlflowClient
    from mlflow.entities.webhook import WebhookEvent, WebhookEventStr

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    events: list[WebhookEventStr | WebhookEvent] = ["model_version.created"]
    page_token: str | None = None
    while True:
        page = client.list_webhooks(max_results=100, page_token=page_token)
        for webhook in page:
            if webhook.name == name:
                # The stored secret is never returned, so set it every time: idempotent either way.
                updated = client.update_webhook(
                    webhook.webhook_id, url=url, events=events, secret=secret, status="ACTIVE"
                )
                return str(updated.webhook_id)
        page_token = page.token
        if not page_token:
            break
    created = client.create_webhook(
        name=name,
        url=url,
        events=events,
        description="Signalbox: new model versions start an evaluation",
        secret=secret,
        status="ACTIVE",
    )
    # Log where it points without userinfo or query, either of which may carry a credential.
    parts = urllib.parse.urlsplit(url)
    # Host and port only: a URL may carry user:password or a ?code= key.
    where = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    _log.info("created MLflow webhook %r -> %s://%s%s", name, parts.scheme, where, parts.path)
    return str(created.webhook_id)
