"""Run the real ``asyncjobs`` command in a subprocess, as the CLI and dashboard tests do."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Variables the command reads; a developer's own settings must not leak into tests.
_OWN_ENV = ("ASYNCJOBS_URL", "ASYNCJOBS_TOKEN", "ASYNCJOBS_AUTH_TOKEN")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _OWN_ENV}
    env.update(extra or {})
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``python -m asyncjobs ARGS`` to completion; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "asyncjobs", *args],
        capture_output=True,
        text=True,
        env=clean_env(env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


@contextmanager
def cli_server(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    port: int | None = None,
) -> Iterator[str]:
    """Start ``asyncjobs demo|serve ... --port P``, wait until it answers, yield its URL,
    then stop it with SIGINT (as Ctrl-C would) and check that it exits."""
    port = port or free_port()
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", *args, "--port", str(port)],
        cwd=cwd,
        env=clean_env(env),
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"asyncjobs {' '.join(args)} exited with {proc.returncode}")
            try:
                if httpx.get(url + "health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the asyncjobs server did not start within 20 s")
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()  # type: ignore[union-attr]
