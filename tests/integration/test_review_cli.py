"""`pipeline review` as an operator meets it: real processes on the broker fixture, the text on the screen, and
the console's JSON API over HTTP with the token the command printed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from pipeline.kafka import KafkaSettings
from schemas.decisions import Decision, DecisionRecord
from tests.fixtures.broker import Broker
from tests.fixtures.env import child_env
from tests.integration.review.support import ReviewTopics, publish_reviews, read_topic
from tests.unit.review.decision_builders import flagged

CONSOLE_LINE = re.compile(r"^review console on (http://\S+) ")
WAIT_S = 30.0


def pipeline(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, timeout=60, env=child_env(env)
    )


def settings(broker: Broker, topics: ReviewTopics, reviewers_file: Path) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "PIPELINE_INPUT_TOPIC": topics.input,
        "PIPELINE_OUTPUT_TOPIC": topics.output,
        "PIPELINE_REVIEW_TOPIC": topics.review,
        "PIPELINE_DECISIONS_TOPIC": topics.decisions,
        "PIPELINE_GROUP_ID": topics.group,
        "PIPELINE_REVIEWERS_FILE": str(reviewers_file),
    }


@contextlib.asynccontextmanager
async def serving(env: dict[str, str], log: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``pipeline review serve --port 0`` running, and the address its "review console on …" line names."""
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pipeline.cli",
            "review",
            "serve",
            "--port",
            "0",
            env=child_env(env),
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
        try:
            assert process.stdout is not None
            url = None
            async with asyncio.timeout(WAIT_S):
                while url is None:
                    line = (await process.stdout.readline()).decode()
                    assert line, "serve ended before it served (its log is in the test's tmp_path)"
                    if found := CONSOLE_LINE.match(line):
                        url = found[1]
            yield process, url
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def until_listed(http: aiohttp.ClientSession, url: str, token: str, key: str) -> dict[str, Any]:
    """The item ``key`` from ``GET /api/v1/items`` once it is there: asked again after each change the console's
    event stream (``/events``, with the same bearer token) reports, for at most WAIT_S."""
    headers = {"Authorization": f"Bearer {token}"}
    async with http.get(f"{url}/events", headers=headers) as stream, asyncio.timeout(WAIT_S):
        assert stream.status == 200
        while True:
            async with http.get(f"{url}/api/v1/items", headers=headers) as response:
                assert response.status == 200, await response.text()
                listed = await response.json()
            for item in listed["items"]:
                if item["key"] == key:
                    return dict(item)
            while not (await stream.content.readline()).startswith(b"event: change"):
                pass


async def test_an_operator_adds_a_reviewer_serves_the_console_and_an_integration_decides_over_the_api(
    kafka_broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    topics = ReviewTopics.named(topic_prefix)
    reviewers_file = tmp_path / "reviewers.json"
    env = settings(kafka_broker, topics, reviewers_file)

    created = pipeline(["topics", "create", "--partitions", "2"], env)
    assert created.returncode == 0, created.stderr
    for topic in (topics.review, topics.decisions):
        assert f"created  {topic}" in created.stdout

    added = pipeline(["review", "add-reviewer", "ana", "--admin", "--json"], env)
    assert added.returncode == 0, added.stderr
    shown = json.loads(added.stdout)
    token = shown["token"]
    assert shown["name"] == "ana" and len(token) >= 43
    stored = reviewers_file.read_text()
    assert token not in stored, "only the token's hash is kept"
    (account,) = json.loads(stored)["reviewers"]
    assert (account["name"], account["role"]) == ("ana", "admin")
    assert account["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert stat.S_IMODE(reviewers_file.stat().st_mode) == 0o600

    added_bo = pipeline(["review", "add-reviewer", "bo"], env)
    assert added_bo.returncode == 0, added_bo.stderr
    assert "shown this once" in added_bo.stdout
    bo_token = added_bo.stdout.strip().splitlines()[-1]

    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    async with (
        serving(env, tmp_path / "serve.log") as (process, url),
        aiohttp.ClientSession() as http,
    ):
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        await publish_reviews(kafka, topics.review, [flagged("job-1", metadata={"tenant": "acme"})])

        async def status(bearer: str) -> int:
            async with http.get(f"{url}/api/v1/items", headers={"Authorization": f"Bearer {bearer}"}) as response:
                return response.status

        item = await until_listed(http, url, token, "job-1")
        assert (item["key"], item["reason"], item["state"]) == ("job-1", "flagged", "open")

        decision = {"decision": "approve", "reason": "false positive", "note": "satire"}
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post(f"{url}/api/v1/items/job-1/decision", json=decision, headers=headers) as response:
            assert response.status == 200, await response.text()
            decided = await response.json()
        assert (decided["record"]["decision"], decided["record"]["reviewer"]) == ("approve", "ana")
        assert decided["item"]["state"] == "decided"

        async with http.get(f"{url}/api/v1/items") as response:
            assert response.status == 401
            assert (await response.json())["error"]["status"] == 401
        assert await status("not-a-token") == 401

        assert await status(bo_token) == 200
        removed = pipeline(["review", "remove-reviewer", "bo"], env)
        assert removed.returncode == 0, removed.stderr
        assert await status(bo_token) == 401, "a removed reviewer's token stops working at once"

        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT_S):
            assert await process.wait() == 0, (tmp_path / "serve.log").read_text()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()

    records = [
        msgspec.json.decode(r.value or b"", type=DecisionRecord) for r in await read_topic(kafka, topics.decisions)
    ]
    # Besides the decision, the applier may have written its applying/applied records before SIGTERM.
    (written,) = [record for record in records if isinstance(record, Decision)]
    assert (written.item, written.decision, written.reviewer, written.note) == ("job-1", "approve", "ana", "satire")


def test_serve_without_a_reviewers_file_says_so_in_one_line(kafka_broker: Broker, tmp_path: Path) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers}
    unnamed = pipeline(["review", "serve", "--port", "0"], env)
    assert unnamed.returncode != 0
    assert unnamed.stdout == ""
    (line,) = unnamed.stderr.strip().splitlines()
    assert "PIPELINE_REVIEWERS_FILE" in line and "--reviewers-file" in line

    missing = pipeline(
        ["review", "serve", "--port", "0"], {**env, "PIPELINE_REVIEWERS_FILE": str(tmp_path / "no.json")}
    )
    assert missing.returncode != 0
    (line,) = missing.stderr.strip().splitlines()
    assert "no reviewers" in line and "pipeline review add-reviewer" in line
