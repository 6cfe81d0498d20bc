"""The tokens a job was billed for add up over every attempt the provider charged: the one that answered, and
the ones paid and then lost (a 200 whose body does not decode, a stream cut after its usage chunk). Attempts
the provider did not answer with usage (5xx, 429) add nothing. Driven through ``httpx.MockTransport``."""

from __future__ import annotations

import json

import httpx

from pipeline.client.exchange import salvage_usage
from pipeline.outcomes import Completed, Failed, Spend
from schemas.chat import Usage
from schemas.response import PromptTokensDetails
from tests.unit.client.test_transport_headers import COMPLETION, error, ok, run, scripted

USAGE = {
    "prompt_tokens": 100,
    "completion_tokens": 20,
    "total_tokens": 120,
    "prompt_tokens_details": {"cached_tokens": 64},
}


def chunk(**fields: object) -> str:
    body = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [],
    }
    return "data: " + json.dumps({**body, **fields}) + "\n\n"


def stream(text: str) -> httpx.Response:
    return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})


WHOLE_STREAM = (
    chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}])
    + chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
    + chunk(usage=USAGE)
    + "data: [DONE]\n\n"
)


async def test_one_answer_is_one_paid_attempt() -> None:
    handler, _ = scripted(ok())
    outcome, _ = await run(handler)
    assert isinstance(outcome, Completed)
    assert outcome.spent == Spend(model="gpt-4o-mini", prompt_tokens=9, completion_tokens=2, paid_attempts=1)


async def test_unanswered_attempts_cost_nothing() -> None:
    handler, _ = scripted(error(503), error(429, headers={"retry-after-ms": "5"}), ok())
    outcome, _ = await run(handler)
    assert isinstance(outcome, Completed) and outcome.attempts == 3
    assert outcome.spent is not None and outcome.spent.paid_attempts == 1


async def test_a_paid_answer_whose_body_does_not_decode_still_counts() -> None:
    body = json.dumps({**COMPLETION, "choices": "not a list", "usage": USAGE}).encode()
    handler, _ = scripted(httpx.Response(200, content=body, headers={"content-type": "application/json"}))
    outcome, _ = await run(handler)
    assert isinstance(outcome, Failed) and outcome.failure == "decode"
    assert outcome.spent == Spend(
        model="gpt-4o-mini", prompt_tokens=100, cached_tokens=64, completion_tokens=20, paid_attempts=1
    )


async def test_a_stream_cut_after_its_usage_is_paid_and_the_retry_is_paid_again() -> None:
    cut = WHOLE_STREAM.removesuffix("data: [DONE]\n\n")  # usage came, then the connection ended
    handler, seen = scripted(stream(cut), stream(WHOLE_STREAM))
    outcome, _ = await run(handler, stream=True)
    assert isinstance(outcome, Completed) and outcome.attempts == 2 and len(seen) == 2
    assert outcome.spent == Spend(
        model="gpt-4o-mini-2024-07-18", prompt_tokens=200, cached_tokens=128, completion_tokens=40, paid_attempts=2
    )


async def test_a_stream_cut_before_its_usage_adds_nothing() -> None:
    cut = chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}])
    handler, _ = scripted(stream(cut), stream(cut), stream(cut))
    outcome, _ = await run(handler, stream=True, max_attempts=3)
    assert isinstance(outcome, Failed) and outcome.failure == "stream"
    assert outcome.spent is None


def test_usage_is_salvaged_only_when_its_member_is_intact() -> None:
    usage = Usage(
        prompt_tokens=100,
        completion_tokens=20,
        total_tokens=120,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=64),
    )
    assert salvage_usage(b'{"id": "x", "choices": [,,], "usage": ' + json.dumps(USAGE).encode() + b",,}") == usage
    assert salvage_usage(b'{"id": "x", "usage": {"prompt_tokens": 10, "compl') is None
    assert salvage_usage(b'{"id": "x", "usage": {"prompt_tokens": "many"}}') is None
    assert salvage_usage(b"<html>502 Bad Gateway</html>") is None
