"""What goes on the wire for a job: the request body and the headers.

:func:`build_request` takes the job's model, params and moderation model over the configured defaults; every
request carries ``moderation`` except in ``separate`` mode. :func:`client_request_id` turns the job id into
the ``X-Client-Request-Id`` the provider (and the simulator) correlates retries by.

:class:`RequestHeaders` builds every header but ``Authorization``: the key is added by the transport as each
request is sent (:class:`~pipeline.client.transport.AuthorizedTransport`), so no header map built here holds it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import urllib.parse
from typing import Final

import msgspec

from pipeline import __version__
from pipeline.client.config import ClientConfig
from schemas.chat import ChatCompletionRequest, ModerationParams, StreamOptions
from schemas.moderations import ModerationCreateRequest
from schemas.topics import Job

log = logging.getLogger("pipeline.client")

#: OpenAI accepts ``X-Client-Request-Id`` values of up to 512 printable ASCII characters.
MAX_CLIENT_REQUEST_ID: Final = 512

_encoder: Final = msgspec.json.Encoder()


def build_request(job: Job, config: ClientConfig) -> ChatCompletionRequest:
    """The request for a job: its model, params and moderation model override the configured defaults."""
    params = msgspec.structs.asdict(job.params) if job.params is not None else {}
    moderation = None
    if config.moderation_mode != "separate":
        moderation = ModerationParams(model=job.moderation_model or config.moderation_model, policy=config.policy)
    return ChatCompletionRequest(
        model=job.model or config.model,
        messages=job.messages,
        moderation=moderation,
        stream=True if config.stream else None,
        stream_options=StreamOptions(include_usage=True) if config.stream else None,
        **params,
    )


def request_body(request: ChatCompletionRequest | ModerationCreateRequest) -> bytes:
    """The JSON body, encoded once per call (its retries send the same bytes)."""
    return _encoder.encode(request)


def client_request_id(job_id: str) -> str:
    """The job id as an ``X-Client-Request-Id`` value: as is when it is short printable ASCII, else
    percent-encoded, else (still too long) a SHA-256 of it. Distinct job ids stay distinct."""
    if len(job_id) <= MAX_CLIENT_REQUEST_ID and job_id.isascii() and job_id.isprintable():
        return job_id
    quoted = urllib.parse.quote(job_id, safe="")
    if len(quoted) <= MAX_CLIENT_REQUEST_ID:
        return quoted
    return "sha256-" + hashlib.sha256(job_id.encode()).hexdigest()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class RequestHeaders:
    """The headers every call of a client sends (``Authorization`` aside); :meth:`for_call` adds the call's
    ``X-Client-Request-Id``."""

    __slots__ = ("_json", "_stream")

    def __init__(self, config: ClientConfig) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"moderated-pipeline/{__version__}",
        }
        if config.organization:
            headers["OpenAI-Organization"] = config.organization
        if config.project:
            headers["OpenAI-Project"] = config.project
        self._json = {**headers, "Accept": "application/json"}
        self._stream = {**headers, "Accept": "text/event-stream"}
        url = urllib.parse.urlsplit(config.base_url.rstrip("/"))
        if url.scheme == "http" and not _is_loopback(url.hostname or ""):
            log.warning("OPENAI_BASE_URL is plain http to a remote host: the API key travels unencrypted")

    def for_call(self, request_id: str, *, stream: bool = False) -> dict[str, str]:
        """A fresh header map for one call (``Accept: text/event-stream`` when it streams)."""
        return {**(self._stream if stream else self._json), "X-Client-Request-Id": request_id}
