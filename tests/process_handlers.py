"""Handlers for the process-executor tests: a child process imports them by name."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import attrs

from asyncjobs import JobContext, ProcessJobContext


@attrs.frozen
class Spin:
    pid_file: str
    seconds: float = 60.0


def spin(ctx: ProcessJobContext, params: Spin) -> str:
    """Write the child's pid, then burn CPU without ever looking up."""
    Path(params.pid_file).write_text(str(os.getpid()))
    deadline = time.monotonic() + params.seconds
    while time.monotonic() < deadline:
        pass
    return "spun"


def steps(ctx: ProcessJobContext, params: dict[str, Any]) -> dict[str, Any]:
    for i in range(params["n"]):
        ctx.progress((i + 1) / params["n"], f"step {i + 1}")
        time.sleep(0.05)
    return {"pid": os.getpid(), "n": params["n"], "job": ctx.job_id}


def explode(ctx: ProcessJobContext, params: dict[str, Any]) -> None:
    raise KeyError(params["key"])


async def async_steps(ctx: JobContext, params: dict[str, Any]) -> int:
    for i in range(params["n"]):
        await ctx.progress((i + 1) / params["n"])
    return os.getpid()
