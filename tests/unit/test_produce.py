"""``pipeline produce``: a line is published only if the worker will take it as a job."""

from __future__ import annotations

import pytest

from pipeline.commands.produce import check_line
from schemas.topics import Job

MAX_JOB_BYTES = 1_000_000
JOB = b'{"id": "j-1", "messages": [{"role": "user", "content": "Hi"}]}'
#: Valid JSON that msgspec decodes as a job (the last value wins), but ambiguous: another reader may keep the first.
REPEATED = {
    "top-level key": b'{"id": "j-1", "id": "j-2", "messages": [{"role": "user", "content": "Hi"}]}',
    "nested key": b'{"id": "j-1", "messages": [{"role": "user", "content": "Hi", "content": "Bye"}]}',
}


def test_a_valid_job_passes_and_is_not_yet_seen() -> None:
    job = check_line(JOB, max_job_bytes=MAX_JOB_BYTES, seen={})
    assert isinstance(job, Job) and job.id == "j-1"


@pytest.mark.parametrize("line", REPEATED.values(), ids=REPEATED.keys())
def test_a_line_naming_a_key_twice_is_refused_as_the_worker_refuses_it(line: bytes) -> None:
    problem = check_line(line, max_job_bytes=MAX_JOB_BYTES, seen={})
    assert isinstance(problem, str) and "twice" in problem


def test_a_repeated_id_names_its_first_line() -> None:
    assert check_line(JOB, max_job_bytes=MAX_JOB_BYTES, seen={"j-1": 3}) == "duplicate id 'j-1' (first on line 3)"


def test_a_line_that_is_not_a_job_says_why() -> None:
    problem = check_line(b'{"id": "j-1", "messages": []}', max_job_bytes=MAX_JOB_BYTES, seen={})
    assert isinstance(problem, str) and "messages" in problem
