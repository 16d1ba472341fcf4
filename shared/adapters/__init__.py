"""Adapters: the concrete implementations of the ports in ``shared.ports``, one package per vendor.

Each vendor package's ``__init__`` holds small factories (``make_compute``, ``make_serving``, ...;
not named like the package's modules, which would replace them once imported) that take a
``Wiring`` and import their SDK only when called; ``shared.bootstrap`` lists them in one table per
port, so a new backend is one package plus one table entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.catalogue import Catalogue
    from shared.settings import Settings


@dataclass(frozen=True)
class Wiring:
    """What every adapter factory is built from: the settings and the MLflow URIs chosen for them."""

    settings: Settings
    tracking_uri: str
    registry_uri: str | None
    catalogue: Catalogue | None = None
