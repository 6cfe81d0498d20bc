"""Export the topic contracts as JSON Schema files: ``python -m schemas.export [--check] [DIR]``.

``--check`` writes nothing and exits 1 when a file in DIR differs from what the Structs produce, so a stale
export fails CI instead of misleading the services that read it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Final

import msgspec

from schemas.batches import BatchManifest, BatchOutputLine, BatchRequestLine
from schemas.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from schemas.decisions import DecisionRecord
from schemas.topics import Job, Result, Review

DEFAULT_DIR: Final = Path(__file__).parent / "json"

CONTRACTS: Final[dict[str, tuple[Any, str]]] = {
    "job.json": (Job, "A prompt job on the input topic (default `prompts`)."),
    "result.json": (Result, "A clean completion on the output topic (default `completions`)."),
    "review.json": (Review, "A job for review on the review topic (default `review`), with a typed reason."),
    "review-decision.json": (
        DecisionRecord,
        "A record on the review-decisions topic (default `review-decisions`), a tagged union on `type`.",
    ),
    "batch-request-line.json": (BatchRequestLine, "One line of a Batch API input file (`pipeline batch submit`)."),
    "batch-output-line.json": (
        BatchOutputLine,
        "One line of a batch's output or errors file (`pipeline batch results`), in the Batch API's format.",
    ),
    "batch-manifest.json": (
        BatchManifest,
        "A batch's manifest on the compacted batches topic (default `batches`), keyed by batch id.",
    ),
    "chat-completion-request.json": (ChatCompletionRequest, "POST /v1/chat/completions request body."),
    "chat-completion.json": (ChatCompletion, "POST /v1/chat/completions response body."),
    "chat-completion-chunk.json": (ChatCompletionChunk, "One streamed chat completion chunk."),
}


def render(kind: Any, description: str) -> bytes:
    schema = msgspec.json.schema(kind)
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "description": description, **schema}
    return msgspec.json.format(msgspec.json.encode(schema), indent=2) + b"\n"


def stale_files(directory: Path) -> list[str]:
    """Names of the exported files that are missing or differ from the current Structs."""
    return [
        name
        for name, (kind, description) in CONTRACTS.items()
        if not (directory / name).is_file() or (directory / name).read_bytes() != render(kind, description)
    ]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    check = "--check" in args
    rest = [a for a in args if a != "--check"]
    directory = Path(rest[0]) if rest else DEFAULT_DIR
    if check:
        stale = stale_files(directory)
        for name in stale:
            print(f"stale: {directory / name} (run `python -m schemas.export`)", file=sys.stderr)
        return 1 if stale else 0
    directory.mkdir(parents=True, exist_ok=True)
    for name, (kind, description) in CONTRACTS.items():
        (directory / name).write_bytes(render(kind, description))
    print(f"wrote {len(CONTRACTS)} schemas to {directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
