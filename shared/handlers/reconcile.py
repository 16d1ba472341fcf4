"""Reconciliation: find what the events lost and send the command the event would have sent.

Signalbox's sources are weaker than its queues (an MLflow webhook is retried a few times in memory,
Unity Catalog has no registry webhooks, a poll message can be dead-lettered). Each sweep compares
the registry (or the landing zone) with what Signalbox recorded, and sends what is missing with
the cause the live event has, so a late event and a sweep make one message id and duplicate
detection keeps one:

- **registry**: versions numbered above the model's watermark (``signalbox.reconciled.version``)
  with no decision (``signalbox.decision``), registered longer than the grace period ago, get the
  ``EvaluateVersion`` a webhook would have sent (``new_version``: cause ``version:{model}:{version}``).
  The watermark passes only versions that are decided or sent (and failed registrations), so a
  version within its grace period is read again by the next sweep. One registry search per
  ``PAGE`` new versions (``Registry.versions_after``, tags included), whatever the history.
- **runs**: a launched run keeps a model tag ``signalbox.run.<run id>`` (``note_run``: its backend,
  the attempt of its next poll and when that poll is due) until a poll sees it finish
  (``forget_run``). A run whose next poll is overdue by the grace period has lost its poll chain:
  it gets that poll again (cause ``poll:{run}:sweep:{attempt}``); the chain it starts merges
  with any survivor at the next attempt (``poll:{run}:{attempt + 1}`` is one message id).
- **landing**: ``shared.handlers.landing_sweep``.

The timer sends one ``ReconcileModel`` per catalogue model onto the promote queue (session = the
model), so one sweep per model runs at a time, whatever the number of instances; its cause names
the model and the minute, so timers firing together on several instances send one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from shared import domain
from shared.contracts import Envelope, PollRun, ReconcileModel, Sweep, TrainModel
from shared.domain import LifecycleEvent, Outcome
from shared.errors import TransientError
from shared.handlers.common import known_model, log, start
from shared.handlers.ingress import new_version
from shared.handlers.landing_sweep import sweep_landing

if TYPE_CHECKING:
    from shared.catalogue import ModelEntry
    from shared.services import Services

REGISTRY: Sweep = "registry"
RUNS: Sweep = "runs"
LANDING: Sweep = "landing"
SWEEPS: tuple[Sweep, ...] = (REGISTRY, RUNS, LANDING)
PAGE = 100  # versions per registry search
MOST = 1000  # versions one sweep looks at; the next sweep goes on from the watermark
# The longest registry tag value every registry takes (Unity Catalog: 1,000 characters per value).
_MAX_TAG = 1000
_WAITING = ("PENDING_REGISTRATION",)
_FAILED = ("FAILED_REGISTRATION",)


@dataclass(frozen=True)
class ReconcileReport:
    """What one model's sweeps found and did: counts per sweep."""

    model: str
    dry_run: bool
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # sweep → why it failed

    @property
    def sent(self) -> int:
        """Commands sent (in a dry run: that would be) by every sweep."""
        return sum(v for counts in self.counts.values() for k, v in counts.items() if k.endswith("_sent"))

    def to_dict(self) -> dict[str, object]:
        """The report as JSON-ready data."""
        return {
            "model": self.model,
            "dry_run": self.dry_run,
            "sent": self.sent,
            "counts": self.counts,
            "failed": self.failed,
        }


