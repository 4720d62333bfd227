"""The ``asyncjobs`` command.

Server commands (:mod:`asyncjobs.cli.server`): ``demo`` (the dashboard with the demo job
types), ``serve module:attr`` (JobsApp for your queue under uvicorn), ``worker
module:attr`` (a worker process only) and ``migrate --store URL``. Client verbs against a
running server (:mod:`asyncjobs.cli.client`): ``submit``, ``ls``, ``get``, ``cancel`` and
``watch``.

Web and HTTP libraries are imported inside the commands, so ``import asyncjobs`` stays
free of them.

Exit codes: 0 success (``watch``: the job completed), 1 the job failed, 2 it was
cancelled, 3 the job was deleted or its stream was lost, 4 the command failed
(unreachable server, 401/403, unknown id, a store that cannot open, bad input), 64 bad
command-line usage (also a too-short ``--auth-token``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from .. import __version__
from ..errors import AsyncJobsError
from .client import EXIT_ERROR, CliError, run_client
from .server import EXIT_USAGE, cmd_demo, cmd_migrate, cmd_serve, cmd_worker, load_queue

__all__ = ["EXIT_USAGE", "build_parser", "load_queue", "main"]

DEFAULT_URL = "http://127.0.0.1:8000/"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# ---------------------------------------------------------------------------- parser


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)"
    )
    parser.add_argument("--root-path", default="", help="prefix a proxy serves the app under")
    parser.add_argument(
        "--auth-token",
        default=os.environ.get("ASYNCJOBS_AUTH_TOKEN"),
        help="require this bearer token (admin scope); default $ASYNCJOBS_AUTH_TOKEN",
    )
    parser.add_argument(
        "--grace", type=int, default=5, help="seconds open connections get on shutdown"
    )
    _log_options(parser)


def _log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text lines, or one JSON object a line with the job fields (default text)",
    )


def _client_options(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    # Accepted before and after the verb: the top-level parser holds the defaults and a
    # verb's copy only overrides them when given (SUPPRESS leaves the attribute alone).
    url_default = os.environ.get("ASYNCJOBS_URL", DEFAULT_URL) if top else argparse.SUPPRESS
    token_default = os.environ.get("ASYNCJOBS_TOKEN") if top else argparse.SUPPRESS
    parser.add_argument(
        "--url",
        default=url_default,
        help=f"the JobsApp mount URL (default $ASYNCJOBS_URL or {DEFAULT_URL})",
    )
    parser.add_argument("--token", default=token_default, help="bearer token ($ASYNCJOBS_TOKEN)")


def build_parser() -> argparse.ArgumentParser:
    """The ``asyncjobs`` argument parser."""
    parser = _Parser(prog="asyncjobs", description="Run and drive asyncjobs queues.")
    parser.add_argument("--version", action="version", version=f"asyncjobs {__version__}")
    _client_options(parser, top=True)
    _completion_option(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="dashboard + demo job types on 127.0.0.1:8000")
    p.add_argument("--store", default="memory://", help="store URL (default memory://)")
    p.add_argument("--concurrency", type=int, default=3, help="jobs run at once (default 3)")
    _server_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="serve JobsApp for the Queue at module:attr")
    p.add_argument("target", metavar="module:attr")
    _server_options(p)
    p.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also serve the gRPC WorkerService on this port (needs asyncjobs[grpc])",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run workers only for the Queue at module:attr")
    p.add_argument("target", metavar="module:attr")
    _log_options(p)
    # The worker's own --url (after the verb) makes it a remote worker: it runs the job
    # types against that JobsApp and never opens a store. A --url before the verb is the
    # client verbs' server URL and changes nothing here.
    p.add_argument(
        "--url",
        dest="remote_url",
        metavar="URL",
        default=None,
        help="run against the JobsApp at this URL (a remote worker: no store needed)",
    )
    p.add_argument("--token", default=argparse.SUPPRESS, help="bearer token (worker scope)")
    p.add_argument("--concurrency", type=int, default=None, help="remote worker slots")
    p.add_argument("--lease", type=float, default=30.0, help="remote lease seconds (default 30)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("migrate", help="create or upgrade a store's schema")
    p.add_argument("--store", required=True, help="store URL, e.g. postgresql://...")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("submit", help="submit a job; prints its id")
    p.add_argument("type", help="job type name")
    p.add_argument("--param", "-p", action="append", metavar="KEY=VALUE", help="one param (repeat)")
    p.add_argument("--json", metavar="OBJECT", help="all params as a JSON object")
    p.add_argument("--priority", type=int)
    p.add_argument("--delay", type=float, help="seconds before it may start")
    p.add_argument("--idempotency-key")
    p.add_argument("--watch", action="store_true", help="follow it; exit with its outcome")
    p.add_argument("--output-json", action="store_true", help="print the whole job as JSON")
    _client_options(p)

    p = sub.add_parser("ls", help="list jobs, newest first")
    p.add_argument("--status", action="append", help="filter (repeat for several)")
    p.add_argument("--type", action="append", help="filter by job type (repeat)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--output-json", action="store_true", help="print the raw page as JSON")
    _client_options(p)

    for verb, text in (
        ("get", "print one job as JSON"),
        ("cancel", "cancel a job"),
        ("watch", "follow a job with a progress bar; exit 0/1/2 = completed/failed/cancelled"),
    ):
        p = sub.add_parser(verb, help=text)
        p.add_argument("id", help="job id")
        _client_options(p)
    return parser


def _completion_option(parser: argparse.ArgumentParser) -> None:
    # shtab comes with the cli extra; without it the option is simply absent.
    try:
        import shtab
    except ImportError:  # pragma: no cover - depends on the installed extras
        return
    shtab.add_argument_to(parser, ["--print-completion"], help="print a shell completion script")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``asyncjobs`` console script and ``python -m asyncjobs``."""
    args = build_parser().parse_args(argv)
    try:
        func = getattr(args, "func", None)
        return func(args) if func is not None else run_client(args)
    except CliError as exc:
        print(f"asyncjobs: {exc}", file=sys.stderr)
        return exc.code
    except AsyncJobsError as exc:  # e.g. a bad store URL: the message says what to do
        print(f"asyncjobs: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `asyncjobs ls | head`
        return 0
    except Exception as exc:  # the command's boundary: one line, unless asked for more
        if os.environ.get("ASYNCJOBS_DEBUG"):
            raise
        text = " ".join(str(exc).split())
        print(
            f"asyncjobs: unexpected {type(exc).__name__}: {text} "
            "(set ASYNCJOBS_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR
