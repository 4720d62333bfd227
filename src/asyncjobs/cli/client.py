"""The client verbs of the ``asyncjobs`` command: submit, ls, get, cancel, watch.

They speak the REST and SSE API of a running server (``asyncjobs demo`` or
``asyncjobs serve``) through httpx and httpx-sse, imported lazily: ``import asyncjobs``
never loads them. Failures that a user can fix (server unreachable, missing token,
unknown id) become a :class:`CliError` with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final, TextIO

if TYPE_CHECKING:
    import httpx

__all__ = ["EXIT_BY_STATUS", "EXIT_ERROR", "EXIT_LOST", "CliError", "run_client"]

#: ``watch`` (and ``submit --watch``) exit with the job's outcome.
EXIT_BY_STATUS: Final[Mapping[str, int]] = {"completed": 0, "failed": 1, "cancelled": 2}
#: The job was deleted, or the stream ended before the job did.
EXIT_LOST: Final = 3
#: The command could not do its work: server unreachable, 401/403, unknown id, bad input.
EXIT_ERROR: Final = 4

_FINAL_EVENTS: Final = frozenset({"job_completed", "job_failed", "job_cancelled", "job_deleted"})


class CliError(Exception):
    """A failure reported as one line on stderr, with an exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise CliError("the client verbs need httpx: pip install 'asyncjobs[cli]'") from None
    return httpx


class Api:
    """A thin REST client that turns transport and HTTP failures into CliErrors."""

    def __init__(self, url: str, token: str | None, timeout: float = 10.0) -> None:
        lib = _httpx()
        self.url = url.rstrip("/") + "/"
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.has_token = bool(token)
        self.client: httpx.Client = lib.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        httpx = _httpx()
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        self.check(response, path)
        return response.json() if response.content else None

    def unreachable(self, exc: Exception) -> CliError:
        return CliError(
            f"cannot reach the asyncjobs server at {self.url} ({type(exc).__name__}: {exc}); "
            "is `asyncjobs serve` or `asyncjobs demo` running? Set --url or ASYNCJOBS_URL."
        )

    def check(self, response: httpx.Response, path: str) -> None:
        if response.is_success:
            return
        response.read()  # a streamed (SSE) response has not read its error body yet
        try:
            error = response.json().get("error", {})
        except (ValueError, AttributeError):
            error = {}
        message = error.get("message") or response.reason_phrase or "request failed"
        status = response.status_code
        if status == 401:
            hint = "the token was refused" if self.has_token else "the server requires a token"
            raise CliError(f"{hint} (401): pass --token or set ASYNCJOBS_TOKEN")
        if status == 403:
            raise CliError(f"forbidden (403): {message}")
        if status == 404 and error.get("code") == "job_not_found":
            raise CliError(f"unknown job id: {message}")
        if status == 404:
            raise CliError(
                f"{self.url}{path} was not found (404); is --url the JobsApp mount "
                "(for example http://127.0.0.1:8000/ or http://host/queue/)?"
            )
        details = error.get("details")
        if isinstance(details, list) and details:
            lines = [
                f"  {'.'.join(str(p) for p in d.get('loc', [])) or '(params)'}: {d.get('msg')}"
                for d in details
                if isinstance(d, dict)
            ]
            code = error.get("code", "invalid")
            raise CliError(
                f"the server rejected the request ({status} {code}):\n" + "\n".join(lines)
            )
        raise CliError(f"{message} ({status})")


# ---------------------------------------------------------------------------- verbs


