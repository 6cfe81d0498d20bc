"""``bench/results.md`` from ``bench/results.json``: the goals, then one table per section.

python -m bench.report [--results bench/results.json] [--out bench/results.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Final

from bench import batch_files, fair_share, ratelimit_windows

HERE: Final = Path(__file__).resolve().parent
OURS: Final = "ours"
PEER_A: Final = ("peer (a) SDK + semaphore", "peer (a) SDK + semaphore, aiohttp")


def _fmt(summary: dict[str, float], digits: int = 0, unit: str = "", scale: float = 1.0) -> str:
    if not summary or not summary.get("runs"):
        return "-"
    median, low, high = (summary[k] * scale for k in ("median", "min", "max"))
    spread = f" ({low:,.{digits}f}-{high:,.{digits}f})" if summary["runs"] > 1 else ""
    return f"{median:,.{digits}f}{unit}{spread}"


def _pct(summary: dict[str, float], digits: int = 1) -> str:
    return _fmt(summary, digits, "%", 100.0)


def _row(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def goals(results: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(goal, target, result, met) rows."""
    found: list[tuple[str, str, str, bool | None]] = []
    decode = results.get("decode") or []
    if decode:
        worst = min(decode, key=lambda r: r["ratio"])
        found.append(
            (
                "Decode vs the SDK's pydantic models",
                ">= 5x",
                f"{worst['ratio']:.1f}x at worst ({worst['payload']}); "
                + ", ".join(f"{r['ratio']:.1f}x" for r in decode),
                worst["ratio"] >= 5,
            )
        )
    latency_rows = (results.get("throughput") or {}).get("latency") or []
    ours0 = _row(latency_rows, contender=OURS, latency="0")
    peers0 = [r for r in latency_rows if r["latency"] == "0" and r["contender"] in PEER_A and r["jobs_per_s"]["runs"]]
    if ours0 and peers0:
        best = max(peers0, key=lambda r: r["jobs_per_s"]["median"])
        ratio = ours0["jobs_per_s"]["median"] / best["jobs_per_s"]["median"]
        found.append(
            (
                "Jobs/s at latency 0 vs peer (a), its faster HTTP client",
                ">= 2x",
                f"{ratio:.1f}x ({ours0['jobs_per_s']['median']:,.0f} vs {best['jobs_per_s']['median']:,.0f} jobs/s, "
                f"{best['contender']})",
                ratio >= 2,
            )
        )
    ours1 = _row(latency_rows, contender=OURS, latency="fixed:1000")
    if ours1 and ours1.get("little_limit"):
        share = ours1["jobs_per_s"]["median"] / ours1["little_limit"]
        found.append(
            (
                "Share of the Little's-law limit at 1 s latency",
                ">= 90%",
                f"{share:.1%} ({ours1['jobs_per_s']['median']:,.1f} of {ours1['little_limit']:,.0f} jobs/s)",
                share >= 0.9,
            )
        )
    ratelimit = [r for r in results.get("ratelimit") or [] if r["contender"] == OURS]
    if ratelimit:
        share = min(r["share_of_limit"]["median"] for r in ratelimit)
        limited = max(r["share_429"]["median"] for r in ratelimit)
        found.append(
            (
                "Rate-limit efficiency (ours, worst scenario)",
                ">= 95% of the limit, <= 1% 429s",
                f"{share:.1%} of the limit, {limited:.2%} 429s",
                share >= 0.95 and limited <= 0.01,
            )
        )
    windows = [r for r in results.get("ratelimit_windows") or [] if r["contender"].startswith(OURS)]
    if windows:
        worst_share = min(windows, key=lambda r: r["share_of_limit"])
        worst_429 = max(windows, key=lambda r: r["share_429"])
        found.append(
            (
                "Rate limits over 1 s / 0.1 s windows, 1 and 3 workers, start counted (ours, worst)",
                ">= 95% of the limit, <= 1% 429s",
                f"{worst_share['share_of_limit']:.1%} ({worst_share['scenario']}, {worst_share['contender']}); "
                f"{worst_429['share_429']:.2%} 429s ({worst_429['scenario']}, {worst_429['contender']})",
                worst_share["share_of_limit"] >= 0.95 and worst_429["share_429"] <= 0.01,
            )
        )
    memory = [r for r in (results.get("cost") or {}).get("memory") or [] if r["contender"] == OURS]
    ten_k = next((r for r in memory if r["in_flight"] == 10_000), None)
    if ten_k:
        peak = ten_k["peak_rss_mb"]["median"]
        steady = ten_k["rss_mb_all_in_flight"]["median"]
        found.append(
            (
                "Peak RSS with 10k jobs in flight",
                "<= 250 MB",
                f"{steady:,.0f} MB with {ten_k.get('seen_in_flight', 10_000):,} seen waiting on the provider; "
                f"{peak:,.0f} MB peak as their answers land",
                peak <= 250,
            )
        )
    return found


