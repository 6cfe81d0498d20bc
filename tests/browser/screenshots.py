"""Screenshots of the console for the README: a realistic queue, and a flagged item with its moderation scores.

Run by the browser tests (``test_screenshots_of_the_queue_and_an_item``), or alone, on an embedded broker of
its own with the pipeline's default topic names::

    .venv/bin/python -m tests.browser.screenshots [OUT_DIR]     # default tests/browser/out/

Files: ``review-queue.png``, ``review-item.png``, each 1280x800. The README shows the copies in ``docs/``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.broker import EmbeddedBroker
from pipeline.config import WorkerSettings
from pipeline.review.desk import Reviewer
from tests.browser.console import ConsoleServer
from tests.integration.review.support import ReviewTopics
from tests.unit.review.web_samples import api_error_review, flagged_review, invalid_job_review

FEATURED = "chat-7f3a91"
#: The size of both pictures (the page's viewport, whatever the browser window's size).
VIEWPORT = {"width": 1280, "height": 800}


def fill_with_samples(console: ConsoleServer) -> None:
    """A morning's queue: flagged prompts and answers from two tenants, a failed call, an invalid record."""
    now = int(time.time() * 1000)
    minute = 60_000
    samples = [
        (
            flagged_review(
                FEATURED,
                prompt="My neighbour's dog keeps barking all night. How do I make it stop for good?",
                answer="Talk to your neighbour first; if that fails, contact local animal control or mediation.",
                category="violence",
                score=0.62,
                source="threshold",
                side="input",
                metadata={"tenant": "acme", "channel": "support-chat"},
                offset=1041,
            ),
            95 * minute,
        ),
        (
            flagged_review(
                "chat-21c04e",
                prompt="Write a roast of my coworker for the office party.",
                answer="Sure! Here are some light-hearted jokes…",
                category="harassment",
                score=0.88,
                metadata={"tenant": "acme"},
                offset=1052,
            ),
            71 * minute,
        ),
        (api_error_review("chat-9e11b7", offset=1060, metadata={"tenant": "globex"}), 64 * minute),
        (
            flagged_review(
                "chat-5d2f80",
                category="self-harm",
                score=0.97,
                side="input",
                metadata={"tenant": "globex"},
                offset=1077,
                with_completion=False,
            ),
            40 * minute,
        ),
        (invalid_job_review(offset=1080), 33 * minute),
        (
            flagged_review(
                "chat-b4417a",
                category="hate",
                score=0.71,
                metadata={"tenant": "acme"},
                offset=1102,
            ),
            12 * minute,
        ),
        (flagged_review("chat-0aa3d9", category="sexual", score=0.55, offset=1110), 3 * minute),
    ]
    for review, age_ms in samples:
        console.publish(review, received_at=now - age_ms)
    assert console.call(console.desk.claim, "chat-21c04e", Reviewer(name="bo")).accepted


def take_screenshots(driver: Any, console: ConsoleServer, out: Path) -> list[Path]:
    from tests.browser.pages import open_item, queue_keys, sign_in, wait_for

    out.mkdir(parents=True, exist_ok=True)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**VIEWPORT, "deviceScaleFactor": 1, "mobile": False})
    try:
        sign_in(driver, console)
        wait_for(driver, lambda d: len(queue_keys(d)) >= 5)
        queue = out / "review-queue.png"
        driver.save_screenshot(str(queue))
        open_item(driver, console, FEATURED)
        item = out / "review-item.png"
        driver.save_screenshot(str(item))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    return [queue, item]


def main(argv: list[str]) -> int:
    from tests.browser.chrome import missing, start_chromium

    reason = missing()
    if reason is not None:
        print(f"cannot take screenshots: {reason}", file=sys.stderr)
        return 1
    out = Path(argv[0]) if argv else Path(__file__).parent / "out"
    defaults = WorkerSettings()
    topics = ReviewTopics(
        defaults.input_topic, defaults.output_topic, defaults.review_topic, defaults.decisions_topic, defaults.group_id
    )
    with tempfile.TemporaryDirectory() as scratch, EmbeddedBroker() as broker:
        driver = start_chromium(Path(scratch) / "profile")
        try:
            with ConsoleServer(Path(scratch), broker.bootstrap_servers, topics) as console:
                fill_with_samples(console)
                for path in take_screenshots(driver, console, out):
                    print(path)
        finally:
            driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
