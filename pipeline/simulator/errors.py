"""The API's error answers, as ``(status, ErrorBody)`` values built from :mod:`schemas.chat`.

Messages follow the shape of the real ones (what went wrong, what to do) without echoing secrets: the
401 never repeats the key it was given.
"""

from __future__ import annotations

import math

from pipeline.simulator.ratelimit import Refusal
from schemas.chat import ApiErrorDetail, ErrorBody


class ApiError(Exception):
    """An error answer: raised anywhere in request handling, written by the server."""

    def __init__(self, status: int, body: ErrorBody, headers: dict[str, str] | None = None) -> None:
        super().__init__(body.error.message)
        self.status = status
        self.body = body
        self.headers = headers or {}


def _error(
    status: int, message: str, type_: str | None, code: str | int | None = None, param: str | None = None
) -> ApiError:
    return ApiError(status, ErrorBody(error=ApiErrorDetail(message=message, type=type_, param=param, code=code)))


def missing_api_key() -> ApiError:
    return _error(
        401,
        "You didn't provide an API key. Send it in the Authorization header as a bearer token "
        "(Authorization: Bearer YOUR_KEY).",
        "invalid_request_error",
    )


def invalid_api_key() -> ApiError:
    return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return _error(400, message, "invalid_request_error", code, param)


def not_found(method: str, path: str) -> ApiError:
    return _error(404, f"Invalid URL ({method} {path})", "invalid_request_error")


def context_length_exceeded(window: int, requested: int) -> ApiError:
    return _error(
        400,
        f"This model's maximum context length is {window} tokens. However, you requested {requested} tokens. "
        "Please reduce the length of the messages or completion.",
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
    )


def retry_after_headers(seconds: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(seconds))), "retry-after-ms": str(max(1, math.ceil(seconds * 1000)))}


def rate_limited(model: str, refusal: Refusal) -> ApiError:
    unit = "requests per min (RPM)" if refusal.kind == "requests" else "tokens per min (TPM)"
    if refusal.requested > refusal.limit:
        message = (
            f"Request too large for {model} on {unit}: Limit {refusal.limit}, Requested {refusal.requested}. "
            "Reduce the input or output tokens and try again."
        )
    else:
        message = (
            f"Rate limit reached for {model} on {unit}: Limit {refusal.limit}, Used {refusal.used}, "
            f"Requested {refusal.requested}. Please try again in {refusal.retry_after_s:.3g}s."
        )
    error = _error(429, message, refusal.kind, "rate_limit_exceeded")
    error.headers.update(retry_after_headers(refusal.retry_after_s))
    return error


def injected_rate_limit(model: str, retry_after_ms: int) -> ApiError:
    error = _error(
        429,
        f"Rate limit reached for {model} on requests per min (RPM). Please try again in {retry_after_ms}ms.",
        "requests",
        "rate_limit_exceeded",
    )
    error.headers.update(retry_after_headers(retry_after_ms / 1000))
    return error


def insufficient_quota() -> ApiError:
    return _error(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        "insufficient_quota",
    )


def server_error(status: int) -> ApiError:
    if status == 502:
        # The API's edge answers a bad gateway with a numeric code and its own type.
        return _error(502, "Bad gateway.", "cf_bad_gateway", 502)
    if status == 503:
        return _error(503, "The server is overloaded or not ready yet.", "server_error")
    return _error(status, "The server had an error while processing your request.", "server_error")


def model_not_found(model: str | None) -> ApiError:
    named = f"The model `{model}`" if model else "The model"
    return _error(
        404, f"{named} does not exist or you do not have access to it.", "invalid_request_error", "model_not_found"
    )


def model_access_denied(model: str | None) -> ApiError:
    """The 403 of a project without access to the model (the API names it ``model_not_found`` too)."""
    named = f"model `{model}`" if model else "this model"
    return _error(
        403, f"Project `proj_simulator` does not have access to {named}", "invalid_request_error", "model_not_found"
    )
