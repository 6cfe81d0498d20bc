"""Fair share across partitions: how long a small tenant's jobs take behind another tenant's flood.

Tenant A's jobs go to partition 0 of the input topic, tenant B's to partition 1 (jobs keyed by tenant land
one tenant to a partition). One worker (``PIPELINE_CONCURRENCY`` 64, the simulator at a fixed latency)
starts with A's backlog of 2,000, 5,000 or 20,000 jobs; once it is busy with them (a full concurrency of A's
results is out), B publishes 50 jobs. The figure is B's time: from B's publish to B's last result (the
result records' own timestamps), with the first and the median B result for the shape. The run ends as
soon as B is done (A's backlog is not waited for).

*Before* is the code at ``git HEAD`` run from a worktree (``--before PATH``, e.g. after
``git worktree add /tmp/before <commit>``): one fetch-ordered ready queue and one read-ahead for all
partitions, paused as a whole. *After* is this checkout: a ready queue per partition served by fewest calls
in flight, a read-ahead per partition paused on its own (:mod:`pipeline.tenancy.fair`).

    python -m bench.fair_share [--quick] [--before /tmp/before]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from aiokafka.structs import TopicPartition

from bench.harness import (
    OUT,
    PARTITIONS,
    Contender,
    Services,
    Topics,
    contender_env,
    create_topics,
    make_jobs,
    ours,
    started,
    wait_for_members,
)
from pipeline.kafka import KafkaSettings, make_consumer, make_producer, seek_to_log_start

LATENCY: Final = "fixed:500"
CONCURRENCY: Final = 64
B_JOBS: Final = 50
BACKLOGS: Final = (2_000, 5_000, 20_000)
QUICK_BACKLOGS: Final = (2_000, 20_000)
A_PARTITION: Final = 0
B_PARTITION: Final = 1
TIMEOUT_S: Final = 240.0


async def publish_to(kafka: KafkaSettings, topic: str, partition: int, jobs: Sequence[tuple[bytes, bytes]]) -> None:
    producer = make_producer(kafka, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        acks = [await producer.send(topic, value, key=key, partition=partition) for key, value in jobs]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


class Results:
    """Reads the output and review topics: when each job's first result was written (ms), by job id."""

    def __init__(self, kafka: KafkaSettings, topics: Topics) -> None:
        self._consumer = make_consumer(kafka, None, fetch_max_wait_ms=50)
        self._topics = topics
        self.stamps: dict[str, int] = {}

    async def __aenter__(self) -> Results:
        await self._consumer.start()
        partitions = [
            TopicPartition(t, p) for t in (self._topics.output, self._topics.review) for p in range(PARTITIONS)
        ]
        self._consumer.assign(partitions)
        seek_to_log_start(self._consumer, partitions)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    def count(self, prefix: str) -> int:
        return sum(1 for job_id in self.stamps if job_id.startswith(prefix))

    async def until(self, prefix: str, count: int, deadline: float) -> bool:
        while self.count(prefix) < count:
            if time.monotonic() > deadline:
                return False
            for records in (await self._consumer.getmany(timeout_ms=100)).values():
                for record in records:
                    if record.key is not None:
                        self.stamps.setdefault(record.key.decode(), record.timestamp)
        return True


async def run(services: Services, contender: Contender, backlog: int) -> dict[str, Any]:
    topics = Topics.fresh(f"fair-{backlog}")
    kafka = services.kafka
    base_url = await asyncio.to_thread(services.sim, LATENCY)
    await create_topics(kafka, topics)
    a_jobs = make_jobs(backlog, prefix="a")
    b_jobs = make_jobs(B_JOBS, prefix="b", seed=11)
    await publish_to(kafka, topics.input, A_PARTITION, a_jobs)
    env = contender_env(services, topics, base_url, CONCURRENCY)
    row: dict[str, Any] = {"contender": contender.name, "a_backlog": backlog, "b_jobs": B_JOBS}
    with started(contender, env, label=f"fair-{contender.slug}-{backlog}"):
        await wait_for_members(kafka, topics.group, 1, 60)
        async with Results(kafka, topics) as results:
            deadline = time.monotonic() + TIMEOUT_S
            if not await results.until("a-", CONCURRENCY, deadline):
                return {**row, "timed_out": True}
            a_before = results.count("a-")
            published_ms = time.time() * 1000
            await publish_to(kafka, topics.input, B_PARTITION, b_jobs)
            done = await results.until("b-", B_JOBS, deadline)
            b_ms = sorted(stamp - published_ms for job_id, stamp in results.stamps.items() if job_id.startswith("b-"))
            row.update(
                timed_out=not done,
                b_done=len(b_ms),
                b_first_s=round(b_ms[0] / 1000, 2) if b_ms else None,
                b_median_s=round(statistics.median(b_ms) / 1000, 2) if b_ms else None,
                b_last_s=round(b_ms[-1] / 1000, 2) if b_ms else None,
                a_done_meanwhile=results.count("a-") - a_before,
            )
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| code | A's backlog | B's 50 jobs: first | median | last | A's jobs done meanwhile |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row.get("timed_out") and not row.get("b_done"):
            lines.append(f"| {row['contender']} | {row['a_backlog']:,} | timed out | | | |")
            continue
        last = f"{row['b_last_s']} s" + (" (timed out)" if row["timed_out"] else "")
        lines.append(
            f"| {row['contender']} | {row['a_backlog']:,} | {row['b_first_s']} s | {row['b_median_s']} s | "
            f"{last} | {row['a_done_meanwhile']:,} |"
        )
    return "\n".join(lines)


#: The last commit before fair share (one fetch-ordered queue paused as a whole): ``make bench`` runs it as
#: "before" from a temporary git worktree.
BEFORE_FAIR_SHARE: Final = "d99d2e1"


async def section(services: Services, *, quick: bool, before: Path | None) -> list[dict[str, Any]]:
    """Every backlog, "before" (a checkout at ``before``, when given) then this checkout."""
    contenders = [Contender("after (this checkout)", ours().argv)]
    if before is not None:
        contenders.insert(0, Contender(f"before ({BEFORE_FAIR_SHARE})", ours().argv, cwd=before))
    rows = []
    for backlog in QUICK_BACKLOGS if quick else BACKLOGS:
        for contender in contenders:
            row = await run(services, contender, backlog)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


@contextlib.contextmanager
def before_checkout(repo: Path, rev: str = BEFORE_FAIR_SHARE) -> Iterator[Path | None]:
    """A temporary git worktree of ``rev`` (None when git or the commit is not there: "after" runs alone)."""
    with tempfile.TemporaryDirectory(prefix="bench-before-") as scratch:
        path = Path(scratch) / "before"
        added = subprocess.run(
            ["git", "-C", str(repo), "worktree", "add", "--detach", str(path), rev], capture_output=True, check=False
        )
        if added.returncode != 0:
            yield None
            return
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(path)], check=False)


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    with Services() as services:
        return await section(services, quick=args.quick, before=Path(args.before) if args.before else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="backlogs of 2,000 and 20,000 only")
    parser.add_argument("--before", help="a checkout of the previous code (a git worktree) to run as 'before'")
    args = parser.parse_args(argv)
    rows = asyncio.run(main_async(args))
    print(
        f"\nA's backlog on partition {A_PARTITION}, B's {B_JOBS} jobs on partition {B_PARTITION}; latency "
        f"{LATENCY} ms, concurrency {CONCURRENCY}; B's times from its publish\n"
    )
    print(table(rows))
    (OUT / "fair_share.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
