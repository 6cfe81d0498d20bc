"""End-to-end throughput through Kafka: jobs published → every result on the output or review topic.

Contenders, all at the same concurrency (``PIPELINE_CONCURRENCY``, 256 unless swept), the same jobs, the
same ``moderation`` parameter and the same routing outcome (checked: every run must route the same jobs to
review):

- ``ours``: the real worker (``bench.ours`` = ``pipeline run``), default settings;
- ``peer (a)``: aiokafka + the official ``AsyncOpenAI`` client behind a semaphore, commit per batch — with
  the SDK's default HTTP client (httpx) and with its aiohttp client;
- ``peer (b)``: the OpenAI cookbook's parallel request processor fed from and to Kafka.

Sections (each figure the median of ``runs`` runs, with the spread):

- ``latency``: simulator latency 0 (overhead-bound), 200 ms and 1 s (latency-bound), against the Little's-law
  limit concurrency ÷ latency;
- ``sweep``: latencies 50 ms and 500 ms (one run per point; the plot's data);
- ``concurrency``: 1 s latency, concurrency swept (one run per point; the plot's data);
- ``transport``: ours at latency 0 with aiohttp / httpx / httpx over httpx-aiohttp, asyncio loop and uvloop.

    python -m bench.pipeline_throughput [--quick] [--section latency|concurrency|transport] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from collections.abc import Sequence
from typing import Any, Final

from bench.harness import (
    OURS,
    PEER_COOKBOOK,
    PEER_SDK,
    PEER_SDK_AIOHTTP,
    Contender,
    RunResult,
    Services,
    Summary,
    expected_reviews,
    make_jobs,
    ours,
    run_once,
)

CONCURRENCY: Final = 256
#: Rough jobs/s of each contender when nothing waits (sizes the job sets so runs last about as long).
OVERHEAD_RATE: Final = {
    OURS.name: 1800.0,
    PEER_SDK.name: 150.0,
    PEER_SDK_AIOHTTP.name: 400.0,
    PEER_COOKBOOK.name: 650.0,
}
CONTENDERS: Final = (OURS, PEER_SDK, PEER_SDK_AIOHTTP, PEER_COOKBOOK)
#: Rough jobs/s of our worker on each HTTP transport (sizes the transport section's job sets).
TRANSPORT_RATE: Final = {"aiohttp": 1800.0, "httpx": 200.0, "httpx-aiohttp": 1000.0}


def latency_ms(spec: str) -> float:
    return float(spec.split(":")[1]) if ":" in spec else 0.0


def little_limit(concurrency: int, spec: str) -> float:
    """Jobs/s that ``concurrency`` calls in flight allow at the given latency (infinite at 0)."""
    ms = latency_ms(spec)
    return concurrency / (ms / 1000) if ms else math.inf


def job_count(contender: Contender, spec: str, concurrency: int, seconds: float, waves: int = 8) -> int:
    """Enough jobs for about ``seconds`` of steady state: at least ``waves`` rounds of the concurrency (the
    first is not measured) and a whole number of them."""
    overhead = OVERHEAD_RATE.get(contender.name) or TRANSPORT_RATE.get(contender.argv[-1], 1000.0)
    rate = min(overhead, little_limit(concurrency, spec))
    return concurrency * max(waves, math.ceil(rate * seconds / concurrency))


async def series(
    services: Services,
    contender: Contender,
    *,
    spec: str,
    concurrency: int,
    runs: int,
    seconds: float,
    waves: int = 8,
    **kwargs: Any,
) -> dict[str, Any]:
    """``runs`` runs of one contender on one job set; the summary and every run."""
    jobs = make_jobs(job_count(contender, spec, concurrency, seconds, waves))
    results: list[RunResult] = []
    for _ in range(runs):
        result = await run_once(services, contender, jobs=jobs, latency=spec, concurrency=concurrency, **kwargs)
        results.append(result)
        flag = " TIMED OUT" if result.timed_out else ""
        print(
            f"    {contender.name:<36} {spec:>11} c={concurrency:<5} {result.jobs_per_s:8.1f} jobs/s  "
            f"{result.cpu_us_per_job or 0:7.0f} µs/job  {result.done}/{result.jobs} done{flag}",
            flush=True,
        )
    done = [r for r in results if not r.timed_out]
    return {
        "contender": contender.name,
        "latency": spec,
        "latency_ms": latency_ms(spec),
        "concurrency": concurrency,
        "jobs": len(jobs),
        "expected_reviews": expected_reviews(jobs),
        "routes_agree": all(r.reviews == expected_reviews(jobs) for r in results if r.done == r.jobs),
        "jobs_per_s": Summary.of([r.jobs_per_s for r in done]).as_dict(),
        "cpu_us_per_job": Summary.of([r.cpu_us_per_job for r in done if r.cpu_us_per_job]).as_dict(),
        "peak_rss_mb": Summary.of([r.peak_rss_mb for r in done if r.peak_rss_mb]).as_dict(),
        "little_limit": little_limit(concurrency, spec) if latency_ms(spec) else None,
        "runs": [r.as_dict() for r in results],
    }


async def latency_section(
    services: Services,
    *,
    runs: int,
    seconds: float,
    latencies: Sequence[str],
    contenders: Sequence[Contender],
    waves: int = 8,
) -> list[dict[str, Any]]:
    rows = []
    for spec in latencies:
        print(f"  latency {spec}", flush=True)
        for contender in contenders:
            rows.append(
                await series(
                    services, contender, spec=spec, concurrency=CONCURRENCY, runs=runs, seconds=seconds, waves=waves
                )
            )
    return rows


async def latency_sweep(
    services: Services, *, latencies: Sequence[str], seconds: float, contenders: Sequence[Contender]
) -> list[dict[str, Any]]:
    """Extra latencies for the plot, one run each."""
    rows = []
    print(f"  latency sweep {', '.join(latencies)}", flush=True)
    for spec in latencies:
        for contender in contenders:
            rows.append(await series(services, contender, spec=spec, concurrency=CONCURRENCY, runs=1, seconds=seconds))
    return rows


async def concurrency_section(
    services: Services, *, concurrencies: Sequence[int], spec: str, seconds: float, contenders: Sequence[Contender]
) -> list[dict[str, Any]]:
    rows = []
    print(f"  concurrency sweep at {spec}", flush=True)
    for concurrency in concurrencies:
        for contender in contenders:
            rows.append(await series(services, contender, spec=spec, concurrency=concurrency, runs=1, seconds=seconds))
    return rows


TRANSPORT_VARIANTS: Final = (
    ours("asyncio", "aiohttp"),
    ours("uvloop", "aiohttp"),
    ours("asyncio", "httpx"),
    ours("uvloop", "httpx"),
    ours("asyncio", "httpx-aiohttp"),
    ours("uvloop", "httpx-aiohttp"),
)


async def transport_section(services: Services, *, runs: int, seconds: float) -> list[dict[str, Any]]:
    rows = []
    print("  ours at latency 0: HTTP transport x event loop", flush=True)
    for variant in TRANSPORT_VARIANTS:
        row = await series(services, variant, spec="0", concurrency=CONCURRENCY, runs=runs, seconds=seconds)
        transport, loop = variant.argv[-1], variant.argv[-3]
        rows.append({**row, "transport": transport, "loop": loop})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| latency | contender | jobs/s (median, min-max) | runs | Little's limit | share of limit | CPU µs/job |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        rate = Summary(**_summary_args(row["jobs_per_s"]))
        cpu = Summary(**_summary_args(row["cpu_us_per_job"]))
        limit = row["little_limit"]
        share = f"{rate.median / limit:.0%}" if limit and rate.runs else "-"
        limit_text = f"{limit:,.0f}" if limit else "none (overhead-bound)"
        lines.append(
            f"| {row['latency']} | {row['contender']} | {rate.fmt()} | {rate.runs} | {limit_text} | {share} | "
            f"{cpu.fmt()} |"
        )
    return "\n".join(lines)


def _summary_args(found: dict[str, float]) -> dict[str, float]:
    return {"median": found["median"], "low": found["min"], "high": found["max"], "runs": int(found["runs"])}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    runs, seconds = (1, 4.0) if args.quick else (args.runs, args.seconds)
    found: dict[str, Any] = {}
    with Services() as services:
        if args.section in (None, "latency"):
            found["latency"] = await latency_section(
                services, runs=runs, seconds=seconds, latencies=("0", "fixed:200", "fixed:1000"), contenders=CONTENDERS
            )
            print(table(found["latency"]))
        if args.section in (None, "sweep"):
            found["latency_sweep"] = await latency_sweep(
                services, latencies=("fixed:50", "fixed:500"), seconds=seconds, contenders=CONTENDERS
            )
        if args.section in (None, "concurrency"):
            found["concurrency"] = await concurrency_section(
                services, concurrencies=(32, 128, 512), spec="fixed:1000", seconds=seconds, contenders=CONTENDERS
            )
        if args.section in (None, "transport"):
            found["transport"] = await transport_section(services, runs=runs, seconds=seconds)
            print(table(found["transport"]))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline_throughput", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="about how long each run's steady state lasts")
    parser.add_argument("--section", choices=("latency", "sweep", "concurrency", "transport"))
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    found = asyncio.run(main_async(args))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(found, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
