"""Scale-out: jobs/s with 1, 2 and 4 worker processes in one consumer group, at latency 0 (overhead-bound).

Each worker has concurrency 256; the input topic has 8 partitions. The workers may use every core (unlike
the other sections, where the contender is pinned away from the broker and the simulator), and they share
the machine with the broker, the simulator and the collector. The jobs are published once every worker has
joined the group, so the figure is not a measurement of rebalances.

    python -m bench.scaleout [--quick] [--runs 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from bench.harness import OURS, RunResult, Services, Summary, all_cores, make_jobs, run_once


async def section(services: Services, *, runs: int, jobs_count: int, workers: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    jobs = make_jobs(jobs_count)
    for count in workers:
        results: list[RunResult] = []
        for _ in range(runs):
            result = await run_once(
                services,
                OURS,
                jobs=jobs,
                processes=count,
                cores=all_cores(),
                publish_after_join_s=60.0,
                label=f"scaleout-{count}",
            )
            results.append(result)
            print(
                f"    {count} worker(s): {result.jobs_per_s:8.1f} jobs/s, {result.cpu_us_per_job or 0:6.0f} µs/job, "
                f"{result.extra.get('contender_cores_busy', 0):.2f} cores busy, {result.done}/{result.jobs} done",
                flush=True,
            )
        done = [r for r in results if not r.timed_out]
        rows.append(
            {
                "workers": count,
                "jobs": jobs_count,
                "jobs_per_s": Summary.of([r.jobs_per_s for r in done]).as_dict(),
                "cpu_us_per_job": Summary.of([r.cpu_us_per_job for r in done if r.cpu_us_per_job]).as_dict(),
                "worker_cores_busy": Summary.of([r.extra.get("contender_cores_busy", 0.0) for r in done]).as_dict(),
                "service_cores_busy": Summary.of([r.extra.get("services_cores_busy", 0.0) for r in done]).as_dict(),
                "runs": [r.as_dict() for r in results],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 and 2 workers, one run each")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=16_000)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    runs, jobs, workers = (1, 6000, (1, 2)) if args.quick else (args.runs, args.jobs, (1, 2, 4))
    with Services() as services:
        rows = asyncio.run(section(services, runs=runs, jobs_count=jobs, workers=workers))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
