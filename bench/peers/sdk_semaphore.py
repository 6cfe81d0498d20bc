"""Peer (a): an aiokafka consumer and the official ``AsyncOpenAI`` client behind a semaphore.

The way the pattern is usually written: fetch a batch with ``getmany``, start one task per record, let an
``asyncio.Semaphore`` bound the calls in flight, wait for the whole batch, then ``commit()``. The SDK does
the HTTP, its own retries (2 by default) and the decoding into its pydantic ``ChatCompletion``; routing looks
at ``completion.moderation`` (missing, an ``error`` side, or a flagged result → review). Results are produced
with ``acks="all"``, keyed by job id. The SDK's connection pool is sized to the concurrency (its default keeps
only 100 connections alive, which would make the peer reconnect under load).

    python -m bench.peers.sdk_semaphore [--http httpx|aiohttp]

``--http aiohttp`` uses the SDK's ``DefaultAioHttpClient`` (httpx's interface over aiohttp).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

import httpx2
import openai
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from openai import AsyncOpenAI, DefaultAioHttpClient, DefaultAsyncHttpxClient
from openai.types.chat import ChatCompletion

from bench.peers import PeerSettings


def review_reason(completion: ChatCompletion) -> str | None:
    """Why a completion goes to review, or None when it is clean."""
    moderation = completion.moderation
    if moderation is None:
        return "moderation_missing"
    sides = (moderation.input, moderation.output)
    if any(side.type == "error" for side in sides):
        return "moderation_error"
    if any(result.flagged for side in sides if side.type == "moderation_results" for result in side.results):
        return "flagged"
    return None


class Processor:
    def __init__(self, settings: PeerSettings, http: str) -> None:
        self.settings = settings
        limits = httpx2.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency)
        http_client = (
            DefaultAioHttpClient(limits=limits) if http == "aiohttp" else DefaultAsyncHttpxClient(limits=limits)
        )
        self.client = AsyncOpenAI(api_key=settings.api_key, base_url=settings.base_url, http_client=http_client)
        self.semaphore = asyncio.Semaphore(settings.concurrency)
        self.consumer = AIOKafkaConsumer(
            settings.input_topic,
            bootstrap_servers=settings.bootstrap_servers,
            group_id=settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
        )
        self.producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")

    async def handle(self, value: bytes) -> None:
        try:
            job = json.loads(value)
            job_id = str(job["id"])
            messages = job["messages"]
        except (ValueError, KeyError, TypeError) as exc:
            await self.send(self.settings.review_topic, None, {"reason": "invalid_job", "error": str(exc)})
            return
        try:
            async with self.semaphore:
                completion = await self.client.chat.completions.create(
                    model=job.get("model") or self.settings.model,
                    messages=messages,
                    moderation={"model": job.get("moderation_model") or self.settings.moderation_model},
                    **(job.get("params") or {}),
                )
        except openai.APIError as exc:
            await self.send(
                self.settings.review_topic, job_id, {"id": job_id, "reason": "api_error", "error": str(exc)}
            )
            return
        reason = review_reason(completion)
        if reason is None:
            choice = completion.choices[0]
            result = {
                "id": job_id,
                "content": choice.message.content,
                "finish_reason": choice.finish_reason,
                "usage": completion.usage.model_dump(mode="json") if completion.usage else None,
                "moderation": completion.moderation.model_dump(mode="json") if completion.moderation else None,
                "metadata": job.get("metadata"),
            }
            await self.send(self.settings.output_topic, job_id, result)
        else:
            review = {"id": job_id, "reason": reason, "job": job, "completion": completion.model_dump(mode="json")}
            await self.send(self.settings.review_topic, job_id, review)

    async def send(self, topic: str, job_id: str | None, payload: dict[str, Any]) -> None:
        key = job_id.encode() if job_id is not None else None
        await self.producer.send_and_wait(topic, json.dumps(payload).encode(), key=key)

    async def run(self, stop: asyncio.Event) -> None:
        await self.producer.start()
        await self.consumer.start()
        try:
            while not stop.is_set():
                batches = await self.consumer.getmany(timeout_ms=1000, max_records=self.settings.concurrency)
                records = [record for partition in batches.values() for record in partition]
                if not records:
                    continue
                await asyncio.gather(*(self.handle(record.value or b"") for record in records))
                await self.consumer.commit()
        finally:
            await self.consumer.stop()
            await self.producer.stop()
            await self.client.close()


async def main_async(http: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await Processor(PeerSettings.from_env(), http).run(stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.sdk_semaphore", description=__doc__)
    parser.add_argument("--http", choices=("httpx", "aiohttp"), default="httpx", help="the SDK's HTTP client")
    args = parser.parse_args(argv)
    asyncio.run(main_async(args.http))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
