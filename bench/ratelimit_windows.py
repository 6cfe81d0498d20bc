"""Rate limits enforced over windows shorter than a minute, with one and with several workers on one key.

OpenAI documents that a per-minute limit "may be enforced over shorter periods" ("60,000 requests/minute
may be enforced as 1,000 requests/second"). The simulator (its own process, a fresh one per run so its
buckets start full) enforces 3,000 requests/min over 1 s windows (50 at once, then 50 a second) and over
0.1 s windows (5 at once); latency log-normal, p50 300 ms, p99 1.5 s. For comparison the per-minute
scenarios of :mod:`bench.ratelimit_efficiency` run with one worker (the window of a minute must not
regress).

Every run counts the start: from the moment the workers start (no warm-up) to the end of the run, from
the simulator's own counts,

- *share of the limit*: requests admitted (answered 200, or still in flight at the end: the limit charges a
  request when it is admitted), or the tokens charged for the answered ones, over what the binding limit
  allowed in that time: the bucket at the start (one window's share of the minute) plus the refill;
- *429 share*: answers that were 429, over all answers.

Workers are clients in this process, each with its own connections and 256 calls in flight at most, all on
the same key. Contenders:

- **ours, limits learnt**: :class:`pipeline.client.ChatClient` with no limit configured (it learns the
  limits and the window from ``x-ratelimit-*``);
- **ours, limits configured**: the same told the per-minute limits (``PIPELINE_RPM``/``PIPELINE_TPM``), every
  worker the whole limit, as a user who does not split it;
- **cookbook**: the OpenAI cookbook's parallel request processor (see :mod:`bench.ratelimit_efficiency`),
  every worker told an even split of the limits (its best case: it reads no headers).

    python -m bench.ratelimit_windows            # 60 s per run
    python -m bench.ratelimit_windows --quick    # 30 s per run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

from bench.ratelimit_efficiency import KEY, Scenario, cookbook, prompts
from pipeline.client import ChatClient, ClientConfig
from pipeline.secret import Secret
from pipeline.simulator import SimulatorConfig, SimulatorProcess
from pipeline.simulator.latency import parse_latency
from schemas import Job, UserMessage

LATENCY: Final = "lognormal:300,1500"
CONCURRENCY: Final = 256


@dataclass(frozen=True)
class Window:
    """A scenario: limits enforced over ``window_s`` seconds, and how many workers share the key."""

    name: str
    rpm: int
    tpm: int
    window_s: float
    workers: int

    def allowance(self, seconds: float, per_minute: int) -> float:
        """What a limit of ``per_minute`` admits in ``seconds`` from a full bucket (one window's share)."""
        return per_minute * (self.window_s + seconds) / 60

    @property
    def label(self) -> str:
        window = "60 s (per minute)" if self.window_s == 60 else f"{self.window_s:g} s"
        return f"{self.name}, window {window}, {self.workers} worker{'s' if self.workers > 1 else ''}"


WINDOWS: Final = tuple(
    Window("3,000 rpm", 3_000, 10_000_000, window_s, workers) for window_s in (1.0, 0.1) for workers in (1, 3)
)
PER_MINUTE: Final = (
    Window("600 rpm, requests-bound", 600, 1_000_000, 60.0, 1),
    Window("60k tpm, tokens-bound", 3_000, 60_000, 60.0, 1),
)

#: Runs until cancelled: the workers, against the simulator at the given base URL.
Contender = Callable[[str, Window], Coroutine[Any, Any, None]]


async def _ours(base_url: str, window: Window, *, configured: bool) -> None:
    config = ClientConfig(
        api_key=Secret(KEY),
        base_url=base_url,
        concurrency=CONCURRENCY,
        requests_per_minute=window.rpm if configured else None,
        tokens_per_minute=window.tpm if configured else None,
    )
    source = prompts(seed=1)
    counter = 0

    async def worker(client: ChatClient, name: int) -> None:
        nonlocal counter
        while True:
            counter += 1
            await client.complete(Job(id=f"w{name}-{counter}", messages=[UserMessage(content=next(source))]))

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(ChatClient(config)) for _ in range(window.workers)]
        await asyncio.gather(*(worker(client, n) for n, client in enumerate(clients) for _ in range(CONCURRENCY)))


