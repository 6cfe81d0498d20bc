"""From a decoded chat request to the answer's wire values: pure functions, no I/O.

Moderation, when the request asks for it, runs the classifier on the input (all message text and image
parts, directives removed) and on each generated choice. ``moderation.input.results`` holds one result for
the whole input; ``moderation.output.results`` one per choice, in choice order.

Policy ``block`` (``moderation.policy``), the simulator's documented behaviour:

- input ``block`` and the input flagged: nothing is generated; every choice is ``{"role": "assistant"}``
  with ``finish_reason: "content_filter"``, ``completion_tokens`` is 0, and the output side holds clean
  results for the empty output.
- output ``block`` and a choice flagged: that choice's content is withheld (no ``content``; in a stream, no
  content chunks) with ``finish_reason: "content_filter"``; its output result still shows the scores, and
  its tokens are still counted (they were generated).
- ``score`` (or no policy): nothing is withheld; the scores and ``flagged`` tell the client.

A moderation error on a side (fault) means that side could not be scored, so it cannot block.

Shape faults and value directives change the answer after that: ``moderation_results_short`` drops the last
output result (fewer results than choices); ``moderation_again_clean`` / ``moderation_again_error`` add a
second moderation for a stream to send after the first (both sides clean; the output side an error);
``finish_reason=``, ``service_tier=`` and ``annotation=`` put the given values in the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from pipeline.simulator.classifier import MARKERS, classify
from pipeline.simulator.directives import NO_DIRECTIVES, Directives, extract_from_text
from pipeline.simulator.generation import Generated, generate, prompt_tokens
from schemas.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionMessage,
    ChatCompletionRequest,
    Choice,
    ImageUrlPart,
    Moderation,
    ModerationError,
    ModerationOutcome,
    ModerationResult,
    ModerationResults,
    RefusalPart,
    TextPart,
    Usage,
)

SYSTEM_FINGERPRINT: Final = "fp_simulator"


@dataclass(frozen=True, slots=True)
class ChatInput:
    """What a chat request says once read: its texts and images (directives removed) and the directives."""

    texts: list[str]
    image_urls: list[str]
    directives: Directives
    prompt_tokens: int


def read_chat_input(request: ChatCompletionRequest) -> ChatInput:
    """Collect every message's text and image parts; a malformed ``[[sim:…]]`` raises ``DirectiveError``."""
    texts: list[str] = []
    image_urls: list[str] = []
    directives = NO_DIRECTIVES
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            raw_texts = [content]
        elif content is None:
            raw_texts = []
        else:
            raw_texts = []
            for part in content:
                if isinstance(part, TextPart):
                    raw_texts.append(part.text)
                elif isinstance(part, RefusalPart):
                    raw_texts.append(part.refusal)
                elif isinstance(part, ImageUrlPart):
                    image_urls.append(part.image_url.url)
        if isinstance(message, AssistantMessage) and message.refusal:
            raw_texts.append(message.refusal)
        for raw in raw_texts:
            text, found = extract_from_text(raw)
            texts.append(text)
            directives = directives.merged_with(found)
    return ChatInput(texts, image_urls, directives, prompt_tokens(texts, len(image_urls)))


@dataclass(frozen=True, slots=True)
class Answer:
    completion: ChatCompletion
    #: Per choice, what a stream sends as content (``None`` when withheld by the block policy).
    streamed: list[Generated | None]
    input_flagged: bool
    output_flagged: bool
    #: Moderation chunks a stream sends after the completion's own (the ``moderation_again_*`` faults).
    later_moderation: list[Moderation] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Shape:
    """Shape faults and settings that change a successful answer."""

    moderation_error_input: bool = False
    moderation_error_output: bool = False
    moderation_missing: bool = False
    moderation_results_short: bool = False
    moderation_again_clean: bool = False
    moderation_again_error: bool = False


def _moderation_error(side: str) -> ModerationError:
    return ModerationError(code="moderation_unavailable", message=f"Moderation of the {side} could not be completed.")


def _results(model: str, results: list[ModerationResult]) -> ModerationResults:
    return ModerationResults(model=model, results=results)


def _annotation(kind: str, text: str) -> dict[str, Any]:
    """One annotation of ``kind`` over the whole text, shaped like the API's (``url_citation``'s fields)."""
    span = {"start_index": 0, "end_index": len(text), "title": "A simulated source", "url": "https://example.com/"}
    return {"type": kind, kind: span}


