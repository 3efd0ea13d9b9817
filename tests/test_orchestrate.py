from __future__ import annotations

import json
import sqlite3
import sys
import time

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import torch
from PIL import Image

from pipeline.catalog import Catalog, load_catalog
from pipeline.errors import ConfigError, ModelError, SceneError
from pipeline.grid import Block
from pipeline.inference import (
    NODATA,
    consecutive_batches,
    predict_tile,
    process_block,
    process_blocks,
    sweep,
)
from pipeline.models import build_model
from pipeline.orchestrate import (
    ModelPlugin,
    RunOptions,
    dask_client,
    lower_thread_priority,
    plugin_name,
    run,
)
from pipeline.orchestrate.tiles import _blocks_task
from pipeline.planning import model_version, plan
from pipeline.reading import read_window
from pipeline.workflow import IndexModelConfig, Workflow, load_workflow
from tests.data import catalog_yaml, forest_scene, write_raster


@pytest.fixture(scope="module")
def forest() -> Workflow:
    return load_workflow("forest")


def whole_scene_prediction(catalog: Catalog, workflow: Workflow, scene_id: str):
    """One forward pass over the whole (small) scene, for comparison with tiled runs."""
    model, scene, _, grid = plan(workflow, catalog.scene(scene_id))
    data, valid = read_window(scene, model.bands, grid, Block(0, 0, grid.height, grid.width).window)
    return predict_tile(model, data, valid), grid


def test_plan_finds_user_errors_before_any_cluster(synthetic_catalog, forest, tmp_path):
    fire = load_workflow("fire")
    with pytest.raises(ConfigError, match="--before"):
        plan(fire, synthetic_catalog.scene("synth"))
    one_date = forest.model_copy(
        update={
            "model": IndexModelConfig(kind="index", name="forest-ndvi-swir"),
            "classes": forest.classes[:2],
        }
    )
    with pytest.raises(ConfigError, match="drop --before"):
        plan(one_date, synthetic_catalog.scene("synth"), synthetic_catalog.scene("synth"))
    with pytest.raises(ConfigError, match="names the same scene"):
        plan(forest, synthetic_catalog.scene("synth"), synthetic_catalog.scene("synth"))
    with pytest.raises(ConfigError, match="no scene 'nope'"):
        synthetic_catalog.scene("nope")
    three = forest.model_copy(
        update={
            "classes": (
                *forest.classes,
                forest.classes[1].model_copy(update={"value": 3, "name": "x"}),
            )
        }
    )
    with pytest.raises(ModelError, match="lists 4 classes but model"):
        plan(three, synthetic_catalog.scene("synth"))


def test_plan_rejects_a_before_scene_elsewhere(tmp_path):
    here = forest_scene(tmp_path / "a")
    far = tmp_path / "b"
    far.mkdir()
    from affine import Affine

    moved = {}
    for name in ("green", "red", "nir", "swir16"):
        with rasterio.open(here[name]) as src:
            arr, t = src.read(), src.transform
        moved[name] = write_raster(
            far / f"{name}.tif", arr, Affine(t.a, 0, t.c + 50_000, 0, t.e, t.f), nodata=0
        )
    cat = load_catalog(
        catalog_yaml(
            tmp_path,
            {
                "a": {"assets": {k: str(v) for k, v in here.items()}, "scale": 1e-4},
                "b": {"assets": {k: str(v) for k, v in moved.items()}, "scale": 1e-4},
            },
        )
    )
    with pytest.raises(SceneError, match="does not overlap"):
        plan(load_workflow("mining"), cat.scene("a"), cat.scene("b"))


def test_process_block_matches_whole_scene_pass(synthetic_catalog, forest):
    (classes, confidence), grid = whole_scene_prediction(synthetic_catalog, forest, "synth")
    model, scene, _, grid = plan(forest, synthetic_catalog.scene("synth"))
    block = Block(10, 20, 30, 40)
    got_c, got_f = process_block(model, scene, None, grid, block, halo=8)
    np.testing.assert_array_equal(got_c, classes[10:40, 20:60])
    np.testing.assert_array_equal(got_f, confidence[10:40, 20:60])


