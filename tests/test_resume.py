"""A run killed with SIGKILL resumes from its finished blocks, and never from stale ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import geoseg, run_args, run_python

#: Runs the real CLI, killing itself with SIGKILL after KILL_AFTER raster block writes.
_KILLER = """
import os, signal, sys
import pipeline.publish as pub
done = [0]
write = pub.BlockRaster.write
def dying_write(self, block, values):
    write(self, block, values)
    done[0] += 1
    if done[0] >= int(os.environ["KILL_AFTER"]):
        os.kill(os.getpid(), signal.SIGKILL)
pub.BlockRaster.write = dying_write
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _geoseg(args: list[str], kill_after: int | None = None) -> subprocess.CompletedProcess[str]:
    if kill_after is None:
        return geoseg(*args)
    return run_python("-c", _KILLER, *args, env={**os.environ, "KILL_AFTER": str(kill_after)})


def _args(catalog: Path, out: Path, halo: int = 0) -> list[str]:
    extra = ("--tile-size", "16", "--halo", str(halo), "--workers", "1", "--quiet")
    return run_args("forest", "synth", catalog, out, *extra)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_outputs(synthetic_catalog, tmp_path):
    cat = synthetic_catalog.path
    clean = _geoseg(_args(cat, tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr
    reference = tmp_path / "clean" / "forest" / "synth"

    out = tmp_path / "resumed"
    killed = _geoseg(_args(cat, out), kill_after=24)  # 12 of 30 blocks written, both rasters
    assert killed.returncode == -signal.SIGKILL
    folder = out / "forest" / "synth"
    assert not (folder / "classes.tif").exists() and not (folder / "run.json").exists()
    cached = list((folder / ".work").glob("*/*.npy"))
    assert len(cached) >= 12

    resumed = _geoseg(_args(cat, out))
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((folder / "run.json").read_text())
    assert summary["execution"]["resumed_blocks"] >= 12
    for name in ("classes.tif", "confidence.tif"):
        assert (folder / name).read_bytes() == (reference / name).read_bytes()
    assert not (folder / ".work").exists()  # finished: the block cache is gone


@pytest.mark.slow
def test_changed_configuration_never_reuses_blocks(synthetic_catalog, tmp_path):
    cat = synthetic_catalog.path
    out = tmp_path / "out"
    killed = _geoseg(_args(cat, out), kill_after=24)
    assert killed.returncode == -signal.SIGKILL
    other = _geoseg(_args(cat, out, halo=4))  # another halo: other blocks
    assert other.returncode == 0, other.stderr
    summary = json.loads((out / "forest" / "synth" / "run.json").read_text())
    assert summary["execution"]["resumed_blocks"] == 0
    assert not (out / "forest" / "synth" / ".work").exists()  # stale blocks cleared too
