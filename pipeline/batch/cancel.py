"""Cancelling a batch: its manifest written again with ``cancelled_ms``.

Every worker follows the batches topic (:mod:`pipeline.worker.cancellations`): within about a second of the
manifest being written, a job of the batch that was published before the cancellation and has not been
handed to the provider client yet is routed to review as ``cancelled``, without a call. Calls already in
flight complete and are routed as usual. Cancelling again changes nothing (the first time stands), and a
batch whose every request already has a result is not cancelled (there is nothing left to stop).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from pipeline.batch.manifest import read_manifest, write_manifest
from pipeline.batch.progress import BatchFollower
from pipeline.kafka import KafkaSettings
from schemas.batches import BatchManifest


class UnknownBatch(LookupError):
    """No batch of that id on the batches topic."""


class NothingToCancel(Exception):
    """Every request of the batch already has a result."""


async def cancel_batch(
    kafka: KafkaSettings, batches_topic: str, batch_id: str, clock: Callable[[], float] = time.time
) -> tuple[BatchManifest, bool]:
    """Mark the batch cancelled; returns its manifest and whether this call cancelled it (False: it was)."""
    manifest = await read_manifest(kafka, batches_topic, batch_id)
    if manifest is None:
        raise UnknownBatch(batch_id)
    if manifest.cancelled_ms is not None:
        return manifest, False
    if manifest.status == "submitted":
        async with BatchFollower(kafka, manifest, batches_topic) as follower:
            if not (await follower.catch_up()).remaining:
                raise NothingToCancel(f"batch {batch_id} is completed: every request has a result")
    cancelled = msgspec.structs.replace(manifest, cancelled_ms=int(clock() * 1000))
    await write_manifest(kafka, batches_topic, cancelled)
    return cancelled, True