def _parse_params(args: argparse.Namespace, api: Api) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.json is not None:
        try:
            loaded = json.loads(args.json)
        except ValueError as exc:
            raise CliError(f"--json is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise CliError("--json must be a JSON object")
        params.update(loaded)
    if args.param:
        properties = _param_properties(api, args.type)
        for item in args.param:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise CliError(f"--param expects key=value, got {item!r}")
            params[key] = _coerce(raw, properties.get(key, {}))
    return params


def _param_properties(api: Api, job_type: str) -> dict[str, Any]:
    """The JSON Schema properties of a job type, to read `--param k=v` with its types."""
    listing = api.request("GET", "job-types")
    types = listing.get("job_types", []) if isinstance(listing, dict) else listing
    for described in types:
        if described.get("name") == job_type:
            props = (described.get("params_schema") or {}).get("properties") or {}
            return dict(props)
    return {}


def _coerce(raw: str, schema: Mapping[str, Any]) -> Any:
    # A string field keeps the text as typed (`message=123` stays "123"); everything
    # else is read as JSON when it parses (numbers, booleans, lists), else as text.
    kinds = {schema.get("type")} | {o.get("type") for o in schema.get("anyOf", ())}
    if "string" in kinds and not (raw == "null" and "null" in kinds):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def cmd_submit(args: argparse.Namespace, api: Api, out: TextIO) -> int:
    body: dict[str, Any] = {"type": args.type, "params": _parse_params(args, api)}
    if args.priority is not None:
        body["priority"] = args.priority
    if args.delay is not None:
        body["delay"] = args.delay
    if args.idempotency_key:
        body["idempotency_key"] = args.idempotency_key
    job = api.request("POST", "jobs", json=body)
    if args.output_json:
        print(json.dumps(job), file=out)
    else:
        print(job["id"], file=out)
    if args.watch:
        return watch(api, job["id"], sys.stderr)
    return 0


def cmd_ls(args: argparse.Namespace, api: Api, out: TextIO) -> int:
    query: list[tuple[str, str]] = [("limit", str(args.limit))]
    query += [("status", s) for s in args.status or ()]
    query += [("type", t) for t in args.type or ()]
    page = api.request("GET", "jobs", params=query)
    jobs = page.get("jobs", []) if isinstance(page, dict) else page
    if args.output_json:
        print(json.dumps(page), file=out)
        return 0
    if not jobs:
        print("no jobs", file=out)
        return 0
    rows = [("ID", "STATUS", "TYPE", "PROGRESS", "CREATED", "MESSAGE")]
    for job in jobs:
        rows.append(
            (
                job["id"],
                job["status"],
                job["type"],
                f"{_percent(job)}%",
                _local_time(job.get("created_at")),
                _one_line(job),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[5],
            file=out,
        )
    if isinstance(page, dict) and page.get("next_cursor"):
        print(f"(more: --limit {args.limit * 2} shows more)", file=out)
    return 0


def cmd_get(args: argparse.Namespace, api: Api, out: TextIO) -> int:
    job = api.request("GET", f"jobs/{args.id}")
    print(json.dumps(job, indent=2, ensure_ascii=False), file=out)
    return 0


def cmd_cancel(args: argparse.Namespace, api: Api, out: TextIO) -> int:
    job = api.request("POST", f"jobs/{args.id}/cancel")
    if job.get("status") == "cancelled":
        print(f"cancelled {job['id']}", file=out)
    else:
        print(f"cancel requested for {job['id']} ({job.get('status')})", file=out)
    return 0


def cmd_watch(args: argparse.Namespace, api: Api, out: TextIO) -> int:
    return watch(api, args.id, out)


# ---------------------------------------------------------------------------- watch


def watch(api: Api, job_id: str, out: TextIO) -> int:
    """Follow one job's SSE stream, drawing a progress bar; return its exit code."""
    httpx = _httpx()
    try:
        from httpx_sse import connect_sse
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise CliError("watch needs httpx-sse: pip install 'asyncjobs[cli]'") from None
    bar = _Bar(out)
    try:
        return _follow(api, job_id, bar, httpx, connect_sse)
    except KeyboardInterrupt:
        return bar.interrupted(job_id)


def _follow(api: Api, job_id: str, bar: _Bar, httpx: Any, connect_sse: Any) -> int:
    last_id: str | None = None
    for attempt in range(6):
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with connect_sse(
                api.client,
                "GET",
                f"jobs/{job_id}/events",
                headers=headers,
                timeout=httpx.Timeout(10.0, read=None),
            ) as source:
                api.check(source.response, f"jobs/{job_id}/events")
                for sse in source.iter_sse():
                    if sse.id:
                        last_id = sse.id
                    if not sse.data:
                        continue
                    event = json.loads(sse.data)
                    job = event.get("job") or {}
                    bar.update(job)
                    if event.get("type") in _FINAL_EVENTS or (
                        event.get("type") == "job_snapshot" and job.get("status") in EXIT_BY_STATUS
                    ):
                        return bar.finish(event.get("type", ""), job)
        except httpx.TransportError as exc:
            if attempt == 0:
                raise api.unreachable(exc) from None
        # The stream ended early (server restart, proxy timeout): look, then resume.
        job = api.request("GET", f"jobs/{job_id}")
        if job.get("status") in EXIT_BY_STATUS:
            return bar.finish("job_" + job["status"], job)
        time.sleep(min(0.5 * 2**attempt, 5.0))
    raise CliError(f"lost the event stream of job {job_id}; it is still live", EXIT_LOST)


class _Bar:
    """A one-line progress bar on a terminal; plain progress lines otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last_line: tuple[str, int] | None = None
        self.drawn = False

    def update(self, job: Mapping[str, Any]) -> None:
        percent = _percent(job)
        status = str(job.get("status", "?"))
        message = job.get("message") or ""
        timing = self.timing(job)
        if self.tty:
            width = 30
            filled = round(width * percent / 100)
            bar = f"[{'#' * filled}{'.' * (width - filled)}]"
            text = f"{status:<9} {bar} {percent:3d}% {timing}  {message}"
            columns = shutil.get_terminal_size((100, 20)).columns
            self.out.write("\r" + text[: columns - 1].ljust(columns - 1))
            self.drawn = True
        else:
            # One line per status change or per 10% step keeps logs readable.
            key = (status, percent // 10)
            if key == self.last_line:
                return
            self.last_line = key
            self.out.write(f"{status} {percent}% {timing} {message}".rstrip() + "\n")
        self.out.flush()

    def timing(self, job: Mapping[str, Any]) -> str:
        """``elapsed 0:04 ETA 0:06``: time since the job started, and the time left at
        the average rate so far (unknown until some progress is reported)."""
        started = job.get("started_at")
        if job.get("status") != "running" or not started:
            return ""
        elapsed = max(0.0, time.time() - _timestamp(started))
        text = f"elapsed {_clock(elapsed)}"
        progress = float(job.get("progress") or 0.0)
        if 0.0 < progress < 1.0:
            text += f" ETA {_clock(elapsed * (1 - progress) / progress)}"
        return text

    def interrupted(self, job_id: str) -> int:
        if self.drawn:
            self.out.write("\n")
        self.out.write(f"stopped watching {job_id}; the job goes on (cancel: asyncjobs cancel)\n")
        self.out.flush()
        return 130

    def finish(self, event_type: str, job: Mapping[str, Any]) -> int:
        if self.drawn:
            self.out.write("\n")
        status = str(job.get("status", ""))
        if event_type == "job_deleted":
            self.out.write(f"job {job.get('id')} was deleted\n")
            return EXIT_LOST
        if status == "completed":
            result = json.dumps(job.get("result"), ensure_ascii=False)
            self.out.write(f"completed: {result}\n")
        elif status == "failed":
            error = job.get("error") or {}
            self.out.write(f"failed: {error.get('type')}: {error.get('message')}\n")
        else:
            self.out.write(f"{status}\n")
        self.out.flush()
        return EXIT_BY_STATUS.get(status, EXIT_LOST)


def _percent(job: Mapping[str, Any]) -> int:
    if job.get("status") == "completed":
        return 100
    try:
        return max(0, min(100, round(float(job.get("progress") or 0.0) * 100)))
    except (TypeError, ValueError):
        return 0


def _timestamp(value: str) -> float:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _local_time(value: str | None) -> str:
    if not value:
        return "-"
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _one_line(job: Mapping[str, Any]) -> str:
    error = job.get("error")
    text = f"{error.get('type')}: {error.get('message')}" if error else job.get("message") or ""
    text = " ".join(str(text).split())
    return text if len(text) <= 60 else text[:59] + "…"


_VERBS = {
    "submit": cmd_submit,
    "ls": cmd_ls,
    "get": cmd_get,
    "cancel": cmd_cancel,
    "watch": cmd_watch,
}


def run_client(args: argparse.Namespace) -> int:
    """Run one client verb against ``args.url``; errors become :class:`CliError`."""
    api = Api(args.url, args.token)
    try:
        return _VERBS[args.command](args, api, sys.stdout)
    finally:
        api.close()
