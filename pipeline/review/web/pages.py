"""The pages reviewers read: the queue and one item (opening an item claims it).

Every page carries the filter it was reached with in its query string, so the next and previous links, the
decision forms and the way back all stay in the reviewer's view of the queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from pipeline.review.desk import Desk, Item, ItemFilter
from pipeline.review.web.context import console, now_ms, reviewer
from pipeline.review.web.filters import FILTER_NAMES, STATES, FilterError, filter_pairs, filter_query, parse_filter
from pipeline.review.web.present import (
    applied_text,
    bar_class,
    choice_views,
    history_rows,
    message_views,
    metadata_of,
    model_of,
    moderation_views,
    reason_rows,
    reason_summary,
)
from pipeline.review.web.templating import item_path, render
from schemas.decisions import DECISION_KINDS
from schemas.topics import REASON_KINDS, Flagged, InvalidJob, reason_kind

PAGE_SIZE: Final = 100
#: How far down the queue "next" and "previous" look for the item at hand.
NEIGHBOUR_WINDOW: Final = 500
#: Sent by the page's script when it refreshes a page after a change: the refresh must not renew a claim.
LIVE_HEADER: Final = "X-Live-Refresh"


def filter_of(request: web.Request) -> ItemFilter:
    try:
        return parse_filter(request.query)
    except FilterError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None


def _offset(request: web.Request) -> int:
    text = request.query.get("offset", "0")
    if not text.isdigit():
        raise web.HTTPBadRequest(text="offset: expected a whole number")
    return int(text)


@dataclass(frozen=True)
class QueueRow:
    key: str
    href: str
    reason: str
    summary: str
    state: str
    score: float | None
    model: str | None
    metadata: str
    bar: str
    claimed_by: str | None
    decision: str | None
    received_at: int
    age_s: float


def queue_row(item: Item, query: str, now: int) -> QueueRow:
    metadata = metadata_of(item.review)
    return QueueRow(
        key=item.key,
        href=item_path(item.key) + (f"?{query}" if query else ""),
        reason=reason_kind(item.review.reason),
        summary=reason_summary(item.review),
        state=item.state,
        score=item.max_score,
        model=model_of(item),
        metadata=", ".join(f"{k}={v}" for k, v in sorted(metadata.items())),
        bar=bar_class(item.max_score) if item.max_score is not None else "w0",
        claimed_by=item.claim.reviewer if item.claim is not None else None,
        decision=item.decision.decision if item.decision is not None else None,
        received_at=item.received_at,
        age_s=(now - item.received_at) / 1000,
    )


def _form_values(where: ItemFilter) -> dict[str, Any]:
    """What the filter form shows: one value per field (``metas`` holds the metadata filters)."""
    values: dict[str, Any] = dict.fromkeys(FILTER_NAMES - {"meta"}, "")
    values["state"] = "open"
    values.update((name, value) for name, value in filter_pairs(where) if name != "meta")
    return values


async def queue_page(request: web.Request) -> web.StreamResponse:
    desk = console(request).desk
    where = filter_of(request)
    offset = _offset(request)
    query = filter_query(where)
    now = now_ms(request)
    rows = [queue_row(item, query, now) for item in desk.items(where, limit=PAGE_SIZE, offset=offset)]
    total = desk.count(where)
    return render(
        request,
        "queue.html",
        rows=rows,
        total=total,
        offset=offset,
        page_size=PAGE_SIZE,
        query=query,
        values=_form_values(where),
        metas=[f"{field}={value}" for field, value in where.metadata],
        pairs=filter_pairs(where),
        states=STATES,
        reason_kinds=REASON_KINDS,
        decisions=DECISION_KINDS,
        decision_reasons=desk.decision_reasons,
    )


def neighbours(desk: Desk, where: ItemFilter, key: str) -> tuple[Item | None, Item | None]:
    """The items before and after ``key`` in the view; an item not in it has the view's first as next."""
    items = desk.items(where, limit=NEIGHBOUR_WINDOW)
    keys = [item.key for item in items]
    if key not in keys:
        return None, items[0] if items else None
    index = keys.index(key)
    return (items[index - 1] if index > 0 else None), (items[index + 1] if index + 1 < len(items) else None)


def render_item(
    request: web.Request, item: Item, where: ItemFilter, *, status: int = 200, error: str | None = None
) -> web.Response:
    desk = console(request).desk
    review = item.review
    query = filter_query(where)
    suffix = f"?{query}" if query else ""
    previous, following = neighbours(desk, where, item.key)
    me = reviewer(request)
    return render(
        request,
        "item.html",
        status=status,
        error=error,
        item=item,
        review=review,
        me=me,
        query=query,
        suffix=suffix,
        previous_href=item_path(previous.key) + suffix if previous is not None else None,
        next_href=item_path(following.key) + suffix if following is not None else None,
        reason=reason_kind(review.reason),
        reason_rows=reason_rows(review),
        flagged=review.reason.categories if isinstance(review.reason, Flagged) else [],
        raw=review.reason if isinstance(review.reason, InvalidJob) else None,
        messages=message_views(review.job.messages) if review.job is not None else [],
        choices=choice_views(review.completion) if review.completion is not None else [],
        sides=moderation_views(review),
        metadata=sorted(metadata_of(review).items()),
        model=model_of(item),
        history=history_rows(item.history),
        applied=applied_text(item.applied),
        can_decide=item.state == "open" or (item.state == "escalated" and me.admin),
        mine=item.claim is not None and item.claim.reviewer == me.name,
        decisions=DECISION_KINDS,
        decision_reasons=desk.decision_reasons,
    )


async def item_page(request: web.Request) -> web.StreamResponse:
    desk = console(request).desk
    key = request.match_info["key"]
    where = filter_of(request)
    item = desk.item(key)
    if item is None:
        raise web.HTTPNotFound(text=f"no item {key!r}: it may never have reached the review topic")
    error = None
    if item.state != "decided" and LIVE_HEADER not in request.headers:
        outcome = await desk.claim(key, reviewer(request))
        item = outcome.item or item
        if not outcome.accepted and outcome.problem != "claimed":
            error = outcome.detail
    return render_item(request, item, where, error=error)
