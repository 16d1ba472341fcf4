"""How a failure should be treated: retried, or sent to the operator.

Adapters translate their SDK's errors into these two, so handlers and functions never
inspect SDK exceptions. Both propagate out of a Service Bus function, which abandons the
message: a ``TransientError`` usually succeeds on a later delivery; a ``PermanentError``
rides MaxDeliveryCount into the dead-letter queue, its message saying what to fix.
"""

from __future__ import annotations


class TransientError(RuntimeError):
    """Throttling (429), a 5xx or a timeout: the same message may succeed later."""


class PermanentError(RuntimeError):
    """Configuration or a missing entity (403, 404, bad input): no retry can fix it; say what to fix."""
