"""The chaos tests' judge (``harness.analyse``) on journals written by hand: it must see
each kind of fault it is there to catch, and not see one where there is none."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from asyncjobs import Job, JobStatus

from .harness import Figures, analyse

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def job(status: JobStatus, attempts: int, result: Any = None) -> Job:
    return Job(
        id="j", type="chaos", params={}, status=status, created_at=T0, run_at=T0,
        attempts=attempts, max_attempts=25, result=result,
    )  # fmt: skip


def start(token: str, attempt: int, t: float, pid: int = 1, lease: float = 1.5) -> dict[str, Any]:
    return {"e": "start", "job": "j", "token": token, "attempt": attempt, "pid": pid,
            "t": t, "expires": t + lease}  # fmt: skip


def end(token: str, t: float, how: str = "ok") -> dict[str, Any]:
    return {"e": "end", "job": "j", "token": token, "t": t, "how": how}


def finish(token: str, began: float, ok: bool = True) -> dict[str, Any]:
    return {"e": "finish", "job": "j", "token": token, "status": "completed", "ok": ok,
            "began": began, "t": began + 0.01}  # fmt: skip


def judge(final: Job | None, records: list[dict[str, Any]], died: dict[int, float]) -> Figures:
    return analyse(
        seed=0, accepted=["j"], jobs={} if final is None else {"j": final}, records=records,
        died=died, kills=len(died), crashed=0,
    )  # fmt: skip


def done_by(token: str, attempt: int, attempts: int | None = None) -> Job:
    result = {"token": token, "attempt": attempt, "pid": 2}
    return job(JobStatus.COMPLETED, attempts or attempt, result)


def test_a_clean_run_has_no_problem() -> None:
    figures = judge(done_by("a", 1), [start("a", 1, 0.0), end("a", 1.0), finish("a", 1.0)], {})
    assert figures.problems == ()
    assert (figures.finished, figures.lost, figures.stale_finish, figures.run_twice) == (1, 0, 0, 0)


def test_a_killed_execution_ends_at_the_kill_and_does_not_count_as_a_double_run() -> None:
    records = [start("a", 1, 0.0, pid=1), start("b", 2, 2.0, pid=2), end("b", 3.0)]
    records.append(finish("b", 3.0))
    figures = judge(done_by("b", 2), records, died={1: 0.5})
    assert figures.problems == ()
    assert (figures.interrupted, figures.run_twice) == (1, 0)


def test_an_accepted_job_that_never_finished_is_lost() -> None:
    figures = judge(job(JobStatus.RUNNING, 1), [start("a", 1, 0.0, pid=1)], died={1: 0.5})
    assert figures.lost == 1 and figures.problems
    assert judge(None, [], {}).lost == 1  # or that vanished from the store


def test_a_completion_by_an_earlier_attempt_is_a_stale_finish() -> None:
    # Attempt 1's holder lived past its lease, attempt 2 began, and attempt 1's
    # completion was accepted anyway: the result names attempt 1, the job says 2.
    records = [start("a", 1, 0.0), end("a", 2.5), start("b", 2, 2.0, pid=2), end("b", 3.0)]
    figures = judge(done_by("a", 1, attempts=2), records, {})
    assert figures.stale_finish == 1
    assert figures.run_twice == 1 and figures.run_twice_in_lease == 0  # lease had run out


def test_an_accepted_finish_called_after_a_later_claim_is_a_stale_finish() -> None:
    records = [start("a", 1, 0.0), end("a", 2.5), start("b", 2, 2.0, pid=2), end("b", 3.0)]
    records += [finish("a", 2.6), finish("b", 3.0)]
    assert judge(done_by("b", 2), records, {}).stale_finish == 1
    records[-2] = finish("a", 2.6, ok=False)  # fenced off, as it must be
    assert judge(done_by("b", 2), records, {}).stale_finish == 0


def test_a_second_run_inside_a_live_holders_lease_is_a_problem() -> None:
    records = [start("a", 1, 0.0), end("a", 1.2), start("b", 2, 1.0, pid=2), end("b", 2.0)]
    figures = judge(done_by("b", 2), records, {})
    assert figures.run_twice_in_lease == 1
    assert any("valid lease" in p for p in figures.problems)
    # A renewal the store granted counts too: here the lease ran out at 0.9 + 1.5.
    records = [start("a", 1, 0.0, lease=0.5), end("a", 2.5), start("b", 2, 2.0, pid=2)]
    records += [end("b", 3.0), {"e": "renew", "job": "j", "token": "a", "t": 0.9, "expires": 2.4}]
    assert judge(done_by("b", 2), records, {}).run_twice_in_lease == 1


def test_an_attempt_given_back_by_a_graceful_stop_is_not_a_stale_finish() -> None:
    # A worker drained on shutdown requeues its job with the attempt given back, so
    # the next claim runs as attempt 1 again: the later claim is the current holder.
    records = [start("a", 1, 0.0), end("a", 0.5, "cancelled"), start("b", 1, 1.0, pid=2)]
    records += [end("b", 2.0), finish("b", 2.0)]
    records.append({**finish("a", 0.5), "status": "queued"})
    assert judge(done_by("b", 1), records, {}).problems == ()
    assert judge(done_by("a", 1), records, {}).stale_finish == 1
