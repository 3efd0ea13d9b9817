from __future__ import annotations

import datetime as dt
import json
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.shutil
import shapely
from rasterio.crs import CRS

from pipeline.grid import Block, Grid, blocks
from pipeline.publish import (
    COPY_CACHE_BYTES,
    GPKG_VERSION,
    BlockCache,
    BlockRaster,
    PolygonWriter,
    Staging,
    category_style_qml,
    overview_factors,
    raster_style_qml,
    small_block_cache,
    write_attributes,
    write_bytes,
    write_json,
    write_layer_style,
    write_polygons,
)
from pipeline.workflow import ClassDef, load_workflow
from tests.data import ORIGIN, UTM18

NODATA = 255
COLORMAP = {0: (217, 217, 217, 255), 1: (27, 120, 55, 255), 2: (164, 31, 214, 255)}


def _grid(height: int, width: int, crs: str = UTM18) -> Grid:
    x0, y0 = ORIGIN
    return Grid(CRS.from_string(crs).to_wkt(), (10.0, 0.0, x0, 0.0, -10.0, y0), width, height)


def _listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --- Staging --------------------------------------------------------------------------------


def test_staging_names_are_hidden_and_temporary(tmp_path: Path) -> None:
    folder = tmp_path / "out" / "forest" / "scene"
    with Staging(folder) as staging:
        assert folder.is_dir()
        temps = {
            name: staging.path(name)
            for name in ("classes.tif", "polygons.gpkg", "run.json", "README")
        }
        scratch = staging.scratch("classes.work.tif")
        for name, temp in temps.items():
            assert temp.parent == folder
            assert temp.name.startswith(".")
            assert temp.name != name and temp != folder / name
        assert temps["classes.tif"].suffix == ".tif"
        assert temps["polygons.gpkg"].suffix == ".gpkg"
        assert scratch.parent == folder and scratch.name.startswith(".")
        assert len({*temps.values(), scratch}) == 5
    assert _listing(folder) == set()


