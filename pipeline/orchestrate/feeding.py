"""The tile stage with one model fed by the other workers: how a GPU is kept busy.

With the model on a GPU, one copy of it must serve the whole cluster: a copy per worker would
fill the GPU with models, each waiting on its own worker's one core to read the next tile.
Here one worker, the model's *host*, runs forward passes and nothing else; the other workers
(the *readers*) read, decode and mask the tiles, each going down its own stretches of the
scene as :class:`~pipeline.inference.Dispatcher` hands them out, and the host takes them a
batch at a time, as many tiles as one pass fits in its device's memory
(:func:`~pipeline.models.device.fitting_batch`). Dask moves each read tile to the host while
the host runs the batch before it. The client keeps at most :attr:`FeedPlan.backlog` tiles
read and not yet classified, so that memory stays flat however the model's and the readers'
speeds compare.

The same scheduling runs with the model on the CPU (``--one-model``): what the tests run on a
machine without a GPU.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distributed import as_completed

from pipeline.grid import Block
from pipeline.orchestrate.cluster import RunOptions, worker_model, worker_threads

if TYPE_CHECKING:
    from pipeline.inference import Tile
    from pipeline.models.engines import EngineChoice
    from pipeline.orchestrate.tiles import BlockResult
    from pipeline.planning import RunPlan

#: A worker resource that marks the worker to hold the model (``dask worker --resources
#: GPU=1``), on a cluster of a scheduler's own.
HOST_RESOURCE = "GPU"


def uses_one_model(options: RunOptions, engine: EngineChoice | None) -> bool:
    """Whether one worker holds the model for all: as asked, else when it runs on a GPU."""
    if options.one_model is not None:
        return options.one_model
    return engine is not None and engine.device == "cuda"


@dataclass(frozen=True)
class FeedPlan:
    """Who holds the model, who reads, and how many tiles go through one forward pass."""

    host: str
    readers: tuple[str, ...]
    #: Tiles of one forward pass.
    batch: int

    @property
    def backlog(self) -> int:
        """Most tiles read (or being read) and not yet classified: two batches, and two a reader."""
        return 2 * (self.batch + len(self.readers))

    def to_dict(self) -> dict[str, Any]:
        """The layout as ``run.json`` records it."""
        return {"model_host": self.host, "readers": len(self.readers), "batch": self.batch}


def model_host(client: Any) -> str:
    """The worker to hold the model: one with the :data:`HOST_RESOURCE`, else the first."""
    workers = client.scheduler_info().get("workers", {})
    if not workers:
        raise RuntimeError("the cluster has no workers")
    marked = [a for a, info in workers.items() if info.get("resources", {}).get(HOST_RESOURCE)]
    return sorted(marked or workers)[0]


def plan_feed(client: Any, plan: RunPlan, plugin: str, todo: list[Block]) -> FeedPlan:
    """Choose the host and the readers, and build the model on the host to size its batches.

    With one worker only, it both reads and runs the model.
    """
    host = model_host(client)
    readers = tuple(w for w in worker_threads(client) if w != host) or (host,)
    halo = plan.workflow.halo
    first = todo[0] if todo else plan.tiles[0]
    shape = (plan.model.in_channels, first.height + 2 * halo, first.width + 2 * halo)
    cpu_batch = getattr(plan.workflow.model, "batch_size", 1)
    sized = client.run(_host_batch, plugin, plan.calibration, shape, cpu_batch, workers=[host])
    return FeedPlan(host, readers, int(sized[host]))


def fed_blocks(
    client: Any, plan: RunPlan, plugin: str, todo: list[Block], options: RunOptions, feed: FeedPlan
) -> Iterator[BlockResult]:
    """Each block of ``todo`` read by the readers and classified on the host, as they finish."""
    return _Feed(client, plan, plugin, todo, options, feed).results()


class _Feed:
    """The client's side of a fed tile stage: read tasks handed out, batches sent to the host."""

    def __init__(
        self,
        client: Any,
        plan: RunPlan,
        plugin: str,
        todo: list[Block],
        options: RunOptions,
        feed: FeedPlan,
    ) -> None:
        from pipeline.inference import Dispatcher, classification_tasks, tile_pixels

        self.client, self.plan, self.plugin, self.feed = client, plan, plugin, feed
        self.seams = options.seams
        halo = plan.workflow.halo
        reads = classification_tasks(todo, plan.workflow.tile_size, 1)  # a tile per read task
        self.reads = Dispatcher(reads, list(feed.readers), lambda g: tile_pixels(g, halo))
        self.finished = as_completed()
        self.reading: dict[Any, str] = {}  # read tasks not finished, and their readers
        self.gathered: list[tuple[tuple[Block, ...], Any]] = []  # the next batch's reads
        self.batches: dict[Any, int] = {}  # batches sent to the host, and their tiles
        self.held: list[str] = []  # readers waiting for the backlog to shrink
        self.backlog = 0

    def results(self) -> Iterator[BlockResult]:
        """Start every reader, then yield each batch's blocks as the host returns them."""
        for reader in self.feed.readers:
            for _ in range(worker_threads(self.client).get(reader, 1) + 1):
                self._read(reader)
        self._send_if_stalled()
        try:
            for future in self.finished:
                if future in self.reading:
                    self._read_finished(future)
                else:
                    yield from future.result()
                    self._batch_finished(future)
                self._send_if_stalled()
        finally:
            if self.client.status == "running":
                gathered = [read for _, read in self.gathered]
                self.client.cancel([*self.reading, *gathered, *self.batches])

    def _read(self, reader: str) -> None:
        """Hand ``reader`` its next tiles to read, unless the backlog is full."""
        if self.backlog >= self.feed.backlog:
            self.held.append(reader)
            return
        group = self.reads.next(reader)
        if group is None:
            return
        from pipeline.inference import read_tiles

        future = self.client.submit(
            read_tiles,
            self.plan.model.bands,
            self.plan.scene,
            self.plan.before,
            self.plan.grid,
            group,
            self.plan.workflow.halo,
            self.plan.masks,
            key=f"geoseg-read-{self.plan.scene.id}-{group[0].key}-{uuid.uuid4().hex[:6]}",
            pure=False,
            workers=[reader],
            allow_other_workers=True,
        )
        self.reading[future] = reader
        self.finished.add(future)
        self.gathered.append((group, future))
        self.backlog += len(group)
        if len(self.gathered) >= self.feed.batch:
            self._send()

    def _send(self) -> None:
        """Send the gathered read tasks to the host as one batch."""
        groups = [group for group, _ in self.gathered]
        tiles = sum(len(group) for group in groups)
        future = self.client.submit(
            _model_task,
            self.plugin,
            self.plan.calibration,
            self.feed.batch,
            self.seams,
            groups,
            *[read for _, read in self.gathered],
            key=f"geoseg-model-{self.plan.scene.id}-n{tiles}-{uuid.uuid4().hex[:6]}",
            pure=False,
            workers=[self.feed.host],
            allow_other_workers=True,  # a lost host's batches go to another worker
        )
        self.batches[future] = tiles
        self.finished.add(future)
        self.gathered = []

    def _send_if_stalled(self) -> None:
        """Send a short batch when no more reads can join it: all handed out, or held back."""
        if self.gathered and (len(self.reads) == 0 or self.backlog >= self.feed.backlog):
            self._send()

    def _read_finished(self, future: Any) -> None:
        reader = self.reading.pop(future)
        if future.status == "error":
            future.result()  # raises the reader's error
        self._read(reader)

    def _batch_finished(self, future: Any) -> None:
        self.backlog -= self.batches.pop(future)
        future.release()
        held, self.held = self.held, []
        for reader in held:
            self._read(reader)


def _model_task(
    plugin: str,
    calibration: dict[str, Any],
    batch: int,
    seams: bool,
    groups: list[tuple[Block, ...]],
    *reads: list[Tile],
) -> list[BlockResult]:
    """The host's task: classify the tiles ``reads`` of ``groups``, ``batch`` per forward pass."""
    from pipeline.inference import classify_tiles
    from pipeline.orchestrate.tiles import block_results  # tiles imports this module

    model = worker_model(plugin, calibration)
    if model is None:
        return []
    group = tuple(block for blocks in groups for block in blocks)
    tiles = [tile for read in reads for tile in read]
    return block_results(group, classify_tiles(model, group, tiles, batch), seams)


def _host_batch(
    plugin: str,
    calibration: dict[str, Any],
    shape: tuple[int, int, int],
    cpu_batch: int,
    dask_worker: Any,
) -> int:
    """On the host: build the model now (not at the first batch) and size its batches."""
    from pipeline.models.device import fitting_batch

    return fitting_batch(worker_model(plugin, calibration, dask_worker), shape, cpu_batch)
