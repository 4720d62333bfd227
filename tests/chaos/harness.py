"""What the chaos tests share: worker processes, the knobs, and the journal analysis.

Knobs (environment): ``ASYNCJOBS_CHAOS_ROUNDS`` (kill rounds per store, default 10),
``ASYNCJOBS_CHAOS_SEED`` (replay a run; the seed is printed), ``ASYNCJOBS_CHAOS_JOBS``
(jobs per run; default four per round, at least 40).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import attrs

from asyncjobs import Job, JobStatus, Queue

TESTS = Path(__file__).resolve().parent.parent
ROUNDS = int(os.environ.get("ASYNCJOBS_CHAOS_ROUNDS", "10"))
JOBS = int(os.environ.get("ASYNCJOBS_CHAOS_JOBS", str(max(40, 4 * ROUNDS))))


def chaos_seed() -> int:
    """The run's seed: ``ASYNCJOBS_CHAOS_SEED`` to replay one, else a fresh one."""
    given = os.environ.get("ASYNCJOBS_CHAOS_SEED")
    return int(given) if given else random.SystemRandom().randrange(2**32)


def job_params(rng: random.Random) -> dict[str, Any]:
    """Two to five short naps of random length, with a progress report after each."""
    return {"pauses": [round(rng.uniform(0.05, 0.3), 3) for _ in range(rng.randint(2, 5))]}


