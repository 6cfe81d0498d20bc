"""A headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by Selenium, and a console to point
it at: the Kafka-backed console on the session's broker. Without the browser, its driver or Selenium, every
test here is skipped with the reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.chrome import missing, start_chromium
from tests.browser.console import ConsoleServer
from tests.fixtures.broker import Broker
from tests.integration.review.support import ReviewTopics


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = missing()
    if reason is not None:
        pytest.skip(reason)
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def console(tmp_path: Path, browser: Any, kafka_broker: Broker, topic_prefix: str) -> Iterator[ConsoleServer]:
    """A fresh console per test, over topics of its own; the browser forgets the previous test's cookies (every
    console is on 127.0.0.1, and cookies do not tell ports apart)."""
    browser.get_log("browser")  # what earlier tests left in the console log is theirs
    with ConsoleServer(tmp_path, kafka_broker.bootstrap_servers, ReviewTopics.named(topic_prefix)) as server:
        yield server
        browser.delete_all_cookies()
        browser.get("about:blank")  # closes the page's event stream before the server goes
    browser.get_log("browser")


@pytest.fixture(scope="session")
def screenshots_dir() -> Path:
    """Gitignored; the README's screenshots are copied from here."""
    directory = Path(__file__).parent / "out"
    directory.mkdir(exist_ok=True)
    return directory
