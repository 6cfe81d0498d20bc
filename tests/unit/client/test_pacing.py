"""The Pacer's books: what a turn takes before an attempt, and what an answer does to the limits after it."""

from __future__ import annotations

import msgspec
import pytest

from pipeline.client.failures import AttemptFailure
from pipeline.client.lanes import SHARE_CUT
from pipeline.client.pacing import INITIAL_CONCURRENCY, Pacer, signal_for
from schemas.chat import ChatCompletion, ChatCompletionRequest, Usage, UserMessage
from tests.unit.client.support import FakeTime

REQUEST = ChatCompletionRequest(model="m", messages=[UserMessage(content="x" * 400)])
COMPLETION = msgspec.json.decode(
    b"""{"id": "c", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hi."}}],
    "usage": {"prompt_tokens": 110, "completion_tokens": 40, "total_tokens": 150}}""",
    type=ChatCompletion,
)


class Seen:
    def __init__(self) -> None:
        self.rate_limited = 0
        self.usage: list[tuple[str, Usage]] = []
        self.limits: list[int] = []

    def on_rate_limited(self) -> None:
        self.rate_limited += 1

    def on_usage(self, model: str, usage: Usage) -> None:
        self.usage.append((model, usage))

    def on_concurrency_limit(self, limit: int) -> None:
        self.limits.append(limit)


def pacer(time: FakeTime, seen: Seen, *, configured: bool = True) -> Pacer:
    return Pacer(
        max_concurrency=10,
        requests_per_minute=60 if configured else None,
        tokens_per_minute=10_000 if configured else None,
        observer=seen,
        clock=time.clock,
        sleep=time.sleep,
    )


def rate_limited(**fields: object) -> AttemptFailure:
    settings: dict[str, object] = {"failure": "http_status", "message": "HTTP 429", "retriable": True, "status": 429}
    return AttemptFailure(**{**settings, **fields})  # type: ignore[arg-type]


def levels(paced: Pacer, now: float, model: str = "m") -> tuple[float, float]:
    lanes = paced.rate_limiter.limits(model).lanes
    return lanes["requests"].bucket.level(now), lanes["tokens"].bucket.level(now)


async def test_a_turn_holds_a_slot_and_a_permit_of_its_models_lanes_for_its_estimate() -> None:
    time, seen = FakeTime(), Seen()
    paced = pacer(time, seen)
    requests, tokens = levels(paced, time.now)
    async with paced.turn(REQUEST) as turn:
        assert paced.concurrency.in_flight == 1
        assert turn.permit.model == "m"
        assert turn.permit.tokens == turn.estimate.total == 100 + 4 + 3 + 256
        assert levels(paced, time.now) == (requests - 1, tokens - turn.estimate.total)
    assert paced.concurrency.in_flight == 0
    assert paced.rate_limiter.limits("other").lanes["requests"].bucket.level(time.now) == requests


async def test_a_success_settles_the_tokens_charged_and_teaches_the_completion_length() -> None:
    time, seen = FakeTime(), Seen()
    paced = pacer(time, seen)
    requests, tokens = levels(paced, time.now)
    async with paced.turn(REQUEST) as turn:
        paced.settle(turn, 200, {}, COMPLETION, latency_s=0.2)
    assert levels(paced, time.now) == (requests - 1, tokens - 150)  # what usage says, not the 363 reserved
    assert seen.usage == [("m", COMPLETION.usage)]
    assert paced.completion_lengths.expected("m") == 80  # 40, plus twice a deviation of 20
    assert (seen.rate_limited, seen.limits) == (0, [])
    assert paced.concurrency.limit == 10


async def test_completion_lengths_are_learnt_under_the_model_asked_for() -> None:
    """An answer may name a dated snapshot (``m-2024-07-18``); the next estimate is made for ``m``."""
    time, seen = FakeTime(), Seen()
    paced = pacer(time, seen)
    async with paced.turn(REQUEST) as turn:
        paced.settle(turn, 200, {}, msgspec.structs.replace(COMPLETION, model="m-2024-07-18"), latency_s=0.2)
    assert paced.completion_lengths.expected("m") == 80


