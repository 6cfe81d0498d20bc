"""The review console in a real browser (headless Chromium) over the Kafka-backed desk and applier: what a
reviewer sees and does, that hostile content stays text, and that an approval made on the page is published."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from pipeline.review.desk import ItemFilter, Reviewer
from tests.browser.console import ConsoleServer
from tests.browser.pages import (
    alert_text,
    console_problems,
    item_key_shown,
    open_item,
    press,
    queue_keys,
    sign_in,
    text_of,
    wait_for,
    wait_for_item,
)
from tests.browser.screenshots import VIEWPORT, fill_with_samples, take_screenshots
from tests.unit.review.web_samples import HOSTILE_TEXTS, api_error_review, flagged_review, hostile_review

ADMIN = Reviewer(name="root", admin=True)


def test_sign_in_with_a_token_and_out_again(browser: Any, console: ConsoleServer) -> None:
    console.publish(flagged_review("job-1"))
    browser.get(console.url + "/")
    wait_for(browser, lambda d: "/sign-in" in d.current_url, "a page without a session goes to sign-in")
    browser.find_element(By.ID, "token").send_keys("not-a-token")
    browser.find_element(By.ID, "sign-in-form").submit()
    wait_for(browser, lambda d: "not valid" in text_of(d, "#sign-in-error"))

    browser.find_element(By.ID, "token").send_keys(console.tokens["ana"])
    browser.find_element(By.ID, "sign-in-form").submit()
    wait_for(browser, lambda d: queue_keys(d) == ["job-1"])
    assert text_of(browser, ".who .name") == "ana"
    (cookie,) = [c for c in browser.get_cookies() if c["name"] == "review-session"]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert browser.execute_script("return document.cookie") == "", "no cookie is readable by scripts"

    browser.find_element(By.CSS_SELECTOR, ".who button").click()
    wait_for(browser, lambda d: "/sign-in" in d.current_url)
    browser.get(console.url + "/")
    wait_for(browser, lambda d: "/sign-in" in d.current_url, "signed out: the session is gone")
    problems = console_problems(browser)
    assert all("status of 401" in message for message in problems), "only the refused sign-in's 401"


def test_hostile_content_is_shown_as_text_and_nothing_runs(browser: Any, console: ConsoleServer) -> None:
    hostile = hostile_review()
    assert hostile.id is not None
    console.publish(hostile)
    sign_in(browser, console)
    console_problems(browser)  # start the log afresh
    open_item(browser, console, hostile.id)

    page_text = browser.find_element(By.TAG_NAME, "main").text
    for text in HOSTILE_TEXTS:
        assert text in page_text
    assert "<script>alert(3)</script>" in page_text, "the completion too"
    assert "<img src=x onerror=alert(2)>" in page_text, "and metadata"
    assert alert_text(browser) is None
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main svg, main script") == []
    scripts = [s.get_attribute("src") for s in browser.find_elements(By.TAG_NAME, "script")]
    assert scripts == [console.url + "/static/console.js"]
    (link,) = browser.find_elements(By.CSS_SELECTOR, ".image-part a")
    assert link.get_attribute("href").startswith("https://images.example/")
    assert set(link.get_attribute("rel").split()) >= {"noopener", "noreferrer"}
    assert "javascript:alert(1)" in page_text and not browser.find_elements(By.CSS_SELECTOR, "a[href^=javascript]")
    assert console_problems(browser) == [], "no CSP violation, no error"


def test_keyboard_only_review(browser: Any, console: ConsoleServer) -> None:
    console.publish(*(flagged_review(f"job-{n}", offset=n) for n in (1, 2, 3, 4)))
    sign_in(browser, console)
    wait_for(browser, lambda d: queue_keys(d) == ["job-1", "job-2", "job-3", "job-4"])

    press(browser, "j")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.selected[data-key='job-1']"))
    press(browser, Keys.ENTER)
    wait_for_item(browser, "job-1")
    assert "You hold this item" in text_of(browser, "#item-claim")

    press(browser, "a")
    wait_for_item(browser, "job-2")
    assert "job-1 approved." in text_of(browser, ".flash")
    decided = console.call(console.desk.item, "job-1")
    assert decided is not None and decided.decision is not None
    assert (decided.decision.decision, decided.decision.reviewer) == ("approve", "ana")

    press(browser, "j")
    wait_for_item(browser, "job-3")
    press(browser, "k")
    wait_for_item(browser, "job-2")

    press(browser, "2", "r")  # the second decision reason, then reject
    wait_for_item(browser, "job-3")
    rejected = console.call(console.desk.item, "job-2")
    assert rejected is not None and rejected.decision is not None
    assert (rejected.decision.decision, rejected.decision.reason) == ("reject", console.desk.decision_reasons[1])

    press(browser, "e")
    wait_for_item(browser, "job-4")
    assert console.call(console.desk.count, ItemFilter(state="escalated")) == 1

    press(browser, "?")
    wait_for(browser, lambda d: d.find_element(By.ID, "help").is_displayed())
    press(browser, Keys.ESCAPE)
    wait_for(browser, lambda d: not d.find_element(By.ID, "help").is_displayed())
    assert item_key_shown(browser) == "job-4"


def test_an_approve_in_the_browser_publishes_exactly_one_result_carrying_the_approval(
    browser: Any, console: ConsoleServer
) -> None:
    review = flagged_review("job-1", answer="A poem about tea.", metadata={"tenant": "acme"})
    (item,) = console.publish(review)
    sign_in(browser, console)
    open_item(browser, console, "job-1")
    Select(browser.find_element(By.ID, "decision-reason")).select_by_value("false positive")
    browser.find_element(By.ID, "decision-note").send_keys("satire, not a threat")
    browser.find_element(By.CSS_SELECTOR, "#decide-form button[value=approve]").click()
    wait_for(browser, lambda d: "job-1 approved." in text_of(d, ".flash"))

    console.wait_until(lambda desk: (decided := desk.item("job-1")) is not None and decided.applied is not None)
    (result,) = console.results()
    assert (result.id, result.content, result.metadata) == ("job-1", "A poem about tea.", {"tenant": "acme"})
    approval = result.approval
    assert approval is not None
    assert (approval.reviewer, approval.reason, approval.note, approval.review_reason) == (
        "ana",
        "false positive",
        "satire, not a threat",
        "flagged",
    )
    assert (approval.review.topic, approval.review.partition, approval.review.offset) == (
        item.ref.topic,
        item.ref.partition,
        item.ref.offset,
    )
    open_item(browser, console, "job-1")
    wait_for(browser, lambda d: "published at" in text_of(d, "#item-status"), "the page says it was published")
    assert console_problems(browser) == []


def test_bulk_decision_states_the_count_and_decides_exactly_that(browser: Any, console: ConsoleServer) -> None:
    acme = [flagged_review(f"acme-{n}", metadata={"tenant": "acme"}, offset=n) for n in range(3)]
    console.publish(*acme, flagged_review("other-1", metadata={"tenant": "other"}), api_error_review("down-1"))
    sign_in(browser, console, then="/?meta=tenant%3Dacme")
    wait_for(browser, lambda d: queue_keys(d) == ["acme-0", "acme-1", "acme-2"])

    Select(browser.find_element(By.ID, "bulk-decision")).select_by_value("reject")
    browser.find_element(By.ID, "bulk-preview").click()
    wait_for(browser, lambda d: text_of(d, "#bulk-number") == "3")
    assert "meta tenant=acme" in text_of(browser, "#bulk-count")

    # Someone else decides one meanwhile: the confirmation no longer holds.
    console.call(console.desk.decide, "acme-0", "approve", ADMIN)
    browser.find_element(By.ID, "bulk-confirm").click()
    wait_for(browser, lambda d: "changed from 3 to 2" in text_of(d, "#bulk-error"))
    assert console.call(console.desk.count, ItemFilter(state="decided")) == 1

    browser.find_element(By.ID, "bulk-confirm").click()
    wait_for(browser, lambda d: "Bulk reject: 2 decided." in text_of(d, ".flash"))
    assert queue_keys(browser) == []
    assert console.call(console.desk.count, ItemFilter(state="open")) == 2  # other-1 and down-1 untouched


def test_the_queue_updates_itself_when_items_arrive(browser: Any, console: ConsoleServer) -> None:
    console.publish(flagged_review("job-1"))
    sign_in(browser, console)
    wait_for(browser, lambda d: queue_keys(d) == ["job-1"])
    wait_for(browser, lambda d: d.execute_script("return document.readyState") == "complete")

    console.publish(api_error_review("job-2"))
    wait_for(browser, lambda d: queue_keys(d) == ["job-1", "job-2"], "the new item shows without a reload")
    assert text_of(browser, "#count-open") == "2"

    console.call(console.desk.decide, "job-1", "reject", ADMIN)
    wait_for(browser, lambda d: queue_keys(d) == ["job-2"], "a decided item leaves the open queue")


def test_screenshots_of_the_queue_and_an_item(browser: Any, console: ConsoleServer, screenshots_dir: Path) -> None:
    fill_with_samples(console)
    written = take_screenshots(browser, console, screenshots_dir)
    assert [path.name for path in written] == ["review-queue.png", "review-item.png"]
    for path in written:
        header = path.read_bytes()[:24]
        assert header.startswith(b"\x89PNG\r\n\x1a\n")
        assert struct.unpack(">II", header[16:24]) == (VIEWPORT["width"], VIEWPORT["height"]), path.name
        assert path.stat().st_size > 10_000
    assert console_problems(browser) == []