def _later_moderation(
    moderation: Moderation | None, choices: int, model: str, thresholds: dict[str, float], shape: Shape
) -> list[Moderation]:
    """The second moderation chunks the ``moderation_again_*`` faults ask for, clean one first."""
    later: list[Moderation] = []
    if moderation is None:
        return later
    if shape.moderation_again_clean:
        clean = classify((), model=model, thresholds=thresholds)
        later.append(Moderation(input=_results(model, [clean]), output=_results(model, [clean] * choices)))
    if shape.moderation_again_error:
        later.append(Moderation(input=moderation.input, output=_moderation_error("generated output")))
    return later


def answer_chat(
    request: ChatCompletionRequest,
    chat_input: ChatInput,
    *,
    completion_id: str,
    created: int,
    thresholds: dict[str, float],
    shape: Shape,
) -> Answer:
    """The answer to ``request``, shaped by ``chat_input.directives`` (the server merges in the header's and
    the metadata's before it asks)."""
    moderation_params = request.moderation
    policy = moderation_params.policy if moderation_params is not None else None
    block_input = policy is not None and policy.input is not None and policy.input.mode == "block"
    block_output = policy is not None and policy.output is not None and policy.output.mode == "block"
    moderated = moderation_params is not None
    mod_model = moderation_params.model if moderation_params is not None else ""
    scored_input = moderated and not shape.moderation_error_input
    scored_output = moderated and not shape.moderation_error_output
    directives = chat_input.directives

    input_result: ModerationResult | None = None
    if scored_input:
        input_result = classify(
            chat_input.texts,
            chat_input.image_urls,
            model=mod_model,
            thresholds=thresholds,
            extra_categories=(directives.flag_input,) if directives.flag_input else (),
        )
    input_blocked = block_input and input_result is not None and input_result.flagged

    n = request.n or 1
    stop = [request.stop] if isinstance(request.stop, str) else (request.stop or [])
    prompt = "\n".join(chat_input.texts)
    max_tokens = request.max_completion_tokens or request.max_tokens
    choices: list[Choice] = []
    streamed: list[Generated | None] = []
    output_results: list[ModerationResult] = []
    completion_tokens = 0
    for index in range(n):
        if input_blocked:
            generated = Generated(text="", tokens=[], finish_reason="content_filter")
        else:
            generated = generate(
                prompt,
                seed=request.seed or 0,
                index=index,
                max_tokens=max_tokens,
                stop=stop,
                marker=None if directives.flag_output is None else MARKERS[directives.flag_output],
            )
        completion_tokens += len(generated.tokens)
        withheld = input_blocked
        if scored_output:
            result = classify([generated.text], model=mod_model, thresholds=thresholds)
            output_results.append(result)
            withheld = withheld or (block_output and result.flagged)
        finish_reason = directives.finish_reason
        if withheld:
            message = ChatCompletionMessage(role="assistant")
            choices.append(Choice(finish_reason=finish_reason or "content_filter", index=index, message=message))
            streamed.append(None)
        else:
            kind = directives.annotation if index == 0 else None
            annotations = [_annotation(kind, generated.text)] if kind else None
            message = ChatCompletionMessage(role="assistant", content=generated.text, annotations=annotations)
            choices.append(Choice(finish_reason=finish_reason or generated.finish_reason, index=index, message=message))
            streamed.append(generated)

    moderation: Moderation | None = None
    if moderated and not shape.moderation_missing:
        input_side: ModerationOutcome = (
            _results(mod_model, [input_result]) if input_result is not None else _moderation_error("request input")
        )
        kept = output_results[:-1] if shape.moderation_results_short else output_results
        output_side: ModerationOutcome = (
            _results(mod_model, kept) if scored_output else _moderation_error("generated output")
        )
        moderation = Moderation(input=input_side, output=output_side)

    completion = ChatCompletion(
        id=completion_id,
        choices=choices,
        created=created,
        model=request.model,
        object="chat.completion",
        moderation=moderation,
        service_tier=directives.service_tier,
        system_fingerprint=SYSTEM_FINGERPRINT,
        usage=Usage(
            completion_tokens=completion_tokens,
            prompt_tokens=chat_input.prompt_tokens,
            total_tokens=completion_tokens + chat_input.prompt_tokens,
        ),
    )
    return Answer(
        completion=completion,
        streamed=streamed,
        input_flagged=input_result is not None and input_result.flagged,
        output_flagged=any(result.flagged for result in output_results),
        later_moderation=_later_moderation(moderation, n, mod_model, thresholds, shape),
    )
