"""Stages, aliases, decision records and the evaluation verdict: the lifecycle's rules.

The registry is the system of record. A version's ``stage`` tag is one of
``staged``/``unstaged``/``production``/``surpassed`` (missing: never made it through
evaluation); aliases ``champion`` (= production) and ``challenger`` point at versions.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from shared.catalogue import Evaluation
    from shared.ports import ModelVersion


class Stage(StrEnum):
    """Values of a version's ``stage`` tag."""

    STAGED = "staged"
    UNSTAGED = "unstaged"
    PRODUCTION = "production"
    SURPASSED = "surpassed"


class Approval(StrEnum):
    """Values of a version's ``approval`` tag."""

    PENDING = "pending"
    APPROVED = "approved"
    AUTO = "auto"
    REJECTED = "rejected"


class LifecycleEvent(StrEnum):
    """Signalbox's own events (published as ``io.signalbox.<value>``; subscriptions filter on them)."""

    DATA_LANDED = "DataLanded"
    DATA_REFUSED = "DataRefused"
    EVENT_REFUSED = "EventRefused"
    DRIFT_DETECTED = "DriftDetected"
    TRAINING_STARTED = "TrainingStarted"
    TRAINING_SUCCEEDED = "TrainingSucceeded"
    TRAINING_FAILED = "TrainingFailed"
    SCORING_COMPLETED = "ScoringCompleted"
    VERSION_EVALUATED = "VersionEvaluated"
    CHALLENGER_LOST = "ChallengerLost"
    VERSION_STAGED = "VersionStaged"
    APPROVAL_REQUESTED = "ApprovalRequested"
    VERSION_APPROVED = "VersionApproved"
    APPROVAL_REJECTED = "ApprovalRejected"
    VERSION_DEPLOYED = "VersionDeployed"
    DEPLOYMENT_ROLLED_BACK = "DeploymentRolledBack"
    BATCH_SCORING_STARTED = "BatchScoringStarted"
    ROLLBACK_REQUESTED = "RollbackRequested"
    MODEL_ROLLED_BACK = "ModelRolledBack"
    ROLLBACK_FAILED = "RollbackFailed"
    MODEL_HELD = "ModelHeld"
    MODEL_RELEASED = "ModelReleased"
    RECONCILED = "Reconciled"


class Outcome(StrEnum):
    """What a handler did with one event or command (logged, returned over HTTP, asserted in tests)."""

    # ingress
    IGNORED = "ignored"
    REFUSED = "refused"
    TRAIN = "train"
    EVALUATE = "evaluate"
    POLL = "poll"
    NO_DATA = "no-data"
    COOLDOWN = "cooldown"
    APPROVED = "approved"
    REJECTED = "rejected"
    # training
    PENDING = "pending"
    RUNNING = "running"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETRYING = "retrying"
    GAVE_UP = "gave-up"
    SCORED = "scored"
    NO_VERSION = "no-version"
    # evaluation and promotion
    NOT_EVALUATED = "not-evaluated"
    ALREADY_EVALUATED = "already-evaluated"
    IS_CHAMPION = "is-champion"
    WON = "won"
    LOST = "lost"
    KEPT_STAGED = "kept-staged"
    PENDING_APPROVAL = "pending-approval"
    DEPLOY = "deploy"
    ALREADY_PRODUCTION = "already-production"
    ALREADY_SURPASSED = "already-surpassed"
    ALREADY_UNSTAGED = "already-unstaged"
    # deployment
    SKIPPED = "skipped"
    BATCH = "batch"
    STARTING = "starting"
    DEPLOYED = "deployed"
    SUPERSEDED = "superseded"
    ROLLED_BACK = "rolled-back"
    RETIRED = "retired"
    SWITCHING = "switching"
    # operator actions
    QUEUED = "queued"
    HELD = "held"
    ALREADY_HELD = "already-held"
    RELEASED = "released"
    NOT_HELD = "not-held"
    REVERTED = "reverted"
    REVERT_FAILED = "revert-failed"
    # reconciliation
    RECONCILED = "reconciled"


STAGE = "stage"
APPROVAL = "approval"
APPROVED_BY = "approved_by"
CHAMPION = "champion"
CHALLENGER = "challenger"
DECISION = "signalbox.decision"
DEPLOYMENT = "signalbox.deployment"
COMMIT_SHA = "signalbox.commit_sha"
REPOSITORY = "signalbox.repository"
DATA_URI = "signalbox.data_uri"
CORRELATION_ID = "signalbox.correlation_id"
ENVIRONMENT = "signalbox.environment"
# Registered-model tags.
LAST_DRIFT_TRAINING = "signalbox.drift.last_training_at"
LAST_REFUSAL = "signalbox.last_refusal"
LAST_FAILURE = "signalbox.last_failure"
LATEST_DATA = "signalbox.data.latest"
# The model's hold: a record (by, reason, at, request_id; ``released`` once released). Never deleted,
# so the last release stays readable; held = a record without ``released``.
HOLD = "signalbox.hold"
# On a version an operator rolled back from: who, why, when, to which version (its stage: ``unstaged``).
ROLLBACK = "signalbox.rollback"
OUTCOME = "signalbox.outcome"
# The registry sweep's watermark on the registered model: every version at or below it is decided or sent.
RECONCILED_VERSION = "signalbox.reconciled.version"
# One registered-model tag per launched run not yet seen finished (``signalbox.run.<run id>``): a record
# of its backend and when its next poll is due, so the run sweep finds a run whose poll was lost.
RUN_TAG_PREFIX = "signalbox.run."


