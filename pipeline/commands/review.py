"""``pipeline review``: reviewer accounts and the review console's web server.

- ``pipeline review add-reviewer NAME [--admin] [--json]`` — creates an account in ``PIPELINE_REVIEWERS_FILE``
  and prints its token once (only its hash is kept); ``--json`` prints ``{"name": …, "token": …}``.
- ``pipeline review remove-reviewer NAME`` — its token stops working, its sessions end.
- ``pipeline review serve [--host 127.0.0.1] [--port 8090]`` — the console, with the usual Kafka settings.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import signal
import sys
from pathlib import Path
from typing import Any, Final

import msgspec

from pipeline.commands.common import (
    KNOWN_SETTINGS,
    TOPIC_OPTIONS,
    CliError,
    add_config_flag,
    add_kafka_flags,
    kafka_errors,
    load_common,
    require_topics,
    resolve_values,
    run_async,
)
from pipeline.config import add_option_flags
from pipeline.logs import configure_logging
from pipeline.review.accounts import REVIEWERS_FILE_ENV, Accounts, AccountsError, add_reviewer, remove_reviewer
from pipeline.review.service import REVIEW_OPTIONS, ReviewService, load_review_settings
from pipeline.review.web import DEFAULT_HOST, DEFAULT_PORT, WEB_OPTIONS, WebSettings, load_web_settings, make_app
from pipeline.review.web import running as serving

ACCOUNT_OPTIONS: Final = tuple(option for option in WEB_OPTIONS if option.env == REVIEWERS_FILE_ENV)
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


def reviewers_file(settings: WebSettings) -> Path:
    if not settings.reviewers_file:
        raise CliError(f"name the reviewers file: {REVIEWERS_FILE_ENV}=PATH or --reviewers-file PATH")
    return Path(settings.reviewers_file).expanduser()


def _add_reviewer(args: argparse.Namespace) -> int:
    path = reviewers_file(load_web_settings(resolve_values(args, ACCOUNT_OPTIONS)))
    try:
        token = add_reviewer(path, args.name, admin=args.admin)
    except AccountsError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        sys.stdout.buffer.write(msgspec.json.encode({"name": args.name, "token": token}) + b"\n")
        sys.stdout.flush()
        return 0
    role = "admin" if args.admin else "reviewer"
    print(f"added {role} {args.name} to {path}")
    print("token (shown this once; only its hash is kept, so keep it somewhere safe):")
    print(token, flush=True)
    return 0


def _remove_reviewer(args: argparse.Namespace) -> int:
    path = reviewers_file(load_web_settings(resolve_values(args, ACCOUNT_OPTIONS)))
    try:
        remove_reviewer(path, args.name)
    except AccountsError as exc:
        raise CliError(str(exc)) from None
    print(f"removed {args.name} from {path}: their token no longer works")
    return 0


def load_console(args: argparse.Namespace) -> tuple[WebSettings, Accounts]:
    """The web settings and the accounts (a file without reviewers is refused: nobody could sign in)."""
    settings = load_web_settings(resolve_values(args, WEB_OPTIONS))
    path = reviewers_file(settings)
    try:
        accounts = Accounts(path)
    except AccountsError as exc:
        raise CliError(str(exc)) from None
    if len(accounts) == 0:
        raise CliError(f"no reviewers in {path}: create one with `pipeline review add-reviewer NAME --admin`")
    return settings, accounts


async def serve_console(args: argparse.Namespace) -> int:
    settings, accounts = load_console(args)
    common = load_common(args)
    review = load_review_settings(resolve_values(args, REVIEW_OPTIONS))
    configure_logging("INFO")
    worker = common.worker
    await require_topics(common.kafka, (worker.review_topic, worker.decisions_topic))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    print(f"reading {worker.review_topic} and {worker.decisions_topic}…", flush=True)
    try:
        with kafka_errors(common.kafka):
            async with ReviewService(common.kafka, worker, review) as service:
                app = make_app(service.desk, accounts, settings, metrics=service.metrics.exposition)
                async with serving(app, args.host, args.port) as url:
                    print(f"review console on {url} ({len(accounts)} reviewer accounts); Ctrl-C stops it", flush=True)
                    await stop.wait()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CliError(f"port {args.port} on {args.host} is in use (--port; 0 picks a free one)") from None
        raise
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
    return 0


def add_parser(commands: Any) -> None:
    KNOWN_SETTINGS.update(option.env for option in (*WEB_OPTIONS, *REVIEW_OPTIONS))
    review = commands.add_parser(
        "review",
        help="the review console: reviewer accounts and the web server",
        description="People decide what the pipeline sent to review: a web console over the review topic, whose "
        "decisions are records on the review-decisions topic.",
        epilog="examples:\n  pipeline review add-reviewer ana --admin\n"
        "  pipeline review serve --port 8090\n"
        f"  {REVIEWERS_FILE_ENV}=~/.config/pipeline/reviewers.json pipeline review add-reviewer bo --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    review.set_defaults(handler=lambda _args: review.print_help() or 2)
    actions = review.add_subparsers(dest="review_command", metavar="ACTION")

    add = actions.add_parser(
        "add-reviewer",
        help="create a reviewer account and print its token once",
        description="Create a reviewer account in the reviewers file and print its token once: only a hash of it "
        "is stored, so it cannot be shown again (remove the account and add it anew to replace a lost token).",
    )
    add.add_argument("name", metavar="NAME", help="letters, digits and . _ @ - (e.g. ana or ana@example.com)")
    add.add_argument("--admin", action="store_true", help="may decide escalated items and reopen decided ones")
    add.add_argument("--json", action="store_true", help='print {"name": ..., "token": ...}')
    add_config_flag(add)
    add_option_flags(add, ACCOUNT_OPTIONS, "accounts")
    add.set_defaults(handler=_add_reviewer)

    remove = actions.add_parser("remove-reviewer", help="delete a reviewer account (its token stops working)")
    remove.add_argument("name", metavar="NAME")
    add_config_flag(remove)
    add_option_flags(remove, ACCOUNT_OPTIONS, "accounts")
    remove.set_defaults(handler=_remove_reviewer)

    serve = actions.add_parser(
        "serve",
        help="run the review console's web server",
        description="Serve the review console (pages, JSON API, live updates) over the review and decisions "
        "topics. It listens on 127.0.0.1 unless told otherwise: put it behind your TLS or single sign-on proxy "
        "to open it to others.",
    )
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any)")
    add_kafka_flags(serve, TOPIC_OPTIONS)
    add_option_flags(serve, WEB_OPTIONS, "review console")
    add_option_flags(serve, REVIEW_OPTIONS, "review decisions")
    serve.set_defaults(handler=run_async(serve_console))
