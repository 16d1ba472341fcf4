"""A fake Databricks workspace that fails at random, with a fault-injecting proxy in front of MLflow.

    python -m signalbox.chaos.workspace --port P --mlflow-url http://127.0.0.1:M [--fault-rate 0.2]
        [--stall-seconds 4] [--job-seconds 0.5] [--seed 7] [--job NAME ...] [--token T]
        [--capacity-failure-rate 0.1] [--capacity-codes MAX_CONCURRENT_RUNS_EXCEEDED,CLOUD_FAILURE]
        [--slow-update-rate 0.2] [--slow-update-seconds 5]

One HTTP port (``Workspace.url``) serves three things, all state in memory behind one lock:

- **The Databricks REST subset the real adapters call** (``shared/adapters/databricks/compute.py``
  and ``databricks_serving.py`` through databricks-sdk): ``jobs/list``, ``jobs/get``, ``jobs/run-now``
  (an ``idempotency_token`` seen before returns that run and launches nothing), ``jobs/runs/get``,
  ``jobs/runs/get-output``, ``jobs/runs/cancel`` (API 2.0, 2.1 and 2.2 paths); serving endpoints
  create / get / update config / delete and the invocation routes. A config update is
  ``IN_PROGRESS`` for ``update_seconds`` (0.3 s), then applied with every served entity ready.
- **Synthetic training.** A run is PENDING, then RUNNING until ``job_seconds`` after its launch.
  The first ``runs/get`` after that starts the training job, exactly once per run, on a worker
  thread (the run reads TERMINATING meanwhile): straight to MLflow (``mlflow_url``, not through
  the faulty proxy) it creates a run in experiment ``chaos`` with the job parameters as params
  and the ``signalbox.*`` ones as tags, and registers a version of the ``model_name`` parameter's
  model with those tags (as ``signalbox/examples/iris/train.py`` does), whose source is the
  synthetic model of quality ``q`` (``signalbox/chaos/synthetic.py``): ``q`` is the last
  ``q<digits>`` in the ``data_uri`` parameter, else seeded random. Its notebook exit value is
  ``{"mlflow_run_id", "model_version"}``.
- **An MLflow proxy**: every other path (``/api/2.0/mlflow*``, ``/api/2.0/mlflow-artifacts*``,
  ``/api/3.0/mlflow*``, ``/ajax-api/*``, ``/get-artifact``, ...) is forwarded to ``mlflow_url`` with
  its headers and body.

**Faults.** Every Databricks API request and every proxied MLflow request fails with probability
``fault_rate``, the kind chosen evenly among three: 429 (``Retry-After: 1``,
``REQUEST_LIMIT_EXCEEDED``); a 5xx (500, 502 or 503); a timeout: the connection stalls for
``stall_seconds`` and closes without an answer, half the time *before* the request is served and
half the time *after* (done, but the answer is lost). The host-metadata probe
``/.well-known/databricks-config`` (best effort in the SDK) and ``/chaos/*`` are never faulted.

**Degrades** (off by default, so the fault-injection run's claims hold as they were):

- ``capacity_failure_rate``: that share of runs never train; they end, when they would have
  started running, as Databricks ends a run it could not place: Jobs 2.2 ``status`` TERMINATED
  with ``termination_details`` ``{code, type, message}``, one of ``capacity_codes`` drawn evenly:
  ``MAX_CONCURRENT_RUNS_EXCEEDED`` (type ``CLIENT_ERROR``; deprecated ``state.life_cycle_state``
  SKIPPED), ``WORKSPACE_RUN_LIMIT_EXCEEDED`` (likewise), ``CLOUD_FAILURE`` (type ``CLOUD_FAILURE``;
  ``life_cycle_state`` INTERNAL_ERROR) or ``INTERNAL_ERROR`` (type ``INTERNAL_ERROR``; likewise).
  Their idempotency token keeps naming the failed run: a relaunch needs another token.
- ``slow_update_rate``: that share of config updates stays ``IN_PROGRESS`` for
  ``slow_update_seconds`` instead of ``update_seconds``; as for every update, a ``PUT …/config``
  meanwhile answers 409 ``RESOURCE_CONFLICT`` and the endpoint keeps serving its old config.

**Introspection** (``/chaos/*``; ``Workspace.runs()`` etc. return the same documents in-process):

- ``GET /chaos/runs``: a list, oldest first, of ``{run_id, job_id, idempotency_token, parameters,
  tags (the signalbox.* parameters), state (PENDING, RUNNING, TERMINATING, SUCCESS, FAILED,
  CANCELED), model_name, model_version, mlflow_run_id, quality, error, termination_code (the
  capacity failure's code, else null), created_at, ended_at}`` (epoch seconds); a run past its
  time that nobody has read since still says RUNNING.
- ``GET /chaos/run-now-calls``: ``{count: served, received: faulted ones too, launched: new runs}``.
- ``GET /chaos/endpoints``: ``{endpoint: {routes: {entity: pct}, entities: {entity: {model,
  version, state, invocations}}, serving_version: the version at 100 % or null, config_update,
  updates: the last ten config updates begun [{at, entities, routes, slow}]}}``, from the applied config.
- ``GET /chaos/faults``: ``{rate, requests, total, by_kind: {kind: n}, by_target: {databricks|mlflow:
  {requests, faults, by_kind}}}``; ``POST /chaos/faults {"rate": r}`` sets the rate and answers it.
- ``GET /chaos/degrades``: ``{capacity_failure_rate, capacity_failures: {code: n}, slow_update_rate,
  updates, slow_updates}``; ``POST /chaos/degrades {"capacity_failure_rate": r, "slow_update_rate": r}``
  sets either rate and answers the document.

The seed fixes the random sequences; which request draws which fault still depends on thread
timing, so a run is reproducible in distribution, not request by request.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import random
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "CAPACITY_CODES",
    "DEFAULT_CAPACITY_CODES",
    "DEFAULT_JOB",
    "FAULT_KINDS",
    "SyntheticTrainer",
    "Workspace",
    "main",
    "quality_of",
]

log = logging.getLogger("signalbox.chaos.workspace")

DEFAULT_JOB = "chaos-train"
# Run termination codes of capacity failures, as Jobs API 2.2 reports them: (type, deprecated
# life_cycle_state, message).
CAPACITY_CODES: dict[str, tuple[str, str, str]] = {
    "MAX_CONCURRENT_RUNS_EXCEEDED": (
        "CLIENT_ERROR",
        "SKIPPED",
        "Skipping this run because the limit of 1 maximum concurrent runs has been reached.",
    ),
    "WORKSPACE_RUN_LIMIT_EXCEEDED": (
        "CLIENT_ERROR",
        "SKIPPED",
        "The workspace has reached the quota for the maximum number of concurrent active runs.",
    ),
    "CLOUD_FAILURE": (
        "CLOUD_FAILURE",
        "INTERNAL_ERROR",
        "Cloud provider error: the compute could not be acquired (allocation failed in the region).",
    ),
    "INTERNAL_ERROR": (
        "INTERNAL_ERROR",
        "INTERNAL_ERROR",
        "The run encountered an unexpected error in the Jobs service.",
    ),
}
DEFAULT_CAPACITY_CODES = ("MAX_CONCURRENT_RUNS_EXCEEDED", "CLOUD_FAILURE")
FAULT_KINDS = ("429", "500", "502", "503", "stall_before", "stall_after")
_FAMILIES = (("429",), ("500", "502", "503"), ("stall_before", "stall_after"))
TARGETS = ("databricks", "mlflow")
EXPERIMENT = "chaos"
TAG_PREFIX = "signalbox."
TASK_KEY = "train"
_QUALITY = re.compile(r"q(\d{1,3})(?!\d)")
_ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_JOBS = re.compile(r"^/api/2\.[012]/jobs/(list|get|run-now|runs/get|runs/get-output|runs/cancel)$")
_ENDPOINTS = re.compile(r"^/api/2\.0/serving-endpoints(?:/([^/]+)(/config)?)?$")
_INVOKE = re.compile(r"^/serving-endpoints/([^/]+)(?:/served-models/([^/]+))?/invocations$")
_TOKEN_MAX = 64
_MAX_ERROR = 500
# Hop-by-hop headers are the proxy's own business; Host is set for the upstream by http.client.
_NOT_FORWARDED = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host"}
)
_NOT_RETURNED = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"})
_UPSTREAM_TIMEOUT = 120.0
_NOTEBOOK = {"notebook_path": "/Workspace/chaos/train", "source": "WORKSPACE"}

Reply = tuple[int, Any, dict[str, str]]


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Reply:
    return status, {"error_code": code, "message": message}, dict(headers or {})


def _ok(body: Any) -> Reply:
    return 200, body, {}


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def quality_of(data_uri: str | None, fallback: Callable[[], int]) -> int:
    """The quality level (0..100) named by the last ``q<digits>`` in the data URI, else ``fallback()``."""
    found = _QUALITY.findall(data_uri or "")
    return min(100, int(found[-1])) if found else fallback()


# -- synthetic training, straight to MLflow ------------------------------------------------------


class SyntheticTrainer:
    """Does what a training job does: an MLflow run with the model, then a version tagged like the job.

    The model of each quality level is built once, locally, and uploaded into every run that
    uses it: MLflow accepts a version's source only inside the run it names.
    """

    def __init__(self, mlflow_url: str) -> None:
        self.mlflow_url = mlflow_url.rstrip("/")
        self._lock = threading.Lock()  # guards the client, the experiment id and the model cache
        self._client: Any = None
        self._experiment_id: str | None = None
        self._models: dict[int, Path] = {}
        self._folder = tempfile.TemporaryDirectory(prefix="signalbox-chaos-models-")

    def close(self) -> None:
        """Remove the locally built models."""
        self._folder.cleanup()

    def warm(self) -> None:
        """Import MLflow ahead of the first run's end (it takes seconds)."""
        import mlflow.pyfunc  # noqa: F401

        self._mlflow()

    def _mlflow(self) -> Any:
        with self._lock:
            if self._client is None:
                from mlflow import MlflowClient

                # Explicit URIs: the process-wide ones may point elsewhere (the harness runs this in-process).
                self._client = MlflowClient(tracking_uri=self.mlflow_url, registry_uri=self.mlflow_url)
            return self._client

    def _experiment(self, client: Any) -> str:
        from mlflow.exceptions import MlflowException

        with self._lock:
            if self._experiment_id is None:
                found = client.get_experiment_by_name(EXPERIMENT)
                if found is None:
                    try:
                        self._experiment_id = str(client.create_experiment(EXPERIMENT))
                    except MlflowException:  # created meanwhile by another process
                        self._experiment_id = str(client.get_experiment_by_name(EXPERIMENT).experiment_id)
                else:
                    self._experiment_id = str(found.experiment_id)
            return self._experiment_id

    def model(self, quality: int, *, broken: bool = False) -> Path:
        """The saved synthetic model of this quality (built on first use); a broken one cannot be scored."""
        key = -1 if broken else quality
        with self._lock:
            if key in self._models:
                return self._models[key]
            import mlflow
            import mlflow.pyfunc
            import pandas as pd

            from signalbox.chaos import synthetic

            path = Path(self._folder.name) / ("broken" if broken else f"q{quality:03d}")
            mlflow.pyfunc.save_model(
                path,
                python_model=synthetic.__file__,  # a model from code: loads wherever mlflow and pandas are
                model_config={"coef": synthetic.coefficient(quality), "broken": broken},
                # No signature: MLflow would refuse the integer x of a CSV for a double column.
                # Given explicitly: inferring them takes seconds.
                pip_requirements=[f"mlflow=={mlflow.__version__}", f"pandas=={pd.__version__}"],
            )
            self._models[key] = path
            return path

    def train(self, parameters: Mapping[str, str], quality: int) -> tuple[str, str]:
        """Log a training run and register a version of ``parameters["model_name"]``; (mlflow run id, version)."""
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        model_name = parameters.get("model_name", "")
        if not model_name:
            raise ValueError("the job parameter model_name is missing")
        # Data named "...-broken..." trains a model that fails every evaluation: a poison message.
        local = self.model(quality, broken="-broken" in parameters.get("data_uri", ""))
        client = self._mlflow()
        # The job's Signalbox tags go on the run and on the version, as a real training job puts them.
        tags = {k: v for k, v in parameters.items() if k.startswith(TAG_PREFIX)}
        params = {k: v for k, v in parameters.items() if not k.startswith(TAG_PREFIX)}
        params["quality"] = str(quality)
        run = client.create_run(self._experiment(client), run_name=f"train {model_name}", tags=tags)
        run_id = run.info.run_id
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        client.log_artifacts(run_id, str(local), "model")
        client.set_terminated(run_id)
        try:
            client.create_registered_model(model_name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        # With its tags in one call: the registry webhook fires on creation.
        version = client.create_model_version(model_name, f"{run.info.artifact_uri}/model", run_id=run_id, tags=tags)
        return run_id, str(version.version)


# -- state ----------------------------------------------------------------------------------------


@dataclass
class _Run:
    run_id: int
    job_id: int
    job_name: str
    token: str | None
    parameters: dict[str, str]
    created_at: float
    state: str = "PENDING"  # PENDING, RUNNING, TERMINATING, SUCCESS, FAILED, CANCELED
    quality: int | None = None
    mlflow_run_id: str | None = None
    model_version: str | None = None
    error: str | None = None
    ended_at: float | None = None
    capacity: str | None = None  # the capacity failure this run ends with, drawn at launch

    @property
    def task_run_id(self) -> int:
        return self.run_id + 1

    @property
    def ended(self) -> bool:
        return self.state in ("SUCCESS", "FAILED", "CANCELED")


@dataclass
class _Endpoint:
    name: str
    id: str
    created_at: float
    config: dict[str, Any] | None = None
    pending: dict[str, Any] | None = None
    apply_at: float = 0.0
    config_version: int = 0
    updated_at: float = 0.0
    invocations: Counter[str] = field(default_factory=Counter)
    updates: list[dict[str, Any]] = field(default_factory=list)  # the last config updates begun, for diagnosis


@dataclass
class _Faults:
    rate: float
    requests: Counter[str] = field(default_factory=Counter)
    injected: dict[str, Counter[str]] = field(default_factory=lambda: {t: Counter() for t in TARGETS})


# -- the workspace --------------------------------------------------------------------------------


class Workspace:
    """The fake workspace, serving on ``url`` from construction until ``close()``."""

    def __init__(
        self,
        mlflow_url: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        fault_rate: float = 0.0,
        fault_kinds: Sequence[str] = FAULT_KINDS,
        stall_seconds: float = 4.0,
        job_seconds: float = 0.5,
        update_seconds: float = 0.3,
        seed: int = 0,
        jobs: Sequence[str] = (DEFAULT_JOB,),
        token: str | None = None,
        trainer: SyntheticTrainer | None = None,
        workers: int = 4,
        capacity_failure_rate: float = 0.0,
        capacity_codes: Sequence[str] = DEFAULT_CAPACITY_CODES,
        slow_update_rate: float = 0.0,
        slow_update_seconds: float = 5.0,
    ) -> None:
        _check_rate(fault_rate)
        _check_rate(capacity_failure_rate)
        _check_rate(slow_update_rate)
        unknown_codes = sorted(set(capacity_codes) - set(CAPACITY_CODES))
        if unknown_codes or not capacity_codes:
            raise ValueError(f"capacity codes must be some of {', '.join(CAPACITY_CODES)}, not {list(capacity_codes)}")
        if slow_update_seconds < 0:
            raise ValueError(f"slow_update_seconds must not be negative, not {slow_update_seconds}")
        self.capacity_failure_rate = capacity_failure_rate
        self.capacity_codes = tuple(dict.fromkeys(capacity_codes))
        self.slow_update_rate = slow_update_rate
        self.slow_update_seconds = slow_update_seconds
        self._degraded: Counter[str] = Counter()
        self.mlflow_url = mlflow_url.rstrip("/")
        upstream = urlsplit(self.mlflow_url)
        if upstream.scheme != "http" or not upstream.hostname:
            raise ValueError(f"--mlflow-url must be an http:// URL, not {mlflow_url!r}")
        self._upstream = (upstream.hostname, upstream.port or 80)
        self.stall_seconds = stall_seconds
        self.job_seconds = job_seconds
        self.update_seconds = update_seconds
        self._token = token
        self._trainer = trainer or SyntheticTrainer(self.mlflow_url)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        # Separate streams: the faults drawn do not shift with how many qualities were drawn.
        self._fault_rng = random.Random(seed)  # noqa: S311  # simulation, not cryptography
        self._quality_rng = random.Random(seed + 1)  # noqa: S311
        self._traffic_rng = random.Random(seed + 2)  # noqa: S311
        self._capacity_rng = random.Random(seed + 3)  # noqa: S311
        self._update_rng = random.Random(seed + 4)  # noqa: S311
        self._faults = _Faults(rate=fault_rate)
        unknown = sorted(set(fault_kinds) - set(FAULT_KINDS))
        if unknown or not fault_kinds:
            raise ValueError(f"fault kinds must be some of {', '.join(FAULT_KINDS)}, not {list(fault_kinds)}")
        families = [tuple(k for k in family if k in fault_kinds) for family in _FAMILIES]
        self._families = [family for family in families if family]
        self._jobs = {index: name for index, name in enumerate(dict.fromkeys(jobs), start=1)}
        self._started = time.time()
        self._runs: dict[int, _Run] = {}
        self._by_task: dict[int, int] = {}
        self._by_token: dict[str, int] = {}
        self._next_run = 1001
        self._run_now = Counter[str]()
        self._endpoints: dict[str, _Endpoint] = {}
        self._qualities: dict[tuple[str, str], int] = {}  # (model, version) -> quality, for predictions
        self._training = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chaos-train")
        self.server = ThreadingHTTPServer((host, port), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.1,), daemon=True)
        self._thread.start()
        threading.Thread(target=self._trainer.warm, name="chaos-warm-up", daemon=True).start()

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop serving; stalled requests end at once, training in progress is abandoned."""
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()
        self._training.shutdown(wait=False, cancel_futures=True)
        self._trainer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- introspection ---------------------------------------------------------------------------

    def set_fault_rate(self, rate: float) -> None:
        """Change the probability of a fault per request."""
        _check_rate(rate)
        with self._lock:
            self._faults.rate = rate

    def faults(self) -> dict[str, Any]:
        """Requests seen and faults injected, in total, by kind and by target."""
        with self._lock:
            by_kind: Counter[str] = Counter()
            for counts in self._faults.injected.values():
                by_kind.update(counts)
            return {
                "rate": self._faults.rate,
                "requests": sum(self._faults.requests.values()),
                "total": sum(by_kind.values()),
                "by_kind": {kind: by_kind[kind] for kind in FAULT_KINDS},
                "by_target": {
                    target: {
                        "requests": self._faults.requests[target],
                        "faults": sum(self._faults.injected[target].values()),
                        "by_kind": {kind: self._faults.injected[target][kind] for kind in FAULT_KINDS},
                    }
                    for target in TARGETS
                },
            }

    def set_degrades(
        self, *, capacity_failure_rate: float | None = None, slow_update_rate: float | None = None
    ) -> None:
        """Change the share of runs ending in a capacity failure, or of slow config updates."""
        for rate in (capacity_failure_rate, slow_update_rate):
            if rate is not None:
                _check_rate(rate)
        with self._lock:
            if capacity_failure_rate is not None:
                self.capacity_failure_rate = capacity_failure_rate
            if slow_update_rate is not None:
                self.slow_update_rate = slow_update_rate

    def degrades(self) -> dict[str, Any]:
        """Capacity failures drawn (by code) and config updates begun (slow ones too)."""
        with self._lock:
            return {
                "capacity_failure_rate": self.capacity_failure_rate,
                "capacity_failures": {code: self._degraded[code] for code in self.capacity_codes},
                "slow_update_rate": self.slow_update_rate,
                "updates": self._degraded["updates"],
                "slow_updates": self._degraded["slow_updates"],
            }

    def runs(self) -> list[dict[str, Any]]:
        """Every run launched, oldest first."""
        with self._lock:
            for run in self._runs.values():
                self._advance(run)
            return [
                {
                    "run_id": run.run_id,
                    "job_id": run.job_id,
                    "idempotency_token": run.token,
                    "parameters": dict(run.parameters),
                    "tags": {k: v for k, v in run.parameters.items() if k.startswith(TAG_PREFIX)},
                    "state": run.state,
                    "model_name": run.parameters.get("model_name"),
                    "model_version": run.model_version,
                    "mlflow_run_id": run.mlflow_run_id,
                    "quality": run.quality,
                    "error": run.error,
                    "termination_code": run.capacity,
                    "created_at": run.created_at,
                    "ended_at": run.ended_at,
                }
                for run in self._runs.values()
            ]

    def run_now_calls(self) -> dict[str, int]:
        """``run-now`` requests: served (``count``), received (faulted ones too), and runs launched."""
        with self._lock:
            return {
                "count": self._run_now["served"],
                "received": self._run_now["received"],
                "launched": self._run_now["launched"],
            }

    def endpoints(self) -> dict[str, dict[str, Any]]:
        """Each endpoint's applied config: routes, served entities, and the version taking 100 %."""
        with self._lock:
            out: dict[str, dict[str, Any]] = {}
            for name, endpoint in self._endpoints.items():
                self._settle(endpoint)
                config = endpoint.config or {"served_entities": [], "traffic_config": {"routes": []}}
                entities = {
                    e["name"]: {
                        "model": e.get("entity_name"),
                        "version": e.get("entity_version"),
                        "state": e["state"]["deployment"],
                        "invocations": endpoint.invocations[e["name"]],
                    }
                    for e in config["served_entities"]
                }
                routes = _routes(config)
                full = [entity for entity, pct in routes.items() if pct == 100 and entity in entities]
                out[name] = {
                    "routes": routes,
                    "entities": entities,
                    "serving_version": entities[full[0]]["version"] if full else None,
                    "config_update": "IN_PROGRESS" if endpoint.pending is not None else "NOT_UPDATING",
                    "updates": list(endpoint.updates),
                }
            return out

    # -- faults ------------------------------------------------------------------------------------

    def _draw(self, target: str) -> str | None:
        with self._lock:
            self._faults.requests[target] += 1
            if self._faults.rate <= 0 or self._fault_rng.random() >= self._faults.rate:
                return None
            # Throttling, a server error, a timeout: evenly; then evenly within the family (half
            # the timeouts lose the request, half lose only the answer).
            family = self._fault_rng.choice(self._families)
            kind = self._fault_rng.choice(family)
            self._faults.injected[target][kind] += 1
            return kind

    def _stall(self) -> None:
        self._closing.wait(self.stall_seconds)

    # -- Databricks: jobs ----------------------------------------------------------------------------

    def _job(self, job_id: int) -> dict[str, Any]:
        return {
            "job_id": job_id,
            "creator_user_name": "chaos@example.com",
            "run_as_user_name": "chaos@example.com",
            "created_time": _ms(self._started),
            "settings": {
                "name": self._jobs[job_id],
                "format": "MULTI_TASK",
                "max_concurrent_runs": 1000,
                "parameters": [{"name": "model_name", "default": ""}, {"name": "data_uri", "default": ""}],
                "tasks": [
                    {"task_key": TASK_KEY, "notebook_task": _NOTEBOOK},
                ],
            },
        }

    def _jobs_api(self, action: str, query: Mapping[str, str], body: Any) -> Reply:
        if action == "list":
            name = query.get("name")
            with self._lock:
                jobs = [
                    self._job(job_id)
                    for job_id, job_name in self._jobs.items()
                    if name is None or job_name.casefold() == name.casefold()
                ]
            return _ok({"jobs": jobs, "has_more": False} if jobs else {"has_more": False})
        if action == "get":
            job_id = _int(query.get("job_id"))
            with self._lock:
                if job_id not in self._jobs:
                    return _error(400, "INVALID_PARAMETER_VALUE", f"Job {query.get('job_id')} does not exist.")
                return _ok(self._job(job_id))
        if action == "run-now":
            return self._run_now_api(body if isinstance(body, dict) else {})
        if action == "runs/cancel":
            run_id = _int((body or {}).get("run_id") if isinstance(body, dict) else None)
            with self._lock:
                run = self._runs.get(run_id)
                if run is None:
                    return _error(400, "INVALID_PARAMETER_VALUE", f"Run {run_id} does not exist.")
                self._advance(run)
                if run.state in ("PENDING", "RUNNING"):  # a run already training finishes on its own
                    run.state, run.ended_at = "CANCELED", time.time()
            return _ok({})
        run_id = _int(query.get("run_id"))
        if action == "runs/get":
            with self._lock:
                run = self._runs.get(run_id)
                if run is None:
                    return _error(400, "INVALID_PARAMETER_VALUE", f"Run {query.get('run_id')} does not exist.")
                start = self._advance(run, train=True)
                document = self._run_document(run)
            if start:
                self._training.submit(self._complete, run)
            return _ok(document)
        # runs/get-output
        with self._lock:
            if run_id in self._runs:
                return _error(
                    400,
                    "INVALID_PARAMETER_VALUE",
                    "Retrieving the output of runs with multiple tasks is not supported. "
                    "Please retrieve the output of each individual task run instead.",
                )
            parent = self._runs.get(self._by_task.get(run_id, -1))
            if parent is None:
                return _error(400, "INVALID_PARAMETER_VALUE", f"Run {query.get('run_id')} does not exist.")
            self._advance(parent)
            output: dict[str, Any] = {"metadata": self._task_document(parent, with_parent=True)}
            if parent.state == "SUCCESS":
                result = json.dumps({"mlflow_run_id": parent.mlflow_run_id, "model_version": parent.model_version})
                output["notebook_output"] = {"result": result, "truncated": False}
            elif parent.state == "FAILED":
                output["error"] = parent.error or "failed"
                output["error_trace"] = f"Traceback (most recent call last):\n  ...\n{parent.error}"
            return _ok(output)

    def _run_now_api(self, body: Mapping[str, Any]) -> Reply:
        job_id = _int(body.get("job_id"))
        token = body.get("idempotency_token")
        raw = body.get("job_parameters") or {}
        with self._lock:
            self._run_now["served"] += 1
            if job_id not in self._jobs:
                return _error(400, "INVALID_PARAMETER_VALUE", f"Job {body.get('job_id')} does not exist.")
            if token is not None and (not isinstance(token, str) or len(token) > _TOKEN_MAX):
                return _error(
                    400, "INVALID_PARAMETER_VALUE", f"idempotency_token must be at most {_TOKEN_MAX} characters"
                )
            if not isinstance(raw, dict):
                return _error(400, "INVALID_PARAMETER_VALUE", "job_parameters must be an object of strings")
            if token and token in self._by_token:
                run_id = self._by_token[token]  # the documented idempotency: same run, nothing launched
                return _ok({"run_id": run_id, "number_in_job": run_id})
            run = _Run(
                run_id=self._next_run,
                job_id=job_id,
                job_name=self._jobs[job_id],
                token=token or None,
                parameters={str(k): str(v) for k, v in raw.items()},
                created_at=time.time(),
            )
            if self.capacity_failure_rate > 0 and self._capacity_rng.random() < self.capacity_failure_rate:
                run.capacity = self._capacity_rng.choice(self.capacity_codes)
                self._degraded[run.capacity] += 1
            self._next_run += 2  # the run and its one task run
            self._runs[run.run_id] = run
            self._by_task[run.task_run_id] = run.run_id
            if token:
                self._by_token[token] = run.run_id
            self._run_now["launched"] += 1
            log.info("run %d of job %s launched for %s", run.run_id, run.job_name, run.parameters.get("model_name"))
            return _ok({"run_id": run.run_id, "number_in_job": run.run_id})

    def _advance(self, run: _Run, *, train: bool = False) -> bool:
        """Move the run along its clock (under the lock); True when this call must start its training."""
        if run.ended or run.state == "TERMINATING":
            return False
        elapsed = time.time() - run.created_at
        if elapsed < self.job_seconds * 0.2:
            run.state = "PENDING"
            return False
        if run.capacity is not None:
            # Never placed: it ends where it would have started running, without training.
            run.state, run.error = "FAILED", CAPACITY_CODES[run.capacity][2]
            run.ended_at = run.created_at + self.job_seconds * 0.2
            return False
        if elapsed < self.job_seconds or not train:
            run.state = "RUNNING"
            return False
        # Decided under the lock, so concurrent reads start one training only.
        run.state = "TERMINATING"
        return True

    def _complete(self, run: _Run) -> None:
        """The training job's work, off the lock (it talks to MLflow), then the run's end state."""
        with self._lock:
            quality = quality_of(run.parameters.get("data_uri"), lambda: self._quality_rng.randint(0, 100))
            run.quality = quality
        try:
            mlflow_run_id, version = self._trainer.train(run.parameters, quality)
        except Exception as exc:
            message = " ".join(f"{type(exc).__name__}: {exc}".split())[:_MAX_ERROR]
            log.warning("run %d failed: %s", run.run_id, message)
            with self._lock:
                run.state, run.error, run.ended_at = "FAILED", message, time.time()
            return
        with self._lock:
            run.state, run.ended_at = "SUCCESS", time.time()
            run.mlflow_run_id, run.model_version = mlflow_run_id, version
            self._qualities[(run.parameters["model_name"], version)] = quality
        log.info("run %d registered %s v%s (quality %d)", run.run_id, run.parameters["model_name"], version, quality)

    def _states(self, run: _Run) -> tuple[dict[str, Any], dict[str, Any]]:
        """The run's deprecated ``state`` and its Jobs 2.2 ``status``."""
        lifecycle = "TERMINATED" if run.ended else run.state
        state: dict[str, Any] = {
            "life_cycle_state": lifecycle,
            "state_message": "",
            "user_cancelled_or_timedout": False,
        }
        status: dict[str, Any] = {"state": lifecycle}
        if run.capacity is not None and run.ended:
            kind, legacy, message = CAPACITY_CODES[run.capacity]
            state.update(life_cycle_state=legacy, state_message=message)
            if legacy != "SKIPPED":
                state["result_state"] = "FAILED"
            status["termination_details"] = {"code": run.capacity, "type": kind, "message": message}
        elif run.state == "SUCCESS":
            state["result_state"] = "SUCCESS"
            status["termination_details"] = {"code": "SUCCESS", "type": "SUCCESS", "message": ""}
        elif run.state == "FAILED":
            message = f"Task {TASK_KEY} failed with message: Workload failed, see run output for details."
            state.update(result_state="FAILED", state_message=message)
            status["termination_details"] = {"code": "RUN_EXECUTION_ERROR", "type": "CLIENT_ERROR", "message": message}
        elif run.state == "CANCELED":
            state.update(result_state="CANCELED", state_message="Run cancelled.", user_cancelled_or_timedout=True)
            status["termination_details"] = {"code": "USER_CANCELED", "type": "SUCCESS", "message": "Run cancelled."}
        return state, status

    def _task_document(self, run: _Run, *, with_parent: bool = False) -> dict[str, Any]:
        state, status = self._states(run)
        task: dict[str, Any] = {
            "task_key": TASK_KEY,
            "run_id": run.task_run_id,
            "attempt_number": 0,
            "start_time": _ms(run.created_at),
            "end_time": _ms(run.ended_at) if run.ended_at else 0,
            "state": state,
            "status": status,
            "notebook_task": _NOTEBOOK,
        }
        if with_parent:
            task.update(job_id=run.job_id, run_name=run.job_name, parent_run_id=run.run_id)
        return task

    def _run_document(self, run: _Run) -> dict[str, Any]:
        state, status = self._states(run)
        return {
            "job_id": run.job_id,
            "run_id": run.run_id,
            "number_in_job": run.run_id,
            "original_attempt_run_id": run.run_id,
            "creator_user_name": "chaos@example.com",
            "run_name": run.job_name,
            "run_type": "JOB_RUN",
            "trigger": "ONE_TIME",
            "run_page_url": f"{self.url}/#job/{run.job_id}/run/{run.run_id}",
            "start_time": _ms(run.created_at),
            "end_time": _ms(run.ended_at) if run.ended_at else 0,
            "state": state,
            "status": status,
            "tasks": [self._task_document(run)],
            "job_parameters": [{"name": k, "value": v, "default": ""} for k, v in run.parameters.items()],
        }

    # -- Databricks: serving endpoints ----------------------------------------------------------------

    def _settle(self, endpoint: _Endpoint) -> None:
        """Apply the pending config once its update time has passed (under the lock)."""
        if endpoint.pending is None or time.time() < endpoint.apply_at:
            return
        config = endpoint.pending
        for entity in config["served_entities"]:
            entity["state"] = {"deployment": "DEPLOYMENT_READY", "deployment_state_message": ""}
        endpoint.config_version += 1
        config["config_version"] = endpoint.config_version
        config.pop("start_time", None)
        endpoint.config, endpoint.pending, endpoint.updated_at = config, None, time.time()

    def _begin_update(self, endpoint: _Endpoint, body: Mapping[str, Any]) -> Reply | None:
        """Validate a config and start applying it; an error reply when it is refused."""
        entities_in = body.get("served_entities") or body.get("served_models")
        if not isinstance(entities_in, list) or not entities_in:
            return _error(400, "INVALID_PARAMETER_VALUE", "The config must have at least one served entity.")
        active = {e["name"]: e for e in (endpoint.config or {}).get("served_entities", [])}
        entities: list[dict[str, Any]] = []
        for given in entities_in:
            if not isinstance(given, dict) or not (given.get("entity_name") or given.get("model_name")):
                return _error(400, "INVALID_PARAMETER_VALUE", "Each served entity needs an entity_name.")
            entity = {k: v for k, v in given.items() if k != "state"}
            model = entity.get("entity_name") or entity.get("model_name")
            version = str(entity.get("entity_version") or entity.get("model_version") or "")
            entity.setdefault("name", re.sub(r"[^A-Za-z0-9_-]", "-", f"{model}-{version}"))
            old = active.get(entity["name"])
            unchanged = old is not None and all(old.get(k) == v for k, v in entity.items())
            entity["creator"] = "chaos@example.com"
            entity["creation_timestamp"] = old["creation_timestamp"] if old else _ms(time.time())
            entity["state"] = (
                dict(old["state"])
                if unchanged and old is not None
                else {"deployment": "DEPLOYMENT_CREATING", "deployment_state_message": "Creating container image"}
            )
            entities.append(entity)
        names = [e["name"] for e in entities]
        if len(set(names)) != len(names):
            return _error(400, "INVALID_PARAMETER_VALUE", f"Served entity names must be unique: {names}")
        traffic = body.get("traffic_config") or {}
        routes = _routes({"traffic_config": traffic})
        if routes:
            if sum(routes.values()) != 100:
                return _error(400, "INVALID_PARAMETER_VALUE", "The traffic percentages must add up to 100.")
            unknown = sorted(set(routes) - set(names))
            if unknown:
                return _error(400, "INVALID_PARAMETER_VALUE", f"Routes name unknown served entities: {unknown}")
        elif len(entities) == 1:
            traffic = {"routes": [{"served_model_name": names[0], "traffic_percentage": 100}]}
        else:
            return _error(400, "INVALID_PARAMETER_VALUE", "A traffic config is required with several served entities.")
        now = time.time()
        endpoint.pending = {
            "served_entities": entities,
            "traffic_config": traffic,
            "config_version": endpoint.config_version + 1,
            "start_time": _ms(now),
        }
        slow = self.slow_update_rate > 0 and self._update_rng.random() < self.slow_update_rate
        endpoint.apply_at = now + (self.slow_update_seconds if slow else self.update_seconds)
        endpoint.updated_at = now
        self._degraded["updates"] += 1
        self._degraded["slow_updates"] += int(slow)
        endpoint.updates = [
            *endpoint.updates[-9:],
            {"at": now, "entities": names, "routes": _routes({"traffic_config": traffic}), "slow": slow},
        ]
        return None

    def _endpoint_document(self, endpoint: _Endpoint) -> dict[str, Any]:
        ready = endpoint.config is not None and all(
            e["state"]["deployment"] == "DEPLOYMENT_READY" for e in endpoint.config["served_entities"]
        )
        document: dict[str, Any] = {
            "name": endpoint.name,
            "id": endpoint.id,
            "creator": "chaos@example.com",
            "creation_timestamp": _ms(endpoint.created_at),
            "last_updated_timestamp": _ms(endpoint.updated_at),
            "permission_level": "CAN_MANAGE",
            "state": {
                "ready": "READY" if ready else "NOT_READY",
                "config_update": "IN_PROGRESS" if endpoint.pending is not None else "NOT_UPDATING",
            },
        }
        if endpoint.config is not None:
            document["config"] = json.loads(json.dumps(endpoint.config))
        if endpoint.pending is not None:
            document["pending_config"] = json.loads(json.dumps(endpoint.pending))
        return document

    def _serving_api(self, method: str, name: str | None, config_path: bool, body: Any) -> Reply:
        body = body if isinstance(body, dict) else {}
        with self._lock:
            if name is None:
                if method == "GET":
                    for endpoint in self._endpoints.values():
                        self._settle(endpoint)
                    return _ok({"endpoints": [self._endpoint_document(e) for e in self._endpoints.values()]})
                if method != "POST":
                    return _error(405, "BAD_REQUEST", f"{method} is not allowed here")
                name = str(body.get("name") or "")
                if not _ENDPOINT_NAME.match(name):
                    return _error(400, "INVALID_PARAMETER_VALUE", f"Invalid serving endpoint name {name!r}.")
                if name in self._endpoints:
                    return _error(409, "RESOURCE_ALREADY_EXISTS", f"Endpoint with name '{name}' already exists.")
                endpoint = _Endpoint(name=name, id=uuid.uuid4().hex, created_at=time.time())
                refused = self._begin_update(endpoint, body.get("config") or {})
                if refused is not None:
                    return refused
                self._endpoints[name] = endpoint
                log.info("serving endpoint %s created", name)
                return _ok(self._endpoint_document(endpoint))
            found = self._endpoints.get(name)
            if found is None:
                return _error(404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint with name '{name}' does not exist.")
            self._settle(found)
            if config_path:
                if method != "PUT":
                    return _error(405, "BAD_REQUEST", f"{method} is not allowed here")
                if found.pending is not None:
                    return _error(
                        409, "RESOURCE_CONFLICT", f"Endpoint {name} is currently being updated. Please try again later."
                    )
                refused = self._begin_update(found, body)
                return refused or _ok(self._endpoint_document(found))
            if method == "DELETE":
                del self._endpoints[name]
                log.info("serving endpoint %s deleted", name)
                return _ok({})
            if method == "GET":
                return _ok(self._endpoint_document(found))
            return _error(405, "BAD_REQUEST", f"{method} is not allowed here")

    def _invoke(self, name: str, entity_name: str | None, body: Any) -> Reply:
        rows, columns = _rows(body)
        with self._lock:
            endpoint = self._endpoints.get(name)
            if endpoint is None:
                return _error(404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint with name '{name}' does not exist.")
            self._settle(endpoint)
            config = endpoint.config or {"served_entities": []}
            served = {e["name"]: e for e in config["served_entities"]}
            if entity_name is None:
                routes = {k: v for k, v in _routes(config).items() if v > 0 and k in served}
                if not routes:
                    return _error(503, "TEMPORARILY_UNAVAILABLE", f"Endpoint {name} has no served entity ready.")
                entity_name = self._traffic_rng.choices(list(routes), weights=list(routes.values()))[0]
            entity = served.get(entity_name)
            if entity is None or entity["state"]["deployment"] != "DEPLOYMENT_READY":
                return _error(
                    404, "RESOURCE_DOES_NOT_EXIST", f"Served entity {entity_name} is not ready on endpoint {name}."
                )
            endpoint.invocations[entity_name] += 1
            quality = self._qualities.get((str(entity.get("entity_name")), str(entity.get("entity_version"))))
        if rows is None:
            return _error(
                400, "BAD_REQUEST", "The request must have dataframe_split, dataframe_records, inputs or instances."
            )
        if quality is None or not rows:
            return _ok({"predictions": [0.0] * len(rows)})  # not a version this workspace trained
        if "x" not in columns:
            return _error(400, "BAD_REQUEST", "Model is missing inputs ['x'].")
        from signalbox.chaos.synthetic import coefficient

        try:
            return _ok({"predictions": [coefficient(quality) * float(row["x"]) for row in rows]})
        except (TypeError, ValueError):
            return _error(400, "BAD_REQUEST", "Column 'x' must be numeric.")

    # -- routing -----------------------------------------------------------------------------------

    def databricks(self, method: str, path: str, query: Mapping[str, str], body: Any) -> Reply:
        """Answer one Databricks API request (no faults here)."""
        jobs = _JOBS.match(path)
        if jobs:
            action = jobs.group(1)
            wanted = "POST" if action in ("run-now", "runs/cancel") else "GET"
            if method != wanted:
                return _error(405, "BAD_REQUEST", f"{method} {path} is not allowed")
            return self._jobs_api(action, query, body)
        endpoints = _ENDPOINTS.match(path)
        if endpoints:
            return self._serving_api(method, endpoints.group(1), bool(endpoints.group(2)), body)
        invoke = _INVOKE.match(path)
        if invoke and method == "POST":
            return self._invoke(invoke.group(1), invoke.group(2), body)
        return _error(404, "ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'")

    def authorized(self, authorization: str | None) -> bool:
        """Whether a Databricks request carries the workspace's token (any token when none is set)."""
        return self._token is None or authorization == f"Bearer {self._token}"

    def count_run_now(self) -> None:
        """One more ``run-now`` request received (faulted or not)."""
        with self._lock:
            self._run_now["received"] += 1

    def introspect(self, method: str, path: str, body: Any) -> Reply:
        """The ``/chaos/*`` documents."""
        what = path.removeprefix("/chaos/").strip("/")
        if method == "POST" and what == "degrades":
            given = body if isinstance(body, dict) else {}
            try:
                self.set_degrades(
                    capacity_failure_rate=_float_or_none(given.get("capacity_failure_rate")),
                    slow_update_rate=_float_or_none(given.get("slow_update_rate")),
                )
            except (TypeError, ValueError) as exc:
                return _error(400, "INVALID_PARAMETER_VALUE", f"degrades: {exc}")
            return _ok(self.degrades())
        if method == "POST" and what == "faults":
            rate = body.get("rate") if isinstance(body, dict) else None
            try:
                self.set_fault_rate(float(rate))  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:
                return _error(400, "INVALID_PARAMETER_VALUE", f"rate: {exc}")
            return _ok(self.faults())
        documents: dict[str, Callable[[], Any]] = {
            "runs": self.runs,
            "run-now-calls": self.run_now_calls,
            "endpoints": self.endpoints,
            "faults": self.faults,
            "degrades": self.degrades,
        }
        if method != "GET" or what not in documents:
            return _error(404, "ENDPOINT_NOT_FOUND", f"No chaos document {method} {path}")
        return _ok(documents[what]())

    def forward(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send one request to MLflow as it came; (status, headers, body) of its answer."""
        connection = http.client.HTTPConnection(*self._upstream, timeout=_UPSTREAM_TIMEOUT)
        try:
            sent = {name: value for name, value in headers if name.lower() not in _NOT_FORWARDED}
            if body or method in ("POST", "PUT", "PATCH"):
                sent["Content-Length"] = str(len(body))
            connection.request(method, target, body=body or None, headers=sent)
            response = connection.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _NOT_RETURNED]
            return response.status, kept, data
        except OSError as exc:
            message = json.dumps({"error_code": "TEMPORARILY_UNAVAILABLE", "message": f"MLflow unreachable: {exc}"})
            return 502, [("Content-Type", "application/json")], message.encode()
        finally:
            connection.close()


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"the fault rate must be between 0 and 1, not {rate}")


def _float_or_none(value: object) -> float | None:
    return None if value is None else float(str(value))


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return -1


def _routes(config: Mapping[str, Any]) -> dict[str, int]:
    routes = (config.get("traffic_config") or {}).get("routes") or []
    return {
        str(r.get("served_model_name") or r.get("served_entity_name")): int(r.get("traffic_percentage") or 0)
        for r in routes
        if isinstance(r, dict) and (r.get("served_model_name") or r.get("served_entity_name"))
    }


def _rows(body: Any) -> tuple[list[dict[str, Any]] | None, set[str]]:
    """A scoring request's rows as records, and its column names; None when it has no known shape."""
    if not isinstance(body, dict):
        return None, set()
    if isinstance(body.get("dataframe_split"), dict):
        split = body["dataframe_split"]
        columns = [str(c) for c in split.get("columns") or []]
        data = split.get("data") or []
        return [dict(zip(columns, row, strict=False)) for row in data if isinstance(row, list)], set(columns)
    for key in ("dataframe_records", "inputs", "instances"):
        if key in body:
            value = body[key]
            records = value if isinstance(value, list) else [value]
            rows = [r if isinstance(r, dict) else {} for r in records]
            return rows, set().union(*(r.keys() for r in rows)) if rows else set()
    return None, set()


# -- HTTP -------------------------------------------------------------------------------------------


def _handler(workspace: Workspace) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the clients' connection pools expect

        def _body(self) -> bytes:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                chunks: list[bytes] = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, headers: Sequence[tuple[str, str]], data: bytes) -> None:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _reply(self, reply: Reply) -> None:
            status, body, headers = reply
            data = json.dumps(body).encode() if body is not None else b""
            self._send(status, [("Content-Type", "application/json"), *headers.items()], data)

        def _lose(self) -> None:
            # No answer at all: the client sees a timeout (or the connection closed under it).
            workspace._stall()
            self.close_connection = True

        def _fail(self, kind: str) -> None:
            if kind == "429":
                self._reply(_error(429, "REQUEST_LIMIT_EXCEEDED", "chaos: too many requests", {"Retry-After": "1"}))
            elif kind == "500":
                self._reply(_error(500, "INTERNAL_ERROR", "chaos: injected internal error"))
            elif kind == "503":
                self._reply(_error(503, "TEMPORARILY_UNAVAILABLE", "chaos: injected unavailability"))
            else:  # a gateway's 502 is an HTML page, not an API error
                self._send(502, [("Content-Type", "text/html")], b"<html><body><h1>502 Bad Gateway</h1></body></html>")

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            path = parts.path
            raw = self._body()
            if path.startswith("/chaos/"):
                self._reply(workspace.introspect(self.command, path, _json(raw)))
                return
            if path == "/.well-known/databricks-config":
                self._reply(_ok({"workspace_id": "1234567890"}))  # the SDK's best-effort probe: never faulted
                return
            databricks = (path.startswith("/api/") and not re.match(r"^/api/\d\.\d/mlflow", path)) or path.startswith(
                "/serving-endpoints/"
            )
            if path.endswith("/jobs/run-now"):
                workspace.count_run_now()
            fault = workspace._draw("databricks" if databricks else "mlflow")
            if fault == "stall_before":
                self._lose()
                return
            if fault is not None and fault != "stall_after":
                self._fail(fault)
                return
            if databricks:
                if not workspace.authorized(self.headers.get("Authorization")):
                    reply = _error(401, "UNAUTHENTICATED", "Invalid access token.")
                else:
                    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                    reply = workspace.databricks(self.command, path, query, _json(raw))
                if fault == "stall_after":
                    self._lose()
                    return
                self._reply(reply)
                return
            status, headers, data = workspace.forward(self.command, self.path, list(self.headers.items()), raw)
            if fault == "stall_after":
                self._lose()
                return
            self._send(status, headers, data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per request drowns the run's log; faults are counted instead

    return Handler


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


# -- command line -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; prints ``ready`` once listening."""
    parser = argparse.ArgumentParser(prog="python -m signalbox.chaos.workspace", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mlflow-url", required=True, help="the real MLflow server (proxied, and trained into)")
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--stall-seconds", type=float, default=4.0)
    parser.add_argument("--job-seconds", type=float, default=0.5)
    parser.add_argument("--update-seconds", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fault-kinds", default=",".join(FAULT_KINDS), help=f"comma-separated, some of {','.join(FAULT_KINDS)}"
    )
    parser.add_argument("--job", action="append", dest="jobs", help=f"a job name (repeatable; default {DEFAULT_JOB})")
    parser.add_argument("--token", default=None, help="the only bearer token accepted (default: any)")
    parser.add_argument("--capacity-failure-rate", type=float, default=0.0, help="share of runs never placed")
    parser.add_argument(
        "--capacity-codes",
        default=",".join(DEFAULT_CAPACITY_CODES),
        help=f"comma-separated, some of {','.join(CAPACITY_CODES)}",
    )
    parser.add_argument("--slow-update-rate", type=float, default=0.0, help="share of slow config updates")
    parser.add_argument("--slow-update-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        workspace = Workspace(
            args.mlflow_url,
            host=args.host,
            port=args.port,
            fault_rate=args.fault_rate,
            fault_kinds=[k.strip() for k in args.fault_kinds.split(",") if k.strip()],
            stall_seconds=args.stall_seconds,
            job_seconds=args.job_seconds,
            update_seconds=args.update_seconds,
            seed=args.seed,
            jobs=args.jobs or (DEFAULT_JOB,),
            token=args.token,
            capacity_failure_rate=args.capacity_failure_rate,
            capacity_codes=[c.strip() for c in args.capacity_codes.split(",") if c.strip()],
            slow_update_rate=args.slow_update_rate,
            slow_update_seconds=args.slow_update_seconds,
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("fake Databricks workspace and MLflow proxy on %s (MLflow at %s)", workspace.url, args.mlflow_url)
    print("ready", flush=True)
    stop.wait()
    workspace.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
