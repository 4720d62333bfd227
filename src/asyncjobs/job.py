"""The job record, its lifecycle, and the events that describe its changes.

Every state change of every job goes through :func:`advance`, which checks the one
transition table below and bumps ``version``; stores never compare status strings.

::

    scheduled ──promote──▶ queued ──claim──▶ running ──▶ completed
        │  ▲                 │  ▲               │ │ │──▶ failed
        │  └────retry────────┼──┼───────────────┘ │ └──▶ cancelled
        │                    │  └──requeue────────┘  (lease expired / shutdown)
        └──────cancel────────┴──cancel──▶ cancelled

    failed / cancelled ──retry in place (queue.retry)──▶ queued   (same id; the run
    that ended is kept in ``history``)
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

import attrs

from .errors import IllegalTransition

__all__ = [
    "TERMINAL",
    "EventType",
    "Job",
    "JobError",
    "JobEvent",
    "JobStatus",
    "Lease",
    "Run",
    "advance",
    "can_transition",
    "make_event",
    "make_lease",
    "transition",
]


class JobStatus(str, enum.Enum):
    """Where a job is in its lifecycle."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    def __str__(self) -> str:
        return self.value


TERMINAL: Final = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

S = JobStatus
#: The one transition table. A status maps to the statuses it may move to.
_TRANSITIONS: Final[Mapping[JobStatus, frozenset[JobStatus]]] = {
    S.SCHEDULED: frozenset({S.QUEUED, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED}),
    # running -> scheduled is a retry with backoff; running -> queued is a requeue after
    # a lost lease or a graceful shutdown.
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.SCHEDULED, S.QUEUED}),
    S.COMPLETED: frozenset(),
    # An operator's retry in place (queue.retry): the only way out of a terminal state.
    # A completed job is never re-run in place; submit a new one.
    S.FAILED: frozenset({S.QUEUED}),
    S.CANCELLED: frozenset({S.QUEUED}),
}
del S


def can_transition(from_status: JobStatus, to_status: JobStatus) -> bool:
    """Return whether the lifecycle allows ``from_status -> to_status``."""
    return to_status in _TRANSITIONS[from_status]


class EventType(str, enum.Enum):
    """What happened to a job. Every event carries the job's full snapshot after it."""

    SNAPSHOT = "job_snapshot"  # a subscriber's initial view, not a change
    CREATED = "job_created"
    QUEUED = "job_queued"  # a scheduled job became due
    STARTED = "job_started"
    PROGRESS = "job_progress"
    CANCEL_REQUESTED = "job_cancel_requested"
    RETRYING = "job_retrying"
    COMPLETED = "job_completed"
    FAILED = "job_failed"
    CANCELLED = "job_cancelled"
    DELETED = "job_deleted"

    @property
    def is_final(self) -> bool:
        """True for events after which a job never changes again."""
        return self in _FINAL_EVENTS

    def __str__(self) -> str:
        return self.value


_FINAL_EVENTS: Final = frozenset(
    {EventType.COMPLETED, EventType.FAILED, EventType.CANCELLED, EventType.DELETED}
)


@attrs.frozen
class JobError:
    """A structured failure: exception type, message and formatted traceback."""

    type: str
    message: str
    traceback: str | None = None


@attrs.frozen
class Lease:
    """Who holds a running job, until when, and the fencing token that proves it."""

    worker_id: str
    token: str
    expires_at: datetime


@attrs.frozen
class Run:
    """One earlier run of a job that was retried in place: how it ended and why.

    ``attempts`` is how many attempts that run made; ``error`` the last one's failure.
    """

    status: JobStatus
    attempts: int
    error: JobError | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