def test_model_is_built_once_per_worker_and_tasks_carry_no_model(synthetic_catalog, forest):
    model, scene, _, grid = plan(forest, synthetic_catalog.scene("synth"))
    name = plugin_name(forest)
    with dask_client(workers=2, scheduler=None) as client:
        client.register_plugin(ModelPlugin(forest.model, forest.classes), name=name)

        def model_ids(dask_worker):
            return id(dask_worker.plugins[name].model)

        before = client.run(model_ids)
        blocks = [Block(r, c, 16, 16) for r in range(0, 64, 16) for c in range(0, 64, 16)]
        futures = [
            client.submit(_blocks_task, name, scene, None, grid, (b,), 0, pure=False)
            for b in blocks
        ]
        results = [r for batch in client.gather(futures) for r in batch]
        after = client.run(model_ids)
    assert len(before) == 2 and before == after  # same model object before and after 16 tasks
    assert [r[0] for r in results] == blocks
    # What a task carries is small: value objects, not arrays or modules.
    import pickle

    size = len(pickle.dumps((name, scene, None, grid, blocks[0], 0)))
    assert size < 4096
    assert not any(isinstance(a, torch.nn.Module) for a in (name, scene, grid, blocks[0]))


def test_run_writes_every_output_tile_size_independent(synthetic_catalog, forest, tmp_path):
    (classes, confidence), grid = whole_scene_prediction(synthetic_catalog, forest, "synth")
    outs = {}
    for tile in (16, 1024):
        wf = forest.with_overrides(tile_size=tile, halo=0)
        res = run(
            wf,
            synthetic_catalog.scene("synth"),
            options=RunOptions(out=tmp_path / f"t{tile}", workers=2, progress=False),
            catalog=str(synthetic_catalog.path),
        )
        assert res.folder == tmp_path / f"t{tile}" / "forest" / "synth"
        names = sorted(p.name for p in res.folder.iterdir())
        assert names == [
            "classes.qml",
            "classes.tif",
            "classes.tif.aux.xml",
            "confidence.tif",
            "item.json",
            "polygons.gpkg",
            "preview.png",
            "run.json",
        ]
        outs[tile] = res
        with rasterio.open(res.folder / "classes.tif") as src:
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert src.nodata == NODATA and src.dtypes[0] == "uint8"
            assert src.crs.to_epsg() == 32618
            assert src.transform.c == 435730.0 and src.transform.a == 10.0
            np.testing.assert_array_equal(src.read(1), classes)
        with rasterio.open(res.folder / "confidence.tif") as src:
            np.testing.assert_array_equal(src.read(1), confidence)

    # The synthetic scene's top 4 rows are nodata: nodata stays nodata and never becomes a polygon.
    assert (classes[:4] == NODATA).all() and (classes[4:] != NODATA).all()
    folder = outs[16].folder
    info = pyogrio.read_info(folder / "polygons.gpkg", layer="forest")
    assert info["crs"] == "EPSG:32618"
    for field in ("class", "area_m2", "confidence", "scene", "acquired", "model", "run_id"):
        assert field in list(info["fields"])
    _, _, geoms, _ = pyogrio.raw.read(folder / "polygons.gpkg", layer="forest")
    polys = shapely.from_wkb(geoms)
    top = grid.bounds[3]
    nodata_strip = shapely.box(grid.bounds[0], top - 40, grid.bounds[2], top)
    assert not shapely.intersects(polys, nodata_strip.buffer(-1)).any()
    # Forest polygons cover exactly the forest pixels the model found (no sieve losses here
    # beyond specks: compare areas within the sieve/min-area clean-up's reach).
    forest_m2 = (classes == 1).sum() * 100.0
    assert abs(shapely.area(polys).sum() - forest_m2) / forest_m2 < 0.05

    summary = json.loads((folder / "run.json").read_text())
    assert summary["scene"]["id"] == "synth" and summary["scene"]["acquired"] == "2024-06-01"
    assert summary["workflow"]["tile_size"] == 16
    assert summary["execution"]["tiles"] == 6 * 5  # ceil(96 / 16) * ceil(80 / 16)
    assert summary["counts"]["classes"]["forest"]["pixels"] == (classes == 1).sum()
    assert {"cluster_start_s", "tiles_s", "cog_s", "vectorize_s", "polygons_s", "total_s"} <= set(
        summary["times"]
    )
    assert {"torch", "torchgeo", "rasterio", "gdal", "dask"} <= set(summary["versions"])
    assert "preview_s" in summary["times"]

    # The GeoPackage carries the workflow's style and the run's provenance.
    gpkg = folder / "polygons.gpkg"
    assert summary["model_version"] == model_version(forest.model)
    _, _, _, values = pyogrio.raw.read(gpkg, layer="forest", columns=["model_version"])
    assert set(values[0]) == {summary["model_version"]}
    meta, _, _, values = pyogrio.raw.read(gpkg, layer="runs")
    row = {name: v[0] for name, v in zip(meta["fields"], values, strict=True)}
    assert row == {
        "run_id": summary["run_id"],
        "created": summary["created"],
        "workflow": "forest",
        "scene": "synth",
        "before": None,
        "model": summary["model"],
        "model_version": summary["model_version"],
        "catalog": str(synthetic_catalog.path),
        "geoseg_version": summary["versions"]["geoseg"],
        "config": row["config"],
    }
    config = json.loads(row["config"])
    assert config["workflow"] == summary["workflow"] and config["scene"] == summary["scene"]
    with sqlite3.connect(gpkg) as db:
        styles = db.execute("select f_table_name, useAsDefault, styleQML from layer_styles")
        assert [(t, d) for t, d, _ in styles.fetchall()] == [("forest", 1)]
    png = Image.open(folder / "preview.png")
    assert png.format == "PNG" and 640 <= png.width <= 1400


