"""Local serving: one real MLflow scoring server per deployed version, blue/green per endpoint.

Each endpoint has two slots, ``blue`` and ``green``. ``start`` brings a version up in the
slot that takes no traffic, as its own ``mlflow models serve`` process on 127.0.0.1;
``route`` flips the endpoint's ``route.json`` to it, and the local host's proxy
(``signalbox.localhost.endpoints``) forwards the stable URL to whatever that file names.

State lives under ``<state_dir>/endpoints/<endpoint>/``: ``<slot>.json`` describes the
server running in a slot (pid, start time, and the process that owns it), ``<slot>.log`` is
its output and ``route.json`` is the routed deployment. The servers run in their own sessions,
so they survive the process that started them (an endpoint keeps serving while the host
restarts, as a cloud endpoint would) and stop as a whole process group. A restarted host calls
:func:`recover_endpoints`: it adopts the routed servers and stops the unrouted ones a dead
owner left behind (a deployment cut short; its redelivered command starts the slot again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.adapters.local.net import free_port
from shared.errors import DeploymentFailed, PermanentError
from shared.ports import Deployment, Readiness, ScoringFrame

__all__ = ["SLOTS", "LocalServing", "Recovered", "recover_endpoints", "resolve_route"]

log = logging.getLogger("signalbox.serving.local")

SLOTS = ("blue", "green")
ROUTE_FILE = "route.json"
# Names become directory names and URL path segments; the proxy takes them from requests.
_ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_POLL_SECONDS = 0.25
_STOP_GRACE_SECONDS = 5.0
_LOG_TAIL_LINES = 20
_ERROR_EXCERPT_CHARS = 500
# Traffic to our own servers must never go through an environment proxy.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Popen handles of the servers this process started: kept so that their exit is reaped
# (a zombie would still look alive) and so that no "still running" warning fires on GC.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _check_endpoint(endpoint: str) -> str:
    if not _ENDPOINT_NAME.match(endpoint):
        raise PermanentError(f"invalid endpoint name {endpoint!r}: letters, digits, '-' and '_' only, at most 63")
    return endpoint


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("unreadable serving state %s: %s", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _write_json_atomic(path: Path, data: Mapping[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def resolve_route(state_dir: Path, endpoint: str) -> str | None:
    """The base URL of the server taking the endpoint's traffic, or None when it has no route."""
    if not _ENDPOINT_NAME.match(endpoint):
        return None
    data = _read_json(Path(state_dir) / "endpoints" / endpoint / ROUTE_FILE)
    url = data.get("url") if data else None
    return url if isinstance(url, str) and _is_http(url) else None


def _is_http(url: str) -> bool:
    # urllib would also open file: and custom schemes; only a scoring server's URL may pass.
    return url.startswith(("http://", "https://"))


def _proc_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks (Linux), to tell a reused pid from ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces and parentheses; the fields after it are plain.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]


def _pid_reused(pid: int, start_ticks: int | None) -> bool:
    current = _proc_start_ticks(pid)
    return start_ticks is not None and current is not None and current != start_ticks


def _alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether ``pid`` is still the (non-zombie) process that was recorded."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # some other user's process now holds the pid
    if _proc_state(pid) == "Z":
        return False
    return start_ticks is None or _proc_start_ticks(pid) in (None, start_ticks)


def _group_alive(pgid: int) -> bool:
    child = _CHILDREN.get(pgid)
    if child is not None:
        child.poll()  # reap our own leader at once
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    # An orphaned member that nobody reaps (a host running as pid 1 in a container) stays a
    # zombie forever; it is dead for our purposes, so only live members count.
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[0] != "Z" and fields[2] == str(pgid):
            return True
    return False


def _terminate_group(pgid: int, grace: float = _STOP_GRACE_SECONDS) -> None:
    """SIGTERM the process group, SIGKILL it if it outlives ``grace``; quiet if already gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.05)
        if not _group_alive(pgid):
            break
    child = _CHILDREN.pop(pgid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1.0)


def _owner() -> dict[str, object]:
    """This process as a slot record's owner."""
    return {"owner_pid": os.getpid(), "owner_start": _proc_start_ticks(os.getpid())}


def _owner_alive(record: Mapping[str, Any]) -> bool:
    pid, ticks = record.get("owner_pid"), record.get("owner_start")
    return isinstance(pid, int) and _alive(pid, ticks if isinstance(ticks, int) else None)


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty log)"


