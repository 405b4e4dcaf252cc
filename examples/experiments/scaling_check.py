#!/usr/bin/env python
"""Validation against wall-clock minutes for runs side by side: which model size learns most in a given time.

Train every size for the same minutes, on the same thread count and data (examples/train_zonkey.py --with_tracking
--max_train_minutes M --threads T, one process at a time or one per core), then:

    python examples/experiments/scaling_check.py runs/scale/tiny runs/scale/small runs/scale/base \
        --minutes 5 10 15 20 25

prints one table per metric: a row per run (its parameter count), a column per minute mark, in each cell the last
validation logged at or before that mark and, in brackets, the step it was taken at; the last column is the run's
last validation (a run stopped by --max_train_minutes validates once more, just after its last minute). Minutes
count from the run's first logged step (its wall clock, validation included), so a run resumed from a checkpoint
would count the pause: run the check without resuming.
"""

import argparse
import json
from pathlib import Path

from modeling_zonkey.evaluation.pictures import read_scalar_events

METRICS = (("val/byte_accuracy_level0", "level-0 bytes back", "{:.1%}"),
           ("val/byte_accuracy_top", "bytes back from the top", "{:.1%}"),
           ("val/boundary_f1", "word-boundary F1", "{:.3f}"),
           ("val/level1/cosine_t0", "level-1 cosine at t = 0", "{:.3f}"),
           ("val/loss", "validation loss", "{:.2f}"))


def at_minutes(events: dict[str, list[tuple[int, float, float]]], minutes: list[float]) -> dict[str, list]:
    """tag -> for each minute mark, (step, value) of the last event at or before it (None before the first),
    minutes counted from the run's earliest event of any tag; then the tag's last event."""
    start = min(wall for series in events.values() for _, wall, _ in series)
    table = {}
    for tag, series in events.items():
        cells = []
        for mark in minutes:
            seen = [(step, value) for step, wall, value in series if (wall - start) / 60.0 <= mark]
            cells.append(seen[-1] if seen else None)
        table[tag] = cells + [series[-1][::2]]
    return table


def parameters(run: Path) -> str:
    """The parameter count train_results.json records ('?' while the run is still training)."""
    results = run / "train_results.json"
    if results.is_file():
        return f"{json.loads(results.read_text())['num_parameters'] / 1e6:.2f} M"
    return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="output folders of examples/train_zonkey.py --with_tracking")
    parser.add_argument("--minutes", type=float, nargs="+", default=[5, 10, 15, 20, 25])
    args = parser.parse_args()
    if sorted(args.minutes) != args.minutes or args.minutes[0] <= 0:
        raise SystemExit("error: --minutes must be positive and ascending, e.g. --minutes 5 10 15")
    tables = {run: at_minutes(read_scalar_events(run), args.minutes) for run in args.runs}
    sizes = {run: parameters(Path(run)) for run in args.runs}
    for tag, title, form in METRICS:
        print(f"\n{title} ({tag}) at minute:\n")
        print("| run | parameters | " + " | ".join(f"{m:g}" for m in args.minutes) + " | last |")
        print("|---|---:|" + "---:|" * (len(args.minutes) + 1))
        empty = [None] * (len(args.minutes) + 1)
        for run, table in tables.items():
            cells = [f"{form.format(c[1])} ({c[0]})" if c else "-" for c in table.get(tag, empty)]
            print(f"| {run} | {sizes[run]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
