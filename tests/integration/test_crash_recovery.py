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
from tests.integration.test_lifecycle import CATALOGUE, Stack, _clean_env, _ours, _stop

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
        assert any("uvicorn" in " ".join(p.cmdline()) for p in members), "mlflow server runs uvicorn"
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
            ours = [p for p in psutil.process_iter(["cmdline"]) if str(state / "mlflow.db") in " ".join(p.cmdline())]
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


def test_kill_9_mid_deploy_reaches_production_within_90_s_of_the_restart_and_leaves_no_process(
    tmp_path: Path,
) -> None:
    model = endpoint = "lc-main"
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
        stack.land(f"{model}/", "batch-001.csv", "small", seed=1)
        stack.wait(f"{model} v1 in production", lambda: stack.in_production(model, "1"))
        stack.land(f"{model}/", "batch-002.csv", "full", seed=2)
        candidate = stack.wait("v2's scoring server to start", lambda: _deploying(stack, endpoint, "2"))

        # The moment: v2's server is starting, the deploy command is locked by the host.
        assert stack.host_status()["queues"]["deploy"]["locked"] == 1
        killed = host.process.pid
        victims = _tree(killed)
        [mlflow_server] = [p for p in victims if "mlflow server" in " ".join(p.cmdline())]
        mlflow_then = [mlflow_server, *_tree(mlflow_server.pid)]  # with its uvicorn
        assert candidate["pid"] in {p.pid for p in victims}
        v1_url = stack.route(endpoint)["url"]
        host.kill()

        # Its MLflow server ends with it; the endpoint's routed server keeps answering on its own.
        wait_for(
            lambda: not any(_live(p) for p in mlflow_then), timeout=20, what="the killed host's MLflow server to end"
        )
        frame = {"dataframe_split": {"columns": list(FEATURES), "data": [[5.1, 3.5, 1.4, 0.2]]}}
        assert requests.post(f"{v1_url}/invocations", json=frame, timeout=30).status_code == 200

        restarted = time.monotonic()
        stack.mlflow_url = _launch(host)
        stack.process, stack.log_path = host.process, host.log_path
        stack.__dict__.pop("mlflow", None)  # the cached client
        assert stack.mlflow_url == mlflow_url, "MLflow is back on its port: running jobs keep their URL"
        new_host = host.process.pid

        # One MLflow server on the store, recorded as the new host's; every slot record is the new host's.
        mlflow_record = json.loads((state / RECORD_FILE).read_text())
        assert mlflow_record["owner_pid"] == new_host
        servers = [pid for pid, argv in _ours(state).items() if "mlflow server" in argv]
        assert servers == [mlflow_record["pid"]], _ours(state)
        for slot in (state / "endpoints" / endpoint).glob("*.json"):
            if slot.name != "route.json":
                assert json.loads(slot.read_text())["owner_pid"] == new_host, slot.name

        stack.wait(f"{model} v2 in production", lambda: stack.in_production(model, "2"), timeout=RECOVERY_SECONDS)
        took = time.monotonic() - restarted
        print(f"\nproduction {took:.1f} s after the restart", file=sys.stderr)
        assert took <= RECOVERY_SECONDS
        stack.settle()
        stack.assert_serves(model, endpoint, "2")
        assert stack.record(model, "2", "signalbox.deployment")["status"] == "deployed"

        # Nothing of the killed host is left: its MLflow server died with it, its v2 candidate was
        # stopped at the restart, its v1 server was adopted and then replaced by v2.
        wait_for(lambda: not any(_live(p) for p in victims), timeout=20, what="the killed host's processes to end")
    finally:
        not_stopped, ended = _stop(stack)
        left = _ours(state)
    assert not left, f"processes still running after the teardown: {left}"
    assert not not_stopped, f"the host did not stop these on SIGTERM: {not_stopped}"
    assert not ended, f"the teardown had to end these: {ended}"
