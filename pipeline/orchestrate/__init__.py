"""Running a workflow on a scene with Dask distributed: the only package that knows Dask.

A run, stage by stage (:func:`run`):

1. **plan** (:mod:`pipeline.planning`): the model, the grid, each scene's mask, the model's
   calibration and the blocks, every user error found before a cluster starts;
2. **cluster** (:mod:`.cluster`): a local cluster or a scheduler's, each worker building the
   model once;
3. **tiles** (:mod:`.tiles`): each block read, masked and classified by a worker, written
   into the working rasters and the resume cache as it arrives;
4. **finish** (:mod:`.finish`): the rasters copied to COGs while the workers polygonize them
   (:mod:`.polygons`), the GeoPackage, the preview and the styles;
5. **summarize** (:mod:`pipeline.summary`, :mod:`pipeline.stac`): ``run.json`` and
   ``item.json``;

and every output renamed into place only when all of them are complete.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.catalog import Scene
from pipeline.errors import GeosegError, UnusableSceneError
from pipeline.orchestrate.cluster import (
    QUIET_MONITORS,
    ModelPlugin,
    RunOptions,
    SharedCluster,
    dask_client,
    plugin_name,
    release_memory,
    worker_threads,
)
from pipeline.orchestrate.feeding import uses_one_model
from pipeline.orchestrate.finish import EarlyWork, lower_thread_priority, publish, warm_up_client
from pipeline.orchestrate.polygons import labels_folder, vectorize_on_cluster
from pipeline.orchestrate.tiles import WorkingRasters, classify_blocks, resume_key
from pipeline.planning import RunPlan, check_masked, default_cache, plan_run
from pipeline.publish import BlockCache, Staging, write_failure, write_json
from pipeline.stac import run_item
from pipeline.summary import RunRecord, run_summary
from pipeline.workflow import Workflow

if TYPE_CHECKING:
    import geopandas


@dataclass
class RunResult:
    """What a finished run wrote: its folder, its files and its summary (``run.json``)."""

    folder: Path
    files: list[Path]
    summary: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        """The output called ``name`` (``classes.tif``, ``polygons.gpkg``, …)."""
        found = self.folder / name
        if found not in self.files:
            raise KeyError(f"the run wrote no {name} (it wrote {[f.name for f in self.files]})")
        return found

    def polygons(self) -> geopandas.GeoDataFrame:
        """The run's polygons as a GeoDataFrame, read with pyogrio's Arrow path."""
        import geopandas

        layer = self.summary["workflow"]["name"]
        return geopandas.read_file(self.path("polygons.gpkg"), layer=layer, use_arrow=True)

    def item(self) -> dict[str, Any]:
        """The run's STAC Item (``item.json``) as a dictionary."""
        data: dict[str, Any] = json.loads(self.path("item.json").read_text(encoding="utf-8"))
        return data


def run(
    workflow: Workflow,
    scene: Scene,
    before: Scene | None = None,
    options: RunOptions | None = None,
    catalog: str | None = None,
) -> RunResult:
    """Run ``workflow`` on ``scene`` (after ``before``) and write every output; what it wrote.

    ``catalog`` names the catalog file the scenes came from, for the outputs' provenance.
    """
    options = options or RunOptions()
    started = time.perf_counter()
    cache = default_cache(options.out)
    plan = plan_run(workflow, scene, before, cache, catalog, bbox=options.bbox)
    return run_plan(plan, options, started)


def run_plan(
    plan: RunPlan, options: RunOptions, started: float, shared: SharedCluster | None = None
) -> RunResult:
    """Run a plan made at ``started`` (a ``perf_counter`` time) and write every output.

    On the ``shared`` cluster, whose workers already hold the model, when one is given (a
    batch's, :mod:`.batch`); else on a cluster of its own.
    """
    times = {"plan_s": time.perf_counter() - started}
    folder = output_folder(plan, options)
    existed = folder.exists()
    cache = BlockCache(folder / ".work", resume_key(plan))
    with _write_failures(folder), Staging(folder) as staging:
        try:
            record = _run_on_cluster(plan, staging, cache, options, times, shared)
        except UnusableSceneError:
            # Run again, the scene would still be unusable: keep nothing of it.
            cache.clear()
            if not existed:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        record.times["total_s"] = time.perf_counter() - started
        summary = run_summary(plan, record)
        write_json(staging.path("run.json"), summary)
        item = run_item(plan, summary, [*staging.outputs(), "item.json"])
        write_json(staging.path("item.json"), item.to_dict(include_self_link=False))
        files = staging.commit()
        cache.clear()  # the outputs are complete: nothing left to resume
    return RunResult(folder=folder, files=files, summary=summary)


@contextmanager
def _write_failures(folder: Path) -> Iterator[None]:
    """A write in ``folder`` that failed (a full disk, quota, size limit) as one OutputError.

    Entered before the staging, so the error comes out after the staged files are deleted.
    """
    try:
        yield
    except OSError as exc:
        failure = None if isinstance(exc, GeosegError) else write_failure(folder, exc)
        if failure is None:
            raise
        raise failure from None


def output_folder(plan: RunPlan, options: RunOptions) -> Path:
    """Where a plan's outputs go: ``OUT/WORKFLOW/SCENE``."""
    return Path(options.out).expanduser() / plan.workflow.name / plan.scene.id


def _run_on_cluster(
    plan: RunPlan,
    staging: Staging,
    cache: BlockCache,
    options: RunOptions,
    times: dict[str, float],
    shared: SharedCluster | None,
) -> RunRecord:
    """The tiles, then the outputs, on a cluster; what the run counted."""
    rasters = WorkingRasters.create(staging, plan, options)
    t0 = time.perf_counter()
    with (
        # A thread of the client's own for work that can wait: while the workers load the
        # model it loads the polygon stage's kernels and reads the preview's scene; while
        # they polygonize, it composes the preview and then renders it.
        ThreadPoolExecutor(1, thread_name_prefix="geoseg-client") as pool,
        _cluster(options, shared, uses_one_model(options, plan.engine)) as (client, plugin),
    ):
        times["cluster_start_s"] = time.perf_counter() - t0
        workers = len(worker_threads(client))
        early = EarlyWork.start(pool, plan)
        try:
            counts, feed = classify_blocks(client, plan, rasters, cache, options, times, plugin)
        finally:
            rasters.close()
        check_masked(plan, counts)
        tally, created = publish(
            client, pool, plan, rasters, early, counts, staging, options, times
        )
    resumed = int(times.pop("resumed_blocks", 0))
    layout = {"one_model": feed is not None} | (feed.to_dict() if feed else {})
    return RunRecord(
        counts, tally, times, created, options.scheduler, workers, resumed, cache.key, layout
    )


@contextmanager
def _cluster(
    options: RunOptions, shared: SharedCluster | None, one_model: bool
) -> Iterator[tuple[Any, str | None]]:
    """The shared cluster and its model's plugin, or a cluster of the run's own and None."""
    if shared is not None:
        yield shared.client, shared.plugin
        return
    with dask_client(options.workers, options.scheduler, one_model) as client:
        yield client, None


__all__ = [
    "QUIET_MONITORS",
    "ModelPlugin",
    "RunOptions",
    "RunResult",
    "dask_client",
    "labels_folder",
    "lower_thread_priority",
    "plugin_name",
    "release_memory",
    "resume_key",
    "output_folder",
    "run",
    "run_plan",
    "vectorize_on_cluster",
    "warm_up_client",
]
