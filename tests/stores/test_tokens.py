"""Fencing tokens (``steps.new_token``): unique, unguessable, drawn from the OS in bulk."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading
from collections import Counter

import pytest

from asyncjobs.stores import steps


def test_tokens_are_96_random_bits_as_hex() -> None:
    tokens = [steps.new_token() for _ in range(2000)]
    assert all(len(t) == 24 and int(t, 16) >= 0 for t in tokens)
    assert len(set(tokens)) == len(tokens)
    # Independent random bits, not a counter: every hex digit takes each of its 16
    # values about equally often at every position (a shared prefix or a counter's
    # low-order run would pile up on a few values).
    for position in range(24):
        seen = Counter(t[position] for t in tokens)
        assert len(seen) == 16
        assert max(seen.values()) < 2000 / 16 * 1.6


def test_tokens_come_from_the_os_in_bulk(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.urandom

    def urandom(n: int) -> bytes:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(steps.os, "urandom", urandom)
    steps._tokens.clear()
    tokens = [steps.new_token() for _ in range(1000)]
    assert len(set(tokens)) == 1000
    # One syscall per refill (hundreds of tokens), not one per claim.
    assert 1 <= len(calls) <= 1000 // 100
    assert all(n >= 100 * steps.TOKEN_BYTES for n in calls)


def test_threads_never_draw_the_same_token() -> None:
    steps._tokens.clear()
    drawn: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def draw(out: list[str]) -> None:
        start.wait()
        out.extend(steps.new_token() for _ in range(3000))

    threads = [threading.Thread(target=draw, args=(out,)) for out in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [t for out in drawn for t in out]
    assert len(set(every)) == len(every) == 8 * 3000


def _draw(conn: multiprocessing.connection.Connection) -> None:
    conn.send([steps.new_token() for _ in range(50)])
    conn.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # 3.12+: threads elsewhere
def test_a_forked_child_does_not_reuse_the_parents_pool() -> None:
    steps._tokens.clear()
    steps.new_token()  # the pool is full now, and a child inherits it
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_draw, args=(child,))
    process.start()
    theirs = parent.recv()
    process.join(timeout=30)
    ours = [steps.new_token() for _ in range(50)]
    assert not set(theirs) & set(ours)
