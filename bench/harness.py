"""What every end-to-end benchmark shares: the broker, the simulator, the jobs, the contenders, the stopwatch.

One run, whoever the contender (our worker or a peer):

1. fresh topics (``<run>-prompts``, ``-completions``, ``-review``) with :data:`PARTITIONS` partitions;
2. the same jobs published before the contender starts (a backlog), keyed by job id;
3. the contender started as its own process(es), all reading the same environment variables;
4. a collector in this process reads the output and review topics until every job has a record there, and
   samples the contender's CPU time (``/proc/<pid>/stat``) and peak RSS (``VmHWM``) on the way;
5. the contender is killed (every result is already acknowledged; its shutdown is not measured).

Throughput is steady state, from the result records' own timestamps: the jobs finished after the first
concurrency's worth of results (a whole first wave, when a fixed latency makes jobs move in waves) over the
span from then to the last result, so start-up, group join and connection set-up are not counted. CPU per
job is the contender's CPU time between the first :data:`WARMUP_SHARE` of results and the last one, over
the jobs finished in between.

Core pinning (on a machine with at least two cores): this process, the broker and the simulator share the
last core; contenders get the others (core 0 on a 2-core machine). Scale-out runs may let workers use every
core. :func:`pinning_note` says what was done, for the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
from aiokafka.structs import TopicPartition

from pipeline.broker import EmbeddedBroker
from pipeline.kafka import KafkaSettings, ensure_topics, make_admin, make_consumer, make_producer, seek_to_log_start
from pipeline.simulator import SimulatorConfig, SimulatorProcess
from pipeline.simulator.classifier import MARKERS
from pipeline.simulator.generation import VOCABULARY
from pipeline.simulator.latency import parse_latency
from schemas.chat import UserMessage
from schemas.topics import Job

REPO: Final = Path(__file__).resolve().parent.parent
OUT: Final = REPO / "bench" / "out"
API_KEY: Final = "sk-bench-0000000000000000"
PARTITIONS: Final = 8
WARMUP_SHARE: Final = 0.05
#: A share of jobs whose prompt carries a marker word, so input moderation flags them (review, not output).
FLAGGED_SHARE: Final = 0.1
FLAG_WORD: Final = MARKERS["violence"]
#: Fast joins on the embedded broker, which holds JoinGroup for session_timeout/2.
GROUP_ENV: Final = {"PIPELINE_SESSION_TIMEOUT_MS": "6000", "PIPELINE_HEARTBEAT_INTERVAL_MS": "2000"}
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
CORES: Final = os.cpu_count() or 1
_run_ids = itertools.count(1)


# --------------------------------------------------------------------------------------------------
# Cores
# --------------------------------------------------------------------------------------------------


def service_cores() -> set[int]:
    """Broker, simulator and this process (collector, publisher)."""
    return {CORES - 1} if CORES > 1 else {0}


def contender_cores() -> set[int]:
    return set(range(CORES - 1)) if CORES > 1 else {0}


def all_cores() -> set[int]:
    return set(range(CORES))


def pin_self_to_service_cores() -> None:
    """Children started afterwards (broker, simulator) inherit it."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, service_cores())


def pinning_note() -> str:
    if CORES < 2:
        return f"{CORES} core: nothing pinned"
    return (
        f"{CORES} cores: broker, simulator and the bench's collector on core {CORES - 1}; "
        f"the worker or peer under test on core(s) {', '.join(map(str, sorted(contender_cores())))} "
        "(scale-out: workers on every core)"
    )


# --------------------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------------------


