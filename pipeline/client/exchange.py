"""One HTTP exchange with the provider: a POST (or a stream) in, a decoded answer or an
:class:`~pipeline.client.failures.AttemptFailure` out, never an exception.

- ``POST /chat/completions`` (:meth:`Exchange.chat`): a 2xx body decodes to a ``ChatCompletion``; a stream
  is assembled into the same shape (:func:`~pipeline.client.streaming.read_stream`), and a provider that
  ignores ``stream`` and answers with plain JSON is read as such. The status and headers come back with
  the result, for pacing.
- ``POST /moderations`` (:meth:`Exchange.moderations`): a 2xx body decodes to a ``ModerationCreateResponse``.
- anything else maps to a failure: a transport error by its own ``failure``/``retriable``, an error status
  by :func:`~pipeline.client.failures.failure_from_status`, an undecodable body as ``decode`` (not
  retriable), a stream cut off after its headers as ``stream``.

The exchange sends through an :class:`~pipeline.client.transport.AuthorizedTransport`: the key is added to
each request as it is sent, and the exchange holds it only as a :class:`~pipeline.secret.Secret`. Every
message a failure carries is scrubbed of the key here, whichever way it was made.

A chat call without ``stream`` is bounded as a whole by ``Timeouts.call`` (a long answer sends nothing until
it is done); a ``/moderations`` call answers in well under a second, so the read timeout bounds it whole.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

import msgspec

from pipeline.client.failures import AttemptFailure, failure_from_status, scrub
from pipeline.client.streaming import read_stream
from pipeline.client.timing import Clock
from pipeline.client.transport import AuthorizedTransport, HttpTransport, Timeouts, TransportError
from pipeline.secret import Secret
from schemas.chat import ChatCompletion, Usage
from schemas.moderations import ModerationCreateResponse

_completion_decoder: Final = msgspec.json.Decoder(ChatCompletion)
_moderations_decoder: Final = msgspec.json.Decoder(ModerationCreateResponse)
_usage_decoder: Final = msgspec.json.Decoder(Usage)
#: A ``"usage": {…}`` member with at most one level of nested objects (``prompt_tokens_details`` …).
_USAGE_MEMBER: Final = re.compile(rb'"usage"\s*:\s*(\{(?:[^{}]|\{[^{}]*\})*\})')


def salvage_usage(body: bytes) -> Usage | None:
    """The ``usage`` of a 200 body that is not a valid completion, when that member is itself intact: the
    provider billed the call, so its tokens count in the job's cost even though the answer is lost."""
    found = _USAGE_MEMBER.search(body)
    if found is None:
        return None
    try:
        return _usage_decoder.decode(found.group(1))
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None


@dataclass(frozen=True, slots=True)
class ChatAnswer:
    """What one chat exchange got: its status and headers (``None`` and empty when no response came)."""

    status: int | None
    headers: Mapping[str, str]
    result: ChatCompletion | AttemptFailure


class Exchange:
    """Sends one request through the transport and maps whatever comes back; holds no per-call state."""

    def __init__(
        self, transport: HttpTransport, *, base_url: str, timeouts: Timeouts, secret: Secret, wall_clock: Clock
    ) -> None:
        self._transport = AuthorizedTransport(transport, secret)
        base = base_url.rstrip("/")
        self._chat_url = base + "/chat/completions"
        self._moderations_url = base + "/moderations"
        self._timeouts = timeouts
        self._moderation_timeouts = replace(timeouts, call=min(timeouts.call, timeouts.read))
        self._secret = secret  # only to cut it out of messages
        self._wall_clock = wall_clock

    def __repr__(self) -> str:
        return f"Exchange(chat_url={self._chat_url!r})"

    async def chat(self, body: bytes, headers: Mapping[str, str], *, stream: bool) -> ChatAnswer:
        if stream:
            return await self._chat_stream(body, headers)
        try:
            response = await self._transport.post(self._chat_url, headers, body, self._timeouts)
        except TransportError as exc:
            return ChatAnswer(None, {}, self._transport_failure(exc))
        if 200 <= response.status < 300:
            return ChatAnswer(response.status, response.headers, self._decode_completion(response.body))
        failure = self._status_failure(response.status, response.headers, response.body)
        return ChatAnswer(response.status, response.headers, failure)

    async def _chat_stream(self, body: bytes, headers: Mapping[str, str]) -> ChatAnswer:
        status: int | None = None
        response_headers: Mapping[str, str] = {}
        try:
            async with self._transport.stream(self._chat_url, headers, body, self._timeouts) as response:
                status, response_headers = response.status, response.headers
                if not 200 <= status < 300:
                    error_body = await response.read()
                    return ChatAnswer(
                        status, response_headers, self._status_failure(status, response_headers, error_body)
                    )
                if response_headers.get("content-type", "").startswith("application/json"):
                    # A provider that ignores ``stream`` answers with a plain completion.
                    return ChatAnswer(status, response_headers, self._decode_completion(await response.read()))
                result = await read_stream(response.chunks())
                if isinstance(result, AttemptFailure):
                    result = AttemptFailure(
                        failure=result.failure,
                        message=self._scrub(result.message),
                        retriable=result.retriable,
                        error_type=None if result.error_type is None else self._scrub(result.error_type),
                        code=None if result.code is None else self._scrub(result.code),
                        usage=result.usage,
                    )
                return ChatAnswer(status, response_headers, result)
        except TransportError as exc:
            if status is None:
                return ChatAnswer(None, {}, self._transport_failure(exc))
            message = self._scrub(f"stream cut off: {exc}")
            cut = AttemptFailure(failure="stream", message=message, retriable=exc.retriable)
            return ChatAnswer(status, response_headers, cut)

    async def moderations(self, body: bytes, headers: Mapping[str, str]) -> ModerationCreateResponse | AttemptFailure:
        try:
            response = await self._transport.post(self._moderations_url, headers, body, self._moderation_timeouts)
        except TransportError as exc:
            return self._transport_failure(exc)
        if not 200 <= response.status < 300:
            return self._status_failure(response.status, response.headers, response.body)
        try:
            return _moderations_decoder.decode(response.body)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            message = self._scrub(f"not a moderation response: {exc}")
            return AttemptFailure(failure="decode", message=message, retriable=False)

    def _decode_completion(self, body: bytes) -> ChatCompletion | AttemptFailure:
        try:
            return _completion_decoder.decode(body)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            message = self._scrub(f"response is not a chat completion: {exc}")
            return AttemptFailure(failure="decode", message=message, retriable=False, usage=salvage_usage(body))

    def _status_failure(self, status: int, headers: Mapping[str, str], body: bytes) -> AttemptFailure:
        return failure_from_status(status, headers, body, now_epoch_s=self._wall_clock(), secret=self._secret.reveal())

    def _transport_failure(self, exc: TransportError) -> AttemptFailure:
        return AttemptFailure(failure=exc.failure, message=self._scrub(str(exc)), retriable=exc.retriable)

    def _scrub(self, message: str) -> str:
        return scrub(message, self._secret.reveal())
