"""A real Dask cluster for tests: ``dask scheduler`` and ``dask worker`` processes on 127.0.0.1.

Each process is started in a session of its own, so that teardown can kill it with every
process it started (a worker's nanny and the worker process the nanny runs), however the test
ended.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The ``dask`` command of the interpreter running the tests.
DASK = str(Path(sys.executable).parent / "dask")
#: Generous: processes start slowly on a loaded two-core machine.
START_TIMEOUT_S = 120.0
#: The repository: on the processes' path, so that the tests' own functions run there.
ROOT = Path(__file__).resolve().parents[1]
#: What workers of a run on a scheduler would be given by their operator: one thread each.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@dataclass
class DaskProcesses:
    """A running scheduler and its workers: their processes, address and log files."""

    folder: Path
    scheduler: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    address: str = ""

    def start_scheduler(self) -> str:
        """Start ``dask scheduler`` on a free port of 127.0.0.1; its address."""
        info = self.folder / "scheduler.json"
        info.unlink(missing_ok=True)
        self.scheduler = _start(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0"]
            + ["--dashboard-address", ":0", "--scheduler-file", str(info)],
            self.folder / "scheduler.log",
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not info.is_file() or not info.read_text(encoding="utf-8").strip():
            if self.scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dask scheduler did not start: {self.log('scheduler')}")
            time.sleep(0.1)
        self.address = str(json.loads(info.read_text(encoding="utf-8"))["address"])
        return self.address

    def start_workers(self, n: int) -> None:
        """Start ``n`` workers (one thread each, a local directory each) and wait for them."""
        for _ in range(n):
            i = len(self.workers)
            local = self.folder / f"worker-{i}"
            local.mkdir(exist_ok=True)
            cmd = [DASK, "worker", self.address, "--nthreads", "1", "--host", "127.0.0.1"]
            cmd += ["--local-directory", str(local), "--dashboard-address", ":0"]
            self.workers.append(_start(cmd, self.folder / f"worker-{i}.log"))
        self.wait_for_workers(len(self.workers))

    def wait_for_workers(self, n: int) -> None:
        """Block until the scheduler knows ``n`` workers."""
        from distributed import Client

        with Client(self.address, timeout="30s") as client:
            client.wait_for_workers(n, timeout=START_TIMEOUT_S)

    def log(self, name: str) -> str:
        """The end of a process's log (``scheduler``, ``worker-0`` …), for failure messages."""
        path = self.folder / f"{name}.log"
        return path.read_text(encoding="utf-8", errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        """Kill every process started, with the processes they started."""
        for proc in [*self.workers, *([self.scheduler] if self.scheduler else [])]:
            kill_group(proc)
        self.workers.clear()
        self.scheduler = None


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc``'s session (it leads one: see :func:`_start`) and reap ``proc``."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


#: The scheduler keeps its last 1000 task transitions by default: fewer than a run of 256
#: blocks makes, so a test counting a block's second start could miss its first.
KEEP_TRANSITIONS = {"DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH": "100000"}


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a session of its own, its output going to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | ONE_THREAD | KEEP_TRANSITIONS | {"PYTHONPATH": str(ROOT)},
            start_new_session=True,
        )


@contextmanager
def dask_processes(folder: Path, workers: int = 2) -> Iterator[DaskProcesses]:
    """A scheduler and ``workers`` workers on 127.0.0.1, all killed on the way out."""
    folder.mkdir(parents=True, exist_ok=True)
    procs = DaskProcesses(folder)
    try:
        procs.start_scheduler()
        procs.start_workers(workers)
        yield procs
    finally:
        procs.stop()


def worker_pids(address: str) -> dict[str, int]:
    """Each worker's address and the pid of its process (not its nanny's)."""
    from distributed import Client

    with Client(address, timeout="30s") as client:
        pids: dict[str, Any] = client.run(os.getpid)
    return {k: int(v) for k, v in pids.items()}


def patchy_scene(folder: Path, size: int = 1024, seed: int = 0) -> Path:
    """Write a ``size``² Sentinel-2-like scene ``synth`` of forest patches; its catalog file.

    Like :func:`tests.data.forest_scene` (green/red/nir at 10 m, swir16 at 20 m, uint16
    reflectance x 10000, nodata 0) but forest lies in blobs of every size across the whole
    scene, so that a tiled run has hundreds of polygons crossing block edges and confidence
    that varies from pixel to pixel: what a lost or reordered block would change.
    """
    import numpy as np
    from affine import Affine
    from scipy.ndimage import zoom

    from tests.data import ORIGIN, catalog_yaml, write_raster

    rng = np.random.default_rng(seed)
    h20 = size // 2 + 1
    # A smooth random field at 20 m: blobs a few hundred metres across.
    field_ = zoom(rng.normal(size=(h20 // 16 + 2, h20 // 16 + 2)), 16, order=3)[:h20, :h20]
    forest20 = field_ > 0.2
    # Noise wide enough that many pixels lie near the model's thresholds: varied confidence.
    swir = (np.where(forest20, 1000, 2000) + rng.normal(0, 150, (h20, h20))).astype(np.uint16)
    rows, cols = np.mgrid[0:size, 0:size]
    forest = forest20[rows // 2, (cols + 1) // 2]
    red = (np.where(forest, 300, 500) + rng.integers(0, 120, (size, size))).astype(np.uint16)
    nir = (1400 + rng.integers(0, 2000, (size, size))).astype(np.uint16)
    green = (500 + rng.integers(0, 30, (size, size))).astype(np.uint16)
    x0, y0 = ORIGIN
    bands = folder / "synth"
    bands.mkdir(parents=True, exist_ok=True)
    t10 = Affine(10, 0, x0, 0, -10, y0)
    paths = {
        "green": write_raster(bands / "green.tif", green, t10, nodata=0),
        "red": write_raster(bands / "red.tif", red, t10, nodata=0),
        "nir": write_raster(bands / "nir.tif", nir, t10, nodata=0),
        "swir16": write_raster(
            bands / "swir16.tif", swir, Affine(20, 0, x0 - 10, 0, -20, y0), nodata=0
        ),
    }
    entry = {
        "assets": {k: str(v.relative_to(folder)) for k, v in paths.items()},
        "scale": 0.0001,
        "acquired": "2024-06-01",
        "sensor": "sentinel-2-l1c",
    }
    return catalog_yaml(folder, {"synth": entry})


def assert_same_outputs(folder: Path, reference: Path, layer: str = "forest") -> None:
    """Byte-identical ``classes.tif`` and ``confidence.tif``, and the same polygons."""
    for name in ("classes.tif", "confidence.tif"):
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name
    assert polygon_rows(folder, layer) == polygon_rows(reference, layer)


def polygon_rows(folder: Path, layer: str) -> list[tuple[Any, ...]]:
    """A run's polygons as sorted rows of normalized WKB and every attribute but ``run_id``.

    ``run_id`` names the run that wrote them, so it differs from one run to the next.
    """
    import pyogrio
    import shapely

    path = folder / "polygons.gpkg"
    _, _, wkb, fields = pyogrio.raw.read(path, layer=layer)
    names = list(pyogrio.read_info(path, layer=layer)["fields"])
    kept = [i for i, name in enumerate(names) if name != "run_id"]
    geoms = shapely.normalize(shapely.from_wkb(wkb))
    rows = [(shapely.to_wkb(g), *(fields[i][j] for i in kept)) for j, g in enumerate(geoms)]
    assert rows, f"{path}: no polygons to compare"
    return sorted(rows)
