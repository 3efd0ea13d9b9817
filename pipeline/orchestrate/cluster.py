"""The Dask cluster a run uses, and what its workers hold: the model, built once each."""

from __future__ import annotations

import ctypes
import json
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from pipeline.errors import ConfigError
from pipeline.planning import DEFAULT_OUT
from pipeline.reading import gdal_cache_setting
from pipeline.workflow import ClassDef, ModelConfig, Workflow

if TYPE_CHECKING:
    from pipeline.models import SegmentationModel
    from pipeline.models.engines import OpenVINOModel

#: Dask settings of the local cluster's processes: its monitors sample less often. A worker
#: has one core, and the default sampling slowed a one-thread forward pass by 4–6 %
#: (``BENCHMARKS.md``); the profile only feeds the dashboard, and memory limits are still
#: enforced, within a second.
QUIET_MONITORS = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "1s",
}


@dataclass(frozen=True)
class RunOptions:
    """How to run: output root, parallelism and progress display."""

    out: Path = DEFAULT_OUT
    workers: int | None = None
    scheduler: str | None = None
    progress: bool = True
    instances: bool = False  # also write instances.tif (each pixel's polygon instance_id)
    seams: bool = False  # also write seams.tif (where overlapping tiles disagree)


@contextmanager
def dask_client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    """A distributed client: on ``scheduler`` if given, else on a LocalCluster of processes."""
    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"cannot reach the Dask scheduler at {scheduler}: {exc}; "
                "check the address or leave --scheduler out to use a local cluster"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or len(os.sched_getaffinity(0))
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    one_thread["GDAL_CACHEMAX"] = gdal_cache_setting()
    # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also freezes glibc's mmap
    # threshold: every large tensor of a forward pass is then mapped afresh, page faults and
    # all (18 % slower at 832²). Workers keep glibc's own adaptive thresholds instead.
    no_trim = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    with (
        dask.config.set(no_trim | QUIET_MONITORS),
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # any free port: never clash with another cluster
            silence_logs=logging.ERROR,
            env=one_thread,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def worker_threads(client: Any) -> dict[str, int]:
    """The cluster's workers and their threads, by address."""
    return {
        address: int(info.get("nthreads", 1))
        for address, info in client.scheduler_info().get("workers", {}).items()
    }


class ModelPlugin(WorkerPlugin):
    """A Dask worker plugin that builds the model once per worker process.

    Only the model's configuration travels to the workers; the weights are built (or, for
    network models, loaded) on each worker at registration, never shipped inside a task. With
    ``engine: openvino`` the worker loads the converted network from ``converted`` (a folder
    the workers can read) and never imports torch. ``mask_networks`` are the cloud networks
    its tiles need, compiled here too (OpenVINO keeps their compiled form in ``cache``), and
    ``calibration`` what the model fitted to the run's scenes.
    """

    def __init__(
        self,
        config: ModelConfig,
        classes: tuple[ClassDef, ...],
        converted: str | None = None,
        mask_networks: tuple[str, ...] = (),
        cache: str | None = None,
        calibration: Mapping[str, float | list[float]] | None = None,
    ) -> None:
        self.config = config
        self.classes = classes
        self.converted = converted
        self.mask_networks = mask_networks
        self.cache = cache
        self.calibration = dict(calibration or {})
        self.model: SegmentationModel | OpenVINOModel | None = None

    def setup(self, worker: Any) -> None:
        """Build the model in the worker process, with one thread; on a GPU if torch has one.

        The worker's compiled kernels are loaded too (:func:`pipeline.inference.warm_up`,
        :func:`pipeline.vectorize.warm_up`): set-up is where a worker loads what it runs, so
        that its first tile and first polygon task are not slower than the others.
        """
        from pipeline import inference, vectorize
        from pipeline.masking import network

        self.model = self._build()
        cache = Path(self.cache) / "openvino" / "masks" if self.cache else None
        for name in self.mask_networks:  # compiled once, for the one thread a worker has
            network.load(name, threads=1, cache_dir=cache)
        inference.warm_up()
        vectorize.warm_up()

    def _build(self) -> SegmentationModel | OpenVINOModel:
        if self.converted is not None:
            from pipeline.models.engines import OpenVINOModel

            precision = getattr(self.config, "precision", "f32")
            return OpenVINOModel(Path(self.converted), precision, threads=1)
        import torch

        from pipeline.models import build_model

        torch.set_num_threads(1)
        model = build_model(self.config, self.classes, self.calibration)
        if torch.cuda.is_available():
            model = model.to("cuda")
        return model

    def teardown(self, worker: Any) -> None:
        """Release the model."""
        self.model = None


def plugin_name(workflow: Workflow, calibration: Mapping[str, Any] | None = None) -> str:
    """A name unique to a model: runs with another model, checkpoint or calibration differ."""
    import hashlib

    h = hashlib.sha256(workflow.model.model_dump_json().encode())
    h.update(json.dumps(dict(calibration or {}), sort_keys=True).encode())
    h.update(repr([c.model_dump() for c in workflow.classes]).encode())
    checkpoint = getattr(workflow.model, "checkpoint", None)
    if checkpoint and Path(checkpoint).is_file():
        stat = Path(checkpoint).stat()
        h.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"geoseg-model-{h.hexdigest()[:16]}"


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc only; elsewhere a no-op).

    A run's stages free hundreds of MB in pieces of every size, which glibc keeps in the
    process unless asked: the process's peak would then add up what is freed and what comes
    next.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
