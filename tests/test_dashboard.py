"""The dashboard in a real headless Chromium (Debian's), against a real server process.

Every test fails on a console error or an uncaught page error (except the ones a test
provokes on purpose, such as a refused connection while the server is down).
Screenshots go to a temporary directory; with ASYNCJOBS_UPDATE_DOCS_IMG=1 the first test
also refreshes docs/img/dashboard.png, the picture in docs/dashboard.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli_server import cli_server, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CHROMIUM = "/usr/bin/chromium"
DOCS_IMG = Path(__file__).parent.parent / "docs" / "img" / "dashboard.png"
TOKEN = "dashboard-test-token"
VISIBLE_ROWS = "document.querySelectorAll('#job-rows tr:not([hidden])')"
HOSTILE = "<img src=x onerror=window.__xss=1><script>window.__xss=2</script>"

# The demo types plus one whose rule the JSON Schema cannot express, so only the
# server can reject it: the dashboard must show that 422 next to the field.
DASH_MODULE = textwrap.dedent(
    """
    import attrs
    from asyncjobs import Backoff, JobContext
    from asyncjobs.demo import build_demo_queue

    queue = build_demo_queue(concurrency=4)

    def _even(instance, attribute, value):
        if value % 2:
            raise ValueError("must be an even number")

    @attrs.frozen
    class EvenParams:
        n: int = attrs.field(default=2, validator=_even,
                             metadata={"description": "An even number."})

    @queue.job_type("even", max_attempts=1)
    async def even(ctx: JobContext, params: EvenParams) -> dict:
        return {"half": params.n // 2}

    @queue.job_type("flaky", max_attempts=2, backoff=Backoff(base=0.2, jitter=0))
    async def flaky(ctx: JobContext, params: dict) -> None:
        raise ValueError(f"attempt {ctx.attempt} failed: " + "a long line " * 30)
    """
)


def _need_browser() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        message = "playwright is not installed (pip install 'asyncjobs[test]')"
    else:
        if os.path.exists(CHROMIUM):
            return sync_playwright
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
    if os.environ.get("ASYNCJOBS_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _need_browser()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("dash")
    (path / "dashmod.py").write_text(DASH_MODULE)
    with cli_server(["serve", "dashmod:queue"], cwd=path) as url:
        yield url


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


class Console:
    """Console errors and page errors seen by one page; ``allow`` lists expected ones."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        self.allow: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(re.search(a, e) for a in self.allow)]


@pytest.fixture
def page(browser: Any) -> Iterator[tuple[Any, Console]]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    console = Console(page)
    yield page, console
    context.close()
    assert console.unexpected() == []


def open_dashboard(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector(".conn[data-state=live]")
    page.wait_for_selector("#type-select option", state="attached")


def row(page: Any, job_id: str) -> Any:
    return page.locator(f'tr[data-id="{job_id}"]')


def pct_of(page: Any, job_id: str) -> int:
    return int(row(page, job_id).locator(".prog-pct").inner_text().rstrip("%"))


def wait_pct_above(page: Any, job_id: str, floor: int) -> int:
    page.wait_for_function(
        """([id, floor]) => {
            const cell = document.querySelector(`tr[data-id="${id}"] .prog-pct`);
            return cell && parseInt(cell.textContent, 10) > floor;
        }""",
        arg=[job_id, floor],
    )
    return pct_of(page, job_id)


def rest_submit(url: str, body: dict[str, Any], token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(url + "jobs", json=body, headers=headers, timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_create_from_form_watch_progress_then_cancel(
    page: tuple[Any, Console], server: str, shots: Path
) -> None:
    pg, _ = page
    # Some finished jobs first, so the screenshot shows a realistic table.
    for body in (
        {"type": "fibonacci", "params": {"terms": 10}},
        {"type": "prime", "params": {"limit": 300000}},
        {"type": "echo", "params": {"message": "hello", "delay": 0.2}},
    ):
        rest_submit(server, body)
    open_dashboard(pg, server)

    pg.select_option("#type-select", "countdown")
    seconds = pg.locator("#param-seconds")
    assert seconds.get_attribute("min") == "1"
    assert seconds.input_value() == "10"  # the schema's default
    assert "How many seconds" in pg.locator('.field[data-field="seconds"] .help').inner_text()
    seconds.fill("30")
    pg.click("#create-submit")

    pg.wait_for_selector("#detail:not([hidden])")
    job_id = pg.locator("#detail-id").inner_text()
    assert re.fullmatch(r"[0-9A-Z]{26}", job_id)
    assert row(pg, job_id).locator(".badge").inner_text() in {"queued", "running"}
    first = wait_pct_above(pg, job_id, 0)
    later = wait_pct_above(pg, job_id, first)  # it keeps advancing without a reload
    assert later > first
    assert "s left" in row(pg, job_id).locator(".prog-msg").inner_text()
    pg.wait_for_selector('#timeline li[data-kind="job_progress"]')
    pg.screenshot(path=str(shots / "running.png"))
    if os.environ.get("ASYNCJOBS_UPDATE_DOCS_IMG") == "1":  # keep test runs read-only
        DOCS_IMG.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shots / "running.png", DOCS_IMG)

    row(pg, job_id).get_by_role("button", name="Cancel").click()
    pg.wait_for_function(
        """(id) => document.querySelector(`tr[data-id="${id}"] .badge`).textContent
                   === "cancelled" """,
        arg=job_id,
    )
    assert pg.locator("#detail-badge").inner_text() == "cancelled"
    pg.wait_for_selector('#timeline li[data-kind="job_cancelled"]')
    assert row(pg, job_id).get_by_role("button", name="Cancel").is_hidden()
    assert int(pg.locator('.counter[data-status="cancelled"] b').inner_text()) >= 1
    pg.screenshot(path=str(shots / "cancelled.png"))


def test_form_checks_in_the_browser_and_shows_server_field_errors(
    page: tuple[Any, Console], server: str, shots: Path
) -> None:
    pg, console = page
    open_dashboard(pg, server)
    total_before = pg.locator('.counter[data-status="total"] b').inner_text()

    pg.select_option("#type-select", "countdown")
    pg.fill("#param-seconds", "0")
    pg.click("#create-submit")
    error = pg.locator('.field[data-field="seconds"] .field-error')
    assert error.inner_text() == "must be ≥ 1"
    pg.fill("#param-seconds", "2.5")
    pg.click("#create-submit")
    assert error.inner_text() == "enter a whole number"
    assert pg.locator('.counter[data-status="total"] b').inner_text() == total_before

    # The schema cannot say "even": the browser lets 3 through and the server's 422
    # field error lands next to the field.
    pg.select_option("#type-select", "even")
    pg.fill("#param-n", "3")
    pg.click("#create-submit")
    server_error = pg.locator('.field[data-field="n"] .field-error')
    server_error.wait_for()
    assert server_error.inner_text() == "must be an even number"
    pg.screenshot(path=str(shots / "field-error.png"))
    pg.fill("#param-n", "4")
    pg.click("#create-submit")
    pg.wait_for_function("() => document.querySelector('#detail-title').textContent === 'even'")
    assert server_error.is_hidden()
    assert console.errors == []  # commands go over the WebSocket: no failed fetches


def test_rest_job_appears_live_and_hostile_params_stay_text(
    page: tuple[Any, Console], server: str, shots: Path
) -> None:
    pg, _ = page
    open_dashboard(pg, server)
    job_id = rest_submit(server, {"type": "echo", "params": {"message": HOSTILE, "delay": 0.5}})
    line = row(pg, job_id)
    line.wait_for()  # no reload: the WebSocket event added it
    pg.wait_for_function(
        """(id) => document.querySelector(`tr[data-id="${id}"] .badge`).textContent
                   === "completed" """,
        arg=job_id,
    )
    line.click()
    pg.wait_for_selector("#detail-result-box:not([hidden])")
    assert HOSTILE in pg.locator("#detail-params").inner_text()
    assert HOSTILE in pg.locator("#detail-result").inner_text()
    assert pg.evaluate("() => document.querySelectorAll('img').length") == 0
    assert pg.evaluate("() => window.__xss") is None

    # Search by id (any part of it) narrows the table to that job.
    # The table re-renders on the next animation frame: wait for it, do not sample.
    pg.fill("#search", job_id[-8:].lower())
    pg.wait_for_function(f"() => {VISIBLE_ROWS}.length === 1")
    visible = pg.locator("#job-rows tr:not([hidden])")
    assert visible.get_attribute("data-id") == job_id
    pg.fill("#search", "")
    pg.select_option("#filter-status", "completed")
    pg.wait_for_function(
        f"() => {VISIBLE_ROWS}.length >= 1"
        f" && [...{VISIBLE_ROWS}].every(r => r.dataset.status === 'completed')"
    )
    pg.screenshot(path=str(shots / "hostile.png"))


BADGE_IS = "(s) => document.querySelector('#detail-badge').textContent === s"


def test_retry_resubmits_the_same_params_and_clear_finished(
    page: tuple[Any, Console], server: str
) -> None:
    pg, _ = page
    job_id = rest_submit(server, {"type": "fibonacci", "params": {"terms": 3}})
    pg.goto(f"{server}#job={job_id}")  # a link straight to one job
    pg.wait_for_selector(".conn[data-state=live]")
    pg.wait_for_function(
        "() => document.querySelector('#detail-badge').textContent === 'completed'"
    )
    pg.click("#detail-retry")
    pg.wait_for_function(
        "(id) => document.querySelector('#detail-id').textContent !== id", arg=job_id
    )
    new_id = pg.locator("#detail-id").inner_text()
    job = httpx.get(f"{server}jobs/{new_id}").json()
    assert job["type"] == "fibonacci"
    assert job["params"] == {"terms": 3}

    pg.wait_for_function(
        "() => document.querySelector('#detail-badge').textContent === 'completed'"
    )
    # It asks first: dismissed, nothing is deleted; accepted, the finished jobs go.
    asked: list[str] = []
    pg.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    pg.click("#clear-finished")
    pg.wait_for_timeout(300)
    assert asked and "cannot be undone" in asked[0]
    assert httpx.get(f"{server}jobs/{new_id}").status_code == 200
    pg.once("dialog", lambda d: d.accept())
    pg.click("#clear-finished")
    pg.wait_for_function(
        "() => ![...document.querySelectorAll('#job-rows tr:not([hidden])')]"
        ".some(r => ['completed', 'failed', 'cancelled'].includes(r.dataset.status))"
    )
    assert httpx.get(f"{server}jobs/{new_id}").status_code == 404
    assert pg.locator('.counter[data-status="completed"] b').inner_text() == "0"


def test_reconnects_with_backoff_and_reloads_state(browser: Any, shots: Path) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(20_000)
    pg = context.new_page()
    console = Console(pg)
    # The page tries to reach the server while it is down: those failures are expected.
    console.allow = [r"ERR_CONNECTION_REFUSED", r"WebSocket connection to .* failed"]
    port = free_port()
    try:
        with cli_server(["demo"], port=port) as url:
            old = rest_submit(url, {"type": "echo", "params": {"delay": 0}})
            open_dashboard(pg, url)
            row(pg, old).wait_for()
        pg.wait_for_selector(".conn[data-state=reconnecting]")
        assert "offline" in pg.locator("#conn-text").inner_text() or "reconnecting" in (
            pg.locator("#conn-text").inner_text()
        )
        with cli_server(["demo"], port=port) as url:
            pg.wait_for_selector(".conn[data-state=live]")
            # A fresh memory store: the reload after reconnecting dropped the old job.
            row(pg, old).wait_for(state="hidden")
            new = rest_submit(url, {"type": "echo", "params": {"delay": 0}})
            row(pg, new).wait_for()
            pg.screenshot(path=str(shots / "reconnected.png"))
    finally:
        context.close()
    assert console.unexpected() == []


def test_token_field_when_auth_is_on(browser: Any, shots: Path) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(15_000)
    pg = context.new_page()
    console = Console(pg)
    # The first, tokenless requests are refused; so is the first WebSocket.
    console.allow = [r"status of 401", r"WebSocket connection to .* failed"]
    try:
        with cli_server(["demo", "--auth-token", TOKEN]) as url:
            pg.goto(url)
            pg.wait_for_selector("#token-form:not([hidden])")
            pg.wait_for_selector(".conn[data-state=auth]")
            assert "requires an access token" in pg.locator("#auth-banner").inner_text()
            pg.screenshot(path=str(shots / "token.png"))
            pg.fill("#token-input", TOKEN)
            pg.click("#token-form button")
            pg.wait_for_selector(".conn[data-state=live]")
            pg.wait_for_selector("#type-select option", state="attached")
            assert pg.locator("#auth-banner").is_hidden()
            pg.select_option("#type-select", "echo")
            pg.fill("#param-delay", "0")
            pg.click("#create-submit")
            pg.wait_for_function(
                "() => document.querySelector('#detail-badge').textContent === 'completed'"
            )
    finally:
        context.close()
    assert console.unexpected() == []


def test_page_never_writes_markup_from_data() -> None:
    static = Path(__file__).parent.parent / "adapters" / "asgi" / "static"
    script = (static / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script
    for name in ("index.html", "app.js", "style.css"):
        text = (static / name).read_text()
        assert "http://" not in text, f"{name} must work offline"
        assert "https://" not in text, f"{name} must work offline"


def test_dashboard_runs_under_its_content_security_policy(
    page: tuple[Any, Console], server: str
) -> None:
    pg, _ = page
    response = httpx.get(server, timeout=10)
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["x-frame-options"] == "DENY"
    pg.add_init_script(
        "window.__csp = [];"
        "document.addEventListener('securitypolicyviolation',"
        " (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    open_dashboard(pg, server)  # live over the WebSocket: connect-src 'self' covers ws:
    pg.select_option("#type-select", "echo")
    pg.click("#create-submit")  # a same-origin POST with Content-Type: application/json
    pg.wait_for_selector("#detail:not([hidden])")
    job_id = pg.locator("#detail-id").inner_text()
    pg.wait_for_function(
        """(id) => document.querySelector(`tr[data-id="${id}"] .badge`).textContent
                   === "completed" """,
        arg=job_id,
    )
    assert pg.evaluate("window.__csp") == []


# ---------------------------------------------------------------------------- usability


def test_dark_mode_follows_the_system(browser: Any, server: str, shots: Path) -> None:
    luminance = {}
    for scheme in ("light", "dark"):
        context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme=scheme)
        pg = context.new_page()
        open_dashboard(pg, server)
        rgb = pg.evaluate(
            "() => getComputedStyle(document.body).backgroundColor.match(/\\d+/g).map(Number)"
        )
        luminance[scheme] = sum(rgb[:3]) / (3 * 255)
        pg.screenshot(path=str(shots / f"{scheme}.png"))
        context.close()
    assert luminance["light"] > 0.8 and luminance["dark"] < 0.2


def test_phone_layout_has_no_sideways_scroll_and_scrolls_to_the_detail(
    browser: Any, server: str, shots: Path
) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    context.set_default_timeout(15_000)
    pg = context.new_page()
    console = Console(pg)
    for _ in range(12):
        rest_submit(server, {"type": "echo", "params": {"message": "m" * 80, "delay": 0}})
    open_dashboard(pg, server)
    pg.wait_for_function(f"{VISIBLE_ROWS}.length >= 12")
    assert pg.evaluate("document.documentElement.scrollWidth") <= 390
    pg.locator("#job-rows tr:not([hidden])").nth(10).click()
    pg.wait_for_selector("#detail:not([hidden])")
    pg.wait_for_function(
        "() => { const r = document.querySelector('#detail').getBoundingClientRect();"
        " return r.top >= -1 && r.top < innerHeight / 2; }"
    )
    assert pg.evaluate("document.documentElement.scrollWidth") <= 390
    pg.screenshot(path=str(shots / "phone.png"))
    context.close()
    assert console.unexpected() == []


def test_keyboard_and_screen_reader_labels(page: tuple[Any, Console], server: str) -> None:
    pg, _ = page
    job_id = rest_submit(server, {"type": "countdown", "params": {"seconds": 20}})
    open_dashboard(pg, server)
    wait_pct_above(pg, job_id, 0)
    tr = row(pg, job_id)
    bar = tr.get_by_role("progressbar")
    assert bar.get_attribute("aria-valuenow") == str(pct_of(pg, job_id))
    assert job_id in (bar.get_attribute("aria-label") or "")
    cancel = tr.get_by_role("button", name=f"Cancel countdown job {job_id}")
    assert cancel.count() == 1
    tr.focus()  # rows take focus; Enter opens the job
    pg.keyboard.press("Enter")
    pg.wait_for_function(
        "(id) => document.querySelector('#detail-id').textContent === id", arg=job_id
    )
    detail_bar = pg.locator("#detail-progress")
    assert detail_bar.get_attribute("role") == "progressbar"
    assert int(detail_bar.get_attribute("aria-valuenow") or "0") > 0
    cancel.click()
    pg.wait_for_function(
        '(id) => document.querySelector(`tr[data-id="${id}"] .badge`).textContent'
        " === 'cancelled'",
        arg=job_id,
    )


def test_retried_job_timeline_shows_attempts_errors_and_an_intact_traceback(
    page: tuple[Any, Console], server: str, shots: Path
) -> None:
    pg, _ = page
    open_dashboard(pg, server)  # watching while it runs: every attempt is seen
    job_id = rest_submit(server, {"type": "flaky", "params": {}})
    pg.wait_for_function(
        "(id) => document.querySelector(`tr[data-id=\"${id}\"] .badge`)?.textContent === 'failed'",
        arg=job_id,
    )
    row(pg, job_id).click()
    timeline = pg.locator("#timeline li")
    pg.wait_for_selector('#timeline li[data-kind="job_failed"]')
    kinds = [li.get_attribute("data-kind") for li in timeline.all()]
    assert kinds.count("job_started") == 2 and "job_retrying" in kinds
    retry = pg.locator('#timeline li[data-kind="job_retrying"]').inner_text()
    assert "attempt 1 failed: ValueError: attempt 1 failed" in retry
    assert "attempt 2 failed" in pg.locator('#timeline li[data-kind="job_failed"]').inner_text()

    traceback = pg.locator("#detail-traceback")
    assert traceback.evaluate("n => getComputedStyle(n).whiteSpace") == "pre"
    expected = httpx.get(f"{server}jobs/{job_id}").json()["error"]["traceback"]
    assert traceback.inner_text().rstrip("\n") == expected.rstrip("\n")
    # The long line scrolls inside the block instead of wrapping.
    assert traceback.evaluate("n => n.scrollWidth > n.clientWidth")
    pg.screenshot(path=str(shots / "retried.png"))

    # Opened later (nothing seen live), the timeline is built from the job itself.
    pg.goto(f"{server}#job={job_id}")
    pg.reload()
    pg.wait_for_selector('#timeline li[data-kind="job_failed"]')
    text = pg.locator("#timeline").inner_text()
    assert "attempt 2 of 2" in text and "1 earlier attempt failed" in text


def test_throughput_and_queue_wait_charts_draw_live(page: tuple[Any, Console], server: str) -> None:
    pg, _ = page
    open_dashboard(pg, server)
    for _ in range(5):
        rest_submit(server, {"type": "echo", "params": {"delay": 0}})
    rest_submit(server, {"type": "flaky", "params": {}})
    pg.wait_for_function(
        "() => { const c = document.querySelector('#tp-chart');"
        " return +c.dataset.completed >= 5 && +c.dataset.failed >= 1; }",
        timeout=20_000,
    )
    assert int(pg.locator("#wait-chart").get_attribute("data-starts") or "0") >= 5
    assert "completed" in (pg.locator("#tp-chart").get_attribute("aria-label") or "")
    assert "avg" in pg.locator("#wait-summary").inner_text()
    # Pixels of the completed and failed colours were drawn (no CDN, a plain canvas).
    drawn = pg.evaluate(
        """() => {
            const c = document.querySelector('#tp-chart');
            const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let painted = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
            return painted;
        }"""
    )
    assert drawn > 20


def test_workers_panel_appears_only_with_worker_data(
    page: tuple[Any, Console], server: str
) -> None:
    pg, _ = page
    open_dashboard(pg, server)
    pg.wait_for_timeout(500)
    has_route = "/workers" in httpx.get(f"{server}openapi.json").json()["paths"]
    if not has_route:  # an older server: no panel, and no request that could 404
        assert pg.locator("#workers-panel").is_hidden()
    # A server with the worker registry: the panel lists GET /workers' entries.
    workers = {
        "workers": [
            {
                "id": "web-1:4242:ABCDEFGH",
                "host": "web-1",
                "pid": 4242,
                "types": ["countdown", "echo"],
                "slots": 4,
                "running": ["01J0000000000000000000000A"],
                "started_at": "2026-01-01T00:00:00Z",
                "last_heartbeat": "2026-01-01T00:00:01Z",
            }
        ]
    }
    document = httpx.get(f"{server}openapi.json").json()
    document["paths"].setdefault("/workers", {"get": {"responses": {"200": {}}}})
    pg.route("**/openapi.json", lambda r: r.fulfill(json=document))
    pg.route("**/workers", lambda r: r.fulfill(json=workers))
    open_dashboard(pg, server)
    pg.wait_for_selector("#workers-panel:not([hidden])")
    entry = pg.locator('#worker-list li[data-id="web-1:4242:ABCDEFGH"]').inner_text()
    assert "1/4 busy" in entry and "web-1 pid 4242" in entry and "countdown, echo" in entry
    assert "1 · 1/4 slots busy" in pg.locator("#workers-count").inner_text()


CSP_HOST = textwrap.dedent(
    """
    from asyncjobs.adapters.asgi import JobsApp
    from asyncjobs.demo import build_demo_queue

    queue = build_demo_queue()
    jobs = JobsApp(queue)
    POLICY = b"default-src 'self'; frame-ancestors 'none'"  # no inline script or style

    async def app(scope, receive, send):
        async def with_policy(message):
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"content-security-policy", POLICY)]
                message = {**message, "headers": headers}
            await send(message)

        await jobs(scope, receive, with_policy if scope["type"] == "http" else send)
    """
)


def test_dashboard_runs_under_a_strict_content_security_policy(
    browser: Any, tmp_path: Path
) -> None:
    (tmp_path / "csphost.py").write_text(CSP_HOST)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "csphost:app", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = f"http://127.0.0.1:{port}/"
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(15_000)
    pg = context.new_page()
    console = Console(pg)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(server + "health", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert "default-src" in httpx.get(server).headers["content-security-policy"]
        job_id = rest_submit(server, {"type": "echo", "params": {"delay": 0}})
        open_dashboard(pg, server)
        row(pg, job_id).click()
        pg.wait_for_selector('#timeline li[data-kind="job_completed"]')
        dot = pg.locator('.counter[data-status="completed"] .dot')
        assert dot.evaluate("n => getComputedStyle(n).backgroundColor") != "rgba(0, 0, 0, 0)"
    finally:
        context.close()
        proc.terminate()
        proc.wait(timeout=15)
    assert console.unexpected() == []
