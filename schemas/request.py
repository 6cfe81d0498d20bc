"""The Chat Completions request: tools, output formats, moderation and the other parameters.

Everything here is what we send, so enums are closed (see :mod:`schemas.wire`): a job that names a service
tier, an effort or a format this version does not know is refused as an invalid job before any call.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from schemas.messages import Message, TextPart
from schemas.wire import Metadata, Wire


class FunctionDefinition(Wire, frozen=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(Wire, frozen=True, tag_field="type", tag="function"):
    function: FunctionDefinition


class CustomToolDefinition(Wire, frozen=True):
    name: str
    description: str | None = None
    format: dict[str, Any] | None = None


class CustomTool(Wire, frozen=True, tag_field="type", tag="custom"):
    custom: CustomToolDefinition


Tool = FunctionTool | CustomTool


class ToolName(Wire, frozen=True):
    name: str


class NamedToolChoice(Wire, frozen=True, tag_field="type", tag="function"):
    function: ToolName


class NamedCustomToolChoice(Wire, frozen=True, tag_field="type", tag="custom"):
    custom: ToolName


class AllowedTools(Wire, frozen=True):
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]


class AllowedToolsChoice(Wire, frozen=True, tag_field="type", tag="allowed_tools"):
    allowed_tools: AllowedTools


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice | NamedCustomToolChoice | AllowedToolsChoice


class ResponseFormatText(Wire, frozen=True, tag_field="type", tag="text"):
    pass


class ResponseFormatJsonObject(Wire, frozen=True, tag_field="type", tag="json_object"):
    pass


class JsonSchemaSpec(Wire, frozen=True):
    name: str
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseFormatJsonSchema(Wire, frozen=True, tag_field="type", tag="json_schema"):
    json_schema: JsonSchemaSpec


ResponseFormat = ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema


class StreamOptions(Wire, frozen=True):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class AudioParams(Wire, frozen=True):
    format: str
    voice: str | dict[str, Any]


class PredictionContent(Wire, frozen=True, tag_field="type", tag="content"):
    content: str | list[TextPart]


class ModerationPolicySide(Wire, frozen=True):
    mode: Literal["score", "block"]


class ModerationPolicy(Wire, frozen=True):
    input: ModerationPolicySide | None = None
    output: ModerationPolicySide | None = None


class ModerationParams(Wire, frozen=True):
    """The request's ``moderation`` parameter: which moderation model runs on input and output."""

    model: str
    policy: ModerationPolicy | None = None


ServiceTier = Literal["auto", "default", "flex", "scale", "priority", "fast"]
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


class SamplingParams(Wire, frozen=True):
    """The request parameters a job may set; shared by the request and the Job contract's ``params``."""

    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    frequency_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    logit_bias: dict[str, int] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioParams | None = None
    prediction: PredictionContent | None = None
    reasoning_effort: ReasoningEffort | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    service_tier: ServiceTier | None = None
    store: bool | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    web_search_options: dict[str, Any] | None = None


class ChatCompletionRequest(SamplingParams, frozen=True, kw_only=True):
    """The body of ``POST /v1/chat/completions``."""

    model: str
    messages: list[Message]
    moderation: ModerationParams | None = None
    metadata: Metadata | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
