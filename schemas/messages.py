"""Conversation messages and their content parts: what a request (and a job) sends, in the wire format.

Messages are a tagged union on ``role``, content parts and tool calls on ``type``. These are closed: a
message we send is one we wrote, so an unknown role or part is a mistake to refuse before any call. Tool
calls also come back in answers, where they stay closed too: the model can only call the kinds of tool the
request declared, and a tool call's text is moderated output, so it must be read, never passed through.
"""

from __future__ import annotations

from typing import Literal

from schemas.wire import Wire

ImageDetail = Literal["auto", "low", "high", "original"]


class PromptCacheBreakpoint(Wire, frozen=True):
    mode: Literal["explicit"]
    ttl: str | None = None


class TextPart(Wire, frozen=True, tag_field="type", tag="text"):
    text: str
    prompt_cache_breakpoint: PromptCacheBreakpoint | None = None


class ImageUrl(Wire, frozen=True):
    url: str
    detail: ImageDetail | None = None


class ImageUrlPart(Wire, frozen=True, tag_field="type", tag="image_url"):
    image_url: ImageUrl
    prompt_cache_breakpoint: PromptCacheBreakpoint | None = None


class InputAudio(Wire, frozen=True):
    data: str
    format: Literal["wav", "mp3"]


class InputAudioPart(Wire, frozen=True, tag_field="type", tag="input_audio"):
    input_audio: InputAudio
    prompt_cache_breakpoint: PromptCacheBreakpoint | None = None


class FileRef(Wire, frozen=True):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(Wire, frozen=True, tag_field="type", tag="file"):
    file: FileRef
    prompt_cache_breakpoint: PromptCacheBreakpoint | None = None


class RefusalPart(Wire, frozen=True, tag_field="type", tag="refusal"):
    refusal: str


UserContentPart = TextPart | ImageUrlPart | InputAudioPart | FilePart
AssistantContentPart = TextPart | RefusalPart


class FunctionCall(Wire, frozen=True):
    """A function name and its JSON-encoded arguments (tool calls and the deprecated ``function_call``)."""

    name: str
    arguments: str


class CustomCall(Wire, frozen=True):
    name: str
    input: str


class FunctionToolCall(Wire, frozen=True, tag_field="type", tag="function"):
    id: str
    function: FunctionCall


class CustomToolCall(Wire, frozen=True, tag_field="type", tag="custom"):
    id: str
    custom: CustomCall


ToolCall = FunctionToolCall | CustomToolCall


class AudioRef(Wire, frozen=True):
    id: str


class SystemMessage(Wire, frozen=True, tag_field="role", tag="system"):
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(Wire, frozen=True, tag_field="role", tag="developer"):
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(Wire, frozen=True, tag_field="role", tag="user"):
    content: str | list[UserContentPart]
    name: str | None = None


class AssistantMessage(Wire, frozen=True, tag_field="role", tag="assistant"):
    content: str | list[AssistantContentPart] | None = None
    refusal: str | None = None
    name: str | None = None
    audio: AudioRef | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None


class ToolMessage(Wire, frozen=True, tag_field="role", tag="tool"):
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(Wire, frozen=True, tag_field="role", tag="function"):
    """Deprecated by the API in favour of tool messages; kept so old conversations still decode."""

    content: str | None
    name: str


Message = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage
