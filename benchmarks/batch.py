"""A batch against the same scenes run one ``geoseg run`` after another (issue 19's measure).

The scenes: the nine fires of ``../shared/data/fire`` (workflow ``fire``, each post scene after
its pre scene) and the five Slovenia dates (workflow ``forest``, two of them fully cloudy and
so unusable in both ways). Each way runs from a fresh output folder and is timed from outside,
command start to exit, as a user or scheduler sees it; the batch is one ``geoseg run`` per
workflow (``--series`` of each fire, ``--series slovenia``).

Run: ``.venv/bin/python benchmarks/batch.py [--rounds N]`` (about three minutes a round on two
cores). Prints each way's seconds per round, and the speed-up; the machine is noisy, so the
two ways alternate within a round.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIRES = (
    "hurst",
    "dove",
    "fire-1-12",
    "fire-1-7",
    "potters",
    "fire-68",
    "puma",
    "incident-5",
    "fire-66",
)
SLOVENIA = tuple(f"slovenia-2015-{d}" for d in ("07-11", "07-31", "08-20", "08-30", "09-09"))
GEOSEG = [sys.executable, "-m", "pipeline"]


def singles() -> list[list[str]]:
    """One command per scene: the fires' post scenes after their pre scenes, then Slovenia."""
    fires = [
        ["run", "fire", "--scene", f"{f}-post", "--before", f"{f}-pre", "--quiet"] for f in FIRES
    ]
    forest = [["run", "forest", "--scene", s, "--quiet"] for s in SLOVENIA]
    return fires + forest


def batches() -> list[list[str]]:
    """The same scenes as two batches, one per workflow."""
    fires = ["run", "fire", "--quiet"] + [a for f in FIRES for a in ("--series", f)]
    return [fires, ["run", "forest", "--series", "slovenia", "--quiet"]]


def timed(commands: list[list[str]], out: Path) -> float:
    """Seconds to run ``commands`` one after another, writing under ``out``."""
    t0 = time.perf_counter()
    for args in commands:
        # Exit 3: the cloudy Slovenia dates were unusable, as they should be.
        done = subprocess.run([*GEOSEG, *args, "--out", str(out)], check=False)
        if done.returncode not in (0, 2, 3):
            raise SystemExit(f"{' '.join(args)} exited {done.returncode}")
    return time.perf_counter() - t0


def main() -> None:
    """Time both ways for ``--rounds`` rounds; print the seconds and the speed-up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            one = timed(singles(), Path(tmp) / "singles")
            shutil.rmtree(Path(tmp) / "singles")
            many = timed(batches(), Path(tmp) / "batch")
        print(f"round {r + 1}: 14 single runs {one:.1f} s, batches {many:.1f} s, {one / many:.2f}x")


if __name__ == "__main__":
    main()
