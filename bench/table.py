"""The benchmark table: one row per figure, printed with the date and the machine."""

from __future__ import annotations

import math
import os
import platform
import statistics
from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class Row:
    """One figure: what was measured, against what, and whether its goal holds (None: report only)."""

    figure: str
    measured: str
    baseline: str = "-"
    ratio: str = "-"
    goal: str = "-"
    met: bool | None = None


def cpu_model() -> str:
    """The CPU model name as the kernel reports it (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """CPU model, cores and Python version, for the table's header."""
    return f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()}; Python {platform.python_version()}"


def percentile(samples: list[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank), e.g. 0.99 for p99."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def median(samples: list[float]) -> float:
    """The median."""
    return statistics.median(samples)


def render(rows: list[Row], *, quick: bool) -> str:
    """The table as Markdown (it reads as plain text too), with its header lines."""
    header = ("figure", "measured", "baseline", "ratio", "goal", "met?")
    cells = [
        (r.figure, r.measured, r.baseline, r.ratio, r.goal, "report" if r.met is None else "yes" if r.met else "NO")
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *cells]) for i in range(len(header))]

    def line(values: tuple[str, ...]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    out = [
        f"Signalbox benchmarks{' (--quick: smaller samples, not the reference figures)' if quick else ''}",
        f"date: {date.today().isoformat()}; machine: {machine()}",
        "",
        line(header),
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        *(line(c) for c in cells),
    ]
    return "\n".join(out)
