"""Cross-site request forgery: every state change from a page must prove it came from one of our pages.

Three checks, each enough alone in a modern browser, together covering old ones and proxies:

1. ``Sec-Fetch-Site``, when the browser sends it, must be ``same-origin`` (or ``none``: typed by the user).
2. ``Origin``, when present, must be this console's own origin (or one of ``PIPELINE_REVIEW_ALLOWED_ORIGINS``);
   ``null`` (what a browser sends under ``Referrer-Policy: no-referrer``) only together with check 1.
3. A synchroniser token: the session's random token, sent by our JavaScript in the ``X-CSRF-Token`` header
   or by our forms in the hidden field ``csrf_token``, compared in constant time. The sign-in form has no
   session yet: it double-submits a random value that is also in a SameSite=Strict cookie.

The session cookie being SameSite=Strict already keeps it off cross-site requests; these checks do not rely
on that. The JSON API (``/api/…``) takes bearer tokens and ignores cookies, so a forged request carries no
credential: it is left out.
"""

from __future__ import annotations

import hmac
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

from pipeline.review.web.auth import SIGN_IN_PATH, Handler, is_api, sign_in_cookie
from pipeline.review.web.context import console, session

CSRF_HEADER: Final = "X-CSRF-Token"
CSRF_FIELD: Final = "csrf_token"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


def origin_problem(request: web.Request) -> str | None:
    """Why the request looks cross-site, or ``None``.

    Our pages send ``Referrer-Policy: no-referrer``, with which browsers send ``Origin: null`` on a form post
    even to the same origin; such a request passes only with ``Sec-Fetch-Site: same-origin`` beside it.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"a {site} request cannot change anything here"
    origin = request.headers.get("Origin")
    if origin is None or origin in console(request).settings.allowed_origins:
        return None
    if origin == "null":
        return None if site is not None else "a request from an opaque origin cannot change anything here"
    if urlsplit(origin).netloc != request.host:
        return f"a request from {origin} cannot change anything here"
    return None


async def _presented_token(request: web.Request) -> str | None:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        field = (await request.post()).get(CSRF_FIELD)
        return field if isinstance(field, str) else None
    return None


@web.middleware
async def csrf_protect(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method in SAFE_METHODS or is_api(request):
        return await handler(request)
    problem = origin_problem(request)
    if problem is not None:
        raise web.HTTPForbidden(text=problem)
    if request.path == SIGN_IN_PATH:
        expected = request.cookies.get(sign_in_cookie(request))
    else:
        current = session(request)
        expected = current.csrf_token if current is not None else None
    presented = await _presented_token(request)
    if not expected or not presented or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise web.HTTPForbidden(text="the form is out of date or did not come from this console: reload the page")
    return await handler(request)
