"""The Dask cluster a run uses, and what its workers hold: the model, built once each."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import dask
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from pipeline.errors import ClusterLostError, ConfigError, GeosegError
from pipeline.grid import BBox
from pipeline.planning import DEFAULT_OUT, default_cache
from pipeline.reading import gdal_cache_setting
from pipeline.workflow import ClassDef, ModelConfig, Workflow

if TYPE_CHECKING:
    from pipeline.inference import Model

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


#: How long a failed call to the scheduler waits for the client to find it gone (seconds).
SCHEDULER_LOSS_WAIT_S = 1.0


@dataclass(frozen=True)
class RunOptions:
    """How to run: output root, parallelism and progress display."""

    out: Path = DEFAULT_OUT
    workers: int | None = None
    scheduler: str | None = None
    progress: bool = True
    instances: bool = False  # also write instances.tif (each pixel's polygon instance_id)
    seams: bool = False  # also write seams.tif (where overlapping tiles disagree)
    bbox: BBox | None = None  # run on this part of each scene only (--bbox)
    #: One worker holds the model, the others read its tiles (see :mod:`.feeding`); None:
    #: when the model runs on a GPU.
    one_model: bool | None = None


@contextmanager
def dask_client(
    workers: int | None, scheduler: str | None, one_model: bool = False
) -> Iterator[Any]:
    """A distributed client: on ``scheduler`` if given, else on a LocalCluster of processes.

    With ``one_model`` (see :mod:`.feeding`) the local scheduler steals no work: a batch
    stolen from the model's host would build a second model on a reader.

    A scheduler that goes away while the client is in use ends the block with a
    :class:`~pipeline.errors.ClusterLostError` (Dask cancels every task in flight; a worker
    lost, by contrast, only has its tasks run again elsewhere).
    """
    if scheduler:
        try:
            check_scheduler_answers(scheduler)
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"cannot reach the Dask scheduler at {scheduler}: {exc}; "
                "check the address or leave --scheduler out to use a local cluster"
            ) from None
        try:
            yield client
        except Exception as exc:
            if not scheduler_gone(client, exc):
                raise
            with _dask_client_logs_off():
                client.close()
            if isinstance(exc, GeosegError):  # already said (a batch's, see batch.Batch)
                raise
            raise scheduler_lost(scheduler) from None
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
    stealing = {"distributed.scheduler.work-stealing": not one_model}
    with (
        dask.config.set(no_trim | QUIET_MONITORS | stealing),
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # any free port: never clash with another cluster
            silence_logs=logging.ERROR,
            env=one_thread,
            preload=["pipeline.orchestrate.local_worker"],
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


#: Seconds a scheduler has to answer a first message before a run gives up on it.
SCHEDULER_ANSWER_S = 5.0


def check_scheduler_answers(address: str, within: float = SCHEDULER_ANSWER_S) -> None:
    """Raise :class:`TimeoutError` or :class:`OSError` unless ``address`` answers as a scheduler.

    Dask's client waits without end on a port that accepts a connection and never answers
    (a wrong service, a hung process): this asks the scheduler who it is, with a deadline.
    """
    import asyncio

    from distributed.comm import connect

    async def ask() -> None:
        comm = await connect(address, timeout=within)
        try:
            await comm.write({"op": "identity", "reply": True})
            await comm.read()
        finally:
            comm.abort()

    async def ask_within() -> None:
        try:
            await asyncio.wait_for(ask(), within)
        except TimeoutError:
            raise TimeoutError(f"no answer in {within:.0f} s") from None

    # In a thread of its own: a notebook's thread already runs an event loop.
    with ThreadPoolExecutor(1, thread_name_prefix="geoseg-probe") as probe:
        probe.submit(asyncio.run, ask_within()).result()


def scheduler_lost(address: str) -> ClusterLostError:
    """The error of a run whose scheduler went away: Dask cancelled every task in flight."""
    return ClusterLostError(
        f"lost the Dask scheduler at {address} mid-run; no output was replaced and the blocks "
        "finished are kept: run the same command again, with a scheduler that answers or "
        "without --scheduler, to resume from them"
    )


def scheduler_gone(client: Any, exc: Exception) -> bool:
    """Whether ``exc`` came of the client's scheduler going away.

    The client learns it on its own connection: a call that failed on another connection a
    moment before waits (a second at most) for it to say so.
    """
    deadline = time.monotonic() + (SCHEDULER_LOSS_WAIT_S if isinstance(exc, OSError) else 0.0)
    while client.status == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(client.status != "running")


@contextmanager
def _dask_client_logs_off() -> Iterator[None]:
    """Dask's client logs off: closing a client whose scheduler is gone.

    Dask then logs its ended attempts to reconnect as errors with tracebacks, which would only
    repeat, in its terms, the one error the run reports.
    """
    loggers = [logging.getLogger(name) for name in ("distributed.client", "distributed.utils")]
    before = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    try:
        yield
    finally:
        for logger, disabled in zip(loggers, before, strict=True):
            logger.disabled = disabled


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
    the workers can read) and never imports torch. The cloud networks a tile needs are
    compiled at their first use, for the worker's one thread, OpenVINO keeping their compiled
    form in ``cache``. A model fitted to a scene (its ``calibration``, which tasks carry) is
    built from the configuration on the worker the first time a task asks for it: index
    models, the only ones fitted, cost nothing to build. A ``lazy`` plugin builds its model
    only where a task first asks for it: with one model fed by the other workers (see
    :mod:`~.feeding`), the workers that only read never hold it.
    """

    #: Calibrated models a worker keeps: a batch's scenes one after another.
    KEPT = 8

    def __init__(
        self,
        config: ModelConfig,
        classes: tuple[ClassDef, ...],
        converted: str | None = None,
        cache: str | None = None,
        lazy: bool = False,
    ) -> None:
        self.config = config
        self.classes = classes
        self.converted = converted
        self.cache = cache
        self.lazy = lazy
        self.model: Model | None = None
        self._fitted: dict[str, Model] = {}

    def setup(self, worker: Any) -> None:
        """Build the model in the worker process, with one thread; on a GPU if torch has one.

        GDAL's messages go through logging, as in the client (:mod:`pipeline.gdal_messages`).
        The worker's compiled kernels are loaded too (:func:`pipeline.inference.warm_up`,
        :func:`pipeline.vectorize.warm_up`): set-up is where a worker loads what it runs, so
        that its first tile and first polygon task are not slower than the others.
        """
        from pipeline import inference, vectorize
        from pipeline.gdal_messages import route_gdal_messages
        from pipeline.masking import network

        route_gdal_messages()
        if not self.lazy:
            self.model = self._build({})
        masks = Path(self.cache) / "openvino" / "masks" if self.cache else None
        network.configure(threads=1, cache_dir=masks)
        inference.warm_up()
        vectorize.warm_up()

    def model_for(self, calibration: Mapping[str, Any] | None) -> Model:
        """The model, fitted to ``calibration`` when a scene's model is (see :meth:`setup`)."""
        if self.model is None:
            self.model = self._build({})
        if not calibration:
            return self.model
        key = json.dumps(dict(calibration), sort_keys=True)
        if key not in self._fitted:
            while len(self._fitted) >= self.KEPT:
                self._fitted.pop(next(iter(self._fitted)))
            self._fitted[key] = self._build(calibration)
        return self._fitted[key]

    def _build(self, calibration: Mapping[str, Any]) -> Model:
        from pipeline.models.build import build_on_worker

        converted = Path(self.converted) if self.converted is not None else None
        return build_on_worker(self.config, self.classes, converted, calibration)

    def teardown(self, worker: Any) -> None:
        """Release the models."""
        self.model = None
        self._fitted.clear()


