"""What a provider call ends in: a value, never an exception.

The client returns an :data:`Outcome` for every job; routing turns it into a destination. A ``Failed``
carries the same fields as the review topic's ``api_error`` reason, so routing copies it across.
"""

from __future__ import annotations

import msgspec

from schemas.chat import ChatCompletion, Usage
from schemas.topics import ApiFailureKind


class Spend(msgspec.Struct, frozen=True, kw_only=True):
    """The tokens a job's chat attempts were billed for, summed over every attempt that reported ``usage``:
    the one that answered, and any paid before it that then failed (a body that did not decode, a stream
    cut after its usage chunk). Priced by :mod:`pipeline.tenancy.pricing`."""

    #: The model as the provider named it (a dated snapshot), else as requested.
    model: str
    prompt_tokens: int = 0
    #: Of ``prompt_tokens``, those served from the prompt cache (billed at the cached-input price).
    cached_tokens: int = 0
    completion_tokens: int = 0
    #: Attempts whose usage is counted here.
    paid_attempts: int = 0

    def plus(self, model: str, usage: Usage) -> Spend:
        details = usage.prompt_tokens_details
        cached = (details.cached_tokens or 0) if details is not None else 0
        return Spend(
            model=model,
            prompt_tokens=self.prompt_tokens + usage.prompt_tokens,
            cached_tokens=self.cached_tokens + min(cached, usage.prompt_tokens),
            completion_tokens=self.completion_tokens + usage.completion_tokens,
            paid_attempts=self.paid_attempts + 1,
        )


class Completed(msgspec.Struct, frozen=True, kw_only=True, tag_field="outcome", tag="completed"):
    """The provider answered 200 with a body that decoded (moderation may still be missing or errored)."""

    completion: ChatCompletion
    attempts: int
    latency_ms: float
    #: Tokens billed over every attempt (``None``: no attempt reported usage).
    spent: Spend | None = None


class Failed(msgspec.Struct, frozen=True, kw_only=True, tag_field="outcome", tag="failed"):
    """No usable completion after the attempts allowed (or an error that must not be retried)."""

    failure: ApiFailureKind
    message: str
    attempts: int
    latency_ms: float
    status: int | None = None
    error_type: str | None = None
    code: str | None = None
    #: Tokens billed by attempts that were paid and still failed (``None``: none was).
    spent: Spend | None = None


Outcome = Completed | Failed