@attrs.frozen(kw_only=True)
class Job:
    """An immutable snapshot of one job. A change makes a new snapshot, ``version + 1``.

    Times are timezone-aware UTC datetimes. ``params`` and ``result`` are JSON values.
    """

    id: str
    type: str
    params: dict[str, Any]
    status: JobStatus
    created_at: datetime
    run_at: datetime
    priority: int = 0
    progress: float = 0.0
    message: str | None = None
    result: Any = None
    error: JobError | None = None
    attempts: int = 0
    max_attempts: int = 1
    started_at: datetime | None = None
    finished_at: datetime | None = None
    timeout: float | None = None
    retention: float | None = None
    idempotency_key: str | None = None
    owner: str | None = None
    tags: tuple[str, ...] = ()
    cancel_requested: bool = False
    history: tuple[Run, ...] = ()
    trace: dict[str, str] | None = None  # the submitter's W3C trace context (internal)
    version: int = 1
    lease: Lease | None = attrs.field(default=None, repr=False)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL


def advance(job: Job, status: JobStatus | None = None, **changes: Any) -> Job:
    """Return the next version of ``job`` with ``changes`` applied.

    Args:
        job: The current snapshot.
        status: The new status, checked against the transition table; ``None`` keeps
            the status (a progress update, a cancel request).
        **changes: Other fields to change.

    Raises:
        IllegalTransition: the lifecycle does not allow this change, including any change
            at all to a job in a terminal state.
    """
    nxt = _next_status(job, status)
    if nxt is not job.status:
        changes["status"] = nxt
    changes["version"] = job.version + 1
    copier = _copiers.get(tuple(changes))
    if copier is None:
        if not _FIELD_NAMES.issuperset(changes):
            unknown = sorted(set(changes) - _FIELD_NAMES)
            raise TypeError(f"Job has no field(s) {', '.join(unknown)}")
        copier = _copier_for(tuple(changes))
    return copier(job, changes)


def _next_status(job: Job, status: JobStatus | None) -> JobStatus:
    """The status after changing ``job`` to ``status`` (``None``: the same), checked
    against the transition table: the one check every change goes through."""
    current = job.status
    if status is None or status is current:
        if current in TERMINAL:
            raise IllegalTransition(job.id, current.value, current.value)
        return current
    if status not in _TRANSITIONS[current]:
        raise IllegalTransition(job.id, current.value, status.value)
    return status


def transition(*fields: str) -> Callable[..., Job]:
    """A prepared :func:`advance` for one set of changed ``fields``, for a store's hot
    path: ``step = transition("a", "b")``, then ``step(job, status, a, b)`` is
    ``advance(job, status, a=a, b=b)``, the same check and the same record, without
    building keyword arguments and looking up a copier on every call.

    Raises:
        TypeError: a name is not a field of :class:`Job`, or is ``status``/``version``.
    """
    if not _FIELD_NAMES.issuperset(fields) or {"status", "version"} & set(fields):
        raise TypeError(f"cannot prepare a transition of {fields!r}")
    kept = [a.name for a in attrs.fields(Job) if a.name not in {*fields, "status", "version"}]
    lines = [f"def step(job, status, {', '.join(fields)}):", "    new = _new(_JobDraft)"]
    # _next_status() inline for an allowed change of status (the hot path's only case);
    # anything else goes through it, to get its answer or its IllegalTransition.
    lines += [
        "    if status is None or status is job.status or status not in _TRANSITIONS[job.status]:",
        "        status = _next_status(job, status)",
        "    new.status = status",
    ]
    lines += [f"    new.{name} = job.{name}" for name in kept]
    lines += [f"    new.{name} = {name}" for name in fields]
    lines += ["    new.version = job.version + 1", "    new.__class__ = Job", "    return new"]
    namespace: dict[str, Any] = {
        "_new": object.__new__,
        "_next_status": _next_status,
        "_TRANSITIONS": _TRANSITIONS,
        "_JobDraft": _JobDraft,
        "Job": Job,
    }
    exec("\n".join(lines), namespace)  # the source is built from field names only
    step: Callable[..., Job] = namespace["step"]
    return step


_Copier = Callable[[Job, dict[str, Any]], Job]
#: Copiers by the names of the fields they change, in the order the caller gave them
#: (each call site of advance() always gives the same order). Bounded: past it, the
#: generic copier serves the rare new combination.
_copiers: dict[tuple[str, ...], _Copier] = {}
_MAX_COPIERS = 128


