"""How long the simulator waits before it answers: a latency distribution and its sampler.

Three shapes, written on the command line as ``fixed:MS``, ``uniform:LOW-HIGH`` and ``lognormal:P50,P99``
(milliseconds). The log-normal is parameterised by the two figures people quote for a provider, the median
and the 99th percentile, so ``lognormal:400,2500`` reads like a dashboard.
"""

from __future__ import annotations

import math
import random

import msgspec

#: The standard normal's 0.99 quantile: a log-normal's p99 is ``exp(mu + Z_99 * sigma)``.
Z_99 = 2.3263478740408408


class FixedLatency(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="fixed"):
    ms: float


class UniformLatency(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="uniform"):
    low_ms: float
    high_ms: float


class LognormalLatency(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="lognormal"):
    p50_ms: float
    p99_ms: float


Latency = FixedLatency | UniformLatency | LognormalLatency


def parse_latency(spec: str) -> Latency | None:
    """Read ``fixed:20``, ``uniform:5-50``, ``lognormal:20,200`` (ms) or ``none``/``0`` (no delay)."""
    text = spec.strip().lower()
    if text in ("", "none", "0"):
        return None
    kind, sep, args = text.partition(":")
    if not sep:
        raise ValueError(f"latency {spec!r}: expected fixed:MS, uniform:LOW-HIGH or lognormal:P50,P99")
    try:
        if kind == "fixed":
            latency: Latency = FixedLatency(ms=float(args))
        elif kind == "uniform":
            low, high = args.split("-")
            latency = UniformLatency(low_ms=float(low), high_ms=float(high))
        elif kind == "lognormal":
            p50, p99 = args.split(",")
            latency = LognormalLatency(p50_ms=float(p50), p99_ms=float(p99))
        else:
            raise ValueError(f"unknown latency shape {kind!r}")
    except ValueError as exc:
        raise ValueError(f"latency {spec!r}: {exc}") from None
    check_latency(latency)
    return latency


def check_latency(latency: Latency) -> None:
    """Reject shapes that cannot be sampled (negative times, inverted bounds, p99 below p50)."""
    match latency:
        case FixedLatency(ms=ms):
            ok = ms >= 0
        case UniformLatency(low_ms=low, high_ms=high):
            ok = 0 <= low <= high
        case LognormalLatency(p50_ms=p50, p99_ms=p99):
            ok = 0 < p50 <= p99
    if not ok:
        raise ValueError(f"invalid latency {latency!r}")


def sample_ms(latency: Latency | None, rng: random.Random) -> float:
    """One draw from the distribution, in milliseconds (0 when there is none)."""
    match latency:
        case None:
            return 0.0
        case FixedLatency(ms=ms):
            return ms
        case UniformLatency(low_ms=low, high_ms=high):
            return rng.uniform(low, high)
        case LognormalLatency(p50_ms=p50, p99_ms=p99):
            sigma = (math.log(p99) - math.log(p50)) / Z_99
            return rng.lognormvariate(math.log(p50), sigma)
