"""The tile stage: every block read, masked and classified on the cluster, written on arrival.

The client hands the blocks out as tasks, each worker going down its own stretch of swaths
(:class:`~pipeline.inference.Dispatcher`). A task carries small frozen value objects only (the
scene references, the grid, the blocks, the mask plans); it reads its tiles, masks and
classifies them with the model its worker built once (:class:`~.cluster.ModelPlugin`), and
returns each block's class and confidence arrays, which the client writes into the working
rasters and the resume cache as they arrive. Neither side holds a whole scene.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from distributed import as_completed
from tqdm import tqdm

from pipeline import __version__
from pipeline.grid import Block, Grid
from pipeline.kernels import count_values
from pipeline.masking import MASK_CLASSES
from pipeline.orchestrate.cluster import (
    RunOptions,
    plugin_name,
    register_model,
    unregister_model,
    worker_model,
    worker_threads,
)
from pipeline.orchestrate.feeding import FeedPlan, fed_blocks, plan_feed, uses_one_model
from pipeline.planning import RunPlan
from pipeline.publish import BlockCache, BlockRaster, Staging
from pipeline.remote import is_remote, remote_fingerprint
from pipeline.stitch import NODATA, SeamTracker

if TYPE_CHECKING:
    from pipeline.catalog import Scene
    from pipeline.inference import Masks, TileResult

#: What a block task returns per block: the block, its classes and confidence, and its
#: tile's classes over the whole read window (for ``seams.tif``; None when not asked for).
BlockResult = tuple[Block, np.ndarray, np.ndarray, np.ndarray | None]


@dataclass
class WorkingRasters:
    """The run's rasters while its blocks arrive: scratch files, copied to COGs at the end."""

    classes: BlockRaster
    confidence: BlockRaster
    seams: BlockRaster | None = None

    @classmethod
    def create(cls, staging: Staging, plan: RunPlan, options: RunOptions) -> WorkingRasters:
        """Open the working rasters in ``staging`` (``seams`` only when asked for)."""
        grid = plan.grid
        colormap = {c.value: (*c.rgb, 255) for c in (*plan.workflow.classes, *MASK_CLASSES)}
        seams = None
        if options.seams:
            seams = BlockRaster(
                staging.scratch("seams.work.tif"),
                grid,
                NODATA,
                colormap={0: (0, 0, 0, 0), 1: (230, 20, 20, 255)},
                description="1: another overlapping tile predicts another class",
            )
        return cls(
            BlockRaster(staging.scratch("classes.work.tif"), grid, NODATA, colormap, "class"),
            BlockRaster(staging.scratch("confidence.work.tif"), grid, NODATA, None, "confidence %"),
            seams,
        )

    def write(self, block: Block, classes: np.ndarray, confidence: np.ndarray) -> None:
        """Write one block's classes and confidence."""
        self.classes.write(block, classes)
        self.confidence.write(block, confidence)

    def close(self) -> None:
        """Close every working raster (their COG copies read them afterwards)."""
        for raster in (self.classes, self.confidence, self.seams):
            if raster is not None:
                raster.close()

    def to_publish(self, staging: Staging) -> list[tuple[BlockRaster, Path, str]]:
        """Each raster with its output's staged path and its overviews' resampling."""
        out = [
            (self.classes, staging.path("classes.tif"), "NEAREST"),
            (self.confidence, staging.path("confidence.tif"), "AVERAGE"),
        ]
        if self.seams is not None:
            out.append((self.seams, staging.path("seams.tif"), "NEAREST"))
        return out


def resume_key(plan: RunPlan) -> str:
    """Name of the block cache of a run: changes with the scene, grid, model, mask or settings.

    A file enters by its size and modification time, a remote one by what a HEAD request
    says of it (:func:`~pipeline.remote.remote_fingerprint`): never by reading its bytes.
    """
    workflow = plan.workflow
    h = hashlib.sha256(plugin_name(workflow).encode())
    settings = (plan.scene, plan.before, plan.grid, workflow.tile_size, workflow.halo)
    h.update(repr((*settings, plan.bbox, plan.window, plan.masks)).encode())
    h.update(repr((sorted(plan.calibration.items()), __version__)).encode())
    paths = {band.path for s in (plan.scene, plan.before) if s for band in s.bands}
    for path in sorted(paths):
        if Path(path).is_file():
            stat = Path(path).stat()
            h.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        elif is_remote(path):
            h.update(f"{path}:{remote_fingerprint(path)}".encode())
    return h.hexdigest()[:20]


