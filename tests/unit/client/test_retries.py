"""Retry decisions (which failures are retried, how long to wait, when to give up) and the retry runner."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from pipeline.backoff import Backoff
from pipeline.client.failures import AttemptFailure
from pipeline.client.retries import GiveUp, RetryAfter, RetryPolicy, RetryRunner, Tally, next_delay
from tests.unit.client.support import FakeTime


def _failure(**fields: object) -> AttemptFailure:
    defaults: dict[str, object] = {"failure": "http_status", "message": "HTTP 503", "retriable": True, "status": 503}
    return AttemptFailure(**{**defaults, **fields})  # type: ignore[arg-type]


POLICY = RetryPolicy(max_attempts=4, backoff=Backoff(0.5, 8.0, jitter=0.5), retry_after_cap_s=60.0)


def test_a_failure_that_is_not_retriable_ends_the_call() -> None:
    decision = next_delay(
        _failure(retriable=False), attempts_made=1, policy=POLICY, remaining_s=600, rng=random.Random(1)
    )
    assert isinstance(decision, GiveUp)


def test_attempts_are_bounded() -> None:
    rng = random.Random(1)
    assert isinstance(next_delay(_failure(), attempts_made=3, policy=POLICY, remaining_s=600, rng=rng), RetryAfter)
    assert isinstance(next_delay(_failure(), attempts_made=4, policy=POLICY, remaining_s=600, rng=rng), GiveUp)


def test_the_server_asked_wait_is_honoured_with_at_most_ten_percent_more() -> None:
    for seed in range(50):
        decision = next_delay(
            _failure(retry_after_s=2.0), attempts_made=1, policy=POLICY, remaining_s=600, rng=random.Random(seed)
        )
        assert isinstance(decision, RetryAfter)
        assert 2.0 <= decision.delay_s <= 2.2


def test_a_wait_over_the_cap_gives_up_at_once() -> None:
    decision = next_delay(
        _failure(retry_after_s=61.0), attempts_made=1, policy=POLICY, remaining_s=600, rng=random.Random(1)
    )
    assert isinstance(decision, GiveUp)
    assert "over the cap" in decision.why


def test_a_wait_past_the_deadline_gives_up_at_once() -> None:
    decision = next_delay(
        _failure(retry_after_s=5.0), attempts_made=1, policy=POLICY, remaining_s=4.0, rng=random.Random(1)
    )
    assert isinstance(decision, GiveUp)


@pytest.mark.parametrize(("retries", "step"), [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)])
def test_backoff_doubles_up_to_the_max_with_jitter_in_the_upper_half(retries: int, step: float) -> None:
    delays = [POLICY.backoff.delay_s(retries, random.Random(seed)) for seed in range(200)]
    assert all(step / 2 <= delay <= step for delay in delays)
    assert max(delays) - min(delays) > step / 4  # actually jittered


def test_a_429_backoff_never_outlasts_the_limit_refill() -> None:
    decision = next_delay(
        _failure(status=429, refill_s=0.012), attempts_made=3, policy=POLICY, remaining_s=600, rng=random.Random(1)
    )
    assert decision == RetryAfter(0.012)


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_the_default_backoff_is_equal_jitter_over_doubling_steps() -> None:
    """The policy's :class:`Backoff` waits what the client always waited: ``step * (0.5 + 0.5 * r)``."""
    default = RetryPolicy().backoff
    for retries in range(8):
        for seed in range(20):
            step = min(0.5 * 2.0**retries, 8.0)
            expected = step * (0.5 + 0.5 * random.Random(seed).random())
            assert default.delay_s(retries, random.Random(seed)) == expected


# --------------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------------


class Retries(list[str]):
    def on_retry(self, reason: str) -> None:
        self.append(reason)


def scripted(*results: str | AttemptFailure) -> tuple[Callable[[], Awaitable[str | AttemptFailure]], list[int]]:
    """An attempt answering ``results`` in order, and the list of calls it saw."""
    calls: list[int] = []

    async def attempt() -> str | AttemptFailure:
        calls.append(len(calls) + 1)
        return results[len(calls) - 1]

    return attempt, calls


