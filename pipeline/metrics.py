"""Prometheus metrics and the worker's HTTP surface: ``/metrics``, ``/healthz``, ``/readyz``.

Each worker has its own registry (several workers can share a process in tests). The names below are a
public contract: the alert rules and the Grafana dashboard under ``ops/`` refer to them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pipeline import __version__
from schemas.chat import Usage

#: What can hold every provider call (``pipeline.client.breaker.Cause``; kept here so metrics need no client).
PROVIDER_WIDE_CAUSES: Final = ("unauthorized", "forbidden", "model_not_found", "insufficient_quota")
LATENCY_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    """Every metric the worker exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs_consumed = Counter("pipeline_jobs_consumed", "Job records fetched from the input topic", registry=r)
        self.jobs_skipped = Counter(
            "pipeline_jobs_skipped", "Records skipped because a previous owner had already handled them", registry=r
        )
        self.jobs_routed = Counter(
            "pipeline_jobs_routed",
            "Jobs whose result was acknowledged by the broker, by destination and review reason",
            ["destination", "reason"],
            registry=r,
        )
        self._routed: dict[tuple[str, str], Counter] = {}
        self.jobs_in_flight = Gauge("pipeline_jobs_in_flight", "Jobs fetched and not yet acknowledged", registry=r)
        self.bytes_in_flight = Gauge("pipeline_bytes_in_flight", "Bytes of job records in flight", registry=r)
        self.partitions_assigned = Gauge("pipeline_partitions_assigned", "Input partitions owned", registry=r)
        self.partitions_paused = Gauge(
            "pipeline_partitions_paused", "Input partitions paused by backpressure", registry=r
        )
        self.provider_requests = Counter(
            "pipeline_provider_requests",
            "HTTP attempts to the provider, by status (0: no response)",
            ["status"],
            registry=r,
        )
        self.provider_retries = Counter(
            "pipeline_provider_retries", "Provider attempts retried, by cause", ["cause"], registry=r
        )
        self.provider_rate_limited = Counter(
            "pipeline_provider_rate_limited", "Provider answers with HTTP 429", registry=r
        )
        self.provider_call_seconds = Histogram(
            "pipeline_provider_call_seconds",
            "One provider attempt, request to response",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.job_seconds = Histogram(
            "pipeline_job_seconds",
            "From the job record's timestamp to its result's acknowledgement (end to end)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("pipeline_tokens", "Tokens used, by model and kind", ["model", "kind"], registry=r)
        # Tenancy (pipeline/tenancy/): what each job was billed, over all its attempts; tenant labels are bounded
        # (PIPELINE_TENANT_LABELS_MAX, then ``other``; ``none`` for jobs that name no tenant).
        self.cost_usd = Counter(
            "pipeline_cost_usd",
            "USD billed for jobs (paid retries too), by model and tenant",
            ["model", "tenant"],
            registry=r,
        )
        self.tenant_tokens = Counter(
            "pipeline_tenant_tokens",
            "Tokens billed for jobs (paid retries too), by tenant and kind (prompt, cached, completion)",
            ["tenant", "kind"],
            registry=r,
        )
        self.cost_unpriced = Counter(
            "pipeline_cost_unpriced", "Jobs billed for tokens of a model the price table does not know", registry=r
        )
        self.concurrency_limit = Gauge(
            "pipeline_provider_concurrency_limit", "The client's adaptive concurrency limit", registry=r
        )
        self.produce_retries = Counter(
            "pipeline_produce_retries", "Result records re-sent after a producer error", registry=r
        )
        self.commits = Counter("pipeline_commits", "Offset commits that succeeded", registry=r)
        self.commit_failures = Counter("pipeline_commit_failures", "Offset commits that failed", registry=r)
        self.stale_completions = Counter(
            "pipeline_stale_completions",
            "Jobs finished after their partition was revoked (not committed)",
            registry=r,
        )
        self.fetches_rewound = Counter(
            "pipeline_fetches_rewound",
            "Fetches of a just-assigned partition that arrived before its ledger, rewound to be fetched again",
            registry=r,
        )
        self.committed_offset = Gauge(
            "pipeline_committed_offset", "Last committed offset", ["topic", "partition"], registry=r
        )
        self.last_commit_time = Gauge(
            "pipeline_last_commit_timestamp_seconds",
            "Unix time of the last successful commit",
            ["topic", "partition"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "pipeline_consumer_lag", "High watermark minus committed offset", ["topic", "partition"], registry=r
        )
        self.build_info = Gauge("pipeline_build_info", "Always 1; the running version", ["version"], registry=r)
        self.build_info.labels(__version__).set(1)
        self.commit_metadata_supported = Gauge(
            "pipeline_commit_metadata_supported",
            "1 when the broker keeps commit metadata (the done-offset map is on), 0 when it drops it; "
            "set once the first commit carrying a map was read back",
            registry=r,
        )
        self.partitions_not_started = Gauge(
            "pipeline_partitions_not_started",
            "Owned input partitions not fetched: their committed offset is unknown (the group coordinator did "
            "not answer) or there is none and PIPELINE_AUTO_OFFSET_RESET=none",
            registry=r,
        )
        self.committed_read_failures = Counter(
            "pipeline_committed_read_failures",
            "Reads of the group's committed offsets that failed (retried; never taken for no commit)",
            registry=r,
        )
        self.oldest_job_seconds = Gauge(
            "pipeline_oldest_job_seconds",
            "Age of the longest-held job, fetched and not yet acknowledged (0 when none); /healthz fails "
            "above PIPELINE_STUCK_JOB_S",
            registry=r,
        )
        self.worker_failures = Counter(
            "pipeline_worker_failures",
            "Errors the worker cannot get past (it stops with a non-zero exit), by where they happened",
            ["where"],
            registry=r,
        )
        self.provider_blocked = Gauge(
            "pipeline_provider_blocked",
            "1 while a provider-wide failure holds every call (intake paused, not ready), by its cause",
            ["cause"],
            registry=r,
        )
        for cause in PROVIDER_WIDE_CAUSES:
            self.provider_blocked.labels(cause).set(0)
        self.job_failures = Counter(
            "pipeline_job_failures",
            "Jobs whose processing raised unexpectedly (a bug); each is routed to review as api_error internal",
            registry=r,
        )

    def routed(self, destination: str, reason: str) -> None:
        """Count one routed job. Its labelled child is looked up once per pair: ``labels()`` costs a lock and
        a tuple of strings on every call, and this is on every job's path."""
        child = self._routed.get((destination, reason))
        if child is None:
            child = self._routed[(destination, reason)] = self.jobs_routed.labels(destination, reason)
        child.inc()

    def usage(self, model: str, usage: Usage) -> None:
        self.tokens.labels(model, "prompt").inc(usage.prompt_tokens)
        self.tokens.labels(model, "completion").inc(usage.completion_tokens)

    def forget_partition(self, topic: str, partition: int) -> None:
        for gauge in (self.committed_offset, self.consumer_lag, self.last_commit_time):
            with contextlib.suppress(KeyError):
                gauge.remove(topic, str(partition))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class HealthServer:
    """Serves ``/metrics``, ``/healthz`` (the event loop answers and the worker is running) and ``/readyz``."""

    def __init__(self, metrics: Metrics, alive: Callable[[], bool], ready: Callable[[], bool]) -> None:
        self._metrics = metrics
        self._alive = alive
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._serve_health)
        app.router.add_get("/readyz", self._serve_ready)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve_metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _serve_health(self, _request: web.Request) -> web.Response:
        alive = self._alive()
        return web.Response(status=200 if alive else 503, text="ok\n" if alive else "worker stopped\n")

    async def _serve_ready(self, _request: web.Request) -> web.Response:
        ready = self._ready()
        return web.Response(status=200 if ready else 503, text="ready\n" if ready else "not ready\n")


class MetricsObserver:
    """Feeds the provider client's events (its observer hooks) into :class:`Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def on_attempt(self, status: int | None, latency_s: float) -> None:
        self._metrics.provider_requests.labels(str(status or 0)).inc()
        self._metrics.provider_call_seconds.observe(latency_s)

    def on_retry(self, reason: str) -> None:
        self._metrics.provider_retries.labels(reason).inc()

    def on_rate_limited(self) -> None:
        self._metrics.provider_rate_limited.inc()

    def on_provider_blocked(self, cause: str | None) -> None:
        for known in PROVIDER_WIDE_CAUSES:
            self._metrics.provider_blocked.labels(known).set(1 if known == cause else 0)

    def on_usage(self, model: str, usage: Usage) -> None:
        self._metrics.usage(model, usage)

    def on_concurrency_limit(self, limit: int) -> None:
        self._metrics.concurrency_limit.set(limit)
