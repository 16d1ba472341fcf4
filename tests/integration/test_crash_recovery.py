"""A ``kill -9`` of the local host: its work comes back within one lock, and no process of it is left.

- The MLflow server dies with the host that started it (Linux PR_SET_PDEATHSIG, kept across exec,
  SIGTERM, which ``mlflow server`` forwards to uvicorn); a server a dead owner left anyway is stopped
  by the next start on the state dir, which takes its port back.
- Scoring servers outlive the host on purpose (an endpoint keeps serving while the control plane
  restarts); the restarted host adopts the routed ones and stops the unrouted ones a dead owner left.
- Service Bus locks are short (shared/queues.json) and renewed while a handler works, so a message
  (or a session) held by the killed host is delivered again within one lock duration.

The last test runs the whole embedded default (``signalbox host --with-mlflow``), kills it while a
deployment is in flight and measures the way back to production.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from shared.adapters.local.serving import LocalServing, recover_endpoints
from signalbox.examples.iris.data import FEATURES
from signalbox.localhost.process import HostProcess
from signalbox.mlflow_server import RECORD_FILE, MlflowServer, MlflowServerError
from tests.hosting import REPO, wait_for
from tests.integration.test_lifecycle import CATALOGUE, STEP_TIMEOUT, Stack, _clean_env, _ours, _stop

pytestmark = pytest.mark.integration

BANNER = re.compile(r"MLflow server and UI: (http://\S+)")
RECOVERY_SECONDS = 90.0

_OWNER = """
import sys, time
from pathlib import Path
from signalbox.mlflow_server import MlflowServer

server = MlflowServer(Path(sys.argv[1]), die_with_parent=sys.argv[2] == "1")
server.start()
print(server.pid, server.url, flush=True)
time.sleep(600)
"""


def _live(proc: psutil.Process) -> bool:
    """Running and not a zombie (an orphaned zombie nobody reaps is dead for every purpose)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _command(proc: psutil.Process) -> str:
    """The process's command line; empty for one gone, a zombie or not ours to read (tests run side by side)."""
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _tree(pid: int) -> list[psutil.Process]:
    """The live descendants of ``pid`` (psutil remembers each one's create time, so a reused pid is not it)."""
    return [p for p in psutil.Process(pid).children(recursive=True) if _live(p)]


def _start_owner(state: Path, *, die_with_parent: bool) -> tuple[subprocess.Popen[str], int, str]:
    """A process that starts an MLflow server on ``state`` and then just waits: killed, it is a crashed host."""
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(state), "1" if die_with_parent else "0"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    line = owner.stdout.readline()
    assert line, f"the owner exited with {owner.wait(timeout=10)} before its MLflow server was up"
    pid, url = line.split()
    return owner, int(pid), url


@contextlib.contextmanager
def _reaped(*procs: psutil.Process) -> Iterator[None]:
    """Whatever a failed test leaves of these process groups is ended."""
    try:
        yield
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError, psutil.NoSuchProcess):
                if _live(proc):
                    os.killpg(proc.pid, signal.SIGKILL)


# -- the MLflow server -----------------------------------------------------------------------------


def test_the_mlflow_server_dies_with_the_host_that_started_it(tmp_path: Path) -> None:
    owner, pid, url = _start_owner(tmp_path / "state", die_with_parent=True)
    server = psutil.Process(pid)
    with _reaped(server):
        members = [server, *_tree(pid)]
        assert any("uvicorn" in _command(p) for p in members), "mlflow server runs uvicorn"
        assert requests.get(f"{url}/health", timeout=5).status_code == 200

        owner.kill()  # kill -9: no handler, no atexit
        owner.wait(timeout=10)

        wait_for(lambda: not any(_live(p) for p in members), timeout=20, what="the server and its uvicorn to end")
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/health", timeout=2)


