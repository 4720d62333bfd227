"""Private database servers for tests that stop or restart one.

The machine's shared PostgreSQL and Redis serve every other test (and every other
developer's run at the same moment), so a test that restarts a server starts its own:
``initdb`` into a temporary directory on a free port, or a second ``redis-server``.
Both are context managers that stop their server and remove its files on exit, pass or
fail. A missing binary skips locally and fails under ``ASYNCJOBS_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import final

import pytest

REQUIRE_SERVICES = os.environ.get("ASYNCJOBS_REQUIRE_SERVICES") == "1"

__all__ = ["OwnPostgres", "OwnRedis", "free_port", "own_postgres", "own_redis"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unavailable(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason}; ASYNCJOBS_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(reason)


def _pg_bindir() -> Path | None:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


def _wait_port(port: int, *, up: bool, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                is_up = True
        except OSError:
            is_up = False
        if is_up == up:
            return
        if time.monotonic() > deadline:
            state = "accept" if up else "refuse"
            raise RuntimeError(f"port {port} did not {state} connections within {timeout:g}s")
        time.sleep(0.05)


@final
class OwnPostgres:
    """A throwaway PostgreSQL cluster (trust auth, user ``postgres``, database ``test``)."""

    def __init__(self, bindir: Path, root: Path, port: int) -> None:
        self.bindir = bindir
        self.data = root / "data"
        self.port = port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/test"
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            [*self._as_postgres, *args],
            check=True,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def init(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        self.start()
        self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "test")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c fsync=off"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-w", "start")
        _wait_port(self.port, up=True)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: terminate every connection; ``immediate``: crash)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")
        _wait_port(self.port, up=False)

    def restart(self, *, down_for: float = 0.0) -> None:
        """Stop (every connection is cut), stay down ``down_for`` seconds, start again."""
        self.stop()
        time.sleep(down_for)
        self.start()


@contextlib.contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    """A private PostgreSQL server on a free port, removed on exit."""
    bindir = _pg_bindir()
    if bindir is None or (shutil.which("runuser") is None and os.geteuid() == 0):
        _unavailable("a private PostgreSQL server needs /usr/lib/postgresql/*/bin/initdb")
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="asyncjobs-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root; the cluster belongs to postgres
        shutil.chown(root, "postgres", "postgres")
    server = OwnPostgres(bindir, root, free_port())
    try:
        server.init()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@final
class OwnRedis:
    """A throwaway ``redis-server`` with AOF on (``appendfsync always``), so a restart
    keeps everything it acknowledged."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.root), "--appendonly", "yes", "--appendfsync", "always",
                "--save", "", "--logfile", str(self.root / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_port(self.port, up=True)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM (it finishes writing the AOF) or SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if kill:
            proc.kill()
        else:
            proc.terminate()
        proc.wait(timeout=30)
        _wait_port(self.port, up=False)

    def restart(self, *, down_for: float = 0.0, kill: bool = False) -> None:
        self.stop(kill=kill)
        time.sleep(down_for)
        self.start()


@contextlib.contextmanager
def own_redis() -> Iterator[OwnRedis]:
    """A private Redis server on a free port, removed on exit."""
    if shutil.which("redis-server") is None:
        _unavailable("a private Redis server needs redis-server on PATH")
    root = Path(tempfile.mkdtemp(prefix="asyncjobs-redis-"))
    server = OwnRedis(root, free_port())
    try:
        server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop(kill=True)
        shutil.rmtree(root, ignore_errors=True)
