"""The topic contracts: jobs decode to a value or a clear error, reviews carry a typed reason, schemas are current."""

from __future__ import annotations

import base64
import json

import msgspec
import pytest

from schemas import Job, JobDecodeError, Review, Source, UserMessage, decode_job, invalid_job
from schemas.chat import Moderation, ModerationResult, ModerationResults, Usage
from schemas.export import DEFAULT_DIR, stale_files
from schemas.topics import MAX_RAW_IN_REVIEW, ApiFailure, Cancelled, Flagged, FlaggedCategory, InvalidJob, Result

SOURCE = Source(topic="prompts", partition=3, offset=42)
VALID = {"id": "job-1", "messages": [{"role": "user", "content": "Write a haiku about tea."}]}


def encode(value: object) -> bytes:
    return json.dumps(value).encode()


def test_a_valid_job_decodes_with_params_and_metadata() -> None:
    raw = encode(
        {
            **VALID,
            "model": "gpt-4o-mini",
            "params": {"temperature": 0.3, "max_completion_tokens": 64, "stop": ["\n\n"], "seed": 7},
            "moderation_model": "omni-moderation-latest",
            "metadata": {"tenant": "acme"},
        }
    )
    job = decode_job(raw)
    assert isinstance(job, Job)
    assert job.params is not None and job.params.max_completion_tokens == 64
    assert job.metadata == {"tenant": "acme"}


@pytest.mark.parametrize(
    ("raw", "error", "path"),
    [
        (b"not json", "not valid JSON", None),
        (b"\xff\xfe", "not valid JSON", None),
        (b"", "not valid JSON", None),
        (b'["a list"]', "Expected `object`, got `array`", None),
        (b"42", "Expected `object`, got `int`", None),
        (encode({"messages": VALID["messages"]}), "Object missing required field `id`", None),
        (encode({"id": "j"}), "Object missing required field `messages`", None),
        (encode({**VALID, "id": ""}), "Expected `str` of length >= 1", "$.id"),
        (encode({**VALID, "id": 7}), "Expected `str`, got `int`", "$.id"),
        (encode({**VALID, "messages": []}), "Expected `array` of length >= 1", "$.messages"),
        (encode({**VALID, "messages": [{"role": "wizard", "content": "x"}]}), "Invalid value 'wizard'", None),
        (encode({**VALID, "params": {"temperature": "hot"}}), "Expected `float | null`", None),
        (encode({**VALID, "params": {"max_token": 5}}), "unknown field `max_token`", "$.params"),
        (encode({**VALID, "metadata": {"k": 1}}), "Expected `str`, got `int`", None),
        (b"[" * 50_000, "Expected `object`, got `array`", None),
    ],
)
def test_malformed_jobs_become_a_clear_error_value(raw: bytes, error: str, path: str | None) -> None:
    decoded = decode_job(raw)
    assert isinstance(decoded, JobDecodeError)
    assert error in decoded.error
    if path is not None:
        assert decoded.path == path


def test_deep_nesting_inside_a_free_form_field_is_an_error_not_a_crash() -> None:
    raw = encode({**VALID, "params": {"web_search_options": {}}})[:-2] + b"[" * 200_000
    assert isinstance(decode_job(raw), JobDecodeError)


def test_oversize_jobs_are_refused_before_parsing() -> None:
    decoded = decode_job(b" " * 101 + encode(VALID), max_bytes=100)
    assert isinstance(decoded, JobDecodeError)
    assert "larger than the limit of 100" in decoded.error


def test_invalid_job_keeps_utf8_payloads_as_text_and_others_as_base64() -> None:
    text = invalid_job(b'{"id": 1}', JobDecodeError(error="bad"), SOURCE)
    assert (text.raw, text.raw_encoding, text.raw_size, text.raw_truncated) == ('{"id": 1}', "utf-8", 9, False)
    binary = invalid_job(b"\x00\xff\xfe", JobDecodeError(error="bad"), SOURCE)
    assert binary.raw_encoding == "base64"
    assert base64.b64decode(binary.raw) == b"\x00\xff\xfe"
    assert binary.source == SOURCE