def runner(time: FakeTime, retries: Retries, policy: RetryPolicy = POLICY, seed: int = 1) -> RetryRunner:
    return RetryRunner(policy, observer=retries, clock=time.clock, sleep=time.sleep, rng=random.Random(seed))


async def test_the_runner_returns_the_first_success_and_counts_the_attempts() -> None:
    time, retries, tally = FakeTime(), Retries(), Tally()
    attempt, calls = scripted(_failure(status=503), _failure(status=429, failure="http_status"), "done")
    result = await runner(time, retries).run(attempt, job_id="j", deadline=time.now + 600, tally=tally)
    assert result == "done"
    assert calls == [1, 2, 3]
    assert tally.attempts == 3
    assert tally.last_failure is not None and tally.last_failure.status == 429
    assert retries == ["http_503", "http_429"]
    assert len(time.sleeps) == 2


async def test_the_runner_stops_at_a_failure_that_is_not_retriable() -> None:
    time, retries = FakeTime(), Retries()
    refused = _failure(status=400, retriable=False)
    attempt, calls = scripted(refused, "never reached")
    result = await runner(time, retries).run(attempt, job_id="j", deadline=time.now + 600)
    assert result is refused
    assert calls == [1]
    assert retries == [] and time.sleeps == []


async def test_the_runner_gives_up_after_max_attempts() -> None:
    time, retries, tally = FakeTime(), Retries(), Tally()
    attempt, calls = scripted(*[_failure(status=500)] * 10)
    result = await runner(time, retries).run(attempt, job_id="j", deadline=time.now + 600, tally=tally)
    assert isinstance(result, AttemptFailure)
    assert calls == [1, 2, 3, 4] and tally.attempts == POLICY.max_attempts
    assert len(retries) == 3 and len(time.sleeps) == 3


async def test_the_runner_sleeps_the_policy_backoff() -> None:
    time, retries = FakeTime(), Retries()
    attempt, _ = scripted(_failure(), _failure(), "done")
    await runner(time, retries, seed=7).run(attempt, job_id="j", deadline=time.now + 600)
    rng = random.Random(7)
    assert time.sleeps == [POLICY.backoff.delay_s(0, rng), POLICY.backoff.delay_s(1, rng)]


async def test_the_runner_does_not_sleep_past_the_deadline() -> None:
    """Waits of 0.5 and 1 s (no jitter) leave 0.5 s of 2: the third, 2 s, would pass the deadline."""
    time, retries, tally = FakeTime(), Retries(), Tally()
    attempt, calls = scripted(*[_failure()] * 4)
    policy = RetryPolicy(max_attempts=10, backoff=Backoff(0.5, 8.0, jitter=0))
    result = await runner(time, retries, policy).run(attempt, job_id="j", deadline=time.now + 2.0, tally=tally)
    assert isinstance(result, AttemptFailure)
    assert calls == [1, 2, 3] and tally.attempts == 3
    assert time.sleeps == [0.5, 1.0]


async def test_a_server_wait_beyond_the_deadline_ends_the_run_at_once() -> None:
    time, retries = FakeTime(), Retries()
    attempt, calls = scripted(_failure(status=429, retry_after_s=5.0), "never reached")
    result = await runner(time, retries).run(attempt, job_id="j", deadline=time.now + 4.0)
    assert isinstance(result, AttemptFailure) and result.retry_after_s == 5.0
    assert calls == [1] and time.sleeps == []


async def test_the_tally_is_current_when_the_run_is_cut_short() -> None:
    """A job's deadline cancels the runner mid-attempt; its books still say how far it got."""
    time, retries, tally = FakeTime(), Retries(), Tally()
    first = _failure(status=502)
    hung = asyncio.Event()

    async def attempt() -> str | AttemptFailure:
        if tally.attempts == 1:
            return first
        hung.set()
        await asyncio.Event().wait()
        return "never"

    task = asyncio.create_task(runner(time, retries).run(attempt, job_id="j", deadline=time.now + 600, tally=tally))
    await hung.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tally.attempts == 2
    assert tally.last_failure is first
