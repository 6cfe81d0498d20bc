"""What every handler reaches through the application and the request: the desk, the accounts, who is asking."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from pipeline.review.accounts import Accounts
from pipeline.review.desk import Desk, Problem, Reviewer
from pipeline.review.web.sessions import Session, SessionStore, SignInLimiter
from pipeline.review.web.settings import WebSettings


@dataclass(frozen=True)
class Console:
    """The application's parts, stored once on the app."""

    desk: Desk
    accounts: Accounts
    settings: WebSettings
    sessions: SessionStore
    sign_ins: SignInLimiter
    #: Epoch seconds (replaced in tests).
    clock: Callable[[], float]


CONSOLE: Final = web.AppKey("console", Console)
#: Set by the identity middleware on every request that is not public.
REVIEWER: Final = web.RequestKey("review.reviewer", Reviewer)
#: Set when the request came with a session cookie (pages), absent for bearer requests (the API).
SESSION: Final = web.RequestKey("review.session", Session)

#: The HTTP status of each reason an action changed nothing.
PROBLEM_STATUS: Final[dict[Problem, int]] = {
    "not_found": 404,
    "conflict": 409,
    "claimed": 409,
    "no_completion": 422,
    "no_job": 422,
    "forbidden": 403,
}


def console(request: web.Request) -> Console:
    return request.app[CONSOLE]


def reviewer(request: web.Request) -> Reviewer:
    if REVIEWER not in request:
        raise web.HTTPUnauthorized()
    return request[REVIEWER]


def session(request: web.Request) -> Session | None:
    return request.get(SESSION)


def now_ms(request: web.Request) -> int:
    return int(console(request).clock() * 1000)
