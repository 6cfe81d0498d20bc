"""Who is asking: a bearer token (the JSON API) or a session cookie (the pages), and signing in and out.

- ``/api/…`` takes ``Authorization: Bearer <token>`` only; cookies are ignored there, so the API needs no
  CSRF defence. No token or a wrong one is 401.
- Pages take the session cookie (HttpOnly, SameSite=Strict, Path=/, Secure over https or when set); without
  one a page redirects to the sign-in form. ``/events`` takes either.
- A session re-reads its account on every request: a removed reviewer is signed out, a role change applies.
- Sign-in attempts are limited per client address (429 with ``Retry-After``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import quote

from aiohttp import web

from pipeline.review.desk import Reviewer
from pipeline.review.web.context import REVIEWER, SESSION, console, session
from pipeline.review.web.sessions import Session
from pipeline.review.web.templating import render

log = logging.getLogger(__name__)

SIGN_IN_PATH: Final = "/sign-in"
SIGN_OUT_PATH: Final = "/sign-out"
#: Paths anyone may reach.
PUBLIC_PATHS: Final = frozenset({SIGN_IN_PATH, "/healthz", "/metrics"})
PUBLIC_PREFIXES: Final = ("/static/",)
#: Paths that take a session cookie or a bearer token.
EITHER_PATHS: Final = frozenset({"/events"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def cookies_secure(request: web.Request) -> bool:
    return console(request).settings.secure_cookies or request.secure


def session_cookie(request: web.Request) -> str:
    """``__Host-`` cookies are refused by browsers unless Secure, host-only and Path=/: use the prefix when we can."""
    return "__Host-review-session" if cookies_secure(request) else "review-session"


def sign_in_cookie(request: web.Request) -> str:
    return "__Host-review-sign-in" if cookies_secure(request) else "review-sign-in"


def _set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=cookies_secure(request),
    )


def _del_cookie(request: web.Request, response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path="/", httponly=True, samesite="Strict", secure=cookies_secure(request))


def bearer_reviewer(request: web.Request) -> Reviewer | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return console(request).accounts.authenticate(token.strip())


def session_of(request: web.Request) -> tuple[Session, Reviewer] | None:
    state = console(request)
    session_id = request.cookies.get(session_cookie(request))
    found = state.sessions.get(session_id) if session_id else None
    if found is None:
        return None
    account = state.accounts.reviewer(found.reviewer)
    if account is None:
        state.sessions.end(found.id)
        return None
    return found, account


def _unauthorized_api() -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(
        text="a reviewer token is required: Authorization: Bearer <token>",
        headers={"WWW-Authenticate": 'Bearer realm="review"'},
    )


@web.middleware
async def identify(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Set the request's reviewer (and session), or refuse: 401, or a redirect to sign in for a page."""
    path = request.path
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        found = session_of(request)
        if found is not None:
            request[SESSION], request[REVIEWER] = found
        return await handler(request)
    if is_api(request):
        who = bearer_reviewer(request)
        if who is None:
            raise _unauthorized_api()
        request[REVIEWER] = who
        return await handler(request)
    found = session_of(request)
    if found is not None:
        request[SESSION], request[REVIEWER] = found
        return await handler(request)
    if path in EITHER_PATHS and (who := bearer_reviewer(request)) is not None:
        request[REVIEWER] = who
        return await handler(request)
    if request.method in ("GET", "HEAD"):
        raise web.HTTPSeeOther(f"{SIGN_IN_PATH}?next={quote(request.path_qs, safe='')}")
    raise web.HTTPUnauthorized(text="sign in first: your session has ended")


def _safe_next(target: str | None) -> str:
    """Only a path of this site: never ``//host``, nor anything a browser could read as one (``/\\host``, or
    ``/<tab>/host``: browsers drop tabs and newlines from URLs)."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    if "\\" in target or not target.isprintable() or any(c.isspace() for c in target):
        return "/"
    return target


async def sign_in_page(request: web.Request) -> web.StreamResponse:
    if session(request) is not None:
        raise web.HTTPSeeOther(_safe_next(request.query.get("next")))
    return _sign_in_form(request, next_path=_safe_next(request.query.get("next")))


def _sign_in_form(request: web.Request, *, next_path: str, error: str | None = None, status: int = 200) -> web.Response:
    """The form, with its double-submit token (there is no session yet to hold a synchroniser token): the
    browser's, when it has one, so two sign-in tabs both work."""
    form_token = request.cookies.get(sign_in_cookie(request)) or secrets.token_urlsafe(32)
    response = render(request, "sign_in.html", status=status, form_token=form_token, next_path=next_path, error=error)
    _set_cookie(request, response, sign_in_cookie(request), form_token, max_age=3600)
    return response


async def sign_in(request: web.Request) -> web.StreamResponse:
    """POST /sign-in (the CSRF middleware has checked the form token): a new session for a valid token."""
    state = console(request)
    form = await request.post()
    next_path = _safe_next(str(form.get("next", "/")))
    wait_s = state.sign_ins.attempt(request.remote or "unknown")
    if wait_s is not None:
        log.warning("sign-in rate limit reached for %s", request.remote)
        response = _sign_in_form(
            request, next_path=next_path, status=429, error=f"Too many sign-in attempts: try again in {wait_s} s."
        )
        response.headers["Retry-After"] = str(wait_s)
        return response
    token = form.get("token")
    who = state.accounts.authenticate(token.strip()) if isinstance(token, str) else None
    if who is None:
        log.info("failed sign-in from %s", request.remote)
        return _sign_in_form(request, next_path=next_path, status=401, error="That token is not valid.")
    created = state.sessions.create(who.name)
    log.info("%s signed in from %s", who.name, request.remote)
    response = web.HTTPSeeOther(next_path)
    _set_cookie(request, response, session_cookie(request), created.id, max_age=int(state.settings.session_ttl_s))
    _del_cookie(request, response, sign_in_cookie(request))
    raise response


async def sign_out(request: web.Request) -> web.StreamResponse:
    current = session(request)
    if current is not None:
        console(request).sessions.end(current.id)
    response = web.HTTPSeeOther(SIGN_IN_PATH)
    _del_cookie(request, response, session_cookie(request))
    raise response
