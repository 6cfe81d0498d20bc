"""Bulk decisions from the queue page, in two steps: a confirmation that states the count, then the decision.

``GET /bulk?<filter>&decision=…`` counts what the filter covers now and asks. The confirmation sends back
that count and the moment it was taken; ``POST /bulk`` decides only items that had arrived by then (so an
item arriving while the reviewer reads is not swept in) and refuses (409, with a fresh confirmation) when
the count is no longer the one confirmed — someone else decided some of them meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aiohttp import web

from pipeline.review.desk import ItemFilter
from pipeline.review.web.context import console, now_ms, reviewer, session
from pipeline.review.web.filters import describe_filter, filter_pairs, filter_query, pinned
from pipeline.review.web.inputs import DecisionInput, InputError, read_decision
from pipeline.review.web.pages import filter_of
from pipeline.review.web.templating import render

log = logging.getLogger(__name__)


def _whole(name: str, value: object) -> int:
    if not isinstance(value, str) or not value.isdigit():
        raise web.HTTPBadRequest(text=f"{name}: expected a whole number")
    return int(value)


def _confirmation(
    request: web.Request,
    where: ItemFilter,
    wanted: DecisionInput,
    *,
    status: int = 200,
    error: str | None = None,
) -> web.Response:
    desk = console(request).desk
    count = desk.count(where)
    query = filter_query(where)
    return render(
        request,
        "bulk.html",
        status=status,
        error=error,
        count=count,
        description=describe_filter(where),
        pairs=filter_pairs(where),
        query=query,
        wanted=wanted,
        as_of=now_ms(request),
        back=f"/?{query}" if query else "/",
    )


def _wanted(request: web.Request, form: Mapping[str, object]) -> DecisionInput:
    """The decision, its reason and note, from the query string (preview) or the form (confirm)."""
    try:
        return read_decision(console(request).desk, form.get("decision"), form.get("reason"), form.get("note"))
    except InputError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None


async def bulk_preview(request: web.Request) -> web.StreamResponse:
    """GET /bulk: how many items the decision would cover, and a button to confirm exactly that many."""
    return _confirmation(request, filter_of(request), _wanted(request, request.query))


async def bulk_decide(request: web.Request) -> web.StreamResponse:
    """POST /bulk: decide the confirmed items, if they are still the confirmed number."""
    desk = console(request).desk
    where = filter_of(request)
    form = await request.post()
    wanted = _wanted(request, form)
    expected = _whole("expected", form.get("expected"))
    as_of = _whole("as_of", form.get("as_of"))
    covered = pinned(where, as_of, now_ms(request))
    count = desk.count(covered)
    if count != expected:
        error = f"The count changed from {expected} to {count} since you looked: check the new count and confirm again."
        return _confirmation(request, where, wanted, status=409, error=error)
    me = reviewer(request)
    outcome = await desk.bulk(covered, wanted.decision, me, reason=wanted.reason, note=wanted.note)
    log.info("%s: bulk %s of %d items (%d skipped)", me.name, wanted.decision, outcome.decided, outcome.skipped)
    message = f"Bulk {wanted.decision}: {outcome.decided} decided"
    if outcome.skipped:
        because = ", ".join(f"{n} {why}" for why, n in sorted(outcome.skipped_because.items()))
        message += f", {outcome.skipped} skipped ({because})"
    current = session(request)
    if current is not None:
        current.flashes.append(message + ".")
    query = filter_query(where)
    raise web.HTTPSeeOther(f"/?{query}" if query else "/")
