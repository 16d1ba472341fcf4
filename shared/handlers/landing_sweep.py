"""The landing sweep: a file whose BlobCreated never reached Signalbox still gets its one training.

For one catalogue model it lists the files under the model's container and prefix last modified
after the model's watermark (``signalbox.reconciled.landing``), oldest first, a page at a time,
and sends each untrained one a ``TrainModel`` whose cause is the one its BlobCreated event has
(``landing_cause``: the file's name and ETag). A late event and the sweep therefore send one
message id, and the train queue's duplicate detection keeps one training.

The record of "already trained", O(new files):

- files last modified at or before the watermark were handled by an earlier sweep: the watermark
  only passes files a listing returned at least ``grace`` after they were written. A sweep still
  resumes ``OVERLAP`` early (storage times have one-second resolution and storage's clock is not
  ours) and sends those files again under the same message id, for duplicate detection to drop;
- a file last modified within the train queue's duplicate-detection window (less ``MARGIN``):
  any train command for it was sent after it was written, so within the window, and the same
  message id is dropped; nothing is read for it;
- an older file (the sweep did not run for a day): trained if a registered version carries it
  as ``signalbox.data_uri`` (the training job tags its run and version), one registry search each.

A model never swept starts one duplicate-detection window back: older files are not retrained,
since nothing could prove they were not already (a first sweep never floods the train queue); and
it looks every file of that day up in the registry, since a training sent before the sweeps
existed (under another cause) is not in duplicate detection under this one.
Files written less than ``grace`` ago wait for the next sweep (a local file may still be copied).
Empty files are counted and left, as ``land_blob`` refuses them. Safe to repeat and to run
concurrently: every command it sends has the same id whoever sends it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from shared import domain, queues
from shared.contracts import TrainModel
from shared.handlers.common import log, start
from shared.handlers.ingress import landing_cause

if TYPE_CHECKING:
    from shared.catalogue import ModelEntry
    from shared.contracts import Envelope
    from shared.ports import LandedFile
    from shared.services import Services

WATERMARK = "signalbox.reconciled.landing"  # model tag: last_modified (ISO 8601) of the newest file swept
OVERLAP = timedelta(seconds=5)  # resume this much before the watermark (storage times: 1 s resolution)
MARGIN = timedelta(hours=1)  # files this close to the end of the duplicate window are checked in the registry
GRACE = timedelta(seconds=30)  # files written this recently wait for the next sweep (a local copy may be under way)
# Files per listing: a listing reads every blob of the partitions it enters whatever the page, so a
# burst is best taken in one call (List Blobs' own page is 5,000).
PAGE = 5000

COUNTS = ("files_listed", "files_new", "files_sent", "files_trained", "files_empty", "files_waiting", "files_overlap")


def sweep_landing(
    model: ModelEntry, svc: Services, dry_run: bool = False, *, grace: timedelta = GRACE, page: int = PAGE
) -> dict[str, int]:
    """Send a training for every file of ``model`` that landed with none; counts of what it found and did.

    ``files_listed``: files the listings returned; ``files_new``: this model's files past the
    watermark, settled; ``files_sent``: their train commands sent (a repeat is dropped by duplicate
    detection) or, in a dry run, that would be; ``files_trained``: new files a registered version
    already records; ``files_empty``: left as ``land_blob`` would refuse them; ``files_waiting``:
    newer than ``grace``, left for the next sweep; ``files_overlap``: files at the watermark's
    last seconds listed again, their commands sent again for duplicate detection to drop. A dry run
    sends nothing and keeps the watermark.
    """
    counts = dict.fromkeys(COUNTS, 0)
    now = svc.clock()
    window = queues.QUEUES[queues.TRAIN].duplicate_detection_window
    mark = _parse(svc.registry.model_tags(model.name).get(WATERMARK))
    after = mark - OVERLAP if mark is not None else now - window
    cut = now - grace
    # Sent within the duplicate window for sure: written after this, so sent after it too.
    fresh = now - max(window - MARGIN, timedelta(0))
    newest = mark
    while True:
        try:
            files = svc.landing.list_since(model.data.container, model.data.prefix, after, page)
        except OSError as exc:  # the container is not there (yet): nothing has landed to sweep
            log.info("landing sweep of %s: nothing to list: %s", model.name, exc)
            break
        counts["files_listed"] += len(files)
        settled = [f for f in files if f.last_modified <= cut]
        counts["files_waiting"] += len(files) - len(settled)
        envelopes = [e for f in settled if (e := _command(model, f, mark, fresh, svc, counts)) is not None]
        if envelopes and not dry_run:
            svc.bus.send_many(envelopes)
        if settled and (newest is None or settled[-1].last_modified > newest):
            newest = settled[-1].last_modified
            if not dry_run:
                # After the sends: a sweep that fails before here lists these files again.
                svc.registry.set_model_tag(model.name, WATERMARK, newest.isoformat())
        if len(files) < page or len(settled) < len(files):
            break
        after = files[-1].last_modified  # within one sweep no overlap is needed: the page took that second whole
    if any(counts[k] for k in ("files_sent", "files_waiting", "files_empty")):
        log.info("landing sweep of %s%s: %s", model.name, " (dry run)" if dry_run else "", counts)
    return counts


def _command(
    model: ModelEntry,
    landed: LandedFile,
    mark: datetime | None,
    fresh: datetime,
    svc: Services,
    counts: dict[str, int],
) -> Envelope | None:
    """The train command of one listed file, or None (counted) when it needs none."""
    owner = svc.catalogue.for_blob(landed.container, landed.path)
    if owner is None or owner.name != model.name:
        return None  # under a longer prefix that another model owns: its own sweep sees it
    if mark is not None and landed.last_modified <= mark:
        # Seen by the last sweep unless storage's clock ran ahead of ours: sent again under the same
        # id while duplicate detection still holds it; past that, a resend could train it twice.
        counts["files_overlap"] += 1
        if landed.size == 0 or landed.last_modified < fresh:
            return None
    else:
        counts["files_new"] += 1
        if landed.size == 0:
            counts["files_empty"] += 1
            return None
        # A first sweep checks every file: commands sent before the sweeps existed may have had other causes.
        stale = mark is None or landed.last_modified < fresh
        if stale and svc.registry.versions_with_tag(model.name, domain.DATA_URI, landed.uri):
            counts["files_trained"] += 1
            return None
        counts["files_sent"] += 1
    # A listing without ETags (no adapter of ours) still trains, once per write time.
    cause = landing_cause(landed.container, landed.path, landed.etag) or (
        f"blob:{landed.container}/{landed.path}@{landed.last_modified.isoformat()}"
    )
    return start(svc, TrainModel(model_name=model.name, reason="landing", data_uri=landed.uri), cause=cause)


def _parse(value: str | None) -> datetime | None:
    """The watermark tag's time, or None when it is absent or not an aware ISO time (swept as never)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        log.warning("landing watermark %r is not an ISO time; sweeping as if never swept", value)
        return None
    return parsed if parsed.tzinfo is not None else None