def test_model_version_is_a_stable_digest_of_config_and_checkpoint(forest, tmp_path):
    version = model_version(forest.model)
    assert len(version) == 12 and int(version, 16) >= 0
    assert model_version(load_workflow("forest").model) == version  # stable
    params = {**forest.model.params, "ndvi_min": 0.6}
    assert model_version(forest.model.model_copy(update={"params": params})) != version

    from pipeline.workflow import TorchGeoModelConfig

    a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    a.write_bytes(b"weights-1")
    b.write_bytes(b"weights-1")
    config = TorchGeoModelConfig(kind="torchgeo", checkpoint=str(a), bands=("red", "nir"))
    moved = config.model_copy(update={"checkpoint": str(b)})
    assert model_version(config) == model_version(moved)  # same bytes, another path
    b.write_bytes(b"weights-2")
    assert model_version(config) != model_version(moved)  # retrained


def test_failed_run_leaves_earlier_outputs_intact(synthetic_catalog, forest, tmp_path, monkeypatch):
    opts = RunOptions(out=tmp_path, workers=1, progress=False)
    good = run(forest, synthetic_catalog.scene("synth"), options=opts)
    before = {p.name: p.read_bytes() for p in good.folder.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("pipeline.orchestrate.polygons.merge_blocks", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        run(forest, synthetic_catalog.scene("synth"), options=opts)
    after = {p.name: p.read_bytes() for p in good.folder.iterdir() if p.is_file()}
    assert after == before  # same files, same bytes, no partial or scratch files left
    # What the failed run finished is kept, so running it again resumes instead of restarting.
    assert len(list((good.folder / ".work").glob("*/*.npy"))) == 1  # one 1024 block


def test_model_and_workers_config_builds(forest):
    model = build_model(forest.model)
    assert model.bands == ("red", "nir", "swir16") and not model.needs_before


def test_run_on_an_existing_scheduler(synthetic_catalog, forest, tmp_path):
    from distributed import LocalCluster

    (classes, _), _ = whole_scene_prediction(synthetic_catalog, forest, "synth")
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0"
    ) as cluster:
        res = run(
            forest.with_overrides(tile_size=32),
            synthetic_catalog.scene("synth"),
            options=RunOptions(out=tmp_path, scheduler=cluster.scheduler_address, progress=False),
        )
        # The run registered its model plugin on the cluster's worker and left the cluster up.
        assert cluster.scheduler_address
    with rasterio.open(res.folder / "classes.tif") as src:
        np.testing.assert_array_equal(src.read(1), classes)
    assert res.summary["execution"]["scheduler"] == cluster.scheduler_address
    assert res.summary["execution"]["workers"] == 1


def test_batched_blocks_match_single_blocks(synthetic_catalog, forest):
    model, scene, _, grid = plan(forest, synthetic_catalog.scene("synth"))
    from pipeline.grid import blocks

    tiles = blocks(grid, 24)  # 96x80: full 24x24 blocks and narrower ones on the right edge
    groups = consecutive_batches(sweep(tiles, 2), 3)
    assert sorted(b for g in groups for b in g) == sorted(tiles)
    assert all(len(g) <= 3 and len({(b.height, b.width) for b in g}) == 1 for g in groups)
    for group in groups:
        batched = process_blocks(model, scene, None, grid, group, 4)
        for block, (c, f) in zip(group, batched, strict=True):
            c1, f1 = process_block(model, scene, None, grid, block, 4)
            np.testing.assert_array_equal(c, c1)
            np.testing.assert_array_equal(f, f1)


def test_polygons_stream_from_the_cluster_block_by_block(tmp_path, monkeypatch):
    """The client gets each block's finished polygons as it arrives, and the joins last.

    Together they are exactly the in-memory result, holes filled across blocks included.
    """
    from distributed import Client, LocalCluster
    from scipy import ndimage

    from pipeline.bench.common import bench_grid
    from pipeline.orchestrate import RunOptions, vectorize_on_cluster
    from pipeline.vectorize import Cleanup, concat_polygons, vectorize

    rng = np.random.default_rng(4)
    field = ndimage.gaussian_filter(rng.normal(size=(300, 300)), 2.0)
    classes = np.digitize(field, np.quantile(field, [0.4, 0.7])).astype(np.uint8)
    conf = rng.integers(50, 101, size=classes.shape).astype(np.uint8)
    grid = bench_grid(300)
    paths = []
    for name, values in (("classes", classes), ("conf", conf)):
        path = tmp_path / f"{name}.tif"
        write_raster(path, values[None], grid.affine, "EPSG:32618", nodata=255)
        paths.append(str(path))
    monkeypatch.setattr("pipeline.orchestrate.polygons.VECTORIZE_BLOCK", 64)  # 25 blocks
    cleanup = Cleanup(sieve_pixels=5, fill_holes_m2=3000)
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster,
        Client(cluster) as client,
    ):
        stream = vectorize_on_cluster(
            client, *paths, grid, (1, 2), cleanup, RunOptions(progress=False)
        )
        # The tasks run from the call on, while the caller does other work (the COG copies).
        deadline = time.monotonic() + 60
        while _finished_tasks(client) < 25:
            assert time.monotonic() < deadline, "the vectorize tasks did not run before iteration"
            time.sleep(0.05)
        batches = list(stream)
    assert len(batches) == 26  # 25 blocks with polygons inside them, then the joins
    assert all(isinstance(b.geometry[0], bytes) for b in batches)  # WKB, as written
    got = concat_polygons(batches)
    # Most polygons reach the client before the joins, a block's worth at a time.
    assert sum(len(b) for b in batches[:-1]) > len(got) / 2
    assert max(len(b) for b in batches[:-1]) < len(got) / 10
    want = vectorize(classes, conf, grid, [1, 2], nodata=255, sieve_pixels=5, fill_holes_m2=3000)
    order = np.argsort(got.instance_id)
    np.testing.assert_array_equal(got.instance_id[order], want.instance_id)
    np.testing.assert_array_equal(got.pixels[order], want.pixels)
    np.testing.assert_allclose(got.area_m2[order], want.area_m2, rtol=1e-9)
    assert shapely.equals(shapely.from_wkb(got.geometry[order]), want.geometry).all()


