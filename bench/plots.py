"""PNGs from ``bench/results.json``: jobs/s against provider latency and against concurrency, ours and the
peers, with the Little's-law limit; and the scale-out bars.

    python -m bench.plots [--results bench/results.json] [--out bench/plots]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Final

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE: Final = Path(__file__).resolve().parent
STYLE: Final = {
    "ours": {"color": "#1b6ac9", "marker": "o", "linewidth": 2.4},
    "peer (a) SDK + semaphore": {"color": "#d9822b", "marker": "s"},
    "peer (a) SDK + semaphore, aiohttp": {"color": "#b5651d", "marker": "D", "linestyle": "--"},
    "peer (b) cookbook processor": {"color": "#3a9d5d", "marker": "^"},
}


def _points(rows: list[dict[str, Any]], key: str) -> dict[str, list[tuple[float, float, float, float]]]:
    """Contender → sorted (x, median, min, max)."""
    found: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    for row in rows:
        rate = row["jobs_per_s"]
        if rate["runs"]:
            found[row["contender"]].append((float(row[key]), rate["median"], rate["min"], rate["max"]))
    return {name: sorted(points) for name, points in found.items()}


def _draw(axis: Any, points: dict[str, list[tuple[float, float, float, float]]]) -> None:
    for name, series in points.items():
        xs = [p[0] for p in series]
        medians = [p[1] for p in series]
        below = [p[1] - p[2] for p in series]
        above = [p[3] - p[1] for p in series]
        style = STYLE.get(name, {})
        axis.errorbar(xs, medians, yerr=[below, above], label=name, capsize=3, markersize=6, **style)


def latency_plot(throughput: dict[str, Any], out: Path) -> Path:
    rows = list(throughput.get("latency", [])) + list(throughput.get("latency_sweep", []))
    concurrency = rows[0]["concurrency"] if rows else 256
    merged: dict[tuple[str, float], dict[str, Any]] = {}
    for row in rows:  # the main table's rows (several runs) win over sweep points at the same latency
        key = (row["contender"], row["latency_ms"])
        if key not in merged or row["jobs_per_s"]["runs"] > merged[key]["jobs_per_s"]["runs"]:
            merged[key] = row
    figure, axis = plt.subplots(figsize=(8, 5))
    _draw(axis, _points(list(merged.values()), "latency_ms"))
    latencies = sorted({ms for _, ms in merged if ms > 0})
    if latencies:
        xs = [x for x in range(int(min(latencies) * 0.8), int(max(latencies)) + 1, 5) if x > 0]
        axis.plot(xs, [concurrency / (x / 1000) for x in xs], color="grey", linestyle=":", label="Little's law limit")
    axis.set_xscale("symlog", linthresh=50)
    axis.set_xticks([0, 50, 200, 500, 1000], labels=["0", "50", "200", "500", "1000"])
    axis.set_yscale("log")
    axis.set_xlabel("provider latency (ms, symmetric log scale; 0 = overhead-bound)")
    axis.set_ylabel("jobs/s (log scale), median and min-max")
    axis.set_title(f"Throughput against provider latency, concurrency {concurrency}, through Kafka")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    path = out / "jobs_vs_latency.png"
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def concurrency_plot(throughput: dict[str, Any], out: Path) -> Path:
    rows = [row for row in throughput.get("latency", []) if row["latency_ms"] == 1000]
    rows += throughput.get("concurrency", [])
    spec_ms = 1000.0
    figure, axis = plt.subplots(figsize=(8, 5))
    _draw(axis, _points(rows, "concurrency"))
    levels = sorted({row["concurrency"] for row in rows})
    if levels:
        axis.plot(
            levels, [c / (spec_ms / 1000) for c in levels], color="grey", linestyle=":", label="Little's law limit"
        )
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("concurrency (calls in flight)")
    axis.set_ylabel("jobs/s (log scale)")
    axis.set_title("Throughput against concurrency, provider latency 1 s, through Kafka")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    path = out / "jobs_vs_concurrency.png"
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def scaleout_plot(rows: list[dict[str, Any]], cores: int, out: Path) -> Path:
    figure, axis = plt.subplots(figsize=(6, 4))
    workers = [row["workers"] for row in rows]
    medians = [row["jobs_per_s"]["median"] for row in rows]
    errors = [
        [row["jobs_per_s"]["median"] - row["jobs_per_s"]["min"] for row in rows],
        [row["jobs_per_s"]["max"] - row["jobs_per_s"]["median"] for row in rows],
    ]
    axis.bar([str(w) for w in workers], medians, yerr=errors, capsize=4, color="#1b6ac9")
    axis.set_xlabel("worker processes in one group")
    axis.set_ylabel("jobs/s at latency 0")
    axis.set_title(f"Scale-out on {cores} cores shared with broker and simulator")
    axis.grid(True, axis="y", alpha=0.3)
    path = out / "scaleout.png"
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def render(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    made = []
    throughput = results.get("throughput", {})
    if throughput.get("latency"):
        made.append(latency_plot(throughput, out))
        made.append(concurrency_plot(throughput, out))
    if results.get("scaleout"):
        made.append(scaleout_plot(results["scaleout"], results.get("meta", {}).get("cores", 0), out))
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plots", description=__doc__)
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    parser.add_argument("--out", type=Path, default=HERE / "plots")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text(), parse_constant=lambda c: None)
    for path in render(results, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