async def ours_learnt(base_url: str, window: Window) -> None:
    await _ours(base_url, window, configured=False)


async def ours_configured(base_url: str, window: Window) -> None:
    await _ours(base_url, window, configured=True)


async def cookbook_split(base_url: str, window: Window) -> None:
    share = Scenario(window.name, window.rpm // window.workers, window.tpm // window.workers, LATENCY)
    await asyncio.gather(*(cookbook(base_url, share) for _ in range(window.workers)))


OURS_LEARNT: Final = "ours, limits learnt"
CONTENDERS: Final[dict[str, Contender]] = {
    OURS_LEARNT: ours_learnt,
    "ours, limits configured": ours_configured,
    "cookbook": cookbook_split,
}


async def _measure(sim: SimulatorProcess, window: Window, contender: Contender, seconds: float) -> dict[str, Any]:
    """Run the workers for ``seconds`` from their start, read the simulator's counts, then stop them."""
    running = asyncio.create_task(contender(sim.base_url, window))
    await asyncio.sleep(seconds)
    stats = await asyncio.to_thread(sim.stats)
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    ok, limited = stats.by_status.get(200, 0), stats.by_status.get(429, 0)
    answers = sum(stats.by_status.values())
    tokens = stats.prompt_tokens + stats.completion_tokens
    # The limit charges a request when it is admitted: those still in flight at the end count too.
    requests_share = (ok + stats.in_flight) / window.allowance(seconds, window.rpm)
    tokens_share = tokens / window.allowance(seconds, window.tpm)
    return {
        "ok": ok,
        "rate_limited": limited,
        "answers": answers,
        "seconds": seconds,
        "share_of_limit": max(requests_share, tokens_share),
        "binding": "requests" if requests_share >= tokens_share else "tokens",
        "share_429": limited / answers if answers else 0.0,
    }


def run(window: Window, contender: Contender, seconds: float) -> dict[str, Any]:
    config = SimulatorConfig(
        rpm=window.rpm, tpm=window.tpm, rate_window=window.window_s, latency=parse_latency(LATENCY), random_seed=7
    )
    with SimulatorProcess(config, cpu=1) as sim:
        return asyncio.run(_measure(sim, window, contender, seconds))


async def section(*, seconds: float, contenders: tuple[str, ...] = tuple(CONTENDERS)) -> list[dict[str, Any]]:
    """Every scenario with every contender, one run each (each in a thread: a run has its own event loop)."""
    rows = []
    for window in (*WINDOWS, *PER_MINUTE):
        for name in contenders:
            found = await asyncio.to_thread(run, window, CONTENDERS[name], seconds)
            rows.append({"scenario": window.label, "window_s": window.window_s, "contender": name, **found})
            print(
                f"  {window.label:<48} {name:<24} {found['share_of_limit']:7.1%} of the {found['binding']} limit, "
                f"{found['share_429']:6.2%} 429s",
                flush=True,
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """One line per scenario: each contender's share of the limit / 429 share, and ours over the peer."""
    names = list(dict.fromkeys(row["contender"] for row in rows))
    by_scenario: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_scenario.setdefault(row["scenario"], {})[row["contender"]] = row
    lines = [
        "| scenario | " + " | ".join(names) + " | ours ÷ cookbook (share of the limit) |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for scenario, found in by_scenario.items():
        cells = [
            f"{found[name]['share_of_limit']:.1%} / {found[name]['share_429']:.2%}" if name in found else "-"
            for name in names
        ]
        peer = found.get("cookbook")
        ratios = [
            f"{found[name]['share_of_limit'] / peer['share_of_limit']:.2f}x"
            for name in names
            if name != "cookbook" and name in found and peer and peer["share_of_limit"] > 0
        ]
        lines.append(f"| {scenario} | " + " | ".join(cells) + f" | {', '.join(ratios) or '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="30 s per run")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--contender", action="append", choices=sorted(CONTENDERS))
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    seconds = 30.0 if args.quick else args.seconds
    print(f"{seconds:g} s per run, counted from the start; simulator in its own process")
    rows = asyncio.run(section(seconds=seconds, contenders=tuple(args.contender or CONTENDERS)))
    print(table(rows))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
