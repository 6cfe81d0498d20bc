"""Decoding a provider answer: our msgspec ``schemas`` against the official SDK's pydantic models.

The payloads are what the simulator sends for a realistic moderated request (13 omni categories with
scores and applied input types on each side), generated in-process with the simulator's own functions:

- ``moderated``: both sides ``moderation_results``;
- ``moderation error``: the output side ``{"type": "error", …}``;
- ``unmoderated``: no ``moderation`` at all;
- ``stream: content chunk`` and ``stream: moderation chunk``: one ``chat.completion.chunk`` each.

Ours: a module-level ``msgspec.json.Decoder(ChatCompletion)`` (``ChatCompletionChunk`` for chunks), as the
client uses it. The SDK: ``ChatCompletion.model_validate_json`` (``ChatCompletionChunk`` for chunks). Each
case is timed as the best-of-loop mean over ``--iterations`` decodes, repeated ``--repeat`` times; the median
and the spread of the repeats are reported, in µs per decode, and the ratio SDK ÷ ours.

    python -m bench.decode [--iterations 2000] [--repeat 7] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from openai.types.chat import ChatCompletion as SdkChatCompletion
from openai.types.chat import ChatCompletionChunk as SdkChatCompletionChunk

from bench.harness import Summary
from pipeline.simulator.classifier import DEFAULT_THRESHOLDS
from pipeline.simulator.completion import Shape, answer_chat, read_chat_input
from pipeline.simulator.encoding import encode_body, stream_events
from schemas.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest

PROMPT: Final = (
    "Write a short, friendly note to a neighbour about the garden fence: it leans after the storm, and we "
    "would like to share the cost of fixing it before the spring planting season starts."
)


@dataclass(frozen=True)
class Case:
    name: str
    payload: bytes
    ours: Callable[[bytes], Any]
    sdk: Callable[[bytes], Any]


def _answer(moderated: bool, shape: Shape | None = None) -> Any:
    request_body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
    if moderated:
        request_body["moderation"] = {"model": "omni-moderation-latest"}
    request = msgspec.json.decode(json.dumps(request_body), type=ChatCompletionRequest)
    return answer_chat(
        request,
        read_chat_input(request),
        completion_id="chatcmpl-bench0001",
        created=1764028800,
        thresholds=dict(DEFAULT_THRESHOLDS),
        shape=shape or Shape(),
    )


def payloads() -> dict[str, bytes]:
    moderated = _answer(True)
    events = stream_events(moderated, moderation_first=False, include_usage=True)
    chunks = [event.data.removeprefix(b"data: ").strip() for event in events[:-1]]
    content_chunk = next(chunk for event, chunk in zip(events, chunks, strict=False) if event.content)
    moderation_chunk = next(chunk for chunk in chunks if b'"moderation"' in chunk)
    return {
        "moderated (results on both sides)": encode_body(moderated.completion),
        "moderation error (output side)": encode_body(_answer(True, Shape(moderation_error_output=True)).completion),
        "unmoderated": encode_body(_answer(False).completion),
        "stream: content chunk": content_chunk,
        "stream: moderation chunk": moderation_chunk,
    }


_completion: Final = msgspec.json.Decoder(ChatCompletion)
_chunk: Final = msgspec.json.Decoder(ChatCompletionChunk)


def cases() -> list[Case]:
    found = []
    for name, payload in payloads().items():
        if name.startswith("stream"):
            found.append(Case(name, payload, _chunk.decode, SdkChatCompletionChunk.model_validate_json))
        else:
            found.append(Case(name, payload, _completion.decode, SdkChatCompletion.model_validate_json))
    return found


def _per_call_us(decode: Callable[[bytes], Any], payload: bytes, iterations: int) -> float:
    started = time.perf_counter()
    for _ in range(iterations):
        decode(payload)
    return (time.perf_counter() - started) / iterations * 1e6


def measure(iterations: int = 2000, repeat: int = 7) -> list[dict[str, Any]]:
    rows = []
    for case in cases():
        for decode in (case.ours, case.sdk):
            _per_call_us(decode, case.payload, max(1, iterations // 10))  # warm-up
        ours = Summary.of([_per_call_us(case.ours, case.payload, iterations) for _ in range(repeat)])
        sdk = Summary.of([_per_call_us(case.sdk, case.payload, iterations) for _ in range(repeat)])
        rows.append(
            {
                "payload": case.name,
                "bytes": len(case.payload),
                "ours_us": ours.as_dict(),
                "sdk_us": sdk.as_dict(),
                "ratio": sdk.median / ours.median,
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| payload | bytes | ours (µs) | SDK (µs) | SDK ÷ ours |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        ours, sdk = row["ours_us"], row["sdk_us"]
        lines.append(
            f"| {row['payload']} | {row['bytes']:,} | {ours['median']:.1f} ({ours['min']:.1f}-{ours['max']:.1f}) | "
            f"{sdk['median']:.1f} ({sdk['min']:.1f}-{sdk['max']:.1f}) | {row['ratio']:.1f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    rows = measure(args.iterations, args.repeat)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
