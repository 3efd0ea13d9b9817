"""The same inputs, model and settings give the same outputs, however the run is spread.

Byte-identical ``classes.tif`` and ``confidence.tif`` and the same polygons whatever the number
of workers, the order the blocks are handed out in (hence the order they arrive and are
written in), and the scheduler (a local cluster or ``dask scheduler`` and ``dask worker``
processes): for the index model of the ``forest`` workflow and a U-Net run by torch, in
float32 both.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline import inference
from pipeline.catalog import Catalog, load_catalog
from pipeline.grid import Block
from pipeline.orchestrate import RunOptions, RunResult, run
from pipeline.orchestrate.tiles import WorkingRasters
from pipeline.workflow import Workflow, load_workflow
from tests.cluster import DaskProcesses, assert_same_outputs, dask_processes, patchy_scene

#: The index run: 64 blocks of 64² on a 512² scene.
SIZE, TILE = 512, 64
#: The U-Net run: 16 blocks of 64² on a 256² scene, each read with 16 pixels of context.
UNET_SIZE, UNET_TILE, UNET_HALO = 256, 64, 16

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskProcesses]:
    """``dask scheduler`` and two ``dask worker`` processes, shared by the module's runs."""
    with dask_processes(tmp_path_factory.mktemp("dask"), workers=2) as procs:
        yield procs


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    return load_catalog(patchy_scene(tmp_path_factory.mktemp("scene"), SIZE))


@pytest.fixture(scope="module")
def forest() -> Workflow:
    return load_workflow("forest").model_copy(update={"tile_size": TILE})


@pytest.fixture(scope="module")
def reference(
    catalog: Catalog, forest: Workflow, tmp_path_factory: pytest.TempPathFactory
) -> tuple[RunResult, list[str]]:
    """The index run on one local worker, blocks in their usual order; the order they came."""
    out = tmp_path_factory.mktemp("one-worker")
    with pytest.MonkeyPatch.context() as mp:
        arrived = _record_arrivals(mp)
        result = _run(forest, catalog, out, workers=1)
    return result, arrived


def test_same_outputs_whatever_the_number_of_workers(catalog, forest, reference, tmp_path):
    one, _ = reference
    two = _run(forest, catalog, tmp_path, workers=2)
    assert (one.summary["execution"]["workers"], two.summary["execution"]["workers"]) == (1, 2)
    assert_same_outputs(two.folder, one.folder)


def test_same_outputs_on_an_external_scheduler(catalog, forest, reference, cluster, tmp_path):
    one, _ = reference
    external = _run(forest, catalog, tmp_path, scheduler=cluster.address)
    assert external.summary["execution"]["scheduler"] == cluster.address
    assert_same_outputs(external.folder, one.folder)


def test_same_outputs_whatever_the_block_order(
    catalog, forest, reference, cluster, tmp_path, monkeypatch
):
    one, usual = reference
    for seed, folder in [(1, tmp_path / "shuffled"), (None, tmp_path / "reversed")]:
        with monkeypatch.context() as mp:
            _hand_out_blocks_in(mp, _shuffled(seed) if seed else _reversed)
            arrived = _record_arrivals(mp)
            result = _run(forest, catalog, folder, scheduler=cluster.address)
        assert sorted(arrived) == sorted(usual) and arrived != usual  # the same, not in order
        assert_same_outputs(result.folder, one.folder)


def test_same_unet_outputs_whatever_the_workers_order_and_scheduler(cluster, tmp_path, monkeypatch):
    from pipeline.bench.model import _write_catalog, bench_workflow, write_random_unet
    from pipeline.bench.scenes import write_scene

    bands = ("red", "nir", "swir16")
    ckpt = write_random_unet(tmp_path / "unet.ckpt", bands, seed=3)
    unet = bench_workflow(str(ckpt), tile=UNET_TILE, halo=UNET_HALO, engine="torch")
    assert unet.model.precision == "f32"  # type: ignore[union-attr]
    scene = write_scene(tmp_path / "scene.tif", UNET_SIZE, bands, seed=2)
    catalog = load_catalog(_write_catalog(tmp_path, scene, bands))
    layer = unet.name
    one = _run(unet, catalog, tmp_path / "one", scene="bench", workers=1)
    with monkeypatch.context() as mp:
        _hand_out_blocks_in(mp, _shuffled(2))
        arrived = _record_arrivals(mp)
        spread = _run(unet, catalog, tmp_path / "spread", scene="bench", scheduler=cluster.address)
    assert len(set(arrived)) == len(arrived) == (UNET_SIZE // UNET_TILE) ** 2
    assert spread.summary["execution"]["workers"] == 2
    assert_same_outputs(spread.folder, one.folder, layer)


def _run(
    workflow: Workflow, catalog: Catalog, out: Path, scene: str = "synth", **options: Any
) -> RunResult:
    """Run ``workflow`` on ``scene`` in-process, writing under ``out``."""
    opts = RunOptions(out=out, progress=False, **options)
    return run(workflow, catalog.scene(scene), options=opts, catalog=str(catalog.path))


Order = Callable[[list[tuple[Block, ...]]], list[tuple[Block, ...]]]


def _hand_out_blocks_in(mp: pytest.MonkeyPatch, order: Order) -> None:
    """Have the tile stage hand its tasks out in ``order`` instead of its sweep (test only)."""
    usual = inference.classification_tasks

    def reordered(tiles: list[Block], tile_size: int, batch_size: int) -> list[tuple[Block, ...]]:
        return order(usual(tiles, tile_size, batch_size))

    mp.setattr(inference, "classification_tasks", reordered)


def _shuffled(seed: int) -> Order:
    def shuffle(tasks: list[tuple[Block, ...]]) -> list[tuple[Block, ...]]:
        tasks = list(tasks)
        random.Random(seed).shuffle(tasks)
        return tasks

    return shuffle


def _reversed(tasks: list[tuple[Block, ...]]) -> list[tuple[Block, ...]]:
    return tasks[::-1]


def _record_arrivals(mp: pytest.MonkeyPatch) -> list[str]:
    """The keys of the blocks the client writes, in the order it writes them (filled later)."""
    arrived: list[str] = []
    write = WorkingRasters.write

    def recording(self: WorkingRasters, block: Block, classes: Any, confidence: Any) -> None:
        arrived.append(block.key)
        write(self, block, classes, confidence)

    mp.setattr(WorkingRasters, "write", recording)
    return arrived
