"""What every test shares: the process environment comes back as the test found it.

Code under test sets variables in its own process (``bound_http_defaults``, MLflow's request auth and
SDK switches, the CLI's ``local.settings.json``), and tests share worker processes file after file:
a variable one test leaves must not reach the next, or the subprocesses it starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)
