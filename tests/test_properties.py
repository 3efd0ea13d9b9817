"""Property tests (hypothesis): tiling, halos, the polygon merge across blocks, and parsing.

Each property holds for every input hypothesis draws, not for a few chosen ones: every pixel of
a scene lies in exactly one block; a block's padded tile equals the same window of the whole
scene padded once; polygons made block by block equal the whole raster's; and a catalog or
workflow file either parses or gives one ``error:`` line. Under ``CI`` the draws are
derandomized so that a run is reproducible; elsewhere each run explores new inputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rasterio import features
from rasterio.crs import CRS

from pipeline.catalog import load_catalog
from pipeline.errors import GeosegError
from pipeline.grid import Block, Grid, Padding, blocks, tile_window
from pipeline.stitch import crop_block, pad_tile
from pipeline.vectorize import Polygons, vectorize
from pipeline.workflow import load_workflow
from tests.data import ORIGIN, UTM18

ROOT = Path(__file__).resolve().parents[1]
NODATA = 255

settings.register_profile(
    "geoseg",
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    database=None if os.environ.get("CI") else settings.default.database,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("geoseg")


def _grid(height: int, width: int) -> Grid:
    x0, y0 = ORIGIN
    return Grid(CRS.from_string(UTM18).to_wkt(), (10.0, 0.0, x0, 0.0, -10.0, y0), width, height)


# --- tiling -------------------------------------------------------------------------------

sizes = st.integers(1, 70)


@given(height=sizes, width=sizes, size=st.integers(1, 80))
@settings(max_examples=300)
def test_every_pixel_lies_in_exactly_one_block(height: int, width: int, size: int) -> None:
    grid = _grid(height, width)
    cover = np.zeros((height, width), dtype=np.int64)
    for b in blocks(grid, size):
        assert b.row_off >= 0 and b.col_off >= 0 and b.height >= 1 and b.width >= 1
        assert b.row_off + b.height <= height and b.col_off + b.width <= width
        assert b.height <= size and b.width <= size
        cover[b.row_off : b.row_off + b.height, b.col_off : b.col_off + b.width] += 1
    assert (cover == 1).all()


def _reference_tile(scene: np.ndarray, block: Block, halo: int) -> np.ndarray:
    """The whole scene reflect-padded by ``halo`` once, cut to ``block`` plus its halo."""
    padded = scene
    for axis in (1, 2):
        # numpy's reflect mirrors without repeating the edge; a 1-pixel axis can only repeat.
        mode = "reflect" if scene.shape[axis] > 1 else "edge"
        axis_widths = [(0, 0)] * 3
        axis_widths[axis] = (halo, halo)
        padded = np.pad(padded, axis_widths, mode=mode)
    return padded[
        :,
        block.row_off : block.row_off + block.height + 2 * halo,
        block.col_off : block.col_off + block.width + 2 * halo,
    ]


@given(
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    size=st.integers(1, 40),
    halo=st.integers(0, 50),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=300)
def test_halos_are_the_whole_scene_reflected_at_every_edge(
    height: int, width: int, size: int, halo: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    scene = rng.random((2, height, width), dtype=np.float32)
    grid = _grid(height, width)
    for block in blocks(grid, size):
        read, pad = tile_window(grid, block, halo)
        assert 0 <= read.row_off and read.row_off + read.height <= height
        assert 0 <= read.col_off and read.col_off + read.width <= width
        rows = slice(read.row_off, read.row_off + read.height)
        cols = slice(read.col_off, read.col_off + read.width)
        data, valid = pad_tile(scene[:, rows, cols], np.ones((read.height, read.width), bool), pad)
        np.testing.assert_array_equal(data, _reference_tile(scene, block, halo))
        assert valid.all()
        # The block cut back out of its tile is the block of the scene.
        got = crop_block(data, read, pad, block)
        want = scene[
            :,
            block.row_off : block.row_off + block.height,
            block.col_off : block.col_off + block.width,
        ]
        np.testing.assert_array_equal(got, want)
        assert pad == Padding(
            top=max(halo - block.row_off, 0),
            bottom=max(block.row_off + block.height + halo - height, 0),
            left=max(halo - block.col_off, 0),
            right=max(block.col_off + block.width + halo - width, 0),
        )


# --- polygons merged across blocks -------------------------------------------------------


@st.composite
def class_rasters(draw: st.DrawFn) -> np.ndarray:
    """Small rasters of classes 0-2 and nodata, from speckled noise to blocky shapes."""
    height = draw(st.integers(1, 36))
    width = draw(st.integers(1, 36))
    values = st.sampled_from([0, 1, 2, NODATA])
    raster: np.ndarray = draw(hnp.arrays(np.uint8, (height, width), elements=values))
    coarse = draw(st.integers(1, 6))
    if coarse > 1:
        # Upsampled noise gives regions larger than a pixel, which cross block edges.
        small = raster[: max(height // coarse, 1), : max(width // coarse, 1)]
        big = np.kron(small, np.ones((coarse, coarse), np.uint8))
        raster = np.pad(
            big,
            ((0, max(height - big.shape[0], 0)), (0, max(width - big.shape[1], 0))),
            mode="edge",
        )[:height, :width]
    return np.ascontiguousarray(raster)


def _rows(polys: Polygons) -> list[tuple[Any, ...]]:
    order = np.argsort(polys.instance_id, kind="stable")
    return [
        (
            int(polys.instance_id[i]),
            int(polys.class_value[i]),
            int(polys.pixels[i]),
            round(float(polys.area_m2[i]), 6),
            round(float(polys.perimeter_m[i]), 6),
            round(float(polys.confidence[i]), 9),
            int(polys.confidence_max[i]),
        )
        for i in order
    ]


@given(
    classes=class_rasters(),
    block=st.integers(1, 40),
    sieve=st.sampled_from([0, 2, 5]),
    keep=st.sets(st.sampled_from([0, 1, 2]), min_size=1),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=150)
def test_polygons_merged_across_blocks_equal_the_whole_rasters(
    classes: np.ndarray, block: int, sieve: int, keep: set[int], seed: int
) -> None:
    grid = _grid(*classes.shape)
    confidence = np.random.default_rng(seed).integers(40, 101, classes.shape).astype(np.uint8)
    kept = sorted(keep)
    whole = vectorize(classes, confidence, grid, kept, nodata=NODATA, sieve_pixels=sieve)
    blocked = vectorize(
        classes, confidence, grid, kept, nodata=NODATA, sieve_pixels=sieve, block_size=block
    )
    assert _rows(blocked) == _rows(whole)
    order_w = np.argsort(whole.instance_id, kind="stable")
    order_b = np.argsort(blocked.instance_id, kind="stable")
    for a, b in zip(whole.geometry[order_w], blocked.geometry[order_b], strict=True):
        assert shapely.is_valid(b)
        assert shapely.symmetric_difference(a, b).area <= 1e-6 * max(a.area, 1.0)
    if sieve == 0:
        _assert_matches_rasterio(classes, grid, kept, whole)


def _assert_matches_rasterio(
    classes: np.ndarray, grid: Grid, keep: list[int], polys: Polygons
) -> None:
    """Without a sieve, the polygons are rasterio's 4-connected shapes of the kept classes."""
    ref = []
    for value in keep:
        for geom, _ in features.shapes(
            classes, mask=classes == value, connectivity=4, transform=grid.affine
        ):
            ref.append((value, round(shapely.geometry.shape(geom).area, 6)))
    got = [
        (int(v), round(float(g.area), 6))
        for v, g in zip(polys.class_value, polys.geometry, strict=True)
    ]
    assert sorted(got) == sorted(ref)


