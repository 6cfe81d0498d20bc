"""The topic contracts: jobs decode to a value or a clear error, reviews carry a typed reason, schemas are current."""

from __future__ import annotations

import base64
import json

import msgspec
import pytest

from schemas import Job, JobDecodeError, Review, Source, decode_job, invalid_job
from schemas.export import DEFAULT_DIR, stale_files
from schemas.topics import MAX_RAW_IN_REVIEW, ApiFailure, Flagged, FlaggedCategory

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
