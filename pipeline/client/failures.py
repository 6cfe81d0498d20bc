"""What a failed attempt was, and whether another attempt may help.

One attempt that did not produce a usable response becomes an :class:`AttemptFailure`: the typed fields a
``Failed`` outcome carries, plus ``retriable`` and the server's ``retry_after`` as data. The retry runner
(:mod:`pipeline.client.retries`) asks the failure, never a list of exception classes.

Whether a status is retriable follows the official SDK and goes further:

- retried: transport errors, timeouts, 408, 409, 429 and 5xx; ``x-should-retry: true`` also makes other
  statuses retriable, ``x-should-retry: false`` vetoes any retry;
- never retried, whatever the headers say: 400, 401, 403, 404, 422 and a 429 whose error is
  ``insufficient_quota`` (a billing state, not a rate).

The failure also carries the waits the server named: ``retry-after-ms`` / ``retry-after`` (seconds or an
HTTP date) and, on a 429, the ``x-ratelimit-reset-*`` of the exhausted limit (Go durations such as ``6m0s``).
Every message goes through :func:`scrub`: capped, the API key cut out (some servers echo what they were sent).
"""

from __future__ import annotations

import datetime
import email.utils
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import msgspec

from schemas.chat import ErrorBody, Usage
from schemas.topics import ApiFailureKind

NEVER_RETRIED_STATUSES: Final = frozenset({400, 401, 403, 404, 422})
RETRIED_STATUSES: Final = frozenset({408, 409, 429})
QUOTA_ERROR: Final = "insufficient_quota"
#: How much of an error message a failure keeps (they end up in review records).
MAX_MESSAGE_CHARS: Final = 500

_error_decoder: Final = msgspec.json.Decoder(ErrorBody)


@dataclass(frozen=True, slots=True)
class AttemptFailure:
    """Why one attempt produced no usable response, and whether another attempt may help."""

    failure: ApiFailureKind
    message: str
    retriable: bool
    status: int | None = None
    error_type: str | None = None
    code: str | None = None
    #: Seconds the server asked us to wait (``retry-after-ms`` / ``retry-after``).
    retry_after_s: float | None = None
    #: On a 429: seconds until the exhausted limit is full again (``x-ratelimit-reset-*``); bounds backoff.
    refill_s: float | None = None
    #: What the provider billed for an attempt that was paid and still failed (a 200 whose body did not
    #: decode, a stream cut after its usage chunk): it counts in the job's cost.
    usage: Usage | None = None

    @property
    def reason(self) -> str:
        """A short label for metrics and logs: ``http_429``, ``timeout``, ``stream`` …"""
        return f"http_{self.status}" if self.failure == "http_status" else self.failure

    @property
    def is_quota(self) -> bool:
        """The account is out of quota (``insufficient_quota``): a billing state, not a rate."""
        return QUOTA_ERROR in (self.code, self.error_type)


# --------------------------------------------------------------------------------------------------
# Header parsing
# --------------------------------------------------------------------------------------------------

_GO_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNIT_SECONDS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_go_duration(text: str) -> float | None:
    """Seconds in a Go ``time.Duration`` string (``6m0s``, ``1.5s``, ``12ms``, ``1h2m3.5s``), else ``None``.

    OpenAI's ``x-ratelimit-reset-*`` headers use this format. A bare number is read as seconds.
    """
    text = text.strip()
    if not text:
        return None
    try:
        bare = float(text)
    except ValueError:
        pass
    else:
        return bare if math.isfinite(bare) and bare >= 0 else None
    total, position = 0.0, 0
    for match in _GO_DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _GO_UNIT_SECONDS[match.group(2)]
        position = match.end()
    return total if position == len(text) else None


def _finite_non_negative(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    if math.isnan(value) or value < 0:
        return None
    return value


def parse_retry_after(headers: Mapping[str, str], now_epoch_s: float) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (preferred) or ``retry-after`` (seconds or an HTTP date).

    An HTTP date in the past means "now" (0). Malformed values are ignored; an absurdly large number stays
    large (``inf``) so the cap rejects it rather than falling back to a shorter backoff.
    """
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        value = _finite_non_negative(milliseconds.strip())
        if value is not None:
            return value / 1000
    seconds = headers.get("retry-after")
    if seconds is None:
        return None
    value = _finite_non_negative(seconds.strip())
    if value is not None:
        return value
    try:
        when = email.utils.parsedate_to_datetime(seconds)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC with no claim about the local zone
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now_epoch_s)


def rate_limit_reset_s(headers: Mapping[str, str]) -> float | None:
    """Seconds until every exhausted limit (remaining 0) is full again, per ``x-ratelimit-reset-*``.

    ``None`` when no limit reports 0 remaining with a readable reset.
    """
    waits = []
    for kind in ("requests", "tokens"):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        reset = headers.get(f"x-ratelimit-reset-{kind}")
        if remaining is None or reset is None or remaining.strip() not in ("0", "0.0"):
            continue
        seconds = parse_go_duration(reset)
        if seconds is not None:
            waits.append(seconds)
    return max(waits) if waits else None


# --------------------------------------------------------------------------------------------------
# Classifying a response
# --------------------------------------------------------------------------------------------------


def scrub(message: str, secret: str | None) -> str:
    """Cap a message's length and cut out the secret (some servers echo what they were sent)."""
    if secret:
        message = message.replace(secret, "[redacted]")
    return message[:MAX_MESSAGE_CHARS]


def _status_is_retriable(status: int, headers: Mapping[str, str], code: str | None, kind: str | None) -> bool:
    if status in NEVER_RETRIED_STATUSES or QUOTA_ERROR in (code, kind):
        return False
    should_retry = headers.get("x-should-retry")
    if should_retry == "false":
        return False
    if should_retry == "true":
        return True
    return status in RETRIED_STATUSES or status >= 500


def failure_from_status(
    status: int, headers: Mapping[str, str], body: bytes, *, now_epoch_s: float, secret: str | None
) -> AttemptFailure:
    """The failure an HTTP error response stands for: its error body's fields and the retry verdict."""
    message, error_type, code = f"HTTP {status}", None, None
    try:
        detail = _error_decoder.decode(body).error
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        pass
    else:
        message = f"HTTP {status}: {detail.message}"
        # type and code are the server's text too, kept in review records: scrubbed like the message
        error_type = None if detail.type is None else scrub(detail.type, secret)
        code = None if detail.code is None else scrub(str(detail.code), secret)
    return AttemptFailure(
        failure="http_status",
        message=scrub(message, secret),
        retriable=_status_is_retriable(status, headers, code, error_type),
        status=status,
        error_type=error_type,
        code=code,
        retry_after_s=parse_retry_after(headers, now_epoch_s),
        refill_s=rate_limit_reset_s(headers) if status == 429 else None,
    )
