"""Every recipe of docs/mounting.md, run as written: saved under its file name, served by a
real server process (uvicorn, and hypercorn where the page says so), driven through the
prefix. A block is a recipe when the line before it is ``<!-- recipe: NAME FILE -->``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from cli_server import clean_env, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

PAGE = Path(__file__).resolve().parents[2] / "docs" / "mounting.md"
_RECIPE = re.compile(
    r"^<!-- recipe: (?P<name>[\w-]+) (?P<file>[\w/.]+) -->\n```python\n(?P<body>.*?)^```",
    re.MULTILINE | re.DOTALL,
)
RECIPES = {m["name"]: (m["file"], m["body"]) for m in _RECIPE.finditer(PAGE.read_text())}

# Django needs a settings module; that file is the user's own project, not the recipe.
DJANGO_SETTINGS = """
SECRET_KEY = "recipe-test-only"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "mysite.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
"""
DJANGO_URLS = """
from django.http import HttpResponse
from django.urls import path

urlpatterns = [path("hello", lambda request: HttpResponse("hello from django"))]
"""
TOKEN = "change-me-please"  # the stand-alone recipe's token


def uvicorn(target: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", target, "--port", "{port}"]


def hypercorn(target: str) -> list[str]:
    return [sys.executable, "-m", "hypercorn", target, "--bind", "127.0.0.1:{port}"]


#: recipe -> how the page says to serve it, and the prefix it mounts under.
SERVED = [
    ("fastapi", uvicorn("app:app"), "/queue"),
    ("fastapi-lifespan", uvicorn("app:app"), "/queue"),
    ("starlette", uvicorn("app:app"), "/queue"),
    ("litestar", uvicorn("app:app"), "/queue"),
    ("django", uvicorn("mysite.asgi:application"), "/queue"),
    ("quart", uvicorn("app:app"), "/queue"),
    ("quart", hypercorn("app:app"), "/queue"),
    ("alone", uvicorn("service:app"), ""),
    ("alone", hypercorn("service:app"), ""),
]


def test_every_python_block_of_the_page_is_a_recipe() -> None:
    blocks = len(re.findall(r"^```python$", PAGE.read_text(), re.MULTILINE))
    assert blocks == len(RECIPES) >= 8
    assert {name for name, _, _ in SERVED} | {"jobs"} == set(RECIPES)


@contextmanager
def serving(tmp_path: Path, name: str, command: list[str]) -> Iterator[str]:
    for recipe in ("jobs", name):
        file, body = RECIPES[recipe]
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file).write_text(body)
    if name == "django":
        (tmp_path / "mysite" / "__init__.py").write_text("")
        (tmp_path / "mysite" / "settings.py").write_text(DJANGO_SETTINGS)
        (tmp_path / "mysite" / "urls.py").write_text(DJANGO_URLS)
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [part.format(port=port) for part in command],
        cwd=tmp_path,
        env=clean_env({"PYTHONPATH": str(tmp_path)}),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(base, timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise AssertionError(
                        f"{name} did not start:\n{(tmp_path / 'server.log').read_text()}"
                    ) from None
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.parametrize(
    ("name", "command", "prefix"),
    SERVED,
    ids=[f"{name}-{command[2]}" for name, command, _ in SERVED],
)
def test_recipe_runs_as_written(tmp_path: Path, name: str, command: list[str], prefix: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"} if name == "alone" else {}
    with serving(tmp_path, name, command) as base:
        with httpx.Client(base_url=base, headers=headers, timeout=15) as client:
            # The host's lifespan started the queue: the countdown runs to its end.
            done = client.post(
                f"{prefix}/jobs?wait=10", json={"type": "countdown", "params": {"seconds": 1}}
            )
            assert done.status_code == 200, done.text
            assert done.json()["result"] == {"counted": 1}
            assert done.headers["location"] == f"{prefix}/jobs/{done.json()['id']}"
            index = client.get(f"{prefix}/")
            assert index.status_code == 200 and "text/html" in index.headers["content-type"]
            if name == "django":  # the rest still goes to Django
                assert client.get("/hello").text == "hello from django"
        ws_url = base.replace("http", "ws") + f"{prefix}/ws"
        if name == "alone":
            ws_url += f"?access_token={TOKEN}"
        with connect(ws_url, origin=base, open_timeout=10) as ws:  # type: ignore[arg-type]
            assert json.loads(ws.recv(timeout=10))["type"] == "queue_state"