class LocalServing:
    """The ``Serving`` port on this machine: MLflow scoring servers behind a stable local URL."""

    def __init__(
        self,
        state_dir: Path,
        tracking_uri: str,
        public_base_url: str,
        *,
        start_timeout: float = 120.0,
        registry_uri: str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.public_base_url = public_base_url.rstrip("/")
        self.start_timeout = start_timeout

    # -- paths and records -------------------------------------------------------------

    def _dir(self, endpoint: str) -> Path:
        return self.state_dir / "endpoints" / _check_endpoint(endpoint)

    def _slot_record(self, endpoint: str, slot: str) -> dict[str, Any] | None:
        return _read_json(self._dir(endpoint) / f"{slot}.json")

    def _route_record(self, endpoint: str) -> dict[str, Any] | None:
        return _read_json(self._dir(endpoint) / ROUTE_FILE)

    @staticmethod
    def _record_alive(record: Mapping[str, Any]) -> bool:
        pid = record.get("pid")
        ticks = record.get("proc_start")
        return isinstance(pid, int) and _alive(pid, ticks if isinstance(ticks, int) else None)

    # -- Serving -----------------------------------------------------------------------

    def endpoint_url(self, endpoint: str) -> str:
        """The endpoint's stable scoring URL on the local host."""
        return f"{self.public_base_url}/endpoints/{_check_endpoint(endpoint)}/invocations"

    def current(self, endpoint: str) -> Deployment | None:
        """The routed deployment, or None when there is none or its server has gone."""
        record = self._route_record(endpoint)
        if record is None:
            return None
        if not self._record_alive(record):
            log.warning(
                "endpoint %s routes to %s v%s in slot %s, but its server (pid %s) is gone",
                endpoint,
                record.get("model_name"),
                record.get("version"),
                record.get("slot"),
                record.get("pid"),
            )
            return None
        return Deployment(
            endpoint=endpoint,
            model_name=str(record["model_name"]),
            version=str(record["version"]),
            slot=str(record["slot"]),
            url=str(record["url"]),
        )

    def readiness(self, deployment: Deployment) -> Readiness:
        """Local servers are ready when ``start`` returns; later only a dead server is not."""
        record = self._slot_record(deployment.endpoint, deployment.slot)
        if record is None or record.get("url") != deployment.url or not self._record_alive(record):
            return Readiness("failed", f"the scoring server of v{deployment.version} in slot {deployment.slot} is gone")
        return Readiness("ready")

    def start(self, endpoint: str, model_name: str, version: str) -> Deployment:
        """Start the version's scoring server in the idle slot and wait until it answers /ping."""
        directory = self._dir(endpoint)
        directory.mkdir(parents=True, exist_ok=True)
        routed = self._route_record(endpoint)
        slot = "green" if routed is not None and routed.get("slot") == "blue" else "blue"

        # The idle slot may still hold a server from an earlier deployment that never took
        # (or no longer takes) traffic; it would otherwise leak a process.
        leftover = self._slot_record(endpoint, slot)
        if leftover is not None:
            self._stop_record(endpoint, slot, leftover)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = directory / f"{slot}.log"
        env = dict(os.environ)
        env["MLFLOW_TRACKING_URI"] = self.tracking_uri
        env["MLFLOW_REGISTRY_URI"] = self.registry_uri
        env["PYTHONUNBUFFERED"] = "1"  # so the log is current when a failure is reported
        # mlflow execs `uvicorn` by name: it must resolve to this interpreter's environment
        # even when the venv is not activated.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        argv = [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            f"models:/{model_name}/{version}",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ]
        began = time.monotonic()
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=directory,
                start_new_session=True,
            )
        _CHILDREN[proc.pid] = proc
        record: dict[str, object] = {
            "model_name": model_name,
            "version": str(version),
            "slot": slot,
            "url": url,
            "pid": proc.pid,
            "proc_start": _proc_start_ticks(proc.pid),
            **_owner(),
            "started_at": datetime.now(UTC).isoformat(),
            "log": str(log_path),
        }
        _write_json_atomic(directory / f"{slot}.json", record)

        try:
            self._wait_ready(proc, url, log_path)
        except BaseException:
            _terminate_group(proc.pid)
            (directory / f"{slot}.json").unlink(missing_ok=True)
            raise
        ready_seconds = round(time.monotonic() - began, 3)
        record["ready_seconds"] = ready_seconds
        _write_json_atomic(directory / f"{slot}.json", record)
        log.info(
            "endpoint %s: %s v%s ready in slot %s at %s after %.1fs",
            endpoint,
            model_name,
            version,
            slot,
            url,
            ready_seconds,
        )
        return Deployment(endpoint=endpoint, model_name=model_name, version=str(version), slot=slot, url=url)

    def _wait_ready(self, proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = proc.poll()
            if code is not None:
                raise DeploymentFailed(
                    f"scoring server exited with code {code} before it was ready; last log lines "
                    f"({log_path}):\n{_log_tail(log_path)}"
                )
            try:
                with _DIRECT.open(f"{url}/ping", timeout=2.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet
            if time.monotonic() >= deadline:
                raise DeploymentFailed(
                    f"scoring server not ready after {self.start_timeout:.0f}s; last log lines "
                    f"({log_path}):\n{_log_tail(log_path)}"
                )
            time.sleep(_POLL_SECONDS)

    def invoke(self, deployment: Deployment, frame: ScoringFrame, timeout: float = 60.0) -> object:
        """POST the rows to the deployment's MLflow scoring server (``dataframe_split``); the parsed JSON."""
        if not _is_http(deployment.url):
            raise ValueError(f"not an http(s) scoring URL: {deployment.url!r}")
        request = urllib.request.Request(  # noqa: S310 - scheme checked above
            f"{deployment.url}/invocations",
            data=json.dumps(frame.dataframe_split()).encode("utf-8"),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with _DIRECT.open(request, timeout=timeout) as response:
                body: bytes = response.read()
        except urllib.error.HTTPError as exc:
            excerpt = exc.read().decode("utf-8", errors="replace")[:_ERROR_EXCERPT_CHARS]
            raise DeploymentFailed(
                f"{deployment.model_name} v{deployment.version} ({deployment.url}) answered {exc.code}: {excerpt}"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise DeploymentFailed(
                f"{deployment.model_name} v{deployment.version} unreachable at {deployment.url}: {exc}"
            ) from exc
        return json.loads(body)

    def route(self, endpoint: str, deployment: Deployment) -> None:
        """Point the endpoint's stable URL at the deployment (atomically)."""
        record = self._slot_record(endpoint, deployment.slot)
        if record is None or record.get("url") != deployment.url or not self._record_alive(record):
            raise RuntimeError(
                f"cannot route {endpoint} to {deployment.model_name} v{deployment.version}: "
                f"no running server in slot {deployment.slot} at {deployment.url}"
            )
        _write_json_atomic(
            self._dir(endpoint) / ROUTE_FILE,
            {
                "endpoint": endpoint,
                "model_name": deployment.model_name,
                "version": deployment.version,
                "slot": deployment.slot,
                "url": deployment.url,
                "pid": record["pid"],
                "proc_start": record.get("proc_start"),
                "routed_at": datetime.now(UTC).isoformat(),
            },
        )
        log.info(
            "endpoint %s now routes to %s v%s (%s)",
            endpoint,
            deployment.model_name,
            deployment.version,
            deployment.slot,
        )

    def stop(self, deployment: Deployment) -> None:
        """Stop the deployment's server and forget its slot; no error when it is already gone."""
        record = self._slot_record(deployment.endpoint, deployment.slot)
        if record is None or record.get("url") != deployment.url:
            return  # the slot is empty or already holds a later deployment
        self._stop_record(deployment.endpoint, deployment.slot, record)

    def _stop_record(self, endpoint: str, slot: str, record: Mapping[str, Any]) -> None:
        pid, ticks = record.get("pid"), record.get("proc_start")
        # The group is stopped even if its leader has died (a worker may linger); only a pid
        # that now names a different process is left alone.
        if isinstance(pid, int) and not _pid_reused(pid, ticks if isinstance(ticks, int) else None):
            _terminate_group(pid)
        (self._dir(endpoint) / f"{slot}.json").unlink(missing_ok=True)
        log.info(
            "endpoint %s: stopped %s v%s in slot %s", endpoint, record.get("model_name"), record.get("version"), slot
        )


@dataclass
class Recovered:
    """What :func:`recover_endpoints` did, as ``endpoint/slot`` names."""

    adopted: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


def recover_endpoints(state_dir: Path) -> Recovered:
    """Take over the scoring servers recorded in the state dir, as a host starting after a crash must.

    A live routed server is adopted: its record names this process as owner and it keeps serving.
    A live unrouted server whose owner is dead (a deployment cut short, or the old slot a crash left
    behind after the route moved) is stopped; one whose owner still runs is left to it. The record
    of a server that is gone is removed.
    """
    serving = LocalServing(Path(state_dir), "", "")
    done = Recovered()
    for directory in sorted((Path(state_dir) / "endpoints").glob("*/")):
        if not _ENDPOINT_NAME.match(directory.name):
            continue
        endpoint = directory.name
        route = serving._route_record(endpoint) or {}
        for slot in SLOTS:
            record = serving._slot_record(endpoint, slot)
            if record is None:
                continue
            name = f"{endpoint}/{slot}"
            routed = route.get("slot") == slot and route.get("url") == record.get("url")
            if not serving._record_alive(record):
                serving._stop_record(endpoint, slot, record)  # members of its group may linger
                done.forgotten.append(name)
            elif routed:
                _write_json_atomic(
                    directory / f"{slot}.json", {**record, **_owner(), "adopted_at": datetime.now(UTC).isoformat()}
                )
                done.adopted.append(name)
            elif _owner_alive(record) and record.get("owner_pid") != os.getpid():
                done.left.append(name)
            else:
                serving._stop_record(endpoint, slot, record)
                done.stopped.append(name)
    if done.adopted or done.stopped or done.forgotten:
        log.info(
            "scoring servers recovered: adopted %s, stopped %s (unrouted, owner gone), forgot %s (gone)",
            done.adopted or "none",
            done.stopped or "none",
            done.forgotten or "none",
        )
    return done
