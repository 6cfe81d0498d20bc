"""What the item page's forms do: decide, reopen (admins), release a claim. Each answers with a redirect
(Post/Redirect/Get), or the item page again with the reason nothing changed and its status code."""

from __future__ import annotations

import logging

from aiohttp import web

from pipeline.review.desk import Item, ItemFilter, Outcome
from pipeline.review.web.context import PROBLEM_STATUS, console, reviewer, session
from pipeline.review.web.filters import filter_query
from pipeline.review.web.inputs import InputError, note_text, read_decision
from pipeline.review.web.pages import filter_of, neighbours, render_item
from pipeline.review.web.templating import item_path

log = logging.getLogger(__name__)

_PAST = {"approve": "approved", "reject": "rejected", "rerun": "sent to rerun", "escalate": "escalated"}


def _flash(request: web.Request, message: str) -> None:
    current = session(request)
    if current is not None:
        current.flashes.append(message)


def _queue_href(where: ItemFilter) -> str:
    query = filter_query(where)
    return f"/?{query}" if query else "/"


def _item_href(key: str, where: ItemFilter) -> str:
    query = filter_query(where)
    return item_path(key) + (f"?{query}" if query else "")


def _item_or_404(request: web.Request, key: str) -> Item:
    item = console(request).desk.item(key)
    if item is None:
        raise web.HTTPNotFound(text=f"no item {key!r}")
    return item


def _refused(request: web.Request, key: str, where: ItemFilter, outcome: Outcome) -> web.Response:
    status = PROBLEM_STATUS.get(outcome.problem or "conflict", 409)
    if outcome.problem == "not_found":
        raise web.HTTPNotFound(text=outcome.detail or f"no item {key!r}")
    item = outcome.item or _item_or_404(request, key)
    return render_item(request, item, where, status=status, error=outcome.detail or outcome.problem)


async def decide(request: web.Request) -> web.StreamResponse:
    """POST /items/{key}/decision: decide, then go to the next item of the view (or back to the queue)."""
    desk = console(request).desk
    key = request.match_info["key"]
    where = filter_of(request)
    form = await request.post()
    item = _item_or_404(request, key)
    try:
        wanted = read_decision(desk, form.get("decision"), form.get("reason"), form.get("note"))
    except InputError as exc:
        return render_item(request, item, where, status=400, error=str(exc))
    _, following = neighbours(desk, where, key)
    me = reviewer(request)
    outcome = await desk.decide(key, wanted.decision, me, reason=wanted.reason, note=wanted.note)
    if not outcome.accepted:
        return _refused(request, key, where, outcome)
    log.info("%s: %s %s", me.name, wanted.decision, key)
    shown = item.review.id or key
    if outcome.repeated:
        _flash(request, f"{shown} was already {_PAST[wanted.decision]}: nothing changed.")
    else:
        _flash(request, f"{shown} {_PAST[wanted.decision]}.")
    target = _item_href(following.key, where) if following is not None else _queue_href(where)
    raise web.HTTPSeeOther(target)


async def reopen(request: web.Request) -> web.StreamResponse:
    """POST /items/{key}/reopen (admins): the item goes back to the queue."""
    desk = console(request).desk
    key = request.match_info["key"]
    where = filter_of(request)
    form = await request.post()
    try:
        note = note_text(form.get("note"))
    except InputError as exc:
        return render_item(request, _item_or_404(request, key), where, status=400, error=str(exc))
    me = reviewer(request)
    outcome = await desk.reopen(key, me, note=note)
    if not outcome.accepted:
        return _refused(request, key, where, outcome)
    log.info("%s: reopened %s", me.name, key)
    _flash(request, "Reopened: the item is back in the queue.")
    raise web.HTTPSeeOther(_item_href(key, where))


async def release(request: web.Request) -> web.StreamResponse:
    """POST /items/{key}/release: let the item go before the claim expires."""
    key = request.match_info["key"]
    where = filter_of(request)
    outcome = await console(request).desk.release(key, reviewer(request))
    if not outcome.accepted:
        return _refused(request, key, where, outcome)
    _flash(request, f"Released {key}: others can take it.")
    raise web.HTTPSeeOther(_queue_href(where))
