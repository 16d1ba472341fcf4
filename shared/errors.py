"""Every error Signalbox raises on purpose, in one tree.

``SignalboxError``
├── ``TransientError``   retry later: throttling (429), a 5xx, a timeout, a resource mid-update
├── ``PermanentError``   no retry can fix it; the message says what to fix (dead-letters at once)
│   └── ``DeploymentFailed``   the new version cannot serve (did not start, unhealthy, smoke test
│                                failed): the deploy handler rolls it back
├── ``InvalidInput``     a caller's input is wrong (HTTP 400, a refused event, a dead-lettered body)
└── ``UnknownModel`` / ``NotAwaitingApproval`` (``ModelHeld``) / ``RollbackRefused``   domain refusals (HTTP 404 / 409)

Adapters translate SDK errors into these, so handlers and functions never inspect SDK exceptions.
The input errors of each module (``ContractError``, ``InvalidEvent``, ``WebhookRejected``,
``CatalogueError``, ``SettingsError``, ``ConfirmationRequired``) derive from ``InvalidInput``.
"""

from __future__ import annotations


class SignalboxError(Exception):
    """The root of Signalbox's own errors."""


class TransientError(SignalboxError):
    """Throttling (429), a 5xx or a timeout: the same message may succeed later."""


class PermanentError(SignalboxError):
    """Configuration or a missing entity (403, 404, bad input): no retry can fix it; say what to fix."""


class DeploymentFailed(PermanentError):
    """The version itself cannot serve (start failed, unhealthy, smoke test refused): roll it back.

    Raised by serving adapters only for failures of the deployed model, never for configuration
    (credentials, quota, a taken endpoint name), which are plain ``PermanentError``.
    """


class InvalidInput(SignalboxError, ValueError):
    """Input from outside is malformed or refused; the message names the field and what is wrong."""


class UnknownModel(SignalboxError, LookupError):
    """The model is not in the catalogue."""

    def __init__(self, model_name: str, catalogue: str, known: list[str]) -> None:
        listed = ", ".join(known) or "none"
        super().__init__(f"model {model_name!r} is not in the catalogue {catalogue} (known: {listed})")
        self.model_name = model_name


class UnknownVersion(SignalboxError, LookupError):
    """The registry has no such version of the model."""


class NotAwaitingApproval(SignalboxError):
    """An approval or rejection for a version that is not staged and pending approval."""


class ModelHeld(NotAwaitingApproval):
    """An approval of a model an operator holds (HTTP 409, with the hold's reason)."""


class RollbackRefused(SignalboxError):
    """A rollback the model's state does not allow (HTTP 409): nothing to roll back to, a version that
    never served, model files gone."""
