"""A tiny run of the decode benchmark: it measures every payload with both decoders and the report shows them.

No timing is asserted; ``make bench`` is where the figures come from.
"""

from __future__ import annotations

from bench import decode, report


def test_the_decode_bench_measures_every_payload_with_both_decoders() -> None:
    rows = decode.measure(iterations=5, repeat=2)
    assert [row["payload"] for row in rows] == list(decode.payloads())
    for row in rows:
        assert row["bytes"] > 0
        for decoder in ("ours_us", "sdk_us"):
            assert set(row[decoder]) == {"median", "min", "max", "runs"}
            assert row[decoder]["runs"] == 2
            assert 0 < row[decoder]["min"] <= row[decoder]["median"] <= row[decoder]["max"]
        assert row["ratio"] > 0


def test_the_report_shows_the_decode_table_and_its_goal() -> None:
    rows = decode.measure(iterations=2, repeat=1)
    text = report.render({"meta": {}, "decode": rows})
    assert "## 1. Decode" in text
    assert "Decode vs the SDK's pydantic models" in text
    assert all(row["payload"] in text for row in rows)