def test_invalid_job_caps_the_copy_without_splitting_a_character() -> None:
    raw = "é".encode() * MAX_RAW_IN_REVIEW
    reason = invalid_job(raw, JobDecodeError(error="too big"), SOURCE)
    assert reason.raw_truncated is True
    assert reason.raw_encoding == "utf-8"
    assert reason.raw_size == len(raw)
    assert len(reason.raw.encode()) <= MAX_RAW_IN_REVIEW


def test_review_reason_is_a_union_tagged_on_kind() -> None:
    review = Review(
        id="job-1",
        source=SOURCE,
        reason=Flagged(
            side="input",
            categories=[FlaggedCategory(side="input", category="violence", score=0.9, source="provider")],
        ),
    )
    wire = json.loads(msgspec.json.encode(review))
    assert wire["reason"]["kind"] == "flagged"
    assert wire["id"] == "job-1"
    assert msgspec.json.decode(msgspec.json.encode(review), type=Review) == review
    unknown = dict(wire, reason={"kind": "cosmic_ray"})
    with pytest.raises(msgspec.ValidationError, match=r"at `\$\.reason\.kind`"):
        msgspec.json.decode(json.dumps(unknown), type=Review)


def test_a_review_of_an_unparseable_job_has_a_null_id() -> None:
    reason = ApiFailure(failure="timeout", message="read timed out", attempts=3)
    wire = json.loads(msgspec.json.encode(Review(id=None, source=SOURCE, reason=reason)))
    assert wire["id"] is None
    assert wire["reason"] == {"kind": "api_error", "failure": "timeout", "message": "read timed out", "attempts": 3}


# --------------------------------------------------------------------------------------------------
# Records as a worker of this version writes them, pinned: whatever reads the topics (tail, replay, other
# services, the next version of the worker during a rolling upgrade) must go on reading them. Hand-written,
# never produced by today's encoder; compared as JSON, so the order of the fields is free.
# --------------------------------------------------------------------------------------------------

