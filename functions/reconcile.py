"""Reconciliation timer: every catalogue model's sweeps, on the NCRONTAB of ``SIGNALBOX_RECONCILE_SCHEDULE``.

The timer only sends one ``ReconcileModel`` per model onto the promote queue (``shared.handlers.
reconcile.schedule_sweeps``); each sweep runs there, in its model's session. Locally:
``POST /admin/functions/reconcile`` fires it by hand, ``signalbox reconcile`` runs the sweeps directly.
"""

from __future__ import annotations

import os

import azure.functions as func

from shared import runtime

bp = func.Blueprint()

SETTING = "SIGNALBOX_RECONCILE_SCHEDULE"
DEFAULT_SCHEDULE = "0 */5 * * * *"  # = shared.settings.Settings.reconcile_schedule's default
# The host resolves %NAME% from app settings; where the setting is absent (a local run without it)
# the default applies rather than a host that refuses to start.
SCHEDULE = f"%{SETTING}%" if os.environ.get(SETTING) else DEFAULT_SCHEDULE


@bp.timer_trigger(arg_name="timer", schedule=SCHEDULE)
def reconcile(timer: func.TimerRequest) -> None:
    """Send each catalogue model's reconciliation sweep to its session."""
    from shared.handlers.common import log
    from shared.handlers.reconcile import schedule_sweeps

    models = schedule_sweeps(runtime.services())
    log.info("reconciliation sweeps sent for %d model(s)%s", len(models), " (past due)" if timer.past_due else "")
