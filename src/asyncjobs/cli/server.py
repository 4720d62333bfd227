"""The server verbs of the ``asyncjobs`` command: demo, serve, worker, migrate.

Each opens the store before anything listens, so a store that cannot open is one line
on stderr (exit 4), not a traceback from a server's lifespan. Signal handling lives
here, never in the core: ``worker`` turns the first SIGTERM or SIGINT into a graceful
drain; ``serve`` and ``demo`` leave it to uvicorn.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any

from ..joblog import configure_logging
from .client import EXIT_ERROR, CliError

if TYPE_CHECKING:
    from ..queue import Queue

__all__ = ["cmd_demo", "cmd_migrate", "cmd_serve", "cmd_worker", "load_queue"]

EXIT_USAGE = 64  # sysexits EX_USAGE; 2 means "cancelled" for watch
log = logging.getLogger("asyncjobs.cli")


def load_queue(target: str) -> Queue:
    """Import ``module:attr`` (``attr`` may be dotted) and return the Queue it names.

    ``attr`` may also be a callable taking no arguments that returns a Queue. The current
    directory is importable, as with uvicorn.

    Raises:
        CliError: the module or attribute is missing, or it is not a Queue.
    """
    from ..queue import Queue

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


def _store_error(queue: Queue, exc: Exception) -> CliError:
    detail = " ".join(str(exc).split()) or "no message"
    return CliError(
        f"cannot open the queue's store ({type(queue.store).__name__}): "
        f"{type(exc).__name__}: {detail}",
        EXIT_ERROR,
    )


def _listen(host: str, port: int) -> socket.socket:
    """Bind the listening socket here, so a busy port is one line (uvicorn would exit 1,
    the code ``watch`` gives to a failed job) and ``--port 0`` can name the real port."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = info[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        # Listening now, not when uvicorn starts: a client that reads the banner and
        # connects at once waits in the backlog instead of being refused.
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _auth(token: str | None) -> Any:
    if not token:
        return None
    from asyncjobs.adapters.asgi.auth import (  # type: ignore[import-not-found]
        BearerTokens,
        Principal,
    )

    try:
        return BearerTokens({token: Principal("cli", frozenset({"admin"}))})
    except ValueError as exc:
        raise CliError(f"--auth-token: {exc}", EXIT_USAGE) from None


def _serve(queue: Queue, args: argparse.Namespace, banner: str) -> int:
    try:
        import anyio
        import uvicorn

        # mypy maps src/ only; asyncjobs.adapters lives in adapters/ (setuptools package-dir).
        from asyncjobs.adapters.asgi.app import JobsApp  # type: ignore[import-not-found]
    except ImportError as exc:
        raise CliError(
            f"serving needs the asgi extra ({exc}): pip install 'asyncjobs[cli]'"
        ) from None
    app = JobsApp(queue, auth=_auth(args.auth_token))
    configure_logging(args.log_level, args.log_format)
    sock = _listen(args.host, args.port)
    config = uvicorn.Config(
        app,
        root_path=args.root_path,
        lifespan="on",
        log_level=args.log_level,
        log_config=None,  # our handler (text or JSON) on the root logger formats uvicorn's too
        # Open SSE streams and WebSockets would otherwise hold the shutdown forever.
        timeout_graceful_shutdown=args.grace,
    )
    server = uvicorn.Server(config)
    host = f"[{args.host}]" if ":" in args.host else args.host
    port = sock.getsockname()[1]

    async def run() -> None:
        # The queue is opened here rather than in JobsApp's lifespan, so a store that
        # cannot open is reported as one line; the app sees it open and leaves it be.
        try:
            await queue.__aenter__()
        except Exception as exc:  # the CLI boundary: any driver's connect error
            raise _store_error(queue, exc) from None
        try:
            line = f"{banner} http://{host}:{port}{args.root_path}/"
            if args.log_format == "json":
                log.warning(line, extra={"url": f"http://{host}:{port}{args.root_path}/"})
            else:
                print(line, file=sys.stderr, flush=True)
            if getattr(args, "grpc_port", None):
                await _serve_with_grpc(server, sock, queue, app.auth, args)
            else:
                await server.serve(sockets=[sock])
        finally:
            await queue.aclose()

    try:
        anyio.run(run)
    finally:
        sock.close()
    return 0


