"""`geoseg bench` as a short smoke test (full-size figures live in BENCHMARKS.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from pipeline.bench import bench_grid, write_class_raster
from pipeline.bench.common import in_subprocess, peak_rss_mb
from pipeline.cli import main
from pipeline.errors import ConfigError


def test_generated_raster_is_fragmented_and_deterministic(tmp_path):
    a = write_class_raster(tmp_path / "a.tif", 600, seed=3)
    b = write_class_raster(tmp_path / "b.tif", 600, seed=3)
    with rasterio.open(a) as ra, rasterio.open(b) as rb:
        x, y = ra.read(1), rb.read(1)
        assert ra.crs.to_epsg() == 32618 and ra.transform == bench_grid(600).affine
    np.testing.assert_array_equal(x, y)
    shares = np.bincount(x.ravel(), minlength=3) / x.size
    assert (shares > 0.15).all()  # three real classes, none vanishing


@pytest.mark.slow
def test_bench_reports_both_ways(capsys):
    assert main(["bench", "--size", "512", "--workers", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in (
        "vectorize_s",
        "vectorize_baseline_s",
        "vectorize_speedup",
        "vectorize_polygons",
        "vectorize_baseline_polygons",
        "vectorize_peak_rss_mb",
        "vectorize_setup_s",
        "vectorize_client_peak_pss_mb",
        "vectorize_worker_peak_pss_mb",
        "vectorize_run_peak_pss_mb",
    ):
        assert key in result
    assert result["vectorize_s"] > 0 and result["vectorize_baseline_s"] > 0
    # The run's PSS sums the client's and a worker's at least; none can be sampled empty.
    assert 0 < result["vectorize_client_peak_pss_mb"] <= result["vectorize_client_peak_rss_mb"]
    assert result["vectorize_run_peak_pss_mb"] >= result["vectorize_worker_peak_pss_mb"] > 0
    # Both sides sieve 16-pixel specks away; their polygon counts are of the same order.
    ratio = result["vectorize_polygons"] / result["vectorize_baseline_polygons"]
    assert 0.5 < ratio < 2


def test_peak_memory_is_the_process_own_not_its_parents() -> None:
    import subprocess
    import sys

    import numpy as np

    held = np.ones(600 * 2**20 // 8)  # 600 MB resident in this process
    code = "from pipeline.bench.common import peak_rss_mb; print(peak_rss_mb())"
    child = float(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    # getrusage's ru_maxrss would carry this process's peak into the child.
    assert peak_rss_mb() > 600 and child < 300, (peak_rss_mb(), child)
    del held


def test_a_step_stopped_by_bad_input_raises_the_same_error(tmp_path):
    """A benchmark step's user error reaches the CLI as itself, not as the child's traceback."""
    missing = tmp_path / "none.yaml"
    with pytest.raises(ConfigError) as caught:
        in_subprocess("pipeline.catalog:load_catalog", str(missing))
    assert "none.yaml" in str(caught.value) and "Traceback" not in str(caught.value)
    # Anything else is a failure of the benchmark itself, reported with the child's traceback.
    with pytest.raises(RuntimeError, match="(?s)failed:.*Traceback.*TypeError"):
        in_subprocess("operator:truediv", "1", "0")  # str / str


_SHARING = """
import mmap, os, sys, time
size = 200 * 2**20
shared = mmap.mmap(-1, size)  # anonymous and shared: forked children map the same pages
shared.write(b"x" * size)
for _ in range(2):
    if os.fork() == 0:
        shared[0:size:4096]  # the child touches every page, each now mapped by three
        time.sleep(60)
        os._exit(0)
print("ready", flush=True)
time.sleep(60)
"""


def test_pss_divides_shared_pages_among_the_processes_that_map_them():
    """Three processes map the same 200 MB: each's RSS counts it whole, PSS a third of it."""
    import subprocess
    import sys
    import threading
    import time

    from pipeline.bench.common import MemorySampler

    proc = subprocess.Popen([sys.executable, "-c", _SHARING], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)  # the children touch their pages
        with MemorySampler(proc.pid, interval=0.05) as memory:
            time.sleep(0.3)
        assert len(memory.peaks) == 3
        for rss, pss in memory.peaks.values():
            assert rss > 195  # the whole 200 MB, and the interpreter
            assert 60 < pss < 90  # a third of it, and a share of the interpreter
        assert 200 < memory.total_pss_mb < 260  # the 200 MB once, not three times
        assert memory.peak_pss_mb([proc.pid]) == memory.peaks[proc.pid][1]
        # A timed pass watches nothing: no sample, no thread reading the processes' maps.
        with MemorySampler(proc.pid, interval=0.05, enabled=False) as unwatched:
            time.sleep(0.2)
            assert "geoseg-memory" not in [t.name for t in threading.enumerate()]
        assert unwatched.peaks == {}
    finally:
        for child in __import__("psutil").Process(proc.pid).children():
            child.kill()
        proc.kill()
        proc.wait()