MODERATION_SIDE = (
    b'{"type":"moderation_results","model":"omni-moderation-latest","results":[{"type":"moderation_result",'
    b'"categories":{"violence":false},"category_applied_input_types":{"violence":["text"]},'
    b'"category_scores":{"violence":0.0012},"flagged":false,"model":"omni-moderation-latest"}]}'
)
RESULT_RECORD = (
    b'{"id":"job-1","model":"gpt-4o-mini-2024-07-18","content":"Steam curls from the cup.","finish_reason":"stop",'
    b'"usage":{"completion_tokens":9,"prompt_tokens":14,"total_tokens":23},'
    b'"moderation":{"input":' + MODERATION_SIDE + b',"output":' + MODERATION_SIDE + b"},"
    b'"metadata":{"tenant":"acme"},"attempts":1,"latency_ms":812.5,"completion_id":"chatcmpl-1",'
    b'"source":{"topic":"prompts","partition":3,"offset":42}}'
)
MODERATION_RESULTS = ModerationResults(
    model="omni-moderation-latest",
    results=[
        ModerationResult(
            categories={"violence": False},
            category_applied_input_types={"violence": ["text"]},
            category_scores={"violence": 0.0012},
            flagged=False,
            model="omni-moderation-latest",
        )
    ],
)
RESULT = Result(
    id="job-1",
    model="gpt-4o-mini-2024-07-18",
    content="Steam curls from the cup.",
    finish_reason="stop",
    usage=Usage(completion_tokens=9, prompt_tokens=14, total_tokens=23),
    moderation=Moderation(input=MODERATION_RESULTS, output=MODERATION_RESULTS),
    metadata={"tenant": "acme"},
    attempts=1,
    latency_ms=812.5,
    completion_id="chatcmpl-1",
    source=Source(topic="prompts", partition=3, offset=42),
)
REVIEW_RECORDS = [
    pytest.param(
        b'{"id":"job-2","reason":{"kind":"api_error","failure":"http_status","message":"HTTP 503","attempts":5,'
        b'"status":503},"source":{"topic":"prompts","partition":0,"offset":7},"job":{"id":"job-2","messages":'
        b'[{"role":"user","content":"Write a haiku about tea."}],"metadata":{"tenant":"acme"}},"attempts":5}',
        Review(
            id="job-2",
            reason=ApiFailure(failure="http_status", message="HTTP 503", attempts=5, status=503),
            source=Source(topic="prompts", partition=0, offset=7),
            job=Job(
                id="job-2", messages=[UserMessage(content="Write a haiku about tea.")], metadata={"tenant": "acme"}
            ),
            attempts=5,
        ),
        id="api_error-with-the-job-replay-sends-again",
    ),
    pytest.param(
        b'{"id":"job-3","reason":{"kind":"flagged","side":"input","categories":[{"side":"input",'
        b'"category":"violence","score":0.91,"source":"provider"}]},"source":{"topic":"prompts","partition":2,'
        b'"offset":11},"attempts":1,"latency_ms":640.0}',
        Review(
            id="job-3",
            reason=Flagged(
                side="input",
                categories=[FlaggedCategory(side="input", category="violence", score=0.91, source="provider")],
            ),
            source=Source(topic="prompts", partition=2, offset=11),
            attempts=1,
            latency_ms=640.0,
        ),
        id="flagged",
    ),
    pytest.param(
        b'{"id":null,"reason":{"kind":"invalid_job","error":"not valid JSON","source":{"topic":"prompts",'
        b'"partition":1,"offset":9},"raw":"not json","raw_encoding":"utf-8","raw_size":8},'
        b'"source":{"topic":"prompts","partition":1,"offset":9}}',
        Review(
            id=None,
            reason=InvalidJob(
                error="not valid JSON",
                source=Source(topic="prompts", partition=1, offset=9),
                raw="not json",
                raw_encoding="utf-8",
                raw_size=8,
            ),
            source=Source(topic="prompts", partition=1, offset=9),
        ),
        id="invalid_job",
    ),
    pytest.param(
        b'{"id":"nightly:r-7","reason":{"kind":"cancelled","batch_id":"nightly","cancelled_at":1764000000000},'
        b'"source":{"topic":"prompts","partition":1,"offset":12},"job":{"id":"nightly:r-7","messages":'
        b'[{"role":"user","content":"Hi"}],"metadata":{"batch_id":"nightly","custom_id":"r-7","batch_line":"7"}},'
        b'"metadata":{"batch_id":"nightly","custom_id":"r-7","batch_line":"7"},"attempts":0}',
        Review(
            id="nightly:r-7",
            reason=Cancelled(batch_id="nightly", cancelled_at=1_764_000_000_000),
            source=Source(topic="prompts", partition=1, offset=12),
            job=Job(
                id="nightly:r-7",
                messages=[UserMessage(content="Hi")],
                metadata={"batch_id": "nightly", "custom_id": "r-7", "batch_line": "7"},
            ),
            metadata={"batch_id": "nightly", "custom_id": "r-7", "batch_line": "7"},
            attempts=0,
        ),
        id="cancelled-with-the-job-replay-sends-again",
    ),
]


def test_a_pinned_result_record_decodes_and_is_what_we_write() -> None:
    assert msgspec.json.decode(RESULT_RECORD, type=Result) == RESULT
    assert json.loads(msgspec.json.encode(RESULT)) == json.loads(RESULT_RECORD)


@pytest.mark.parametrize(("record", "review"), REVIEW_RECORDS)
def test_a_pinned_review_record_decodes_and_is_what_we_write(record: bytes, review: Review) -> None:
    assert msgspec.json.decode(record, type=Review) == review
    assert json.loads(msgspec.json.encode(review)) == json.loads(record)


def test_exported_json_schemas_are_current() -> None:
    assert stale_files(DEFAULT_DIR) == [], "run `make schemas` (python -m schemas.export) and commit the result"


def test_schemas_depends_on_msgspec_only() -> None:
    import ast
    from pathlib import Path

    allowed = {"msgspec", "schemas", "__future__", "typing", "base64", "sys", "pathlib"}
    for path in Path(DEFAULT_DIR).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed, f"{path.name} imports {roots - allowed}"