def test_a_server_left_by_a_killed_owner_is_stopped_and_its_port_taken_back(tmp_path: Path) -> None:
    state = tmp_path / "state"
    owner, pid, url = _start_owner(state, die_with_parent=False)  # as on a system without PDEATHSIG
    left = psutil.Process(pid)
    members = [left, *_tree(pid)]
    with _reaped(left):
        owner.kill()
        owner.wait(timeout=10)
        time.sleep(1)
        assert all(_live(p) for p in members), "without the lifeline the orphan keeps running"

        server = MlflowServer(state)
        try:
            server.start(timeout=90)
            assert not any(_live(p) for p in members), "the orphan was stopped before the new server started"
            assert server.url == url, "the new server took the old port back (jobs still use that URL)"
            assert requests.get(f"{server.url}/health", timeout=5).status_code == 200
            record = json.loads((state / RECORD_FILE).read_text())
            assert (record["pid"], record["owner_pid"], record["url"]) == (server.pid, os.getpid(), url)
            ours = [p for p in psutil.process_iter() if str(state / "mlflow.db") in _command(p)]
            assert [p.pid for p in ours if _live(p)] == [server.pid], "one MLflow server on the store"
        finally:
            server.stop()
        assert not (state / RECORD_FILE).exists()


def test_a_second_server_on_a_state_dir_whose_owner_lives_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    owner, pid, _ = _start_owner(state, die_with_parent=True)
    with _reaped(psutil.Process(pid)):
        try:
            with pytest.raises(MlflowServerError, match=rf"pid {pid}.* of process {owner.pid} already serves"):
                MlflowServer(state).start(timeout=30)
            assert _live(psutil.Process(pid)), "the live owner's server is left alone"
        finally:
            owner.kill()
            owner.wait(timeout=10)


# -- scoring servers -------------------------------------------------------------------------------


