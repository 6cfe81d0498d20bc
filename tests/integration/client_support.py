"""Helpers for the client's integration tests against the simulator over loopback."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from pipeline.backoff import Backoff
from pipeline.client import ChatClient, ClientConfig
from pipeline.secret import Secret
from pipeline.simulator import Simulator
from schemas import Job, UserMessage
from schemas.chat import Usage

KEY = "sk-sim-9f8e7d6c5b4a39281706"


def job(prompt: str, job_id: str = "job-1") -> Job:
    return Job(id=job_id, messages=[UserMessage(content=prompt)])


@dataclass
class Recorder:
    """A :class:`~pipeline.client.ClientObserver` that remembers what it was told."""

    statuses: list[int | None] = field(default_factory=list)
    retries: list[str] = field(default_factory=list)
    rate_limited: int = 0
    usage: list[tuple[str, Usage]] = field(default_factory=list)
    limits: list[int] = field(default_factory=list)
    blocked: list[str | None] = field(default_factory=list)

    def on_attempt(self, status: int | None, latency_s: float) -> None:
        self.statuses.append(status)

    def on_retry(self, reason: str) -> None:
        self.retries.append(reason)

    def on_rate_limited(self) -> None:
        self.rate_limited += 1

    def on_usage(self, model: str, usage: Usage) -> None:
        self.usage.append((model, usage))

    def on_concurrency_limit(self, limit: int) -> None:
        self.limits.append(limit)

    def on_provider_blocked(self, cause: str | None) -> None:
        self.blocked.append(cause)


class Sleeps(list[float]):
    """Records the client's waits and returns at once: retries cost no wall-clock time in tests."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)
        await asyncio.sleep(0)


class VirtualTime:
    """A clock shared by the simulator's buckets and the client, moved only by the client's sleeps.

    Valid while one coroutine sleeps at a time (the rate limiter's queue head), which is what pacing tests
    arrange; then elapsed virtual time is exactly the pacing the client chose.
    """

    def __init__(self) -> None:
        self.now = 1_000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


#: The provider breaker probes within tens of milliseconds in these tests (a second and up in production).
QUICK_PROBES = Backoff(0.02, 0.1, jitter=0.0)


def client_for(
    sim: Simulator,
    *,
    observer: Recorder | None = None,
    sleeps: Sleeps | None = None,
    time: VirtualTime | None = None,
    **config: object,
) -> ChatClient:
    settings: dict[str, object] = {
        "api_key": Secret(KEY),
        "base_url": sim.base_url,
        "read_timeout_s": 0.3,
        "call_timeout_s": 0.5,
        "max_attempts": 3,
        **config,
    }
    if time is not None:
        return ChatClient(  # type: ignore[arg-type]
            ClientConfig(**settings), observer=observer, clock=time.clock, sleep=time.sleep, probe_backoff=QUICK_PROBES
        )
    return ChatClient(ClientConfig(**settings), observer=observer, sleep=sleeps or Sleeps(), probe_backoff=QUICK_PROBES)  # type: ignore[arg-type]
