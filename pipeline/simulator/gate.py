"""The gate every generating request passes: directives, the fault plan, rate limits, latency, injected failures.

The gate owns the server's seeded generator (latency samples and ``@P`` fault rules draw from it in request
order, so a seed replays the same run), the fault injector and the rate limiter; it counts faults and
refusals into the server's stats.
"""

from __future__ import annotations

import asyncio
import hashlib
import random

from pipeline.simulator import errors
from pipeline.simulator.config import SimulatorConfig
from pipeline.simulator.directives import (
    HEADER,
    METADATA_KEY,
    NO_DIRECTIVES,
    DirectiveError,
    Directives,
    parse_directives,
)
from pipeline.simulator.errors import ApiError
from pipeline.simulator.exchange import Exchange
from pipeline.simulator.faults import FaultInjector, FaultPlan
from pipeline.simulator.http import HttpRequest
from pipeline.simulator.latency import sample_ms
from pipeline.simulator.ratelimit import Clock, RateLimiter
from pipeline.simulator.stats import StatsRecorder


class Gate:
    """Decides, per request, which faults apply, whether the limits admit it and how long it waits."""

    def __init__(self, config: SimulatorConfig, stats: StatsRecorder, clock: Clock) -> None:
        self._config = config
        self._stats = stats
        self._rng = random.Random(config.random_seed)
        self._faults = FaultInjector(config.faults, self._rng)
        self.limiter = RateLimiter(config.rpm, config.tpm, clock, config.rate_window)

    def reset(self) -> None:
        """Forget per-job attempt counts (so ``*N`` faults start over)."""
        self._faults.reset()

    def directives(self, request: HttpRequest, metadata: dict[str, str] | None) -> Directives:
        """The directives of the ``x-sim-fault`` header, then of ``metadata["sim_fault"]``."""
        found = NO_DIRECTIVES
        header = request.headers.get(HEADER)
        try:
            if header:
                found = parse_directives(header)
            if metadata and METADATA_KEY in metadata:
                found = found.merged_with(parse_directives(metadata[METADATA_KEY]))
        except DirectiveError as exc:
            raise directive_error(exc) from None
        return found

    def plan(self, exchange: Exchange, directives: Directives) -> FaultPlan:
        """Decide this attempt's faults, count them and keep the plan on the exchange."""

        def attempt_key() -> str:
            return exchange.job_id or hashlib.blake2b(exchange.request.body, digest_size=16).hexdigest()

        plan = self._faults.plan(directives.rules, attempt_key)
        for name in plan.names:
            self._stats.by_fault[name] += 1
        exchange.plan = plan
        return plan

    def admit(self, model: str, tokens: int) -> None:
        """Take one request and ``tokens`` from the limits, or raise the 429 that says which one ran out."""
        refusal = self.limiter.admit(tokens)
        if refusal is not None:
            self._stats.rate_limited[refusal.kind] += 1
            raise errors.rate_limited(model, refusal)

    async def delay(self, directives: Directives) -> None:
        ms = directives.latency_ms
        if ms is None:
            ms = sample_ms(self._config.latency, self._rng)
        if ms > 0:
            await asyncio.sleep(ms / 1000)

    async def injected_failure(self, exchange: Exchange, model: str, streaming: bool) -> bool:
        """Carry out the plan's failure if it replaces the answer (raise, reset, hang); ``True`` if it did.

        ``malformed_json``, ``truncated`` and ``stream_error`` break the answer while it is written instead;
        ``stream_error`` on a non-streaming request is a 500.
        """
        config = self._config
        match exchange.plan.failure:
            case "429":
                raise errors.injected_rate_limit(model, config.fault_retry_after_ms)
            case "insufficient_quota":
                raise errors.insufficient_quota()
            case "500" | "502" | "503" as status:
                raise errors.server_error(int(status))
            case "stream_error" if not streaming:
                raise errors.server_error(500)
            case "context_length_exceeded":
                raise errors.context_length_exceeded(config.context_window, config.context_window + 1)
            case "hang":
                # Held until the client gives up (its disconnect cancels this) or hang_s passes.
                await asyncio.sleep(config.hang_s)
                exchange.connection.close()
                return True
            case "reset":
                exchange.connection.reset()
                return True
            case _:
                return False


def directive_error(exc: DirectiveError) -> ApiError:
    """The 400 for a directive that does not parse (a typo must not pass silently as "no fault")."""
    return errors.invalid_request(str(exc), param=HEADER, code="sim_invalid_directive")
