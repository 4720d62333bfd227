"""Supervision of a queue's background loops: health, logging, paced retries.

Every loop a :class:`~asyncjobs.Queue` runs (the worker's claim loop, its heartbeats,
the finishing of attempts, the janitor's chores) catches store errors at its edge and
reports them here instead of letting them end the loop. A :class:`Supervisor` turns
those reports into one warning per outage, one info line on recovery, capped
exponential backoff with jitter between retries, and a :class:`Health` record that
``queue.health()``, ``GET /health`` and the ``/metrics`` gauges show.
"""

from __future__ import annotations

import asyncio
import logging
import typing
from collections.abc import Callable, Coroutine
from datetime import datetime, timezone
from typing import Any, Final, final

import anyio
import attrs

from .registry import Backoff

__all__ = ["STORE_RETRY", "Background", "Health", "Problem", "Supervisor"]

logger = logging.getLogger("asyncjobs.supervision")

#: How a supervised loop paces its retries while the store fails: 0.1 s, 0.2 s, ...
#: up to 5 s, each spread by up to 20 % so that many processes do not retry in step.
STORE_RETRY: Final = Backoff(base=0.1, factor=2.0, max=5.0, jitter=0.2)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@attrs.frozen
class Problem:
    """One loop that is failing now.

    Attributes:
        loop: Which loop: ``claim``, ``wake`` (the wait for work), ``heartbeat``,
            ``finish``, ``progress``, ``janitor.requeue_expired``,
            ``janitor.promote_scheduled``, ``janitor.purge``, or ``background`` (the
            queue's tasks ended on a bug).
        reason: The last error, as ``"Type: message"``.
        since: When the outage began (UTC).
        failures: Failed attempts since then.
    """

    loop: str
    reason: str
    since: datetime
    failures: int


@attrs.frozen
class Health:
    """The health of a queue's background loops; ``ok`` while no loop is failing."""

    ok: bool
    problems: tuple[Problem, ...] = ()


def _unwrap(exc: BaseException) -> BaseException:
    """A task group wraps an error in a group: the error itself, if it is alone."""
    inner: Any = exc
    while len(getattr(inner, "exceptions", ())) == 1:
        inner = inner.exceptions[0]
    return typing.cast(BaseException, inner)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__qualname__}: {text}" if text else type(exc).__qualname__


@final
class Supervisor:
    """Collects failures of a queue's loops and paces their retries.

    Args:
        backoff: Delay between retries of one failing loop.
        clock: Returns the current UTC time (for ``Problem.since``).
    """

    __slots__ = ("_clock", "_problems", "backoff", "errors")

    def __init__(
        self, backoff: Backoff = STORE_RETRY, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        self.backoff = backoff
        self._clock = clock
        self._problems: dict[str, Problem] = {}
        #: Failures per loop since the supervisor was made (a counter for metrics).
        self.errors: dict[str, int] = {}

    def failed(self, loop: str, exc: BaseException) -> float:
        """Record a failure of ``loop``; return the seconds to wait before retrying.

        The first failure of an outage is logged as a warning (with the traceback);
        the following ones only at debug level.
        """
        self.errors[loop] = self.errors.get(loop, 0) + 1
        current = self._problems.get(loop)
        if current is None:
            logger.warning(
                "the %s loop failed (%s); retrying with backoff until the store answers",
                loop,
                _reason(exc),
                exc_info=exc,
            )
            current = Problem(loop, _reason(exc), self._clock(), 1)
        else:
            logger.debug("the %s loop failed again (%s)", loop, _reason(exc))
            current = attrs.evolve(current, reason=_reason(exc), failures=current.failures + 1)
        self._problems[loop] = current
        return self.backoff.delay(current.failures)

    def crashed(self, loop: str, exc: BaseException) -> None:
        """Record that ``loop`` ended on an error it does not retry (a bug): logged
        as an error, shown by :meth:`health` until the queue is reopened."""
        logger.error("the %s tasks of the queue ended on an error", loop, exc_info=exc)
        self.errors[loop] = self.errors.get(loop, 0) + 1
        self._problems[loop] = Problem(loop, _reason(exc), self._clock(), 1)

    def recovered(self, loop: str) -> None:
        """Record that ``loop`` succeeded; logs the end of an outage once."""
        problem = self._problems.pop(loop, None)
        if problem is not None:
            seconds = (self._clock() - problem.since).total_seconds()
            logger.info(
                "the %s loop recovered after %d failure(s) over %.1fs",
                loop,
                problem.failures,
                seconds,
            )

    def clear(self) -> None:
        """Forget the current problems (the error counters stay)."""
        self._problems.clear()

    def health(self) -> Health:
        """The current health: every loop that is failing now, oldest outage first."""
        problems = tuple(sorted(self._problems.values(), key=lambda p: (p.since, p.loop)))
        return Health(ok=not problems, problems=problems)


@final
class Background:
    """The queue's own tasks, in a task group entered by a task of its own.

    ``async with queue:`` must not put the queue's loops in the host's task group: an
    error there would cancel the host's code. Here a failure stays inside, is logged
    and shows in :meth:`Supervisor.health` as the ``background`` loop; the host's code
    runs on. Any task may :meth:`cancel` and :meth:`wait` for it.
    """

    __slots__ = ("_done", "_scope", "_supervisor", "_task")

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._scope: anyio.CancelScope | None = None
        self._task: asyncio.Task[None] | None = None
        self._done = anyio.Event()

    async def start(self, *starters: Callable[..., Coroutine[Any, Any, Any]]) -> None:
        """Start each ``starter`` with ``task_group.start`` (in order) and return once
        all have reported started; a failure to start is raised here."""
        ready = anyio.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            try:
                async with anyio.create_task_group() as tg:
                    self._scope = tg.cancel_scope
                    for starter in starters:
                        await tg.start(starter)
                    ready.set()
            except Exception as exc:  # the queue's own edge: never the host's problem
                if ready.is_set():
                    self._supervisor.crashed("background", _unwrap(exc))
                else:
                    failure.append(_unwrap(exc))
            finally:
                ready.set()
                self._done.set()

        # A task of its own (not one in the host's task group): the host's scope and
        # the queue's scope are never nested, so neither can cancel the other.
        self._task = asyncio.get_running_loop().create_task(main(), name="asyncjobs.queue")
        try:
            await ready.wait()
        except BaseException:
            self.cancel()
            with anyio.move_on_after(10, shield=True):
                await self.wait()
            raise
        if failure:
            raise failure[0]

    def cancel(self) -> None:
        """Cancel every task (idempotent)."""
        if self._scope is not None:
            self._scope.cancel()
        elif self._task is not None:
            self._task.cancel()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> None:
        """Wait until every task has ended."""
        await self._done.wait()
