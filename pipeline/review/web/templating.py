"""Jinja2 templates from the package, autoescaped: every value a template prints is HTML-escaped.

Content shown here (prompts, completions, job ids, metadata, notes) is hostile by definition, so templates
never mark anything ``|safe`` and hold no inline script or style (the Content-Security-Policy forbids them);
a test reads the templates to keep it so.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

import jinja2
from aiohttp import web

from pipeline.review.web.context import console, reviewer, session

_environment: Final = jinja2.Environment(
    loader=jinja2.PackageLoader("pipeline.review.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def item_path(key: str) -> str:
    """The path of an item's page; any character of a job id (``/`` too) is percent-encoded."""
    return "/items/" + quote(key, safe="")


def age_text(seconds: float) -> str:
    """``42s``, ``3m 12s``, ``5h 02m``, ``2d 03h``."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def time_text(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_environment.filters.update(item_path=item_path, age=age_text, time=time_text)


def render(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    """A page: the template with what every page shows (who is signed in, the queue's counts, the CSRF token)."""
    state = console(request)
    current = session(request)
    page: dict[str, Any] = {"signed_in": None, "csrf_token": "", "flashes": [], "counts": None, "now_ms": 0}
    now_ms = int(state.clock() * 1000)
    page["now_ms"] = now_ms
    if current is not None:
        page["signed_in"] = reviewer(request)
        page["csrf_token"] = current.csrf_token
        page["flashes"], current.flashes = current.flashes, []
        page["counts"] = state.desk.counts()
    page.update(context)
    body = _environment.get_template(name).render(page)
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def template_names() -> list[str]:
    return _environment.list_templates()
