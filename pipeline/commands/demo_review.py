"""``pipeline demo --review``: the review console over the demo's topics, until Ctrl-C.

A newcomer sees the loop close in one command: the demo's flagged and failed jobs are in the queue, an admin
account named ``demo`` exists for this run only (its token is printed once), and the demo's worker keeps
running, so an item sent back with **rerun** is processed again and lands on a topic as before.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import tempfile
from pathlib import Path
from typing import Final

from pipeline.commands.common import CliError
from pipeline.config import WorkerSettings
from pipeline.kafka import KafkaSettings
from pipeline.review.accounts import Accounts, add_reviewer
from pipeline.review.service import ReviewService
from pipeline.review.web import make_app, running

DECISIONS_TOPIC: Final = WorkerSettings().decisions_topic
DEMO_REVIEWER: Final = "demo"


async def serve_review_console(kafka: KafkaSettings, port: int, *, group_id: str = "pipeline-demo") -> None:
    """Serve the console on 127.0.0.1:``port`` over the demo's topics until SIGINT or SIGTERM."""
    worker = WorkerSettings(group_id=group_id, decisions_topic=DECISIONS_TOPIC)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        with tempfile.TemporaryDirectory(prefix="pipeline-demo-review-") as folder:
            accounts_file = Path(folder) / "reviewers.json"
            token = add_reviewer(accounts_file, DEMO_REVIEWER, admin=True)
            async with ReviewService(kafka, worker) as service:
                app = make_app(service.desk, Accounts(accounts_file), metrics=service.metrics.exposition)
                async with running(app, "127.0.0.1", port) as url:
                    print(
                        f"\nreview console on {url}\n"
                        f"sign in with this token (admin {DEMO_REVIEWER!r}, for this run only):\n  {token}\n"
                        "the worker keeps running, so a rerun decision is processed again; Ctrl-C stops everything",
                        flush=True,
                    )
                    await stop.wait()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CliError(f"port {port} is in use: pick another with --review-port (0: any)") from None
        raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
