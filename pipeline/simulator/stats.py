"""What the simulator saw, for benchmarks and reliability tests (``GET /sim/stats``, ``sim.stats()``).

Jobs are identified by the ``X-Client-Request-Id`` header, else ``metadata["job_id"]``. A job that got more
than one 200 is a duplicate completion: the pipeline paid twice for it (a retry after a lost response, or a
redelivery that was not deduplicated).
"""

from __future__ import annotations

from collections import Counter

import msgspec


class SimulatorStats(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot; ``by_status`` counts responses sent (a reset or hang sends none, see ``by_fault``)."""

    requests: int
    by_status: dict[int, int]
    by_endpoint: dict[str, int]
    by_fault: dict[str, int]
    rate_limited: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    flagged_input: int
    flagged_output: int
    in_flight: int
    max_in_flight: int
    attempts_by_job: dict[str, int]
    successes_by_job: dict[str, int]

    @property
    def duplicate_successes(self) -> dict[str, int]:
        """Jobs answered 200 more than once, with how many 200s each got."""
        return {job: count for job, count in self.successes_by_job.items() if count > 1}

    @property
    def retried_jobs(self) -> dict[str, int]:
        """Jobs attempted more than once, with their attempt counts."""
        return {job: count for job, count in self.attempts_by_job.items() if count > 1}


class StatsRecorder:
    """The mutable counters behind :class:`SimulatorStats`; one per server, touched only on its loop."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Zero every counter; requests in flight stay counted (they will finish after the reset)."""
        self.requests = 0
        self.by_status: Counter[int] = Counter()
        self.by_endpoint: Counter[str] = Counter()
        self.by_fault: Counter[str] = Counter()
        self.rate_limited: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.flagged_input = 0
        self.flagged_output = 0
        self.max_in_flight = self.in_flight
        self.attempts_by_job: Counter[str] = Counter()
        self.successes_by_job: Counter[str] = Counter()

    def started(self, endpoint: str) -> None:
        self.requests += 1
        self.by_endpoint[endpoint] += 1
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight

    def finished(self) -> None:
        self.in_flight -= 1

    def snapshot(self) -> SimulatorStats:
        return SimulatorStats(
            requests=self.requests,
            by_status=dict(self.by_status),
            by_endpoint=dict(self.by_endpoint),
            by_fault=dict(self.by_fault),
            rate_limited=dict(self.rate_limited),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            flagged_input=self.flagged_input,
            flagged_output=self.flagged_output,
            in_flight=self.in_flight,
            max_in_flight=self.max_in_flight,
            attempts_by_job=dict(self.attempts_by_job),
            successes_by_job=dict(self.successes_by_job),
        )