def worker_model(
    plugin: str, calibration: Mapping[str, Any] | None, worker: Any = None
) -> Model | None:
    """In a task (or on ``worker``): the model its worker holds under ``plugin``, fitted.

    None when the run has let the model go (it was stopped): the task then returns nothing
    rather than print a worker's traceback, and the client counts the blocks that never
    came back (:func:`~.tiles.classify_blocks`).
    """
    if worker is None:
        from distributed import get_worker

        worker = get_worker()
    held = worker.plugins.get(plugin)
    return None if held is None else cast(ModelPlugin, held).model_for(calibration)


@dataclass(frozen=True)
class SharedCluster:
    """A cluster whose workers hold a workflow's model, kept for many runs (a batch's)."""

    client: Any
    #: The model's plugin name on the workers (see :func:`register_model`).
    plugin: str
    #: What planning learned of the model, so each run's plan need not build it again.
    model: Any


def register_model(
    client: Any, workflow: Workflow, converted: Path | None, out: Path, lazy: bool = False
) -> str:
    """Build ``workflow``'s model on every worker of ``client`` (see :class:`ModelPlugin`).

    ``lazy``: only where a task first asks for it. Returns the plugin's name, which tasks
    use to find the model and :func:`unregister_model` to let it go.
    """
    name = plugin_name(workflow) + ("-lazy" if lazy else "")
    plugin = ModelPlugin(
        workflow.model,
        workflow.classes,
        str(converted) if converted else None,
        str(default_cache(out).resolve()),
        lazy,
    )
    client.register_plugin(plugin, name=name)
    return name


def unregister_model(client: Any, name: str) -> None:
    """Drop the model from every worker, and the heap its forward passes left."""
    if client.status != "running":
        return  # the scheduler is gone, and its workers' models with it
    try:
        client.unregister_worker_plugin(name)
        client.run(release_memory)
    except OSError:
        pass  # the same, found only now: the error that ended the run is the one to report


def plugin_name(workflow: Workflow) -> str:
    """A name unique to a model: runs with another model or checkpoint never share one."""
    import hashlib

    h = hashlib.sha256(workflow.model.model_dump_json().encode())
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
