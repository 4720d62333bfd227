"""Run one benchmark script against two source trees, interleaved, side by side.

For a before/after figure in one run: ``--baseline`` is a checkout (or ``git archive``)
of the code before a change, and the benchmark runs alternately against each tree's
code, A B A B. Each tree is laid out as one package (``src/asyncjobs`` with its
``adapters`` folder as ``asyncjobs.adapters``) in a temporary directory put first on
``PYTHONPATH``, so an editable install of either tree cannot leak into the other's run.
Example (the cost of SQLite's events table):

    git archive 12c3235 src adapters | tar -x -C /tmp/aj-base
    python benchmarks/compare_trees.py --baseline /tmp/aj-base --rounds 3 --key rate -- \\
        benchmarks/bench_asyncjobs.py drain --store sqlite --n 3000 --concurrency 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _overlay(tree: Path, into: Path) -> Path:
    """``tree``'s core and adapters as one importable ``asyncjobs`` package under ``into``."""
    package = into / "asyncjobs"
    shutil.copytree(tree / "src" / "asyncjobs", package)
    if (tree / "adapters").is_dir():
        shutil.rmtree(package / "adapters", ignore_errors=True)
        shutil.copytree(tree / "adapters", package / "adapters")
    return into


def _run(path: Path, script: list[str]) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(path)}
    out = subprocess.run(
        [sys.executable, *script], env=env, capture_output=True, text=True, check=True
    ).stdout
    # Scripts print one JSON line, or ``RESULT {json}`` (bench_asyncjobs and friends).
    last = [line for line in out.strip().splitlines() if line.strip()][-1]
    result: dict[str, object] = json.loads(last.removeprefix("RESULT "))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the tree before")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--key", default="rate", help="the figure to compare")
    parser.add_argument("script", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    script = [s for s in args.script if s != "--"]
    figures: dict[str, list[float]] = {"baseline": [], "this tree": []}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {
            "baseline": _overlay(args.baseline, Path(tmp) / "baseline"),
            "this tree": _overlay(ROOT, Path(tmp) / "this"),
        }
        for _ in range(args.rounds):
            for name, path in paths.items():
                figures[name].append(float(_run(path, script)[args.key]))  # type: ignore[arg-type]
    for name, values in figures.items():
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:<10} {args.key} median {statistics.median(values):8.1f}   ({shown})")
    ratio = statistics.median(figures["this tree"]) / statistics.median(figures["baseline"])
    print(f"this tree / baseline: {ratio:.3f}  (load {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
