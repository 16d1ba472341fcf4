"""Azure Storage and Event Grid: the Blob landing zone and lifecycle events out."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.adapters import Wiring
    from shared.ports import LandingZone, LifecycleEvents


def make_landing(wiring: Wiring) -> LandingZone:
    """A Storage account's containers, read with the app's identity."""
    from shared.adapters.azure.landing import BlobLandingZone

    return BlobLandingZone(account_url=wiring.settings.landing_account_url or None)


def make_events(wiring: Wiring) -> LifecycleEvents:
    """Lifecycle events to an Event Grid custom topic (key, or the app's identity)."""
    from shared.adapters.azure.events import EventGridLifecycleEvents

    settings = wiring.settings
    return EventGridLifecycleEvents(settings.eventgrid_endpoint, key=settings.eventgrid_key or None)
