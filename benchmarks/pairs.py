"""The issue's pairs (asyncjobs / peer, or against a fixed goal) from one run's results.

``run.py`` prints this table after every run, next to the load average; a pair whose
cases were not run (``--only``) or failed shows as ``-``. Ratios above 1 mean asyncjobs
is faster (for latencies: the peer's or goal's milliseconds over asyncjobs').
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Pair:
    name: str
    ours: str  # case key
    field: str
    theirs: str | None  # case key of the peer, or None to compare with the goal only
    goal: float  # the ratio to reach (peer pairs) or the figure itself (goal pairs)
    lower_is_better: bool = False


PAIRS: tuple[Pair, ...] = (
    Pair("memory drain c10 vs aiojobs", "drain_c10/asyncjobs/memory", "rate",
         "drain_c10/aiojobs/memory", 1.0),
    Pair("memory drain c50 vs aiojobs", "drain_c50/asyncjobs/memory", "rate",
         "drain_c50/aiojobs/memory", 1.0),
    Pair("postgres drain c10 vs PgQueuer", "drain_c10/asyncjobs/postgres", "rate",
         "drain_c10/pgqueuer/postgres", 1.5),
    Pair("postgres drain c50 vs PgQueuer", "drain_c50/asyncjobs/postgres", "rate",
         "drain_c50/pgqueuer/postgres", 1.5),
    Pair("postgres enqueue vs PgQueuer", "enqueue/asyncjobs/postgres", "rate",
         "enqueue/pgqueuer/postgres", 1.5),
    # The "10x with submit_many": batches against PgQueuer's single enqueue...
    Pair("postgres submit_many vs PgQueuer enqueue", "enqueue_many/asyncjobs/postgres",
         "rate", "enqueue/pgqueuer/postgres", 10.0),
    # ...and, for fairness, against PgQueuer's own list enqueue (no goal: parity).
    Pair("postgres submit_many vs PgQueuer list enqueue", "enqueue_many/asyncjobs/postgres",
         "rate", "enqueue_many/pgqueuer/postgres", 1.0),
    Pair("sqlite drain c50 vs SAQ (redis)", "drain_c50/asyncjobs/sqlite", "rate",
         "drain_c50/saq/redis", 2.0),
    Pair("postgres submit->completion p50 (ms)", "latency/asyncjobs/postgres", "done_p50_ms",
         None, 2.0, lower_is_better=True),
    Pair("postgres submit->completion p99 (ms)", "latency/asyncjobs/postgres", "done_p99_ms",
         None, 5.0, lower_is_better=True),
    Pair("SSE fan-out p99 at 1,000 (ms)", "fanout_sse_k1000/asyncjobs/memory",
         "delivery_p99_ms", None, 50.0, lower_is_better=True),
    Pair("SSE fan-out p99 at 5,000 (ms)", "fanout_sse_k5000/asyncjobs/memory",
         "delivery_p99_ms", None, 250.0, lower_is_better=True),
)  # fmt: skip

#: Every case some pair needs: ``run.py --pairs`` runs just these.
PAIR_CASES: frozenset[str] = frozenset(
    key for p in PAIRS for key in (p.ours, p.theirs) if key is not None
)


def _value(results: dict[str, Any], key: str | None, field: str) -> float | None:
    if key is None:
        return None
    result = results.get(key)
    if result is None or "error" in result or field not in result:
        return None
    return float(result[field])


def table(doc: dict[str, Any]) -> str:
    """The pairs as a markdown table: figures, ratio, goal, met or not."""
    results = doc["results"]
    rows = [
        "| pair | asyncjobs | peer | ratio | goal | met |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for p in PAIRS:
        ours = _value(results, p.ours, p.field)
        theirs = _value(results, p.theirs, p.field)
        goal = f"{p.goal:g}" if p.theirs is None else f"{p.goal:g}x"
        if ours is None or (p.theirs is not None and theirs is None):
            rows.append(f"| {p.name} | - | - | - | {goal} | not run |")
            continue
        if p.theirs is None:
            met = ours <= p.goal if p.lower_is_better else ours >= p.goal
            rows.append(f"| {p.name} | {ours:,.1f} | - | - | {p.goal:g} | {_yes(met)} |")
            continue
        assert theirs is not None
        ratio = theirs / ours if p.lower_is_better else ours / theirs
        rows.append(
            f"| {p.name} | {ours:,.0f} | {theirs:,.0f} | {ratio:.2f}x | {p.goal:g}x "
            f"| {_yes(ratio >= p.goal)} |"
        )
    load = f"load: {doc.get('load_before', '?')} -> {doc.get('load_after', '?')}"
    return "\n".join([*rows, "", load])


def _yes(met: bool) -> str:
    return "yes" if met else "no"
