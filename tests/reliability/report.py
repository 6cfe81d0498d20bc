"""The reliability table: ``python -m tests.reliability.report [--size ci|soak|all] [--latest]``.

Reads ``tests/reliability/results.json`` (the recorded figures the README quotes: written by ``make soak``
or a run with ``PIPELINE_RECORD_RELIABILITY=1``), or with ``--latest`` ``tests/reliability/out/results.json``
(any other run, ``make test`` included), and prints a Markdown table: scenario, jobs, faults injected, lost,
duplicates, and the review breakdown.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping
from typing import Any

from tests.reliability.support import LATEST_RESULTS, RESULTS

#: The order the README lists the scenarios in.
ORDER = ("crash", "rebalance-storm", "broker-stall", "provider-storm", "outage-replay", "bad-input", "security", "soak")


def _order(key: str) -> tuple[int, str]:
    scenario = key.split("/", 1)[0]
    base = scenario.split("[", 1)[0]
    return (ORDER.index(base) if base in ORDER else len(ORDER), key)


def table(results: Mapping[str, Mapping[str, Any]], sizes: Iterable[str] = ("ci", "soak")) -> str:
    wanted = set(sizes)
    rows = [
        "| scenario | size | jobs | faults injected | lost | duplicates | output | review by reason | time |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for key in sorted(results, key=_order):
        entry = results[key]
        if entry["size"] not in wanted:
            continue
        review = ", ".join(f"{reason} {count}" for reason, count in sorted(entry["review"].items())) or "-"
        rows.append(
            f"| {entry['scenario']} | {entry['size']} | {entry['jobs']:,} | {entry['faults']:,} | {entry['lost']} "
            f"| {entry['duplicates']} | {entry['output']:,} | {review} | {entry['seconds']:.0f} s |"
        )
    return "\n".join(rows)


def notes(results: Mapping[str, Mapping[str, Any]], sizes: Iterable[str] = ("ci", "soak")) -> str:
    wanted = set(sizes)
    lines = []
    for key in sorted(results, key=_order):
        entry = results[key]
        if entry["size"] in wanted and entry.get("notes"):
            detail = ", ".join(f"{name} {value}" for name, value in entry["notes"].items())
            lines.append(f"- {entry['scenario']} ({entry['size']}, {entry['at']}): {detail}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", choices=("ci", "soak", "all"), default="all")
    parser.add_argument("--notes", action="store_true", help="also list each scenario's extra figures")
    parser.add_argument(
        "--latest", action="store_true", help="the latest run's figures (out/results.json) instead of the recorded ones"
    )
    args = parser.parse_args()
    sizes = ("ci", "soak") if args.size == "all" else (args.size,)
    path = LATEST_RESULTS if args.latest else RESULTS
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"no results yet: run `make test` or `make soak` first ({path})") from None
    print(table(results, sizes))
    if args.notes:
        print()
        print(notes(results, sizes))


if __name__ == "__main__":
    main()
