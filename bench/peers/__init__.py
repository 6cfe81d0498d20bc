"""Peers for the pipeline benchmarks: the ways people usually build this with the official tools.

- :mod:`bench.peers.sdk_semaphore` — (a) an aiokafka consumer, the official ``AsyncOpenAI`` client behind an
  ``asyncio.Semaphore``, a batch at a time, offsets committed after each batch;
- :mod:`bench.peers.cookbook` — (b) the OpenAI cookbook's parallel request processor (request and token
  buckets refilled continuously, a retry queue, a 15 s pause after a rate-limit error) fed from Kafka and
  writing to Kafka instead of JSONL files.

Both read the same environment variables as ``pipeline run`` (``KAFKA_BOOTSTRAP_SERVERS``, ``OPENAI_API_KEY``,
``OPENAI_BASE_URL``, ``PIPELINE_INPUT_TOPIC``, ``PIPELINE_OUTPUT_TOPIC``, ``PIPELINE_REVIEW_TOPIC``,
``PIPELINE_GROUP_ID``, ``PIPELINE_CONCURRENCY``, ``PIPELINE_MODERATION_MODEL``, ``PIPELINE_SESSION_TIMEOUT_MS``,
``PIPELINE_HEARTBEAT_INTERVAL_MS``), send the same ``moderation`` parameter, and route the same way: a
completion whose moderation is flagged or errored on either side (or missing) goes to the review topic,
the rest to the output topic, keyed by job id, produced with ``acks=all``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

DEFAULT_MODEL: Final = "gpt-4o-mini"
DEFAULT_MODERATION_MODEL: Final = "omni-moderation-latest"


@dataclass(frozen=True)
class PeerSettings:
    bootstrap_servers: str
    api_key: str
    base_url: str
    input_topic: str
    output_topic: str
    review_topic: str
    group_id: str
    concurrency: int
    model: str
    moderation_model: str
    session_timeout_ms: int
    heartbeat_interval_ms: int

    @classmethod
    def from_env(cls) -> PeerSettings:
        env = os.environ
        return cls(
            bootstrap_servers=env.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
            api_key=env["OPENAI_API_KEY"],
            base_url=env.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
            input_topic=env.get("PIPELINE_INPUT_TOPIC", "prompts"),
            output_topic=env.get("PIPELINE_OUTPUT_TOPIC", "completions"),
            review_topic=env.get("PIPELINE_REVIEW_TOPIC", "review"),
            group_id=env.get("PIPELINE_GROUP_ID", "pipeline"),
            concurrency=int(env.get("PIPELINE_CONCURRENCY", "256")),
            model=env.get("PIPELINE_MODEL", DEFAULT_MODEL),
            moderation_model=env.get("PIPELINE_MODERATION_MODEL", DEFAULT_MODERATION_MODEL),
            session_timeout_ms=int(env.get("PIPELINE_SESSION_TIMEOUT_MS", "10000")),
            heartbeat_interval_ms=int(env.get("PIPELINE_HEARTBEAT_INTERVAL_MS", "3000")),
        )
