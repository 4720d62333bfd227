"""The demo job types behind ``asyncjobs demo``: small, visible, cancellable jobs.

Each type reports progress so the dashboard has something to show, and each returns a
small JSON result. Their params are attrs classes with validators and field
descriptions, so the dashboard's generated form shows limits and help text.

``build_demo_queue()`` returns a :class:`~asyncjobs.Queue` with the four types
registered; it is not started (enter it with ``async with`` or a host's lifespan).
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import attrs

from .context import JobContext
from .queue import Queue

__all__ = [
    "CountdownParams",
    "EchoParams",
    "FibonacciParams",
    "PrimeParams",
    "build_demo_queue",
]

_ge = attrs.validators.ge
_le = attrs.validators.le


@attrs.frozen
class CountdownParams:
    """Count down one second at a time."""

    seconds: int = attrs.field(
        default=10,
        validator=[_ge(1), _le(3600)],
        metadata={"description": "How many seconds to count down (1 to 3600)."},
    )


@attrs.frozen
class PrimeParams:
    """Find every prime up to a limit."""

    limit: int = attrs.field(
        default=5_000_000,
        validator=[_ge(2), _le(50_000_000)],
        metadata={"description": "Search for primes up to this number (2 to 50,000,000)."},
    )


@attrs.frozen
class FibonacciParams:
    """Compute the first terms of the Fibonacci sequence, one every 0.1 s."""

    terms: int = attrs.field(
        default=30,
        validator=[_ge(1), _le(10_000)],
        metadata={"description": "How many terms to compute (1 to 10,000)."},
    )


@attrs.frozen
class EchoParams:
    """Wait, then return the message unchanged."""

    message: str = attrs.field(
        default="hello",
        validator=attrs.validators.max_len(10_000),
        metadata={"description": "Text to send back as the result."},
    )
    delay: float = attrs.field(
        default=1.0,
        validator=[_ge(0.0), _le(600.0)],
        metadata={"description": "Seconds to wait before answering (0 to 600)."},
    )


async def countdown(ctx: JobContext, params: CountdownParams) -> dict[str, Any]:
    """Tick once a second, reporting how much time is left."""
    for done in range(params.seconds):
        await ctx.progress(done / params.seconds, f"{params.seconds - done}s left")
        await anyio.sleep(1)
    await ctx.progress(1.0, "liftoff")
    return {"counted": params.seconds}


#: Numbers sieved between two progress reports (and two yields to the event loop).
_PRIME_CHUNK = 20_000
#: At most this many primes (the smallest) are listed in a prime job's result.
PRIME_LIST_CAP = 1_000
#: At most this many Fibonacci terms are listed in a result (10,000 terms are ~10 MB).
FIBONACCI_LIST_CAP = 1_000
#: Integers above this lose precision as JSON numbers in browsers; they are strings.
_JS_SAFE = 2**53


async def prime(ctx: JobContext, params: PrimeParams) -> dict[str, Any]:
    """Segmented sieve of Eratosthenes that yields to the loop between segments.

    The base primes up to sqrt(limit) are found first; each segment then strikes out
    their multiples. Yielding after each segment keeps the worker responsive to
    cancellation and keeps the progress bar moving.
    """
    limit = params.limit
    root = math.isqrt(limit)
    base = bytearray([1]) * (root + 1)
    base[0:2] = b"\x00\x00"
    for n in range(2, math.isqrt(root) + 1):
        if base[n]:
            base[n * n :: n] = bytes(len(range(n * n, root + 1, n)))
    base_primes = [n for n in range(2, root + 1) if base[n]]

    count, largest = 0, 0
    listed: list[int] = []
    for low in range(2, limit + 1, _PRIME_CHUNK):
        high = min(low + _PRIME_CHUNK - 1, limit)
        segment = bytearray([1]) * (high - low + 1)
        for p in base_primes:
            if p * p > high:
                break
            start = max(p * p, (low + p - 1) // p * p)
            segment[start - low :: p] = bytes(len(range(start, high + 1, p)))
        found = segment.count(1)
        if found:
            count += found
            largest = low + segment.rindex(1)
            if len(listed) < PRIME_LIST_CAP:
                at = segment.find(1)
                while at != -1 and len(listed) < PRIME_LIST_CAP:
                    listed.append(low + at)
                    at = segment.find(1, at + 1)
        await ctx.progress((high - 1) / (limit - 1), f"{count:,} primes up to {high:,}")
        # Small limits finish in one segment; a short sleep keeps long runs watchable.
        await anyio.sleep(0.01)
    await ctx.progress(1.0, f"{count:,} primes up to {limit:,}")
    return {
        "limit": limit,
        "count": count,
        "largest": largest,
        "primes": listed,  # the smallest PRIME_LIST_CAP of them
        "truncated": count > len(listed),
    }


async def fibonacci(ctx: JobContext, params: FibonacciParams) -> dict[str, Any]:
    """Compute terms one by one (1, 1, 2, 3, 5, ...) and return the sequence.

    Terms above 2**53 are strings (JSON numbers in browsers lose precision there); the
    sequence lists the first ``FIBONACCI_LIST_CAP`` terms, ``last`` is always the N-th.
    """
    a, b = 0, 1
    sequence: list[int | str] = []
    for i in range(params.terms):
        a, b = b, a + b
        if len(sequence) < FIBONACCI_LIST_CAP:
            sequence.append(a if a <= _JS_SAFE else str(a))
        await ctx.progress((i + 1) / params.terms, f"term {i + 1}: {_short(a)}")
        await anyio.sleep(0.1)
    return {
        "terms": params.terms,
        "sequence": sequence,
        "truncated": params.terms > len(sequence),
        "last": str(a),
        "digits": len(str(a)),
    }


async def echo(ctx: JobContext, params: EchoParams) -> dict[str, Any]:
    """Sleep ``delay`` seconds, then return the message."""
    if params.delay > 0:
        await ctx.progress(0.0, f"waiting {params.delay:g}s")
        await anyio.sleep(params.delay)
    await ctx.progress(1.0, "answered")  # not "waiting ..." on a finished job
    return {"message": params.message}


def _short(value: int) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:10]}…{text[-10:]} ({len(text)} digits)"


def build_demo_queue(store_url: str = "memory://", concurrency: int = 3) -> Queue:
    """A queue with the demo job types registered (not started).

    Args:
        store_url: Where jobs live, e.g. ``memory://`` or ``sqlite:///demo.db``.
        concurrency: Jobs this process runs at once.

    Returns:
        The queue; start it with ``async with queue:`` or ``lifespan=queue.lifespan``.
    """
    queue = Queue(store=store_url, concurrency=concurrency)
    queue.job_type(
        "countdown", timeout=3700, max_attempts=1, description="Counts down, one tick a second."
    )(countdown)
    queue.job_type(
        "prime",
        timeout=600,
        max_attempts=1,
        executor="process",  # CPU-bound: a child process keeps the dashboard responsive
        description="Finds primes with a segmented sieve.",
    )(prime)
    queue.job_type(
        "fibonacci", timeout=1200, max_attempts=1, description="Computes Fibonacci terms."
    )(fibonacci)
    queue.job_type(
        "echo", timeout=700, max_attempts=1, description="Waits, then returns the message."
    )(echo)
    return queue
