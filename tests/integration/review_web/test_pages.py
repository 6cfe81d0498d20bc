"""The pages over HTTP: escaping, claims, decisions by form, the two-step bulk decision, the event stream."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import quote

from markupsafe import escape

from pipeline.review.desk import ItemFilter, Reviewer
from tests.integration.review_web.conftest import Console
from tests.unit.review.web_samples import HOSTILE_TEXTS, flagged_review, hostile_review, invalid_job_review


async def test_hostile_content_comes_out_escaped(console: Console) -> None:
    review = hostile_review()
    assert review.id is not None
    console.desk.add(review)
    console.desk.add(invalid_job_review('<script>alert("raw")</script>'))
    await console.sign_in()
    page = await (await console.client.get("/items/" + quote(review.id, safe=""))).text()
    for text in (*HOSTILE_TEXTS, review.id, "<img src=x onerror=alert(2)>", "<b>hate</b>"):
        assert str(escape(text)) in page, text
    assert "<img" not in page and "<svg" not in page and "<b>hate" not in page, "no live tag"
    assert len(re.findall(r"<script", page)) == 1, "only the console's own script"
    assert 'href="javascript:' not in page
    assert 'rel="noopener noreferrer nofollow"' in page
    raw_page = await (await console.client.get("/items/" + quote("@review:0:1", safe=""))).text()
    assert "&lt;script&gt;alert(&#34;raw&#34;)&lt;/script&gt;" in raw_page
    queue = await (await console.client.get("/?state=any")).text()
    assert "<script>alert" not in queue and "<img" not in queue


async def test_opening_an_item_claims_it_and_others_see_who_holds_it(console: Console) -> None:
    console.desk.add(flagged_review("job-1"))
    await console.sign_in("ana")
    page = await (await console.client.get("/items/job-1")).text()
    assert "You hold this item" in page
    item = console.desk.item("job-1")
    assert item is not None and item.claim is not None and item.claim.reviewer == "ana"

    console.client.session.cookie_jar.clear()
    await console.sign_in("root")
    page = await (await console.client.get("/items/job-1", headers={"X-Live-Refresh": "1"})).text()
    assert "Held by <b>ana</b>" in page
    console.clock.advance(301)
    await console.client.get("/items/job-1")
    item = console.desk.item("job-1")
    assert item is not None and item.claim is not None and item.claim.reviewer == "root", "an expired claim is gone"


async def test_a_decision_by_form_moves_on_to_the_next_item_of_the_view(console: Console) -> None:
    for key in ("a", "b", "c"):
        console.desk.add(flagged_review(key, metadata={"tenant": "acme"}))
    csrf = await console.sign_in()
    response = await console.client.post(
        "/items/a/decision?meta=tenant%3Dacme",
        data={"csrf_token": csrf, "decision": "reject", "reason": "spam or abuse", "note": "  obvious  "},
        allow_redirects=False,
    )
    assert response.status == 303
    assert response.headers["Location"] == "/items/b?meta=tenant%3Dacme"
    item = console.desk.item("a")
    assert item is not None and item.decision is not None
    assert (item.decision.reason, item.decision.note) == ("spam or abuse", "obvious")
    page = await (await console.client.get(response.headers["Location"])).text()
    assert "a rejected." in page

    again = await console.client.post("/items/a/decision", data={"csrf_token": csrf, "decision": "approve"})
    assert again.status == 409
    assert "already decided" in await again.text()
    bad = await console.client.post("/items/b/decision", data={"csrf_token": csrf, "decision": "maybe"})
    assert bad.status == 400


async def test_reopen_by_page_is_for_admins(console: Console) -> None:
    console.desk.add(flagged_review("job-1"))
    await console.desk.decide("job-1", "reject", Reviewer(name="ana"))
    csrf = await console.sign_in("ana")
    assert (await console.client.post("/items/job-1/reopen", data={"csrf_token": csrf})).status == 403
    console.client.session.cookie_jar.clear()
    csrf = await console.sign_in("root")
    response = await console.client.post("/items/job-1/reopen", data={"csrf_token": csrf}, allow_redirects=False)
    assert response.status == 303
    assert console.desk.count(ItemFilter(state="open")) == 1


async def test_bulk_asks_with_the_count_and_leaves_out_later_arrivals(console: Console) -> None:
    for n in range(3):
        console.desk.add(flagged_review(f"acme-{n}", metadata={"tenant": "acme"}))
    csrf = await console.sign_in()
    preview = await console.client.get("/bulk?meta=tenant%3Dacme&decision=reject&reason=&note=batch")
    page = await preview.text()
    assert re.search(r'id="bulk-number">3<', page)
    as_of = re.search(r'name="as_of" value="(\d+)"', page)
    assert as_of is not None

    console.clock.advance(5)
    console.desk.add(flagged_review("acme-late", metadata={"tenant": "acme"}))
    form = {"csrf_token": csrf, "decision": "reject", "note": "batch", "expected": "3", "as_of": as_of.group(1)}
    done = await console.client.post("/bulk?meta=tenant%3Dacme", data=form, allow_redirects=False)
    assert done.status == 303
    assert [i.key for i in console.desk.items(ItemFilter(state="open"))] == ["acme-late"]


async def test_bulk_refuses_when_the_count_changed(console: Console) -> None:
    for n in range(3):
        console.desk.add(flagged_review(f"acme-{n}"))
    csrf = await console.sign_in()
    await console.desk.decide("acme-0", "approve", Reviewer(name="bo"))
    form = {"csrf_token": csrf, "decision": "reject", "expected": "3", "as_of": str(int(console.clock() * 1000))}
    response = await console.client.post("/bulk", data=form)
    assert response.status == 409
    page = await response.text()
    assert "changed from 3 to 2" in page and re.search(r'id="bulk-number">2<', page)
    assert console.desk.count(ItemFilter(state="decided")) == 1


async def test_a_bad_filter_on_a_page_is_400(console: Console) -> None:
    await console.sign_in()
    response = await console.client.get("/?score_min=high")
    assert response.status == 400
    assert "score_min" in await response.text()


async def test_the_event_stream_tells_of_each_change(console: Console) -> None:
    await console.sign_in()
    async with console.client.get("/events") as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert await asyncio.wait_for(stream.content.readline(), 5) == b"retry: 2000\n"
        await stream.content.readline()
        console.desk.add(flagged_review("job-1"))
        event = await asyncio.wait_for(stream.content.readline(), 5)
        data = await asyncio.wait_for(stream.content.readline(), 5)
    assert event == b"event: change\n"
    assert b'"open":1' in data and b'"open_by_reason":{"flagged":1}' in data


async def test_the_event_stream_takes_a_bearer_token_too(console: Console) -> None:
    async with console.client.get("/events", headers=console.bearer()) as stream:
        assert stream.status == 200
    async with console.client.get("/events", allow_redirects=False) as anonymous:
        assert anonymous.status == 303
