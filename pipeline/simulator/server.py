"""The in-process simulator: :class:`Simulator` and the :func:`run_simulator` context manager."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

from pipeline.simulator.app import SimulatorApp
from pipeline.simulator.config import SimulatorConfig
from pipeline.simulator.http import HttpServer
from pipeline.simulator.ratelimit import Clock
from pipeline.simulator.stats import SimulatorStats


class Simulator:
    """An OpenAI-compatible server on this event loop.

    ``clock`` drives the rate-limit buckets (tests pass a fake one to move time instead of sleeping).
    """

    def __init__(self, config: SimulatorConfig | None = None, *, clock: Clock | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.app = SimulatorApp(self.config) if clock is None else SimulatorApp(self.config, clock)
        self._server: HttpServer | None = None
        self._host = ""
        self._port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._server is not None:
            raise RuntimeError("the simulator is already started")
        server = HttpServer(self.app.handle)
        self._port = await server.start(host, port)
        self._server = server
        self._host = host

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the simulator is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://HOST:PORT``; the control endpoints live under ``/sim/``."""
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as ``base_url``: ``http://HOST:PORT/v1``."""
        return self.url + "/v1"

    def stats(self) -> SimulatorStats:
        return self.app.stats.snapshot()

    def reset_stats(self) -> None:
        """Zero the stats and forget per-job attempt counts (``*N`` faults start over)."""
        self.app.reset()

    async def close(self) -> None:
        """Stop listening and drop every connection; requests in flight (a ``hang``, a stream) end."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.close()

    async def __aenter__(self) -> Simulator:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


@asynccontextmanager
async def run_simulator(
    config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0, *, clock: Clock | None = None
) -> AsyncIterator[Simulator]:
    """Start a :class:`Simulator`, yield it, close it."""
    simulator = Simulator(config, clock=clock)
    await simulator.start(host, port)
    try:
        yield simulator
    finally:
        await simulator.close()
