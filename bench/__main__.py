"""Run the benchmark suite and print its table: ``python -m bench [--quick] [--only NAME ...]``.

Each figure is measured in this run on this machine; a ratio compares two sides measured in the
same run. ``--quick`` takes small samples (for the CI smoke: every row printed, no figure judged
by CI). Exit status 1 when a figure could not be measured; a missed goal shows as ``NO``.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable

from bench import cold_start, demo, ingress, landing_sweep, promotion, sweep
from bench.table import Row, render


def _cold_start(quick: bool) -> list[Row]:
    result = cold_start.measure(3 if quick else 15)
    heavy = f"; heavy SDKs imported: {', '.join(result.heavy)}" if result.heavy else ""
    return [
        Row(
            f"cold start: import function_app + indexing ({result.functions} functions) vs import azure.functions",
            f"{result.app_seconds * 1000:.0f} ms{heavy}",
            baseline=f"{result.baseline_seconds * 1000:.0f} ms",
            ratio=f"{result.ratio:.2f}x",
            goal=f"<= {cold_start.GOAL}x",
            met=result.ratio <= cold_start.GOAL and not result.heavy,
        )
    ]


FIGURES: dict[str, tuple[Callable[[bool], list[Row]], tuple[str, ...]]] = {
    "cold-start": (_cold_start, ("cold start",)),
    "ingress": (
        ingress.run,
        ("event accepted", "ingest throughput", "  the same without", "drift storm", "RSS at rest", "RSS under"),
    ),
    "promotion": (promotion.run, ("promotion decision",)),
    "sweep": (sweep.run, ("registry sweep",)),
    "landing-sweep": (landing_sweep.run, ("landing sweep",)),
    "demo": (demo.run, ("signalbox demo",)),
}


def main(argv: list[str] | None = None) -> int:
    """Measure the chosen figures (all by default) and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small samples: a smoke run, not the reference figures")
    parser.add_argument("--only", nargs="+", choices=sorted(FIGURES), default=list(FIGURES))
    args = parser.parse_args(argv)
    rows: list[Row] = []
    failed = False
    for name in args.only:
        measure, figures = FIGURES[name]
        started = time.monotonic()
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        try:
            rows += measure(args.quick)
        except Exception as exc:
            traceback.print_exc()
            failed = True
            rows += [Row(figure, f"FAILED: {type(exc).__name__}: {exc}"[:200], met=False) for figure in figures]
        print(f"  {name} took {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    print(render(rows, quick=args.quick))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
