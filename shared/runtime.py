"""The function app's access to its services, built on first use.

Kept free of heavy imports: functions import this at indexing time, and the
composition root (with pydantic, MLflow clients, ...) loads on the first invocation.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.services import Services

_lock = threading.Lock()
_services: Services | None = None


def services() -> Services:
    """The wired services (bootstrapped once per process)."""
    global _services
    if _services is None:
        with _lock:
            if _services is None:
                from shared.bootstrap import bootstrap

                _services = bootstrap()
    return _services


def override(value: Services | None) -> None:
    """Use these services instead (tests), or forget them so the next call rebuilds."""
    global _services
    with _lock:
        _services = value
