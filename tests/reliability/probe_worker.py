"""``pipeline run`` with two observations added (test-only instruments); nothing else about the worker changes.

- Every offset commit is logged. The worker does not log its commits; the rebalance storm needs to see them,
  in order with the worker's "partitions assigned" / "partitions revoked" lines, to prove that no partition
  is committed after it was given up.
- SIGUSR1 prints the stack of every asyncio task to stderr: what a worker that stopped making progress is
  waiting for.

Run as ``python -m tests.reliability.probe_worker run``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from types import FrameType
from typing import Any

from aiokafka import AIOKafkaConsumer

from pipeline.cli import main

log = logging.getLogger("pipeline.probe")
_commit = AIOKafkaConsumer.commit


async def _logged_commit(self: AIOKafkaConsumer, offsets: Any = None) -> None:
    await _commit(self, offsets)
    if offsets:
        log.info(
            "probe: committed",
            extra={
                "partitions": [f"{tp.topic}-{tp.partition}@{om.offset}" for tp, om in offsets.items()],
                "detail": self._group_id,
            },
        )


def _print_tasks(signum: int, frame: FrameType | None) -> None:
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:
        return  # no loop running yet (or any more)
    for task in tasks:
        print(f"--- task {task.get_name()}", file=sys.stderr)
        task.print_stack(limit=12, file=sys.stderr)
    sys.stderr.flush()


if __name__ == "__main__":
    AIOKafkaConsumer.commit = _logged_commit  # type: ignore[method-assign]
    signal.signal(signal.SIGUSR1, _print_tasks)
    if os.environ.get("PROBE_GROUP_DEBUG") == "1":  # the consumer group protocol, request by request
        logging.getLogger("aiokafka.consumer.group_coordinator").setLevel(logging.DEBUG)
    sys.exit(main(sys.argv[1:]))
