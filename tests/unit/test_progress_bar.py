"""The progress bar of ``pipeline produce`` and ``replay``: on a terminal only, by bytes when the size is known."""

from __future__ import annotations

import io
import sys

import pytest

from pipeline.commands.common import progress_bar


class Terminal(io.StringIO):
    """What the bar sees when stderr is a terminal."""

    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_file_of_known_size_shows_the_share_of_its_bytes_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress_bar("lines", total_bytes=2048)
    bar.update(1024)
    bar.close()
    shown = terminal.getvalue()
    assert "50%" in shown and "1.00k/2.00k" in shown and "B/s" in shown


def test_on_a_terminal_without_a_size_it_counts_and_shows_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress_bar("records")
    for _ in range(3):
        bar.update()
    bar.close()
    shown = terminal.getvalue()
    assert "3 records" in shown and "records/s" in shown and "%" not in shown


@pytest.mark.parametrize("total_bytes", [2048, None])
def test_not_on_a_terminal_nothing_is_drawn(monkeypatch: pytest.MonkeyPatch, total_bytes: int | None) -> None:
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    bar = progress_bar("lines", total_bytes=total_bytes)
    bar.update(1024 if total_bytes else 1)
    bar.close()
    assert piped.getvalue() == ""
