"""Per-tenant rate shares on a fake clock: a capped tenant is paced at its share of the model's lanes, the
others are not, usage settles the tokens, a 429 gives the share back, and an unknown limit caps nothing."""

from __future__ import annotations

import pytest

from pipeline.client.failures import AttemptFailure
from pipeline.client.lanes import MARGIN
from pipeline.client.pacing import Pacer
from pipeline.client.ratelimit import RateLimiter
from pipeline.client.tenant_shares import TenantShares
from schemas.chat import ChatCompletionRequest, Usage, UserMessage
from tests.unit.client.support import FakeTime


def setup(time: FakeTime, *, rpm: int | None = 600, tpm: int | None = None) -> tuple[RateLimiter, TenantShares]:
    limiter = RateLimiter(requests_per_minute=rpm, tokens_per_minute=tpm, clock=time.clock, sleep=time.sleep)
    return limiter, TenantShares({"acme": 0.5}, clock=time.clock, sleep=time.sleep)


async def test_a_capped_tenant_is_paced_at_its_share_of_the_requests_per_minute() -> None:
    time = FakeTime()
    limiter, shares = setup(time, rpm=600)
    limits, start = limiter.limits("m"), time.now
    for _ in range(101):
        assert await shares.acquire("acme", "m", limits, 10) is not None
    rate = 100 / (time.now - start)
    assert rate == pytest.approx(0.5 * 600 / 60 * (1 - MARGIN), rel=0.02), "half of the lane's pace"


async def test_a_tenant_not_named_is_not_capped_and_takes_nothing() -> None:
    time = FakeTime()
    limiter, shares = setup(time, rpm=600)
    start = time.now
    for _ in range(100):
        assert await shares.acquire("globex", "m", limiter.limits("m"), 10) is None
    assert time.now == start


async def test_the_tokens_per_minute_are_shared_too_and_settled_with_usage() -> None:
    time = FakeTime()
    limiter, shares = setup(time, rpm=None, tpm=60_000)
    limits = limiter.limits("m")
    permit = await shares.acquire("acme", "m", limits, 100)
    wait_before = shares.wait_s("acme", "m", limits, 400)
    shares.on_charged(permit, 2_100)  # it cost far more than estimated: the tenant pays the difference
    assert shares.wait_s("acme", "m", limits, 400) > wait_before
    pace = 0.5 * 60_000 / 60 * (1 - MARGIN)
    assert shares.wait_s("acme", "m", limits, 400) == pytest.approx(wait_before + 2_000 / pace)


async def test_a_refused_call_gives_the_tenant_its_request_back() -> None:
    time = FakeTime()
    limiter, shares = setup(time, rpm=60)  # half: 0.5 request per second, a burst of one
    limits = limiter.limits("m")
    permit = await shares.acquire("acme", "m", limits, 10)
    assert shares.wait_s("acme", "m", limits, 10) > 1.0
    shares.on_refused(permit)
    assert shares.wait_s("acme", "m", limits, 10) == 0.0


async def test_no_limit_known_yet_caps_nothing() -> None:
    time = FakeTime()
    limiter, shares = setup(time, rpm=None, tpm=None)
    assert await shares.acquire("acme", "m", limiter.limits("m"), 10) is None


def test_a_share_outside_zero_to_one_is_refused() -> None:
    time = FakeTime()
    with pytest.raises(ValueError, match="acme"):
        TenantShares({"acme": 1.5}, clock=time.clock, sleep=time.sleep)


class Quiet:
    def on_rate_limited(self) -> None: ...
    def on_usage(self, model: str, usage: Usage) -> None: ...
    def on_concurrency_limit(self, limit: int) -> None: ...


REQUEST = ChatCompletionRequest(model="m", messages=[UserMessage(content="hello")])


async def test_the_pacer_takes_a_capped_tenants_share_before_its_turn_and_settles_it() -> None:
    """Through the Pacer as the client calls it: acme (share 0.25) sends at a quarter of the requests per
    minute; globex (not capped) at the lanes' pace."""
    time = FakeTime()
    pacer = Pacer(
        max_concurrency=100,
        requests_per_minute=600,
        tokens_per_minute=None,
        observer=Quiet(),
        clock=time.clock,
        sleep=time.sleep,
        tenant_shares={"acme": 0.25},
    )
    start = time.now
    for _ in range(51):
        async with pacer.turn(REQUEST, "acme") as turn:
            assert turn.tenant_permit is not None
    assert 50 / (time.now - start) == pytest.approx(0.25 * 600 / 60 * (1 - MARGIN), rel=0.05)
    start = time.now
    for _ in range(50):
        async with pacer.turn(REQUEST, "globex") as turn:
            assert turn.tenant_permit is None
    assert 50 / (time.now - start) == pytest.approx(600 / 60 * (1 - MARGIN), rel=0.1), "the rest is the others'"


async def test_the_pacer_gives_a_refused_call_its_tenant_share_back() -> None:
    time = FakeTime()
    pacer = Pacer(
        max_concurrency=10,
        requests_per_minute=60,
        tokens_per_minute=None,
        observer=Quiet(),
        clock=time.clock,
        sleep=time.sleep,
        tenant_shares={"acme": 0.5},
    )
    limits = pacer.rate_limiter.limits("m")
    async with pacer.turn(REQUEST, "acme") as turn:
        assert pacer.tenant_shares.wait_s("acme", "m", limits, 10) > 1.0
        refused = AttemptFailure(failure="http_status", message="HTTP 429", retriable=True, status=429)
        pacer.settle(turn, 429, {}, refused, 0.1)
    assert pacer.tenant_shares.wait_s("acme", "m", limits, 10) == 0.0