# --- catalog and workflow parsing ---------------------------------------------------------

#: Values a hand-edited YAML file might hold where another was expected.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "red", "nir", "0.0001", "2015-07-11", "../x.tif", "{year}", "1e400"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a nest of dicts and lists, the empty path (the root) first."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, document: Any) -> Any:
    """``document`` with a few of its values replaced, keys dropped or unknown keys added."""
    doc = yaml.safe_load(yaml.safe_dump(document))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        if not path:
            doc = draw(values) if draw(st.integers(0, 9)) == 0 else doc
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "drop" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "drop":
            parent.pop(path[-1])
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
    return doc


def _one_line_or_parsed(load: Any, text: str, path: Path) -> Any:
    path.write_text(text, encoding="utf-8")
    try:
        return load(path)
    except GeosegError as exc:
        message = str(exc)
        assert message.strip() and "\n" not in message.strip(), message
        assert "Traceback" not in message
        return None


def _catalog_document(shared: Path) -> dict[str, Any]:
    fire = shared / "fire" / "HURST_20250107"
    return {
        "scenes": {
            "post": {
                "path": str(fire / "post.tif"),
                "bands": ["blue", "green", "red", "nir", "swir22"],
                "scale": 0.0001,
                "acquired": "2025-01-20",
                "series": "hurst",
                "sensor": "sentinel-2-l2a",
            },
            "pre": {
                "assets": {"red": str(fire / "pre.tif"), "nir": str(fire / "pre.tif")},
                "scale": [0.0001, 0.0001],
                "nodata": 0,
                "acquired": "2024-12-20",
                "series": "hurst",
            },
        },
        "stac": {"s": {"href": "stac/catalog.json", "datetime": "2015-07-01/2015-09-30"}},
    }


@given(data=st.data())
@settings(max_examples=200)
def test_any_catalog_parses_or_gives_one_error_line(
    data: st.DataObject, shared_data: Path, tmp_path: Path
) -> None:
    document = data.draw(mutated(_catalog_document(shared_data)))
    catalog = _one_line_or_parsed(load_catalog, yaml.safe_dump(document), tmp_path / "cat.yaml")
    if catalog is None:
        return
    # Scenes resolve lazily: asking for each must also parse or give one line.
    for ask, lookup in ((catalog.ids, catalog.scene), (catalog.series_names, catalog.series_ids)):
        try:
            names = list(ask())
        except GeosegError as exc:
            assert "\n" not in str(exc).strip()
            continue
        for name in names:
            try:
                lookup(name)
            except GeosegError as exc:
                assert str(exc).strip() and "\n" not in str(exc).strip()


@given(text=st.text(max_size=200))
@settings(max_examples=200)
def test_any_text_as_a_catalog_parses_or_gives_one_error_line(text: str, tmp_path: Path) -> None:
    _one_line_or_parsed(load_catalog, text, tmp_path / "cat.yaml")


@pytest.mark.parametrize("name", ["forest", "fire", "mining"])
@given(data=st.data())
@settings(max_examples=80)
def test_any_workflow_parses_or_gives_one_error_line(
    name: str, data: st.DataObject, tmp_path: Path
) -> None:
    shipped = yaml.safe_load((ROOT / "workflows" / f"{name}.yaml").read_text(encoding="utf-8"))
    document = data.draw(mutated(shipped))
    path = tmp_path / "flow.yaml"
    _one_line_or_parsed(lambda p: load_workflow(str(p)), yaml.safe_dump(document), path)


@given(text=st.text(max_size=200))
@settings(max_examples=200)
def test_any_text_as_a_workflow_parses_or_gives_one_error_line(text: str, tmp_path: Path) -> None:
    _one_line_or_parsed(lambda p: load_workflow(str(p)), text, tmp_path / "flow.yaml")
