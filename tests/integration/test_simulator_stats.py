"""``/sim/stats`` and ``sim.stats()``: counts by status and fault, per-job attempts and duplicates, concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import msgspec

from pipeline.simulator import Simulator, SimulatorStats

AUTH = {"Authorization": "Bearer sk-test"}


def chat_body(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


async def test_jobs_attempts_and_duplicate_successes_are_counted(simulator: Simulator) -> None:
    async with httpx.AsyncClient(base_url=simulator.base_url, headers=AUTH) as client:
        for job, fault in (("a", "500*1"), ("a", "500*1"), ("b", ""), ("b", ""), ("b", ""), ("c", "")):
            headers = {"X-Client-Request-Id": job, "x-sim-fault": fault}
            await client.post("/chat/completions", json=chat_body(), headers=headers)
        await client.post("/chat/completions", json=chat_body(metadata={"job_id": "d"}))
        await client.post("/chat/completions", json=chat_body())  # no job id
    stats = simulator.stats()
    assert stats.requests == 8
    assert stats.by_status == {500: 1, 200: 7}
    assert stats.by_fault == {"500": 1}
    assert stats.attempts_by_job == {"a": 2, "b": 3, "c": 1, "d": 1}
    assert stats.successes_by_job == {"a": 1, "b": 3, "c": 1, "d": 1}
    assert stats.duplicate_successes == {"b": 3}
    assert stats.retried_jobs == {"a": 2, "b": 3}
    assert stats.by_endpoint == {"/v1/chat/completions": 8}
    assert stats.prompt_tokens == 7 * 7 and stats.completion_tokens > 0


async def test_failed_answers_are_not_successes(simulator: Simulator) -> None:
    async with httpx.AsyncClient(base_url=simulator.base_url, headers=AUTH) as client:
        headers = {"X-Client-Request-Id": "job"}
        for fault in ("malformed_json", "stream_error"):
            await client.post(
                "/chat/completions", json=chat_body(stream=True), headers={**headers, "x-sim-fault": fault}
            )
        await client.post("/chat/completions", json=chat_body(stream=True), headers=headers)
    stats = simulator.stats()
    assert stats.attempts_by_job == {"job": 3}
    assert stats.successes_by_job == {"job": 1}
    assert stats.by_status == {200: 3}


async def test_flagged_sides_are_counted(simulator: Simulator) -> None:
    async with httpx.AsyncClient(base_url=simulator.base_url, headers=AUTH) as client:
        moderation = {"model": "omni-moderation-latest"}
        await client.post("/chat/completions", json=chat_body("you moron", moderation=moderation))
        await client.post("/chat/completions", json=chat_body("[[sim: flag_output]]", moderation=moderation))
        await client.post("/chat/completions", json=chat_body("you moron"))  # not moderated
    stats = simulator.stats()
    assert (stats.flagged_input, stats.flagged_output) == (1, 1)


async def test_concurrency_high_water_mark(simulator: Simulator) -> None:
    async with httpx.AsyncClient(base_url=simulator.base_url, headers=AUTH) as client:
        await asyncio.gather(
            *(client.post("/chat/completions", json=chat_body("[[sim: latency=200]]")) for _ in range(5))
        )
    stats = simulator.stats()
    assert stats.max_in_flight == 5
    assert stats.in_flight == 0


async def test_stats_over_http_and_reset(simulator: Simulator) -> None:
    async with httpx.AsyncClient(base_url=simulator.url) as client:
        await client.post("/v1/chat/completions", json=chat_body(), headers=AUTH)
        await client.get("/v1/models")  # 401: no key
        stats = msgspec.json.decode((await client.get("/sim/stats")).content, type=SimulatorStats)
        assert stats == simulator.stats()
        assert stats.by_status == {200: 1, 401: 1}
        reset = msgspec.json.decode((await client.post("/sim/stats/reset")).content, type=SimulatorStats)
        assert reset.requests == 0 and reset.by_status == {}
        assert (await client.get("/sim/health")).json() == {"status": "ok"}
    assert simulator.stats().requests == 0
