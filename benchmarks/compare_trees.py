"""Run one benchmark script against two source trees, interleaved, side by side.

For a before/after figure in one run: ``--baseline`` is a checkout (or ``git archive``)
of the code before a change, and the benchmark runs alternately with each tree's
``src`` first on ``PYTHONPATH``. Example (the cost of SQLite's events table):

    git archive 12c3235 src | tar -x -C /tmp/aj-base
    python benchmarks/compare_trees.py --baseline /tmp/aj-base --rounds 3 -- \\
        benchmarks/sqlite_drain.py --jobs 3000 --concurrency 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(src: Path, script: list[str]) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": f"{src / 'src'}{os.pathsep}{ROOT / 'adapters'}"}
    out = subprocess.run(
        [sys.executable, *script], env=env, capture_output=True, text=True, check=True
    ).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the tree before")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--key", default="jobs_per_second", help="the figure to compare")
    parser.add_argument("script", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    script = [s for s in args.script if s != "--"]
    figures: dict[str, list[float]] = {"baseline": [], "this tree": []}
    for _ in range(args.rounds):
        for name, tree in (("baseline", args.baseline), ("this tree", ROOT)):
            figures[name].append(float(_run(tree, script)[args.key]))  # type: ignore[arg-type]
    for name, values in figures.items():
        shown = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:<10} {args.key} median {statistics.median(values):8.1f}   ({shown})")
    ratio = statistics.median(figures["this tree"]) / statistics.median(figures["baseline"])
    print(f"this tree / baseline: {ratio:.3f}")


if __name__ == "__main__":
    main()
