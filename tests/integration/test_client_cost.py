"""What a job was billed for, against the simulator: paid attempts count (a 200 whose body broke), unanswered
ones (5xx) do not, and the price table turns it into the cost the records carry."""

from __future__ import annotations

import pytest

from pipeline.outcomes import Completed, Failed
from pipeline.simulator import Simulator
from pipeline.tenancy.pricing import default_prices
from tests.integration.client_support import client_for, job

PROMPT = "Tell me about herons."


async def test_retries_the_provider_did_not_answer_are_not_billed(simulator: Simulator) -> None:
    async with client_for(simulator) as client:
        outcome = await client.complete(job(f"{PROMPT} [[sim:500*2]]", job_id="job-500"))
    assert isinstance(outcome, Completed) and outcome.attempts == 3
    usage = outcome.completion.usage
    assert usage is not None and outcome.spent is not None
    assert outcome.spent.paid_attempts == 1
    assert (outcome.spent.prompt_tokens, outcome.spent.completion_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    price = default_prices().price("gpt-4o-mini")
    assert price is not None
    expected = (usage.prompt_tokens * price.input + usage.completion_tokens * price.output) / 1e6
    assert default_prices().cost(outcome.spent) == pytest.approx(expected)


async def test_a_paid_answer_that_failed_to_decode_is_billed(simulator: Simulator) -> None:
    async with client_for(simulator) as client:
        clean = await client.complete(job(PROMPT, job_id="job-clean"))
        broken = await client.complete(job(f"{PROMPT} [[sim:malformed_json]]", job_id="job-malformed"))
    assert isinstance(clean, Completed) and clean.spent is not None
    assert isinstance(broken, Failed) and broken.failure == "decode"
    assert broken.spent is not None and broken.spent.paid_attempts == 1
    assert broken.spent.model == "gpt-4o-mini"
    assert broken.spent.completion_tokens > 0
    assert broken.spent.prompt_tokens >= clean.spent.prompt_tokens  # the directive is part of the prompt
    cost = default_prices().cost(broken.spent)
    assert cost is not None and cost > 0
