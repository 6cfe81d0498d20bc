"""What a provider call ends in: a value, never an exception.

The client returns an :data:`Outcome` for every job; routing turns it into a destination. A ``Failed``
carries the same fields as the review topic's ``api_error`` reason, so routing copies it across.
"""

from __future__ import annotations

import msgspec

from schemas.chat import ChatCompletion
from schemas.topics import ApiFailureKind


class Completed(msgspec.Struct, frozen=True, kw_only=True, tag_field="outcome", tag="completed"):
    """The provider answered 200 with a body that decoded (moderation may still be missing or errored)."""

    completion: ChatCompletion
    attempts: int
    latency_ms: float


class Failed(msgspec.Struct, frozen=True, kw_only=True, tag_field="outcome", tag="failed"):
    """No usable completion after the attempts allowed (or an error that must not be retried)."""

    failure: ApiFailureKind
    message: str
    attempts: int
    latency_ms: float
    status: int | None = None
    error_type: str | None = None
    code: str | None = None


Outcome = Completed | Failed
