"""Security, end to end: the API key never leaves the Authorization header, TLS is verified by default,
oversize responses are refused, and prompt text stays out of the logs.

Three workers run at once on their own topics, each with a distinctive key:

- a worker process (streaming, DEBUG logs) against the simulator, through faults of every kind;
- a worker process (streaming, DEBUG logs) against a *leaky* provider that echoes the whole Authorization
  header back in error messages, types, codes and response headers (401, 403, 429, 500, 400, a redirect
  to a URL carrying the key, an error event mid-stream) — what the scrubbing is for;
- a worker in this process (JSON) against the simulator, its client's transport recording every
  exception it raises, with every logger captured at DEBUG (aiohttp's and aiokafka's included).

Then the key is looked for in every log line, exception text, metric (names, labels, values) and every
record (value, key, headers) the workers produced; the prompt's marker word in every log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from pipeline.broker import free_port
from pipeline.client import ChatClient, ClientConfig, default_transport
from pipeline.client.transport import AiohttpTransport, HttpTransport, RawResponse, Timeouts, TransportError
from pipeline.kafka import KafkaSettings
from pipeline.metrics import Metrics, MetricsObserver
from pipeline.outcomes import Failed
from pipeline.secret import Secret
from pipeline.worker import Worker
from schemas import UserMessage
from schemas.topics import ApiFailure, Job, JobParams, Review
from tests.fixtures.broker import Broker
from tests.fixtures.env import child_env
from tests.fixtures.simulator import MakeSimulator
from tests.integration.harness import Topics, create_topics, publish, worker_env, worker_settings
from tests.reliability.support import (
    QUICK_EVICTION,
    ROOT,
    Outputs,
    WorkerProcess,
    record,
    tally,
    workers,
)

MAX_RESPONSE_BYTES = 32_768
FAULTS = ["", "500*1", "429*1", "hang*1", "reset*1", "truncated", "malformed_json", "stream_error*1"]
FAULTS += ["moderation_error_output", "moderation_unknown_type", "insufficient_quota*1", "500"]
LEAKS = ["401", "403", "429", "500", "400", "redirect", "stream"]


def _job(job_id: str, prompt: str, **params: Any) -> bytes:
    job = Job(id=job_id, messages=[UserMessage(content=prompt)], params=JobParams(**params) if params else None)
    return msgspec.json.encode(job)


def _jobs(marker: str) -> dict[str, bytes]:
    jobs = {
        f"fault-{i}": _job(f"fault-{i}", f"{marker} Tell me about owls. [[sim: {f}]]") for i, f in enumerate(FAULTS)
    }
    jobs["big"] = _job("big", f"{marker} Tell me everything.", n=64)  # 64 choices: far over the response cap
    jobs["small"] = _job("small", f"{marker} Say hello.")
    jobs["flagged"] = _job("flagged", f"{marker} I will murder them and stab the witness.")
    return jobs


# --------------------------------------------------------------------------------------------------
# A provider that leaks: it repeats the Authorization header wherever an error can carry text
# --------------------------------------------------------------------------------------------------


class LeakyProvider:
    def __init__(self) -> None:
        self.authorizations: list[str] = []
        #: 401 and 403 are provider-wide (the client's breaker holds the call and probes): each is answered
        #: once, then the job's next attempt gets the same leaky body as a 400, its own failure.
        self._refused: set[str] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        self.authorizations.append(auth)
        body = (await request.read()).decode(errors="replace")
        leak = next((kind for kind in LEAKS if f"[[leak:{kind}]]" in body), "401")
        headers = {"x-echo-authorization": auth, "www-authenticate": f'Bearer realm="{auth}"'}
        if leak == "redirect":
            headers["Location"] = f"{self.url}/elsewhere?api_key={auth.removeprefix('Bearer ')}"
            return web.Response(status=307, headers=headers, text=f"moved; you sent {auth}")
        if leak == "stream":  # a 200 stream that ends in an error event
            event = {"error": {"message": f"bad key {auth}", "type": f"invalid {auth}", "code": auth}}
            stream = web.StreamResponse(status=200, headers={**headers, "Content-Type": "text/event-stream"})
            await stream.prepare(request)
            await stream.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            await stream.write_eof()
            return stream
        if leak == "429":
            headers["retry-after-ms"] = "1"
        status = int(leak)
        if status in (401, 403):
            status = 400 if leak in self._refused else status
            self._refused.add(leak)
        message = f"Incorrect API key provided: {auth.removeprefix('Bearer ')} (header was {auth!r})"
        error = {"error": {"message": message, "type": "invalid_request_error", "param": auth, "code": auth}}
        return web.json_response(error, status=status, headers=headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class RecordingTransport:
    """The client's real transport, keeping the text of every exception it raises (message, repr,
    traceback), as a log handler or an error tracker would see it."""

    def __init__(self, inner: HttpTransport) -> None:
        self._inner = inner
        self.exceptions: list[str] = []

    def _keep(self, exc: BaseException) -> None:
        self.exceptions.append("".join(traceback.format_exception(exc)) + repr(exc) + str(exc))

    async def post(self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts) -> RawResponse:
        try:
            return await self._inner.post(url, headers, body, timeouts)
        except TransportError as exc:
            self._keep(exc)
            raise

    @contextlib.asynccontextmanager
    async def stream(self, url: str, headers: Mapping[str, str], body: bytes, timeouts: Timeouts) -> AsyncIterator[Any]:
        try:
            async with self._inner.stream(url, headers, body, timeouts) as response:
                yield response
        except TransportError as exc:
            self._keep(exc)
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()


def _reviews(seen: list[Any]) -> dict[str, Review]:
    return {s.key: msgspec.json.decode(s.value, type=Review) for s in seen if s.route != "output"}


async def test_the_key_and_the_prompts_stay_out_of_logs_errors_metrics_and_records(
    kafka_broker: Broker,
    topic_prefix: str,
    tmp_path: Path,
    make_simulator: MakeSimulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = time.monotonic()
    secret_part = secrets.token_hex(20)
    key = f"sk-test-{secret_part}"
    marker = f"quokka{secrets.token_hex(6)}"
    kafka = KafkaSettings(bootstrap_servers=kafka_broker.bootstrap_servers)
    names = ("stream", "leaky", "inproc")
    topics = {name: Topics.named(f"{topic_prefix}-{name}") for name in names}
    for each in topics.values():
        await create_topics(kafka, each)
    sim = await make_simulator(api_key=key, hang_s=5)
    leaky = LeakyProvider()
    await leaky.start()
    jobs = _jobs(marker)
    leak_jobs = {f"leak-{kind}": _job(f"leak-{kind}", f"{marker} Hello [[leak:{kind}]]") for kind in LEAKS}
    common = {
        "OPENAI_API_KEY": key,
        "PIPELINE_LOG_LEVEL": "DEBUG",
        "PIPELINE_MAX_ATTEMPTS": "2",
        "PIPELINE_READ_TIMEOUT_S": "1",
        "PIPELINE_CALL_TIMEOUT_S": "1",
        "PIPELINE_MAX_RESPONSE_BYTES": str(MAX_RESPONSE_BYTES),
        **QUICK_EVICTION,
    }
    caplog.set_level(logging.DEBUG)
    config = ClientConfig(
        api_key=Secret(key),
        base_url=sim.base_url,
        max_attempts=2,
        read_timeout_s=1,
        call_timeout_s=1,
        max_response_bytes=MAX_RESPONSE_BYTES,
    )
    recording = RecordingTransport(default_transport(config))
    metrics = Metrics()
    client = ChatClient(config, transport=recording, observer=MetricsObserver(metrics))
    settings = worker_settings(topics["inproc"], session_timeout_ms=3000, heartbeat_interval_ms=1000)
    in_process = Worker(settings, kafka, client, metrics)
    stop = asyncio.Event()
    scraped: list[str] = []

    try:
        with workers() as started_workers:
            streaming = WorkerProcess(
                worker_env(kafka, topics["stream"], sim.base_url, PIPELINE_STREAM="true", **common),
                tmp_path / "stream.log",
            )
            leaking = WorkerProcess(
                worker_env(kafka, topics["leaky"], leaky.url + "/v1", PIPELINE_STREAM="true", **common),
                tmp_path / "leaky.log",
            )
            started_workers.extend([streaming, leaking])
            running = asyncio.create_task(in_process.run(stop))
            await publish(kafka, topics["stream"].input, list(jobs.values()))
            await publish(kafka, topics["inproc"].input, list(jobs.values()))
            await publish(kafka, topics["leaky"].input, list(leak_jobs.values()))
            results: dict[str, list[Any]] = {}
            for name, expected in (("stream", jobs), ("inproc", jobs), ("leaky", leak_jobs)):
                async with Outputs(kafka, topics[name]) as outputs:
                    await outputs.until_all(set(expected), timeout=60)
                results[name] = outputs.seen
            for worker in (streaming, leaking):
                scraped.append(worker.scrape())
                worker.terminate()
                assert await worker.wait(60) == 0
            stop.set()
            await asyncio.wait_for(running, 60)
    finally:
        await client.aclose()
        await leaky.close()
    scraped.append(metrics.exposition().decode())

    logs = [streaming.log_path.read_text(errors="replace"), leaking.log_path.read_text(errors="replace")]
    captured = [logging.Formatter("%(message)s %(exc_text)s").format(r) + repr(r.__dict__) for r in caplog.records]
    records = [s.raw() for seen in results.values() for s in seen]
    config_errors = _config_error_output(key)

    checked = {
        "log lines": sum(text.count("\n") for text in logs) + len(captured),
        "exceptions": len(recording.exceptions),
        "metric lines": sum(text.count("\n") for text in scraped),
        "records": len(records),
    }
    published = {"stream": jobs, "inproc": jobs, "leaky": leak_jobs}
    figures = record(
        tally(
            "security",
            "ci",
            {f"{name}/{job_id}" for name, sent in published.items() for job_id in sent},
            [dataclasses.replace(s, key=f"{name}/{s.key}") for name, seen in results.items() for s in seen],
            faults=len(FAULTS) * 2 + len(LEAKS),
            **checked,
        ),
        started,
    )
    assert all(count > 0 for count in checked.values()), checked
    assert any(key in auth for auth in leaky.authorizations), "the leaky provider was sent the key to echo"
    # where the key turns up (named, never shown: a failing assertion must not print it)
    places = {
        **{f"worker log {i}": text for i, text in enumerate(logs)},
        **{f"captured log record {i}": text for i, text in enumerate(captured)},
        **{f"exception {i}": text for i, text in enumerate(recording.exceptions)},
        **{f"metrics scrape {i}": text for i, text in enumerate(scraped)},
        "config errors": config_errors,
        **{f"record {i}": blob.decode(errors="replace") for i, blob in enumerate(records)},
    }
    assert [place for place, text in places.items() if secret_part in text] == []
    # prompts: the marker is in every job, and in no log line (DEBUG level, prompt logging left off)
    assert any(marker.encode() in blob for blob in records), "the review records carry the jobs"
    assert all(marker not in text for text in logs)
    assert any('"routed"' in text for text in logs)

    # oversize answers are refused (not retried), normal ones pass under the same cap
    for name in ("stream", "inproc"):
        reviews = _reviews(results[name])
        big = reviews["big"].reason
        assert isinstance(big, ApiFailure) and big.attempts == 1 and "larger than the cap" in big.message, big
        assert "small" in {s.key for s in results[name] if s.route == "output"}
    leaked = _reviews(results["leaky"])
    assert {k: r.reason.__struct_config__.tag for k, r in leaked.items()} == {f"leak-{k}": "api_error" for k in LEAKS}
    assert figures.lost == 0


def _config_error_output(key: str) -> str:
    """``pipeline run`` refusing bad settings, with the key in its environment: what does it print?"""
    outputs = []
    for bad in (
        {"PIPELINE_CONCURRENCY": "lots"},
        {"OPENAI_BASE_URL": "ftp://nowhere"},
        {"KAFKA_BOOTSTRAP_SERVERS": ""},
    ):
        env = child_env({"OPENAI_API_KEY": key, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, bad)
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "run"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode != 0
        outputs.append(done.stdout + done.stderr)
    return "\n".join(outputs)


# --------------------------------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------------------------------


def test_tls_verification_is_on_by_default_and_no_setting_turns_it_off() -> None:
    assert ClientConfig(api_key=Secret("k")).verify_tls is True
    loose = {"OPENAI_API_KEY": "k", "PIPELINE_VERIFY_TLS": "false", "OPENAI_VERIFY_TLS": "0", "SSL_VERIFY": "no"}
    assert ClientConfig.from_env(loose).verify_tls is True


def _self_signed(directory: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: no self-signed certificate to test against")
    cert, key = directory / "cert.pem", directory / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    names = ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    subprocess.run([openssl, *request, *names], check=True, capture_output=True, env=child_env())
    return cert, key


@pytest.mark.parametrize("http_client", ["aiohttp", "httpx"])
async def test_a_self_signed_endpoint_is_refused_before_the_key_is_sent(
    http_client: str, tmp_path: Path, make_simulator: MakeSimulator
) -> None:
    cert, private = _self_signed(tmp_path)
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"error": {"message": "unreachable", "type": "server_error"}}, status=500)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, private)
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    key = f"sk-test-{secrets.token_hex(16)}"
    config = ClientConfig(
        api_key=Secret(key),
        base_url=f"https://127.0.0.1:{port}/v1",
        http_client=http_client,  # type: ignore[arg-type]
        max_attempts=1,
    )
    job = Job(id="tls", messages=[UserMessage(content="Hello")])
    try:
        async with ChatClient(config) as client:
            refused = await client.complete(job)
        trusting = ssl.create_default_context(cafile=str(cert))
        transport = AiohttpTransport(pool_size=1, ssl_context=trusting)
        async with ChatClient(config, transport=transport) as client:
            trusted = await client.complete(job)
    finally:
        await runner.cleanup()
    assert isinstance(refused, Failed) and refused.failure == "transport", refused
    assert isinstance(trusted, Failed) and trusted.status == 500, "the endpoint itself works once its CA is trusted"
    assert seen == [f"Bearer {key}"], "only the trusting client's request reached the server"
