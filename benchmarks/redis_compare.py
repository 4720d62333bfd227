"""The Redis store side by side with raw LPUSH/BRPOP and the Redis peers, in one run.

    python benchmarks/redis_compare.py --n 10000 --runs 3 \\
        --peer-python .bvenv/bin/python --peers saq,arq,taskiq,streaq
    python benchmarks/redis_compare.py --n 10000 --cases drain_c10 --systems asyncjobs,raw
    python benchmarks/redis_compare.py --baseline /tmp/main-tree ...   # + that tree's asyncjobs
    python benchmarks/redis_compare.py --n 10000 --child drain_c50 asyncjobs --profile cprofile

Cases (every run of every system is its own process):

* ``drain_c10`` / ``drain_c50``: N no-op jobs queued first (not timed), then one worker
  process with that many slots; jobs per second until the last completion is observed
  (asyncjobs: the N-th ``job_completed`` event, published after the store committed);
* ``enqueue``: N sequential submits from one client, per second;
* ``latency``: an idle worker (10 slots) in the submitter's process, on its own store
  connections (so the wake-up and the completion travel through Redis); 300 jobs
  submitted 10 ms apart (20 more before them are not counted), each awaited with the
  system's own wait; p50 milliseconds from submit to the submitter seeing the end
  (``done``), and to the handler starting (``start``).

Baseline ``raw``: LPUSH N items, then C consumers on their own connections BRPOP them
(one round trip per job, no state, no events: the floor of any Redis queue). Peers
(SAQ, arq, taskiq, streaQ) run through ``peer_*.py`` with ``--peer-python`` (and
``--streaq-python`` when streaQ needs a venv of its own).

The systems are interleaved run by run (round 1: every case of every system once, then
round 2, ...), so that they share the machine's load; the load average is printed with
every round. Figures are medians over the rounds, every run shown beside them.
``cpu_rate`` (jobs per CPU-second of the worker process) and, for asyncjobs and raw, the
Redis server's CPU per job (``INFO cpu`` before and after: other clients of the server
count too) are printed by the child where it can measure them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
CASES = ("drain_c10", "drain_c50", "enqueue", "latency")
LATENCY_N = 300
#: When each ``stamp`` job's handler started (the latency case), by job id.
STARTS: dict[str, float] = {}


# -- the cases, run in a child process ------------------------------------------------


async def _destroy(url: str, pattern: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    keys = [k async for k in client.scan_iter(match=pattern, count=1000)]
    for i in range(0, len(keys), 500):
        await client.delete(*keys[i : i + 500])
    await client.aclose()


async def _server_cpu() -> float:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    info = await client.info("cpu")
    await client.aclose()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class _Meter:
    """Wall time, this process's CPU time and the Redis server's CPU time of a span."""

    async def __aenter__(self) -> _Meter:
        self.server = await _server_cpu()
        self.cpu = time.process_time()
        self.wall = time.perf_counter()
        return self

    def stop(self) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu

    async def __aexit__(self, *exc: object) -> None:
        self.server = await _server_cpu() - self.server

    def figures(self, n: int) -> dict[str, float]:
        return {
            "rate": n / self.wall,
            "cpu_rate": n / self.cpu,
            "server_us_per_job": self.server / n * 1e6,
        }


async def raw_drain(n: int, concurrency: int) -> dict[str, Any]:
    import redis.asyncio as aioredis

    key = f"bench-raw-{uuid.uuid4().hex[:8]}"
    producer = aioredis.Redis.from_url(REDIS_URL)
    for i in range(0, n, 500):
        await producer.lpush(key, *(b"{}" for _ in range(min(500, n - i))))
    left = n
    done = asyncio.Event()

    async def consume() -> None:
        nonlocal left
        client = aioredis.Redis.from_url(REDIS_URL, single_connection_client=True)
        while left > 0:
            got = await client.brpop([key], timeout=1)
            if got is not None:
                left -= 1
                if left == 0:
                    done.set()
        await client.aclose()

    async with _Meter() as meter:
        tasks = [asyncio.create_task(consume()) for _ in range(concurrency)]
        await done.wait()
        meter.stop()
    await asyncio.gather(*tasks)
    await producer.delete(key)
    await producer.aclose()
    return meter.figures(n)


def _queue(prefix: str, concurrency: int) -> Any:
    from asyncjobs import JanitorConfig, JobContext, Queue

    # A URL, not a store object: the queue then owns its store and closes it on exit (a
    # store left open would tail the stream, decoding the next queue's events).
    queue = Queue(
        f"{REDIS_URL}?prefix={prefix}",
        concurrency=concurrency,
        janitor=JanitorConfig(enabled=False),
    )

    @queue.job_type("noop", max_attempts=1)
    async def noop(ctx: JobContext, params: dict[str, Any]) -> None:
        return None

    @queue.job_type("stamp", max_attempts=1)
    async def stamp(ctx: JobContext, params: dict[str, Any]) -> None:
        STARTS[ctx.job_id] = time.perf_counter()

    return queue


def _profiler(kind: str | None) -> Any:
    if kind == "cprofile":
        import cProfile

        return cProfile.Profile()
    if kind == "pyinstrument":
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.enable = profiler.start  # type: ignore[method-assign]
        profiler.disable = profiler.stop  # type: ignore[method-assign]
        return profiler
    return None


def _print_profile(profiler: Any) -> None:
    if profiler is None:
        return
    if hasattr(profiler, "output_text"):
        print(profiler.output_text(unicode=False, color=False), file=sys.stderr)
        return
    import pstats

    stats = pstats.Stats(profiler, stream=sys.stderr)
    stats.sort_stats("tottime").print_stats(45)


async def asyncjobs_drain(n: int, concurrency: int, profile: str | None) -> dict[str, Any]:
    from asyncjobs.job import EventType

    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    profiler = _profiler(profile)
    try:
        async with _queue(prefix, 0) as submitter:
            for i in range(0, n, 500):
                await submitter.submit_many([{"type": "noop"} for _ in range(min(500, n - i))])
        worker = _queue(prefix, concurrency)
        done = asyncio.Event()
        seen = 0

        def on_event(event: Any) -> None:
            nonlocal seen
            if event.type is EventType.COMPLETED:
                seen += 1
                if seen == n:
                    done.set()

        worker.store.add_listener(on_event)
        async with _Meter() as meter:
            if profiler is not None:
                profiler.enable()
            async with worker:
                await done.wait()
                meter.stop()
                if profiler is not None:
                    profiler.disable()
        _print_profile(profiler)
        return meter.figures(n)
    finally:
        await _destroy(REDIS_URL, "{" + prefix + "}:*")


async def asyncjobs_enqueue(n: int, profile: str | None) -> dict[str, Any]:
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    profiler = _profiler(profile)
    try:
        async with _queue(prefix, 0) as queue, _Meter() as meter:
            if profiler is not None:
                profiler.enable()
            for _ in range(n):
                await queue.submit("noop")
            meter.stop()
            if profiler is not None:
                profiler.disable()
        _print_profile(profiler)
        return meter.figures(n)
    finally:
        await _destroy(REDIS_URL, "{" + prefix + "}:*")


async def asyncjobs_latency(n: int) -> dict[str, Any]:
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        async with _queue(prefix, 0) as submitter, _queue(prefix, 10):
            await asyncio.sleep(0.5)  # the worker reaches its idle wait

            async def one() -> tuple[float, float]:
                t0 = time.perf_counter()
                job = await submitter.submit("stamp")
                await submitter.wait(job.id, timeout=30)
                return STARTS[job.id] - t0, time.perf_counter() - t0

            tasks = []
            for _ in range(20 + n):
                tasks.append(asyncio.create_task(one()))
                await asyncio.sleep(0.010)
            results = (await asyncio.gather(*tasks))[20:]
        to_start = sorted(s for s, _ in results)
        to_done = sorted(d for _, d in results)
        return {
            "done_p50_ms": to_done[len(to_done) // 2] * 1000,
            "done_p95_ms": to_done[int(len(to_done) * 0.95)] * 1000,
            "start_p50_ms": to_start[len(to_start) // 2] * 1000,
        }
    finally:
        await _destroy(REDIS_URL, "{" + prefix + "}:*")


async def child(case: str, system: str, n: int, profile: str | None) -> dict[str, Any]:
    if case.startswith("drain_c"):
        c = int(case[len("drain_c") :])
        if system == "raw":
            return await raw_drain(n, c)
        return await asyncjobs_drain(n, c, profile)
    if case == "enqueue":
        return await asyncjobs_enqueue(n, profile)
    return await asyncjobs_latency(min(n, LATENCY_N))


# -- the driver --------------------------------------------------------------------------

_PEERS = {
    "saq": "peer_saq.py",
    "arq": "peer_arq.py",
    "taskiq": "peer_taskiq.py",
    "streaq": "peer_streaq.py",
}


def _argv(args: argparse.Namespace, system: str, case: str) -> list[str] | None:
    if system in ("asyncjobs", "raw", "baseline"):
        if system == "raw" and not case.startswith("drain"):
            return None
        child = "raw" if system == "raw" else "asyncjobs"
        return [sys.executable, __file__, "--n", str(args.n), "--child", case, child]
    python = args.streaq_python if system == "streaq" else args.peer_python
    script = HERE / _PEERS[system]
    if not python or not script.exists():
        return None
    if case.startswith("drain_c"):
        mode, extra = "drain", ["--concurrency", case[len("drain_c") :]]
    elif case == "enqueue":
        mode, extra = "enqueue", []
    else:
        mode, extra = "latency", ["--concurrency", "10"]
    n = min(args.n, LATENCY_N) if mode == "latency" else args.n
    argv = [python, str(script), mode, "--n", str(n), *extra]
    if system == "saq":
        argv += ["--backend", "redis"]
    return argv


def _run(argv: list[str], timeout: float, src: str | None = None) -> dict[str, Any] | str:
    env = {**os.environ, "BENCH_REDIS_URL": REDIS_URL}
    if src is not None:  # another tree's asyncjobs first on the path
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE
        )
    except subprocess.TimeoutExpired:
        return "timed out"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return f"failed: {last[:80]}"
    line = done.stdout.strip().splitlines()[-1]
    data: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return data


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _cell(values: list[float], note: str) -> str:
    if not values:
        return note or "n/a"
    shown = " / ".join(f"{v:,.0f}" if v >= 100 else f"{v:.1f}" for v in values)
    med = statistics.median(values)
    return (f"{med:,.0f}" if med >= 100 else f"{med:.1f}") + f" ({shown})"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peer-python", default=None, help="a python that imports the peers")
    parser.add_argument("--streaq-python", default=None, help="default: --peer-python")
    parser.add_argument("--peers", default="saq,arq,taskiq,streaq")
    parser.add_argument("--systems", default=None, help="default: asyncjobs,raw and --peers")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument(
        "--baseline", default=None, help="another tree (its src/): run as system 'baseline'"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "SYSTEM"), help=argparse.SUPPRESS)
    parser.add_argument("--profile", choices=["cprofile", "pyinstrument"], default=None)
    args = parser.parse_args()
    if args.child:
        result = asyncio.run(child(args.child[0], args.child[1], args.n, args.profile))
        print(json.dumps(result))
        return
    args.streaq_python = args.streaq_python or args.peer_python
    cases = [c for c in args.cases.split(",") if c]
    if args.systems:
        systems = [s for s in args.systems.split(",") if s]
    else:
        peers = [p for p in args.peers.split(",") if p] if args.peer_python else []
        systems = ["asyncjobs", *(["baseline"] if args.baseline else []), "raw", *peers]
    figures: dict[tuple[str, str], list[float]] = {}
    starts: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    server: dict[tuple[str, str], list[float]] = {}
    notes: dict[tuple[str, str], str] = {}
    loads = [_load()]
    began = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(f"started {began}, load {loads[0]}", file=sys.stderr, flush=True)
    for round_ in range(1, args.runs + 1):
        for case in cases:
            for system in systems:
                argv = _argv(args, system, case)
                if argv is None or (case, system) in notes:
                    continue
                src = str(Path(args.baseline) / "src") if system == "baseline" else None
                result = _run(argv, args.timeout, src)
                if isinstance(result, str):
                    notes[(case, system)] = result
                    print(f"round {round_} {case:10} {system:10} {result}", file=sys.stderr)
                    continue
                key = (case, system)
                if case == "latency":
                    if "done_p50_ms" in result:
                        figures.setdefault(key, []).append(float(result["done_p50_ms"]))
                    if "start_p50_ms" in result:
                        starts.setdefault(key, []).append(float(result["start_p50_ms"]))
                else:
                    figures.setdefault(key, []).append(float(result["rate"]))
                if "cpu_rate" in result:
                    cpu.setdefault(key, []).append(float(result["cpu_rate"]))
                if "server_us_per_job" in result:
                    server.setdefault(key, []).append(float(result["server_us_per_job"]))
                shown = {k: round(v, 2) for k, v in result.items() if isinstance(v, float)}
                print(f"round {round_} {case:10} {system:10} {shown}", file=sys.stderr, flush=True)
        loads.append(_load())
        print(f"round {round_} done, load {loads[-1]}", file=sys.stderr, flush=True)
    _report(args, cases, systems, figures, starts, cpu, server, notes, began, loads)


def _report(
    args: argparse.Namespace,
    cases: list[str],
    systems: list[str],
    figures: dict[tuple[str, str], list[float]],
    starts: dict[tuple[str, str], list[float]],
    cpu: dict[tuple[str, str], list[float]],
    server: dict[tuple[str, str], list[float]],
    notes: dict[tuple[str, str], str],
    began: str,
    loads: list[str],
) -> None:
    print(
        f"\nN={args.n} (latency: {LATENCY_N} jobs), {args.runs} rounds interleaved, started"
        f" {began}; load average (1/5/15 min) before and after each round: {', '.join(loads)}"
    )
    print("Medians, every run in brackets; drain/enqueue in jobs/s, latency p50 in ms.\n")
    labels = {
        "drain_c10": "drain c=10 (jobs/s)",
        "drain_c50": "drain c=50 (jobs/s)",
        "enqueue": "enqueue, one client (jobs/s)",
        "latency": "complete-observed p50, idle worker (ms)",
    }
    print("| case | " + " | ".join(systems) + " |")
    print("| --- |" + " --- |" * len(systems))

    def row(label: str, data: dict[tuple[str, str], list[float]], case: str) -> None:
        cells = []
        for s in systems:
            if (case, s) in data:
                cells.append(_cell(data[(case, s)], ""))
            elif (case, s) in notes:
                cells.append(notes[(case, s)])
            else:
                cells.append("-")
        print(f"| {label} | " + " | ".join(cells) + " |")

    for case in cases:
        row(labels[case], figures, case)
        if case == "latency" and starts:
            row("enqueue-to-start p50 (ms)", starts, case)
    for case in cases:
        if any((case, s) in cpu for s in systems):
            row(f"{case}: jobs per CPU-second of the process", cpu, case)
    for case in cases:
        if any((case, s) in server for s in systems):
            row(f"{case}: Redis server CPU per job (us)", server, case)

    def med(case: str, system: str) -> float | None:
        values = figures.get((case, system))
        return statistics.median(values) if values else None

    peers = [s for s in systems if s not in ("asyncjobs", "raw", "baseline")]
    print("\nGoals (medians of this run):")
    for case in ("drain_c10", "drain_c50"):
        ours, raw = med(case, "asyncjobs"), med(case, "raw")
        ran = {p: med(case, p) for p in peers if med(case, p)}
        if ours is None:
            continue
        parts = []
        if ran:
            best = max(ran, key=lambda p: ran[p] or 0.0)
            ratio = ours / (ran[best] or 1.0)
            parts.append(f"{ratio:.2f}x the best peer ({best}; goal 2x: {_ok(ratio >= 2)})")
        if raw:
            ratio = ours / raw
            parts.append(f"{ratio:.2f}x raw LPUSH/BRPOP (goal 0.8x: {_ok(ratio >= 0.8)})")
        print(f"- {case}: " + "; ".join(parts))
    ours, saq = med("enqueue", "asyncjobs"), med("enqueue", "saq")
    if ours and saq:
        print(f"- enqueue: {ours / saq:.2f}x SAQ (goal 1x: {_ok(ours >= saq)})")
    ours = med("latency", "asyncjobs")
    if ours is not None:
        print(f"- complete-observed p50: {ours:.2f} ms (goal at most 2 ms: {_ok(ours <= 2)})")
    missing = [s for s in peers if not any((c, s) in figures for c in cases)]
    if missing:
        print(f"- peers without figures: {', '.join(missing)}")


def _ok(met: bool) -> str:
    return "met" if met else "missed"


if __name__ == "__main__":
    main()
