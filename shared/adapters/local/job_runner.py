"""Runs one local job and records how it ended: ``python -m shared.adapters.local.job_runner JOBDIR -- ARGV...``.

``LocalCompute`` starts this wrapper as the leader of a new session, with stdout and stderr
going to ``JOBDIR/job.log``; the job inherits both and the process group. When the job ends
the wrapper writes its exit code to ``JOBDIR/exit_code`` (negative: killed by that signal), so
any process can later tell a finished job from a running or vanished one. On SIGTERM (a cancel)
the job gets a grace period to stop before it is killed, and the exit code is still written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

__all__ = ["EXIT_CODE", "GRACE_SECONDS", "main", "write_exit_code"]

EXIT_CODE = "exit_code"
GRACE_SECONDS = 10.0
# What a shell reports when the command cannot be started.
_CANNOT_START = 127


class _Terminated(Exception):
    """SIGTERM arrived while waiting for the job."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def write_exit_code(jobdir: Path, code: int) -> None:
    """Record the job's exit code, atomically: readers see no file or the whole number."""
    partial = jobdir / f"{EXIT_CODE}.partial"
    partial.write_text(f"{code}\n", encoding="ascii")
    os.replace(partial, jobdir / EXIT_CODE)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    # The whole group got SIGTERM already; this covers a job that ignores it or was not in the group.
    try:
        proc.terminate()
        return proc.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job after ``--`` and record its exit code in the job directory."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m shared.adapters.local.job_runner JOBDIR -- ARGV...", file=sys.stderr)
        return 2
    jobdir, command = Path(args[0]), args[2:]
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    except OSError as exc:
        print(f"cannot start {command[0]}: {exc}", file=sys.stderr, flush=True)
        write_exit_code(jobdir, _CANNOT_START)
        return 0
    try:
        code = proc.wait()
    except _Terminated:
        code = _stop(proc)
    # The job is over: a late cancel must not stop the exit code from being written.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    write_exit_code(jobdir, code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
