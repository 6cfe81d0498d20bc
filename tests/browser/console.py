"""The review console as ``pipeline review serve`` runs it, served from a thread on loopback for a real browser.

A :class:`~pipeline.review.service.ReviewService` (the Kafka-backed desk and the applier) over fresh topics of
the session's broker, under the same web app. The app and the service live on the server thread's event loop;
a test works through that loop:

- :meth:`ConsoleServer.publish` puts review records on the review topic as the worker's sink does and returns
  once the desk shows each one as an item (a condition on the desk, never a sleep);
- :meth:`ConsoleServer.call` runs a desk method there (``decide``, ``item``, ``count`` …: the desk is not
  thread-safe, and its change notifications must fire on that loop for the page's live updates);
- :meth:`ConsoleServer.results` reads the output topic, where approved items are published.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Final, TypeVar, overload

import msgspec

from pipeline.kafka import KafkaSettings
from pipeline.review.accounts import Accounts, add_reviewer
from pipeline.review.desk import Item
from pipeline.review.items import item_key
from pipeline.review.log import KafkaDesk
from pipeline.review.service import ReviewService
from pipeline.review.web import make_app, running
from schemas.decisions import ReviewRef
from schemas.topics import Result, Review
from tests.integration.review.support import ReviewTopics, create_topics, publish_reviews, read_topic

T = TypeVar("T")
#: Longest a step on the server's loop may take (starting, publishing and seeing items, a decision).
STEP_TIMEOUT_S: Final = 20.0
PARTITIONS: Final = 3


class ConsoleServer:
    def __init__(self, directory: Path, bootstrap_servers: str, topics: ReviewTopics | None = None) -> None:
        """A console reading ``topics`` (fresh uniquely named ones by default), created when it starts."""
        accounts_file = directory / "reviewers.json"
        self.tokens = {
            "ana": add_reviewer(accounts_file, "ana"),
            "root": add_reviewer(accounts_file, "root", admin=True),
        }
        self.accounts = Accounts(accounts_file)
        self.kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
        self.topics = topics or ReviewTopics.named(f"console{uuid.uuid4().hex[:10]}")
        self.url = ""
        self._service: ReviewService | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="review-console", daemon=True)

    @property
    def desk(self) -> KafkaDesk:
        """The console's desk (call its methods through :meth:`call`)."""
        if self._service is None:
            raise RuntimeError("the console is not running")
        return self._service.desk

    @property
    def service(self) -> ReviewService:
        if self._service is None:
            raise RuntimeError("the console is not running")
        return self._service

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._failed = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await create_topics(self.kafka, self.topics, partitions=PARTITIONS)
        async with ReviewService(self.kafka, self.topics.worker(), ready_timeout_s=STEP_TIMEOUT_S) as service:
            self._service = service
            app = make_app(service.desk, self.accounts, metrics=service.metrics.exposition)
            async with running(app, "127.0.0.1", 0) as url:
                self.url = url
                self._ready.set()
                await self._stop.wait()

    def __enter__(self) -> ConsoleServer:
        self._thread.start()
        if not self._ready.wait(STEP_TIMEOUT_S + 10) or self._failed is not None:
            raise RuntimeError(f"the console did not start: {self._failed!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(STEP_TIMEOUT_S)
        if self._failed is not None and exc == (None, None, None):
            raise RuntimeError("the console failed") from self._failed

    @overload
    def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kwargs: Any) -> T: ...
    @overload
    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...
    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the server's loop (awaiting it if it is a coroutine function) and return its result."""
        assert self._loop is not None

        async def run() -> Any:
            result = fn(*args, **kwargs)
            return await result if asyncio.iscoroutine(result) else result

        done: Future[Any] = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return done.result(timeout=STEP_TIMEOUT_S + 5)

    def publish(self, *reviews: Review, received_at: int | None = None) -> list[Item]:
        """Put ``reviews`` on the review topic as the worker's sink does (keyed by job id, with its headers;
        stamped ``received_at`` epoch ms if given, as if they had waited since), and return their items once the
        desk shows every one of them."""
        return self.call(self._publish, reviews, received_at)

    async def _publish(self, reviews: Sequence[Review], received_at: int | None) -> list[Item]:
        refs = await publish_reviews(self.kafka, self.topics.review, reviews, timestamp_ms=received_at)
        wanted = [(item_key(review, ref), ref) for review, ref in zip(reviews, refs, strict=True)]
        desk = self.desk

        def shown(key: str, ref: ReviewRef) -> Item | None:
            item = desk.item(key)
            return item if item is not None and item.ref == ref else None

        await desk.follower.wait_until(lambda: all(shown(key, ref) for key, ref in wanted), STEP_TIMEOUT_S)
        return [item for key, ref in wanted if (item := shown(key, ref)) is not None]

    def wait_until(self, condition: Callable[[KafkaDesk], bool]) -> None:
        """Return once ``condition(desk)`` holds (checked on the server's loop after every change of the desk)."""
        desk = self.desk
        self.call(desk.follower.wait_until, lambda: condition(desk), STEP_TIMEOUT_S)

    def results(self) -> list[Result]:
        """Every record on the output topic now, as Results."""
        records = self.call(read_topic, self.kafka, self.topics.output)
        return [msgspec.json.decode(record.value or b"", type=Result) for record in records]
