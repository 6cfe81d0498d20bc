"""The ``pipeline`` command: one parser, a subcommand per module, every failure one clear line."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from pipeline import __version__
from pipeline.broker import DEFAULT_HOST, DEFAULT_PORT, BrokerError, EmbeddedBroker
from pipeline.client import CLIENT_OPTIONS
from pipeline.commands import batch, demo, produce, replay, review, run, tail, topics
from pipeline.commands.common import KNOWN_SETTINGS, CliError
from pipeline.config import ConfigError
from pipeline.simulator import cli as simulate

KNOWN_SETTINGS.update(option.env for option in CLIENT_OPTIONS)


def _cmd_broker(args: argparse.Namespace) -> int:
    broker = EmbeddedBroker(host=args.host, port=args.port)
    try:
        broker.start()
    except BrokerError as exc:
        raise CliError(str(exc)) from None
    print(f"embedded Kafka broker (Tansu, memory storage) on {broker.bootstrap_servers}; Ctrl-C stops it")
    print(f"export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    broker.stop()
    return 0


def _add_broker(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    broker = commands.add_parser(
        "broker",
        help="run the embedded Kafka-protocol broker in the foreground",
        description="Run the embedded broker (Tansu, memory storage: data is gone when it stops) until Ctrl-C.",
        epilog="example: pipeline broker --port 9092",
    )
    broker.add_argument("--host", default=DEFAULT_HOST)
    broker.add_argument("--port", type=int, default=DEFAULT_PORT)
    broker.set_defaults(handler=_cmd_broker)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Moderated LLM stream processing: Kafka prompt jobs -> Chat Completions with inline "
        "moderation -> completions (clean) or review (with a typed reason).",
        epilog="start here: pipeline demo",
    )
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo.add_parser(commands)
    run.add_parser(commands)
    produce.add_parser(commands)
    tail.add_parser(commands)
    topics.add_parser(commands)
    replay.add_parser(commands)
    batch.add_parser(commands)
    review.add_parser(commands)
    simulate.add_parser(commands)
    _add_broker(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    name = f"pipeline {args.command}"
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{name}: {problem}", file=sys.stderr)
        return 2
    except CliError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
