"""asyncjobs: an embeddable, pure-asyncio job runner."""

from .errors import (
    AsyncJobsError,
    ConfigurationError,
    IllegalTransition,
    InvalidParams,
    JobNotFound,
    JobTimeout,
    QueueFull,
    UnknownJobType,
)
from .job import EventType, Job, JobError, JobEvent, JobStatus
from .stores import MemoryStore, Store, open_store

__all__ = [
    "AsyncJobsError",
    "ConfigurationError",
    "EventType",
    "IllegalTransition",
    "InvalidParams",
    "Job",
    "JobError",
    "JobEvent",
    "JobNotFound",
    "JobStatus",
    "JobTimeout",
    "MemoryStore",
    "QueueFull",
    "Store",
    "UnknownJobType",
    "open_store",
]
