"""Fixtures of the security tests; the stack itself is in ``tests/security/stack.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hosting import REPO, start_host
from tests.security.stack import REQUEST_TIMEOUT_SECONDS, SECRETS, TOLERANCE_SECONDS, SecureHost, registered_functions


@pytest.fixture(scope="session")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureHost]:
    """One host for the security tests (signatures, keys, limits, traversal)."""
    state = tmp_path_factory.mktemp("security") / "state"
    names = [f["name"] for f in registered_functions() if f["trigger"] in ("httpTrigger", "eventGridTrigger")]
    env = {
        **SECRETS,
        "SIGNALBOX_CATALOGUE": str(REPO / "catalogue.toml"),
        "SIGNALBOX_WEBHOOK_TOLERANCE_SECONDS": str(TOLERANCE_SECONDS),
    }
    host = start_host(
        state,
        env=env,
        extra_args=("--functions", *names, "--request-timeout", str(REQUEST_TIMEOUT_SECONDS)),
    )
    try:
        yield SecureHost(host=host, state=state)
    finally:
        host.stop()
