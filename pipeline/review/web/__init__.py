"""The review console's web layer: pages, the JSON API and server-sent events over a :class:`Desk`.

Modules, one job each: ``app`` (routes, security headers, errors, serving), ``auth`` (bearer tokens,
sessions, sign-in), ``csrf``, ``sessions`` (in-memory sessions, the sign-in rate limit), ``filters`` (query
strings ⇄ ``ItemFilter``), ``pages`` (queue and item), ``actions`` (the item page's forms), ``bulk`` (bulk
decisions with a confirmation), ``api`` (JSON), ``events`` (server-sent events), ``present`` (records as
rows the templates print), ``templating`` (Jinja2, autoescaped), ``inputs`` (checking a decision's fields),
``settings``, ``context``.
"""

from pipeline.review.web.app import CONTENT_SECURITY_POLICY, DEFAULT_HOST, DEFAULT_PORT, make_app, running
from pipeline.review.web.settings import WEB_OPTIONS, WebSettings, load_web_settings

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "WEB_OPTIONS",
    "WebSettings",
    "load_web_settings",
    "make_app",
    "running",
]
