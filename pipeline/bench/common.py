"""What every benchmark shares: the generated grid, peak memory, and steps in their own process."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
from collections.abc import Iterable
from typing import Any

from rasterio.crs import CRS

from pipeline import errors
from pipeline.errors import GeosegError
from pipeline.grid import Grid


def bench_grid(size: int) -> Grid:
    """A 10 m UTM grid of ``size`` × ``size`` pixels (Sentinel-2 tile 18STG's corner)."""
    return Grid(
        CRS.from_epsg(32618).to_wkt(), (10.0, 0.0, 399960.0, 0.0, -10.0, 4200000.0), size, size
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (2^20 bytes).

    Read from ``VmHWM`` in ``/proc/self/status`` where there is one: Linux carries
    ``getrusage``'s ``ru_maxrss`` across fork and exec, so a process started by a 1.3 GB
    parent reports at least 1.3 GB there whatever it holds itself (measured: a bare
    ``python -c`` started by a process holding 1 GB reported 981 MB against its own 13 MB).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MemorySampler:
    """Peak resident (RSS) and proportional (PSS) memory of a process and its children.

    RSS counts every shared page (libraries, torch's and OpenVINO's code) in full in every
    process that maps it; PSS divides each shared page among its sharers, so the PSS of a run's
    processes add up to what the run costs the machine. The kernel keeps no PSS high-water
    mark, so a thread samples ``/proc/PID/smaps_rollup`` (through psutil) every ``interval``
    seconds: a peak shorter than that can be missed.

    Reading a process's memory map takes its page tables' lock and CPU from the cores it runs
    on, so sampling slows what it measures (``BENCHMARKS.md``, "Time and memory in separate
    passes"). Benchmarks therefore time a step in one pass, with ``enabled`` False
    (nothing is sampled), and take its memory from a second (:func:`memory_figures`).
    """

    def __init__(self, pid: int | None = None, interval: float = 0.2, enabled: bool = True) -> None:
        import psutil

        self.enabled = enabled
        self._root = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="geoseg-memory", daemon=True)
        #: pid -> (peak RSS MB, peak PSS MB)
        self.peaks: dict[int, tuple[float, float]] = {}
        #: Largest sum of PSS over the processes alive at one sample, MB.
        self.total_pss_mb = 0.0

    def __enter__(self) -> MemorySampler:
        if self.enabled:
            self.sample()
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
            self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def sample(self) -> None:
        """Read every process of the tree once; keep each one's peaks and the total's."""
        import psutil

        total = 0.0
        for proc in [self._root, *self._root.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
            except (psutil.Error, OSError):  # gone between the listing and the read
                continue
            rss, pss = info.rss / 2**20, getattr(info, "pss", info.rss) / 2**20
            old = self.peaks.get(proc.pid, (0.0, 0.0))
            self.peaks[proc.pid] = (max(old[0], rss), max(old[1], pss))
            total += pss
        self.total_pss_mb = max(self.total_pss_mb, total)

    def pss_figures(self, worker_pids: Iterable[int]) -> dict[str, float]:
        """Peak PSS of this process, of the largest worker, of the whole run; none if disabled."""
        if not self.enabled:
            return {}
        return {
            "client_peak_pss_mb": self.peak_pss_mb([os.getpid()]),
            "worker_peak_pss_mb": self.peak_pss_mb(worker_pids),
            "run_peak_pss_mb": self.total_pss_mb,
        }

    def peak_pss_mb(self, pids: Iterable[int]) -> float:
        """The largest PSS peak among ``pids`` (0 for none sampled)."""
        return max((self.peaks[p][1] for p in pids if p in self.peaks), default=0.0)


def memory_figures(result: dict[str, Any]) -> dict[str, Any]:
    """The peak memory figures (RSS and PSS, MB) of a step's result, without its times."""
    return {key: value for key, value in result.items() if key.endswith(("_rss_mb", "_pss_mb"))}


def default_workers() -> int:
    """Worker processes a benchmark uses by default: one per core."""
    return len(os.sched_getaffinity(0))


#: A step's exit status when it stopped on a :class:`~pipeline.errors.GeosegError`.
_USER_ERROR = 3


def _user_error(stdout: str) -> GeosegError:
    """The error a step reported on its last line of output, as the same class of error."""
    report = json.loads(stdout.strip().splitlines()[-1])
    kind = getattr(errors, report["error"], GeosegError)
    if not (isinstance(kind, type) and issubclass(kind, GeosegError)):
        kind = GeosegError
    return kind(report["message"])


def in_subprocess(target: str, *args: str) -> dict[str, Any]:
    """Run ``module:function(*args)`` in a fresh Python process and return its JSON result.

    A fresh process per step makes each step's peak memory its own and keeps one step's
    imports, caches and threads from changing another's timing.
    """
    module, func = target.split(":")
    # An error the user can fix comes back as itself (the CLI's one-line `error:`), not as
    # the child's traceback.
    code = (
        "import json, sys\n"
        "from pipeline.errors import GeosegError\n"
        f"from {module} import {func}\n"
        "try:\n"
        f"    result = {func}(*sys.argv[1:])\n"
        "except GeosegError as e:\n"
        "    print(json.dumps({'error': type(e).__name__, 'message': str(e)}))\n"
        f"    sys.exit({_USER_ERROR})\n"
        "print(json.dumps(result))\n"
    )
    # Every step gets the GDAL block cache geoseg's CLI and workers get, so none is measured
    # with GDAL's default (5 % of RAM), which fills up as a scene is read.
    from pipeline.reading import gdal_cache_setting

    env = {**os.environ, "GDAL_CACHEMAX": gdal_cache_setting()}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False, env=env
    )
    if proc.returncode == _USER_ERROR:
        raise _user_error(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark step {target} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result
