"""The provider breaker: provider-wide failures hold every call (none fails for them), one probe at a time
finds out when the provider answers again, and a job's own failure never trips it."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipeline.backoff import Backoff
from pipeline.client.breaker import CAUSES, Cause, ProviderBreaker, provider_wide_cause
from pipeline.client.failures import AttemptFailure

QUICK = Backoff(0.02, 0.08, jitter=0.0)


def http(status: int, code: str | None = None, error_type: str | None = None) -> AttemptFailure:
    return AttemptFailure(
        failure="http_status",
        message=f"HTTP {status}",
        retriable=False,
        status=status,
        code=code,
        error_type=error_type,
    )


@pytest.mark.parametrize(
    ("failure", "model", "cause"),
    [
        (http(401, "invalid_api_key"), "gpt-4o-mini", "unauthorized"),
        (http(403), "gpt-4o-mini", "forbidden"),
        (http(404, "model_not_found"), "gpt-4o-mini", "model_not_found"),
        (http(404, "model_not_found"), "gpt-typo", None),  # the job named it: its own mistake
        (http(429, "insufficient_quota", "insufficient_quota"), "gpt-4o-mini", "insufficient_quota"),
        (http(429, "rate_limit_exceeded"), "gpt-4o-mini", None),  # a rate: retried, not the breaker's
        (http(400, "context_length_exceeded"), "gpt-4o-mini", None),
        (http(500), "gpt-4o-mini", None),
        (AttemptFailure(failure="timeout", message="t", retriable=True), "gpt-4o-mini", None),
    ],
)
def test_which_failures_are_the_providers(failure: AttemptFailure, model: str, cause: Cause | None) -> None:
    assert provider_wide_cause(failure, model=model, default_model="gpt-4o-mini") == cause


async def test_closed_admits_at_once() -> None:
    breaker = ProviderBreaker(clock=time.monotonic, backoff=QUICK)
    admitted = await breaker.admit()
    assert breaker.available and admitted.probe is False and admitted.waited_s < 0.01


async def test_open_holds_every_call_and_one_probe_at_a_time_finds_the_provider_back() -> None:
    changes: list[Cause | None] = []
    breaker = ProviderBreaker(clock=time.monotonic, backoff=QUICK, on_change=changes.append)
    breaker.failed("unauthorized")
    assert not breaker.available and changes == ["unauthorized"]
    waiting = [asyncio.create_task(breaker.admit()) for _ in range(5)]
    first = await asyncio.wait_for(asyncio.shield(asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)), 5)
    [probe] = [task.result() for task in first[0]]
    assert probe.probe and probe.waited_s >= 0.02 and breaker.state == "probing"
    await asyncio.sleep(0.1)
    assert sum(task.done() for task in waiting) == 1, "the others wait for the probe's answer"
    breaker.failed("unauthorized")  # the probe was refused too: open again, with a longer backoff
    pending = [task for task in waiting if not task.done()]
    second = await asyncio.wait_for(asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED), 5)
    assert sum(task.done() for task in waiting) == 2 and all(t.result().probe for t in second[0])
    second_probe = next(iter(second[0])).result()
    assert second_probe.waited_s >= 0.1 + 0.04, "the first probe's wait and a longer backoff"
    breaker.answered(second_probe)
    admitted = await asyncio.wait_for(asyncio.gather(*waiting), 5)
    assert breaker.available and changes[-1] is None
    assert sum(a.probe for a in admitted) == 2, "once closed, the rest go without probing"


async def test_answers_to_calls_sent_before_it_opened_do_not_reset_the_backoff() -> None:
    breaker = ProviderBreaker(clock=time.monotonic, backoff=Backoff(10.0, 10.0, jitter=0.0))
    breaker.failed("insufficient_quota")
    probe_at = breaker._probe_at
    breaker.failed("insufficient_quota")
    assert breaker._probe_at == probe_at


async def test_only_an_answer_to_a_call_sent_after_it_opened_closes_it() -> None:
    breaker = ProviderBreaker(clock=time.monotonic, backoff=QUICK)
    in_flight = await breaker.admit()
    breaker.failed("unauthorized")
    breaker.answered(in_flight)  # sent before the provider started refusing: says nothing about now
    assert breaker.state == "open" and breaker.closures == 0
    probe = await asyncio.wait_for(breaker.admit(), 5)
    breaker.answered(probe)
    assert breaker.available and breaker.closures == 1


async def test_a_call_that_failed_lets_a_fresh_one_probe_first() -> None:
    breaker = ProviderBreaker(clock=time.monotonic, backoff=QUICK)
    breaker.failed("forbidden")
    again = asyncio.create_task(breaker.admit(failed_before=True))
    fresh = asyncio.create_task(breaker.admit())
    done, _ = await asyncio.wait_for(asyncio.wait({again, fresh}, return_when=asyncio.FIRST_COMPLETED), 5)
    assert done == {fresh} and fresh.result().probe
    breaker.answered(fresh.result())
    assert not (await asyncio.wait_for(again, 5)).probe, "closed by the fresh call's answer"


async def test_a_cancelled_probe_hands_its_turn_on() -> None:
    breaker = ProviderBreaker(clock=time.monotonic, backoff=QUICK)
    breaker.failed("forbidden")
    probe = await asyncio.wait_for(breaker.admit(), 5)
    other = asyncio.create_task(breaker.admit())
    await asyncio.sleep(0.05)
    assert not other.done()
    breaker.abandon(probe)
    assert (await asyncio.wait_for(other, 5)).probe, "the next caller probes at once"


def test_the_metric_knows_every_cause() -> None:
    from pipeline.metrics import PROVIDER_WIDE_CAUSES

    assert set(PROVIDER_WIDE_CAUSES) == set(CAUSES)
