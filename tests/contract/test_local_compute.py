"""LocalCompute runs real jobs as detached processes against a real MLflow store; MlflowEvaluator scores them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.adapters.local.compute import LocalCompute
from shared.adapters.mlflow.evaluator import MlflowEvaluator
from shared.ports import JobRequest, RunStatus
from signalbox.examples.iris.data import FEATURES, write_batch, write_evaluation

REPO = Path(__file__).resolve().parents[2]

MODEL = "iris-contract"
TRAIN = "signalbox.examples.iris.train"
JOB_TIMEOUT = 60.0
TAGS = {"signalbox.correlation_id": "corr-1", "signalbox.reason": "landing"}

# A job that sleeps, for cancellation and restarts; importable through extra_env PYTHONPATH.
SLEEPY = textwrap.dedent('''
    """A job that notes its pid, sleeps, and reports (or fails, with param fail=MESSAGE)."""
    import argparse, json, os, sys, time

    parser = argparse.ArgumentParser()
    for option in ("--data", "--model-name", "--result-file"):
        parser.add_argument(option)
    parser.add_argument("--param", action="append", default=[])
    parser.add_argument("--tag", action="append", default=[])
    args = parser.parse_args()
    params = dict(pair.split("=", 1) for pair in args.param)
    if "pidfile" in params:
        with open(params["pidfile"] + ".tmp", "w") as handle:
            handle.write(str(os.getpid()))
        os.replace(params["pidfile"] + ".tmp", params["pidfile"])
    print("sleeping")
    time.sleep(float(params.get("seconds", "120")))
    if "fail" in params:
        print("a traceback would go here\\n\\n  and here", file=sys.stderr)
        print(f"fatal: {params['fail']}", file=sys.stderr)
        print("", file=sys.stderr)
        sys.exit(3)
    with open(args.result_file, "w") as handle:
        json.dump({"slept": float(params.get("seconds", "120")), "model": args.model_name}, handle)
''')


@dataclass
class Env:
    """A tracking store, a state dir and the datasets, shared by the module's tests."""

    root: Path
    tracking_uri: str
    state: Path
    jobs_path: Path
    evaluation: Path

    def compute(self) -> LocalCompute:
        """A fresh LocalCompute over the shared state (what another worker or a restarted host would build)."""
        return LocalCompute(self.state, self.tracking_uri, extra_env={"PYTHONPATH": str(self.jobs_path)})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("compute")
    jobs_path = root / "jobpath"
    jobs_path.mkdir()
    (jobs_path / "sleepy.py").write_text(SLEEPY)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    # Creating the store here, from inside root, puts the default experiment's artifacts in root
    # (they go to ./mlruns of whichever process creates it) and keeps the jobs from racing to migrate it.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        MlflowClient(uri).search_experiments()
    yield Env(root, uri, root / "state", jobs_path, write_evaluation(root / "evaluation.csv"))


def wait(
    compute: LocalCompute,
    run_id: str,
    until: Callable[[RunStatus], bool] = lambda s: s.finished,
    timeout: float = JOB_TIMEOUT,
) -> RunStatus:
    """Poll the status until the condition holds; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        status = compute.status(run_id)
        if until(status):
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"run {run_id} still {status.state} after {timeout}s")
        time.sleep(0.1)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition until it holds; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.05)


def job(
    reference: str,
    data: Path | str | None = None,
    *,
    model_name: str = MODEL,
    parameters: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    idempotency_key: str | None = None,
) -> JobRequest:
    """A job request (for the contract model unless told otherwise)."""
    return JobRequest(
        model_name=model_name,
        purpose="train",
        job_reference=reference,
        data_uri=str(data) if data is not None else None,
        parameters=parameters or {},
        tags=tags or {},
        idempotency_key=idempotency_key,
    )


def pid_gone(pid: int) -> bool:
    """Whether no process (not even a zombie) holds the pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


