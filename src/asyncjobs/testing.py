"""Helpers for testing code that uses asyncjobs.

Time is injectable everywhere asyncjobs reads it (``Queue(clock=...)``,
``Janitor(store, config, clock)``), so a test can move time forward instead of sleeping::

    clock = FakeClock()
    queue = Queue(clock=clock, janitor=JanitorConfig(enabled=False))
    async with queue:
        job = await queue.submit("report", delay=3600)
        clock.advance(3600)
        await Janitor(queue.store, JanitorConfig(), clock).tick()  # the job is queued now
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Final, final

__all__ = ["DEFAULT_START", "FakeClock"]

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