class Services:
    """The embedded broker and a simulator process (restartable with other settings)."""

    def __init__(self) -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        self.broker = EmbeddedBroker(log_path=OUT / "tansu.log")
        self.simulator: SimulatorProcess | None = None
        self._sim_key: tuple[Any, ...] | None = None

    @property
    def kafka(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.broker.bootstrap_servers)

    def pids(self) -> list[int]:
        """Broker, simulator and this process: what shares the service core."""
        found = [os.getpid()]
        if self.broker.pid is not None:
            found.append(self.broker.pid)
        if self.simulator is not None and self.simulator.pid is not None:
            found.append(self.simulator.pid)
        return found

    def __enter__(self) -> Services:
        pin_self_to_service_cores()
        self.broker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.simulator is not None:
            self.simulator.stop()
        self.broker.stop()

    def sim(self, latency: str = "0", rpm: int | None = None, tpm: int | None = None, fresh: bool = False) -> str:
        """The simulator's base URL, (re)started when the settings differ (or ``fresh``: full rate buckets)."""
        key = (latency, rpm, tpm)
        if self.simulator is None or self._sim_key != key or fresh:
            if self.simulator is not None:
                self.simulator.stop()
            config = SimulatorConfig(latency=parse_latency(latency), rpm=rpm, tpm=tpm, random_seed=7)
            cpu = CORES - 1 if CORES > 1 else None
            self.simulator = SimulatorProcess(config, cpu=cpu).start()
            self._sim_key = key
        return self.simulator.base_url


# --------------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topics:
    input: str
    output: str
    review: str
    group: str

    @classmethod
    def fresh(cls, label: str) -> Topics:
        name = f"b{os.getpid()}-{next(_run_ids)}-{label}"
        return cls(f"{name}-prompts", f"{name}-completions", f"{name}-review", f"{name}-group")

    def env(self) -> dict[str, str]:
        return {
            "PIPELINE_INPUT_TOPIC": self.input,
            "PIPELINE_OUTPUT_TOPIC": self.output,
            "PIPELINE_REVIEW_TOPIC": self.review,
            "PIPELINE_GROUP_ID": self.group,
        }


def prompt(rng: random.Random, flagged: bool) -> str:
    words = [rng.choice(VOCABULARY) for _ in range(rng.randint(12, 90))]
    if flagged:
        words.insert(rng.randrange(len(words)), FLAG_WORD)
    return " ".join(words).capitalize() + "."


def make_jobs(count: int, *, prefix: str = "job", seed: int = 7) -> list[tuple[bytes, bytes]]:
    """``count`` (key, value) job records: varied prompts of about 15 to 120 tokens, 10% flagged on input."""
    rng = random.Random(seed)
    jobs = []
    for i in range(count):
        job_id = f"{prefix}-{i}"
        flagged = rng.random() < FLAGGED_SHARE
        job = Job(id=job_id, messages=[UserMessage(content=prompt(rng, flagged))], metadata={"tenant": "bench"})
        jobs.append((job_id.encode(), msgspec.json.encode(job)))
    return jobs


def expected_reviews(jobs: Sequence[tuple[bytes, bytes]]) -> int:
    return sum(1 for _, value in jobs if FLAG_WORD.encode() in value.lower())


async def create_topics(kafka: KafkaSettings, topics: Topics, partitions: int = PARTITIONS) -> None:
    await ensure_topics(kafka, [topics.input, topics.output, topics.review], partitions)


async def publish(kafka: KafkaSettings, topic: str, jobs: Sequence[tuple[bytes, bytes]]) -> None:
    producer = make_producer(kafka, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        acks = [await producer.send(topic, value, key=key) for key, value in jobs]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


# --------------------------------------------------------------------------------------------------
# Contenders: processes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    """How to start one contender process; every one reads the same environment variables."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    #: Where it runs (``python -m`` imports from there first): another checkout for before/after runs.
    cwd: Path = REPO

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.name).strip("-")


def ours(loop: str = "asyncio", transport: str = "aiohttp") -> Contender:
    """Our worker (``bench.ours``: ``pipeline run`` with the bench's switches)."""
    name = "ours" + ("" if (loop, transport) == ("asyncio", "aiohttp") else f" ({transport}, {loop})")
    return Contender(name, (sys.executable, "-m", "bench.ours", "--loop", loop, "--transport", transport))


OURS: Final = ours()
PEER_SDK: Final = Contender(
    "peer (a) SDK + semaphore", (sys.executable, "-m", "bench.peers.sdk_semaphore", "--http", "httpx")
)
PEER_SDK_AIOHTTP: Final = Contender(
    "peer (a) SDK + semaphore, aiohttp", (sys.executable, "-m", "bench.peers.sdk_semaphore", "--http", "aiohttp")
)
PEER_COOKBOOK: Final = Contender("peer (b) cookbook processor", (sys.executable, "-m", "bench.peers.cookbook"))


