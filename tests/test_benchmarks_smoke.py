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
