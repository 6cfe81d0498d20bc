"""The Chat Completions wire format with inline moderation, as msgspec Structs.

Field names are the wire names, so ``msgspec.json.decode(raw, type=ChatCompletion)`` reads an API response
and ``msgspec.json.encode(request)`` writes a request body. ``None`` fields are omitted on encode.

Unions that the API tells apart by a discriminator field are msgspec *tagged unions*: message roles
(``role``), content parts, tool calls, response formats and, above all, each side of ``moderation``
(``type``: ``moderation_results`` or ``error``). An unknown tag, a missing required field or a wrong type
raises ``msgspec.ValidationError`` naming the path (e.g. ``$.moderation.output.type``); unknown extra fields
are ignored because the API grows.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec


class Wire(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of every wire Struct: immutable, keyword-only, ``None``/default fields left out on encode.

    Subclasses repeat ``frozen=True``: msgspec inherits it, but mypy's dataclass_transform does not.
    """


# --------------------------------------------------------------------------------------------------
# Request: messages and content parts
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# Request: tools, output formats and the other parameters
# --------------------------------------------------------------------------------------------------


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
Metadata = dict[str, str]


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


# --------------------------------------------------------------------------------------------------
# Response: moderation (the tagged unions this project is built around)
# --------------------------------------------------------------------------------------------------

InputType = Literal["text", "image"]


class ModerationResult(Wire, frozen=True, tag_field="type", tag="moderation_result"):
    """One moderation result: flags, scores and the modalities each score reflects, per category."""

    categories: dict[str, bool]
    category_applied_input_types: dict[str, list[InputType]]
    category_scores: dict[str, float]
    flagged: bool
    model: str


class ModerationResults(Wire, frozen=True, tag_field="type", tag="moderation_results"):
    """Moderation ran: the results for one side (input or output)."""

    model: str
    results: list[ModerationResult]


class ModerationError(Wire, frozen=True, tag_field="type", tag="error"):
    """Moderation could not run for one side; the completion itself may still have been produced."""

    code: str
    message: str


ModerationOutcome = ModerationResults | ModerationError


class Moderation(Wire, frozen=True):
    """The response's ``moderation``: each side independently results or an error."""

    input: ModerationOutcome
    output: ModerationOutcome


# --------------------------------------------------------------------------------------------------
# Response: completion, choices, usage
# --------------------------------------------------------------------------------------------------

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class TopLogprob(Wire, frozen=True):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(Wire, frozen=True):
    token: str
    logprob: float
    top_logprobs: list[TopLogprob]
    bytes: list[int] | None = None


class ChoiceLogprobs(Wire, frozen=True):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class UrlCitation(Wire, frozen=True):
    end_index: int
    start_index: int
    title: str
    url: str


class Annotation(Wire, frozen=True, tag_field="type", tag="url_citation"):
    url_citation: UrlCitation


class AudioResponse(Wire, frozen=True):
    id: str
    data: str
    expires_at: int
    transcript: str


class ChatCompletionMessage(Wire, frozen=True):
    role: Literal["assistant"]
    content: str | None = None
    refusal: str | None = None
    annotations: list[Annotation] | None = None
    audio: AudioResponse | None = None
    function_call: FunctionCall | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(Wire, frozen=True):
    finish_reason: FinishReason
    index: int
    message: ChatCompletionMessage
    logprobs: ChoiceLogprobs | None = None


class CompletionTokensDetails(Wire, frozen=True):
    accepted_prediction_tokens: int | None = None
    audio_tokens: int | None = None
    reasoning_tokens: int | None = None
    rejected_prediction_tokens: int | None = None
    text_tokens: int | None = None


class PromptTokensDetails(Wire, frozen=True):
    audio_tokens: int | None = None
    cache_write_tokens: int | None = None
    cached_tokens: int | None = None
    image_tokens: int | None = None
    text_tokens: int | None = None


class Usage(Wire, frozen=True):
    completion_tokens: int
    prompt_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails | None = None
    prompt_tokens_details: PromptTokensDetails | None = None


class ChatCompletion(Wire, frozen=True):
    """The body of a non-streaming ``POST /v1/chat/completions`` response."""

    id: str
    choices: list[Choice]
    created: int
    model: str
    object: Literal["chat.completion"]
    metadata: Metadata | None = None
    moderation: Moderation | None = None
    service_tier: ServiceTier | None = None
    system_fingerprint: str | None = None
    usage: Usage | None = None


# --------------------------------------------------------------------------------------------------
# Streaming: chunks
# --------------------------------------------------------------------------------------------------


class DeltaFunctionCall(Wire, frozen=True):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(Wire, frozen=True):
    index: int
    id: str | None = None
    function: DeltaFunctionCall | None = None
    type: Literal["function"] | None = None


class DeltaAudio(Wire, frozen=True):
    id: str | None = None
    data: str | None = None
    expires_at: int | None = None
    transcript: str | None = None


class ChoiceDelta(Wire, frozen=True):
    role: Literal["developer", "system", "user", "assistant", "tool"] | None = None
    content: str | None = None
    refusal: str | None = None
    audio: DeltaAudio | None = None
    function_call: DeltaFunctionCall | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChunkChoice(Wire, frozen=True):
    delta: ChoiceDelta
    index: int
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(Wire, frozen=True):
    """One server-sent event of a streaming response; ``choices`` may be empty (usage or moderation chunk)."""

    id: str
    choices: list[ChunkChoice]
    created: int
    model: str
    object: Literal["chat.completion.chunk"]
    moderation: Moderation | None = None
    obfuscation: str | None = None
    service_tier: ServiceTier | None = None
    system_fingerprint: str | None = None
    usage: Usage | None = None


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class ApiErrorDetail(Wire, frozen=True):
    message: str
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


class ErrorBody(Wire, frozen=True):
    """The API's error body, ``{"error": {message, type, param, code}}``; also a mid-stream SSE error event."""

    error: ApiErrorDetail
