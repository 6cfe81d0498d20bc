"""``pipeline replay --since``: ages and ISO 8601 times, checked before anything is read."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipeline.commands.common import CliError
from pipeline.commands.replay import parse_since

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", datetime(2026, 11, 26, 11, 58, 30, tzinfo=UTC)),
        ("30m", datetime(2026, 11, 26, 11, 30, tzinfo=UTC)),
        ("6h", datetime(2026, 11, 26, 6, 0, tzinfo=UTC)),
        ("2d", datetime(2026, 11, 24, 12, 0, tzinfo=UTC)),
        ("2026-11-26T03:00Z", datetime(2026, 11, 26, 3, 0, tzinfo=UTC)),
        ("2026-11-26T03:00:00+02:00", datetime(2026, 11, 26, 1, 0, tzinfo=UTC)),
        ("2026-11-26 03:00", datetime(2026, 11, 26, 3, 0, tzinfo=UTC)),  # no zone: UTC
    ],
)
def test_since_accepts_ages_and_times(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == ms(expected)


@pytest.mark.parametrize("text", ["", "yesterday", "30", "m", "-5m", "5w", "2026-13-01"])
def test_since_rejects_anything_else_with_a_hint(text: str) -> None:
    with pytest.raises(CliError, match=r"--since .*ISO 8601.*30m"):
        parse_since(text, NOW)
