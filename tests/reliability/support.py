"""What every reliability scenario shares: worker processes, reading what came out, and the figures.

A scenario publishes jobs, injects its faults, reads everything the workers produced and counts: jobs in,
on output, on review by reason, lost (published, never seen: must be 0), duplicates (seen more than once)
and faults injected. :func:`record` keeps the figures (the latest run of each scenario and size) in
:data:`FIGURES_FILE`, which ``python -m tests.reliability.report`` prints as the README's table:

- ``tests/reliability/out/results.json`` (gitignored) by default, so ``make test`` changes no tracked file;
- ``tests/reliability/results.json`` (tracked: the figures the README quotes) in a soak run (``make soak``,
  ``PIPELINE_SOAK=1``) or when ``PIPELINE_RECORD_RELIABILITY=1`` is set, e.g.
  ``PIPELINE_RECORD_RELIABILITY=1 make test`` to refresh the CI-size rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition

from pipeline.kafka import (
    KafkaSettings,
    committed_with_metadata,
    make_admin,
    make_consumer,
    make_producer,
    seek_to_log_start,
)
from schemas.topics import Result, Review, reason_kind
from tests.fixtures.env import child_env, run_setting
from tests.integration.harness import Topics
from tests.integration.harness import committed as committed_offsets

ROOT = Path(__file__).resolve().parents[2]
#: The figures the README quotes (tracked).
RESULTS = Path(__file__).with_name("results.json")
#: The figures of the latest run that did not record them (gitignored).
LATEST_RESULTS = Path(__file__).with_name("out") / "results.json"
#: ``make soak`` sets it; the long variants skip without it.
SOAK = run_setting("PIPELINE_SOAK") == "1"
#: Where :func:`record` writes this session's figures.
FIGURES_FILE = RESULTS if SOAK or run_setting("PIPELINE_RECORD_RELIABILITY") == "1" else LATEST_RESULTS
#: The figures recorded in this pytest session (printed at its end by ``conftest.py``).
SESSION: list[Tally] = []

#: A killed member is only evicted after the session timeout, and the embedded broker holds every JoinGroup
#: for half of it: a short session makes a crash or a rebalance cost seconds, not tens of seconds.
QUICK_EVICTION = {"PIPELINE_SESSION_TIMEOUT_MS": "3000", "PIPELINE_HEARTBEAT_INTERVAL_MS": "1000"}

_result_decoder = msgspec.json.Decoder(Result)
_review_decoder = msgspec.json.Decoder(Review)


# --------------------------------------------------------------------------------------------------
# What came out
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One record on the output or review topic."""

    key: str  # the job id, or ``partition:offset`` of the source when the record has no id
    route: str  # "output" or the review reason kind
    partition: int  # of the source record in the input topic
    offset: int
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    record_key: bytes | None = None

    def raw(self) -> bytes:
        """Everything the record carries: value, key and headers."""
        headers = b"".join(name.encode() + value for name, value in self.headers)
        return self.value + (self.record_key or b"") + headers


def _seen(record: ConsumerRecord[bytes, bytes], output_topic: str, keep: bool) -> Seen:
    value = record.value or b""
    if record.topic == output_topic:
        result = _result_decoder.decode(value)
        job_id, route, source = result.id, "output", result.source
    else:
        review = _review_decoder.decode(value)
        job_id, route, source = review.id, reason_kind(review.reason), review.source
    key = job_id if job_id is not None else f"{source.partition}:{source.offset}"
    if not keep:
        return Seen(key, route, source.partition, source.offset, b"", ())
    return Seen(key, route, source.partition, source.offset, value, tuple(record.headers), record.key)


class Outputs:
    """Reads the output and review topics from the beginning, incrementally, for the whole scenario."""

    def __init__(self, kafka: KafkaSettings, topics: Topics, *, keep_records: bool = True) -> None:
        self._kafka = kafka
        self._topics = topics
        self._keep = keep_records
        self._consumer = make_consumer(kafka, None)
        self.seen: list[Seen] = []

    async def __aenter__(self) -> Outputs:
        await self._consumer.start()
        admin = make_admin(self._kafka)
        await admin.start()
        try:
            described = await admin.describe_topics([self._topics.output, self._topics.review])
        finally:
            await admin.close()
        partitions = [TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]]
        self._consumer.assign(partitions)
        seek_to_log_start(self._consumer, partitions)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._consumer.stop()

    async def poll(self, timeout_ms: int = 200) -> None:
        for records in (await self._consumer.getmany(timeout_ms=timeout_ms)).values():
            self.seen.extend(_seen(record, self._topics.output, self._keep) for record in records)

    def distinct(self) -> set[str]:
        return {seen.key for seen in self.seen}

    async def until(self, predicate: Callable[[Outputs], bool], timeout: float, what: str = "records") -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:g}s for {what}; {len(self.distinct())} distinct keys seen")
            await self.poll()

    async def until_all(self, expected: set[str], timeout: float) -> None:
        await self.until(lambda o: expected <= o.distinct(), timeout, f"all {len(expected)} jobs")

    async def settle(self, quiet_s: float = 1.0) -> None:
        """Read until nothing new arrives for ``quiet_s`` (late duplicates included)."""
        count, last_change = len(self.seen), time.monotonic()
        while time.monotonic() - last_change < quiet_s:
            await self.poll()
            if len(self.seen) != count:
                count, last_change = len(self.seen), time.monotonic()


