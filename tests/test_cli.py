"""The ``asyncjobs`` command, run for real: servers and clients in subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli_server import clean_env, cli_server, free_port, run_cli

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token-for-tests"

JOBS_MODULE = textwrap.dedent(
    """
    import os

    import anyio
    from asyncjobs import JobContext, Queue

    queue = Queue(os.environ.get("JOBS_STORE", "memory://"), concurrency=2)

    @queue.job_type("boom", max_attempts=1)
    async def boom(ctx: JobContext, params: dict) -> None:
        raise RuntimeError("kaboom: " + params.get("why", "no reason"))

    @queue.job_type("slow", max_attempts=1)
    async def slow(ctx: JobContext, params: dict) -> dict:
        await ctx.progress(0.5, "half way")
        await anyio.sleep(params.get("seconds", 1))
        return {"slept": params.get("seconds", 1)}

    # A web process in front of separate workers: same types, runs nothing itself.
    web = Queue(os.environ.get("JOBS_STORE", "memory://"), concurrency=0,
                registry=queue.registry)

    def make_queue() -> Queue:
        return queue

    not_a_queue = 42
    """
)


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    with cli_server(["demo", "--concurrency", "4"]) as url:
        yield url


@pytest.fixture(scope="module")
def jobs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jobsmod")
    (path / "jobsmod.py").write_text(JOBS_MODULE)
    return path


def submit(url: str, *args: str) -> str:
    done = run_cli("submit", *args, "--url", url)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert len(job_id) == 26
    return job_id


def test_submit_then_watch_exits_0_with_the_result(demo_url: str) -> None:
    job_id = submit(demo_url, "countdown", "--param", "seconds=2")
    watched = run_cli("watch", job_id, "--url", demo_url)
    assert watched.returncode == 0, watched.stderr
    # Depending on how fast the watcher starts it sees progress lines or only the end.
    assert watched.stdout.splitlines()[-1] == 'completed: {"counted": 2}'


def test_submit_json_with_watch_and_env_url(demo_url: str) -> None:
    done = run_cli(
        "submit",
        "echo",
        "--json",
        '{"message": "hi there", "delay": 0}',
        "--watch",
        env={"ASYNCJOBS_URL": demo_url},
    )
    assert done.returncode == 0, done.stderr
    assert 'completed: {"message": "hi there"}' in done.stderr


def test_param_values_follow_the_schema_types(demo_url: str) -> None:
    # message is a string field: "123" must stay text; delay is a number.
    job_id = submit(demo_url, "echo", "-p", "message=123", "-p", "delay=0.5")
    shown = run_cli("get", job_id, "--url", demo_url)
    assert shown.returncode == 0, shown.stderr
    job = json.loads(shown.stdout)
    assert job["params"] == {"message": "123", "delay": 0.5}


def test_cancel_ends_watch_with_exit_2(demo_url: str) -> None:
    job_id = submit(demo_url, "countdown", "-p", "seconds=60")
    watcher = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "watch", job_id, "--url", demo_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert watcher.stdout is not None
        first = watcher.stdout.readline()  # the snapshot: the watch is attached
        assert first.split()[0] in {"queued", "running"}
        cancelled = run_cli("cancel", job_id, "--url", demo_url)
        assert cancelled.returncode == 0, cancelled.stderr
        assert job_id in cancelled.stdout
        rest, err = watcher.communicate(timeout=20)
    finally:
        watcher.kill()
    assert watcher.returncode == 2, err
    assert rest.splitlines()[-1] == "cancelled"
    again = run_cli("cancel", job_id, "--url", demo_url)
    assert again.returncode == 4
    assert "cannot go from 'cancelled'" in again.stderr


def test_ls_filters_by_status_and_prints_a_table(demo_url: str) -> None:
    job_id = submit(demo_url, "echo", "-p", "delay=0")
    assert run_cli("watch", job_id, "--url", demo_url).returncode == 0
    listed = run_cli("ls", "--status", "completed", "--url", demo_url)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:3] == ["ID", "STATUS", "TYPE"]
    assert any(row.startswith(job_id) for row in rows)
    assert all(row.split()[1] == "completed" for row in rows if not row.startswith("("))
    raw = run_cli("ls", "--status", "running", "--type", "echo", "--output-json", "--url", demo_url)
    assert raw.returncode == 0
    assert all(j["status"] == "running" for j in json.loads(raw.stdout)["jobs"])


def test_invalid_params_name_the_field(demo_url: str) -> None:
    done = run_cli("submit", "countdown", "-p", "seconds=0", "--url", demo_url)
    assert done.returncode == 4
    assert "seconds:" in done.stderr
    unknown = run_cli("submit", "nope", "--url", demo_url)
    assert unknown.returncode == 4
    assert "unknown job type 'nope'" in unknown.stderr
    bad_json = run_cli("submit", "echo", "--json", "{not json", "--url", demo_url)
    assert bad_json.returncode == 4
    assert "--json is not valid JSON" in bad_json.stderr


def test_unknown_id_is_a_clear_error(demo_url: str) -> None:
    for verb in ("get", "watch", "cancel"):
        done = run_cli(verb, "01ZZZZZZZZZZZZZZZZZZZZZZZZ", "--url", demo_url)
        assert done.returncode == 4, (verb, done.stderr)
        assert done.stderr.startswith("asyncjobs: unknown job id"), done.stderr
        assert "Traceback" not in done.stderr


def test_unreachable_server_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    done = run_cli("ls", "--url", url)
    assert done.returncode == 4
    assert f"cannot reach the asyncjobs server at {url}" in done.stderr
    assert "Traceback" not in done.stderr


def test_usage_errors_exit_64() -> None:
    done = run_cli("submit")
    assert done.returncode == 64
    assert "usage:" in done.stderr
    helped = run_cli("--help")
    assert helped.returncode == 0
    for verb in ("demo", "serve", "worker", "migrate", "submit", "ls", "get", "cancel", "watch"):
        assert verb in helped.stdout


def test_auth_token_is_required_and_honoured() -> None:
    port_args = ["demo", "--auth-token", TOKEN]
    with cli_server(port_args) as url:
        missing = run_cli("ls", "--url", url)
        assert missing.returncode == 4
        assert "the server requires a token (401)" in missing.stderr
        wrong = run_cli("ls", "--url", url, "--token", "wrong-token-123")
        assert "the token was refused (401)" in wrong.stderr
        ok = run_cli("ls", "--url", url, env={"ASYNCJOBS_TOKEN": TOKEN})
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.strip() == "no jobs"


def test_serve_user_queue_and_watch_a_failure(jobs_dir: Path) -> None:
    with cli_server(["serve", "jobsmod:queue"], cwd=jobs_dir) as url:
        job_id = submit(url, "boom", "-p", "why=testing")
        watched = run_cli("watch", job_id, "--url", url)
        assert watched.returncode == 1
        assert watched.stdout.splitlines()[-1] == "failed: RuntimeError: kaboom: testing"
        types = httpx.get(url + "job-types").json()["job_types"]
        assert sorted(t["name"] for t in types) == ["boom", "slow"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("jobsmod", "expected module:attr"),
        ("missing_mod:queue", "cannot import module 'missing_mod'"),
        ("jobsmod:nope", "has no attribute 'nope'"),
        ("jobsmod:not_a_queue", "is a int, not an asyncjobs.Queue"),
    ],
)
def test_serve_target_errors(jobs_dir: Path, target: str, message: str) -> None:
    done = run_cli("serve", target, "--port", str(free_port()), cwd=jobs_dir)
    assert done.returncode == 4
    assert message in done.stderr


def test_worker_drains_on_sigterm(jobs_dir: Path, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'jobs.db'}"
    migrated = run_cli("migrate", "--store", store)
    assert migrated.returncode == 0, migrated.stderr
    worker = subprocess.Popen(
        [sys.executable, "-m", "asyncjobs", "worker", "jobsmod:make_queue"],
        cwd=jobs_dir,
        env=clean_env({"JOBS_STORE": store}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # The web process runs no jobs (concurrency 0); the worker process runs them.
        with cli_server(["serve", "jobsmod:web"], cwd=jobs_dir, env={"JOBS_STORE": store}) as url:
            job_id = submit(url, "slow", "--json", '{"seconds": 2}')
            job = _poll(url, job_id, lambda j: j["status"] == "running")
            worker.send_signal(signal.SIGTERM)
            out, _ = worker.communicate(timeout=20)
            assert worker.returncode == 0, out
            assert "SIGTERM: draining" in out
            # The drain let the running job finish rather than abandon it.
            job = _poll(url, job_id, lambda j: j["status"] != "running")
            assert job["status"] == "completed"
            assert job["result"] == {"slept": 2}
    finally:
        worker.kill()
        worker.wait()


def test_worker_refuses_a_queue_without_slots(jobs_dir: Path) -> None:
    done = run_cli("worker", "jobsmod:web", cwd=jobs_dir)
    assert done.returncode == 4
    assert "concurrency 0" in done.stderr


def test_migrate_reports_a_bad_store_url() -> None:
    done = run_cli("migrate", "--store", "nosuch://x")
    assert done.returncode == 4
    assert "unknown store scheme 'nosuch'" in done.stderr


def test_import_asyncjobs_loads_no_web_or_http_library() -> None:
    code = (
        "import sys, asyncjobs, asyncjobs.cli, asyncjobs.demo; "
        "print(sorted(m for m in ('uvicorn', 'starlette', 'httpx', 'httpx_sse')"
        " if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout.strip() == "[]"


def _poll(url: str, job_id: str, done: object, timeout: float = 15.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, object] = httpx.get(f"{url}jobs/{job_id}", timeout=5).json()
        if done(job):  # type: ignore[operator]
            return job
        assert time.monotonic() < deadline, f"job stayed {job['status']}"
        time.sleep(0.1)
