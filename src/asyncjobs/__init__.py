"""asyncjobs: an embeddable, pure-asyncio job runner.

Define job types, submit jobs, watch them live, cancel and retry them::

    queue = Queue()

    @queue.job_type("countdown", timeout=600)
    async def countdown(ctx: JobContext, params: Countdown) -> dict: ...

    async with queue:
        job = await queue.submit("countdown", {"seconds": 5})
"""

from .context import JobContext, ProcessJobContext, ThreadJobContext
from .errors import (
    AsyncJobsError,
    ConfigurationError,
    IllegalTransition,
    InvalidParams,
    InvalidSubmission,
    JobCancelled,
    JobNotFound,
    JobTimeout,
    LeaseLost,
    QueueFull,
    SubscriberOverflow,
    UnknownJobType,
    WaitTimeout,
)
from .events import EventBus
from .executors import Executor
from .janitor import Janitor, JanitorConfig, JanitorReport
from .job import EventType, Job, JobError, JobEvent, JobStatus
from .queue import Queue
from .registry import Backoff, JobRegistry, JobType
from .stores import (
    MemoryStore,
    Notifier,
    Outcome,
    Page,
    StateStore,
    Stats,
    Store,
    WorkerInfo,
    open_store,
)
from .subscription import Subscription
from .supervision import Health, Problem
from .worker import Worker, WorkerConfig

__version__ = "0.1.0"

__all__ = [
    "AsyncJobsError",
    "Backoff",
    "ConfigurationError",
    "EventBus",
    "EventType",
    "Executor",
    "Health",
    "IllegalTransition",
    "InvalidParams",
    "InvalidSubmission",
    "Janitor",
    "JanitorConfig",
    "JanitorReport",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobError",
    "JobEvent",
    "JobNotFound",
    "JobRegistry",
    "JobStatus",
    "JobTimeout",
    "JobType",
    "LeaseLost",
    "MemoryStore",
    "Notifier",
    "Outcome",
    "Page",
    "Problem",
    "ProcessJobContext",
    "Queue",
    "QueueFull",
    "StateStore",
    "Stats",
    "Store",
    "SubscriberOverflow",
    "Subscription",
    "ThreadJobContext",
    "UnknownJobType",
    "WaitTimeout",
    "Worker",
    "WorkerConfig",
    "WorkerInfo",
    "__version__",
    "open_store",
]
