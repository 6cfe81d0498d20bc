"""The reliability suite's marker, the soak gate, and the figures printed at the end of a session."""

from __future__ import annotations

import pytest

from tests.reliability.support import FIGURES_FILE, ROOT, SESSION, SOAK


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: a long reliability run; only with PIPELINE_SOAK=1 (`make soak`)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if SOAK:
        return
    skip = pytest.mark.skip(reason="a soak run: set PIPELINE_SOAK=1 (`make soak`)")
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not SESSION:
        return
    terminalreporter.section(f"reliability figures ({FIGURES_FILE.relative_to(ROOT)})")
    for figures in SESSION:
        terminalreporter.write_line(figures.line())
