"""LocalServing runs real MLflow scoring servers, blue/green, behind the host's stable endpoint URL."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from shared.adapters.local.serving import LocalServing, resolve_route
from shared.errors import DeploymentFailed, PermanentError
from shared.ports import Deployment, ScoringFrame
from signalbox.localhost.endpoints import proxy_invocation

REPO = Path(__file__).resolve().parents[2]

MODEL = "iris"
ENDPOINT = "iris-live"
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [5.9, 3.0, 4.2, 1.5], [6.7, 3.0, 5.2, 2.3]]
V1_ANSWER = [0, 1, 2]
# v2 learns labels shifted by 10, so every answer shows which version served it.
V2_ANSWER = [10, 11, 12]
PAYLOAD = ScoringFrame(tuple(COLUMNS), tuple(tuple(row) for row in ROWS))


class _Registry:
    """A sqlite MLflow registry in tmp with two good versions and one whose artifacts are gone."""

    def __init__(self, root: Path) -> None:
        self.tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
        self.artifacts = root / "artifacts"
        self.broken_version = ""


def _register(root: Path) -> _Registry:
    import mlflow
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    registry = _Registry(root)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(registry.tracking_uri)
    try:
        experiment = mlflow.create_experiment("serving-contract", artifact_location=registry.artifacts.as_uri())
        features, labels = load_iris(return_X_y=True, as_frame=True)
        features.columns = COLUMNS
        for shift in (0, 10, 0):
            with mlflow.start_run(experiment_id=experiment):
                mlflow.sklearn.log_model(
                    LogisticRegression(max_iter=1000).fit(features, labels + shift),
                    name="model",
                    input_example=features.head(3),
                    pip_requirements=["scikit-learn", "pandas"],
                    registered_model_name=MODEL,
                )
        client = mlflow.MlflowClient()
        registry.broken_version = "3"
        download_uri = client.get_model_version_download_uri(MODEL, registry.broken_version)
        for file in Path(unquote(urlparse(download_uri).path)).iterdir():
            file.unlink()
    finally:
        mlflow.set_tracking_uri(previous)
    return registry


class _SpawnSpy(subprocess.Popen[bytes]):
    """Popen that remembers every pid, so the finalizer can kill whatever a test left behind."""

    pids: list[int] = []  # noqa: RUF012 - shared on purpose across every spawn of the module

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _SpawnSpy.pids.append(self.pid)


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group, read from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> _Registry:
    return _register(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(scope="module")
def spawned() -> Iterator[list[int]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess, "Popen", _SpawnSpy)
        yield _SpawnSpy.pids
    # Whatever the outcome, no scoring server may outlive the tests.
    for pid in _SpawnSpy.pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    _SpawnSpy.pids.clear()


@pytest.fixture
def serving(registry: _Registry, spawned: list[int], tmp_path: Path) -> LocalServing:
    return LocalServing(tmp_path / "state", registry.tracking_uri, "http://127.0.0.1:7071", start_timeout=90.0)


def _proxy(state_dir: Path) -> tuple[int, Any]:
    status, headers, body = proxy_invocation(
        state_dir, ENDPOINT, json.dumps(PAYLOAD.dataframe_split()).encode(), "application/json"
    )
    assert headers == {"Content-Type": "application/json"}
    return status, json.loads(body)


def _timed_start(serving: LocalServing, version: str, timings: list[str]) -> Deployment:
    began = time.monotonic()
    deployment = serving.start(ENDPOINT, MODEL, version)
    timings.append(f"v{version} {time.monotonic() - began:.1f}s")
    return deployment


def test_blue_green_deploy_through_the_stable_url(
    serving: LocalServing,
    spawned: list[int],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = serving.state_dir
    timings: list[str] = []
    assert serving.current(ENDPOINT) is None
    assert serving.endpoint_url(ENDPOINT) == f"http://127.0.0.1:7071/endpoints/{ENDPOINT}/invocations"

    v1 = _timed_start(serving, "1", timings)
    assert (v1.endpoint, v1.model_name, v1.version, v1.slot) == (ENDPOINT, MODEL, "1", "blue")
    assert v1.url.startswith("http://127.0.0.1:")
    slot_record = json.loads((state / "endpoints" / ENDPOINT / "blue.json").read_text())
    assert slot_record["version"] == "1" and slot_record["url"] == v1.url and slot_record["started_at"]
    assert serving.current(ENDPOINT) is None, "a started deployment takes no traffic until routed"
    assert serving.invoke(v1, PAYLOAD) == {"predictions": V1_ANSWER}
    with pytest.raises(DeploymentFailed, match="400"):
        serving.invoke(v1, ScoringFrame(("nope",), ((1.0,),)))

    serving.route(ENDPOINT, v1)
    assert serving.current(ENDPOINT) == v1
    assert resolve_route(state, ENDPOINT) == v1.url
    assert _proxy(state) == (200, {"predictions": V1_ANSWER})

    # v2 comes up in the other slot while v1 keeps answering on the stable URL.
    started: list[Deployment] = []
    failures: list[BaseException] = []

    def start_v2() -> None:
        try:
            started.append(_timed_start(serving, "2", timings))
        except BaseException as exc:
            failures.append(exc)

    starter = threading.Thread(target=start_v2)
    starter.start()
    answered_meanwhile = 0
    while starter.is_alive():
        assert _proxy(state) == (200, {"predictions": V1_ANSWER})
        answered_meanwhile += 1
        starter.join(timeout=0.2)
    assert not failures, failures
    assert answered_meanwhile >= 1
    (v2,) = started
    assert (v2.slot, v2.version) == ("green", "2") and v2.url != v1.url
    assert serving.invoke(v2, PAYLOAD) == {"predictions": V2_ANSWER}

    serving.route(ENDPOINT, v2)
    v1_pid = slot_record["pid"]
    serving.stop(v1)
    serving.stop(v1)  # already gone: no error
    assert not _group_members(v1_pid)
    assert not (state / "endpoints" / ENDPOINT / "blue.json").exists()
    assert _proxy(state) == (200, {"predictions": V2_ANSWER})
    route = json.loads((state / "endpoints" / ENDPOINT / "route.json").read_text())
    assert (route["model_name"], route["version"], route["slot"], route["url"]) == (MODEL, "2", "green", v2.url)

    # A host restart reads the routing back from disk.
    restarted = LocalServing(state, serving.tracking_uri, "http://127.0.0.1:7071")
    assert restarted.current(ENDPOINT) == v2

    # A server left unrouted in the idle slot is replaced; a version that cannot start leaves
    # the routed deployment serving and no process behind.
    stale = _timed_start(restarted, "1", timings)
    assert stale.slot == "blue"
    stale_pid = json.loads((state / "endpoints" / ENDPOINT / "blue.json").read_text())["pid"]
    spawned_before = len(spawned)
    began = time.monotonic()
    with pytest.raises(DeploymentFailed, match="exited with code") as failure:
        restarted.start(ENDPOINT, MODEL, "3")
    failed_after = time.monotonic() - began
    assert "blue.log" in str(failure.value)
    assert not _group_members(stale_pid)
    (failed_pid,) = spawned[spawned_before:]
    assert not _group_members(failed_pid)
    assert not (state / "endpoints" / ENDPOINT / "blue.json").exists()
    with pytest.raises(DeploymentFailed, match="not found"):
        restarted.start(ENDPOINT, MODEL, "99")
    assert not _group_members(spawned[-1])
    assert restarted.current(ENDPOINT) == v2
    assert json.loads((state / "endpoints" / ENDPOINT / "route.json").read_text()) == route
    assert _proxy(state) == (200, {"predictions": V2_ANSWER})

    # Stopping the routed server: the stable URL answers 502 and current() reports it gone.
    restarted.stop(v2)
    status, error = _proxy(state)
    assert status == 502 and "unreachable" in error["error"]
    with caplog.at_level(logging.WARNING, logger="signalbox.serving.local"):
        assert restarted.current(ENDPOINT) is None
    assert "is gone" in caplog.text
    with pytest.raises(RuntimeError, match="no running server"):
        restarted.route(ENDPOINT, v2)
    assert all(not _group_members(pid) for pid in spawned)

    with capsys.disabled():
        print(f"\nscoring server ready after: {', '.join(timings)}; failed start reported after {failed_after:.1f}s")


def test_proxy_without_a_route_is_404(tmp_path: Path) -> None:
    status, headers, body = proxy_invocation(tmp_path, ENDPOINT, b"{}", None)
    assert (status, headers) == (404, {"Content-Type": "application/json"})
    assert "no deployment routed" in json.loads(body)["error"]
    status, _, _ = proxy_invocation(tmp_path, "../../etc", b"{}", None)
    assert status == 404


def test_names_that_are_not_endpoints_are_refused(tmp_path: Path) -> None:
    serving = LocalServing(tmp_path, "sqlite:///unused.db", "http://127.0.0.1:7071/")
    with pytest.raises(PermanentError, match="invalid endpoint name"):
        serving.current("../escape")
    assert serving.endpoint_url("a_b-1") == "http://127.0.0.1:7071/endpoints/a_b-1/invocations"