def reconcile(model: str, svc: Services, *, sweeps: Iterable[Sweep] = SWEEPS, dry_run: bool = False) -> ReconcileReport:
    """Run the chosen sweeps of one catalogue model; publish ``Reconciled`` with their counts (not in a dry run).

    A dry run sends nothing, moves no watermark and publishes nothing: it reports what a sweep would send.
    A sweep that fails leaves the others to run and is reported (``failed``); a transient failure is
    raised after them, so the command is retried (every sweep is idempotent), any other waits for
    the next sweep.
    """
    entry = svc.catalogue.get(model)
    chosen = set(sweeps)
    counts: dict[str, dict[str, int]] = {}
    failed: dict[str, str] = {}
    transient: TransientError | None = None
    read: list[dict[str, str]] = []

    def model_tags() -> dict[str, str]:  # one read for the registry and run sweeps
        if not read:
            read.append(svc.registry.model_tags(entry.name))
        return read[0]

    plan: list[tuple[Sweep, Callable[[], dict[str, int]]]] = [
        (REGISTRY, lambda: sweep_registry(entry, svc, dry_run, tags=model_tags())),
        (RUNS, lambda: sweep_runs(entry, svc, dry_run, tags=model_tags())),
        (LANDING, lambda: sweep_landing(entry, svc, dry_run)),
    ]
    for name, sweep in plan:
        if name not in chosen:
            continue
        try:
            counts[name] = sweep()
        except Exception as exc:  # one sweep's failure must not stop the others
            failed[name] = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("%s sweep of %s failed: %s", name, entry.name, failed[name])
            if isinstance(exc, TransientError) and transient is None:
                transient = exc
    report = ReconcileReport(entry.name, dry_run, counts, failed)
    if not dry_run:
        data: dict[str, object] = {"sent": report.sent, **counts}
        if failed:
            data["failed"] = failed
        svc.events.publish(LifecycleEvent.RECONCILED, entry.name, data)
    if report.sent:
        log.info("reconciled %s%s: %s", entry.name, " (dry run)" if dry_run else "", counts)
    if transient is not None:
        raise transient
    return report


def reconcile_command(envelope: Envelope, svc: Services) -> Outcome:
    """The promote queue's ``ReconcileModel``: sweep the model in its session (a model not catalogued: ignored)."""
    command = envelope.command
    assert isinstance(command, ReconcileModel)
    if known_model(svc, command.model_name) is None:
        return Outcome.IGNORED
    reconcile(command.model_name, svc, sweeps=command.sweeps, dry_run=command.dry_run)
    return Outcome.RECONCILED