def _draft_of(cls: type[Any]) -> type[Any]:
    """A writable twin of the frozen attrs class ``cls``, for building its records fast.

    A frozen class routes every slot write through ``object.__setattr__`` (a call that
    packs its arguments into a tuple: about 400 machine instructions a field). The twin
    has the same slots and the plain ``setattr``, so ``draft.field = value`` is a direct
    slot store; a record is filled in as a draft, then turned into ``cls`` by assigning
    ``__class__`` (allowed: the layouts are the same). The result is an ordinary,
    frozen ``cls`` record; nobody ever sees a draft.
    """
    namespace = {
        "__slots__": (),
        "__setattr__": object.__setattr__,
        "__delattr__": object.__delattr__,  # tp_setattro serves both: restore both
    }
    return type(f"_{cls.__name__}Draft", (cls,), namespace)


_JobDraft: Final = _draft_of(Job)


def _make_copier(changed: tuple[str, ...] | None) -> _Copier:
    """Build ``copy(job, changes)``: a slot-by-slot copy of ``job`` with ``changes``.

    ``attrs.evolve`` re-reads the field list and goes through ``__init__`` for every
    new version, twice per job on the worker's hot path; ``Job`` has no validators or
    converters to re-run, so a straight slot copy into a draft (:func:`_draft_of`)
    makes the same record at a fifth of the cost. Each slot is written once, from
    ``changes[name]`` for the ``changed`` fields and from ``job`` for the others.
    ``changed=None`` builds the generic copier, which takes any set of changes.
    """
    fields = attrs.fields(Job)
    assert all(a.validator is None and a.converter is None for a in fields)
    names = [a.name for a in fields]
    kept = [name for name in names if changed is None or name not in changed]
    lines = ["def copy(job, changes):", "    new = _new(_JobDraft)"]
    lines += [f"    new.{name} = job.{name}" for name in kept]
    if changed is None:
        lines += ["    for name, value in changes.items():", "        _setattr(new, name, value)"]
    else:
        lines += [f"    new.{name} = changes[{name!r}]" for name in changed]
    lines += ["    new.__class__ = Job", "    return new"]
    namespace: dict[str, Any] = {
        "_new": object.__new__,
        "_setattr": object.__setattr__,
        "_JobDraft": _JobDraft,
        "Job": Job,
    }
    exec("\n".join(lines), namespace)  # the source is built from field names only
    copier: _Copier = namespace["copy"]
    return copier


def _copier_for(changed: tuple[str, ...]) -> _Copier:
    """The copier for ``changed`` (known field names), made and kept on first use."""
    if len(_copiers) >= _MAX_COPIERS:
        return _copy_job
    copier = _copiers[changed] = _make_copier(changed)
    return copier


_FIELD_NAMES: Final = frozenset(a.name for a in attrs.fields(Job))
_copy_job: Final = _make_copier(None)


@attrs.frozen
class JobEvent:
    """One change to one job: ``{type, seq, at, job}`` with the full snapshot after it.

    ``seq`` grows with each event a store publishes (0 for snapshots). A subscriber that
    has seen ``job.version`` already can drop the event.
    """

    type: EventType
    seq: int
    at: datetime
    job: Job


_EventDraft: Final = _draft_of(JobEvent)
_LeaseDraft: Final = _draft_of(Lease)


def make_event(type: EventType, seq: int, at: datetime, job: Job) -> JobEvent:
    """``JobEvent(type, seq, at, job)``, built as a draft (:func:`_draft_of`): twice
    per job on a store's hot path, at a third of the cost of the frozen ``__init__``."""
    event = _new(_EventDraft)
    event.type = type
    event.seq = seq
    event.at = at
    event.job = job
    event.__class__ = JobEvent
    return event  # type: ignore[no-any-return]


def make_lease(worker_id: str, token: str, expires_at: datetime) -> Lease:
    """``Lease(worker_id, token, expires_at)``, built as a draft (see make_event)."""
    lease = _new(_LeaseDraft)
    lease.worker_id = worker_id
    lease.token = token
    lease.expires_at = expires_at
    lease.__class__ = Lease
    return lease  # type: ignore[no-any-return]


_new: Final = object.__new__
