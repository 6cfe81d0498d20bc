"""Peer (b): the OpenAI cookbook's parallel request processor, fed from Kafka and writing to Kafka.

The cookbook's script reads requests from a JSONL file and appends ``[request, response, metadata]`` lines to
another. Its structure is kept here, with a Kafka consumer where the input file was and a producer where
the output file was:

- one main loop that takes the next request (the retry queue first, else the next record), refills a
  request bucket and a token bucket continuously (per loop, from the time elapsed, capped at one minute's
  worth), starts the call as a task when both buckets hold enough, then sleeps 1 ms;
- a request's tokens are estimated up front from its messages plus ``max_tokens`` (15 when unset) x ``n``
  (the cookbook counts prompt tokens with tiktoken; four characters a token here, as no tokenizer is
  installed);
- a status tracker counts tasks started, in progress, succeeded, failed, rate-limit and other errors;
- a call that fails (an ``error`` in the answer, or an exception) goes back on the retry queue while it has
  attempts left (5); an error whose message says "Rate limit" pauses *all* sending for 15 s;
- no response headers are read.

The adaptation a user needs for Kafka: at most ``PIPELINE_CONCURRENCY`` calls in flight (the script has no
cap; with a consumer there must be one, and it gives every contender the same concurrency), the
``moderation`` parameter, routing by the SDK's ``ChatCompletion`` model (flagged, errored or missing
moderation → review topic; else output topic; keyed by job id, ``acks="all"``), and offsets committed every
second as the contiguous prefix of finished records per partition.

    python -m bench.peers.cookbook --max-requests-per-minute R --max-tokens-per-minute T
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, TopicPartition
from openai.types.chat import ChatCompletion

from bench.peers import PeerSettings
from bench.peers.sdk_semaphore import review_reason

SECONDS_TO_PAUSE_AFTER_RATE_LIMIT_ERROR: Final = 15
SECONDS_TO_SLEEP_EACH_LOOP: Final = 0.001
MAX_ATTEMPTS: Final = 5
COMMIT_EVERY_S: Final = 1.0
UNLIMITED: Final = 10**9

log = logging.getLogger("cookbook")


def num_tokens_consumed_from_request(request_json: dict[str, Any]) -> int:
    """The cookbook's estimate for a chat request: per-message framing, the text, 2 for the reply, plus
    ``max_tokens`` (default 15) x ``n``."""
    completion_tokens = request_json.get("n", 1) * request_json.get("max_tokens", 15)
    num_tokens = 0
    for message in request_json["messages"]:
        num_tokens += 4
        for key, value in message.items():
            num_tokens += -(-len(str(value)) // 4)
            if key == "name":
                num_tokens -= 1
    num_tokens += 2
    return num_tokens + completion_tokens


@dataclass
class StatusTracker:
    num_tasks_started: int = 0
    num_tasks_in_progress: int = 0
    num_tasks_succeeded: int = 0
    num_tasks_failed: int = 0
    num_rate_limit_errors: int = 0
    num_api_errors: int = 0
    num_other_errors: int = 0
    num_calls_in_flight: int = 0
    time_of_last_rate_limit_error: float = 0.0


@dataclass
class Offsets:
    """Per partition: the offsets started and not finished; commit below the lowest of them."""

    pending: dict[TopicPartition, set[int]] = field(default_factory=dict)
    highest: dict[TopicPartition, int] = field(default_factory=dict)

    def start(self, tp: TopicPartition, offset: int) -> None:
        self.pending.setdefault(tp, set()).add(offset)
        self.highest[tp] = max(self.highest.get(tp, -1), offset)

    def finish(self, tp: TopicPartition, offset: int) -> None:
        self.pending[tp].discard(offset)

    def committable(self) -> dict[TopicPartition, int]:
        return {tp: min(self.pending[tp]) if self.pending.get(tp) else high + 1 for tp, high in self.highest.items()}


@dataclass
class APIRequest:
    task_id: int
    record: ConsumerRecord[bytes, bytes]
    request_json: dict[str, Any]
    job: dict[str, Any]
    token_consumption: int
    attempts_left: int
    result: list[Any] = field(default_factory=list)

    async def call_api(self, processor: Processor) -> None:
        tracker = processor.status_tracker
        error: Any = None
        tracker.num_calls_in_flight += 1
        try:
            async with processor.session.post(
                processor.request_url, headers=processor.request_header, json=self.request_json
            ) as response:
                answer = await response.json()
            if "error" in answer:
                tracker.num_api_errors += 1
                error = answer
                if "Rate limit" in answer["error"].get("message", ""):
                    tracker.time_of_last_rate_limit_error = time.time()
                    tracker.num_rate_limit_errors += 1
                    tracker.num_api_errors -= 1
        except Exception as exc:
            tracker.num_other_errors += 1
            error = exc
        finally:
            tracker.num_calls_in_flight -= 1
        if error:
            self.result.append(error)
            if self.attempts_left:
                processor.retry_queue.put_nowait(self)
            else:
                errors = [str(e) for e in self.result]
                await processor.write(processor.settings.review_topic, [self.request_json, errors, self.job])
                tracker.num_tasks_in_progress -= 1
                tracker.num_tasks_failed += 1
                processor.done(self.record)
            return
        topic = processor.settings.output_topic
        if review_reason(ChatCompletion.model_validate(answer)) is not None:
            topic = processor.settings.review_topic
        await processor.write(topic, [self.request_json, answer, self.job])
        tracker.num_tasks_in_progress -= 1
        tracker.num_tasks_succeeded += 1
        processor.done(self.record)


class Processor:
    def __init__(self, settings: PeerSettings, max_requests_per_minute: float, max_tokens_per_minute: float) -> None:
        self.settings = settings
        self.max_requests_per_minute = max_requests_per_minute
        self.max_tokens_per_minute = max_tokens_per_minute
        self.request_url = settings.base_url.rstrip("/") + "/chat/completions"
        self.request_header = {"Authorization": f"Bearer {settings.api_key}"}
        self.status_tracker = StatusTracker()
        self.retry_queue: asyncio.Queue[APIRequest] = asyncio.Queue()
        self.offsets = Offsets()
        self.buffered: deque[ConsumerRecord[bytes, bytes]] = deque()
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
        self.session: aiohttp.ClientSession

    async def write(self, topic: str, line: list[Any]) -> None:
        """Where the script appends a JSONL line, the line goes to a topic, keyed by job id."""
        job_id = line[2].get("id") if isinstance(line[2], dict) else None
        key = str(job_id).encode() if job_id is not None else None
        await self.producer.send_and_wait(topic, json.dumps(line).encode(), key=key)

    def done(self, record: ConsumerRecord[bytes, bytes]) -> None:
        self.offsets.finish(TopicPartition(record.topic, record.partition), record.offset)

    async def next_record(self) -> ConsumerRecord[bytes, bytes] | None:
        """The next input line: a fetched record, when fewer than the concurrency are in progress."""
        room = self.settings.concurrency - self.status_tracker.num_tasks_in_progress
        if not self.buffered and room > 0:
            batches = await self.consumer.getmany(timeout_ms=0, max_records=room)
            self.buffered.extend(record for partition in batches.values() for record in partition)
        return self.buffered.popleft() if self.buffered and room > 0 else None

    def request_for(self, task_id: int, record: ConsumerRecord[bytes, bytes]) -> APIRequest | None:
        try:
            job = json.loads(record.value or b"")
            request_json = {
                "model": job.get("model") or self.settings.model,
                "messages": job["messages"],
                "moderation": {"model": job.get("moderation_model") or self.settings.moderation_model},
                **(job.get("params") or {}),
            }
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return APIRequest(
            task_id=task_id,
            record=record,
            request_json=request_json,
            job=job,
            token_consumption=num_tokens_consumed_from_request(request_json),
            attempts_left=MAX_ATTEMPTS,
        )

    async def commit_loop(self) -> None:
        committed: dict[TopicPartition, int] = {}
        while True:
            await asyncio.sleep(COMMIT_EVERY_S)
            offsets = {tp: o for tp, o in self.offsets.committable().items() if committed.get(tp) != o}
            if offsets:
                await self.consumer.commit(offsets)
                committed.update(offsets)

    async def run(self, stop: asyncio.Event) -> None:
        await self.producer.start()
        await self.consumer.start()
        connector = aiohttp.TCPConnector(limit=self.settings.concurrency)
        self.session = aiohttp.ClientSession(connector=connector)
        committer = asyncio.create_task(self.commit_loop())
        tracker = self.status_tracker
        tasks: set[asyncio.Task[None]] = set()
        next_request: APIRequest | None = None
        available_request_capacity = self.max_requests_per_minute
        available_token_capacity = self.max_tokens_per_minute
        last_update_time = time.time()
        task_ids = 0
        try:
            while not stop.is_set():
                # get next request (if one is not already waiting for capacity)
                if next_request is None:
                    if not self.retry_queue.empty():
                        next_request = self.retry_queue.get_nowait()
                    elif (record := await self.next_record()) is not None:
                        tp = TopicPartition(record.topic, record.partition)
                        self.offsets.start(tp, record.offset)
                        task_ids += 1
                        next_request = self.request_for(task_ids, record)
                        tracker.num_tasks_started += 1
                        tracker.num_tasks_in_progress += 1
                        if next_request is None:
                            await self.write(self.settings.review_topic, [None, ["invalid job"], {}])
                            tracker.num_tasks_in_progress -= 1
                            tracker.num_tasks_failed += 1
                            self.done(record)

                # update available capacity
                current_time = time.time()
                seconds_since_update = current_time - last_update_time
                available_request_capacity = min(
                    available_request_capacity + self.max_requests_per_minute * seconds_since_update / 60.0,
                    self.max_requests_per_minute,
                )
                available_token_capacity = min(
                    available_token_capacity + self.max_tokens_per_minute * seconds_since_update / 60.0,
                    self.max_tokens_per_minute,
                )
                last_update_time = current_time

                # if enough capacity available (and a free slot), call API
                if next_request is not None and tracker.num_calls_in_flight < self.settings.concurrency:
                    next_request_tokens = next_request.token_consumption
                    if available_request_capacity >= 1 and available_token_capacity >= next_request_tokens:
                        available_request_capacity -= 1
                        available_token_capacity -= next_request_tokens
                        next_request.attempts_left -= 1
                        task = asyncio.create_task(next_request.call_api(self))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                        next_request = None

                # main loop sleeps briefly so concurrent tasks can run
                await asyncio.sleep(SECONDS_TO_SLEEP_EACH_LOOP)

                # if a rate limit error was hit recently, pause to cool down
                seconds_since_rate_limit_error = time.time() - tracker.time_of_last_rate_limit_error
                if seconds_since_rate_limit_error < SECONDS_TO_PAUSE_AFTER_RATE_LIMIT_ERROR:
                    remaining_seconds_to_pause = (
                        SECONDS_TO_PAUSE_AFTER_RATE_LIMIT_ERROR - seconds_since_rate_limit_error
                    )
                    await asyncio.sleep(remaining_seconds_to_pause)
                    log.warning("pausing to cool down after a rate-limit error")
        finally:
            committer.cancel()
            for task in tasks:
                task.cancel()
            await self.session.close()
            await self.consumer.stop()
            await self.producer.stop()


async def main_async(max_requests_per_minute: float, max_tokens_per_minute: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    processor = Processor(PeerSettings.from_env(), max_requests_per_minute, max_tokens_per_minute)
    await processor.run(stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.cookbook", description=__doc__)
    parser.add_argument("--max-requests-per-minute", type=float, default=UNLIMITED)
    parser.add_argument("--max-tokens-per-minute", type=float, default=UNLIMITED)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main_async(args.max_requests_per_minute, args.max_tokens_per_minute))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