@pytest.fixture(scope="module")
def trained(env: Env) -> dict[str, RunStatus]:
    """The full and the small batch trained through LocalCompute, side by side."""
    compute = env.compute()
    started = time.monotonic()
    runs = {
        kind: compute.launch(
            job(
                TRAIN,
                write_batch(env.root / f"{kind}.csv", kind).as_uri(),
                parameters={"C": "1.0"},
                tags={**TAGS, "batch": kind},
            )
        )
        for kind in ("full", "small")
    }
    statuses = {kind: wait(compute, run_id) for kind, run_id in runs.items()}
    print(f"two training jobs side by side: {time.monotonic() - started:.1f}s wall")
    return statuses


def test_training_job_registers_a_version_with_the_run_tags(env: Env, trained: dict[str, RunStatus]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(env.tracking_uri)
    versions = set()
    for kind, status in trained.items():
        assert status.state == "succeeded", status
        assert set(status.outputs) == {"mlflow_run_id", "model_version"}
        version = client.get_model_version(MODEL, status.outputs["model_version"])
        assert version.run_id == status.outputs["mlflow_run_id"]
        expected = {**TAGS, "batch": kind}
        assert expected.items() <= version.tags.items()
        run = client.get_run(status.outputs["mlflow_run_id"])
        assert expected.items() <= run.data.tags.items()
        assert run.data.params["C"] == "1.0" and run.data.params["estimator"] == "logistic_regression"
        assert run.data.metrics["training_rows"] == {"full": 105, "small": 12}[kind]
        versions.add(version.version)
    assert len(versions) == 2
    # A fresh instance (another worker, or the host after a restart) reads the same finished state.
    assert env.compute().status(trained["full"].run_id) == trained["full"]


def test_bad_data_fails_with_one_line_naming_the_problem(env: Env) -> None:
    compute = env.compute()
    empty = env.root / "empty.csv"
    empty.write_text("")
    headless = env.root / "no-target.csv"
    headless.write_text("sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n")
    runs = {
        "empty": compute.launch(job(TRAIN, empty)),
        "no-target": compute.launch(job(TRAIN, f"file://{headless}")),
        "bad-param": compute.launch(job(TRAIN, headless, parameters={"C": "lots"})),
    }
    statuses = {name: wait(compute, run_id) for name, run_id in runs.items()}
    assert statuses["empty"].message == f"error: {empty}: the CSV is empty"
    assert statuses["no-target"].message is not None and "missing column(s) target" in statuses["no-target"].message
    assert statuses["bad-param"].message == "error: parameter C='lots': expected a float"
    for status in statuses.values():
        assert status.state == "failed" and "\n" not in (status.message or "") and not status.outputs


def test_the_message_is_the_last_line_of_the_log_not_all_of_it(env: Env) -> None:
    compute = env.compute()
    status = wait(compute, compute.launch(job("sleepy", parameters={"seconds": "0", "fail": "out of cheese"})))
    assert status == RunStatus(status.run_id, "failed", message="fatal: out of cheese")


def test_cancel_stops_the_job_and_its_process_group(env: Env) -> None:
    compute = env.compute()
    pidfile = env.root / "cancel.pid"
    run_id = compute.launch(job("sleepy", parameters={"pidfile": str(pidfile)}))
    wait_for(pidfile.exists)
    assert compute.status(run_id).state == "running"
    job_pid = int(pidfile.read_text())

    compute.cancel(run_id)
    assert compute.status(run_id) == RunStatus(run_id, "cancelled", message="cancelled")
    wait_for(lambda: pid_gone(job_pid))
    # The wrapper still records how the job ended, and a later cancel changes nothing.
    wait_for((env.state / "jobs" / run_id / "exit_code").exists)
    compute.cancel(run_id)
    assert env.compute().status(run_id).state == "cancelled"


def test_a_job_launched_by_another_process_is_followed_after_that_process_exits(env: Env) -> None:
    launcher = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO)!r})
        from shared.adapters.local.compute import LocalCompute
        from shared.ports import JobRequest
        compute = LocalCompute(Path({str(env.state)!r}), {env.tracking_uri!r},
                               extra_env={{"PYTHONPATH": {str(env.jobs_path)!r}}})
        print(compute.launch(JobRequest(model_name="sleepy", purpose="train", job_reference="sleepy",
                                        data_uri=None, parameters={{"seconds": "1.5"}})))
    """)
    done = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True, timeout=30, check=True)
    run_id = done.stdout.strip()

    restarted = env.compute()
    assert restarted.status(run_id).state == "running"
    status = wait(restarted, run_id)
    assert status == RunStatus(run_id, "succeeded", outputs={"slept": "1.5", "model": "sleepy"})
    record = json.loads((env.state / "jobs" / run_id / "job.json").read_text())
    assert record["request"]["job_reference"] == "sleepy" and isinstance(record["pid"], int)


def test_a_wrapper_that_dies_without_an_exit_code_is_reported_vanished(env: Env) -> None:
    compute = env.compute()
    pidfile = env.root / "vanish.pid"
    run_id = compute.launch(job("sleepy", parameters={"pidfile": str(pidfile)}))
    wait_for(pidfile.exists)
    wrapper = json.loads((env.state / "jobs" / run_id / "job.json").read_text())["pid"]
    try:
        os.kill(wrapper, signal.SIGKILL)
        # Both the launching instance (whose dead child must not pass for alive) and a stranger agree.
        assert wait(compute, run_id, timeout=10) == RunStatus(run_id, "failed", message="job process vanished")
        assert env.compute().status(run_id).message == "job process vanished"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(wrapper, signal.SIGKILL)  # the orphaned job is still in the wrapper's group


def test_unknown_run_ids_and_bad_requests_are_refused(env: Env, tmp_path: Path) -> None:
    compute = env.compute()
    for run_id in ("0" * 32, "../../etc", ""):
        with pytest.raises(LookupError):
            compute.status(run_id)
        with pytest.raises(LookupError):
            compute.cancel(run_id)
    bad = [
        ("job_reference", job("signalbox/examples/iris/train.py")),
        ("job_reference", job("-c import os")),
        ("data_uri", job(TRAIN, "https://example.invalid/iris.csv")),
        ("parameters", job(TRAIN, parameters={"-C": "1"})),
        ("tags", job(TRAIN, tags={"a=b": "c"})),
    ]
    for field, request in bad:
        with pytest.raises(ValueError, match=f"^{field}: "):
            LocalCompute(tmp_path, env.tracking_uri).launch(request)
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())


def test_an_interpreter_that_cannot_start_is_a_failed_run(env: Env, tmp_path: Path) -> None:
    compute = LocalCompute(tmp_path, env.tracking_uri, python=str(tmp_path / "no-python"))
    status = compute.status(compute.launch(job("sleepy")))
    assert status.state == "failed" and status.message is not None
    assert status.message.startswith(f"cannot start {tmp_path / 'no-python'}: ")


def test_the_same_idempotency_key_launches_once(env: Env) -> None:
    compute = env.compute()
    request = job("sleepy", parameters={"seconds": "0"}, idempotency_key="message-42")
    run_id = compute.launch(request)
    assert env.compute().launch(request) == run_id
    assert wait(compute, run_id).state == "succeeded"
    assert compute.launch(job("sleepy", parameters={"seconds": "0"}, idempotency_key="message-43")) != run_id


def test_batch_and_rule_scoring_jobs_write_their_results(env: Env, trained: dict[str, RunStatus]) -> None:
    import pandas as pd
    from mlflow import MlflowClient

    client = MlflowClient(env.tracking_uri)
    client.set_registered_model_alias(MODEL, "champion", trained["full"].outputs["model_version"])
    compute = env.compute()
    batch = compute.launch(job("signalbox.examples.iris.batch_score", env.evaluation.as_uri(), tags=TAGS))
    rules = compute.launch(
        job("signalbox.examples.rules.score", env.evaluation, model_name="petal-rule", parameters={"threshold": "4.8"})
    )
    scored, flagged = wait(compute, batch), wait(compute, rules)

    assert scored.state == "succeeded", scored
    assert set(scored.outputs) == {"mlflow_run_id", "rows", "output"} and scored.outputs["rows"] == "45"
    predictions = pd.read_csv(scored.outputs["output"])
    assert list(predictions.columns) == [*FEATURES, "prediction"] and len(predictions) == 45
    run = client.get_run(scored.outputs["mlflow_run_id"])
    assert run.data.metrics["rows"] == 45 and TAGS.items() <= run.data.tags.items()
    assert run.data.params["model_uri"] == f"models:/{MODEL}@champion"

    assert flagged.state == "succeeded", flagged
    expected = int((pd.read_csv(env.evaluation)["petal_length"] > 4.8).sum())
    assert flagged.outputs["rows"] == "45" and flagged.outputs["flagged"] == str(expected)
    assert int(pd.read_csv(flagged.outputs["output"])["virginica_like"].sum()) == expected
    rule_run = client.get_run(flagged.outputs["mlflow_run_id"])
    assert rule_run.data.tags["signalbox.model_name"] == "petal-rule"
    assert rule_run.data.metrics["flagged"] == expected and rule_run.data.params["threshold"] == "4.8"


def test_evaluator_ranks_the_full_batch_model_above_the_small_one(
    env: Env, trained: dict[str, RunStatus], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import mlflow.pyfunc

    # MLflow falls back to ./mlflow.db for anything not given the store explicitly: none may appear.
    monkeypatch.chdir(tmp_path)
    evaluator = MlflowEvaluator(env.tracking_uri, data_root=env.root)
    metrics = ["accuracy", "f1_macro", "precision_macro", "recall_macro"]
    full = evaluator.score(MODEL, trained["full"].outputs["model_version"], "evaluation.csv", metrics)
    small = evaluator.score(MODEL, trained["small"].outputs["model_version"], str(env.evaluation), metrics)
    assert list(full) == metrics and all(0.0 <= value <= 1.0 for value in (*full.values(), *small.values()))
    assert full["accuracy"] >= 0.9 and full["accuracy"] - small["accuracy"] >= 0.15, (full, small)

    def no_reload(*args: object, **kwargs: object) -> None:
        raise AssertionError("a scored version must be served from the cache")

    monkeypatch.setattr(mlflow.pyfunc, "load_model", no_reload)
    again = evaluator.score(MODEL, trained["full"].outputs["model_version"], env.evaluation.as_uri(), ["accuracy"])
    assert again == {"accuracy": full["accuracy"]}
    with pytest.raises(ValueError, match="'auc'"):
        evaluator.score(MODEL, trained["full"].outputs["model_version"], "evaluation.csv", ["accuracy", "auc"])
    unlabelled = env.root / "unlabelled.csv"
    unlabelled.write_text("sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n")
    with pytest.raises(ValueError, match="no 'target' column"):
        evaluator.score(MODEL, trained["full"].outputs["model_version"], str(unlabelled), ["accuracy"])
    assert not list(tmp_path.iterdir())


def test_evaluator_regression_metrics(env: Env) -> None:
    import math

    import mlflow
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.uniform(0, 10, 40)})
    frame["target"] = 3 * frame["x"] + 1 + rng.normal(0, 1, 40)
    model = LinearRegression().fit(frame[["x"]], frame["target"])
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(env.tracking_uri)
    try:
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(
                model, name="model", registered_model_name="line-contract", pip_requirements=["scikit-learn"]
            )
    finally:
        mlflow.set_tracking_uri(previous)
    frame.to_csv(env.root / "line.csv", index=False)

    scores = MlflowEvaluator(env.tracking_uri, data_root=env.root).score(
        "line-contract", str(info.registered_model_version), "line.csv", ["rmse", "mae", "r2"]
    )
    errors = model.predict(frame[["x"]]) - frame["target"]
    assert scores["rmse"] == pytest.approx(math.sqrt(float((errors**2).mean())))
    assert scores["mae"] == pytest.approx(float(errors.abs().mean()))
    assert 0.95 < scores["r2"] <= 1.0