def render(results: dict[str, Any]) -> str:
    meta = results.get("meta", {})
    out: list[str] = ["# Benchmark results", ""]
    out.append(
        f"Generated by `{meta.get('command', 'python -m bench')}` on {meta.get('date', '?')} "
        f"({meta.get('mode', '?')} mode, {meta.get('wall_minutes', 0):.1f} min). Machine: {meta.get('cores')} cores "
        f"({meta.get('cpu', '?')}), {meta.get('memory_gb', 0):.0f} GiB, Python {meta.get('python', '?')}; "
        f"load average {meta.get('load_before', '?')} before, {meta.get('load_after', '?')} after."
    )
    out.append("")
    out.append(
        f"Pinning: {meta.get('pinning', '?')}. Broker: {meta.get('broker', '?')}. Versions: {meta.get('versions')}."
    )
    out.append("")
    out.append("Figures are the median of the runs, with the spread (min-max) in brackets; `runs` says how many.")
    out.append("")
    table = goals(results)
    if table:
        out += ["## Goals", "", "| goal | target | result | met |", "|---|---|---|---|"]
        for goal, target, result, met in table:
            mark = "yes" if met else ("no" if met is not None else "-")
            out.append(f"| {goal} | {target} | {result} | {mark} |")
        out.append("")
    decode = results.get("decode")
    if decode:
        out += [
            "## 1. Decode: `schemas` (msgspec) vs the `openai` SDK's pydantic models",
            "",
            "µs per decode of one payload (`msgspec.json.Decoder(ChatCompletion).decode` vs "
            "`ChatCompletion.model_validate_json`; chunks with `ChatCompletionChunk`), median of "
            f"{decode[0]['ours_us']['runs']:.0f} repeats.",
            "",
            "| payload | bytes | ours (µs) | SDK (µs) | SDK ÷ ours |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in decode:
            out.append(
                f"| {row['payload']} | {row['bytes']:,} | {_fmt(row['ours_us'], 1)} | {_fmt(row['sdk_us'], 1)} | "
                f"{row['ratio']:.1f}x |"
            )
        out.append("")
    throughput = results.get("throughput") or {}
    if throughput.get("latency"):
        out += [
            "## 2. Pipeline throughput through Kafka",
            "",
            "Jobs published (a backlog), then every result on the output or review topic. Concurrency 256 for "
            "everyone; jobs/s from the result records' timestamps after the first 5% of results; CPU µs per job "
            "is the contender process's CPU time over the same span. Every run routed the same jobs to review "
            "(checked).",
            "",
            "| latency | contender | jobs/s | runs | Little's limit | share of limit | CPU µs/job |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for row in throughput["latency"]:
            limit = row.get("little_limit")
            share = f"{row['jobs_per_s']['median'] / limit:.0%}" if limit and row["jobs_per_s"]["runs"] else "-"
            agree = "" if row.get("routes_agree", True) else " (routes differ!)"
            out.append(
                f"| {row['latency']} | {row['contender']}{agree} | {_fmt(row['jobs_per_s'])} | "
                f"{row['jobs_per_s']['runs']:.0f} | {f'{limit:,.0f}' if limit else '-'} | {share} | "
                f"{_fmt(row['cpu_us_per_job'])} |"
            )
        out.append("")
    sweeps = (throughput.get("latency_sweep") or []) + (throughput.get("concurrency") or [])
    if sweeps:
        out += [
            "Sweeps for the plots (one run per point):",
            "",
            "| latency | concurrency | contender | jobs/s | Little's limit |",
            "|---|---:|---|---:|---:|",
        ]
        for row in sweeps:
            limit = row.get("little_limit")
            out.append(
                f"| {row['latency']} | {row['concurrency']} | {row['contender']} | {_fmt(row['jobs_per_s'])} | "
                f"{f'{limit:,.0f}' if limit else '-'} |"
            )
        out.append("")
    if throughput.get("transport"):
        out += [
            "### Our worker's HTTP transport and event loop (latency 0)",
            "",
            "| transport | event loop | jobs/s | CPU µs/job | runs |",
            "|---|---|---:|---:|---:|",
        ]
        for row in throughput["transport"]:
            out.append(
                f"| {row['transport']} | {row['loop']} | {_fmt(row['jobs_per_s'])} | {_fmt(row['cpu_us_per_job'])} | "
                f"{row['jobs_per_s']['runs']:.0f} |"
            )
        out.append("")
    http = results.get("http_transport")
    if http:
        levels = sorted({level for by_level in http.values() for level in by_level}, key=int)
        out += [
            "### HTTP clients alone (`bench.http_transport`: POSTs to a local aiohttp server, client CPU only)",
            "",
            "| client | " + " | ".join(f"{level} in flight" for level in levels) + " |",
            "|---|" + "---:|" * len(levels),
        ]
        for name, by_level in http.items():
            cells = [
                f"{by_level[level]['requests_per_s']:,.0f} req/s, {by_level[level]['cpu_us_per_request']:,.0f} µs"
                if level in by_level
                else "-"
                for level in levels
            ]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    ratelimit = results.get("ratelimit")
    if ratelimit:
        out += [
            "## 3. Rate-limit efficiency through Kafka",
            "",
            "The simulator enforces R requests/min and T tokens/min (log-normal latency, p50 300 ms, p99 1.5 s); "
            "both contenders are configured with R and T. Share of the binding limit over the window from the "
            "first request (the full bucket plus the refill), and the share of answers that were 429.",
            "",
            "| scenario | contender | share of the limit | 429 share | window | runs |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for row in ratelimit:
            window = row["runs"][0]["seconds"] if row["runs"] else 0
            out.append(
                f"| {row['scenario']} ({row['rpm']:,} rpm, {row['tpm']:,} tpm) | {row['contender']} | "
                f"{_pct(row['share_of_limit'])} | {_pct(row['share_429'], 2)} | {window:.0f} s | "
                f"{row['share_of_limit']['runs']:.0f} |"
            )
        out.append("")
    windows = results.get("ratelimit_windows")
    if windows:
        seconds = windows[0]["seconds"]
        out += [
            "## 3b. Rate limits enforced over short windows",
            "",
            "The simulator enforces 3,000 requests/min over 1 s windows (50 at once, then 50 a second) or 0.1 s "
            "windows (5 at once), and, for comparison, per-minute limits; one or three workers (clients) share "
            f"the key. Runs of {seconds:.0f} s counted from the start: requests admitted (or tokens charged) over "
            "what the binding limit allowed (one window's share plus the refill) / share of answers that were "
            "429. Ours learns the limits or is told the whole limit in every worker; the cookbook is told an "
            "even split.",
            "",
            ratelimit_windows.table(windows),
            "",
        ]
    cost = results.get("cost") or {}
    if throughput.get("latency") or cost:
        out += ["## 4. Cost per job", ""]
        saturated = [r for r in throughput.get("latency", []) if r["latency"] == "0"]
        if saturated:
            out += [
                "CPU per job at saturation (latency 0, from section 2):",
                "",
                "| contender | CPU µs/job |",
                "|---|---:|",
            ]
            out += [f"| {r['contender']} | {_fmt(r['cpu_us_per_job'])} |" for r in saturated]
            out.append("")
        if cost.get("memory"):
            out += [
                "Memory with N jobs in flight (concurrency N, N jobs, the simulator holding every answer for the "
                "hold shown): RSS once the simulator sees all N in flight (the most it saw is in the table), and "
                "the peak (`VmHWM`) over the run. Where it goes per call: `python -m bench.memory_breakdown`.",
                "",
                "| contender | jobs in flight | hold | most seen in flight | RSS, all in flight (MB) | peak RSS (MB) "
                "| runs |",
                "|---|---:|---|---:|---:|---:|---:|",
            ]
            for row in cost["memory"]:
                out.append(
                    f"| {row['contender']} | {row['in_flight']:,} | {row.get('hold', '-')} | "
                    f"{row.get('seen_in_flight', 0):,} | {_fmt(row['rss_mb_all_in_flight'])} | "
                    f"{_fmt(row['peak_rss_mb'])} | {row['peak_rss_mb']['runs']:.0f} |"
                )
            out.append("")
        aimd = cost.get("aimd")
        if aimd:
            moved = (
                f"it moved; the lowest value seen was {aimd['lowest_limit_seen']:.0f}"
                if aimd["limit_moved"]
                else "it never moved"
            )
            out += [
                f"Adaptive concurrency at latency 0: `pipeline_provider_concurrency_limit` scraped "
                f"{aimd['scrapes']} times during a saturated run (configured {aimd['configured']}): {moved}; "
                f"jobs in flight peaked at {aimd['max_jobs_in_flight_seen']:.0f}.",
                "",
            ]
    scaleout = results.get("scaleout")
    if scaleout:
        out += [
            "## 5. Scale-out (latency 0, workers on every core)",
            "",
            "| workers | jobs/s | CPU µs/job | worker cores busy | broker+simulator cores busy | runs |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for row in scaleout:
            out.append(
                f"| {row['workers']} | {_fmt(row['jobs_per_s'])} | {_fmt(row['cpu_us_per_job'])} | "
                f"{_fmt(row['worker_cores_busy'], 2)} | {_fmt(row['service_cores_busy'], 2)} | "
                f"{row['jobs_per_s']['runs']:.0f} |"
            )
        out.append("")
    fair = results.get("fair_share")
    if fair:
        out += [
            "## 6. Fair share: a small tenant behind another's flood",
            "",
            f"Tenant A's backlog on partition {fair_share.A_PARTITION} of the input topic; once the worker is busy "
            f"with it, tenant B publishes {fair_share.B_JOBS} jobs on partition {fair_share.B_PARTITION}. One "
            f"worker, concurrency {fair_share.CONCURRENCY}, the simulator at `{fair_share.LATENCY}`; B's times "
            "from its publish to its results. *Before*: the code before fair share, from a git worktree.",
            "",
            fair_share.table(fair),
            "",
        ]
    batches = results.get("batch_files")
    if batches:
        out += ["## 7. Batch files (`pipeline batch submit` and `results`)", "", batch_files.table(batches), ""]
    profile = results.get("profile")
    if profile:
        out += [
            "## Profile of our worker at saturation (pyinstrument, latency 0, 10%-90% of the jobs)",
            "",
            "| share of sampled time | by file | by owner (asyncio charged to its caller) |",
            "|---|---:|---:|",
        ]
        names = sorted(set(profile["by_file"]) | set(profile["by_owner"]), key=lambda n: -profile["by_owner"].get(n, 0))
        for name in names:
            out.append(f"| {name} | {profile['by_file'].get(name, 0):.1%} | {profile['by_owner'].get(name, 0):.1%} |")
        out += ["", "| function (self time) | share |", "|---|---:|"]
        out += [f"| `{name}` | {share:.1%} |" for name, share in profile["top_functions"][:15]]
        out.append("")
    plots = meta.get("plots") or []
    if plots:
        out += ["## Plots", ""]
        out += [f"![{Path(p).stem}]({p})" for p in plots]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    args = parser.parse_args(argv)
    args.out.write_text(render(json.loads(args.results.read_text())))
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
