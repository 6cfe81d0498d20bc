"""Cost per job: memory with many jobs in flight, and whether the adaptive concurrency limit holds at 0 ms.

(CPU µs per job at saturation comes from the latency-0 runs of :mod:`bench.pipeline_throughput`: the
contender's CPU time between the warm-up mark and the last result, over the jobs finished in between.)

- **Memory in flight**: the contender runs with concurrency N (1,000 and 10,000) against a simulator that
  holds every answer for a while (3 s, 15 s), over exactly N jobs, so all N are in flight at once (one HTTP
  connection each). Reported: the RSS when the simulator sees all N in flight, and the peak RSS (``VmHWM``)
  over the whole run, answers and results included.
- **AIMD at zero latency**: ours at latency 0 while its ``/metrics`` is scraped every 0.5 s: the lowest
  ``pipeline_provider_concurrency_limit`` seen (the gauge is only set when the limit moves; 0 means it never
  moved from the configured concurrency).

    python -m bench.cost [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any, Final

from bench.harness import (
    OURS,
    PEER_COOKBOOK,
    PEER_SDK_AIOHTTP,
    Contender,
    Services,
    Summary,
    Topics,
    collect,
    contender_env,
    create_topics,
    make_jobs,
    memory_kb,
    publish,
    started,
)

#: How long the simulator holds each answer: long enough for every call to be in flight at once (opening
#: 10,000 connections takes the worker ~15 s on one core).
HOLD: Final = {1_000: "fixed:5000", 10_000: "fixed:30000"}
METRICS_URL: Final = re.compile(r"metrics on (http://\S+/metrics)")


async def in_flight_memory(services: Services, contender: Contender, concurrency: int) -> dict[str, Any]:
    spec = HOLD[concurrency]
    base_url = await asyncio.to_thread(services.sim, spec)
    simulator = services.simulator
    assert simulator is not None
    topics = Topics.fresh(f"rss{concurrency}")
    jobs = make_jobs(concurrency)
    await create_topics(services.kafka, topics)
    await publish(services.kafka, topics.input, jobs)
    env = contender_env(services, topics, base_url, concurrency)
    with started(contender, env, label=f"rss-{contender.slug}") as processes:
        pid = processes[0].pid
        deadline = time.monotonic() + 90
        seen = 0
        while time.monotonic() < deadline:
            seen = max(seen, (await asyncio.to_thread(simulator.stats)).in_flight)
            if seen >= concurrency * 0.99:
                break
            await asyncio.sleep(0.1)
        at_full = memory_kb(pid)
        stamps, _ = await collect(services.kafka, topics, len(jobs), [pid], 180.0)
        peak = memory_kb(pid)
    return {
        "contender": contender.name,
        "in_flight": concurrency,
        "hold": spec,
        "seen_in_flight": seen,
        "rss_mb_all_in_flight": at_full.get("VmRSS", 0) / 1024,
        "peak_rss_mb": peak.get("VmHWM", 0) / 1024,
        "done": len(stamps),
    }


async def memory_section(
    services: Services, *, runs: int, contenders: tuple[Contender, ...], sizes: tuple[int, ...]
) -> list[dict[str, Any]]:
    """``runs`` runs for ours at every size; one for a peer, at 1k only (10k in flight is our goal to meet)."""
    rows = []
    for size in sizes:
        for contender in contenders:
            if contender is not OURS and size > 1_000:
                continue
            count = runs if contender is OURS else 1
            found = [await in_flight_memory(services, contender, size) for _ in range(count)]
            for run in found:
                print(
                    f"    {contender.name:<36} {size:>6,} in flight (seen {run['seen_in_flight']:,}): "
                    f"RSS {run['rss_mb_all_in_flight']:.0f} MB, peak {run['peak_rss_mb']:.0f} MB, "
                    f"{run['done']:,} done",
                    flush=True,
                )
            rows.append(
                {
                    "contender": contender.name,
                    "in_flight": size,
                    "hold": HOLD[size],
                    "seen_in_flight": min(r["seen_in_flight"] for r in found),
                    "rss_mb_all_in_flight": Summary.of([r["rss_mb_all_in_flight"] for r in found]).as_dict(),
                    "peak_rss_mb": Summary.of([r["peak_rss_mb"] for r in found]).as_dict(),
                    "runs": found,
                }
            )
    return rows


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=2) as reply:
        text = reply.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith(("pipeline_provider_concurrency_limit ", "pipeline_jobs_in_flight ")):
            name, value = line.split()
            values[name] = float(value)
    return values


async def aimd_check(services: Services, jobs_count: int) -> dict[str, Any]:
    """Ours at latency 0 with its metrics scraped: does the adaptive limit ever cut the concurrency?"""
    base_url = await asyncio.to_thread(services.sim, "0")
    topics = Topics.fresh("aimd")
    jobs = make_jobs(jobs_count)
    await create_topics(services.kafka, topics)
    await publish(services.kafka, topics.input, jobs)
    env = contender_env(services, topics, base_url, 256)
    log_path = Path(services.broker.log_path or "").parent / "aimd-ours.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    limits: list[float] = []
    in_flight: list[float] = []
    with started(OURS, env, label="aimd-ours") as processes:
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            with log_path.open() as log:
                log.seek(offset)
                match = METRICS_URL.search(log.read())
            url = match[1].replace("0.0.0.0", "127.0.0.1") if match else None
            await asyncio.sleep(0.2)
        done = asyncio.create_task(collect(services.kafka, topics, len(jobs), [processes[0].pid], 120.0))
        while url is not None and not done.done():
            try:
                values = await asyncio.to_thread(_scrape, url)
            except OSError:
                values = {}
            if "pipeline_provider_concurrency_limit" in values:
                limits.append(values["pipeline_provider_concurrency_limit"])
                in_flight.append(values.get("pipeline_jobs_in_flight", 0.0))
            await asyncio.sleep(0.5)
        await done
    moved = [value for value in limits if value > 0]
    return {
        "configured": 256,
        "scrapes": len(limits),
        "lowest_limit_seen": min(moved) if moved else 256,
        "limit_moved": bool(moved),
        "max_jobs_in_flight_seen": max(in_flight, default=0.0),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    runs = 1 if args.quick else args.runs
    contenders = (OURS,) if args.quick else (OURS, PEER_SDK_AIOHTTP, PEER_COOKBOOK)
    with Services() as services:
        memory = await memory_section(services, runs=runs, contenders=contenders, sizes=(1_000, 10_000))
        aimd = await aimd_check(services, 6000 if args.quick else 12000)
    return {"memory": memory, "aimd": aimd}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    found = asyncio.run(main_async(args))
    print(json.dumps(found["aimd"]))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(found, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