def schedule_sweeps(svc: Services, models: Iterable[str] | None = None) -> list[str]:
    """The timer: one ``ReconcileModel`` per catalogue model (or per model named), one per minute whoever sends it."""
    now = svc.clock()
    # The nearest minute: timers of several instances fire within seconds of the same occurrence.
    minute = (now + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M")
    names = list(svc.catalogue.models) if models is None else [svc.catalogue.get(m).name for m in models]
    envelopes = [start(svc, ReconcileModel(model_name=name), cause=f"reconcile:{name}:{minute}") for name in names]
    if envelopes:
        svc.bus.send_many(envelopes)
    return names


# -- registry sweep --------------------------------------------------------------------------------

REGISTRY_COUNTS = ("versions_new", "versions_decided", "versions_sent", "versions_waiting", "versions_failed")


def sweep_registry(
    model: ModelEntry, svc: Services, dry_run: bool = False, *, tags: dict[str, str] | None = None
) -> dict[str, int]:
    """Evaluate every version of ``model`` no announcement reached; counts of what it found and did.

    ``versions_new``: versions above the watermark read; ``versions_decided``: already evaluated;
    ``versions_sent``: evaluate commands sent (or, in a dry run, that would be); ``versions_waiting``:
    registered within the grace period or still registering, left for the next sweep;
    ``versions_failed``: failed registrations, passed over.
    """
    counts = dict.fromkeys(REGISTRY_COUNTS, 0)
    if model.kind != "trained":
        return counts
    tags = svc.registry.model_tags(model.name) if tags is None else tags
    mark = _number(tags.get(domain.RECONCILED_VERSION))
    cut = svc.clock() - timedelta(seconds=svc.settings.reconcile_grace_seconds)
    after, newest, blocked = mark, mark, False
    while counts["versions_new"] < MOST:
        found = svc.registry.versions_after(model.name, str(after), PAGE)
        for version in found:
            counts["versions_new"] += 1
            if domain.DECISION in version.tags:
                counts["versions_decided"] += 1
            elif version.status in _FAILED:
                counts["versions_failed"] += 1
            elif version.status in _WAITING or (version.created_at is not None and version.created_at > cut):
                # The live webhook should still win; the watermark stays below this version.
                counts["versions_waiting"] += 1
                blocked = True
                continue
            else:
                counts["versions_sent"] += 1
                if not dry_run:
                    new_version(model.name, version.version, "reconcile", svc, tags=version.tags)
            if not blocked:
                newest = max(newest, _number(version.version))
        if len(found) < PAGE:
            break
        after = _number(found[-1].version)
    if newest > mark and not dry_run:
        # After the sends: a sweep that dies before here reads these versions again (same message ids).
        svc.registry.set_model_tag(model.name, domain.RECONCILED_VERSION, str(newest))
    return counts


def _number(text: str | None) -> int:
    return int(text) if text and text.isdigit() else 0


# -- run sweep -------------------------------------------------------------------------------------

RUN_COUNTS = ("runs_open", "runs_live", "runs_sent")


def note_run(svc: Services, envelope: Envelope, poll: PollRun, due: datetime) -> None:
    """Record a launched run whose poll ``poll.attempt`` is due at ``due`` (the run sweep's record)."""
    record = {
        "backend": poll.backend,
        "attempt": poll.attempt,
        "due": due.isoformat(),
        "correlation_id": envelope.correlation_id,
        "environment": envelope.environment,
        "commit_sha": poll.commit_sha,
        "repository": poll.repository,
        "launch": poll.launch.model_dump(mode="json") if poll.launch is not None else None,
    }
    text = domain.record(**record)
    if len(text) > _MAX_TAG:  # a long launch command: the sweep's poll then cannot relaunch the run
        text = domain.record(**{**record, "launch": None})
    svc.registry.set_model_tag(poll.model_name, _run_tag(poll.run_id), text)


def forget_run(svc: Services, model_name: str, run_id: str) -> None:
    """The run has ended: the run sweep no longer looks after it."""
    svc.registry.delete_model_tag(model_name, _run_tag(run_id))


def _run_tag(run_id: str) -> str:
    return f"{domain.RUN_TAG_PREFIX}{run_id}"


def sweep_runs(
    model: ModelEntry, svc: Services, dry_run: bool = False, *, tags: dict[str, str] | None = None
) -> dict[str, int]:
    """Poll every launched run of ``model`` whose next poll is overdue by the grace period; counts.

    ``runs_open``: runs recorded and not seen finished; ``runs_live``: their next poll is not
    overdue; ``runs_sent``: polls sent (or, in a dry run, that would be).
    """
    counts = dict.fromkeys(RUN_COUNTS, 0)
    tags = svc.registry.model_tags(model.name) if tags is None else tags
    now = svc.clock()
    grace = timedelta(seconds=svc.settings.reconcile_grace_seconds)
    for key, value in sorted(tags.items()):
        if not key.startswith(domain.RUN_TAG_PREFIX):
            continue
        run_id = key.removeprefix(domain.RUN_TAG_PREFIX)
        record = domain.read_record(value)
        counts["runs_open"] += 1
        due = _time(record.get("due"))
        if due is not None and now <= due + grace:
            counts["runs_live"] += 1
            continue
        envelope = _lost_poll(model, run_id, record, svc)
        if envelope is None:
            continue
        counts["runs_sent"] += 1
        if not dry_run:
            svc.bus.send(envelope)
    return counts


def _lost_poll(model: ModelEntry, run_id: str, record: dict[str, object], svc: Services) -> Envelope | None:
    """The poll a run's lost chain was due to send next, or None (logged) for an unreadable record."""
    attempt = record.get("attempt")
    backend = record.get("backend") or model.training.backend
    launch = record.get("launch")
    try:
        poll = PollRun(
            model_name=model.name,
            backend=str(backend),
            run_id=run_id,
            attempt=attempt if isinstance(attempt, int) and attempt >= 0 else 0,
            commit_sha=_text(record.get("commit_sha")),
            repository=_text(record.get("repository")),
            launch=TrainModel.model_validate(launch) if isinstance(launch, dict) else None,
        )
    except ValueError as exc:
        log.warning("run %s of %s: its record %s cannot make a poll: %s", run_id, model.name, record, exc)
        return None
    environment = _text(record.get("environment"))
    envelope = start(svc, poll, cause=f"poll:{run_id}:sweep:{poll.attempt}", environment=environment)
    correlation = _text(record.get("correlation_id"))
    return envelope.model_copy(update={"correlation_id": correlation}) if correlation else envelope


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
