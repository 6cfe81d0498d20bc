"""The review console's web application: routes, the security headers every response carries, errors.

``make_app(desk, accounts, settings)`` builds it around any :class:`~pipeline.review.desk.Desk` (the
Kafka-backed one in production, an in-memory one in tests); :func:`running` serves it (on 127.0.0.1 unless
told otherwise) for as long as its ``async with`` lasts.

Every response carries a strict Content-Security-Policy: scripts, styles, images and connections from this
origin only, no inline script or style, no frames, no forms to elsewhere. Page content is escaped by the
templates, so hostile text in a prompt shows as text; the policy is the second wall if an escape is ever
missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final

from aiohttp import web

from pipeline.review.accounts import Accounts
from pipeline.review.desk import Desk, DeskUnavailable
from pipeline.review.web import actions, api, auth, bulk, events, pages
from pipeline.review.web.context import CONSOLE, Console
from pipeline.review.web.csrf import csrf_protect
from pipeline.review.web.sessions import SessionStore, SignInLimiter
from pipeline.review.web.settings import WebSettings
from pipeline.review.web.templating import render

log = logging.getLogger(__name__)

STATIC_DIR: Final = Path(__file__).parent / "static"
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8090
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: Request bodies are a decision, a note, a filter: small.
MAX_BODY_BYTES: Final = 64 * 1024

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    if "Cache-Control" not in response.headers:
        static = request.path.startswith("/static/")
        response.headers["Cache-Control"] = "no-cache" if static else "no-store"


@web.middleware
async def _errors(request: web.Request, handler: auth.Handler) -> web.StreamResponse:
    """Errors as JSON under ``/api/``, as a page elsewhere; redirects pass; anything unexpected is a bare 500."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        kept = {k: v for k, v in exc.headers.items() if k in ("Retry-After", "WWW-Authenticate", "Allow")}
        if auth.is_api(request):
            response: web.Response = api.json_error(exc.status, message)
        else:
            response = render(request, "error.html", status=exc.status, message=message, title=exc.reason)
        response.headers.update(kept)
        return response
    except (asyncio.CancelledError, ConnectionError):
        raise
    except DeskUnavailable as exc:
        log.warning("%s %s: the desk is unavailable: %s", request.method, request.path, exc)
        message = f"the decisions log did not answer ({exc}); the change may not be recorded: look again"
        if auth.is_api(request):
            return api.json_error(503, message)
        return render(request, "error.html", status=503, message=message, title="Service Unavailable")
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        if auth.is_api(request):
            return api.json_error(500, "internal error: see the console's log")
        return web.Response(status=500, text="internal error: see the console's log")


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


def make_app(
    desk: Desk,
    accounts: Accounts,
    settings: WebSettings | None = None,
    *,
    clock: Callable[[], float] = time.time,
    metrics: Callable[[], bytes] | None = None,
) -> web.Application:
    """The console around ``desk``; ``accounts`` says who may sign in; ``clock`` gives epoch seconds;
    ``metrics`` (the Prometheus exposition) is served at ``/metrics`` without sign-in, like a worker's."""
    settings = settings or WebSettings()
    app = web.Application(middlewares=[_errors, auth.identify, csrf_protect], client_max_size=MAX_BODY_BYTES)
    app[CONSOLE] = Console(
        desk=desk,
        accounts=accounts,
        settings=settings,
        sessions=SessionStore(settings.session_ttl_s, clock),
        sign_ins=SignInLimiter(settings.sign_in_attempts, settings.sign_in_window_s, clock),
        clock=clock,
    )
    app[events.STREAMS] = set()
    app.on_response_prepare.append(_security_headers)
    app.on_shutdown.append(events.end_streams)
    router = app.router
    router.add_get("/", pages.queue_page)
    router.add_get("/items/{key}", pages.item_page)
    router.add_post("/items/{key}/decision", actions.decide)
    router.add_post("/items/{key}/reopen", actions.reopen)
    router.add_post("/items/{key}/release", actions.release)
    router.add_get("/bulk", bulk.bulk_preview)
    router.add_post("/bulk", bulk.bulk_decide)
    router.add_get(auth.SIGN_IN_PATH, auth.sign_in_page)
    router.add_post(auth.SIGN_IN_PATH, auth.sign_in)
    router.add_post(auth.SIGN_OUT_PATH, auth.sign_out)
    router.add_get("/events", events.events)
    router.add_get("/healthz", healthz)
    if metrics is not None:
        exposition = metrics

        async def metrics_page(request: web.Request) -> web.StreamResponse:
            return web.Response(body=exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE})

        router.add_get("/metrics", metrics_page)
    router.add_static("/static/", STATIC_DIR, name="static")
    api.add_routes(app)
    return app


@contextlib.asynccontextmanager
async def running(app: web.Application, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> AsyncIterator[str]:
    """Serve ``app`` while the block runs; yields its address (``http://127.0.0.1:8090``; port 0 picks one)."""
    runner = web.AppRunner(app, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield f"http://{shown}:{bound_port}"
    finally:
        await runner.cleanup()
