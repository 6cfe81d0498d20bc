import random
import statistics

import pytest

from pipeline.simulator.latency import (
    FixedLatency,
    LognormalLatency,
    UniformLatency,
    parse_latency,
    sample_ms,
)


@pytest.mark.parametrize(
    ("text", "latency"),
    [
        ("none", None),
        ("0", None),
        ("fixed:20", FixedLatency(ms=20)),
        ("uniform:5-50", UniformLatency(low_ms=5, high_ms=50)),
        ("lognormal:300,2000", LognormalLatency(p50_ms=300, p99_ms=2000)),
    ],
)
def test_latency_specs_parse(text: str, latency: object) -> None:
    assert parse_latency(text) == latency


@pytest.mark.parametrize("text", ["fixed", "fixed:-1", "uniform:9-3", "lognormal:500,100", "gamma:1", "uniform:1"])
def test_bad_latency_specs_raise(text: str) -> None:
    with pytest.raises(ValueError):
        parse_latency(text)


def test_fixed_and_none_sample_exactly() -> None:
    rng = random.Random(1)
    assert sample_ms(None, rng) == 0
    assert sample_ms(FixedLatency(ms=42), rng) == 42


def test_uniform_samples_stay_within_bounds() -> None:
    rng = random.Random(2)
    samples = [sample_ms(UniformLatency(low_ms=5, high_ms=50), rng) for _ in range(5000)]
    assert min(samples) >= 5 and max(samples) <= 50
    assert statistics.mean(samples) == pytest.approx(27.5, rel=0.05)


def test_lognormal_hits_the_configured_p50_and_p99() -> None:
    rng = random.Random(3)
    samples = sorted(sample_ms(LognormalLatency(p50_ms=200, p99_ms=2000), rng) for _ in range(40_000))
    assert samples[len(samples) // 2] == pytest.approx(200, rel=0.05)
    assert samples[int(len(samples) * 0.99)] == pytest.approx(2000, rel=0.1)


def test_sampling_is_deterministic_for_a_seed() -> None:
    spec = LognormalLatency(p50_ms=10, p99_ms=100)
    first = [sample_ms(spec, random.Random(7)) for _ in range(3)]
    assert first == [sample_ms(spec, random.Random(7)) for _ in range(3)]
