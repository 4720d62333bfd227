"""Helpers for testing code that uses asyncjobs.

Time is injectable everywhere asyncjobs reads it (``Queue(clock=...)``,
``Janitor(store, config, clock)``), so a test can move time forward instead of sleeping::

    clock = FakeClock()
    queue = Queue(clock=clock, janitor=JanitorConfig(enabled=False))
    async with queue:
        job = await queue.submit("report", delay=3600)
        clock.advance(3600)
        await Janitor(queue.store, JanitorConfig(), clock).tick()  # the job is queued now

:class:`FaultyStore` wraps any store and makes chosen operations fail or hang, to see
what a queue does while its store is down::

    store = FaultyStore(MemoryStore())
    async with Queue(store) as queue:
        store.fail("claim", "promote_scheduled")   # ConnectionError from now on
        assert not queue.health().ok
        store.heal()
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final, final

import anyio

if TYPE_CHECKING:
    from .stores.protocol import Store

__all__ = ["DEFAULT_START", "FakeClock", "FaultyStore"]

#: Where a :class:`FakeClock` starts unless told otherwise.
DEFAULT_START: Final = datetime(2026, 1, 1, tzinfo=timezone.utc)


@final
class FakeClock:
    """A clock that stands still until :meth:`advance` moves it.

    Call it to read the time, exactly like the default clock: it returns a
    timezone-aware UTC ``datetime``.

    Args:
        start: The initial time; must be timezone-aware. Defaults to
            :data:`DEFAULT_START`.

    Raises:
        ValueError: ``start`` is a naive datetime.
    """

    __slots__ = ("_now",)

    def __init__(self, start: datetime = DEFAULT_START) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start, e.g. tzinfo=timezone.utc")
        self._now = start.astimezone(timezone.utc)

    def __call__(self) -> datetime:
        """Return the current fake time."""
        return self._now

    def advance(self, seconds: float | timedelta) -> datetime:
        """Move the clock forward and return the new time.

        Args:
            seconds: How far to move, in seconds or as a ``timedelta``.

        Raises:
            ValueError: ``seconds`` is negative (time never runs backwards).
        """
        step = seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
        if step < timedelta(0):
            raise ValueError("a FakeClock only moves forward")
        self._now += step
        return self._now

    def __repr__(self) -> str:
        return f"FakeClock({self._now.isoformat()})"


@final
class FaultyStore:
    """A store that forwards every call to ``inner`` except those told to misbehave.

    Every attribute of ``inner`` is reachable through the wrapper (so methods added
    to stores later are forwarded too); its async methods go through the faults set
    with :meth:`fail` and :meth:`hang`.

    Args:
        inner: The store to wrap (memory, SQLite, PostgreSQL, ...).
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        #: Calls per operation name, faulty or not.
        self.calls: Counter[str] = Counter()
        #: Calls per operation name that a fault answered.
        self.faults: Counter[str] = Counter()
        self._fail: dict[str, Callable[[], BaseException]] = {}
        self._hang: set[str] = set()
        self._healed: anyio.Event | None = None  # made on first use, inside a loop

    def fail(self, *operations: str, error: Callable[[], BaseException] | None = None) -> None:
        """Make ``operations`` raise ``error()`` (a ``ConnectionError`` by default)."""
        make = error or (lambda: ConnectionError("injected store outage"))
        for name in operations:
            self._fail[name] = make

    def hang(self, *operations: str) -> None:
        """Make ``operations`` wait until :meth:`heal` (they never answer till then)."""
        self._hang.update(operations)
        if self._healed is None or self._healed.is_set():
            self._healed = anyio.Event()

    def heal(self, *operations: str) -> None:
        """Remove the faults of ``operations`` (of every operation when none given)."""
        names = operations or (*self._fail, *self._hang)
        for name in names:
            self._fail.pop(name, None)
            self._hang.discard(name)
        if not self._hang and self._healed is not None:
            self._healed.set()

    async def _inject(self, name: str) -> None:
        while name in self._hang and self._healed is not None:
            self.faults[name] += 1
            await self._healed.wait()
        make = self._fail.get(name)
        if make is not None:
            self.faults[name] += 1
            raise make()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not inspect.iscoroutinefunction(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            await self._inject(name)
            return await target(*args, **kwargs)

        call.__name__ = name
        return call

    def __repr__(self) -> str:
        return f"FaultyStore({self.inner!r})"
