"""What the stores' hand-offs of a new job to an idle worker share.

The PostgreSQL store hands a job to an idle worker of its own process, the Redis store
to a parked worker of any process; both store the job already claimed. When the worker
is gone before it takes the job, the job goes back to the queue through the store's own
finish, with the attempt not counted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from ..errors import JobNotFound, LeaseLost
from ..job import Job, JobStatus
from .protocol import Outcome

__all__ = ["give_back"]

logger = logging.getLogger("asyncjobs.store")


async def give_back(store: Any, jobs: Sequence[Job]) -> None:
    """Requeue ``jobs``, handed to a worker that never took them (attempt returned)."""
    for job in jobs:
        assert job.lease is not None
        now = datetime.now(timezone.utc)
        try:
            await store.finish(job.id, job.lease.token, Outcome(JobStatus.QUEUED), now=now)
        except (LeaseLost, JobNotFound):
            pass  # its lease ran out and it moved on: nothing to give back
        except Exception:  # its lease runs out and the janitor requeues it
            logger.warning("could not give back job %s", job.id, exc_info=True)