def _finished_tasks(client) -> int:
    """Tasks the scheduler holds a result of."""

    def count(dask_scheduler) -> int:
        return sum(ts.state == "memory" for ts in dask_scheduler.tasks.values())

    return client.run_on_scheduler(count)


def test_local_cluster_workers_sample_quietly():
    """The local cluster's workers run without the statistical profiler and its siblings."""
    import dask

    from pipeline.orchestrate import QUIET_MONITORS

    def busy() -> float:
        end = time.perf_counter() + 0.3
        x = 0.0
        while time.perf_counter() < end:
            x += 1.0
        return x

    with dask_client(workers=1, scheduler=None) as client:
        settings = client.run(lambda: {k: dask.config.get(k) for k in QUIET_MONITORS})
        client.submit(busy, pure=False).result()
        time.sleep(1.2)  # a worker hands its samples over once a profile cycle (1 s) ends
        samples = client.profile()["count"]
    assert list(settings.values()) == [QUIET_MONITORS]
    assert samples == 0  # 0.3 s of Python work: 27 samples with Dask's defaults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice is per thread on Linux")
def test_lower_thread_priority_lowers_that_thread_only():
    """The COG copies yield the cores to the polygons; the rest of the client keeps its turn."""
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def lowered() -> tuple[int, int, int]:
        before = nice()
        lower_thread_priority(5)
        child: list[int] = []
        thread = threading.Thread(target=lambda: child.append(nice()))
        thread.start()
        thread.join()
        return before, nice(), child[0]

    main = nice()
    with ThreadPoolExecutor(1) as pool:
        before, after, child = pool.submit(lowered).result()
    assert after == min(before + 5, 19) and child == after  # threads it starts inherit it
    assert nice() == main