async def test_a_rate_429_refunds_the_call_pauses_the_model_and_cuts_both_limits() -> None:
    time, seen = FakeTime(), Seen()
    paced = pacer(time, seen)
    async with paced.turn(REQUEST) as turn:
        paced.settle(turn, 429, {}, rate_limited(retry_after_s=2.0, error_type="requests"), latency_s=0.1)
    assert seen.rate_limited == 1
    limits = paced.rate_limiter.limits("m")
    assert limits.paused_until == time.now + 2.0
    assert levels(paced, time.now)[0] == 0  # no x-ratelimit-* to sync from: emptied
    assert (limits.lanes["requests"].share, limits.lanes["tokens"].share) == (SHARE_CUT, 1.0)
    assert seen.limits == [7] and paced.concurrency.limit == 7
    assert seen.usage == []


async def test_a_quota_429_neither_pauses_nor_cuts_the_limit() -> None:
    time, seen = FakeTime(), Seen()
    paced = pacer(time, seen)
    quota = rate_limited(retriable=False, code="insufficient_quota", error_type="insufficient_quota")
    async with paced.turn(REQUEST) as turn:
        paced.settle(turn, 429, {"x-ratelimit-remaining-requests": "30"}, quota, latency_s=0.1)
    assert seen.rate_limited == 1  # still a 429 on the dashboard
    limits = paced.rate_limiter.limits("m")
    assert limits.paused_until == 0.0
    assert limits.lanes["requests"].share == 1.0
    assert seen.limits == [] and paced.concurrency.limit == 10


async def test_a_timeout_alone_neither_cuts_the_limit_nor_touches_the_lanes() -> None:
    time, seen = FakeTime(), Seen()
    paced = pacer(time, seen)
    timeout = AttemptFailure(failure="timeout", message="read timeout", retriable=True)
    requests, tokens = levels(paced, time.now)
    async with paced.turn(REQUEST) as turn:
        paced.settle(turn, None, {}, timeout, latency_s=120.0)
    assert levels(paced, time.now) == (requests - 1, tokens - turn.estimate.total)
    assert seen.limits == [] and paced.concurrency.limit == 10


async def test_without_configured_limits_a_pacer_starts_gently_until_the_provider_states_them() -> None:
    time, seen = FakeTime(), Seen()
    paced = pacer(time, seen, configured=False)
    assert paced.concurrency.limit == INITIAL_CONCURRENCY
    async with paced.turn(REQUEST) as turn:  # a 503 first: still nothing known, and a cut
        paced.settle(turn, 503, {}, rate_limited(status=503), latency_s=0.1)
    assert paced.concurrency.limit == 1
    headers = {"x-ratelimit-limit-requests": "3000", "x-ratelimit-remaining-requests": "2999"}
    async with paced.turn(REQUEST) as turn:
        paced.settle(turn, 429, headers, rate_limited(), latency_s=0.1)
    assert paced.rate_limiter.limits("m").lanes["requests"].per_minute == 3000


async def test_without_configured_limits_the_first_answer_opens_the_concurrency() -> None:
    """It states the limits (the lanes pace from there), or it states none: nothing more to learn slowly."""
    for headers in ({"x-ratelimit-limit-requests": "3000", "x-ratelimit-remaining-requests": "2999"}, {}):
        time, seen = FakeTime(), Seen()
        paced = pacer(time, seen, configured=False)
        async with paced.turn(REQUEST) as turn:
            paced.settle(turn, 200, headers, COMPLETION, latency_s=0.2)
        assert paced.concurrency.limit == 10 and seen.limits == [10]


async def test_a_turn_left_unsettled_gives_its_slot_back_as_neutral() -> None:
    time, seen = FakeTime(), Seen()
    paced = pacer(time, seen)
    with pytest.raises(RuntimeError):
        async with paced.turn(REQUEST):
            raise RuntimeError("cut short")
    assert paced.concurrency.in_flight == 0
    assert paced.concurrency.limit == 10 and seen.limits == []


@pytest.mark.parametrize(
    ("result", "signal"),
    [
        (COMPLETION, "success"),
        (rate_limited(), "overload"),
        (rate_limited(status=503), "overload"),
        (rate_limited(status=504), "overload"),
        (rate_limited(status=500), "neutral"),
        (rate_limited(code="insufficient_quota"), "neutral"),
        (AttemptFailure(failure="timeout", message="t", retriable=True), "timeout"),
        (AttemptFailure(failure="transport", message="reset", retriable=True), "neutral"),
    ],
)
def test_what_an_answer_tells_the_concurrency_limit(result: ChatCompletion | AttemptFailure, signal: str) -> None:
    assert signal_for(result) == signal
