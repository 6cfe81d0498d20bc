"""Rate-limit efficiency through Kafka: how much of a provider's limit a worker uses, and how many 429s.

The simulator (a fresh process per run, so its buckets start full) enforces R requests/min and T tokens/min
with log-normal latency (the scenarios of :mod:`bench.ratelimit_efficiency`, which measures the clients
alone). Each contender works through a backlog of jobs in Kafka with both limits configured, as a user
would: ours with ``PIPELINE_RPM``/``PIPELINE_TPM``, the cookbook peer with its
``--max-requests-per-minute``/``--max-tokens-per-minute``. Concurrency 256 for both.

Measured from the simulator's own counts over ``window`` seconds from the first request (a window must
be long: the cookbook's 15 s pause lets the provider's bucket refill, and the burst after it would flatter
a short window):

- *share of the limit*: requests answered 200 (and the tokens charged for them) over what the binding limit
  allowed in the window — the full bucket at the start plus a minute's worth per minute, as in
  :mod:`bench.ratelimit_efficiency`;
- *429 share*: answers that were 429, over all answers.

    python -m bench.ratelimit_pipeline [--quick] [--runs 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any, Final

from bench.harness import (
    OURS,
    PEER_COOKBOOK,
    Contender,
    Services,
    Summary,
    Topics,
    contender_env,
    create_topics,
    make_jobs,
    publish,
    started,
)
from bench.ratelimit_efficiency import SCENARIOS, Scenario
from pipeline.simulator import SimulatorProcess
from pipeline.simulator.stats import SimulatorStats

CONCURRENCY: Final = 256
BACKLOG: Final = 3000


def with_limits(contender: Contender, scenario: Scenario) -> tuple[Contender, dict[str, str]]:
    """The contender told the limits, the way each is configured."""
    if contender.name == PEER_COOKBOOK.name:
        argv = (
            *contender.argv,
            "--max-requests-per-minute",
            str(scenario.rpm),
            "--max-tokens-per-minute",
            str(scenario.tpm),
        )
        return Contender(contender.name, argv), {}
    return contender, {"PIPELINE_RPM": str(scenario.rpm), "PIPELINE_TPM": str(scenario.tpm)}


def _counts(stats: SimulatorStats) -> dict[str, int]:
    return {
        "ok": stats.by_status.get(200, 0),
        "tokens": stats.prompt_tokens + stats.completion_tokens,
        "rate_limited": stats.by_status.get(429, 0),
        "answers": sum(stats.by_status.values()),
    }


async def _first_request(simulator: SimulatorProcess, timeout_s: float) -> None:
    """Return once the simulator has seen a request (polled), or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (await asyncio.to_thread(simulator.stats)).requests:
            return
        await asyncio.sleep(0.05)


async def measure(services: Services, contender: Contender, scenario: Scenario, *, window_s: float) -> dict[str, Any]:
    base_url = await asyncio.to_thread(services.sim, scenario.latency, scenario.rpm, scenario.tpm, True)
    simulator = services.simulator
    assert simulator is not None
    topics = Topics.fresh("ratelimit")
    await create_topics(services.kafka, topics)
    await publish(services.kafka, topics.input, make_jobs(BACKLOG))
    configured, extra = with_limits(contender, scenario)
    env = contender_env(services, topics, base_url, CONCURRENCY, extra)
    with started(configured, env, label=f"ratelimit-{contender.slug}"):
        await _first_request(simulator, timeout_s=60.0)
        began = time.monotonic()
        await asyncio.sleep(window_s)
        last = _counts(await asyncio.to_thread(simulator.stats))
        seconds = time.monotonic() - began
    ok, tokens = last["ok"], last["tokens"]
    answers, limited = last["answers"], last["rate_limited"]
    allowance = 1 + seconds / 60  # a full bucket, then the refill
    requests_share = ok / (scenario.rpm * allowance)
    tokens_share = tokens / (scenario.tpm * allowance)
    return {
        "contender": contender.name,
        "scenario": scenario.name,
        "seconds": round(seconds, 2),
        "requests_per_min": round(ok / seconds * 60, 1),
        "tokens_per_min": round(tokens / seconds * 60, 1),
        "share_of_limit": max(requests_share, tokens_share),
        "binding": "requests" if requests_share >= tokens_share else "tokens",
        "share_429": limited / answers if answers else 0.0,
    }


async def section(services: Services, *, runs: int, window_s: float) -> list[dict[str, Any]]:
    rows = []
    for scenario in SCENARIOS:
        print(f"  {scenario.name}: {scenario.rpm} rpm, {scenario.tpm} tpm, latency {scenario.latency}", flush=True)
        for contender in (OURS, PEER_COOKBOOK):
            found = [await measure(services, contender, scenario, window_s=window_s) for _ in range(runs)]
            for run in found:
                print(
                    f"    {contender.name:<30} {run['share_of_limit']:7.1%} of the {run['binding']} limit, "
                    f"{run['share_429']:6.2%} 429s",
                    flush=True,
                )
            rows.append(
                {
                    "contender": contender.name,
                    "scenario": scenario.name,
                    "rpm": scenario.rpm,
                    "tpm": scenario.tpm,
                    "latency": scenario.latency,
                    "share_of_limit": Summary.of([r["share_of_limit"] for r in found]).as_dict(),
                    "share_429": Summary.of([r["share_429"] for r in found]).as_dict(),
                    "runs": found,
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | contender | share of the limit (median, min-max) | 429 share (median, min-max) | runs |",
        "|---|---|---:|---:|---:|",
    ]
    for row in rows:
        share, limited = row["share_of_limit"], row["share_429"]
        lines.append(
            f"| {row['scenario']} ({row['rpm']:,} rpm, {row['tpm']:,} tpm) | {row['contender']} | "
            f"{share['median']:.1%} ({share['min']:.1%}-{share['max']:.1%}) | "
            f"{limited['median']:.2%} ({limited['min']:.2%}-{limited['max']:.2%}) | {int(share['runs'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ratelimit_pipeline", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one run per cell, 20 s windows")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--window", type=float, default=40.0)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    runs, window = (1, 20.0) if args.quick else (args.runs, args.window)
    with Services() as services:
        rows = asyncio.run(section(services, runs=runs, window_s=window))
    print(table(rows))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
