"""What ``pipeline demo`` saw and how it says so: the tally of the output and review topics, the summary
(counts per route against what the sample set expects, throughput, end-to-end latency, tokens, cost) as JSON or a
table, and one example record per route with long text cut.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec

from pipeline.samples import Sample
from schemas.chat import Moderation, ModerationError
from schemas.topics import InvalidJob, Result, Review, reason_kind

_result_decoder = msgspec.json.Decoder(Result)
_review_decoder = msgspec.json.Decoder(Review)


@dataclass
class Tally:
    """What arrived on the output and review topics, one entry per input record."""

    routes: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: dict[tuple[str, str], bytes] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: USD over the records that carry a cost; ``unpriced`` counts the records whose cost is unknown.
    cost_usd: float = 0.0
    unpriced: int = 0
    seen: set[tuple[int, int]] = field(default_factory=set)
    last_ms: int = 0

    @property
    def handled(self) -> int:
        return len(self.seen)

    def add(self, destination: str, value: bytes, timestamp_ms: int, published_ms: dict[tuple[int, int], int]) -> None:
        if destination == "output":
            result = _result_decoder.decode(value)
            source, reason, usage, cost = result.source, "-", result.usage, result.cost_usd
        else:
            review = _review_decoder.decode(value)
            source, reason, cost = review.source, reason_kind(review.reason), review.cost_usd
            usage = review.completion.usage if review.completion else None
        coordinates = (source.partition, source.offset)
        if coordinates in self.seen:
            return  # a reprocessed job's second result: counted once
        self.seen.add(coordinates)
        self.routes[(destination, reason)] += 1
        self.examples.setdefault((destination, reason), value)
        if coordinates in published_ms:
            self.latencies_ms.append(max(0, timestamp_ms - published_ms[coordinates]))
        if usage is not None:
            self.prompt_tokens += usage.prompt_tokens
            self.completion_tokens += usage.completion_tokens
        if cost is not None:
            self.cost_usd += cost
        elif usage is not None:
            self.unpriced += 1
        self.last_ms = max(self.last_ms, timestamp_ms)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


def expected_routes(samples: list[Sample]) -> Counter[tuple[str, str]]:
    return Counter((s.destination, s.reason or "-") for s in samples)


def _short(text: str | None, width: int = 60) -> str | None:
    return text if text is None or len(text) <= width else text[: width - 1] + "…"


def _moderation_digest(moderation: Moderation | None) -> dict[str, str] | None:
    """Each side in a few words: ``flagged violence 0.91`` / ``clean`` / ``error moderation_unavailable``."""
    if moderation is None:
        return None
    digest: dict[str, str] = {}
    for side, outcome in (("input", moderation.input), ("output", moderation.output)):
        if isinstance(outcome, ModerationError):
            digest[side] = f"error {outcome.code}"
            continue
        flagged = [
            f"{category} {result.category_scores.get(category, 0):.2f}"
            for result in outcome.results
            for category, hit in result.categories.items()
            if hit
        ]
        digest[side] = "flagged " + ", ".join(flagged) if flagged else "clean"
    return digest


def example(destination: str, value: bytes) -> dict[str, Any]:
    """The fields of a record a person looks at first, with long text cut."""
    if destination == "output":
        result = _result_decoder.decode(value)
        return {
            "id": result.id,
            "content": _short(result.content),
            "finish_reason": result.finish_reason,
            "moderation": _moderation_digest(result.moderation),
            "attempts": result.attempts,
            "source": msgspec.to_builtins(result.source),
        }
    review = _review_decoder.decode(value)
    shown: dict[str, Any] = {"id": review.id, "reason": msgspec.to_builtins(review.reason)}
    if isinstance(review.reason, InvalidJob):
        shown["reason"]["raw"] = _short(review.reason.raw)
    if review.completion is not None:
        choices = review.completion.choices
        shown["content"] = _short(choices[0].message.content) if choices else None
        shown["moderation"] = _moderation_digest(review.completion.moderation)
    shown["source"] = msgspec.to_builtins(review.source)
    return shown


def summary(tally: Tally, samples: list[Sample], started_ms: int, workers: int, provider_name: str) -> dict[str, Any]:
    expected = expected_routes(samples)
    elapsed_s = max((tally.last_ms - started_ms) / 1000, 1e-3)
    by_destination: Counter[str] = Counter()
    for (destination, _), count in tally.routes.items():
        by_destination[destination] += count
    return {
        "provider": provider_name,
        "workers": workers,
        "jobs": len(samples),
        "handled": tally.handled,
        "by_destination": dict(by_destination),
        "by_reason": {reason: n for (dest, reason), n in sorted(tally.routes.items()) if dest == "review"},
        "expected_by_reason": {reason: n for (dest, reason), n in sorted(expected.items()) if dest == "review"},
        "expected_output": expected.get(("output", "-"), 0),
        "matches_expected": tally.routes == expected,
        "elapsed_s": round(elapsed_s, 3),
        "throughput_jobs_per_s": round(tally.handled / elapsed_s, 2),
        "latency_ms": {
            f"p{int(share * 100)}": round(percentile(tally.latencies_ms, share), 1) for share in (0.5, 0.95, 0.99)
        },
        "tokens": {"prompt": tally.prompt_tokens, "completion": tally.completion_tokens},
        "cost_usd": round(tally.cost_usd, 6),
        "unpriced_records": tally.unpriced,
    }


def print_summary(report: dict[str, Any], tally: Tally, samples: list[Sample]) -> None:
    expected = expected_routes(samples)
    print(f"\n{'route':<8} {'reason':<20} {'jobs':>6} {'expected':>9}")
    for key in sorted(set(expected) | set(tally.routes)):
        destination, reason = key
        mark = "" if tally.routes[key] == expected[key] else "  <- differs"
        print(f"{destination:<8} {reason:<20} {tally.routes[key]:>6} {expected[key]:>9}{mark}")
    print(f"{'total':<29} {tally.handled:>6} {len(samples):>9}")
    latency = report["latency_ms"]
    print(
        f"\nthroughput {report['throughput_jobs_per_s']:,} jobs/s over {report['elapsed_s']} s   "
        f"end-to-end latency p50 {latency['p50']:,} ms  p95 {latency['p95']:,} ms  p99 {latency['p99']:,} ms   "
        f"tokens {report['tokens']['prompt']:,} prompt + {report['tokens']['completion']:,} completion   "
        f"cost ${report['cost_usd']:.6f}"
        + (f" ({report['unpriced_records']} records unpriced)" if report["unpriced_records"] else "")
    )
    print("\none record of each route:")
    for (destination, reason), value in sorted(tally.examples.items()):
        label = destination if reason == "-" else f"{destination}/{reason}"
        print(f"  {label}: {json.dumps(example(destination, value), ensure_ascii=False)}")