class Workers:
    """``asyncjobs worker chaos.app:worker`` processes; killed ones are replaced.

    Records when each process died: ``killed`` (by us, SIGKILL; the time is taken
    after the process was reaped, so it is after anything the process ever wrote) and
    ``crashed`` (it exited on its own; the time it was noticed).
    """

    def __init__(self, env: Mapping[str, str], logs: Path, count: int) -> None:
        self.env = {**os.environ, **env}
        self.logs = logs
        self.count = count
        self.procs: list[subprocess.Popen[bytes]] = []
        self.killed: dict[int, float] = {}
        self.crashed: dict[int, float] = {}
        self.exit_codes: dict[int, int] = {}
        self.frozen = 0

    def __enter__(self) -> Workers:
        for _ in range(self.count):
            self._spawn()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self) -> subprocess.Popen[bytes]:
        n = len(self.killed) + len(self.crashed) + len(self.procs)
        with (self.logs / f"worker-{n}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "asyncjobs", "worker", "chaos.app:worker",
                 "--log-level", "warning"],
                cwd=TESTS, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    async def wait_ready(self, journal: Path, *, within: float = 60.0) -> None:
        """Wait until every live worker has opened its store (its journal says so)."""
        with anyio.fail_after(within):
            while True:
                opened = {r["pid"] for r in read_journal(journal) if r["e"] == "open"}
                if opened.issuperset(p.pid for p in self.procs):
                    return
                self.replace_crashed()
                await anyio.sleep(0.1)

    def kill_random(self, rng: random.Random) -> int:
        """SIGKILL one live worker at random, start its replacement; return its pid."""
        victim = rng.choice(self.procs)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.killed[victim.pid] = time.time()
        self.procs.remove(victim)
        self._spawn()
        return victim.pid

    async def freeze(self, queue: Queue, rng: random.Random, *, lease: float) -> None:
        """SIGSTOP a worker that holds jobs, SIGCONT it as soon as every one of them was
        claimed by another worker (or ended): it wakes up as a stale lease holder in
        the middle of its successors' runs, where only fencing stops it."""
        held: dict[int, set[str]] = defaultdict(set)
        for job in (await queue.store.list(statuses=[JobStatus.RUNNING], limit=1000)).jobs:
            held[holder_pid(job)].add(job.id)
        victim = rng.choice([p for p in self.procs if p.pid in held] or self.procs)
        victim.send_signal(signal.SIGSTOP)
        self.frozen += 1
        try:
            with anyio.move_on_after(lease * 5):
                await anyio.sleep(lease)
                pending = set(held.get(victim.pid, ()))
                while pending:
                    for job_id in list(pending):
                        job = await queue.store.get(job_id)
                        moved = job.status is JobStatus.RUNNING and holder_pid(job) != victim.pid
                        if moved or job.is_terminal:
                            pending.discard(job_id)
                    await anyio.sleep(0.02)
        finally:
            victim.send_signal(signal.SIGCONT)

    def replace_crashed(self, *, respawn: bool = True) -> None:
        """Note (and replace) any worker that exited on its own."""
        for proc in list(self.procs):
            if proc.poll() is not None:
                self.crashed[proc.pid] = time.time()
                self.exit_codes[proc.pid] = proc.returncode
                self.procs.remove(proc)
                if respawn:
                    self._spawn()

    def stop(self) -> None:
        """SIGTERM every worker (a graceful drain), SIGKILL what is left after 15 s."""
        self.replace_crashed(respawn=False)
        for proc in self.procs:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        for proc in self.procs:
            try:
                self.exit_codes[proc.pid] = proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                self.exit_codes[proc.pid] = proc.wait()

    def tail(self, lines: int = 30) -> str:
        """The last lines of every worker's log, for a failure message."""
        out = []
        for path in sorted(self.logs.glob("worker-*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            if text:
                out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)


def holder_pid(job: Job) -> int:
    """The pid of the worker process holding a running job (worker ids: host:pid:suffix);
    -1 if the id does not say."""
    parts = job.lease.worker_id.split(":") if job.lease is not None else []
    return int(parts[-2]) if len(parts) >= 2 and parts[-2].isdigit() else -1


def read_journal(directory: Path) -> list[dict[str, Any]]:
    records = []
    for path in directory.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            records.append(json.loads(line))
    return records


@attrs.define
class Execution:
    """One run of a handler: from its start record to its end (or its process's death)."""

    job: str
    token: str
    attempt: int
    pid: int
    start: float
    expires: float  # the latest lease expiry the store granted this token
    end: float | None = None
    how: str | None = None  # ok, lost, cancelled, error; None: the process died first


@attrs.frozen
class Figures:
    """What a chaos run measured; ``problems`` say what went wrong, one line each."""

    seed: int
    kills: int
    frozen: int
    crashed: int
    accepted: int
    finished: int
    failed: int
    lost: int
    executions: int
    interrupted: int  # executions cut short by a kill (their job ran again)
    run_twice: int  # overlapping executions of one job while the first holder lived
    # (a frozen worker's lease runs out while it lives: expected, and fenced off)
    run_twice_in_lease: int  # ... of which the second began before the first's lease ran out
    stale_finish: int
    fenced: int  # executions or finish calls the store refused: a stale holder was stopped
    problems: tuple[str, ...]

    def line(self) -> str:
        return (
            f"seed={self.seed} kills={self.kills} frozen={self.frozen} crashed={self.crashed} "
            f"accepted={self.accepted} finished={self.finished} failed={self.failed} "
            f"lost={self.lost} executions={self.executions} interrupted={self.interrupted} "
            f"run_twice={self.run_twice} (within lease: {self.run_twice_in_lease}) "
            f"stale_finish={self.stale_finish} fenced={self.fenced}"
        )


def analyse(
    *,
    seed: int,
    accepted: Iterable[str],
    jobs: Mapping[str, Job],
    records: Iterable[dict[str, Any]],
    died: Mapping[int, float],
    kills: int,
    frozen: int = 0,
    crashed: int,
) -> Figures:
    """Work out the figures from the final jobs and every process's journal.

    ``died`` maps each worker pid that was killed (or crashed) to a time after its death:
    an execution with no end record ended then.
    """
    accepted = list(accepted)
    execs: dict[str, Execution] = {}
    finishes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    records = list(records)
    for rec in records:
        if rec["e"] == "start":
            execs[rec["token"]] = Execution(
                rec["job"], rec["token"], rec["attempt"], rec["pid"], rec["t"], rec["expires"]
            )
    for rec in records:
        kind, ex = rec["e"], execs.get(rec.get("token", ""))
        if kind == "end" and ex is not None:
            ex.end, ex.how = rec["t"], rec["how"]
        elif kind == "renew" and ex is not None:
            ex.expires = max(ex.expires, rec["expires"])
        elif kind == "finish":
            finishes[rec["job"]].append(rec)
    by_job: dict[str, list[Execution]] = defaultdict(list)
    for ex in execs.values():
        by_job[ex.job].append(ex)

    problems: list[str] = []
    interrupted = run_twice = in_lease = 0
    for job_id, runs in by_job.items():
        runs.sort(key=lambda ex: ex.start)
        for ex in runs:
            if ex.end is None:
                if ex.pid in died:
                    ex.end = died[ex.pid]
                    interrupted += 1
                else:
                    problems.append(f"job {job_id}: execution {ex.token} never ended")
                    ex.end = float("inf")
        for i, first in enumerate(runs):
            for second in runs[i + 1 :]:
                assert first.end is not None
                if second.start < first.end:
                    run_twice += 1
                    if second.start < first.expires:
                        in_lease += 1
                        problems.append(
                            f"job {job_id}: attempt {second.attempt} began while attempt "
                            f"{first.attempt} still held a valid lease"
                        )

    finished = failed = lost = stale = 0
    for job_id in accepted:
        job = jobs.get(job_id)
        if job is None or not job.is_terminal:
            lost += 1
            problems.append(f"job {job_id}: accepted, never finished ({job and job.status.value})")
            continue
        if job.status is not JobStatus.COMPLETED:
            failed += 1
            problems.append(f"job {job_id}: {job.status.value}: {job.error}")
            continue
        finished += 1
        why = _stale(job, by_job.get(job_id, []), finishes.get(job_id, []))
        if why:
            stale += 1
            problems.append(f"job {job_id}: {why}")
    return Figures(
        seed=seed,
        kills=kills,
        frozen=frozen,
        crashed=crashed,
        accepted=len(accepted),
        finished=finished,
        failed=failed,
        lost=lost,
        executions=len(execs),
        interrupted=interrupted,
        run_twice=run_twice,
        run_twice_in_lease=in_lease,
        stale_finish=stale,
        fenced=sum(ex.how in ("lost", "cancelled") for ex in execs.values())
        + sum(not f["ok"] for fs in finishes.values() for f in fs),
        problems=tuple(problems),
    )


def _stale(job: Job, runs: list[Execution], finishes: list[dict[str, Any]]) -> str | None:
    """Why the completion of ``job`` was not written by its current lease holder, if so.

    The result names the execution whose finish the store accepted; it must be the last
    claim. Claims are ordered by attempt, then start: a requeue after a graceful stop
    gives the attempt back, so two claims may share an attempt number. Every finish the
    store accepted must have been called before any later claim had begun, and at most
    one may complete the job.
    """
    result = job.result
    claims = sorted(runs, key=lambda ex: (ex.attempt, ex.start))
    if not claims or claims[-1].attempt != job.attempts:
        return f"no journal record of its last attempt ({job.attempts})"
    latest = claims[-1]
    if result["token"] != latest.token or result["attempt"] != job.attempts:
        return (
            f"completed by attempt {result['attempt']} (token {result['token']}) while "
            f"attempt {job.attempts} (token {latest.token}) held the lease"
        )
    completions = [f for f in finishes if f["ok"] and f["status"] == JobStatus.COMPLETED.value]
    if len(completions) > 1:
        return f"completed {len(completions)} times"
    order = {ex.token: i for i, ex in enumerate(claims)}
    for fin in finishes:
        if not fin["ok"]:
            continue
        if fin["token"] not in order:
            return f"a finish by {fin['token']}, a token it never ran under, was accepted"
        later = claims[order[fin["token"]] + 1 :]
        if any(ex.start < fin["began"] for ex in later):
            return f"a finish ({fin['status']}) by {fin['token']} was accepted after a later claim"
    return None