# --------------------------------------------------------------------------------------------------
# The figures
# --------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    scenario: str
    size: str
    jobs: int
    output: int
    review: dict[str, int]
    lost: int
    duplicates: int
    extra_records: int
    faults: int
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        reviews = ", ".join(f"{k} {v}" for k, v in sorted(self.review.items())) or "none"
        notes = "".join(f"  {k}={v}" for k, v in self.notes.items())
        return (
            f"[{self.scenario}/{self.size}] jobs {self.jobs}  output {self.output}  review {{{reviews}}}  "
            f"lost {self.lost}  duplicates {self.duplicates} (+{self.extra_records} records)  "
            f"faults {self.faults}  {self.seconds:.1f}s{notes}"
        )


def tally(scenario: str, size: str, expected: set[str], seen: list[Seen], faults: int, **notes: Any) -> Tally:
    """Count one scenario: ``expected`` are the keys published, ``seen`` what the topics hold."""
    counts = Counter(s.key for s in seen)
    routes: dict[str, set[str]] = {}
    for s in seen:
        routes.setdefault(s.route, set()).add(s.key)
    return Tally(
        scenario=scenario,
        size=size,
        jobs=len(expected),
        output=len(routes.get("output", set()) & expected),
        review={route: len(keys & expected) for route, keys in sorted(routes.items()) if route != "output"},
        lost=len(expected - set(counts)),
        duplicates=sum(1 for key, n in counts.items() if n > 1),
        extra_records=sum(n - 1 for n in counts.values() if n > 1),
        faults=faults,
        notes=dict(notes),
    )


