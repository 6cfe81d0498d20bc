"""The ``pipeline`` command."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from pipeline import __version__
from pipeline.broker import DEFAULT_HOST, DEFAULT_PORT, BrokerError, EmbeddedBroker


def _cmd_broker(args: argparse.Namespace) -> int:
    broker = EmbeddedBroker(host=args.host, port=args.port)
    try:
        broker.start()
    except BrokerError as exc:
        print(f"pipeline broker: {exc}", file=sys.stderr)
        return 1
    print(f"embedded Kafka broker (Tansu, memory storage) on {broker.bootstrap_servers}; Ctrl-C stops it")
    print(f"export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    broker.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Moderated LLM stream processing: Kafka prompt jobs -> Chat Completions with inline "
        "moderation -> completions (clean) or review (with a typed reason).",
    )
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    broker = commands.add_parser(
        "broker",
        help="run the embedded Kafka-protocol broker in the foreground",
        description="Run the embedded broker (Tansu, memory storage) until Ctrl-C.",
        epilog="example: pipeline broker --port 9092",
    )
    broker.add_argument("--host", default=DEFAULT_HOST)
    broker.add_argument("--port", type=int, default=DEFAULT_PORT)
    broker.set_defaults(handler=_cmd_broker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