def test_staging_commit_renames_all_and_deletes_scratch(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    contents = {"classes.tif": b"classes", "run.json": b"{}", "polygons.gpkg": b"gpkg"}
    with Staging(folder) as staging:
        for name, data in contents.items():
            staging.path(name).write_bytes(data)
        staging.scratch("work.tif").write_bytes(b"scratch")
        # Nothing is visible under its final name before the commit.
        assert not any((folder / name).exists() for name in contents)
        done = staging.commit()
    assert sorted(done) == sorted(folder / name for name in contents)
    assert _listing(folder) == set(contents)
    for name, data in contents.items():
        assert (folder / name).read_bytes() == data


def test_staging_commit_replaces_existing_outputs(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "run.json").write_text("old")
    with Staging(folder) as staging:
        staging.path("run.json").write_text("new")
        staging.commit()
    assert (folder / "run.json").read_text() == "new"
    assert _listing(folder) == {"run.json"}


def test_staging_failure_leaves_previous_outputs_intact(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    old = bytes(range(256)) * 4
    (folder / "classes.tif").write_bytes(old)
    (folder / "unrelated.txt").write_text("keep me")
    with pytest.raises(RuntimeError, match="model failed"), Staging(folder) as staging:
        staging.path("classes.tif").write_bytes(b"half-written")
        staging.path("run.json").write_text("{}")
        staging.scratch("work.tif").write_bytes(b"scratch")
        staging.path("polygons.gpkg")  # registered but never written
        raise RuntimeError("model failed")
    assert _listing(folder) == {"classes.tif", "unrelated.txt"}
    assert (folder / "classes.tif").read_bytes() == old
    assert (folder / "unrelated.txt").read_text() == "keep me"


def test_staging_without_commit_publishes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    with Staging(folder) as staging:
        staging.path("classes.tif").write_bytes(b"x")
        staging.scratch("work.tif").write_bytes(b"y")
    assert _listing(folder) == set()


def test_staging_removes_temporary_folders(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    with pytest.raises(ValueError), Staging(folder) as staging:
        temp = staging.path("tiles")
        temp.mkdir()
        (temp / "a.txt").write_text("a")
        raise ValueError("boom")
    assert _listing(folder) == set()


# --- BlockRaster ----------------------------------------------------------------------------


def _expected_blocks(grid: Grid, size: int) -> tuple[list[Block], np.ndarray]:
    expected = np.zeros((grid.height, grid.width), np.uint8)
    tiles = blocks(grid, size)
    for i, b in enumerate(tiles):
        expected[b.row_off : b.row_off + b.height, b.col_off : b.col_off + b.width] = i % 3
    expected[5, 7] = NODATA
    return tiles, expected


def test_block_raster_writes_blocks_to_their_windows(tmp_path: Path) -> None:
    grid = _grid(45, 70)
    tiles, expected = _expected_blocks(grid, 16)
    raster = BlockRaster(tmp_path / "work.tif", grid, NODATA, COLORMAP, description="class")
    for b in reversed(tiles):  # order must not matter
        rows = slice(b.row_off, b.row_off + b.height)
        cols = slice(b.col_off, b.col_off + b.width)
        raster.write(b, expected[rows, cols])
    raster.close()
    with rasterio.open(tmp_path / "work.tif") as src:
        np.testing.assert_array_equal(src.read(1), expected)
        assert src.nodata == NODATA
        assert src.dtypes == ("uint8",)
        assert src.crs == CRS.from_string(UTM18)
        assert src.transform == grid.affine
        assert src.descriptions == ("class",)


@pytest.mark.parametrize(("height", "width"), [(45, 70), (1100, 1200)])
def test_to_cog(tmp_path: Path, height: int, width: int) -> None:
    grid = _grid(height, width)
    tiles, expected = _expected_blocks(grid, 256)
    raster = BlockRaster(tmp_path / "work.tif", grid, NODATA, COLORMAP, description="class")
    for b in tiles:
        rows = slice(b.row_off, b.row_off + b.height)
        cols = slice(b.col_off, b.col_off + b.width)
        raster.write(b, expected[rows, cols])
    raster.to_cog(tmp_path / "classes.tif", "NEAREST")
    with rasterio.open(tmp_path / "classes.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.nodata == NODATA
        assert src.crs == CRS.from_string(UTM18)
        assert src.transform == grid.affine
        assert (src.width, src.height) == (width, height)
        cmap = src.colormap(1)
        for value, rgba in COLORMAP.items():
            assert cmap[value] == rgba
        np.testing.assert_array_equal(src.read(1), expected)
        if max(height, width) > 512:
            overviews = src.overviews(1)
            assert overviews and overviews[0] == 2
            assert src.block_shapes[0] == (512, 512)


@pytest.mark.parametrize("resampling", ["NEAREST", "AVERAGE"])
@pytest.mark.parametrize(("height", "width"), [(513, 300), (1100, 2100), (2048, 2048)])
def test_cog_overviews_are_the_cog_drivers_own(tmp_path, resampling, height, width) -> None:
    """Built in the working file, the overviews have the levels the COG driver gives when it
    makes them itself, and its values where the sizes agree (ours round up, not down, so an
    overview of an odd size is one pixel larger, on a slightly different pixel grid)."""
    grid = _grid(height, width)
    values = np.random.default_rng(height).integers(0, 101, (height, width)).astype(np.uint8)
    values[:7, :9] = NODATA
    raster = BlockRaster(tmp_path / "work.tif", grid, NODATA)
    raster.write(Block(0, 0, height, width), values)
    raster.close()
    rasterio.shutil.copy(
        tmp_path / "work.tif",
        tmp_path / "driver.tif",
        driver="COG",
        BLOCKSIZE=512,
        OVERVIEW_RESAMPLING=resampling,
    )
    raster = BlockRaster(tmp_path / "work.tif", grid, NODATA)
    raster.write(Block(0, 0, height, width), values)
    raster.to_cog(tmp_path / "ours.tif", resampling)
    with (
        rasterio.open(tmp_path / "driver.tif") as theirs,
        rasterio.open(tmp_path / "ours.tif") as ours,
    ):
        assert ours.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ours.overviews(1) == theirs.overviews(1) == overview_factors(width, height, 512)
        np.testing.assert_array_equal(ours.read(1), values)
    for level in range(len(overview_factors(width, height, 512))):
        with (
            rasterio.open(tmp_path / "driver.tif", overview_level=level) as theirs,
            rasterio.open(tmp_path / "ours.tif", overview_level=level) as ours,
        ):
            a, b = theirs.read(1), ours.read(1)
            assert b.shape[0] - a.shape[0] in (0, 1) and b.shape[1] - a.shape[1] in (0, 1)
            if a.shape == b.shape:
                np.testing.assert_array_equal(b, a)


def test_to_cog_without_colormap(tmp_path: Path) -> None:
    grid = _grid(20, 30)
    raster = BlockRaster(tmp_path / "work.tif", grid, NODATA, description="confidence %")
    values = np.arange(600, dtype=np.uint8).reshape(20, 30) % 101
    raster.write(Block(0, 0, 20, 30), values)
    raster.to_cog(tmp_path / "confidence.tif", "AVERAGE")
    with rasterio.open(tmp_path / "confidence.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.nodata == NODATA
        np.testing.assert_array_equal(src.read(1), values)
        with pytest.raises(ValueError):
            src.colormap(1)


def test_cog_copies_in_threads_share_a_small_block_cache_then_restore_it(tmp_path: Path) -> None:
    """Copies read each block once: while any runs, GDAL's cache is small; after, as it was."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from rasterio.env import get_gdal_config, set_gdal_config

    before = int(get_gdal_config("GDAL_CACHEMAX"))
    set_gdal_config("GDAL_CACHEMAX", 64 * 2**20)
    try:
        first_in, second_in = threading.Event(), threading.Event()
        seen: list[int] = []

        def copy(started: threading.Event, wait_for: threading.Event) -> None:
            with small_block_cache():
                started.set()
                wait_for.wait(5)
                seen.append(int(get_gdal_config("GDAL_CACHEMAX")))

        released = threading.Event()
        with ThreadPoolExecutor(2) as pool:
            one = pool.submit(copy, first_in, second_in)  # ends only once the other is in
            two = pool.submit(copy, second_in, released)
            one.result()
            seen.append(int(get_gdal_config("GDAL_CACHEMAX")))  # the second still copies
            released.set()
            two.result()
        assert seen == [COPY_CACHE_BYTES] * 3
        assert int(get_gdal_config("GDAL_CACHEMAX")) == 64 * 2**20

        grid = _grid(600, 700)
        raster = BlockRaster(tmp_path / "work.tif", grid, NODATA)
        raster.write(Block(0, 0, 600, 700), np.ones((600, 700), np.uint8))
        raster.to_cog(tmp_path / "out.tif", "NEAREST")
        assert int(get_gdal_config("GDAL_CACHEMAX")) == 64 * 2**20
    finally:
        set_gdal_config("GDAL_CACHEMAX", before)


# --- write_polygons -------------------------------------------------------------------------


def _fields(n: int) -> dict[str, np.ndarray]:
    names = np.array(["other", "forest"], dtype=object)
    cls = (np.arange(n) % 2).astype(np.int32)
    return {
        "instance_id": np.arange(1, n + 1, dtype=np.int64),
        "class": cls,
        "class_name": names[cls] if n else np.empty(0, dtype=object),
        "area_m2": np.arange(n, dtype=np.float64) * 100.5,
        "scene": np.full(n, "synth", dtype=object),
    }


def test_write_polygons(tmp_path: Path) -> None:
    x0, y0 = ORIGIN
    geometry = np.array(
        [shapely.box(x0 + 10 * i, y0 - 30, x0 + 10 * i + 10, y0 - 10 * (i % 2)) for i in range(5)],
        dtype=object,
    )
    geometry[2] = shapely.Polygon(
        [(x0, y0), (x0 + 50, y0), (x0 + 50, y0 - 50), (x0, y0 - 50)],
        [[(x0 + 10, y0 - 10), (x0 + 20, y0 - 10), (x0 + 20, y0 - 20), (x0 + 10, y0 - 20)]],
    )
    fields = _fields(5)
    path = tmp_path / "polygons.gpkg"
    write_polygons(path, "forest", geometry, fields, CRS.from_string(UTM18).to_wkt(), "demo")

    info = pyogrio.read_info(path, layer="forest")
    assert info["crs"] == "EPSG:32618"
    assert info["features"] == 5
    assert info["geometry_type"] == "Polygon"
    assert list(info["fields"]) == list(fields)
    assert info["layer_metadata"] == {"DESCRIPTION": "demo"}
    meta, _, wkb, values = pyogrio.raw.read(path, layer="forest")
    assert list(meta["fields"]) == list(fields)
    back = shapely.from_wkb(wkb)
    assert shapely.equals_exact(back, geometry, tolerance=0).all()
    for (name, expected), got in zip(fields.items(), values, strict=True):
        np.testing.assert_array_equal(got, expected, err_msg=name)
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("select name from sqlite_master")}
    assert "rtree_forest_geom" in tables


def test_polygon_writer_gathers_batches_into_fewer_writes(tmp_path: Path, monkeypatch) -> None:
    import pipeline.publish as publish

    x0, y0 = ORIGIN
    boxes = [shapely.box(x0 + 10 * i, y0 - 10, x0 + 10 * i + 10, y0) for i in range(40)]
    wkb = np.array(shapely.to_wkb(boxes), dtype=object)  # 93 bytes each
    writes: list[int] = []
    real_write = pyogrio.raw.write

    def counted(*args, **kwargs):
        writes.append(len(kwargs["geometry"]))
        return real_write(*args, **kwargs)

    monkeypatch.setattr(publish, "WRITE_BATCH_BYTES", 500)
    monkeypatch.setattr(pyogrio.raw, "write", counted)
    fields = _fields(40)
    path = tmp_path / "polygons.gpkg"
    writer = PolygonWriter(path, "forest", CRS.from_string(UTM18).to_wkt())
    # Batches of 1 to 4 polygons, an empty one, then one over the threshold (written alone).
    cuts = [0, 1, 3, 3, 7, 8, 10, 13, 14, 17, 19, 22, 26, 40]
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        writer.append(wkb[a:b], {k: v[a:b] for k, v in fields.items()})
    assert writer.count == 40
    writer.close()
    assert sum(writes) == 40 and writes[-1] == 14  # the large batch alone, last
    assert 1 < len(writes) < len(cuts) - 1  # gathered, yet never more than the threshold
    _, _, back, values = pyogrio.raw.read(path, layer="forest")
    assert list(back) == list(wkb)  # every polygon once, in the order appended
    for (name, expected), got in zip(fields.items(), values, strict=True):
        np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.mark.parametrize("staged", [False, True])
def test_polygon_layers_get_large_pages_and_only_staged_ones_skip_syncing(
    tmp_path: Path, monkeypatch, staged: bool
) -> None:
    x0, y0 = ORIGIN
    wkb = np.array(shapely.to_wkb([shapely.box(x0, y0 - 10, x0 + 10, y0)] * 3), dtype=object)
    settings: list[tuple[object, ...]] = []
    real_write = pyogrio.raw.write

    def watched(*args, **kwargs):
        options = ("OGR_SQLITE_PRAGMA", "OGR_SQLITE_SYNCHRONOUS")
        settings.append(tuple(pyogrio.get_gdal_config_option(o) for o in options))
        return real_write(*args, **kwargs)

    monkeypatch.setattr(pyogrio.raw, "write", watched)
    path = tmp_path / "polygons.gpkg"
    writer = PolygonWriter(path, "forest", CRS.from_string(UTM18).to_wkt(), staged=staged)
    writer.append(wkb, _fields(3))
    writer.close()
    # pyogrio reads GDAL's "OFF" back as False.
    assert settings[0] == ("page_size=65536", False if staged else None)
    # Set for the write only: GDAL's settings are as they were.
    assert pyogrio.get_gdal_config_option("OGR_SQLITE_PRAGMA") is None
    assert pyogrio.get_gdal_config_option("OGR_SQLITE_SYNCHRONOUS") is None
    with sqlite3.connect(path) as db:
        assert db.execute("pragma page_size").fetchone()[0] == 65536
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert list(pyogrio.raw.read(path, layer="forest")[2]) == list(wkb)


def test_write_polygons_empty(tmp_path: Path) -> None:
    path = tmp_path / "polygons.gpkg"
    fields = _fields(0)
    crs = CRS.from_epsg(4326).to_wkt()
    write_polygons(path, "fire", np.empty(0, dtype=object), fields, crs)
    info = pyogrio.read_info(path, layer="fire")
    assert info["features"] == 0
    assert info["crs"] == "EPSG:4326"
    assert info["geometry_type"] == "Polygon"
    assert list(info["fields"]) == list(fields)
    _, _, wkb, values = pyogrio.raw.read(path, layer="fire")
    assert len(wkb) == 0
    assert all(len(v) == 0 for v in values)


def test_write_polygons_through_staging(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    geometry = np.array([shapely.box(0, 0, 10, 10)], dtype=object)
    with Staging(folder) as staging:
        write_polygons(
            staging.path("polygons.gpkg"), "mining", geometry, _fields(1), _grid(2, 2).crs_wkt
        )
        staging.commit()
    assert _listing(folder) == {"polygons.gpkg"}
    assert pyogrio.read_info(folder / "polygons.gpkg", layer="mining")["features"] == 1


# --- GeoPackage for QGIS: version, styles, provenance -----------------------------------------


def _gpkg_version(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as db:
        return (
            db.execute("PRAGMA application_id").fetchone()[0],
            db.execute("PRAGMA user_version").fetchone()[0],
        )


def _contents(path: Path) -> dict[str, tuple[str, str]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("select table_name, data_type, description from gpkg_contents")
        return {name: (kind, desc) for name, kind, desc in rows}


def _fire_classes() -> list[ClassDef]:
    return [c for c in load_workflow("fire").classes if c.vectorize]


def _styled_gpkg(path: Path) -> Path:
    x0, y0 = ORIGIN
    geometry = np.array([shapely.box(x0 + 20 * i, y0 - 10, x0 + 20 * i + 10, y0) for i in range(4)])
    fields = {"class": np.array([3, 4, 5, 6], dtype=np.int32)}
    qml = category_style_qml("class", _fire_classes())
    crs = CRS.from_string(UTM18).to_wkt()
    write_polygons(path, "fire", geometry, fields, crs, "fire polygons", style_qml=qml)
    return path


def test_geopackage_version_is_one_qgis_322_reads(tmp_path: Path) -> None:
    # GDAL 3.6 (Debian 12's QGIS 3.22) reads 1.0–1.3 fully; 1.4, GDAL 3.12's default, partially.
    assert GPKG_VERSION == "1.2"
    path = _styled_gpkg(tmp_path / "polygons.gpkg")
    write_attributes(path, "runs", {"run_id": "r1"})
    assert _gpkg_version(path) == (0x47504B47, 10200)  # 'GPKG', 1.2.0
    # The spatial index and the layer description survive the version choice.
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("select name from sqlite_master")}
    assert "rtree_fire_geom" in tables
    assert _contents(path)["fire"] == ("features", "fire polygons")


def test_category_style_qml_has_one_category_per_class() -> None:
    classes = _fire_classes()
    qml = category_style_qml("class", classes)
    assert qml.startswith("<!DOCTYPE qgis")
    root = ET.fromstring(qml)
    assert root.tag == "qgis" and root.get("labelsEnabled") == "0"
    renderer = root.find("renderer-v2")
    assert renderer is not None
    assert renderer.get("type") == "categorizedSymbol" and renderer.get("attr") == "class"
    categories = renderer.findall("categories/category")
    assert [(c.get("value"), c.get("label")) for c in categories] == [
        (str(c.value), c.name) for c in classes
    ]
    symbols = {s.get("name"): s for s in renderer.findall("symbols/symbol")}
    for category, cls in zip(categories, classes, strict=True):
        symbol = symbols[category.get("symbol")]
        assert symbol.get("type") == "fill"
        layer = symbol.find("layer")
        assert layer is not None and layer.get("class") == "SimpleFill"
        rgba = f"{cls.rgb[0]},{cls.rgb[1]},{cls.rgb[2]},255"
        props = {p.get("k"): p.get("v") for p in layer.findall("prop")}
        options = {o.get("name"): o.get("value") for o in layer.findall("Option/Option")}
        assert props["color"] == options["color"] == rgba
        assert props["style"] == "solid"


def test_raster_style_qml_is_a_palette_of_named_classes() -> None:
    from pipeline.masking import MASK_CLASSES

    classes = (*_fire_classes(), *MASK_CLASSES)
    root = ET.fromstring(raster_style_qml(classes))
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "paletted"
    assert renderer.get("band") == "1"
    entries = renderer.findall("colorPalette/paletteEntry")
    assert [(e.get("value"), e.get("label"), e.get("color")) for e in entries] == [
        (str(c.value), c.name, c.colour) for c in classes
    ]
    assert entries[-1].get("label") == "cloud" and entries[-2].get("label") == "cloud_shadow"


def test_layer_style_is_stored_for_qgis(tmp_path: Path) -> None:
    path = _styled_gpkg(tmp_path / "polygons.gpkg")
    assert _contents(path)["layer_styles"][0] == "attributes"
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        columns = [r[1] for r in db.execute("PRAGMA table_info(layer_styles)")]
        rows = [dict(r) for r in db.execute("select * from layer_styles")]
    assert columns == [
        "id",
        "f_table_catalog",
        "f_table_schema",
        "f_table_name",
        "f_geometry_column",
        "styleName",
        "styleQML",
        "styleSLD",
        "useAsDefault",
        "description",
        "owner",
        "ui",
        "update_time",
    ]
    assert len(rows) == 1
    row = rows[0]
    # QGIS finds a layer's style by f_table_schema = '' (not NULL), table and geometry column.
    assert row["f_table_schema"] == "" and row["f_table_name"] == "fire"
    assert row["f_geometry_column"] == pyogrio.read_info(path, layer="fire")["geometry_name"]
    assert row["useAsDefault"] == 1
    assert row["styleName"] == "fire"
    assert row["styleQML"] == category_style_qml("class", _fire_classes())
    for c in _fire_classes():
        assert f"{c.rgb[0]},{c.rgb[1]},{c.rgb[2]},255" in row["styleQML"]
    assert dt.datetime.fromisoformat(row["update_time"]).year >= 2024


def test_a_second_polygon_layer_gets_its_own_style(tmp_path: Path) -> None:
    path = _styled_gpkg(tmp_path / "polygons.gpkg")
    geometry = np.array([shapely.box(0, 0, 10, 10)])
    crs = CRS.from_string(UTM18).to_wkt()
    write_polygons(path, "other", geometry, {"class": np.array([1], np.int32)}, crs)
    write_layer_style(path, "other", "<qgis/>", name="plain", description="test")
    with sqlite3.connect(path) as db:
        rows = db.execute("select id, f_table_name, styleName from layer_styles order by id")
        assert rows.fetchall() == [(1, "fire", "fire"), (2, "other", "plain")]
    assert _gpkg_version(path) == (0x47504B47, 10200)


def test_runs_table_holds_the_provenance(tmp_path: Path) -> None:
    path = _styled_gpkg(tmp_path / "polygons.gpkg")
    row = {
        "run_id": "20250101T000000Z-abcdef12",
        "created": "2025-01-01T00:00:00+00:00",
        "workflow": "fire",
        "before": None,
        "config": json.dumps({"workflow": {"name": "fire"}}),
    }
    write_attributes(path, "runs", row, description="provenance")
    assert _contents(path)["runs"] == ("attributes", "provenance")
    info = pyogrio.read_info(path, layer="runs")
    assert info["geometry_type"] is None and info["features"] == 1
    assert list(info["fields"]) == list(row)
    _, _, _, values = pyogrio.raw.read(path, layer="runs")
    assert {k: v[0] for k, v in zip(row, values, strict=True)} == row
    # A second row appends to the same table.
    write_attributes(path, "runs", {**row, "run_id": "second"})
    _, _, _, values = pyogrio.raw.read(path, layer="runs", columns=["run_id"])
    assert list(values[0]) == [row["run_id"], "second"]


def test_write_bytes(tmp_path: Path) -> None:
    path = tmp_path / "preview.png"
    write_bytes(path, b"\x89PNG\r\n")
    assert path.read_bytes() == b"\x89PNG\r\n"


# --- write_json -----------------------------------------------------------------------------


def test_write_json_round_trip(tmp_path: Path) -> None:
    data = {
        "run_id": "20240601T000000Z-abcdef12",
        "counts": {"forest": 12, "other": 3},
        "classes": [{"value": 0, "name": "other"}, {"value": 1, "name": "forest"}],
        "area_m2": 1234.5,
        "ok": True,
        "missing": None,
        "name": "forêt",
    }
    path = tmp_path / "run.json"
    write_json(path, data)
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert json.loads(text) == data
    assert "\n  " in text  # indented


def test_write_json_stringifies_other_values(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    write_json(path, {"acquired": dt.date(2024, 6, 1), "out": Path("/tmp/x")})
    assert json.loads(path.read_text()) == {"acquired": "2024-06-01", "out": "/tmp/x"}


def test_block_cache_round_trip_and_damaged_blocks(tmp_path: Path) -> None:
    cache = BlockCache(tmp_path / ".work", "key")
    block, other = Block(0, 0, 3, 4), Block(0, 4, 3, 2)
    classes = np.arange(12, dtype=np.uint8).reshape(3, 4)
    confidence = (classes * 7).astype(np.uint8)
    assert cache.get(block) is None
    cache.put(block, classes, confidence)
    got = cache.get(block)
    assert got is not None
    np.testing.assert_array_equal(got[0], classes)
    np.testing.assert_array_equal(got[1], confidence)
    assert [p.name for p in cache.folder.iterdir()] == [f"{block.key}.npy"]  # no temporaries
    # A file cut short, or one of another block's shape, is computed again, never used.
    path = cache.folder / f"{block.key}.npy"
    path.write_bytes(path.read_bytes()[:-5])
    assert cache.get(block) is None
    cache.put(other, classes[:, :2], confidence[:, :2])
    (cache.folder / f"{other.key}.npy").rename(path)
    assert cache.get(block) is None
    cache.clear()
    assert not (tmp_path / ".work").exists()


#: A stop that lands between the halves of the stderr capture around a GeoTIFF write: after
#: fd 2 was pointed at the capture, before the code that points it back.
_STOPPED_MID_CAPTURE = """
import os, sys
import pipeline.publish as publish

held = publish.libtiff_complaints()  # kept: collected, it would end the capture itself
held.__enter__()  # the capture, entered as a write enters it
print("written while captured", file=sys.stderr, flush=True)
publish._stderr_users = 0  # as if the stop hit just after the count went back down
{restore}
print("error: terminated (SIGTERM); no output was replaced", file=sys.stderr, flush=True)
"""


@pytest.mark.parametrize("restore", [False, True])
def test_a_stop_mid_capture_still_reports_on_stderr(restore: bool) -> None:
    from tests.helpers import run_python

    code = _STOPPED_MID_CAPTURE.format(restore="publish.restore_stderr()" if restore else "")
    done = run_python("-c", code)
    assert done.returncode == 0
    lines = done.stderr.splitlines()
    if restore:
        assert lines == [
            "written while captured",
            "error: terminated (SIGTERM); no output was replaced",
        ]
    else:  # what the stop's report met before: nothing reaches stderr
        assert lines == []
