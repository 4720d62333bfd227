"""benchmarks/remote_workers.py still runs (tiny N): every case prints its figures.

No speed is asserted (the machine is shared).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_remote_worker_benchmark_prints_every_case() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "remote_workers.py"),
            "--n",
            "40",
            "--samples",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [
        json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")
    ]
    seen = {(r["system"], r["mode"]) for r in results}
    systems = {"in-process", "http", "http-remoteworker", "grpc"}
    assert {(s, m) for s in systems for m in ("drain_c10", "drain_c50")} <= seen
    assert {(s, "latency") for s in ("in-process", "http-remoteworker", "grpc")} <= seen
    assert all(r["rate"] > 0 for r in results if r["mode"].startswith("drain"))
