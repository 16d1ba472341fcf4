"""Training: launch the model's job, poll it with backoff, hand what it registered to evaluation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from shared import domain
from shared.contracts import Envelope, EvaluateVersion, PollRun, TrainModel
from shared.domain import LifecycleEvent, Outcome
from shared.errors import PermanentError
from shared.handlers.common import log
from shared.handlers.reconcile import forget_run, note_run
from shared.ports import JobRequest

if TYPE_CHECKING:
    from shared.services import Services


def train(envelope: Envelope, svc: Services) -> str:
    """Launch the model's training job (scoring job for rule-based models) and schedule a poll."""
    command = envelope.command
    assert isinstance(command, TrainModel)
    model = svc.catalogue.get(command.model_name)
    compute = svc.compute_for(model)
    data_uri = command.data_uri or svc.registry.model_tags(model.name).get(domain.LATEST_DATA)
    if data_uri is None and model.kind == "trained":
        raise PermanentError(f"model {model.name}: no data has landed yet, so there is nothing to train on")
    if command.reason == "landing" and command.data_uri:
        svc.registry.set_model_tag(model.name, domain.LATEST_DATA, command.data_uri)
    commit = command.commit_sha or svc.code_version.get("commit_sha")
    repository = command.repository or svc.code_version.get("repository")
    tags = {
        domain.CORRELATION_ID: envelope.correlation_id,
        domain.ENVIRONMENT: envelope.environment,
        "signalbox.reason": command.reason,
    }
    if commit:
        tags[domain.COMMIT_SHA] = commit
    if repository:
        tags[domain.REPOSITORY] = repository
    if data_uri:
        tags[domain.DATA_URI] = data_uri
    job = JobRequest(
        model_name=model.name,
        purpose="score" if model.kind == "rule_based" else "train",
        job_reference=model.training.job,
        data_uri=data_uri,
        parameters={**model.training.parameters, **command.parameters},
        tags=tags,
        idempotency_key=envelope.message_id,
    )
    run_id = compute.launch(job)
    log.info("launched %s job %s for %s on %s", job.purpose, run_id, model.name, compute.backend)
    svc.events.publish(
        LifecycleEvent.TRAINING_STARTED,
        model.name,
        {"run_id": run_id, "backend": compute.backend, "purpose": job.purpose, "reason": command.reason},
    )
    poll = PollRun(
        model_name=model.name,
        backend=compute.backend,
        run_id=run_id,
        attempt=0,
        commit_sha=commit,
        repository=repository,
        launch=command,
    )
    delay = domain.backoff(0, svc.settings.poll_initial_seconds, svc.settings.poll_max_seconds)
    svc.bus.send(envelope.follow(poll, cause=f"poll:{run_id}:0", now=svc.clock()), scheduled_at=svc.clock() + delay)
    note_run(svc, envelope, poll, svc.clock() + delay)
    return run_id


def poll_run(envelope: Envelope, svc: Services) -> Outcome:
    """Check a job; reschedule with backoff while it runs, evaluate what it registered when done."""
    command = envelope.command
    assert isinstance(command, PollRun)
    model = svc.catalogue.get(command.model_name)
    compute = svc.compute[command.backend] if command.backend in svc.compute else svc.compute_for(model)
    status = compute.status(command.run_id)
    if status.finished:
        forget_run(svc, model.name, command.run_id)
    if not status.finished:
        attempt = command.attempt + 1
        if attempt >= svc.settings.poll_max_attempts:
            compute.cancel(command.run_id)
            forget_run(svc, model.name, command.run_id)
            _record_failure(svc, model.name, command.run_id, f"gave up after {attempt} polls; job cancelled")
            return Outcome.GAVE_UP
        delay = domain.backoff(attempt, svc.settings.poll_initial_seconds, svc.settings.poll_max_seconds)
        follow = command.model_copy(update={"attempt": attempt})
        svc.bus.send(
            envelope.follow(follow, cause=f"poll:{command.run_id}:{attempt}", now=svc.clock()),
            scheduled_at=svc.clock() + delay,
        )
        note_run(svc, envelope, follow, svc.clock() + delay)
        return Outcome(status.state)
    launch = command.launch
    relaunchable = launch is not None and launch.relaunch < svc.settings.retry_max_attempts
    if status.state != "succeeded" and status.retryable and launch is not None and relaunchable:
        return _relaunch(envelope, command, launch, status.message, svc)
    if status.state != "succeeded":
        _record_failure(svc, model.name, command.run_id, f"job {status.state}: {status.message or 'no message'}")
        return Outcome(status.state)
    if model.kind == "rule_based":
        svc.events.publish(LifecycleEvent.SCORING_COMPLETED, model.name, {"run_id": command.run_id, **status.outputs})
        return Outcome.SCORED
    versions = _registered_versions(svc, model.name, status.outputs)
    if not versions:
        _record_failure(svc, model.name, command.run_id, "job succeeded but registered no model version")
        return Outcome.NO_VERSION
    svc.events.publish(LifecycleEvent.TRAINING_SUCCEEDED, model.name, {"run_id": command.run_id, "versions": versions})
    for version in versions:
        evaluate = EvaluateVersion(model_name=model.name, version=version, source=f"job:{command.run_id}")
        svc.bus.send(envelope.follow(evaluate, cause=f"version:{model.name}:{version}", now=svc.clock()))
    return Outcome.EVALUATE


def _relaunch(envelope: Envelope, poll: PollRun, launch: TrainModel, why: str | None, svc: Services) -> Outcome:
    """A run the platform could not place (capacity, a cloud failure): launch it again, later.

    The relaunch is a new message caused by the failed run, so its idempotency key (its message id)
    starts a new run where the failed run's key would return the failed run.
    """
    relaunch = launch.relaunch + 1
    again = launch.model_copy(update={"relaunch": relaunch})
    delay = domain.retry_delay(relaunch, svc.settings.retry_initial_seconds, svc.settings.retry_max_seconds, spread=0.5)
    svc.bus.send(
        envelope.follow(again, cause=f"relaunch:{poll.backend}:{poll.run_id}", now=svc.clock()),
        scheduled_at=svc.clock() + delay,
    )
    log.warning(
        "%s run %s of %s ended without running (%s); relaunch %d of %d in %.0f s",
        poll.backend,
        poll.run_id,
        poll.model_name,
        why or "no message",
        relaunch,
        svc.settings.retry_max_attempts,
        delay.total_seconds(),
    )
    return Outcome.RETRYING


def _registered_versions(svc: Services, model_name: str, outputs: Mapping[str, str]) -> list[str]:
    if outputs.get("model_version"):
        return [outputs["model_version"]]
    run = outputs.get("mlflow_run_id")
    if not run:
        return []
    return [v.version for v in svc.registry.versions_of_run(run) if v.model_name == model_name]


def _record_failure(svc: Services, model_name: str, run_id: str, reason: str) -> None:
    svc.registry.set_model_tag(
        model_name, domain.LAST_FAILURE, domain.record(run_id=run_id, reason=reason, at=svc.clock())
    )
    svc.events.publish(LifecycleEvent.TRAINING_FAILED, model_name, {"run_id": run_id, "reason": reason})
    log.warning("model %s run %s: %s", model_name, run_id, reason)
