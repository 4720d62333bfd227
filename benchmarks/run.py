"""Run the whole benchmark suite: ``python benchmarks/run.py`` (one command).

Options:
    --quick             smoke run: tiny N, one run per case, nothing written
    --only TERM         run the cases matching TERM (repeatable, or comma-separated):
                        a group (enqueue, drain, multiproc, latency, fanout, memory), a
                        system (asyncjobs, arq, saq, ...), a backend (memory, sqlite,
                        postgres, redis), ``system/backend`` or a case key
    --skip TERM         leave those out (same terms)
    --pairs             run only the cases behind the issue's asyncjobs / peer pairs, at
                        the issue's sizes (N = 10,000 for every enqueue and drain)
    --runs R            runs per case (default 3; the figure is the median)
    --no-write          do not rewrite RESULTS.md, results.json and throughput.png
    --render            run nothing: rewrite RESULTS.md, docs/benchmarks.md and the
                        plots from the last results.json

Each run is a separate process bounded by a timeout; a run that fails, times out or
cannot import its library is reported as such in the tables, never dropped. Runs are
interleaved (round 1 of every case, then round 2, ...), so a pair's two sides share
the machine's load; the pairs table (``pairs.py``) closes every run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pairs
import report

HERE = Path(__file__).resolve().parent
PG_BACKED = {"postgres"}


@dataclass
class Case:
    key: str
    group: str
    system: str
    backend: str
    argv: list[str]
    timeout: float
    runs: int | None = None  # None: the suite default
    tags: set[str] = field(default_factory=set)

    def matches(self, terms: list[str]) -> bool:
        names = {
            self.group,
            self.system,
            self.backend,
            f"{self.system}/{self.backend}",
            self.key,
            *self.tags,
        }
        return any(t in names for t in terms)


@dataclass
class Sizes:
    enqueue_local: int  # in-process and SQLite: the 10,000 submits
    enqueue_redis: int
    enqueue_pg: int
    drain_local: int
    drain_sqlite: int
    drain_redis: int
    drain_pg: int
    latency: int
    fanout_k: tuple[int, ...]
    memory_jobs: int


FULL = Sizes(10_000, 3_000, 1_000, 10_000, 2_000, 1_000, 600, 300, (100, 1_000, 5_000), 100_000)
#: ``--pairs``: the issue's N = 10,000 no-op jobs for every enqueue and drain.
PAIRS = Sizes(10_000, 10_000, 10_000, 10_000, 10_000, 10_000, 10_000, 300, (1_000, 5_000), 100_000)
QUICK = Sizes(200, 100, 50, 200, 100, 100, 50, 20, (20,), 2_000)


def cases(s: Sizes) -> list[Case]:
    out: list[Case] = []

    def add(
        group: str,
        system: str,
        backend: str,
        script: str,
        args: list[str],
        timeout: float = 150,
        runs: int | None = None,
        suffix: str = "",
    ) -> None:
        key = f"{group}{suffix}/{system}/{backend}"
        out.append(Case(key, group, system, backend, [script, *args], timeout, runs))

    aj = "bench_asyncjobs.py"
    # enqueue
    add(
        "enqueue",
        "asyncjobs",
        "memory",
        aj,
        ["enqueue", "--store", "memory", "--n", str(s.enqueue_local)],
    )
    add(
        "enqueue",
        "asyncjobs",
        "sqlite",
        aj,
        ["enqueue", "--store", "sqlite", "--n", str(s.enqueue_local)],
    )
    add(
        "enqueue",
        "asyncjobs",
        "postgres",
        aj,
        ["enqueue", "--store", "postgres", "--n", str(s.enqueue_pg)],
    )
    add(
        "enqueue",
        "asyncio.Queue",
        "memory",
        "bench_baselines.py",
        ["enqueue", "--system", "asyncio", "--n", str(s.enqueue_local)],
    )
    add(
        "enqueue",
        "aiojobs",
        "memory",
        "bench_baselines.py",
        ["enqueue", "--system", "aiojobs", "--n", str(s.enqueue_local)],
    )
    add("enqueue", "arq", "redis", "peer_arq.py", ["enqueue", "--n", str(s.enqueue_redis)])
    add(
        "enqueue",
        "saq",
        "redis",
        "peer_saq.py",
        ["enqueue", "--backend", "redis", "--n", str(s.enqueue_redis)],
    )
    add("enqueue", "taskiq", "redis", "peer_taskiq.py", ["enqueue", "--n", str(s.enqueue_redis)])
    add(
        "enqueue",
        "saq",
        "postgres",
        "peer_saq.py",
        ["enqueue", "--backend", "postgres", "--n", str(s.enqueue_pg)],
    )
    add(
        "enqueue",
        "procrastinate",
        "postgres",
        "peer_procrastinate.py",
        ["enqueue", "--n", str(s.enqueue_pg)],
    )
    add(
        "enqueue", "pgqueuer", "postgres", "peer_pgqueuer.py", ["enqueue", "--n", str(s.enqueue_pg)]
    )
    # Batches of 1,000: asyncjobs' submit_many against PgQueuer's list enqueue.
    for system, script in (("asyncjobs", aj), ("pgqueuer", "peer_pgqueuer.py")):
        store = ["--store", "postgres"] if system == "asyncjobs" else []
        many = ["enqueue_many", *store, "--n", str(s.enqueue_pg), "--batch", "1000"]
        add("enqueue_many", system, "postgres", script, many)
    # drain at concurrency 10 and 50
    for c in (10, 50):
        cc = ["--concurrency", str(c)]
        g = "drain"
        sfx = f"_c{c}"
        add(
            g,
            "asyncjobs",
            "memory",
            aj,
            ["drain", "--store", "memory", "--n", str(s.drain_local), *cc],
            suffix=sfx,
        )
        add(
            g,
            "asyncjobs",
            "sqlite",
            aj,
            ["drain", "--store", "sqlite", "--n", str(s.drain_sqlite), *cc],
            suffix=sfx,
        )
        add(
            g,
            "asyncjobs",
            "postgres",
            aj,
            ["drain", "--store", "postgres", "--n", str(s.drain_pg), *cc],
            suffix=sfx,
        )
        add(
            g,
            "asyncio.Queue",
            "memory",
            "bench_baselines.py",
            ["drain", "--system", "asyncio", "--n", str(s.drain_local), *cc],
            suffix=sfx,
        )
        add(
            g,
            "aiojobs",
            "memory",
            "bench_baselines.py",
            ["drain", "--system", "aiojobs", "--n", str(s.drain_local), *cc],
            suffix=sfx,
        )
        add(g, "arq", "redis", "peer_arq.py", ["drain", "--n", str(s.drain_redis), *cc], suffix=sfx)
        add(
            g,
            "saq",
            "redis",
            "peer_saq.py",
            ["drain", "--backend", "redis", "--n", str(s.drain_redis), *cc],
            suffix=sfx,
        )
        add(
            g,
            "taskiq",
            "redis",
            "peer_taskiq.py",
            ["drain", "--n", str(s.drain_redis), *cc],
            suffix=sfx,
        )
        add(
            g,
            "saq",
            "postgres",
            "peer_saq.py",
            ["drain", "--backend", "postgres", "--n", str(s.drain_pg), *cc],
            suffix=sfx,
        )
        add(
            g,
            "procrastinate",
            "postgres",
            "peer_procrastinate.py",
            ["drain", "--n", str(s.drain_pg), *cc],
            suffix=sfx,
        )
        add(
            g,
            "pgqueuer",
            "postgres",
            "peer_pgqueuer.py",
            ["drain", "--n", str(s.drain_pg), *cc],
            suffix=sfx,
        )
    # one submitting process + 2 worker processes on PostgreSQL
    add(
        "multiproc",
        "asyncjobs",
        "postgres",
        aj,
        [
            "multiproc",
            "--store",
            "postgres",
            "--n",
            str(s.drain_pg),
            "--workers",
            "2",
            "--concurrency",
            "25",
        ],
    )
    # latency with an idle worker
    for store in ("memory", "sqlite", "postgres"):
        add("latency", "asyncjobs", store, aj, ["latency", "--store", store, "--n", str(s.latency)])
    n_lat = ["--n", str(s.latency)]
    add("latency", "arq", "redis", "peer_arq.py", ["latency", *n_lat])
    add("latency", "saq", "redis", "peer_saq.py", ["latency", "--backend", "redis", *n_lat])
    add("latency", "taskiq", "redis", "peer_taskiq.py", ["latency", *n_lat])
    add("latency", "saq", "postgres", "peer_saq.py", ["latency", "--backend", "postgres", *n_lat])
    add("latency", "procrastinate", "postgres", "peer_procrastinate.py", ["latency", *n_lat])
    add("latency", "pgqueuer", "postgres", "peer_pgqueuer.py", ["latency", *n_lat])
    # fan-out
    for k in s.fanout_k:
        add(
            "fanout",
            "asyncjobs",
            "memory",
            "bench_fanout.py",
            ["inproc", "--k", str(k)],
            suffix=f"_inproc_k{k}",
            timeout=240,
        )
        add(
            "fanout",
            "asyncjobs",
            "memory",
            "bench_fanout.py",
            ["sse", "--k", str(k)],
            suffix=f"_sse_k{k}",
            timeout=300,
        )
    for case in out:
        if "_sse_" in case.key:
            case.tags.add("sse")
    # memory per finished job: tracemalloc byte counts do not vary between runs of the
    # same code, so one run (of the slowest benchmark) is enough.
    add(
        "memory",
        "asyncjobs",
        "memory",
        "bench_memory.py",
        ["jobs", "--n", str(s.memory_jobs), "--concurrency", "100"],
        timeout=400,
        runs=1,
    )
    return out


def run_once(case: Case, python: str) -> dict[str, Any]:
    argv = [python, str(HERE / case.argv[0]), *case.argv[1:]]
    start = time.monotonic()
    try:
        proc = subprocess.run(argv, cwd=HERE, capture_output=True, text=True, timeout=case.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {case.timeout:.0f} s"}
    wall = time.monotonic() - start
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            result["wall"] = round(wall, 2)
            return result
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    if "ModuleNotFoundError" in proc.stderr or "ImportError" in proc.stderr:
        return {"error": f"cannot import: {tail[:200]}"}
    return {"error": f"exit {proc.returncode}: {tail[:200]}"}


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"error": runs[-1]["error"] if runs else "not run", "runs": len(runs)}
    merged: dict[str, Any] = dict(good[0])
    for name, value in good[0].items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            merged[name] = statistics.median(r[name] for r in good if name in r)
    merged["runs"] = len(good)
    if len(good) < len(runs):
        merged["failed_runs"] = [r["error"] for r in runs if "error" in r]
    return merged


def versions() -> dict[str, str]:
    names = [
        "asyncjobs",
        "anyio",
        "asyncpg",
        "aiojobs",
        "arq",
        "saq",
        "taskiq",
        "taskiq-redis",
        "procrastinate",
        "pgqueuer",
        "redis",
        "psycopg",
        "uvicorn",
        "starlette",
    ]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict[str, str]:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(
                cmd, shell=True, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except subprocess.TimeoutExpired:
            return "?"

    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    return {
        "cpu": f"{os.cpu_count()} x {cpu}",
        "kernel": platform.release(),
        "memory": sh("free -h | awk '/Mem:/{print $2}'"),
        "postgres": sh(
            "psql -h 127.0.0.1 -U postgres -d test -Atc 'show server_version' 2>/dev/null"
        )
        or "?",
        "redis": sh(
            "redis-cli -h 127.0.0.1 info server 2>/dev/null | grep redis_version | cut -d: -f2"
        )
        or "?",
    }


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def write_files(doc: dict[str, Any]) -> None:
    (HERE / "results.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    report.write_results_md(doc, HERE / "RESULTS.md")
    docs_page = HERE.parent / "docs" / "benchmarks.md"
    if docs_page.exists():
        report.write_results_md(doc, docs_page, image="img/benchmarks-throughput.png")
    report.plot(doc, HERE / "throughput.png")
    # mkdocs serves only docs/: docs/benchmarks.md shows this copy.
    docs_img = HERE.parent / "docs" / "img"
    if docs_img.is_dir() and (HERE / "throughput.png").exists():
        shutil.copyfile(HERE / "throughput.png", docs_img / "benchmarks-throughput.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--skip", action="append", default=[])
    parser.add_argument("--pairs", action="store_true")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--render", action="store_true")
    args = parser.parse_args()
    if args.render:
        write_files(json.loads((HERE / "results.json").read_text()))
        return
    partial_terms = bool(args.only or args.skip or args.pairs)
    only = [t for term in args.only for t in term.split(",") if t]
    skip = [t for term in args.skip for t in term.split(",") if t]
    runs = args.runs or (1 if args.quick else 3)
    todo = [
        c
        for c in cases(QUICK if args.quick else PAIRS if args.pairs else FULL)
        if (not only or c.matches(only))
        and not c.matches(skip)
        and (not args.pairs or c.key in pairs.PAIR_CASES)
    ]
    if not todo:
        raise SystemExit("no case matches --only/--skip")
    command = "python benchmarks/run.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:])
    started = dt.datetime.now(dt.timezone.utc)
    load_before = uptime()
    print(f"# {command}\n# {load_before}\n# {len(todo)} cases x {runs} runs", flush=True)
    results: dict[str, Any] = {}
    t0 = time.monotonic()
    n_runs = {c.key: c.runs if c.runs is not None and not args.quick else runs for c in todo}
    got: dict[str, list[dict[str, Any]]] = {c.key: [] for c in todo}
    # Interleaved: A B A B, so that both sides of a pair see the same load.
    for round_ in range(max(n_runs.values())):
        for case in todo:
            if round_ < n_runs[case.key]:
                got[case.key].append(run_once(case, args.python))
        print(f"# round {round_ + 1} done; {uptime()}", flush=True)
    for case in todo:
        results[case.key] = {
            "group": case.group,
            "system": case.system,
            "backend": case.backend,
            **median_of(got[case.key]),
        }
        print(report.line(case.key, results[case.key]), flush=True)
    elapsed = time.monotonic() - t0
    load_after = uptime()
    doc = {
        "command": command,
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(elapsed, 1),
        "runs": runs,
        "quick": args.quick,
        "load_before": load_before,
        "load_after": load_after,
        "versions": versions(),
        "machine": machine(),
        "results": results,
    }
    print()
    print(report.tables(doc))
    print("\n## The issue's pairs (asyncjobs / peer, same run)\n")
    print(pairs.table(doc))
    print(f"# suite took {elapsed:.0f} s; {load_after}")
    partial = partial_terms
    if partial and (HERE / "results.json").exists() and not args.quick:
        # A partial re-run updates its cases in the last full run's results.
        old = json.loads((HERE / "results.json").read_text())
        old["results"].update(results)
        old.setdefault("partial_reruns", []).append(
            {"command": command, "started": doc["started"], "load": load_after}
        )
        doc = old
    if not args.quick and not args.no_write:
        write_files(doc)
        print("wrote benchmarks/RESULTS.md, benchmarks/results.json, benchmarks/throughput.png")


if __name__ == "__main__":
    main()