async def _serve_with_grpc(
    server: Any, sock: socket.socket, queue: Queue, auth: Any, args: argparse.Namespace
) -> None:
    """``serve --grpc-port N``: the gRPC WorkerService beside HTTP, on the same queue and
    event loop."""
    try:
        from asyncjobs.adapters.grpc import (  # type: ignore[import-not-found]
            start_grpc_server,
        )
    except ImportError as exc:
        raise CliError(
            f"--grpc-port needs the grpc extra ({exc}): pip install 'asyncjobs[grpc]'"
        ) from None
    grpc_server = await start_grpc_server(queue, host=args.host, port=args.grpc_port, auth=auth)
    print(f"gRPC WorkerService on {args.host}:{args.grpc_port}", file=sys.stderr, flush=True)
    try:
        await server.serve(sockets=[sock])
    finally:
        await grpc_server.stop(args.grace)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import build_demo_queue

    queue = build_demo_queue(args.store, concurrency=args.concurrency)
    return _serve(queue, args, f"asyncjobs demo ({args.store}): dashboard at")


def cmd_serve(args: argparse.Namespace) -> int:
    queue = load_queue(args.target)
    return _serve(queue, args, f"asyncjobs serving {args.target} at")


def cmd_worker(args: argparse.Namespace) -> int:
    import anyio

    queue = load_queue(args.target)
    if getattr(args, "remote_url", None):
        return _remote_worker(queue, args)
    if queue.concurrency < 1:
        raise CliError(
            f"{args.target} has concurrency 0, so it would run no jobs; build the worker's "
            "Queue with concurrency >= 1"
        )
    configure_logging(args.log_level, args.log_format)

    async def run() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            try:
                await queue.__aenter__()
            except Exception as exc:  # the CLI boundary: any driver's connect error
                raise _store_error(queue, exc) from None
            try:
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
            finally:
                await queue.aclose()
        log.warning("worker stopped")

    anyio.run(run)
    return 0


def _remote_worker(queue: Queue, args: argparse.Namespace) -> int:
    """``worker module:queue --url URL``: run the queue's job types against a remote
    JobsApp (no store); SIGTERM or Ctrl-C drains."""
    import anyio

    from ..errors import AsyncJobsError
    from ..remote import RemoteWorker, RemoteWorkerConfig

    configure_logging(args.log_level, args.log_format)
    config = RemoteWorkerConfig(
        concurrency=args.concurrency or max(queue.concurrency, 1),
        lease=args.lease,
        shutdown_grace=queue.worker_config.shutdown_grace,
    )
    worker = RemoteWorker(args.remote_url, queue.registry, token=args.token, config=config)
    failure: list[AsyncJobsError] = []

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
                args.remote_url,
            )
            try:
                await worker.run()
            except AsyncJobsError as exc:  # reported by main() after the group unwinds
                failure.append(exc)
            tg.cancel_scope.cancel()
        log.warning("worker stopped")

    anyio.run(run)
    if failure:
        raise failure[0]
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    import anyio

    from ..stores import open_store

    async def run() -> None:
        # Every store creates or upgrades its schema when it opens (PostgreSQL under an
        # advisory lock, so concurrent migrations are safe); then it closes again.
        store = open_store(args.store)
        try:
            await store.open()
        except Exception as exc:  # the CLI boundary: any driver's connect error
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise CliError(f"cannot open the store {args.store}: {detail}") from None
        await store.close()

    anyio.run(run)
    print(f"migrated {args.store}", file=sys.stderr)
    return 0