def _stand_in() -> subprocess.Popen[bytes]:
    """A process in its own session standing in for a scoring server (its lifetime is what is tested here)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)


def _ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def _slot(state: Path, endpoint: str, slot: str, version: str, pid: int, owner: tuple[int, int]) -> dict[str, Any]:
    """A slot record in the shape LocalServing.start writes it."""
    record = {
        "model_name": "m",
        "version": version,
        "slot": slot,
        "url": f"http://127.0.0.1:{40000 + pid % 20000}",
        "pid": pid,
        "proc_start": _ticks(pid) if Path(f"/proc/{pid}").exists() else 1,
        "owner_pid": owner[0],
        "owner_start": owner[1],
        "started_at": "2026-01-01T00:00:00+00:00",
    }
    directory = state / "endpoints" / endpoint
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{slot}.json").write_text(json.dumps(record))
    return record


def test_a_restarted_host_adopts_routed_servers_and_stops_what_a_dead_owner_left(tmp_path: Path) -> None:
    state = tmp_path / "state"
    dead_owner = subprocess.Popen([sys.executable, "-c", "pass"])
    owner_then = (dead_owner.pid, _ticks(dead_owner.pid))
    dead_owner.wait(timeout=10)
    other_owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    routed, cut_short, others, gone = _stand_in(), _stand_in(), _stand_in(), _stand_in()
    procs = [routed, cut_short, others, gone, other_owner]
    try:
        live = _slot(state, "ep", "blue", "1", routed.pid, owner_then)
        (state / "endpoints" / "ep" / "route.json").write_text(
            json.dumps({**live, "endpoint": "ep", "routed_at": "2026-01-01T00:00:00+00:00"})
        )
        _slot(state, "ep", "green", "2", cut_short.pid, owner_then)  # a deploy the crash cut short
        _slot(state, "busy", "blue", "3", others.pid, (other_owner.pid, _ticks(other_owner.pid)))
        _slot(state, "old", "green", "4", gone.pid, owner_then)
        gone.kill()
        gone.wait(timeout=10)

        done = recover_endpoints(state)

        assert (done.adopted, done.stopped, done.left, done.forgotten) == (
            ["ep/blue"],
            ["ep/green"],
            ["busy/blue"],
            ["old/green"],
        )
        assert cut_short.wait(timeout=15) is not None and not (state / "endpoints/ep/green.json").exists()
        assert routed.poll() is None and others.poll() is None, "routed and live-owned servers keep running"
        adopted = json.loads((state / "endpoints/ep/blue.json").read_text())
        assert (adopted["owner_pid"], adopted["owner_start"]) == (os.getpid(), _ticks(os.getpid()))
        assert adopted["pid"] == routed.pid and "adopted_at" in adopted
        assert not (state / "endpoints/old/green.json").exists()
        current = LocalServing(state, "", "").current("ep")
        assert current is not None and (current.version, current.slot) == ("1", "blue"), "still routed to v1"
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                if proc is other_owner:
                    proc.kill()
                else:
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# -- training jobs ---------------------------------------------------------------------------------


def test_a_job_gets_mlflow_s_own_retry_budget_to_ride_out_a_host_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.adapters.local.compute import LocalCompute
    from shared.adapters.mlflow.client import HTTP_DEFAULTS

    for name, value in HTTP_DEFAULTS.items():
        monkeypatch.setenv(name, value)  # as the host's bound_http_defaults() leaves them
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # an app setting of the user's: it stays
    env = LocalCompute(tmp_path, "http://127.0.0.1:5000", extra_env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "9"})._env()
    assert "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR" not in env, "the host's bound is not passed on to jobs"
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "9", "the job's own settings win"


# -- the whole embedded default, killed mid-deploy ------------------------------------------------


def _launch(host: HostProcess) -> str:
    def banner() -> str | None:
        found = BANNER.search(host.output())
        return found.group(1) if found else None

    host.launch()
    try:
        return str(host.wait_ready(timeout=120, until=banner))
    except BaseException:
        host.stop()
        raise


@contextlib.contextmanager
def _embedded(tmp_path: Path) -> Iterator[tuple[HostProcess, Stack]]:
    """``signalbox host --with-mlflow`` on a fresh state dir; after it, the host stops everything on SIGTERM."""
    state = tmp_path / "state"
    state.mkdir()
    host = HostProcess(
        state,
        args=("--with-mlflow",),
        env={**_clean_env(), "SIGNALBOX_CATALOGUE": CATALOGUE},
        log_dir=tmp_path,
        new_session=True,
    )
    mlflow_url = _launch(host)
    stack = Stack(process=host.process, url=host.url, state=state, log_path=host.log_path, mlflow_url=mlflow_url)
    try:
        yield host, stack
    finally:
        not_stopped, ended = _stop(stack)
        left = _ours(state)
    assert not left, f"processes still running after the teardown: {left}"
    assert not not_stopped, f"the host did not stop these on SIGTERM: {not_stopped}"
    assert not ended, f"the teardown had to end these: {ended}"


def _kill_and_restart(host: HostProcess, stack: Stack) -> tuple[list[psutil.Process], float]:
    """``kill -9`` the host, check its MLflow server ends with it, start it again on the same state dir.

    Returns the killed host's processes as they were and when the restart began. After the restart:
    one MLflow server on the store, on its old port, recorded as the new host's, and every scoring
    server record names the new host as its owner.
    """
    victims = _tree(host.process.pid)
    [mlflow_server] = [p for p in victims if "mlflow server" in _command(p)]
    mlflow_then = [mlflow_server, *_tree(mlflow_server.pid)]  # with its uvicorn
    host.kill()
    wait_for(lambda: not any(_live(p) for p in mlflow_then), timeout=20, what="its MLflow server to end")

    restarted = time.monotonic()
    mlflow_url = _launch(host)
    stack.process, stack.log_path = host.process, host.log_path
    stack.__dict__.pop("mlflow", None)  # the cached client
    assert mlflow_url == stack.mlflow_url, "MLflow is back on its port: running jobs keep their URL"
    new_host = host.process.pid
    record = json.loads((stack.state / RECORD_FILE).read_text())
    assert record["owner_pid"] == new_host
    servers = [pid for pid, argv in _ours(stack.state).items() if "mlflow server" in argv]
    assert servers == [record["pid"]], _ours(stack.state)
    for slot in (stack.state / "endpoints").glob("*/*.json"):
        if slot.name != "route.json":
            assert json.loads(slot.read_text())["owner_pid"] == new_host, slot
    return victims, restarted


def _recovered(
    stack: Stack, model: str, version: str, restarted: float, victims: list[psutil.Process], within: float
) -> None:
    """``version`` reaches production within ``within`` seconds of the restart; nothing of the killed host is left."""
    stack.wait(f"{model} v{version} in production", lambda: stack.in_production(model, version), within)
    took = time.monotonic() - restarted
    print(f"\n{model} v{version} in production {took:.1f} s after the restart", file=sys.stderr)
    assert took <= within
    stack.settle()
    stack.assert_serves(model, model, version)
    wait_for(lambda: not any(_live(p) for p in victims), timeout=20, what="the killed host's processes to end")
    recovery = [line for line in stack.log(400).splitlines() if "recovered" in line or "DeliveryCount=2" in line]
    print("\n".join(recovery), file=sys.stderr)


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _deploying(stack: Stack, endpoint: str, version: str) -> dict[str, Any] | None:
    """The slot record of ``version`` once its scoring server was started, before it takes traffic."""
    for path in (stack.state / "endpoints" / endpoint).glob("*.json"):
        if path.name == "route.json":
            continue
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_text())
            if str(record.get("version")) == version and stack.route(endpoint).get("version") != version:
                return dict(record)
    return None


def _training(stack: Stack) -> dict[str, Any] | None:
    """The record of a local training job that has started and not ended yet."""
    for path in (stack.state / "jobs").glob("*/job.json"):
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_text())
            if record.get("pid") and not (path.parent / "exit_code").exists():
                return dict(record)
    return None


def test_kill_9_mid_deploy_reaches_production_within_90_s_of_the_restart_and_leaves_no_process(
    tmp_path: Path,
) -> None:
    model = endpoint = "lc-main"
    with _embedded(tmp_path) as (host, stack):
        stack.land(f"{model}/", "batch-001.csv", "small", seed=1)
        stack.wait(f"{model} v1 in production", lambda: stack.in_production(model, "1"))
        stack.land(f"{model}/", "batch-002.csv", "full", seed=2)
        candidate = stack.wait("v2's scoring server to start", lambda: _deploying(stack, endpoint, "2"))
        # The moment: v2's server is starting and the host holds the deploy command's lock.
        assert stack.host_status()["queues"]["deploy"]["locked"] == 1
        assert candidate["owner_pid"] == host.process.pid
        v1_url = stack.route(endpoint)["url"]

        victims, restarted = _kill_and_restart(host, stack)

        assert candidate["pid"] in {p.pid for p in victims}
        # The routed v1 server outlived the kill on purpose, was adopted, and kept serving.
        frame = {"dataframe_split": {"columns": list(FEATURES), "data": [[5.1, 3.5, 1.4, 0.2]]}}
        assert requests.post(f"{v1_url}/invocations", json=frame, timeout=30).status_code == 200
        # Nothing of the killed host is left at the end: its MLflow server died with it, its v2 candidate
        # was stopped at the restart, and its v1 server, adopted, was replaced by v2.
        _recovered(stack, model, "2", restarted, victims, RECOVERY_SECONDS)
        assert stack.record(model, "2", "signalbox.deployment")["status"] == "deployed"


def test_kill_9_mid_training_the_job_runs_on_and_the_restarted_host_polls_it_to_production(tmp_path: Path) -> None:
    model = "lc-main"
    with _embedded(tmp_path) as (host, stack):
        stack.land(f"{model}/", "batch-001.csv", "small", seed=1)
        job = stack.wait("the training job to start", lambda: _training(stack))

        victims, restarted = _kill_and_restart(host, stack)

        # The job is the one process of the killed host kept on purpose: it records its end in files
        # (jobs/<run>/exit_code, result.json) that the restarted host's polls read, and it reaches
        # MLflow again on the port the new server took back.
        others = [p.pid for p in victims if _live(p) and _group(p.pid) != job["pid"]]
        assert not others, f"left running besides the job (the group its wrapper leads): {others}"
        # The rest of the training, its evaluation and a first deployment still lie ahead: a wider bound.
        _recovered(stack, model, "1", restarted, victims, STEP_TIMEOUT)
        assert (stack.state / "jobs" / job["run_id"] / "exit_code").read_text().strip() == "0"
