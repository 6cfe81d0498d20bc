"""Where the memory of a call in flight goes: raw aiohttp, our transport, our whole client.

Each layer holds N calls in flight against a simulator that answers after a long hold; once the simulator
sees (nearly) all of them, the growth of this process's RSS over N is the cost of one call in flight. The
difference between the rows is what each layer adds; what is left of a worker's figure (``bench.cost``)
is the worker's own (the Kafka record, the job, the task).

    python -m bench.memory_breakdown [--calls 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import msgspec

from bench.harness import make_jobs, memory_kb
from pipeline.client import ChatClient, ClientConfig
from pipeline.client.transport import AiohttpTransport, Timeouts
from pipeline.secret import Secret
from pipeline.simulator import SimulatorConfig, SimulatorProcess
from pipeline.simulator.latency import parse_latency
from schemas.topics import Job

LAYERS = ("aiohttp", "transport", "client")
HOLD = "fixed:60000"


def rss_mb() -> float:
    return memory_kb(os.getpid()).get("VmRSS", 0) / 1024


async def hold_calls(layer: str, calls: int) -> float:
    """KB of RSS per call while ``calls`` calls of ``layer`` wait on the simulator."""
    with SimulatorProcess(SimulatorConfig(latency=parse_latency(HOLD)), cpu=(os.cpu_count() or 1) - 1) as sim:
        jobs = [msgspec.json.decode(value, type=Job) for _, value in make_jobs(calls)]
        body = msgspec.json.encode({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]})
        headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
        url = sim.base_url + "/chat/completions"
        gc.collect()
        base = rss_mb()
        one: Callable[[int], Awaitable[object]]
        if layer == "aiohttp":
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=calls))

            async def one(i: int) -> object:
                async with session.post(url, data=body, headers=headers) as response:
                    return await response.read()
        elif layer == "transport":
            transport = AiohttpTransport(pool_size=calls)

            async def one(i: int) -> object:
                return await transport.post(url, headers, body, Timeouts())
        else:
            client = ChatClient(ClientConfig(api_key=Secret("sk-bench"), base_url=sim.base_url, concurrency=calls))

            async def one(i: int) -> object:
                return await client.complete(jobs[i])

        tasks = [asyncio.create_task(one(i)) for i in range(calls)]
        deadline = time.monotonic() + 50
        while time.monotonic() < deadline:
            if sim.stats().in_flight >= calls * 0.99:
                break
            await asyncio.sleep(0.2)
        gc.collect()
        per_call = (rss_mb() - base) * 1024 / calls
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--layer", choices=LAYERS, help="measure one layer here (otherwise each in its own process)")
    args = parser.parse_args()
    if args.layer:
        print(f"{asyncio.run(hold_calls(args.layer, args.calls)):.1f}")
        return
    print(f"| layer | KB of RSS per call in flight ({args.calls:,} calls) |\n|---|---:|")
    for layer in LAYERS:  # a fresh process each: freed memory stays with the process and would be reused
        argv = [sys.executable, "-m", "bench.memory_breakdown", "--calls", str(args.calls), "--layer", layer]
        found = subprocess.run(argv, check=True, capture_output=True, text=True).stdout.split()[-1]
        print(f"| {layer} | {found} |", flush=True)


if __name__ == "__main__":
    main()