def classify_blocks(
    client: Any,
    plan: RunPlan,
    rasters: WorkingRasters,
    cache: BlockCache,
    options: RunOptions,
    times: dict[str, float],
    plugin: str | None = None,
) -> tuple[np.ndarray, FeedPlan | None]:
    """Classify every block of the plan, writing each as it arrives; return class counts.

    Also returns who held the model and who fed it, when one worker held it for all (see
    :mod:`.feeding`).

    Blocks a killed earlier run of the same configuration finished come from ``cache``;
    every block finished now is added to it before it is written. With ``seams.tif`` asked
    for, each block's seams are written as its neighbours arrive (see
    :class:`~pipeline.stitch.SeamTracker`); a block from the cache brings no tile to compare.
    ``plugin`` names a model already on the workers (a batch's); without one the model is
    built for these tiles and dropped after them, so that the workers' polygon tasks do not
    hold it too.
    """
    counts = np.zeros(256, dtype=np.int64)
    seams = None
    if rasters.seams is not None:
        seams = SeamTracker(plan.grid, list(plan.tiles), plan.workflow.halo)

    def put(block: Block, classes: np.ndarray, confidence: np.ndarray, window: Any) -> None:
        rasters.write(block, classes, confidence)
        if seams is not None and rasters.seams is not None:
            for done, mask in seams.add(block, classes, window):
                rasters.seams.write(done, mask)
        counts[:] += count_values(np.ascontiguousarray(classes))

    todo = [block for block in plan.tiles if not _resumed(block, cache, put)]
    times["resumed_blocks"] = len(plan.tiles) - len(todo)
    t0 = time.perf_counter()
    one_model = uses_one_model(options, plan.engine)
    name = plugin or register_model(
        client, plan.workflow, plan.converted, options.out, lazy=one_model
    )
    feed = plan_feed(client, plan, name, todo) if one_model and todo else None
    times["model_setup_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    arrived = 0
    try:
        if feed is not None:
            classified = fed_blocks(client, plan, name, todo, options, feed)
        else:
            classified = _classified(client, plan, name, todo, options)
        for block, classes, confidence, window in classified:
            cache.put(block, classes, confidence)
            put(block, classes, confidence, window)
            arrived += 1
        if arrived != len(todo):  # a task that found no model returns nothing (_blocks_task)
            raise RuntimeError(f"{len(todo) - arrived} of {len(todo)} blocks never came back")
    finally:
        if plugin is None:
            unregister_model(client, name)
    times["tiles_s"] = time.perf_counter() - t0
    return counts, feed


def _resumed(block: Block, cache: BlockCache, put: Any) -> bool:
    """Write ``block`` from the resume cache if an earlier run finished it; whether it did."""
    cached = cache.get(block)
    if cached is not None:
        put(block, cached[0], cached[1], None)
    return cached is not None


def _classified(
    client: Any, plan: RunPlan, plugin: str, todo: list[Block], options: RunOptions
) -> Iterator[BlockResult]:
    """Each block of ``todo`` classified on the cluster, in the order they finish.

    Each worker holds one task beyond those it runs, so it never waits for the client; with
    no worker known yet, every task goes out at once, in sweep order, to whoever takes it.
    """
    from pipeline.inference import Dispatcher, classification_tasks, tile_pixels

    workflow = plan.workflow
    batch_size = getattr(workflow.model, "batch_size", 1)
    tasks = classification_tasks(todo, workflow.tile_size, batch_size)
    workers = worker_threads(client)
    dispatcher = Dispatcher(tasks, list(workers), lambda g: tile_pixels(g, workflow.halo))
    running: dict[Any, str] = {}
    finished = as_completed()

    def submit(worker: str) -> None:
        group = dispatcher.next(worker)
        if group is not None:
            future = _submit_blocks(client, plan, plugin, group, worker, options.seams)
            running[future] = worker
            finished.add(future)

    for worker, threads in (workers or {"": len(tasks)}).items():
        for _ in range(threads + 1):
            submit(worker)
    bar = tqdm(
        total=len(plan.tiles),
        initial=len(plan.tiles) - len(todo),
        desc=f"{workflow.name} {plan.scene.id}",
        unit="block",
        disable=not options.progress,
        leave=False,
    )
    try:
        for future in finished:
            submit(running.pop(future))
            for result in future.result():
                yield result
                bar.update()
            future.release()
    finally:
        bar.close()
        if client.status == "running":  # a client whose scheduler is gone has nothing to cancel
            client.cancel(list(running))


def _submit_blocks(
    client: Any, plan: RunPlan, plugin: str, group: tuple[Block, ...], worker: str, seams: bool
) -> Any:
    """Submit one task of blocks, pinned to ``worker`` but free to run elsewhere if it is lost."""
    workflow = plan.workflow
    where = {"workers": [worker], "allow_other_workers": True} if worker else {}
    return client.submit(
        _blocks_task,
        plugin,
        plan.scene,
        plan.before,
        plan.grid,
        group,
        workflow.halo,
        seams,
        getattr(workflow.model, "batch_size", 1),
        plan.masks,
        plan.calibration,
        key=f"geoseg-blocks-{plugin}-{plan.scene.id}-{group[0].key}-n{len(group)}"
        f"-h{workflow.halo}-{uuid.uuid4().hex[:6]}",
        pure=False,
        **where,
    )


def _blocks_task(
    plugin: str,
    scene: Scene,
    before: Scene | None,
    grid: Grid,
    group: tuple[Block, ...],
    halo: int,
    seams: bool = False,
    batch_size: int | None = None,
    masks: Masks = (),
    calibration: dict[str, Any] | None = None,
) -> list[BlockResult]:
    """A worker's task: read, mask and classify ``group`` with the worker's model.

    ``calibration`` is what the model fitted to this scene (see :class:`~.cluster.ModelPlugin`).
    """
    from pipeline.inference import process_tiles

    model = worker_model(plugin, calibration)
    if model is None:
        return []
    results = process_tiles(model, scene, before, grid, group, halo, batch_size, masks)
    return block_results(group, results, seams)


def block_results(
    group: tuple[Block, ...], results: list[TileResult], seams: bool
) -> list[BlockResult]:
    """What a task returns of ``group``'s classified tiles (see :data:`BlockResult`).

    A tile's classes over its whole window travel only when ``seams.tif`` needs them.
    """
    return [(b, c, f, w if seams else None) for b, (c, f, w) in zip(group, results, strict=True)]
