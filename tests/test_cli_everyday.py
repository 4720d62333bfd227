"""The ``asyncjobs`` command in daily use: version, global options, one-line failures with
their documented exit codes, watch timing and Ctrl-C, completion, JSON logs."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import asyncjobs
from cli_server import clean_env, cli_server, free_port, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    with cli_server(["demo"]) as url:
        yield url


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert lines[0].startswith("asyncjobs: ")
    return lines[0]


def test_version() -> None:
    done = run_cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"asyncjobs {asyncjobs.__version__}"


@pytest.mark.parametrize("before", [True, False])
def test_url_and_token_before_or_after_the_verb(demo_url: str, before: bool) -> None:
    opts = ["--url", demo_url, "--token", "ignored-by-an-open-server"]
    args = [*opts, "ls", "--limit", "1"] if before else ["ls", "--limit", "1", *opts]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr


def test_a_store_that_cannot_open_is_one_line_exit_4(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/missing-dir/jobs.db"
    done = run_cli("demo", "--store", store, "--port", str(free_port()))
    assert done.returncode == 4
    assert "cannot open the queue's store" in one_line_error(done)


def test_a_short_auth_token_is_one_line_exit_64() -> None:
    done = run_cli("demo", "--auth-token", "short", "--port", str(free_port()))
    assert done.returncode == 64
    assert "--auth-token" in one_line_error(done)


def test_a_busy_port_is_one_line_exit_4() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        done = run_cli("demo", "--port", str(busy.getsockname()[1]))
    assert done.returncode == 4
    assert "cannot listen on 127.0.0.1" in one_line_error(done)


def test_an_unreachable_server_is_one_line_exit_4() -> None:
    done = run_cli("--url", f"http://127.0.0.1:{free_port()}/", "get", "01" + "A" * 24)
    assert done.returncode == 4
    assert "cannot reach the asyncjobs server" in one_line_error(done)


def test_watch_shows_elapsed_time_and_an_eta(demo_url: str) -> None:
    job = run_cli("submit", "countdown", "-p", "seconds=3", "--url", demo_url).stdout.strip()
    done = run_cli("watch", job, "--url", demo_url)
    assert done.returncode == 0, done.stderr
    running = [line for line in done.stdout.splitlines() if line.startswith("running")]
    assert any("elapsed 0:0" in line and "ETA 0:0" in line for line in running), done.stdout


def test_watch_ends_cleanly_on_ctrl_c(demo_url: str) -> None:
    job = run_cli("submit", "countdown", "-p", "seconds=60", "--url", demo_url).stdout.strip()
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "watch", job, "--url", demo_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline()  # it is following the stream
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert f"stopped watching {job}" in out
    run_cli("cancel", job, "--url", demo_url)


def test_shell_completion_script() -> None:
    done = run_cli("--print-completion", "bash")
    assert done.returncode == 0, done.stderr
    assert "submit" in done.stdout and "complete" in done.stdout


def test_demo_logs_job_lines_as_json(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    with cli_server(["demo", "--log-format", "json"], log=log) as url:
        job = run_cli("submit", "echo", "--json", '{"delay": 0}', "--url", url).stdout.strip()
        deadline = time.monotonic() + 20
        records: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            lines = log.read_text().splitlines()
            records = [json.loads(line) for line in lines if line.startswith("{")]
            if any(r.get("job_id") == job and r.get("status") == "completed" for r in records):
                break
            time.sleep(0.2)
    assert all(line.startswith("{") for line in log.read_text().splitlines() if line.strip())
    done = next(r for r in records if r.get("job_id") == job and r.get("status") == "completed")
    assert done["level"] == "INFO"
    assert done["job_type"] == "echo" and done["attempt"] == 1
    assert isinstance(done["duration"], float)
