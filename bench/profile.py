"""Where the worker's CPU goes at saturation: a pyinstrument profile of ``bench.ours`` at latency 0.

The worker runs with ``--profile``; the profiler is started once 10% of the jobs have results and stopped at
90%, so start-up, group join and the tail are left out. The sampled time is then charged two ways:

- *by file*: the library whose code was running (asyncio's own machinery counted as ``asyncio``);
- *by owner*: asyncio's machinery charged to the library that asked for it (the nearest caller that is not
  asyncio or the standard library) — e.g. aiokafka's ``asyncio.wait`` counts as aiokafka;

and the functions with the most self time are listed. Profiling costs time, so the jobs/s of this run are
not the benchmark's figures.

    python -m bench.profile [--jobs 10000] [--out bench/out/profile]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Final

from bench.harness import OUT, Contender, Services, collect, contender_env, create_topics, make_jobs, publish, started
from bench.harness import Topics as BenchTopics

CATEGORIES: Final = (
    ("/pipeline/", "pipeline (ours)"),
    ("/schemas/", "schemas (ours)"),
    ("/bench/", "bench"),
    ("aiokafka", "aiokafka"),
    ("aiohttp", "aiohttp"),
    ("multidict", "aiohttp"),
    ("yarl", "aiohttp"),
    ("msgspec", "msgspec"),
    ("/logging/", "logging"),
    ("orjson", "logging"),
    ("prometheus_client", "prometheus_client"),
    ("/asyncio/", "asyncio"),
    ("selectors", "asyncio"),
    ("/json/", "json (stdlib)"),
)
PLUMBING: Final = ("asyncio", "other")


def category(path: str) -> str:
    for needle, name in CATEGORIES:
        if needle in path:
            return name
    return "other"


def _short(path: str) -> str:
    for marker in ("site-packages/", "/main/", "python3.11/", "/base/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def analyse(session_path: Path, top: int = 25) -> dict[str, Any]:
    """Shares of sampled time by file, by owner, and the functions with the most self time."""
    from pyinstrument.session import Session

    session = Session.load(str(session_path))
    root = session.root_frame()
    by_file: Counter[str] = Counter()
    by_owner: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    if root is None:
        return {"duration_s": 0.0, "by_file": {}, "by_owner": {}, "top_functions": []}
    stack: list[tuple[Any, str | None, str | None, str | None]] = [(root, None, None, None)]
    while stack:
        frame, parent_category, owner, parent_function = stack.pop()
        path = frame.file_path or ""
        real = bool(path) and not path.startswith("<")
        kind = category(path) if real else parent_category
        own_owner = owner if (kind in PLUMBING or not real) else kind
        function = (
            parent_function if frame.function == "[self]" else f"{frame.function}  {_short(path)}:{frame.line_no}"
        )
        own_time = frame.time - sum(child.time for child in frame.children)
        by_file[kind or "other"] += own_time
        by_owner[own_owner or "event loop"] += own_time
        by_function[function or "?"] += own_time
        stack.extend((child, kind, own_owner, function) for child in frame.children)
    total = sum(by_file.values()) or 1.0

    def shares(counter: Counter[str]) -> dict[str, float]:
        return {name: round(value / total, 4) for name, value in counter.most_common()}

    return {
        "duration_s": round(session.duration, 3),
        "by_file": shares(by_file),
        "by_owner": shares(by_owner),
        "top_functions": [(name, round(value / total, 4)) for name, value in by_function.most_common(top)],
    }


async def profile_run(
    services: Services, jobs_count: int, out: Path, argv: tuple[str, ...] = (), latency: str = "0"
) -> Path:
    """Run ``bench.ours --profile`` over ``jobs_count`` jobs; returns the saved session's path."""
    jobs = make_jobs(jobs_count)
    topics = BenchTopics.fresh("profile")
    base_url = await asyncio.to_thread(services.sim, latency)
    await create_topics(services.kafka, topics)
    await publish(services.kafka, topics.input, jobs)
    env = contender_env(services, topics, base_url, 256)
    contender = Contender("ours, profiled", (sys.executable, "-m", "bench.ours", "--profile", str(out), *argv))
    marks = {"on": False, "off": False}
    with started(contender, env, label="profile") as processes:
        pid = processes[0].pid

        def progress(done: int) -> None:
            if not marks["on"] and done >= jobs_count * 0.1:
                os.kill(pid, signal.SIGUSR1)
                marks["on"] = True
            if not marks["off"] and done >= jobs_count * 0.9:
                os.kill(pid, signal.SIGUSR2)
                marks["off"] = True

        await collect(services.kafka, topics, jobs_count, [pid], 300.0, progress)
        session = out.with_suffix(".pyisession")
        for _ in range(100):
            if session.exists():
                break
            await asyncio.sleep(0.1)
    return session


def render(found: dict[str, Any]) -> str:
    lines = ["| share of sampled time | by file | by owner (asyncio charged to its caller) |", "|---|---:|---:|"]
    for name in sorted(set(found["by_file"]) | set(found["by_owner"]), key=lambda n: -found["by_owner"].get(n, 0)):
        lines.append(f"| {name} | {found['by_file'].get(name, 0):.1%} | {found['by_owner'].get(name, 0):.1%} |")
    lines += ["", "| function (self time) | share |", "|---|---:|"]
    lines += [f"| `{name}` | {share:.1%} |" for name, share in found["top_functions"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=OUT / "profile")
    parser.add_argument("--session", type=Path, help="only analyse this saved session")
    parser.add_argument("--latency", default="0", help="simulator latency (default 0: saturation)")
    args, extra = parser.parse_known_args(argv)
    if args.session is None:
        with Services() as services:
            args.session = asyncio.run(profile_run(services, args.jobs, args.out, tuple(extra), args.latency))
    print(render(analyse(args.session)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
