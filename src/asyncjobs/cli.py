"""The ``asyncjobs`` command.

Server commands: ``demo`` (the dashboard with the demo job types), ``serve module:attr``
(JobsApp for your queue under uvicorn), ``worker module:attr`` (a worker process only)
and ``migrate --store URL``. Client verbs against a running server: ``submit``, ``ls``,
``get``, ``cancel`` and ``watch`` (see :mod:`asyncjobs._client`).

Web and HTTP libraries are imported inside the commands, so ``import asyncjobs`` stays
free of them. Signal handling lives here, never in the core: ``worker`` turns the first
SIGTERM or SIGINT into a graceful drain.

Exit codes: 0 success (``watch``: the job completed), 1 the job failed, 2 it was
cancelled, 3 the job was deleted or its stream was lost, 4 the command failed
(unreachable server, 401/403, unknown id, bad input), 64 bad command-line usage.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from ._client import EXIT_ERROR, CliError, run_client
from .errors import AsyncJobsError

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ["EXIT_USAGE", "build_parser", "load_queue", "main"]

EXIT_USAGE = 64  # sysexits EX_USAGE; 2 means "cancelled" for watch
DEFAULT_URL = "http://127.0.0.1:8000/"
log = logging.getLogger("asyncjobs.cli")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


# ---------------------------------------------------------------------------- helpers


def load_queue(target: str) -> Queue:
    """Import ``module:attr`` (``attr`` may be dotted) and return the Queue it names.

    ``attr`` may also be a callable taking no arguments that returns a Queue. The current
    directory is importable, as with uvicorn.

    Raises:
        CliError: the module or attribute is missing, or it is not a Queue.
    """
    from .queue import Queue

    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"expected module:attr (for example myapp.jobs:queue), got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise CliError(f"cannot import module {module_name!r}: {exc}") from None
        raise
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, Queue) and callable(obj):
        obj = obj()
    if not isinstance(obj, Queue):
        raise CliError(f"{target} is a {type(obj).__name__}, not an asyncjobs.Queue")
    return obj


def _serve(queue: Queue, args: argparse.Namespace, banner: str) -> int:
    try:
        import uvicorn

        # mypy maps src/ only; asyncjobs.adapters lives in adapters/ (setuptools package-dir).
        from asyncjobs.adapters.asgi.app import JobsApp  # type: ignore[import-not-found]
    except ImportError as exc:
        raise CliError(
            f"serving needs the asgi extra ({exc}): pip install 'asyncjobs[cli]'"
        ) from None
    auth = None
    if args.auth_token:
        from asyncjobs.adapters.asgi.auth import (  # type: ignore[import-not-found]
            BearerTokens,
            Principal,
        )

        auth = BearerTokens({args.auth_token: Principal("cli", frozenset({"admin"}))})
    # Served alone, JobsApp opens the queue from the server's lifespan and drains it on
    # shutdown (after Ctrl-C or SIGTERM, which uvicorn handles).
    config = uvicorn.Config(
        JobsApp(queue, auth=auth),
        host=args.host,
        port=args.port,
        root_path=args.root_path,
        lifespan="on",
        log_level=args.log_level,
        # Open SSE streams and WebSockets would otherwise hold the shutdown forever.
        timeout_graceful_shutdown=args.grace,
    )
    server = uvicorn.Server(config)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"{banner} http://{host}:{args.port}{args.root_path}/", file=sys.stderr, flush=True)
    if getattr(args, "grpc_port", None):
        return _serve_with_grpc(server, queue, auth, args)
    server.run()
    return 0


def _serve_with_grpc(server: Any, queue: Queue, auth: Any, args: argparse.Namespace) -> int:
    """``serve --grpc-port N``: the gRPC WorkerService beside HTTP, on the same queue and
    event loop (uvicorn's lifespan opens the queue; a Claim before that is UNAVAILABLE)."""
    import asyncio

    try:
        from asyncjobs.adapters.grpc import (  # type: ignore[import-not-found]
            start_grpc_server,
        )
    except ImportError as exc:
        raise CliError(
            f"--grpc-port needs the grpc extra ({exc}): pip install 'asyncjobs[grpc]'"
        ) from None

    async def run() -> None:
        grpc_server = await start_grpc_server(queue, host=args.host, port=args.grpc_port, auth=auth)
        print(f"gRPC WorkerService on {args.host}:{args.grpc_port}", file=sys.stderr, flush=True)
        try:
            await server.serve()
        finally:
            await grpc_server.stop(args.grace)

    asyncio.run(run())
    return 0


# ---------------------------------------------------------------------------- commands


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import build_demo_queue

    queue = build_demo_queue(args.store, concurrency=args.concurrency)
    return _serve(queue, args, f"asyncjobs demo ({args.store}): dashboard at")


def cmd_serve(args: argparse.Namespace) -> int:
    queue = load_queue(args.target)
    return _serve(queue, args, f"asyncjobs serving {args.target} at")


def cmd_worker(args: argparse.Namespace) -> int:
    import anyio

    queue = load_queue(args.target)
    if args.url:
        return _remote_worker(queue, args)
    if queue.concurrency < 1:
        raise CliError(
            f"{args.target} has concurrency 0, so it would run no jobs; build the worker's "
            "Queue with concurrency >= 1"
        )
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")

    async def run() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with queue:
                log.warning(
                    "worker running %d slot(s) for %s; SIGTERM or Ctrl-C drains",
                    queue.concurrency,
                    ", ".join(queue.registry.names()) or "no job types",
                )
                async for signum in signals:
                    log.warning(
                        "%s: draining (running jobs get the shutdown grace, then requeue)",
                        signal.Signals(signum).name,
                    )
                    break
        log.warning("worker stopped")

    anyio.run(run)
    return 0


def _remote_worker(queue: Queue, args: argparse.Namespace) -> int:
    """``worker module:queue --url URL``: run the queue's job types against a remote
    JobsApp (no store); SIGTERM or Ctrl-C drains."""
    import anyio

    from .remote import RemoteWorker, RemoteWorkerConfig

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    config = RemoteWorkerConfig(
        concurrency=args.concurrency or max(queue.concurrency, 1),
        lease=args.lease,
        shutdown_grace=queue.worker_config.shutdown_grace,
    )
    worker = RemoteWorker(args.url, queue.registry, token=args.token, config=config)

    async def run() -> None:
        async with anyio.create_task_group() as tg:

            async def on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        log.warning("%s: draining", signal.Signals(signum).name)
                        worker.stop()
                        return

            tg.start_soon(on_signal)
            log.warning(
                "remote worker %s: %d slot(s) for %s against %s; SIGTERM or Ctrl-C drains",
                worker.id,
                config.concurrency,
                ", ".join(worker.types) or "no job types",
                args.url,
            )
            try:
                await worker.run()
            except AsyncJobsError as exc:  # reported by main() after the group unwinds
                failure.append(exc)
            tg.cancel_scope.cancel()
        log.warning("worker stopped")

    failure: list[AsyncJobsError] = []
    anyio.run(run)
    if failure:
        raise failure[0]
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    import anyio

    from .stores import open_store

    async def run() -> None:
        # Every store creates or upgrades its schema when it opens (PostgreSQL under an
        # advisory lock, so concurrent migrations are safe); then it closes again.
        store = open_store(args.store)
        await store.open()
        await store.close()

    anyio.run(run)
    print(f"migrated {args.store}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- parser


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--root-path", default="", help="prefix a proxy serves the app under")
    parser.add_argument(
        "--auth-token",
        default=os.environ.get("ASYNCJOBS_AUTH_TOKEN"),
        help="require this bearer token (admin scope); default $ASYNCJOBS_AUTH_TOKEN",
    )
    parser.add_argument(
        "--grace", type=int, default=5, help="seconds open connections get on shutdown"
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )


def _grpc_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also serve the gRPC WorkerService on this port (needs asyncjobs[grpc])",
    )


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("ASYNCJOBS_URL", DEFAULT_URL),
        help=f"the JobsApp mount URL (default $ASYNCJOBS_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token", default=os.environ.get("ASYNCJOBS_TOKEN"), help="bearer token ($ASYNCJOBS_TOKEN)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``asyncjobs`` argument parser."""
    parser = _Parser(prog="asyncjobs", description="Run and drive asyncjobs queues.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="dashboard + demo job types on 127.0.0.1:8000")
    p.add_argument("--store", default="memory://", help="store URL (default memory://)")
    p.add_argument("--concurrency", type=int, default=3, help="jobs run at once (default 3)")
    _server_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="serve JobsApp for the Queue at module:attr")
    p.add_argument("target", metavar="module:attr")
    _server_options(p)
    _grpc_option(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run workers only for the Queue at module:attr")
    p.add_argument("target", metavar="module:attr")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--url",
        default=None,
        help="run against the JobsApp at this URL (a remote worker: no store needed)",
    )
    p.add_argument(
        "--token", default=os.environ.get("ASYNCJOBS_TOKEN"), help="bearer token (worker scope)"
    )
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
        print(f"asyncjobs: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `asyncjobs ls | head`
        return 0