def record(figures: Tally, started: float) -> Tally:
    """Print the figures and keep them in :data:`FIGURES_FILE` (latest run per scenario and size)."""
    figures.seconds = round(time.monotonic() - started, 1)
    SESSION.append(figures)
    print(figures.line())
    try:
        results: dict[str, Any] = json.loads(FIGURES_FILE.read_text())
    except (OSError, ValueError):
        results = {}
    results[f"{figures.scenario}/{figures.size}"] = {
        **asdict(figures),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    FIGURES_FILE.parent.mkdir(exist_ok=True)
    temporary = FIGURES_FILE.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    temporary.replace(FIGURES_FILE)
    return figures


def size_of(request: Any) -> str:
    """``"ci"`` or ``"soak"``, from a test's parametrization ids."""
    return "soak" if "soak" in request.node.callspec.id.split("-") else "ci"


def simulator_faults(by_fault: Mapping[str, int]) -> int:
    return sum(by_fault.values())


# --------------------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------------------

METRICS_URL = re.compile(r"metrics on (http://\S+/metrics)")


class WorkerProcess:
    """``pipeline run`` (or the commit probe around it) in a child process, its JSON log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, *, probe: bool = False) -> None:
        module = "tests.reliability.probe_worker" if probe else "pipeline.cli"
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "run"],
            env=child_env(env, {"PYTHONFAULTHANDLER": "1"}),  # SIGABRT dumps every thread's stack into the log
            cwd=ROOT,
            stdout=self._log,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def lines(self) -> list[dict[str, Any]]:
        return log_lines(self.log_path)

    def messages(self) -> list[str]:
        return [str(line.get("msg")) for line in self.lines()]

    def metrics_url(self) -> str | None:
        for line in self.lines():
            match = METRICS_URL.search(str(line.get("detail", "")))
            if match:
                return match[1].replace("0.0.0.0", "127.0.0.1")
        return None

    def scrape(self) -> str:
        url = self.metrics_url()
        if url is None:
            raise RuntimeError("the worker has not logged its metrics address yet")
        with urllib.request.urlopen(url, timeout=5) as reply:
            return str(reply.read().decode())

    def metric(self, name: str) -> float:
        """The sum of a metric's samples (every label set) from ``/metrics``."""
        total = 0.0
        for line in self.scrape().splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total

    def kill(self) -> None:
        if self.running:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()

    def terminate(self) -> None:
        """SIGTERM: the graceful stop (drain, commit, leave the group)."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float = 60.0) -> int:
        """The exit code; a worker still running after ``timeout`` is aborted (its stacks land in its log)."""
        try:
            code = await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            state = self.proc_state()
            self.process.send_signal(signal.SIGABRT)
            await asyncio.to_thread(self.process.wait, 10)
            raise TimeoutError(f"{self.log_path.name} still running {timeout:g}s after the signal ({state})") from None
        finally:
            self._log.close()
        return code

    def proc_state(self) -> str:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("State:"):
                    return line
        return "State: gone"

    def rss_kib(self) -> int:
        return proc_rss_kib(self.pid)

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def log_lines(path: Path) -> list[dict[str, Any]]:
    """A JSON-lines log, split on ``\\n`` only (a job id may hold U+2028 and friends, which
    ``str.splitlines`` would also split on)."""
    lines: list[dict[str, Any]] = []
    for raw in path.read_text(errors="replace").split("\n"):
        if not raw:
            continue
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            lines.append({"unparsed": raw})
    return lines


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@contextlib.contextmanager
def workers() -> Iterator[list[WorkerProcess]]:
    """A list to start workers into; every one still running is killed when the block ends."""
    started: list[WorkerProcess] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.kill()


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g}s for {what}")
        await asyncio.sleep(0.1)


async def until_assigned(worker: WorkerProcess, timeout: float = 30.0) -> None:
    """Until the worker logged a non-empty assignment (it joined the group)."""

    def assigned() -> bool:
        return any(line.get("msg") == "partitions assigned" and line.get("partitions") for line in worker.lines())

    await until(assigned, timeout, "the worker to be assigned partitions")


def log_problems(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Lines that show something unhandled: errors, exceptions, tracebacks, anything not JSON."""
    return [
        line
        for line in lines
        if "unparsed" in line or line.get("level") in ("error", "critical") or "exception" in line
    ]


async def until_committed(kafka: KafkaSettings, group: str, topic: str, ends: dict[int, int], timeout: float) -> None:
    """Until the group has committed every partition to its end (the last owners caught up)."""
    deadline = time.monotonic() + timeout
    while (committed := await committed_offsets(kafka, group, topic, len(ends))) != ends:
        if time.monotonic() > deadline:
            raise TimeoutError(f"committed {committed}, end {ends}")
        await asyncio.sleep(0.2)


def end_offsets(acks: list[Any]) -> dict[int, int]:
    """Per partition, one past the last offset published (from the producer's RecordMetadata)."""
    ends: dict[int, int] = {}
    for ack in acks:
        ends[ack.partition] = max(ends.get(ack.partition, 0), ack.offset + 1)
    return ends


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(seconds, value)`` samples, per minute."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in samples) / var


# --------------------------------------------------------------------------------------------------
# Load and observation while a scenario runs
# --------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def started_producer(kafka: KafkaSettings) -> AsyncIterator[AIOKafkaProducer]:
    producer = make_producer(kafka)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def publish_steadily(
    kafka: KafkaSettings, topic: str, values: list[bytes], per_second: float, first_key: int = 0
) -> list[Any]:
    """Publish ``values`` at about ``per_second`` (in 0.1 s batches); returns their RecordMetadata."""
    producer = make_producer(kafka)
    await producer.start()
    acks: list[asyncio.Future[Any]] = []
    try:
        batch = max(1, round(per_second / 10))
        started = time.monotonic()
        for index in range(0, len(values), batch):
            for offset, value in enumerate(values[index : index + batch]):
                acks.append(await producer.send(topic, value, key=str(first_key + index + offset).encode()))
            ahead = started + (index + batch) / per_second - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        return list(await asyncio.gather(*acks))
    finally:
        await producer.stop()


class CommitWatch:
    """Polls a group's committed offsets; any offset that moves backwards is a regression."""

    def __init__(self, kafka: KafkaSettings, group: str, topic: str, partitions: int, every_s: float = 0.25) -> None:
        self._kafka = kafka
        self._group = group
        self._partitions = [TopicPartition(topic, p) for p in range(partitions)]
        self._every_s = every_s
        self.last: dict[int, int] = {}
        self.regressions: list[str] = []
        self.polls = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        admin = make_admin(self._kafka)
        await admin.start()
        try:
            while True:
                try:
                    stored = await committed_with_metadata(admin, self._group, self._partitions)
                except KafkaError:
                    stored = {}
                self.polls += 1
                for tp, om in stored.items():
                    before = self.last.get(tp.partition)
                    if before is not None and om.offset < before:
                        self.regressions.append(f"partition {tp.partition}: {before} -> {om.offset}")
                    self.last[tp.partition] = om.offset
                await asyncio.sleep(self._every_s)
        finally:
            await admin.close()

    def start(self) -> CommitWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def commits_outside_ownership(lines: list[dict[str, Any]], group: str) -> list[str]:
    """Commits (logged by the probe worker) of partitions the worker did not own at that point of its log.

    A partition is owned from its "partitions assigned" line to its "partitions revoked" line; the worker
    commits a revoked partition's finished prefix inside the revoke, before that line.
    """
    owned: set[str] = set()
    outside: list[str] = []
    for line in lines:
        msg, partitions = line.get("msg"), line.get("partitions") or []
        if msg == "partitions assigned":
            owned |= set(partitions)
        elif msg == "partitions revoked":
            owned -= set(partitions)
        elif msg == "probe: committed" and line.get("detail") == group:
            for entry in partitions:
                name = str(entry).rsplit("@", 1)[0]
                if name not in owned:
                    outside.append(f"{line.get('ts')} {entry}")
    return outside
