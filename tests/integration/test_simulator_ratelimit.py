"""Rate-limit buckets over HTTP: headers count down, 429 with the API's body, reset as time passes."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from schemas.chat import ErrorBody

AUTH = {"Authorization": "Bearer sk-test"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_request_headers_count_down_then_429_then_reset(make_simulator: Any) -> None:
    clock = FakeClock()
    sim = await make_simulator(rpm=3, clock=clock)
    async with httpx.AsyncClient(base_url=sim.base_url, headers=AUTH) as client:
        responses = [await client.post("/chat/completions", json=chat_body()) for _ in range(4)]
        assert [r.status_code for r in responses] == [200, 200, 200, 429]
        assert [r.headers["x-ratelimit-remaining-requests"] for r in responses] == ["2", "1", "0", "0"]
        assert [r.headers["x-ratelimit-reset-requests"] for r in responses] == ["20s", "40s", "1m0s", "1m0s"]
        assert all(r.headers["x-ratelimit-limit-requests"] == "3" for r in responses)
        refused = responses[-1]
        error = msgspec.json.decode(refused.content, type=ErrorBody).error
        assert (error.type, error.code) == ("requests", "rate_limit_exceeded")
        assert "Limit 3, Used 3, Requested 1" in error.message
        assert (refused.headers["retry-after"], refused.headers["retry-after-ms"]) == ("20", "20000")

        clock.now += 20
        again = await client.post("/chat/completions", json=chat_body())
        assert again.status_code == 200
        assert again.headers["x-ratelimit-remaining-requests"] == "0"
        clock.now += 60
        models = await client.get("/models")
        assert models.headers["x-ratelimit-remaining-requests"] == "3"
        assert models.headers["x-ratelimit-reset-requests"] == "0s"
    assert sim.stats().rate_limited == {"requests": 1}
    assert sim.stats().by_status == {200: 5, 429: 1}


async def test_token_bucket_charges_prompt_plus_max_tokens(make_simulator: Any) -> None:
    clock = FakeClock()
    sim = await make_simulator(tpm=100, clock=clock)
    async with httpx.AsyncClient(base_url=sim.base_url, headers=AUTH) as client:
        first = await client.post("/chat/completions", json=chat_body(max_completion_tokens=60))
        # prompt "hi": 1 token + 3 per message + 3 per reply = 7, plus 60 reserved for the answer
        assert first.headers["x-ratelimit-remaining-tokens"] == "33"
        assert "x-ratelimit-limit-requests" not in first.headers
        second = await client.post("/chat/completions", json=chat_body(max_completion_tokens=60))
        assert second.status_code == 429
        error = msgspec.json.decode(second.content, type=ErrorBody).error
        assert (error.type, error.code) == ("tokens", "rate_limit_exceeded")
        too_big = await client.post("/chat/completions", json=chat_body(max_completion_tokens=500))
        assert too_big.status_code == 429
        assert "Request too large" in msgspec.json.decode(too_big.content, type=ErrorBody).error.message
        clock.now += 60
        assert (await client.post("/chat/completions", json=chat_body(max_completion_tokens=60))).status_code == 200
    assert sim.stats().rate_limited == {"tokens": 2}


async def test_without_limits_no_ratelimit_headers(simulator: Any) -> None:
    async with httpx.AsyncClient(base_url=simulator.base_url, headers=AUTH) as client:
        response = await client.post("/chat/completions", json=chat_body())
    assert not [name for name in response.headers if name.startswith("x-ratelimit")]


async def test_a_limit_enforced_over_one_second_windows(make_simulator: Any) -> None:
    """3,000 requests/min over 1 s windows: 50 pass at once, the 51st is refused although the minute is far
    from spent; the headers state the minute's limit and the window's bucket."""
    clock = FakeClock()
    sim = await make_simulator(rpm=3000, rate_window=1.0, clock=clock)
    async with httpx.AsyncClient(base_url=sim.base_url, headers=AUTH) as client:
        responses = [await client.post("/chat/completions", json=chat_body()) for _ in range(51)]
        assert [r.status_code for r in responses] == [200] * 50 + [429]
        assert {r.headers["x-ratelimit-limit-requests"] for r in responses} == {"3000"}
        first, refused = responses[0], responses[-1]
        assert (first.headers["x-ratelimit-remaining-requests"], first.headers["x-ratelimit-reset-requests"]) == (
            "49",
            "20ms",
        )
        assert (refused.headers["x-ratelimit-remaining-requests"], refused.headers["retry-after-ms"]) == ("0", "20")
        assert refused.headers["x-ratelimit-reset-requests"] == "1s"
        clock.now += 0.1
        again = [await client.post("/chat/completions", json=chat_body()) for _ in range(6)]
        assert [r.status_code for r in again] == [200] * 5 + [429]
    assert sim.stats().rate_limited == {"requests": 2}


async def test_a_tenth_of_a_second_window_reports_a_bucket_of_five(make_simulator: Any) -> None:
    clock = FakeClock()
    sim = await make_simulator(rpm=3000, tpm=1_000_000, rate_window=0.1, clock=clock)
    async with httpx.AsyncClient(base_url=sim.base_url, headers=AUTH) as client:
        statuses = [(await client.post("/chat/completions", json=chat_body())).status_code for _ in range(6)]
        assert statuses == [200] * 5 + [429]
        clock.now += 1
        answer = await client.post("/chat/completions", json=chat_body())
    assert answer.headers["x-ratelimit-remaining-requests"] == "4"
    assert answer.headers["x-ratelimit-reset-requests"] == "20ms"
    # 1,000,000 tokens/min over 0.1 s: a bucket of 1,666 tokens, the prompt's few taken from it.
    assert int(answer.headers["x-ratelimit-remaining-tokens"]) < 1666
    assert answer.headers["x-ratelimit-limit-tokens"] == "1000000"