# The registries keep version numbers in 32-bit integer columns.
MAX_VERSION_NUMBER = 2**31 - 1


def version_number(text: str) -> str:
    """A version number in its one spelling ("007" is "7"); ``ValueError`` unless 1 to 2**31 - 1.

    Ingress derives message ids from the version, so two spellings of one version must not
    become two causes (two evaluations, two promotions of the same decision).
    """
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= MAX_VERSION_NUMBER:
        raise ValueError(f"not a version number (1 to {MAX_VERSION_NUMBER}): {text[:40]!r}")
    return str(int(text))


def record(**fields: object) -> str:
    """A compact JSON decision record for a tag (MLflow tag values are strings)."""
    return json.dumps(fields, sort_keys=True, default=str, separators=(",", ":"))


def read_record(text: str | None) -> dict[str, object]:
    """A decision record back from its tag; {} when absent or unreadable."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def hold_of(model_tags: Mapping[str, str]) -> dict[str, object] | None:
    """The model's hold record (by, reason, at) while it is held; None when it is not."""
    hold = read_record(model_tags.get(HOLD))
    if not hold or hold.get("released"):
        return None
    return {key: hold.get(key) for key in ("by", "reason", "at", "request_id")}


def stage_of(version: ModelVersion) -> Stage | None:
    """The version's stage, None when it has none (or an unknown value)."""
    try:
        return Stage(version.tags.get(STAGE, ""))
    except ValueError:
        return None


def with_stage(versions: list[ModelVersion], stage: Stage) -> list[ModelVersion]:
    """The versions currently in ``stage``."""
    return [v for v in versions if stage_of(v) is stage]


@dataclass(frozen=True)
class Verdict:
    """The outcome of one evaluation, recorded on the challenger."""

    won: bool
    reason: str
    primary_metric: str
    direction: str
    challenger: dict[str, float]
    champion: dict[str, float] | None
    champion_version: str | None
    min_improvement: float
    guardrails: dict[str, float]

    def to_tag(self) -> str:
        """The decision record as the tag value."""
        return record(**asdict(self))


def _better(a: float, b: float, direction: str) -> float:
    """How much better ``a`` is than ``b`` (positive = better)."""
    return a - b if direction == "maximize" else b - a


def judge(
    evaluation: Evaluation,
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    champion_version: str | None,
) -> Verdict:
    """Decide whether the challenger beats the champion (first version wins with no champion)."""
    metric, direction = evaluation.primary_metric, evaluation.direction

    def verdict(won: bool, reason: str) -> Verdict:
        return Verdict(
            won=won,
            reason=reason,
            primary_metric=metric,
            direction=direction,
            challenger=challenger,
            champion=champion,
            champion_version=champion_version,
            min_improvement=evaluation.min_improvement,
            guardrails=dict(evaluation.guardrails),
        )

    for name, bound in evaluation.guardrails.items():
        value = challenger[name]
        # A guardrail is a floor for maximised metrics and a ceiling for minimised ones.
        if (direction == "maximize" and value < bound) or (direction == "minimize" and value > bound):
            return verdict(False, f"guardrail {name}={value:.4f} breaks its bound {bound}")
    if champion is None:
        return verdict(True, f"first version: no champion; {metric}={challenger[metric]:.4f}")
    gain = _better(challenger[metric], champion[metric], direction)
    numbers = f"{metric} {challenger[metric]:.4f} vs champion v{champion_version} {champion[metric]:.4f}"
    if gain > evaluation.min_improvement or (evaluation.min_improvement == 0 and gain > 0):
        return verdict(True, f"{numbers}: better by {gain:.4f} (needed > {evaluation.min_improvement})")
    return verdict(False, f"{numbers}: not better by more than {evaluation.min_improvement}")


def primary_score(version: ModelVersion) -> float | None:
    """The challenger's primary metric from its decision record."""
    decision = read_record(version.tags.get(DECISION))
    scores = decision.get("challenger")
    metric = decision.get("primary_metric")
    if isinstance(scores, dict) and isinstance(metric, str) and metric in scores:
        return float(scores[metric])
    return None


def beats(new: ModelVersion, staged: ModelVersion) -> bool:
    """Whether a new winner should replace the staged one (ties go to the newer version)."""
    new_score, old_score = primary_score(new), primary_score(staged)
    if new_score is None or old_score is None:
        return True
    direction = str(read_record(new.tags.get(DECISION)).get("direction", "maximize"))
    return _better(new_score, old_score, direction) >= 0


def in_cooldown(last: str | None, now: datetime, cooldown: timedelta) -> bool:
    """Whether a drift training ran within the cooldown."""
    if not last:
        return False
    try:
        previous = datetime.fromisoformat(last)
    except ValueError:
        return False
    return now - previous < cooldown


def backoff(attempt: int, initial: float, maximum: float) -> timedelta:
    """Delay before poll ``attempt`` (exponential, capped)."""
    return timedelta(seconds=min(initial * (2 ** min(attempt, 20)), maximum))


def retry_delay(retry: int, initial: float, maximum: float, spread: float) -> timedelta:
    """Delay before transient retry ``retry`` (1, 2, ...): exponential, capped, with jitter.

    ``spread`` in [0, 1) picks a point in the upper half of the window ("equal jitter"), so
    retries of many messages failing together do not arrive together again.
    """
    window = backoff(retry - 1, initial, maximum).total_seconds()
    return timedelta(seconds=window / 2 + window / 2 * spread)
