"""How much of a provider's rate limit a client gets to use, and how many 429s it collects doing so.

The simulator (its own process, a fresh one per run so its buckets start full) enforces R requests/min and
T tokens/min with lognormal latency. Each contender works through an endless backlog of jobs for
``--seconds``. From the simulator's own counts:

- *fraction of the limit*: what it admitted in the window (200s answered, and the tokens charged for them)
  over what the limits allowed in it (the full bucket at the start plus a minute's worth per minute), for
  the binding limit. Every contender is stopped at the end of the window, calls in flight included;
- *429 share*: 429 answers over all answers in the window.

Contenders:

- **ours**: :class:`pipeline.client.ChatClient` with R and T configured;
- **ours, limits learnt**: the same with no limits configured (taught by ``x-ratelimit-*`` headers);
- **cookbook**: a reimplementation of the OpenAI cookbook's parallel request processor: static request and
  token buckets refilled per loop, prompt tokens estimated up front plus ``max_tokens`` (default 15) times
  ``n``, a 1 ms loop, a 15 s pause of all sending after any rate-limit error, retries re-queued, no headers.

    .venv/bin/python -m bench.ratelimit_efficiency            # 2 scenarios x 3 contenders x 60 s
    .venv/bin/python -m bench.ratelimit_efficiency --quick    # 2 scenarios x 3 contenders x 30 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from pipeline.client import ChatClient, ClientConfig
from pipeline.secret import Secret
from pipeline.simulator import SimulatorConfig, SimulatorProcess
from pipeline.simulator.latency import parse_latency
from schemas import Job, UserMessage

WORDS: Final = ("river", "heron", "morning", "light", "water", "reed", "stone", "bridge", "meadow", "willow")
KEY: Final = "sk-bench-ratelimit"
COOKBOOK_PAUSE_S: Final = 15.0
COOKBOOK_DEFAULT_MAX_TOKENS: Final = 15


@dataclass(frozen=True)
class Scenario:
    name: str
    rpm: int
    tpm: int
    latency: str


SCENARIOS: Final = (
    Scenario("requests-bound", rpm=600, tpm=1_000_000, latency="lognormal:300,1500"),
    Scenario("tokens-bound", rpm=3_000, tpm=60_000, latency="lognormal:300,1500"),
)


def prompts(seed: int) -> Iterator[str]:
    """Prompts of 100 to 1,200 characters (about 25 to 300 tokens)."""
    rng = random.Random(seed)
    while True:
        length = rng.randint(100, 1200)
        words: list[str] = []
        while sum(len(word) + 1 for word in words) < length:
            words.append(rng.choice(WORDS))
        yield " ".join(words)


@dataclass(frozen=True)
class Result:
    admitted: int
    tokens: int
    seconds: float
    rate_limited: int
    answers: int

    def fraction(self, scenario: Scenario) -> float:
        allowance = 1 + self.seconds / 60  # a full bucket, then the refill
        return max(self.admitted / (scenario.rpm * allowance), self.tokens / (scenario.tpm * allowance))

    @property
    def share_429(self) -> float:
        return self.rate_limited / self.answers if self.answers else 0.0


#: Runs until cancelled, against the simulator at the given base URL.
Contender = Callable[[str, Scenario], Coroutine[Any, Any, None]]


# --------------------------------------------------------------------------------------------------
# Ours
# --------------------------------------------------------------------------------------------------


async def _ours(base_url: str, scenario: Scenario, *, configured: bool) -> None:
    config = ClientConfig(
        api_key=Secret(KEY),
        base_url=base_url,
        concurrency=256,
        requests_per_minute=scenario.rpm if configured else None,
        tokens_per_minute=scenario.tpm if configured else None,
    )
    source = prompts(seed=1)
    counter = 0

    async with ChatClient(config) as client:

        async def worker() -> None:
            nonlocal counter
            while True:
                counter += 1
                await client.complete(Job(id=f"job-{counter}", messages=[UserMessage(content=next(source))]))

        await asyncio.gather(*(worker() for _ in range(config.concurrency)))


async def ours_configured(base_url: str, scenario: Scenario) -> None:
    await _ours(base_url, scenario, configured=True)


async def ours_learnt(base_url: str, scenario: Scenario) -> None:
    await _ours(base_url, scenario, configured=False)


# --------------------------------------------------------------------------------------------------
# The cookbook's parallel request processor, reimplemented
# --------------------------------------------------------------------------------------------------


def cookbook_token_estimate(prompt: str, max_tokens: int = COOKBOOK_DEFAULT_MAX_TOKENS, n: int = 1) -> int:
    """Its ``num_tokens_consumed_from_request`` for chat: per-message framing, the prompt's tokens (here
    four characters a token, as no tokenizer is installed), 2 for the reply, plus ``max_tokens`` x ``n``."""
    return 4 + -(-len(prompt) // 4) + 2 + max_tokens * n


async def cookbook(base_url: str, scenario: Scenario) -> None:
    source = prompts(seed=1)
    retry_queue: asyncio.Queue[tuple[int, str, int]] = asyncio.Queue()
    request_capacity = float(scenario.rpm)
    token_capacity = float(scenario.tpm)
    last_update = time.monotonic()
    last_rate_limit_error = 0.0
    counter = 0
    in_flight: set[asyncio.Task[None]] = set()
    headers = {"Authorization": f"Bearer {KEY}"}

    async with aiohttp.ClientSession() as session:

        async def call(job_id: int, prompt: str, attempts_left: int) -> None:
            nonlocal last_rate_limit_error
            body: dict[str, object] = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": prompt}],
                "moderation": {"model": "omni-moderation-latest"},
            }
            try:
                async with session.post(
                    base_url + "/chat/completions",
                    json=body,
                    headers={**headers, "X-Client-Request-Id": f"job-{job_id}"},
                ) as response:
                    answer = await response.json()
            except aiohttp.ClientError:
                answer = {"error": {"message": "connection error"}}
            if "error" in answer:
                if "Rate limit" in answer["error"].get("message", ""):
                    last_rate_limit_error = time.monotonic()
                if attempts_left > 1:
                    retry_queue.put_nowait((job_id, prompt, attempts_left - 1))

        try:
            next_request: tuple[int, str, int] | None = None
            while True:
                if next_request is None:
                    if not retry_queue.empty():
                        next_request = retry_queue.get_nowait()
                    else:
                        counter += 1
                        next_request = (counter, next(source), 5)
                now = time.monotonic()
                request_capacity = min(request_capacity + scenario.rpm * (now - last_update) / 60, scenario.rpm)
                token_capacity = min(token_capacity + scenario.tpm * (now - last_update) / 60, scenario.tpm)
                last_update = now
                needed = cookbook_token_estimate(next_request[1])
                if request_capacity >= 1 and token_capacity >= needed:
                    request_capacity -= 1
                    token_capacity -= needed
                    task = asyncio.create_task(call(*next_request))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    next_request = None
                await asyncio.sleep(0.001)
                since_error = time.monotonic() - last_rate_limit_error
                if since_error < COOKBOOK_PAUSE_S:
                    await asyncio.sleep(COOKBOOK_PAUSE_S - since_error)
        finally:
            for task in list(in_flight):
                task.cancel()


CONTENDERS: Final[dict[str, Contender]] = {
    "ours": ours_configured,
    "ours, limits learnt": ours_learnt,
    "cookbook": cookbook,
}


async def _measure(sim: SimulatorProcess, scenario: Scenario, contender: Contender, seconds: float) -> Result:
    """Run the contender for the window, read the simulator's counts, then stop the contender."""
    running = asyncio.create_task(contender(sim.base_url, scenario))
    await asyncio.sleep(seconds)
    stats = await asyncio.to_thread(sim.stats)
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    return Result(
        admitted=stats.by_status.get(200, 0),
        tokens=stats.prompt_tokens + stats.completion_tokens,
        seconds=seconds,
        rate_limited=stats.by_status.get(429, 0),
        answers=sum(stats.by_status.values()),
    )


def run(scenario: Scenario, contender: Contender, seconds: float) -> Result:
    config = SimulatorConfig(rpm=scenario.rpm, tpm=scenario.tpm, latency=parse_latency(scenario.latency), random_seed=7)
    with SimulatorProcess(config, cpu=1) as sim:
        return asyncio.run(_measure(sim, scenario, contender, seconds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="30 s per run")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--contender", action="append", choices=sorted(CONTENDERS))
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    seconds = 30.0 if args.quick else args.seconds
    print(f"{seconds:g} s per run; simulator in its own process")
    print("| scenario | contender | fraction of the limit | 429 share |\n|---|---|---|---|")
    rows = []
    for scenario in SCENARIOS:
        for name in args.contender or list(CONTENDERS):
            result = run(scenario, CONTENDERS[name], seconds)
            rows.append({"scenario": scenario.name, "contender": name, **result.__dict__})
            print(
                f"| {scenario.name} ({scenario.rpm} rpm, {scenario.tpm} tpm) | {name} | "
                f"{result.fraction(scenario):.1%} | {result.share_429:.2%} |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
