"""A batch file's lines: every line becomes the job the worker will take, or one reason with its line number."""

from __future__ import annotations

import io
import json
from typing import Any

import msgspec
import pytest

from pipeline.batch.lines import BatchJob, LineChecker, LineProblem, scan_file
from schemas.batches import BatchRequestLine
from schemas.topics import Job, decode_job

BATCH = "nightly"
MAX_JOB_BYTES = 4096


def request(custom_id: Any = "r-1", **overrides: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Write a haiku about tea."}]},
    }
    line.update(overrides)
    return line


def encoded(line: dict[str, Any]) -> bytes:
    return json.dumps(line).encode()


def check(*lines: bytes) -> list[BatchJob | LineProblem | None]:
    checker = LineChecker(BATCH, max_job_bytes=MAX_JOB_BYTES)
    return [checker.check(number, line) for number, line in enumerate(lines, start=1)]


def test_a_batch_api_request_becomes_a_job_of_the_batch_with_its_parameters_and_metadata() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "temperature": 0.2,
        "max_completion_tokens": 64,
        "moderation": {"model": "omni-moderation-2024-09-26"},
        "metadata": {"tenant": "acme"},
    }
    [checked] = check(encoded(request("req-7", body=body)))
    assert isinstance(checked, BatchJob)
    job = checked.job
    assert job.id == "nightly:req-7" and checked.custom_id == "req-7" and checked.line == 1
    assert job.model == "gpt-4o" and job.moderation_model == "omni-moderation-2024-09-26"
    assert job.params is not None and (job.params.temperature, job.params.max_completion_tokens) == (0.2, 64)
    assert job.metadata == {"tenant": "acme", "batch_id": "nightly", "custom_id": "req-7", "batch_line": "1"}
    assert decode_job(checked.value) == job, "the record value is the job, as the worker decodes it"


def test_our_own_job_line_keeps_its_id_as_the_custom_id() -> None:
    line = b'{"id": "j-9", "messages": [{"role": "user", "content": "Hi"}], "metadata": {"k": "v"}}'
    [checked] = check(line)
    assert isinstance(checked, BatchJob)
    assert checked.custom_id == "j-9" and checked.job.id == "nightly:j-9"
    assert checked.job.metadata == {"k": "v", "batch_id": "nightly", "custom_id": "j-9", "batch_line": "1"}


def test_the_schema_of_an_input_line_reads_what_the_checker_accepts() -> None:
    line = msgspec.json.decode(encoded(request()), type=BatchRequestLine)
    assert line.custom_id == "r-1" and line.body.model == "gpt-4o-mini"


BAD_LINES: dict[str, tuple[bytes, str, str]] = {
    "not JSON": (b'{"custom_id": "x", ', "not_json", "not valid JSON"),
    "not an object": (b'["custom_id", "x"]', "not_json", "not a JSON object"),
    "neither kind": (b'{"prompt": "hello"}', "not_a_request", "neither a Batch API request"),
    "custom_id missing": (
        encoded({k: v for k, v in request().items() if k != "custom_id"}),
        "invalid_custom_id",
        "missing",
    ),
    "custom_id not a string": (encoded(request(custom_id=7)), "invalid_custom_id", "custom_id must be a string"),
    "custom_id too long": (encoded(request(custom_id="x" * 401)), "invalid_custom_id", "1 to 400 characters"),
    "method GET": (encoded(request(method="GET")), "unsupported_method", "method 'GET' is not supported"),
    "url embeddings": (encoded(request(url="/v1/embeddings")), "unsupported_url", "'/v1/embeddings' is not supported"),
    "no body": (encoded({k: v for k, v in request().items() if k != "body"}), "invalid_body", "no body"),
    "body not a request": (
        encoded(request(body={"model": "m", "messages": "hello"})),
        "invalid_body",
        "at `$.body.messages`",
    ),
    "unknown parameter": (
        encoded(request(body={"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_token": 5})),
        "invalid_body",
        "unknown field `max_token`",
    ),
    "no messages": (encoded(request(body={"model": "m", "messages": []})), "refused_job", "length >= 1"),
    "repeated key": (
        b'{"custom_id": "r-1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "a", "model": "b", '
        b'"messages": [{"role": "user", "content": "Hi"}]}}',
        "repeated_key",
        "'model' twice",
    ),
    "stream": (
        encoded(request(body={"model": "m", "messages": [{"role": "user", "content": "Hi"}], "stream": True})),
        "unsupported_parameter",
        "stream is not supported",
    ),
    "moderation policy": (
        encoded(
            request(
                body={
                    "model": "m",
                    "messages": [{"role": "user", "content": "Hi"}],
                    "moderation": {"model": "omni-moderation-latest", "policy": {"input": {"mode": "block"}}},
                }
            )
        ),
        "unsupported_parameter",
        "moderation.policy",
    ),
    "reserved metadata": (
        encoded(
            request(body={"model": "m", "messages": [{"role": "user", "content": "Hi"}], "metadata": {"batch_id": "x"}})
        ),
        "reserved_metadata",
        "'batch_id' is set by the pipeline",
    ),
    "too large for the worker": (
        encoded(request(body={"model": "m", "messages": [{"role": "user", "content": "x" * MAX_JOB_BYTES}]})),
        "refused_job",
        "larger than the limit",
    ),
    "invalid job line": (b'{"id": "j-1", "messages": []}', "invalid_job", "not a valid job"),
}


@pytest.mark.parametrize("line, kind, says", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_each_bad_line_gets_its_kind_its_reason_and_its_line_number(line: bytes, kind: str, says: str) -> None:
    good = encoded(request("before"))
    checked = check(good, b"", line)
    assert isinstance(checked[0], BatchJob) and checked[1] is None, "a blank line is skipped but counted"
    problem = checked[2]
    assert isinstance(problem, LineProblem), problem
    assert (problem.line, problem.kind) == (3, kind)
    assert says in problem.message and str(problem).startswith("line 3: ")


def test_a_repeated_custom_id_names_the_line_it_repeats() -> None:
    checked = check(encoded(request("a")), encoded(request("b")), encoded(request("a")))
    problem = checked[2]
    assert isinstance(problem, LineProblem) and problem.kind == "duplicate_custom_id"
    assert problem.message == "custom_id 'a' repeats line 1 (they must be unique)"


def test_a_job_line_repeating_a_request_custom_id_is_a_duplicate_too() -> None:
    checked = check(encoded(request("j-1")), b'{"id": "j-1", "messages": [{"role": "user", "content": "Hi"}]}')
    assert isinstance(checked[1], LineProblem) and checked[1].kind == "duplicate_custom_id"


def test_a_scan_counts_lines_requests_and_problems_and_hands_on_the_jobs_in_order() -> None:
    lines = [encoded(request("a")), b"", b"nope", encoded(request("b")), encoded(request("a"))]
    source = io.BytesIO(b"\n".join(lines) + b"\n")
    jobs: list[Job] = []
    seen_bytes: list[int] = []
    scan = scan_file(
        source, LineChecker(BATCH, max_job_bytes=MAX_JOB_BYTES), lambda j: jobs.append(j.job), seen_bytes.append
    )
    assert (scan.lines, scan.requests, scan.invalid) == (5, 2, 2)
    assert [p.line for p in scan.problems] == [3, 5]
    assert [job.id for job in jobs] == ["nightly:a", "nightly:b"]
    assert sum(seen_bytes) == len(source.getvalue())
