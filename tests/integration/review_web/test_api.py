"""The console over HTTP: who may do what (401/403), CSRF refusals, the sign-in rate limit, every status of the
JSON API, and the security headers on every kind of response."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from yarl import URL

from pipeline.review.accounts import remove_reviewer
from pipeline.review.desk import Reviewer
from pipeline.review.web import CONTENT_SECURITY_POLICY, WebSettings
from pipeline.review.web.templating import template_names
from tests.integration.review_web.conftest import Console
from tests.unit.review.web_samples import api_error_review, flagged_review, invalid_job_review

# --------------------------------------------------------------------------------------------------
# Who is asking
# --------------------------------------------------------------------------------------------------


async def test_the_api_wants_a_valid_bearer_token(console: Console) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic YW5hOng="}):
        response = await console.client.get("/api/v1/items", headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await response.json())["error"]["status"] == 401
    assert (await console.client.get("/api/v1/items", headers=console.bearer())).status == 200


async def test_the_api_ignores_a_session_cookie(console: Console) -> None:
    await console.sign_in()
    assert (await console.client.get("/api/v1/items")).status == 401


async def test_pages_without_a_session_go_to_sign_in(console: Console) -> None:
    response = await console.client.get("/?reason=flagged", allow_redirects=False)
    assert response.status == 303
    location = URL(response.headers["Location"])
    assert (location.path, location.query["next"]) == ("/sign-in", "/?reason=flagged")
    response = await console.client.post("/items/x/decision", data={"decision": "reject"})
    assert response.status == 401


async def test_a_reviewer_cannot_do_what_only_admins_do(console: Console) -> None:
    console.desk.add(flagged_review("job-1"))
    await console.desk.decide("job-1", "escalate", Reviewer(name="ana"))
    refused = await console.client.post(
        "/api/v1/items/job-1/decision", json={"decision": "reject"}, headers=console.bearer()
    )
    assert refused.status == 403
    assert (await refused.json())["error"]["problem"] == "forbidden"
    reopen = await console.client.post("/api/v1/items/job-1/reopen", json={}, headers=console.bearer())
    assert reopen.status == 403
    decided = await console.client.post(
        "/api/v1/items/job-1/decision", json={"decision": "reject"}, headers=console.bearer("root")
    )
    assert decided.status == 200
    assert (await decided.json())["record"]["admin"] is True


# --------------------------------------------------------------------------------------------------
# Sessions, cookies, sign-in
# --------------------------------------------------------------------------------------------------


async def test_the_session_cookie_is_http_only_and_strict(console: Console) -> None:
    form_token = await console.sign_in_form_token()
    response = await console.client.post(
        "/sign-in",
        data={"token": console.tokens["ana"], "csrf_token": form_token},
        allow_redirects=False,
    )
    assert response.status == 303
    (cookie,) = [c for c in response.headers.getall("Set-Cookie") if c.startswith("review-session=")]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "samesite"} <= attributes and "secure" not in attributes
    assert "SameSite=Strict" in cookie and "Path=/" in cookie


@pytest.mark.parametrize("settings", [WebSettings(secure_cookies=True)])
async def test_behind_a_tls_proxy_cookies_are_secure_and_host_bound(console: Console) -> None:
    page = await console.client.get("/sign-in")
    (cookie,) = page.headers.getall("Set-Cookie")
    assert cookie.startswith("__Host-review-sign-in=") and "Secure" in cookie and "Path=/" in cookie


async def test_signing_out_ends_the_session(console: Console) -> None:
    csrf = await console.sign_in()
    response = await console.client.post("/sign-out", data={"csrf_token": csrf}, allow_redirects=False)
    assert response.status == 303
    assert (await console.client.get("/", allow_redirects=False)).status == 303


async def test_a_session_ends_at_its_time_and_with_its_account(console: Console) -> None:
    await console.sign_in()
    assert (await console.client.get("/", allow_redirects=False)).status == 200
    console.clock.advance(12 * 3600 + 1)
    assert (await console.client.get("/", allow_redirects=False)).status == 303
    await console.sign_in()
    remove_reviewer(console.accounts_file, "ana")
    assert (await console.client.get("/", allow_redirects=False)).status == 303


async def test_a_wrong_token_does_not_sign_in(console: Console) -> None:
    form_token = await console.sign_in_form_token()
    response = await console.client.post("/sign-in", data={"token": "guess", "csrf_token": form_token})
    assert response.status == 401
    assert "not valid" in await response.text()


async def test_sign_in_attempts_are_rate_limited_per_address(console: Console) -> None:
    form_token = await console.sign_in_form_token()

    async def attempt(token: str) -> int:
        data = {"token": token, "csrf_token": form_token}
        response = await console.client.post("/sign-in", data=data, allow_redirects=False)
        if response.status == 429:
            assert 1 <= int(response.headers["Retry-After"]) <= 60
        return response.status

    assert [await attempt("guess") for _ in range(5)] == [401] * 5
    assert await attempt(console.tokens["ana"]) == 429, "even the right token waits"
    console.clock.advance(61)
    assert await attempt(console.tokens["ana"]) == 303


# --------------------------------------------------------------------------------------------------
# CSRF
# --------------------------------------------------------------------------------------------------


async def _decide_by_form(console: Console, headers: dict[str, str], data: dict[str, str]) -> int:
    response = await console.client.post(
        "/items/job-1/decision", data={"decision": "reject", **data}, headers=headers, allow_redirects=False
    )
    return response.status


async def test_a_page_post_without_the_csrf_token_is_refused(console: Console) -> None:
    console.desk.add(flagged_review("job-1"))
    csrf = await console.sign_in()
    assert await _decide_by_form(console, {}, {}) == 403
    assert await _decide_by_form(console, {}, {"csrf_token": "forged"}) == 403
    assert await _decide_by_form(console, {"X-CSRF-Token": "forged"}, {}) == 403
    item = console.desk.item("job-1")
    assert item is not None and item.state == "open"
    assert await _decide_by_form(console, {"X-CSRF-Token": csrf}, {}) == 303


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "null"},
    ],
)
async def test_a_cross_site_post_is_refused_even_with_the_token(console: Console, headers: dict[str, str]) -> None:
    console.desk.add(flagged_review("job-1"))
    csrf = await console.sign_in()
    assert await _decide_by_form(console, headers, {"csrf_token": csrf}) == 403


async def test_a_same_origin_post_passes(console: Console) -> None:
    console.desk.add(flagged_review("job-1"))
    csrf = await console.sign_in()
    host = f"http://{console.client.host}:{console.client.port}"
    assert await _decide_by_form(console, {"Origin": host}, {"csrf_token": csrf}) == 303
    console.desk.add(flagged_review("job-1"))
    same_origin = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}  # a form under Referrer-Policy: no-referrer
    assert await _decide_by_form(console, same_origin, {"csrf_token": csrf}) == 303


async def test_sign_in_needs_its_form_token(console: Console) -> None:
    response = await console.client.post("/sign-in", data={"token": console.tokens["ana"]}, allow_redirects=False)
    assert response.status == 403


# --------------------------------------------------------------------------------------------------
# The JSON API
# --------------------------------------------------------------------------------------------------


async def test_list_items_with_filters(console: Console) -> None:
    console.desk.add(flagged_review("a", score=0.5, metadata={"tenant": "acme"}), received_at=1_799_999_000_000)
    console.desk.add(flagged_review("b", score=0.95, metadata={"tenant": "other"}), received_at=1_799_999_500_000)
    console.desk.add(api_error_review("c"), received_at=1_799_999_900_000)

    async def keys(query: str) -> list[str]:
        response = await console.client.get(f"/api/v1/items?{query}", headers=console.bearer())
        assert response.status == 200, await response.text()
        return [item["key"] for item in (await response.json())["items"]]

    assert await keys("") == ["a", "b", "c"]
    assert await keys("reason=flagged&sort=score") == ["b", "a"]
    assert await keys("meta=tenant%3Dacme") == ["a"]
    assert await keys("score_min=0.9") == ["b"]
    assert await keys("min_age=10m") == ["a"]
    assert await keys("limit=1&offset=1") == ["b"]
    body = await (await console.client.get("/api/v1/items?reason=api_error", headers=console.bearer())).json()
    (item,) = body["items"]
    assert body["total"] == 1
    assert item == {
        "key": "c",
        "job_id": "c",
        "reason": "api_error",
        "state": "open",
        "claim": None,
        "received_at": 1_799_999_900_000,
        "age_s": 100.0,
        "max_score": None,
        "model": "gpt-4o-mini",
        "decision": None,
        "decided_by": None,
    }


@pytest.mark.parametrize(
    ("query", "named"),
    [("reason=nope", "reason"), ("score_min=2", "score_min"), ("min_age=soon", "min_age"), ("limit=9999", "limit")],
)
async def test_a_bad_filter_is_400_naming_it(console: Console, query: str, named: str) -> None:
    response = await console.client.get(f"/api/v1/items?{query}", headers=console.bearer())
    assert response.status == 400
    assert (await response.json())["error"]["message"].startswith(named)


async def test_one_item_whole_with_its_decisions(console: Console) -> None:
    console.desk.add(flagged_review("tenant/job 1"))
    path = "/api/v1/items/" + quote("tenant/job 1", safe="")
    await console.client.post(
        path + "/decision", json={"decision": "escalate", "note": "unsure"}, headers=console.bearer()
    )
    body = await (await console.client.get(path, headers=console.bearer())).json()
    assert body["review"]["id"] == "tenant/job 1"
    assert body["review"]["reason"]["kind"] == "flagged"
    assert [d["record"]["decision"] for d in body["decisions"]] == ["escalate"]
    assert body["item"]["state"] == "escalated"
    missing = await console.client.get("/api/v1/items/nope", headers=console.bearer())
    assert missing.status == 404
    assert (await missing.json())["error"]["problem"] == "not_found"


async def test_every_answer_to_a_decision(console: Console) -> None:
    console.desk.add(flagged_review("job-1"))
    console.desk.add(flagged_review("no-completion", with_completion=False))
    console.desk.add(invalid_job_review())

    async def decide(key: str, body: object, who: str = "ana") -> tuple[int, dict[str, object]]:
        path = f"/api/v1/items/{quote(key, safe='')}/decision"
        response = await console.client.post(path, json=body, headers=console.bearer(who))
        return response.status, await response.json()

    status, body = await decide("job-1", {"decision": "approve", "note": "fine", "reason": "false positive"})
    assert status == 200
    record = body["record"]
    assert isinstance(record, dict)
    assert (record["type"], record["decision"], record["reviewer"], record["note"]) == (
        "decision",
        "approve",
        "ana",
        "fine",
    )
    assert body["repeated"] is False
    assert (await decide("job-1", {"decision": "approve"}))[1]["repeated"] is True
    status, body = await decide("job-1", {"decision": "reject"})
    assert (status, _problem(body)) == (409, "conflict")
    assert _problem((await decide("no-completion", {"decision": "approve"}))[1]) == "no_completion"
    assert (await decide("no-completion", {"decision": "approve"}))[0] == 422
    assert (await decide("@review:0:2", {"decision": "rerun"}))[0] == 422
    assert (await decide("nope", {"decision": "reject"}))[0] == 404


async def test_a_claimed_item_is_409_for_others(console: Console) -> None:
    console.desk.add(flagged_review("job-1"))
    await console.desk.claim("job-1", Reviewer(name="bo"))
    response = await console.client.post(
        "/api/v1/items/job-1/decision", json={"decision": "reject"}, headers=console.bearer()
    )
    assert response.status == 409
    assert _problem(await response.json()) == "claimed"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"not json", "body"),
        (b'{"decision": "maybe"}', "$.decision"),
        (b'{"decision": "reject", "extra": 1}', "extra"),
        (b'{"decision": "reject", "note": 5}', "$.note"),
        (b'{"decision": "reject", "reason": "because"}', "reason"),
        (b'{"decision": "reject", "note": "' + b"x" * 4001 + b'"}', "$.note"),
    ],
)
async def test_a_bad_decision_body_is_400_naming_the_field(console: Console, body: bytes, named: str) -> None:
    console.desk.add(flagged_review("job-1"))
    response = await console.client.post(
        "/api/v1/items/job-1/decision", data=body, headers={**console.bearer(), "Content-Type": "application/json"}
    )
    assert response.status == 400
    assert named in (await response.json())["error"]["message"]


async def test_bulk_decides_what_the_filter_covers(console: Console) -> None:
    for n in range(3):
        console.desk.add(flagged_review(f"acme-{n}", metadata={"tenant": "acme"}))
    console.desk.add(flagged_review("other", metadata={"tenant": "other"}))
    console.desk.add(flagged_review("bare", metadata={"tenant": "acme"}, with_completion=False))
    body = {"filter": {"metadata": {"tenant": "acme"}}, "decision": "approve", "expected_count": 3}
    stale = await console.client.post("/api/v1/decisions/bulk", json=body, headers=console.bearer())
    assert stale.status == 409
    assert (await stale.json())["error"]["count"] == 4
    body["expected_count"] = 4
    response = await console.client.post("/api/v1/decisions/bulk", json=body, headers=console.bearer())
    assert response.status == 200
    assert await response.json() == {"decided": 3, "skipped": 1, "skipped_because": {"no_completion": 1}}
    bad = await console.client.post(
        "/api/v1/decisions/bulk", json={"filter": {"reason": "nope"}, "decision": "reject"}, headers=console.bearer()
    )
    assert bad.status == 400


async def test_an_admin_reopens(console: Console) -> None:
    console.desk.add(flagged_review("job-1"))
    await console.desk.decide("job-1", "reject", Reviewer(name="ana"))
    response = await console.client.post(
        "/api/v1/items/job-1/reopen", json={"note": "wrong call"}, headers=console.bearer("root")
    )
    assert response.status == 200
    assert (await response.json())["item"]["state"] == "open"
    empty = await console.client.post("/api/v1/items/job-1/reopen", headers=console.bearer("root"))
    assert empty.status == 200
    assert (await console.client.post("/api/v1/items/nope/reopen", headers=console.bearer("root"))).status == 404


async def test_counts(console: Console) -> None:
    console.desk.add(flagged_review("a"), received_at=1_799_999_000_000)
    console.desk.add(api_error_review("b"))
    body = await (await console.client.get("/api/v1/counts", headers=console.bearer())).json()
    assert body == {
        "open_by_reason": {"flagged": 1, "api_error": 1},
        "open": 2,
        "escalated": 0,
        "decided": 0,
        "oldest_undecided_at": 1_799_999_000_000,
    }


# --------------------------------------------------------------------------------------------------
# Headers, assets, templates
# --------------------------------------------------------------------------------------------------


async def test_every_response_carries_the_security_headers(console: Console) -> None:
    csrf = await console.sign_in()
    responses = [
        await console.client.get("/"),
        await console.client.get("/sign-in", allow_redirects=False),
        await console.client.get("/items/nope"),
        await console.client.get("/static/console.js"),
        await console.client.get("/api/v1/items", headers=console.bearer()),
        await console.client.get("/api/v1/items"),
        await console.client.post("/items/x/decision", data={"csrf_token": csrf, "decision": "reject"}),
        await console.client.get("/healthz"),
    ]
    for response in responses:
        headers = response.headers
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, response.url
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Frame-Options"] == "DENY"
    assert [r.status for r in responses] == [200, 303, 404, 200, 200, 401, 404, 200]
    assert responses[0].headers["Cache-Control"] == "no-store"
    assert CONTENT_SECURITY_POLICY == (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


async def test_assets_are_served_from_the_package_with_their_types(console: Console) -> None:
    script = await console.client.get("/static/console.js")
    style = await console.client.get("/static/console.css")
    assert script.content_type in ("application/javascript", "text/javascript")
    assert style.content_type == "text/css"
    assert "http" not in (await style.text()), "nothing remote"
    assert (await console.client.get("/static/")).status in (403, 404), "no directory listing"
    for sneaky in ("/static/..%2Fapp.py", "/static/%2e%2e/%2e%2e/review/desk.py"):
        response = await console.client.get(URL(sneaky, encoded=True), allow_redirects=False)
        assert response.status in (403, 404), sneaky


async def test_healthz_needs_no_sign_in(console: Console) -> None:
    response = await console.client.get("/healthz")
    assert (response.status, await response.json()) == (200, {"status": "ok"})


def test_templates_hold_no_inline_script_or_style_and_mark_nothing_safe() -> None:
    directory = Path(__file__).parents[3] / "pipeline" / "review" / "web" / "templates"
    for name in template_names():
        text = (directory / name).read_text()
        assert "|safe" not in text.replace(" ", "") and "Markup" not in text, name
        assert "style=" not in text and "<style" not in text, name
        assert "<script>" not in text and " on" + "click" not in text, name
        assert "http://" not in text and "https://" not in text, name


def _problem(body: dict[str, object]) -> object:
    error = body["error"]
    assert isinstance(error, dict)
    return error["problem"]


@pytest.mark.parametrize("target", ["//evil.example/", "/\\evil.example", "/\t/evil.example", "https://evil.example"])
async def test_sign_in_goes_back_only_to_a_page_of_this_console(console: Console, target: str) -> None:
    form_token = await console.sign_in_form_token()
    data = {"token": console.tokens["ana"], "csrf_token": form_token, "next": target}
    response = await console.client.post("/sign-in", data=data, allow_redirects=False)
    assert (response.status, response.headers["Location"]) == (303, "/")


async def test_sign_in_goes_back_to_the_page_asked_for(console: Console) -> None:
    form_token = await console.sign_in_form_token()
    data = {"token": console.tokens["ana"], "csrf_token": form_token, "next": "/items/job-1?reason=flagged"}
    response = await console.client.post("/sign-in", data=data, allow_redirects=False)
    assert response.headers["Location"] == "/items/job-1?reason=flagged"
