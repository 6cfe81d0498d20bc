"""Per-tenant rate shares through the client against the simulator, in virtual time shared by both sides:
a tenant capped at a quarter of the requests per minute (named in the job's metadata) sends at a quarter of
the rate, a tenant not named at the whole rate, and neither meets a 429."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.client import ChatClient
from pipeline.client.lanes import MARGIN
from pipeline.outcomes import Completed
from schemas import UserMessage
from schemas.topics import Job
from tests.fixtures.simulator import MakeSimulator
from tests.integration.client_support import VirtualTime, client_for

RPM = 60


async def elapsed_for(client: ChatClient, time: VirtualTime, tenant: str, count: int) -> float:
    """Virtual seconds for ``count`` jobs of ``tenant``, all submitted at once."""
    jobs = [
        Job(id=f"{tenant}-{i}", messages=[UserMessage(content="Hello.")], metadata={"team": tenant})
        for i in range(count)
    ]
    start = time.now
    outcomes = await asyncio.gather(*(client.complete(job) for job in jobs))
    assert all(isinstance(outcome, Completed) for outcome in outcomes)
    return time.now - start


async def test_a_tenant_capped_at_a_quarter_sends_at_a_quarter_of_the_rate(make_simulator: MakeSimulator) -> None:
    time = VirtualTime()
    sim = await make_simulator(rpm=RPM, clock=time.clock)
    shares = {"acme": 0.25}
    async with client_for(
        sim, time=time, concurrency=8, requests_per_minute=RPM, tenant_rate_shares=shares, tenant_field="team"
    ) as client:
        capped = await elapsed_for(client, time, "acme", 9)
        await time.sleep(60)  # the lanes refill
        free = await elapsed_for(client, time, "globex", 9)
    assert sim.stats().rate_limited == {}
    pace = RPM / 60 * (1 - MARGIN)
    assert capped == pytest.approx(8 / (0.25 * pace), rel=0.05), "8 intervals at a quarter of the pace"
    assert free < capped / 3, "the tenant not named is not held to the share"