def _expected_instances(classes: np.ndarray, keep: list[int]) -> np.ndarray:
    """Each pixel of a kept class: 1 + the flat index of its region's first pixel (scipy)."""
    from scipy import ndimage

    out = np.zeros(classes.shape, dtype=np.int64)
    flat = np.arange(classes.size).reshape(classes.shape)
    for value in keep:
        regions, n = ndimage.label(classes == value)  # 4-connected, as GDAL polygonizes
        first = ndimage.minimum(flat, regions, index=np.arange(1, n + 1))
        ids = np.concatenate([[0], np.asarray(first, dtype=np.int64) + 1])
        out[regions > 0] = ids[regions[regions > 0]]
    return out


@pytest.mark.parametrize("min_area_m2", [0.0, 2000.0])
def test_instances_raster_holds_each_pixels_polygon_id(tmp_path, monkeypatch, min_area_m2):
    """instances.tif: every pixel of a polygon carries its instance_id, across block edges."""
    from distributed import Client, LocalCluster
    from scipy import ndimage

    from pipeline.bench.common import bench_grid
    from pipeline.orchestrate import labels_folder, vectorize_on_cluster
    from pipeline.publish import BlockRaster
    from pipeline.vectorize import Cleanup, concat_polygons, sieve

    rng = np.random.default_rng(7)
    field = ndimage.gaussian_filter(rng.normal(size=(200, 230)), 2.0)
    classes = np.digitize(field, np.quantile(field, [0.4, 0.7])).astype(np.uint8)
    classes[150:170, 20:60] = 255  # nodata: no instance there
    conf = rng.integers(50, 101, size=classes.shape).astype(np.uint8)
    grid = bench_grid(200)
    grid = type(grid)(grid.crs_wkt, grid.transform, width=230, height=200)
    paths = []
    for name, values in (("classes", classes), ("conf", conf)):
        path = tmp_path / f"{name}.tif"
        write_raster(path, values[None], grid.affine, "EPSG:32618", nodata=255)
        paths.append(str(path))
    monkeypatch.setattr("pipeline.orchestrate.polygons.VECTORIZE_BLOCK", 48)  # regions cross blocks
    cleanup = Cleanup(sieve_pixels=5, min_area_m2=min_area_m2, fill_holes_m2=3000)
    raster = BlockRaster(tmp_path / "instances.work.tif", grid, 0, dtype="uint32")
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster,
        Client(cluster) as client,
    ):
        batches = list(
            vectorize_on_cluster(
                client, *paths, grid, (1, 2), cleanup, RunOptions(progress=False), raster
            )
        )
    raster.close()
    assert not labels_folder(raster).exists()  # the block labels are cleaned up
    polys = concat_polygons(batches)
    with rasterio.open(raster.path) as src:
        got = src.read(1).astype(np.int64)
    want = _expected_instances(sieve(classes, 5, 255), [1, 2])
    dropped = ~np.isin(want, polys.instance_id) & (want > 0)
    assert dropped.any() == (min_area_m2 > 0)  # small polygons dropped, and their pixels
    want[dropped] = 0
    np.testing.assert_array_equal(got, want)
    # The instance view and the polygons agree: ids and pixels per polygon.
    ids, counts = np.unique(got[got > 0], return_counts=True)
    order = np.argsort(polys.instance_id)
    np.testing.assert_array_equal(ids, polys.instance_id[order])
    np.testing.assert_array_equal(counts, polys.pixels[order])


