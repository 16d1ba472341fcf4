"""Local compute: training and scoring jobs as subprocesses of this machine (POSIX).

A job is ``python -m JOB_REFERENCE --data PATH --model-name NAME [--param k=v ...] [--tag k=v ...]
--result-file JOBDIR/result.json``, started through ``shared.adapters.local.job_runner`` in a new
session, so it outlives the process that launched it. Everything about a job is kept in files
under ``STATE_DIR/jobs/RUN_ID/``, so any process (another worker, the host after a restart) can
read its status:

- ``job.json``: the request, the command line, the wrapper's pid and when it started
- ``job.log``: the job's stdout and stderr
- ``result.json``: what the job reports (``mlflow_run_id``, ``model_version``, ...)
- ``exit_code``: written by the wrapper when the job ends
- ``cancelled``: written by ``cancel``
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from shared.ports import JobRequest, RunStatus

__all__ = ["LocalCompute"]

JOB_FILE = "job.json"
LOG_FILE = "job.log"
RESULT_FILE = "result.json"
EXIT_CODE_FILE = "exit_code"
CANCELLED_FILE = "cancelled"

_RUNNER = "shared.adapters.local.job_runner"
_CANNOT_START = 127  # what a shell reports for a command it cannot run
# The directory holding the ``shared`` package: jobs and the wrapper import from it.
_CODE_ROOT = Path(__file__).resolve().parents[2]
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_RUN_ID = re.compile(r"[0-9a-f]{32}")
# Fixed so the same idempotency key maps to the same run id in every process.
_IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c2c56-3d43-4f55-9a57-1c1d1b9b8f10")
_MAX_MESSAGE = 500
_LOG_TAIL_BYTES = 16_384
# A job whose launcher died between recording it and starting it would otherwise stay pending for ever.
_START_TIMEOUT_SECONDS = 60.0


class LocalCompute:
    """Runs jobs as local subprocesses that survive the launcher; state is files, readable by any process."""

    backend = "local"

    def __init__(
        self,
        state_dir: Path,
        tracking_uri: str,
        python: str = sys.executable,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self._jobs = Path(state_dir) / "jobs"
        self._tracking_uri = tracking_uri
        self._python = python
        self._extra_env = dict(extra_env or {})
        # Wrappers this instance started: polled so they never linger as zombies of a long-lived host.
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def launch(self, job: JobRequest) -> str:
        """Start the job; returns its run id (the same one again for a repeated idempotency key)."""
        argv_tail = _job_arguments(job)
        self._reap()
        if job.idempotency_key:
            run_id = uuid.uuid5(_IDEMPOTENCY_NAMESPACE, job.idempotency_key).hex
        else:
            run_id = uuid.uuid4().hex
        jobdir = self._jobs / run_id
        self._jobs.mkdir(parents=True, exist_ok=True)
        try:
            jobdir.mkdir()
        except FileExistsError:
            if job.idempotency_key:
                return run_id  # launched before: a redelivered command must not start a second job
            raise
        argv = [self._python, "-m", job.job_reference, *argv_tail, "--result-file", str(jobdir / RESULT_FILE)]
        record: dict[str, Any] = {
            "run_id": run_id,
            "request": {
                "model_name": job.model_name,
                "purpose": job.purpose,
                "job_reference": job.job_reference,
                "data_uri": job.data_uri,
                "parameters": dict(job.parameters),
                "tags": dict(job.tags),
                "idempotency_key": job.idempotency_key,
            },
            "argv": argv,
            "pid": None,
            "started_at": datetime.now(UTC).isoformat(),
        }
        _write_json(jobdir / JOB_FILE, record)
        with open(jobdir / LOG_FILE, "ab") as log:
            try:
                proc = subprocess.Popen(
                    [self._python, "-m", _RUNNER, str(jobdir), "--", *argv],
                    cwd=jobdir,
                    env=self._env(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                # Reported through the run like any failed job, so the poller records why.
                log.write(f"cannot start {self._python}: {exc}\n".encode())
                _write_text(jobdir / EXIT_CODE_FILE, f"{_CANNOT_START}\n")
                return run_id
        self._children[run_id] = proc
        record.update(pid=proc.pid, pid_started=_proc_stat(proc.pid)[1])
        _write_json(jobdir / JOB_FILE, record)
        return run_id

    def status(self, run_id: str) -> RunStatus:
        """The job's current state; ``LookupError`` for an unknown run id."""
        jobdir = self._jobdir(run_id)
        self._reap()
        if (jobdir / CANCELLED_FILE).exists():
            return RunStatus(run_id, "cancelled", message="cancelled")
        code = _exit_code(jobdir)
        if code is None:
            record = _read_record(jobdir)
            pid = record.get("pid") if record else None
            if pid is None:
                if record is not None and _age_seconds(record) > _START_TIMEOUT_SECONDS:
                    return RunStatus(run_id, "failed", message="job never started")
                return RunStatus(run_id, "pending")
            if self._alive(run_id, int(pid), record.get("pid_started") if record else None):
                return RunStatus(run_id, "running")
            code = _exit_code(jobdir)  # it may have ended between the two looks
            if code is None:
                return RunStatus(run_id, "failed", message="job process vanished")
        if code != 0:
            return RunStatus(run_id, "failed", message=_last_line(jobdir / LOG_FILE) or _describe_exit(code))
        try:
            outputs = _read_outputs(jobdir / RESULT_FILE)
        except ValueError as exc:
            return RunStatus(run_id, "failed", message=str(exc))
        return RunStatus(run_id, "succeeded", outputs=outputs)

    def cancel(self, run_id: str) -> None:
        """Stop the job's whole process group and record it as cancelled; no effect once it has ended."""
        jobdir = self._jobdir(run_id)
        if _exit_code(jobdir) is not None or (jobdir / CANCELLED_FILE).exists():
            return
        # Recorded before the kill, so a status read meanwhile says cancelled rather than vanished.
        _write_text(jobdir / CANCELLED_FILE, datetime.now(UTC).isoformat() + "\n")
        record = _read_record(jobdir)
        pid = record.get("pid") if record else None
        if pid is not None and self._alive(run_id, int(pid), record.get("pid_started") if record else None):
            # The wrapper leads the group; the job and anything it started are in it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGTERM)
        self._reap()

    def _jobdir(self, run_id: str) -> Path:
        # The run id becomes a path: anything but our own ids is unknown, never a traversal.
        jobdir = self._jobs / run_id
        if not _RUN_ID.fullmatch(run_id) or not jobdir.is_dir():
            raise LookupError(f"unknown local run id {run_id!r} (no job under {self._jobs})")
        return jobdir

    def _env(self) -> dict[str, str]:
        from shared.adapters.mlflow.client import HTTP_DEFAULTS

        # The host bounds its MLflow calls to fit inside a lock (HTTP_DEFAULTS). A job outlives the host
        # that launched it and must ride out a host restart (the embedded MLflow server comes back on the
        # same port), so it gets MLflow's own retry budget (7 retries, backoff factor 2: minutes).
        inherited = {k: v for k, v in os.environ.items() if HTTP_DEFAULTS.get(k) != v}
        env = {**inherited, **self._extra_env}
        paths = [str(_CODE_ROOT), self._extra_env.get("PYTHONPATH", ""), os.environ.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
        env["MLFLOW_TRACKING_URI"] = self._tracking_uri
        # Unbuffered, so the job's last words reach the log in order (stdout and stderr share it).
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _alive(self, run_id: str, pid: int, pid_started: object) -> bool:
        child = self._children.get(run_id)
        if child is not None:
            return child.poll() is None
        return _process_alive(pid, pid_started if isinstance(pid_started, int) else None)

    def _reap(self) -> None:
        for run_id, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[run_id]


def _job_arguments(job: JobRequest) -> list[str]:
    """The job's command-line arguments after the module; ``ValueError`` naming a bad field."""
    if not _MODULE.fullmatch(job.job_reference):
        raise ValueError(
            f"job_reference: {job.job_reference!r} is not a dotted Python module name "
            "(the local backend runs python -m MODULE)"
        )
    if not job.model_name or job.model_name.startswith("-"):
        raise ValueError(f"model_name: {job.model_name!r} is not a usable model name")
    argv: list[str] = []
    if job.data_uri:
        argv += ["--data", str(_local_path(job.data_uri))]
    argv += ["--model-name", job.model_name]
    for option, field, pairs in (("--param", "parameters", job.parameters), ("--tag", "tags", job.tags)):
        for key, value in pairs.items():
            # A key starting with "-" would read as an option and one holding "=" would split wrongly.
            if not key or key.startswith("-") or "=" in key:
                raise ValueError(f"{field}: key {key!r} cannot be passed as {option} KEY=VALUE")
            argv += [option, f"{key}={value}"]
    return argv


def _local_path(data_uri: str) -> Path:
    """A local path from a ``file://`` URI or a plain path (made absolute: the job runs elsewhere)."""
    parsed = urlparse(data_uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"data_uri: {data_uri!r} names another host; local compute reads local files only")
        return Path(url2pathname(parsed.path)).absolute()
    if len(parsed.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise ValueError(f"data_uri: {data_uri!r} is not a local path or file:// URI")
    return Path(data_uri).expanduser().absolute()


def _write_text(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    _write_text(path, json.dumps(data, indent=2))


def _read_record(jobdir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((jobdir / JOB_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return data if isinstance(data, dict) else None


def _age_seconds(record: Mapping[str, Any]) -> float:
    try:
        started = datetime.fromisoformat(str(record.get("started_at")))
    except ValueError:
        return 0.0
    return (datetime.now(UTC) - started).total_seconds()


def _exit_code(jobdir: Path) -> int | None:
    try:
        return int((jobdir / EXIT_CODE_FILE).read_text(encoding="ascii").strip())
    except FileNotFoundError:
        return None
    except ValueError:
        return 1  # unreadable means the wrapper broke, never success


def _read_outputs(path: Path) -> dict[str, str]:
    """The job's result file as strings (empty when the job wrote none); ``ValueError`` when malformed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"job exited 0 but its {path.name} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"job exited 0 but its {path.name} is not a JSON object")
    return {str(key): value if isinstance(value, str) else json.dumps(value) for key, value in data.items()}


def _last_line(log: Path) -> str | None:
    """The log's last non-empty line, cut short; only the tail is read, however long the log."""
    try:
        with open(log, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
            tail = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    if not lines:
        return None
    line = lines[-1]
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 3] + "..."


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"job killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"job killed by signal {-code}"
    return f"job exited with code {code}"


def _proc_stat(pid: int) -> tuple[str | None, int | None]:
    """The process's state letter and start time (clock ticks since boot) from /proc; ``None`` where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, None
    fields = text[text.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None, None


def _process_alive(pid: int, pid_started: int | None) -> bool:
    """Whether the wrapper pid still runs, and is still our wrapper rather than a reused pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process holds the pid now
    state, started = _proc_stat(pid)
    if state is not None:
        return state not in ("Z", "X") and (pid_started is None or started == pid_started)
    try:
        return os.getpgid(pid) == pid  # without /proc: the wrapper leads its own group, a reused pid rarely does
    except ProcessLookupError:
        return False
