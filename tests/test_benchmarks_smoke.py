"""The benchmark scripts still run: quick mode of the asyncjobs-only cases, memory store.

No speed is asserted (the machine is shared); only that each case ran and printed its
figures, so the scripts cannot rot unnoticed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = [
    "enqueue/asyncjobs/memory",
    "drain_c10/asyncjobs/memory",
    "drain_c50/asyncjobs/memory",
    "latency/asyncjobs/memory",
    "fanout_inproc_k20/asyncjobs/memory",
    "memory/asyncjobs/memory",
]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_benchmarks_print_figures() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--quick",
            "--only",
            "asyncjobs/memory",
            "--skip",
            "sse",
            "--no-write",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "FAILED" not in out, out
    for key in EXPECTED:
        line = next((ln for ln in out.splitlines() if ln.startswith(key + " ")), None)
        assert line is not None, f"{key} missing from:\n{out}"
        # Every case prints at least one positive number.
        assert re.search(r"=\s*[0-9][0-9,]*\.?[0-9]*", line), line
    assert re.search(r"\| asyncjobs \| memory \| [0-9,]+ \|", out), out
    assert re.search(r"bytes per job", out)
    # The pairs close every run, with the load average.
    assert "The issue's pairs" in out and "memory drain c10 vs aiojobs" in out, out
    assert "load: " in out


def test_pairs_table_computes_ratios_and_goals() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import pairs
    finally:
        sys.path.pop(0)
    doc = {
        "load_before": "load average: 1.00",
        "load_after": "load average: 2.00",
        "results": {
            "drain_c10/asyncjobs/memory": {"rate": 150.0},
            "drain_c10/aiojobs/memory": {"rate": 100.0},
            "drain_c50/asyncjobs/memory": {"rate": 50.0},
            "drain_c50/aiojobs/memory": {"error": "timed out"},
            "latency/asyncjobs/postgres": {"done_p50_ms": 1.5, "done_p99_ms": 7.0},
        },
    }
    rows = {row.split(" | ")[0].strip("| "): row for row in pairs.table(doc).splitlines()}
    assert "1.50x" in rows["memory drain c10 vs aiojobs"]
    assert rows["memory drain c10 vs aiojobs"].endswith("| yes |")
    assert "not run" in rows["memory drain c50 vs aiojobs"]
    assert rows["postgres submit->completion p50 (ms)"].endswith("| yes |")
    assert rows["postgres submit->completion p99 (ms)"].endswith("| no |")
    assert "load average: 1.00 -> load average: 2.00" in pairs.table(doc)
