"""The JSON API, for integrations: ``Authorization: Bearer <token>`` on every request (no cookies, no CSRF).

- ``GET  /api/v1/items?state=open&reason=flagged&…`` — items (filter names as in :mod:`.filters`, plus
  ``limit`` ≤ 500 and ``offset``) with job id, reason, state, claim, age; ``total`` counts them all.
- ``GET  /api/v1/items/{job_id}`` — one item whole: the review record and every decision record so far.
- ``POST /api/v1/items/{job_id}/decision`` ``{"decision": "approve"|"reject"|"rerun"|"escalate", "reason",
  "note"}`` — 200 with the decision record (``repeated`` when it was already in force); 409 decided
  otherwise or claimed by someone else; 422 approve without a completion or rerun without a job; 403 an
  escalated item by a reviewer; 404 no such item.
- ``POST /api/v1/items/{job_id}/reopen`` ``{"note"}`` — admins only (403).
- ``POST /api/v1/decisions/bulk`` ``{"filter": {…}, "decision", "reason", "note", "expected_count"}`` — how
  many were decided and why others were skipped; 409 when ``expected_count`` is given and is not the count.
- ``GET  /api/v1/counts`` — the queue at a glance.

Errors are ``{"error": {"status", "problem", "message"}}``; a body that does not decode is 400 naming the field.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

import msgspec
from aiohttp import web

from pipeline.review.desk import HistoryEntry, Item, ItemState, Outcome
from pipeline.review.web.context import PROBLEM_STATUS, console, now_ms, reviewer
from pipeline.review.web.filters import FilterBody, FilterError, filter_from_body, parse_filter
from pipeline.review.web.inputs import InputError, decision_reason
from pipeline.review.web.present import model_of
from schemas.decisions import Applied, DecisionKind, DecisionRecord, Note
from schemas.topics import Review, reason_kind

MAX_LIMIT: Final = 500
T = TypeVar("T")


class DecisionBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    decision: DecisionKind
    reason: str | None = None
    note: Note | None = None


class ReopenBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    note: Note | None = None


class BulkBody(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    filter: FilterBody
    decision: DecisionKind
    reason: str | None = None
    note: Note | None = None
    #: The count the caller saw; when given and no longer right, nothing is decided (409).
    expected_count: int | None = None


class ClaimView(msgspec.Struct, frozen=True, kw_only=True):
    reviewer: str
    expires_at: int


class ItemSummary(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    job_id: str | None
    reason: str
    state: ItemState
    claim: ClaimView | None
    received_at: int
    age_s: float
    max_score: float | None
    model: str | None
    decision: DecisionKind | None
    decided_by: str | None


class HistoryView(msgspec.Struct, frozen=True, kw_only=True):
    record: DecisionRecord
    position: str
    accepted: bool
    refused_because: str | None


class ItemDetail(msgspec.Struct, frozen=True, kw_only=True):
    item: ItemSummary
    review: Review
    decisions: list[HistoryView]
    applied: Applied | None


_encoder: Final = msgspec.json.Encoder()
_decision_decoder: Final = msgspec.json.Decoder(DecisionBody)
_reopen_decoder: Final = msgspec.json.Decoder(ReopenBody)
_bulk_decoder: Final = msgspec.json.Decoder(BulkBody)


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(value), status=status, content_type="application/json")


def json_error(status: int, message: str, problem: str | None = None, **extra: Any) -> web.Response:
    return json_response({"error": {"status": status, "problem": problem, "message": message, **extra}}, status)


class BodyError(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


async def _body(request: web.Request, decoder: msgspec.json.Decoder[T], *, empty_ok: bool = False) -> T:
    raw = await request.read()
    if empty_ok and not raw.strip():
        raw = b"{}"
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise BodyError(json_error(400, f"body: {exc}", "bad_request")) from None


def summary(item: Item, now: int) -> ItemSummary:
    claim = item.claim
    return ItemSummary(
        key=item.key,
        job_id=item.review.id,
        reason=reason_kind(item.review.reason),
        state=item.state,
        claim=ClaimView(reviewer=claim.reviewer, expires_at=claim.expires_at) if claim is not None else None,
        received_at=item.received_at,
        age_s=round(max(0, now - item.received_at) / 1000, 3),
        max_score=item.max_score,
        model=model_of(item),
        decision=item.decision.decision if item.decision is not None else None,
        decided_by=item.decision.reviewer if item.decision is not None else None,
    )


def _history(entry: HistoryEntry) -> HistoryView:
    return HistoryView(
        record=entry.record, position=entry.position, accepted=entry.accepted, refused_because=entry.refused_because
    )


def _refused(outcome: Outcome) -> web.Response:
    problem = outcome.problem or "conflict"
    return json_error(PROBLEM_STATUS.get(problem, 409), outcome.detail or problem.replace("_", " "), problem)


def _whole(request: web.Request, name: str, default: int, most: int | None = None) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdigit() or (most is not None and int(text) > most):
        raise BodyError(json_error(400, f"{name}: expected a whole number{f' up to {most}' if most else ''}"))
    return int(text)


async def list_items(request: web.Request) -> web.StreamResponse:
    desk = console(request).desk
    try:
        where = parse_filter(request.query)
        limit = _whole(request, "limit", 100, MAX_LIMIT)
        offset = _whole(request, "offset", 0)
    except FilterError as exc:
        return json_error(400, str(exc), "bad_request")
    except BodyError as exc:
        return exc.response
    now = now_ms(request)
    items = [summary(item, now) for item in desk.items(where, limit=limit, offset=offset)]
    return json_response({"items": items, "total": desk.count(where), "limit": limit, "offset": offset})


async def get_item(request: web.Request) -> web.StreamResponse:
    key = request.match_info["key"]
    item = console(request).desk.item(key)
    if item is None:
        return json_error(404, f"no item {key!r}", "not_found")
    detail = ItemDetail(
        item=summary(item, now_ms(request)),
        review=item.review,
        decisions=[_history(entry) for entry in item.history],
        applied=item.applied,
    )
    return json_response(detail)


async def decide(request: web.Request) -> web.StreamResponse:
    desk = console(request).desk
    key = request.match_info["key"]
    try:
        body = await _body(request, _decision_decoder)
        reason = decision_reason(desk, body.reason)
    except BodyError as exc:
        return exc.response
    except InputError as exc:
        return json_error(400, str(exc), "bad_request")
    note = body.note.strip() if body.note and body.note.strip() else None
    outcome = await desk.decide(key, body.decision, reviewer(request), reason=reason, note=note)
    if not outcome.accepted:
        return _refused(outcome)
    item = summary(outcome.item, now_ms(request)) if outcome.item is not None else None
    return json_response({"record": outcome.record, "repeated": outcome.repeated, "item": item})


async def reopen(request: web.Request) -> web.StreamResponse:
    key = request.match_info["key"]
    try:
        body = await _body(request, _reopen_decoder, empty_ok=True)
    except BodyError as exc:
        return exc.response
    outcome = await console(request).desk.reopen(key, reviewer(request), note=body.note)
    if not outcome.accepted:
        return _refused(outcome)
    item = summary(outcome.item, now_ms(request)) if outcome.item is not None else None
    return json_response({"record": outcome.record, "item": item})


async def bulk(request: web.Request) -> web.StreamResponse:
    desk = console(request).desk
    try:
        body = await _body(request, _bulk_decoder)
        where = filter_from_body(body.filter)
        reason = decision_reason(desk, body.reason)
    except BodyError as exc:
        return exc.response
    except (FilterError, InputError) as exc:
        return json_error(400, str(exc), "bad_request")
    if body.expected_count is not None:
        count = desk.count(where)
        if count != body.expected_count:
            message = f"the filter covers {count} items, not the {body.expected_count} expected: nothing decided"
            return json_error(409, message, "count_changed", count=count)
    note = body.note.strip() if body.note and body.note.strip() else None
    outcome = await desk.bulk(where, body.decision, reviewer(request), reason=reason, note=note)
    return json_response(
        {"decided": outcome.decided, "skipped": outcome.skipped, "skipped_because": outcome.skipped_because}
    )


async def counts(request: web.Request) -> web.StreamResponse:
    queue = console(request).desk.counts()
    return json_response(
        {
            "open_by_reason": queue.open_by_reason,
            "open": sum(queue.open_by_reason.values()),
            "escalated": queue.escalated,
            "decided": queue.decided,
            "oldest_undecided_at": queue.oldest_undecided_at,
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/items", list_items)
    app.router.add_get("/api/v1/items/{key}", get_item)
    app.router.add_post("/api/v1/items/{key}/decision", decide)
    app.router.add_post("/api/v1/items/{key}/reopen", reopen)
    app.router.add_post("/api/v1/decisions/bulk", bulk)
    app.router.add_get("/api/v1/counts", counts)