def test_run_writes_instances_on_request(synthetic_catalog, forest, tmp_path):
    res = run(
        forest.with_overrides(tile_size=32),
        synthetic_catalog.scene("synth"),
        options=RunOptions(out=tmp_path, workers=1, progress=False, instances=True),
    )
    assert (res.folder / "instances.tif") in res.files
    assert not [p for p in res.folder.iterdir() if p.name.startswith(".")]  # no scratch left
    with rasterio.open(res.folder / "instances.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.dtypes[0] == "uint32" and src.nodata == 0
        ids = np.unique(src.read(1))
    meta, _, _, fields = pyogrio.raw.read(
        res.folder / "polygons.gpkg", layer="forest", read_geometry=False
    )
    written = fields[list(meta["fields"]).index("instance_id")]
    assert len(written) > 0
    np.testing.assert_array_equal(ids[ids > 0], np.sort(written))


def test_run_writes_seams_where_overlapping_tiles_disagree(synthetic_catalog, tmp_path):
    """seams.tif from a real run equals comparing every tile's halo with its neighbours."""
    from pipeline.bench.model import bench_workflow, write_random_unet
    from pipeline.grid import blocks
    from pipeline.inference import predict_batch, read_tile
    from pipeline.stitch import disagreement, window_of

    # An untrained U-Net: its classes depend on context, so tiles disagree near their edges.
    ckpt = write_random_unet(tmp_path / "u.ckpt", ("red", "nir", "swir16"), seed=2)
    workflow = bench_workflow(str(ckpt), tile=32, halo=8)
    res = run(
        workflow,
        synthetic_catalog.scene("synth"),
        options=RunOptions(out=tmp_path / "out", workers=1, progress=False, seams=True),
    )
    assert (res.folder / "seams.tif") in res.files
    with rasterio.open(res.folder / "classes.tif") as src:
        classes = src.read(1)
    with rasterio.open(res.folder / "seams.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and src.nodata == NODATA
        seams = src.read(1)
    model, scene, _, grid = plan(workflow, synthetic_catalog.scene("synth"))
    want = np.zeros_like(classes)
    tiles = blocks(grid, 32)
    for c in tiles:
        data, valid, read, pad, _ = read_tile(model.bands, scene, None, grid, c, 8)
        prediction = window_of(predict_batch(model, data[None], valid[None])[0][0], read, pad)
        for b in tiles:
            final = classes[b.row_off : b.row_off + b.height, b.col_off : b.col_off + b.width]
            found = disagreement(prediction, read, final, b) if b != c else None
            if found is not None:
                part, mask = found
                window = (
                    slice(part.row_off, part.row_off + part.height),
                    slice(part.col_off, part.col_off + part.width),
                )
                want[window] |= mask.astype(np.uint8)
    want[classes == NODATA] = NODATA
    np.testing.assert_array_equal(seams, want)
    assert (seams == 1).sum() > 0


# --- clouds and shadows ---------------------------------------------------------------------


def _scl_catalog(tmp_path, codes_by_scene: dict[str, list[tuple[int, int, int, int, int]]]):
    """Synthetic forest scenes, each with an SCL band holding ``codes`` (see tests/data.py)."""
    from tests.data import quality_band

    entries = {}
    for seed, (scene_id, codes) in enumerate(codes_by_scene.items()):
        paths = forest_scene(tmp_path / scene_id, seed=seed)
        paths["scl"] = quality_band(tmp_path / scene_id / "scl.tif", 96, 80, codes)
        entries[scene_id] = {
            "assets": {k: str(v) for k, v in paths.items()},
            "scale": 0.0001,
            "sensor": "sentinel-2-l2a",
        }
    return load_catalog(catalog_yaml(tmp_path, entries))


def _masked(workflow: Workflow, **settings) -> Workflow:
    from pipeline.workflow import MaskConfig

    return workflow.model_copy(update={"mask": MaskConfig(**settings)})


def test_masked_pixels_keep_their_values_and_never_become_polygons(forest, tmp_path):
    from pipeline.masking import CLOUD, SHADOW

    # Cloud over the forest half and shadow over the crop half (20 m pixels of the SCL band).
    catalog = _scl_catalog(tmp_path, {"s": [(10, 20, 5, 12, 9), (30, 40, 25, 35, 3)]})
    opts = RunOptions(out=tmp_path / "out", workers=2, progress=False)
    plain = run(
        _masked(forest, method="none").with_overrides(tile_size=32),
        catalog.scene("s"),
        options=RunOptions(out=tmp_path / "plain", workers=1, progress=False),
    )
    masked = _masked(forest, buffer_m=0).with_overrides(tile_size=32)
    res = run(masked, catalog.scene("s"), options=opts)
    read = {}
    for folder in (plain.folder, res.folder):
        for name in ("classes", "confidence"):
            with rasterio.open(folder / f"{name}.tif") as src:
                read[folder, name] = src.read(1)
    classes, confidence = read[res.folder, "classes"], read[res.folder, "confidence"]
    cloud = np.zeros(classes.shape, dtype=bool)
    cloud[20:40, 9:23] = True
    shadow = np.zeros(classes.shape, dtype=bool)
    shadow[60:80, 49:69] = True
    assert (classes[cloud] == CLOUD).all() and (classes[shadow] == SHADOW).all()
    masked = cloud | shadow
    assert (confidence[masked] == NODATA).all()
    # Elsewhere the run is the unmasked run, pixel for pixel (the sieve does not move masks).
    np.testing.assert_array_equal(classes[~masked], read[plain.folder, "classes"][~masked])
    np.testing.assert_array_equal(confidence[~masked], read[plain.folder, "confidence"][~masked])
    with rasterio.open(res.folder / "classes.tif") as src:
        colours = src.colormap(1)
    assert colours[CLOUD][:3] == (0xC6, 0xDB, 0xEF) and colours[SHADOW][:3] == (0x52, 0x52, 0x52)

    _, _, geoms, _ = pyogrio.raw.read(res.folder / "polygons.gpkg", layer="forest")
    polys = shapely.union_all(shapely.from_wkb(geoms))
    x0, y0 = 435730.0, 4179460.0
    cloud_box = shapely.box(x0 + 90, y0 - 400, x0 + 230, y0 - 200)
    assert polys.intersection(cloud_box).area == 0
    assert polys.intersection(cloud_box.buffer(20)).area > 0  # forest right up to the cloud

    summary = json.loads((res.folder / "run.json").read_text())
    mask = summary["mask"]
    assert mask["scene"]["method"] == "quality" and mask["scene"]["bands"] == ["scl"]
    assert mask["before"] is None and mask["max_masked_fraction"] == 0.9
    with_data = int((classes != NODATA).sum())
    assert mask["masked_fraction"]["cloud"] == pytest.approx(cloud.sum() / with_data)
    assert mask["masked_fraction"]["cloud_shadow"] == pytest.approx(shadow.sum() / with_data)
    assert summary["counts"]["masked_pixels"] == {
        "cloud_shadow": int(shadow.sum()),
        "cloud": int(cloud.sum()),
    }


def test_two_date_runs_mask_what_is_cloudy_in_either_date(tmp_path):
    from pipeline.masking import CLOUD, SHADOW

    catalog = _scl_catalog(
        tmp_path, {"pre": [(10, 20, 5, 12, 9)], "post": [(10, 20, 8, 15, 3), (30, 40, 25, 35, 3)]}
    )
    mining = _masked(load_workflow("mining"), buffer_m=0).with_overrides(tile_size=40)
    res = run(
        mining,
        catalog.scene("post"),
        catalog.scene("pre"),
        RunOptions(out=tmp_path, workers=1, progress=False),
    )
    with rasterio.open(res.folder / "classes.tif") as src:
        classes = src.read(1)
    assert (classes[20:40, 9:23] == CLOUD).all()  # cloud before, over shadow after
    assert (classes[20:40, 23:29] == SHADOW).all()  # shadow after only
    assert (classes[60:80, 49:69] == SHADOW).all()
    mask = json.loads((res.folder / "run.json").read_text())["mask"]
    assert mask["scene"]["method"] == mask["before"]["method"] == "quality"


def test_a_mostly_masked_scene_stops_and_leaves_earlier_outputs(forest, tmp_path):
    from pipeline.errors import UnusableSceneError

    catalog = _scl_catalog(tmp_path, {"s": [(0, 49, 0, 41, 9)]})  # all of it cloud
    opts = RunOptions(out=tmp_path, workers=1, progress=False)
    earlier = run(_masked(forest, method="none"), catalog.scene("s"), options=opts)
    kept = {p.name: p.read_bytes() for p in earlier.folder.iterdir() if p.is_file()}
    with pytest.raises(UnusableSceneError) as info:
        run(forest, catalog.scene("s"), options=opts)
    message = str(info.value)
    assert "\n" not in message
    assert "scene 's': 100.0% of the pixels with data are masked (cloud 100.0%" in message
    assert "max_masked_fraction of 90%" in message and "no output was written" in message
    after = {p.name: p.read_bytes() for p in earlier.folder.iterdir() if p.is_file()}
    assert after == kept
    # Allowed everything, the same scene maps as all cloud.
    res = run(_masked(forest, max_masked_fraction=1.0), catalog.scene("s"), options=opts)
    assert (
        json.loads((res.folder / "run.json").read_text())["mask"]["masked_fraction"]["total"] == 1
    )


# --- scenes checked against the model -------------------------------------------------------


def test_values_that_are_not_reflectance_stop_with_the_fix(tmp_path):
    paths = {k: str(v) for k, v in forest_scene(tmp_path / "s").items()}
    cat = load_catalog(
        catalog_yaml(
            tmp_path,
            {
                "raw": {"assets": paths},  # digital numbers, no scale
                "tenfold": {"assets": paths, "scale": 0.001},
                "red-off": {"assets": paths, "scale": [0.0001, 0.01, 0.0001, 0.0001]},
                "ok": {"assets": paths, "scale": 0.0001},
            },
        )
    )
    forest = load_workflow("forest")
    message = str(pytest.raises(ModelError, plan, forest, cat.scene("raw")).value)
    assert "scene 'raw' band 'red'" in message and "outside -0.1..1.2" in message
    assert "look like digital numbers" in message and "`scale: 0.0001`" in message
    assert "one value per band" in message and "\n" not in message
    message = str(pytest.raises(ModelError, plan, forest, cat.scene("red-off")).value)
    assert "band 'red'" in message and "digital numbers" not in message
    # Ten times too large: red (0.3) would pass, NIR (2.7) does not.
    message = str(pytest.raises(ModelError, plan, forest, cat.scene("tenfold")).value)
    assert "band 'nir'" in message and "median 2.7" in message
    model = plan(forest, cat.scene("ok"))[0]
    assert set(model.calibration) == {"forest_mean", "forest_std"}
    np.testing.assert_allclose(model.calibration["forest_mean"], [0.031, 0.1], atol=0.002)


def test_a_pair_of_identical_scenes_is_refused(tmp_path):
    from pipeline.errors import UnusableSceneError

    paths = {k: str(v) for k, v in forest_scene(tmp_path / "s").items()}
    entry = {"assets": paths, "scale": 0.0001}
    cat = load_catalog(catalog_yaml(tmp_path, {"a": entry, "b": entry}))
    with pytest.raises(UnusableSceneError, match="identical scenes cannot show change"):
        plan(load_workflow("mining"), cat.scene("b"), cat.scene("a"))
