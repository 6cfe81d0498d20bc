"""Our worker as ``pipeline run`` runs it (same settings, same code path), with the benchmark's switches.

    python -m bench.ours [--loop asyncio|uvloop] [--transport aiohttp|httpx|httpx-aiohttp] [--profile PATH]

Settings come from the environment exactly as for ``pipeline run``. ``--transport httpx`` is the client's own
``PIPELINE_HTTP_CLIENT=httpx`` (httpx's native pool); ``httpx-aiohttp`` runs httpx over the
``httpx-aiohttp`` transport behind the same seam. With ``--profile PATH`` a pyinstrument profiler starts on
SIGUSR1 and stops on SIGUSR2, writing ``PATH.txt`` and ``PATH.pyisession``; the bench sends the signals
once the worker is saturated, so start-up and group join are not in the profile.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

from pipeline.client import ClientConfig
from pipeline.client import chat as client_chat
from pipeline.client.transport import HttpTransport, HttpxTransport
from pipeline.commands.run import load_run_settings, run_worker
from pipeline.logs import configure_logging


def _httpx_over_aiohttp(config: ClientConfig) -> HttpTransport:
    import httpx
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
    return HttpxTransport(
        AiohttpTransport(limits=limits), pool_size=config.concurrency, max_response_bytes=config.max_response_bytes
    )


def _install_profiler(path: Path) -> None:
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    loop = asyncio.get_running_loop()

    def start() -> None:
        if not profiler.is_running:
            profiler.start()

    def stop() -> None:
        if profiler.is_running:
            session = profiler.stop()
            session.save(str(path.with_suffix(".pyisession")))
            path.with_suffix(".txt").write_text(profiler.output_text(unicode=True, show_all=False))

    loop.add_signal_handler(signal.SIGUSR1, start)
    loop.add_signal_handler(signal.SIGUSR2, stop)


async def _main(args: argparse.Namespace) -> int:
    settings = load_run_settings(os.environ)
    if args.profile:
        _install_profiler(Path(args.profile))
    return await run_worker(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ours", description=__doc__)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--transport", choices=("aiohttp", "httpx", "httpx-aiohttp"), default="aiohttp")
    parser.add_argument("--profile", metavar="PATH", help="profile between SIGUSR1 and SIGUSR2")
    args = parser.parse_args(argv)
    if args.transport == "httpx":
        os.environ["PIPELINE_HTTP_CLIENT"] = "httpx"
    elif args.transport == "httpx-aiohttp":
        # ChatClient looks its default transport up in its own module, so that is where it is replaced.
        client_chat.default_transport = _httpx_over_aiohttp
    settings = load_run_settings(os.environ)
    configure_logging(settings.worker.log_level)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if args.loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_main(args))


if __name__ == "__main__":
    raise SystemExit(main())
