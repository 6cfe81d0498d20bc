"""Headless Chromium from the system (Debian's ``chromium`` and ``chromium-driver``), driven by Selenium.

Nothing is downloaded: the browser and its driver are the ones installed on the machine, found on the PATH
(or named by ``REVIEW_TEST_CHROMIUM`` / ``REVIEW_TEST_CHROMEDRIVER``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "/usr/bin/chromium")
DRIVER_NAMES = ("chromedriver", "/usr/bin/chromedriver")


def _find(override: str, names: tuple[str, ...]) -> str | None:
    for candidate in (os.environ.get(override), *names):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


def chromium_path() -> str | None:
    return _find("REVIEW_TEST_CHROMIUM", CHROMIUM_NAMES)


def chromedriver_path() -> str | None:
    return _find("REVIEW_TEST_CHROMEDRIVER", DRIVER_NAMES)


def missing() -> str | None:
    """Why a browser test cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if chromium_path() is None:
        return "no Chromium on this machine (Debian: apt-get install chromium)"
    if chromedriver_path() is None:
        return "no chromedriver on this machine (Debian: apt-get install chromium-driver)"
    return None


def start_chromium(profile: Path, *, width: int = 1400, height: int = 1000) -> Any:
    """A headless Chromium whose console log the test can read (``driver.get_log("browser")``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium_path() or ""
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-features=Translate,OptimizationHints,MediaRouter",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver_path()), options=options)
    driver.set_page_load_timeout(15)
    return driver
