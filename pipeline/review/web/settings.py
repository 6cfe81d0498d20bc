"""The review console's web settings: where the accounts are, how sessions and sign-in behave.

Like every setting of the pipeline, each is named by its environment variable and can be given as a flag
(``--reviewers-file``, ``--review-session-ttl-s`` …) or in the TOML file (``[pipeline] reviewers_file``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import msgspec

from pipeline.config import ConfigError, Option, parse_settings

Seconds = Annotated[float, msgspec.Meta(gt=0)]


class WebSettings(msgspec.Struct, frozen=True, kw_only=True):
    #: The accounts file (see :mod:`pipeline.review.accounts`).
    reviewers_file: str | None = None
    #: Mark cookies ``Secure`` even over plain http: the console sits behind a TLS-terminating proxy.
    #: Over https they always are.
    secure_cookies: bool = False
    #: A session ends this long after sign-in.
    session_ttl_s: Seconds = 12 * 3600.0
    #: Sign-in attempts allowed per client address within the window, then 429.
    sign_in_attempts: Annotated[int, msgspec.Meta(ge=1)] = 5
    sign_in_window_s: Seconds = 60.0
    #: Origins (``https://review.example.com``) accepted on state changes besides the console's own address,
    #: for a proxy that rewrites the ``Host`` header.
    allowed_origins: list[str] = msgspec.field(default_factory=list)


WEB_OPTIONS: tuple[Option, ...] = (
    Option("PIPELINE_REVIEWERS_FILE", "reviewers_file", "JSON file of reviewer accounts (token hashes only)"),
    Option(
        "PIPELINE_REVIEW_SECURE_COOKIES",
        "secure_cookies",
        "mark cookies Secure although served over http (behind a TLS proxy); over https they always are",
    ),
    Option("PIPELINE_REVIEW_SESSION_TTL_S", "session_ttl_s", "a signed-in session lasts this long (default 12 h)"),
    Option("PIPELINE_REVIEW_SIGN_IN_ATTEMPTS", "sign_in_attempts", "sign-in attempts per client address per window"),
    Option("PIPELINE_REVIEW_SIGN_IN_WINDOW_S", "sign_in_window_s", "the sign-in rate limit's window (default 60)"),
    Option(
        "PIPELINE_REVIEW_ALLOWED_ORIGINS",
        "allowed_origins",
        "extra origins accepted on state changes, comma-separated (a proxy that rewrites Host)",
    ),
)


def load_web_settings(values: Mapping[str, str]) -> WebSettings:
    settings = parse_settings(WebSettings, WEB_OPTIONS, values)
    bad = [origin for origin in settings.allowed_origins if not origin.startswith(("https://", "http://"))]
    if bad:
        raise ConfigError([f"PIPELINE_REVIEW_ALLOWED_ORIGINS: {o!r} is not an origin like https://host" for o in bad])
    return settings
