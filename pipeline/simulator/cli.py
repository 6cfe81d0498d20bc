"""``pipeline simulate``: serve the simulator in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, read_toml
from pipeline.simulator.config import OPTIONS, SimulatorConfig, config_from_env, with_values
from pipeline.simulator.directives import ALL_FAULTS
from pipeline.simulator.server import Simulator

_EPILOG_TEMPLATE = """\
examples:
  pipeline simulate --port 8089
  pipeline simulate --port 8089 --latency lognormal:300,2000 --faults '500@0.01,429@0.02' --rpm 600
  pipeline simulate --port 8089 --rpm 3000 --rate-window 1     # 3,000/min enforced as 50 a second

  then: OPENAI_BASE_URL=http://127.0.0.1:8089/v1 OPENAI_API_KEY=anything <client>

every option can also be set as PIPELINE_SIM_<OPTION> (e.g. PIPELINE_SIM_RPM=600), or all at once as JSON
in PIPELINE_SIM_CONFIG; flags win.

per-request directives, in the x-sim-fault header, metadata["sim_fault"] or [[sim: ...]] in a message:
  FAULT (always), FAULT*N (first N attempts of the job), FAULT@P (probability P), latency=MS,
  flag_input[=CATEGORY], flag_output[=CATEGORY]      e.g. [[sim: 503*2, flag_output=violence]]
faults: {faults}
"""


EPILOG = _EPILOG_TEMPLATE.format(faults=textwrap.fill(", ".join(ALL_FAULTS), width=100, subsequent_indent="  "))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML file with a [pipeline_sim] table of options")
    parser.add_argument(
        "--host", default=os.environ.get("PIPELINE_SIM_HOST", "127.0.0.1"), help="address to bind (127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PIPELINE_SIM_PORT", "8089")),
        help="port to bind (8089; 0 picks a free one, printed on start)",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop: uvloop when installed (auto, the default) or asyncio",
    )
    parser.add_argument("--cpu", type=int, help="pin the process to this CPU core")
    for option in OPTIONS:
        parser.add_argument(option.flag, dest=option.field, metavar=option.metavar, help=option.help)
    parser.set_defaults(handler=run)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``simulate`` to the ``pipeline`` command's subcommands."""
    parser = commands.add_parser(
        "simulate",
        help="serve the OpenAI-compatible simulator (chat completions with moderation, faults, rate limits)",
        description="Serve the local OpenAI-compatible simulator in the foreground until Ctrl-C.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure(parser)


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The TOML file (``--config``), then the environment, then the flags given.

    In the file the options are the ``[pipeline_sim]`` table (``latency = "fixed:200"`` is
    ``PIPELINE_SIM_LATENCY``), as in the other commands' shared configuration layer. An unparsable value
    raises ``ValueError``.
    """
    environ: dict[str, str] = dict(os.environ)
    if getattr(args, "config", None):
        try:
            toml = read_toml(Path(args.config), [option.env for option in OPTIONS])
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        environ = {**toml, **environ}
    config = config_from_env(environ)
    values: dict[str, Any] = {}
    for option in OPTIONS:
        text = getattr(args, option.field, None)
        if text is not None:
            try:
                values[option.field] = option.parse(text)
            except ValueError as exc:
                raise ValueError(f"{option.flag}: {exc}") from None
    return with_values(config, values)


def _describe(config: SimulatorConfig) -> str:
    key = "configured key" if config.api_key else "any key"
    limits = f"rpm {config.rpm or '∞'}, tpm {config.tpm or '∞'}"
    if config.rate_window != 60:
        limits += f" over {config.rate_window:g} s windows"
    faults = ", ".join(str(rule) for rule in config.faults) or "none"
    latency = "none" if config.latency is None else repr(config.latency)
    return f"{key}; {limits}; latency {latency}; server faults {faults}"


async def serve(config: SimulatorConfig, host: str, port: int) -> None:
    simulator = Simulator(config)
    await simulator.start(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"pipeline simulate: listening on {simulator.url} ({_describe(config)})", flush=True)
    try:
        await stop.wait()
    finally:
        await simulator.close()


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"pipeline simulate: {exc}", file=sys.stderr)
        return 2
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if config.access_log:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if args.loop == "uvloop":
                print("pipeline simulate: uvloop is not installed", file=sys.stderr)
                return 2
        else:
            uvloop.run(serve(config, args.host, args.port))
            return 0
    asyncio.run(serve(config, args.host, args.port))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.simulator", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    configure(parser)
    args = parser.parse_args(argv)
    return run(args)