def contender_env(
    services: Services, topics: Topics, base_url: str, concurrency: int, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    return {
        **os.environ,
        **GROUP_ENV,
        **topics.env(),
        "KAFKA_BOOTSTRAP_SERVERS": services.broker.bootstrap_servers,
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": base_url,
        "PIPELINE_CONCURRENCY": str(concurrency),
        "PIPELINE_METRICS_PORT": "0",
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    }


@contextlib.contextmanager
def started(
    contender: Contender, env: Mapping[str, str], count: int = 1, cores: set[int] | None = None, label: str = ""
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` processes of the contender, pinned to ``cores``; killed when the block ends."""
    pin = cores if cores is not None else contender_cores()
    log_path = OUT / f"{label or contender.slug}.log"

    def preexec() -> None:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, pin)

    processes: list[subprocess.Popen[bytes]] = []
    with log_path.open("ab") as log:
        try:
            for _ in range(count):
                processes.append(
                    subprocess.Popen(
                        list(contender.argv),
                        env={**env, **contender.env},
                        stdout=log,
                        stderr=log,
                        stdin=subprocess.DEVNULL,
                        preexec_fn=preexec,
                        cwd=contender.cwd,
                    )
                )
            yield processes
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
            for process in processes:
                process.wait(timeout=30)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (every thread), 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kb(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) in kB."""
    found: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0])
    except OSError:
        pass
    return found


# --------------------------------------------------------------------------------------------------
# Collecting results
# --------------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One contender's run over one job set."""

    contender: str
    jobs: int
    done: int
    outputs: int
    reviews: int
    jobs_per_s: float
    cpu_us_per_job: float | None
    peak_rss_mb: float | None
    wall_s: float
    timed_out: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def collect(
    kafka: KafkaSettings,
    topics: Topics,
    expected: int,
    pids: Sequence[int],
    timeout_s: float,
    on_progress: Any = None,
    service_pids: Sequence[int] = (),
) -> tuple[list[tuple[int, str]], dict[str, float]]:
    """Read output and review until ``expected`` distinct job ids arrived; returns (timestamp ms, topic) of
    each first result, and CPU samples of the contender processes (and of the services: broker, simulator,
    this process) at the warm-up mark and at the end."""
    consumer = make_consumer(kafka, None, fetch_max_wait_ms=50)
    await consumer.start()
    seen: dict[bytes, tuple[int, str]] = {}
    samples: dict[str, float] = {}
    warmup = max(1, int(expected * WARMUP_SHARE))
    try:
        partitions = [TopicPartition(t, p) for t in (topics.output, topics.review) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        seek_to_log_start(consumer, partitions)
        deadline = time.monotonic() + timeout_s
        while len(seen) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=100)
            for tp, records in batches.items():
                destination = "output" if tp.topic == topics.output else "review"
                for record in records:
                    if record.key is not None and record.key not in seen:
                        seen[record.key] = (record.timestamp, destination)
            if "cpu_warm" not in samples and len(seen) >= warmup:
                samples["cpu_warm"] = sum(cpu_seconds(pid) for pid in pids)
                samples["services_warm"] = sum(cpu_seconds(pid) for pid in service_pids)
                samples["done_warm"] = len(seen)
                samples["t_warm"] = time.monotonic()
            if on_progress is not None:
                on_progress(len(seen))
        samples["cpu_end"] = sum(cpu_seconds(pid) for pid in pids)
        samples["services_end"] = sum(cpu_seconds(pid) for pid in service_pids)
        samples["done_end"] = len(seen)
        samples["t_end"] = time.monotonic()
    finally:
        await consumer.stop()
    return list(seen.values()), samples


async def wait_for_members(kafka: KafkaSettings, group: str, members: int, timeout_s: float) -> bool:
    """Whether ``group`` became stable with ``members`` members within ``timeout_s`` (then a second more, for
    the members' assignment callbacks)."""
    admin = make_admin(kafka)
    await admin.start()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # no group yet: wait
                (response,) = await admin.describe_consumer_groups([group])
                _error, _name, state, _kind, _protocol, found = response.groups[0]
                if state == "Stable" and len(found) >= members:
                    await asyncio.sleep(1.0)
                    return True
            await asyncio.sleep(0.25)
        return False
    finally:
        await admin.close()


def throughput(stamps: Sequence[tuple[int, str]], skip: int) -> float:
    """Steady-state jobs per second: from the ``skip``-th result (the concurrency's worth: the first wave) to
    the last, over the results in between, from the result records' own timestamps.

    Starting after a whole wave matters at a fixed latency, where jobs move in waves of the concurrency: a
    span that started inside the first wave would miss most of a wave's time. It also leaves out the one-off
    start (connections opened, caches cold). Short runs fall back to the first-to-last span.
    """
    times = sorted(ts for ts, _ in stamps)
    if len(times) < 20:
        return 0.0
    first = skip - 1 if len(times) >= 3 * skip else 0
    span = (times[-1] - times[first]) / 1000
    return (len(times) - 1 - first) / span if span > 0 else 0.0


async def run_once(
    services: Services,
    contender: Contender,
    *,
    jobs: Sequence[tuple[bytes, bytes]],
    latency: str = "0",
    concurrency: int = 256,
    processes: int = 1,
    cores: set[int] | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout_s: float = 300.0,
    rpm: int | None = None,
    tpm: int | None = None,
    label: str = "",
    publish_after_join_s: float | None = None,
) -> RunResult:
    """Publish the jobs to fresh topics, run the contender until every job has a result, measure.

    The jobs are a backlog published before the contender starts, unless ``publish_after_join_s`` is given:
    then they are published once every process has joined the group (or after that many seconds), so a
    run with several processes is not measured through their rebalances.
    """
    topics = Topics.fresh(label or contender.slug[:24])
    kafka = services.kafka
    base_url = await asyncio.to_thread(services.sim, latency, rpm, tpm)
    await create_topics(kafka, topics)
    if publish_after_join_s is None:
        await publish(kafka, topics.input, jobs)
    env = contender_env(services, topics, base_url, concurrency, extra_env)
    started_at = time.monotonic()
    with started(contender, env, processes, cores, label) as procs:
        pids = [p.pid for p in procs]
        if publish_after_join_s is not None:
            await wait_for_members(kafka, topics.group, processes, publish_after_join_s)
            await publish(kafka, topics.input, jobs)
        stamps, samples = await collect(kafka, topics, len(jobs), pids, timeout_s, service_pids=services.pids())
        rss = [memory_kb(pid).get("VmHWM", 0) for pid in pids]
        exited = [p.returncode for p in procs if p.poll() is not None]
    wall = time.monotonic() - started_at
    done = len(stamps)
    cpu_per_job = None
    extra: dict[str, Any] = {}
    if "cpu_warm" in samples and samples["done_end"] > samples["done_warm"]:
        jobs_in_span = samples["done_end"] - samples["done_warm"]
        cpu_per_job = (samples["cpu_end"] - samples["cpu_warm"]) / jobs_in_span * 1e6
        span = samples["t_end"] - samples["t_warm"]
        if span > 0:
            extra["contender_cores_busy"] = round((samples["cpu_end"] - samples["cpu_warm"]) / span, 3)
            extra["services_cores_busy"] = round((samples["services_end"] - samples["services_warm"]) / span, 3)
    if exited:
        extra["exited_early"] = exited
    routes = Counter(destination for _, destination in stamps)
    return RunResult(
        contender=contender.name,
        jobs=len(jobs),
        done=done,
        outputs=routes["output"],
        reviews=routes["review"],
        jobs_per_s=throughput(stamps, concurrency * processes),
        cpu_us_per_job=cpu_per_job,
        peak_rss_mb=max(rss) / 1024 if rss and max(rss) else None,
        wall_s=wall,
        timed_out=done < len(jobs),
        extra=extra,
    )


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """The median of several runs and their spread (min-max)."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        clean = [v for v in values if v is not None]
        if not clean:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        return cls(statistics.median(clean), min(clean), max(clean), len(clean))

    @property
    def spread_pct(self) -> float:
        return (self.high - self.low) / self.median * 100 if self.median else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high, "runs": self.runs}

    def fmt(self, digits: int = 0, unit: str = "") -> str:
        if self.runs == 0:
            return "-"
        spread = f" ({self.low:,.{digits}f}-{self.high:,.{digits}f})" if self.runs > 1 else ""
        return f"{self.median:,.{digits}f}{unit}{spread}"


def terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
