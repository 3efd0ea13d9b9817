from __future__ import annotations

import numpy as np
import pytest
import shapely
from pyproj import Geod
from rasterio.crs import CRS
from scipy import ndimage

from pipeline.grid import Block, Grid, blocks, tile_window
from pipeline.vectorize import (
    Cleanup,
    Polygons,
    clean_window,
    label_regions,
    polygonize_block,
    sieve,
    sieve_halo,
    vectorize,
)
from tests.data import ORIGIN, UTM18
from tests.helpers import run_fresh

NODATA = 255
PIXEL_AREA = 100.0  # 10 m x 10 m
#: About 20 m of latitude; the fire scenes' pixel size in EPSG:4326.
DEG = 0.00017966


def _utm_grid(height: int, width: int) -> Grid:
    x0, y0 = ORIGIN
    return Grid(CRS.from_string(UTM18).to_wkt(), (10.0, 0.0, x0, 0.0, -10.0, y0), width, height)


def _geo_grid(height: int, width: int) -> Grid:
    return Grid(CRS.from_epsg(4326).to_wkt(), (DEG, 0.0, -118.45, 0.0, -DEG, 34.3), width, height)


def _centres(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    a, _, c, _, e, f = grid.transform
    cols, rows = np.meshgrid(np.arange(grid.width), np.arange(grid.height))
    return c + (cols + 0.5) * a, f + (rows + 0.5) * e


def _members(poly: shapely.Polygon, grid: Grid) -> np.ndarray:
    """Boolean [H, W]: pixels whose centre lies inside ``poly``."""
    x, y = _centres(grid)
    return shapely.contains_xy(poly, x, y)


def _conf(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(50, 101, size=shape).astype(np.uint8)


def _blobs(height: int, width: int, seed: int, k: int = 3) -> np.ndarray:
    """Blobby random classes 0..k-1 (smoothed noise), with a few nodata patches."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(height, width)), 1.5)
    edges = np.quantile(noise, np.linspace(0, 1, k + 1)[1:-1])
    classes = np.digitize(noise, edges).astype(np.uint8)
    classes[rng.random((height, width)) < 0.03] = NODATA
    classes[: height // 5, : width // 4] = NODATA
    return classes


def _check_consistent(polys: Polygons) -> None:
    n = len(polys)
    for arr in (polys.class_value, polys.pixels, polys.confidence, polys.area_m2):
        assert len(arr) == n
    assert polys.class_value.dtype == np.uint8
    assert polys.pixels.dtype == np.int64


def test_ring_with_hole() -> None:
    grid = _utm_grid(12, 12)
    classes = np.zeros((12, 12), np.uint8)
    classes[2:10, 2:10] = 1
    classes[4:8, 4:8] = 0
    ring_pixels = 8 * 8 - 4 * 4
    polys = vectorize(classes, _conf(classes.shape), grid, keep=[1])
    _check_consistent(polys)
    assert len(polys) == 1
    poly = polys.geometry[0]
    assert isinstance(poly, shapely.Polygon)
    assert len(poly.interiors) == 1
    assert shapely.is_valid(poly)
    assert poly.area == pytest.approx(ring_pixels * PIXEL_AREA)
    assert shapely.Polygon(poly.interiors[0]).area == pytest.approx(16 * PIXEL_AREA)
    assert polys.area_m2[0] == pytest.approx(ring_pixels * PIXEL_AREA)
    assert polys.pixels[0] == ring_pixels
    assert polys.class_value[0] == 1
    # Georeferenced on the pixel edges.
    x0, y0 = ORIGIN
    assert poly.bounds == pytest.approx((x0 + 20, y0 - 100, x0 + 100, y0 - 20))
    np.testing.assert_array_equal(_members(poly, grid), classes == 1)


def test_ring_with_island_in_hole() -> None:
    grid = _utm_grid(12, 12)
    classes = np.zeros((12, 12), np.uint8)
    classes[2:10, 2:10] = 1
    classes[4:8, 4:8] = 0
    classes[5:7, 5:7] = 1
    polys = vectorize(classes, _conf(classes.shape), grid, keep=[1])
    assert len(polys) == 2
    assert sorted(polys.pixels.tolist()) == [4, 48]
    assert sorted(len(p.interiors) for p in polys.geometry) == [0, 1]


def test_diagonal_neighbours_are_separate_polygons() -> None:
    grid = _utm_grid(6, 6)
    classes = np.zeros((6, 6), np.uint8)
    classes[1:3, 1:3] = 1
    classes[3:5, 3:5] = 1  # touches the first block only at a corner
    polys = vectorize(classes, _conf(classes.shape), grid, keep=[1])
    assert len(polys) == 2
    np.testing.assert_allclose(polys.area_m2, [4 * PIXEL_AREA] * 2)
    assert all(shapely.is_valid(polys.geometry))


def test_edge_neighbours_are_one_polygon() -> None:
    grid = _utm_grid(6, 6)
    classes = np.zeros((6, 6), np.uint8)
    classes[1:3, 1:3] = 1
    classes[3:5, 2:4] = 1  # shares an edge with the first block
    polys = vectorize(classes, _conf(classes.shape), grid, keep=[1])
    assert len(polys) == 1
    assert polys.pixels[0] == 8


@pytest.mark.parametrize("sieve", [0, 4])
def test_nodata_never_becomes_a_polygon(sieve: int) -> None:
    grid = _utm_grid(10, 10)
    classes = np.zeros((10, 10), np.uint8)
    classes[2:8, 2:8] = 1
    classes[4, 4] = NODATA  # one nodata pixel inside the kept region
    classes[:, 8:] = NODATA  # a nodata strip beside it
    classes[0, 0] = NODATA
    polys = vectorize(classes, _conf(classes.shape), grid, keep=[1], sieve_pixels=sieve)
    covered = np.zeros(classes.shape, bool)
    for poly in polys.geometry:
        covered |= _members(poly, grid)
    assert not covered[classes == NODATA].any()
    np.testing.assert_array_equal(covered, classes == 1)
    assert len(polys) == 1
    assert len(polys.geometry[0].interiors) == 1
    assert polys.area_m2.sum() == pytest.approx((classes == 1).sum() * PIXEL_AREA)


def test_nodata_in_keep_is_never_vectorized_as_data() -> None:
    grid = _utm_grid(5, 5)
    classes = np.full((5, 5), NODATA, np.uint8)
    polys = vectorize(classes, _conf(classes.shape), grid, keep=[0, 1])
    assert len(polys) == 0


def test_only_kept_classes() -> None:
    grid = _utm_grid(30, 40)
    classes = _blobs(30, 40, seed=1, k=4)
    keep = [1, 3]
    polys = vectorize(classes, _conf(classes.shape), grid, keep=keep)
    _check_consistent(polys)
    assert set(polys.class_value.tolist()) == set(keep)
    covered = np.zeros(classes.shape, bool)
    for poly, value in zip(polys.geometry, polys.class_value, strict=True):
        inside = _members(poly, grid)
        assert (classes[inside] == value).all()
        covered |= inside
    np.testing.assert_array_equal(covered, np.isin(classes, keep))


def test_polygon_confidence_is_mean_of_its_pixels() -> None:
    grid = _utm_grid(24, 20)
    classes = _blobs(24, 20, seed=2)
    confidence = _conf(classes.shape, seed=5)
    confidence[classes == NODATA] = NODATA
    polys = vectorize(classes, confidence, grid, keep=[0, 2])
    assert len(polys) > 3
    for i, poly in enumerate(polys.geometry):
        inside = _members(poly, grid)
        assert polys.pixels[i] == inside.sum()
        assert polys.confidence[i] == pytest.approx(confidence[inside].astype(float).mean())
        assert 0 <= polys.confidence[i] <= 100


def test_sieve_removes_small_specks() -> None:
    grid = _utm_grid(12, 12)
    classes = np.zeros((12, 12), np.uint8)
    classes[1, 1:3] = 1  # 2 pixels
    classes[5, 5:8] = 1  # 3 pixels
    classes[9:11, 9:11] = 2  # 4 pixels of another class
    cleaned = sieve(classes, 3, NODATA)
    expected = classes.copy()
    expected[1, 1:3] = 0
    np.testing.assert_array_equal(cleaned, expected)
    polys = vectorize(classes, _conf(classes.shape), grid, keep=[1, 2], sieve_pixels=3)
    assert sorted(polys.pixels.tolist()) == [3, 4]
    polys = vectorize(classes, _conf(classes.shape), grid, keep=[1, 2], sieve_pixels=4)
    assert polys.pixels.tolist() == [4]
    assert polys.class_value.tolist() == [2]


def test_sieve_merges_speck_into_surrounding_class() -> None:
    grid = _utm_grid(10, 10)
    classes = np.ones((10, 10), np.uint8)
    classes[0, :] = 0
    classes[4:6, 4] = 2  # a 2-pixel speck of class 2 inside class 1
    polys = vectorize(classes, _conf(classes.shape), grid, keep=[1, 2], sieve_pixels=4)
    assert len(polys) == 1
    assert polys.class_value[0] == 1
    assert polys.pixels[0] == 90
    assert len(polys.geometry[0].interiors) == 0


def test_speck_surrounded_by_nodata_is_kept() -> None:
    grid = _utm_grid(8, 8)
    classes = np.zeros((8, 8), np.uint8)
    classes[3:8, 3:8] = NODATA
    classes[5, 5] = 1  # alone in a sea of nodata
    cleaned = sieve(classes, 4, NODATA)
    np.testing.assert_array_equal(cleaned, classes)
    polys = vectorize(classes, _conf(classes.shape), grid, keep=[1], sieve_pixels=4)
    assert len(polys) == 1
    np.testing.assert_array_equal(_members(polys.geometry[0], grid), classes == 1)


def test_nodata_is_not_sieved_away() -> None:
    classes = np.ones((8, 8), np.uint8)
    classes[2, 2] = NODATA  # a 1-pixel nodata hole must stay nodata
    classes[5:7, 5] = NODATA
    cleaned = sieve(classes, 5, NODATA)
    np.testing.assert_array_equal(cleaned == NODATA, classes == NODATA)


def test_fixed_values_are_never_sieved_and_never_spread() -> None:
    cloud, shadow = 254, 253
    classes = np.zeros((8, 8), np.uint8)
    classes[0, 0] = cloud  # a 1-pixel cloud speck in class 0: stays cloud
    classes[3:8, 3:8] = shadow
    classes[5, 5] = 1  # a class speck inside the shadow: stays, as inside nodata
    classes[2, 6] = 1  # a speck on the shadow's edge: takes the valid neighbours' class
    cleaned = sieve(classes, 4, NODATA, fixed=(shadow, cloud))
    expected = classes.copy()
    expected[2, 6] = 0
    np.testing.assert_array_equal(cleaned, expected)
    # Without them fixed, the cloud speck would have become class 0.
    assert sieve(classes, 4, NODATA)[0, 0] == 0


@pytest.mark.parametrize("size", [0, 1])
def test_clean_classes_without_sieve_is_identity(size: int) -> None:
    classes = _blobs(15, 17, seed=3)
    before = classes.copy()
    out = sieve(classes, size, NODATA)
    np.testing.assert_array_equal(out, before)
    np.testing.assert_array_equal(classes, before)


def test_clean_classes_does_not_modify_its_input() -> None:
    classes = _blobs(15, 17, seed=4)
    before = classes.copy()
    out = sieve(classes, 6, NODATA)
    np.testing.assert_array_equal(classes, before)
    assert not np.array_equal(out, before)  # the sieve did something


def test_min_area_drops_small_polygons() -> None:
    grid = _utm_grid(12, 12)
    classes = np.zeros((12, 12), np.uint8)
    classes[1, 1:4] = 1  # 3 pixels, 300 m²
    classes[4, 1:6] = 1  # 5 pixels, 500 m²
    classes[7:10, 7:10] = 1  # 9 pixels, 900 m²
    conf = _conf(classes.shape)
    assert len(vectorize(classes, conf, grid, keep=[1])) == 3
    polys = vectorize(classes, conf, grid, keep=[1], min_area_m2=500)
    _check_consistent(polys)
    assert sorted(polys.area_m2.tolist()) == pytest.approx([500.0, 900.0])
    assert sorted(polys.pixels.tolist()) == [5, 9]
    for i, poly in enumerate(polys.geometry):
        inside = _members(poly, grid)
        assert polys.pixels[i] == inside.sum()
        assert polys.confidence[i] == pytest.approx(conf[inside].mean())
    assert len(vectorize(classes, conf, grid, keep=[1], min_area_m2=901)) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_geometries_valid_and_area_adds_up(seed: int) -> None:
    grid = _utm_grid(40, 50)
    classes = _blobs(40, 50, seed=seed)
    keep = [1, 2]
    polys = vectorize(classes, _conf(classes.shape), grid, keep=keep)
    _check_consistent(polys)
    assert shapely.is_valid(polys.geometry).all()
    kept = np.isin(classes, keep).sum()
    assert polys.area_m2.sum() == pytest.approx(kept * PIXEL_AREA)
    assert shapely.area(polys.geometry).sum() == pytest.approx(kept * PIXEL_AREA)
    assert polys.pixels.sum() == kept
    # No overlaps: the union is as large as the parts.
    assert shapely.union_all(polys.geometry).area == pytest.approx(kept * PIXEL_AREA)
    np.testing.assert_allclose(polys.area_m2, polys.pixels * PIXEL_AREA)


@pytest.mark.parametrize("seed", [0, 1])
def test_geometries_valid_on_noisy_raster(seed: int) -> None:
    grid = _utm_grid(30, 30)
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 3, size=(30, 30)).astype(np.uint8)
    classes[rng.random((30, 30)) < 0.1] = NODATA
    polys = vectorize(classes, _conf(classes.shape), grid, keep=[1])
    assert shapely.is_valid(polys.geometry).all()
    assert polys.pixels.sum() == (classes == 1).sum()
    assert polys.area_m2.sum() == pytest.approx((classes == 1).sum() * PIXEL_AREA)


def test_areas_in_geographic_crs_are_geodesic() -> None:
    grid = _geo_grid(40, 50)
    classes = _blobs(40, 50, seed=7)
    classes[20:35, 25:45] = 2
    classes[24:30, 30:38] = 0  # a hole
    polys = vectorize(classes, _conf(classes.shape), grid, keep=[1, 2])
    assert len(polys) > 2
    geod = Geod(ellps="WGS84")
    expected = np.array([abs(geod.geometry_area_perimeter(p)[0]) for p in polys.geometry])
    np.testing.assert_allclose(polys.area_m2, expected, rtol=5e-3)
    # One pixel here is about 16.5 m x 19.9 m, not the square degrees shapely would report.
    one = geod.geometry_area_perimeter(shapely.box(-118.45, 34.3 - DEG, -118.45 + DEG, 34.3))[0]
    assert 300 < abs(one) < 360
    np.testing.assert_allclose(polys.area_m2 / polys.pixels, abs(one), rtol=5e-3)


@pytest.mark.parametrize(("fill", "keep"), [(0, [1]), (NODATA, [0, 1]), (1, [])])
def test_empty_result(fill: int, keep: list[int]) -> None:
    grid = _utm_grid(6, 7)
    classes = np.full((6, 7), fill, np.uint8)
    polys = vectorize(classes, _conf(classes.shape), grid, keep=keep)
    assert len(polys) == 0
    _check_consistent(polys)
    assert polys.area_m2.dtype == np.float64


def test_label_regions_are_unique() -> None:
    classes = _blobs(30, 35, seed=11, k=4)
    classes[0:3, 0:3] = 0
    classes[0, 0] = classes[1, 1] = 1  # diagonal contact only: two regions
    keep = [1, 2]
    labels = label_regions(classes, keep)
    assert labels.dtype == np.int32
    kept = np.isin(classes, keep)
    np.testing.assert_array_equal(labels > 0, kept)
    ids = np.unique(labels[kept])
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    four = ndimage.generate_binary_structure(2, 1)
    for i in ids:
        region = labels == i
        # One class per label, and each label is one 4-connected piece.
        assert len(np.unique(classes[region])) == 1
        assert ndimage.label(region, structure=four)[1] == 1
    # Edge neighbours share a label exactly when they are of the same kept class.
    for a, b in ((np.s_[:, :-1], np.s_[:, 1:]), (np.s_[:-1, :], np.s_[1:, :])):
        both = kept[a] & kept[b]
        same_class = classes[a] == classes[b]
        np.testing.assert_array_equal((labels[a] == labels[b])[both], same_class[both])
    assert labels[0, 0] != labels[1, 1]


def test_label_regions_nothing_kept() -> None:
    labels = label_regions(np.zeros((4, 4), np.uint8), [1])
    assert labels.dtype == np.int32
    assert not labels.any()


# --- block-wise vectorizing equals whole-raster vectorizing ---------------------------------


def _spiral(n: int) -> np.ndarray:
    """A square spiral of class 1 on 0: one region that crosses every block many times."""
    a = np.zeros((n, n), dtype=np.uint8)
    top, left, bottom, right = 0, 0, n - 1, n - 1
    while top <= bottom and left <= right:
        a[top, left : right + 1] = 1
        a[top : bottom + 1, right] = 1
        if bottom - top >= 2:
            a[bottom, left + 2 : right + 1] = 1
        if right - left >= 4:
            a[top + 2 : bottom + 1, left + 2] = 1 if bottom - top >= 4 else a[top + 2, left + 2]
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
        a[top - 1, left - 1] = 0 if top - 1 > 0 else a[top - 1, left - 1]
    return a


def _test_raster(seed: int = 7) -> np.ndarray:
    """Spirals, rings with islands, diagonal touches, specks, nodata, three classes."""
    n = 150
    rng = np.random.default_rng(seed)
    a = _blobs(n, n, seed, k=3)
    a[10:70, 10:70] = _spiral(60)
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - 100, xx - 100)
    a[(r > 15) & (r < 30)] = 2  # a ring crossing block edges...
    a[r < 6] = 2  # ...with an island in its hole
    for i in range(0, 40, 2):  # a staircase of diagonal touches
        a[110 + i, 5 + i] = 1
        a[110 + i, 6 + i] = 0
    a[rng.random((n, n)) < 0.01] = 1  # specks for the sieve
    return a


def _reference(classes, confidence, grid, keep):
    """Independent whole-raster reference: rasterio's shapes over every kept class."""
    from rasterio import features

    out = []
    for value in keep:
        for geom, _ in features.shapes(
            classes, mask=classes == value, connectivity=4, transform=grid.affine
        ):
            out.append((value, shapely.geometry.shape(geom)))
    return out


@pytest.mark.parametrize("block", [7, 16, 33, 64, 150])
def test_blocks_give_the_whole_raster_result(block: int) -> None:
    classes = _test_raster()
    conf = _conf(classes.shape, 3)
    grid = _utm_grid(*classes.shape)
    ref = _reference(classes, conf, grid, [1, 2])
    got = vectorize(classes, conf, grid, [1, 2], nodata=NODATA, block_size=block)
    assert len(got) == len(ref)
    ref_areas = sorted((v, round(g.area, 6)) for v, g in ref)
    got_areas = sorted(
        (int(v), round(a, 6)) for v, a in zip(got.class_value, got.area_m2, strict=True)
    )
    assert got_areas == ref_areas
    # Each polygon is the same region: equal area and equal shape (symmetric difference empty).
    ref_geoms = shapely.STRtree([g for _, g in ref])
    for g, a in zip(got.geometry, got.area_m2, strict=True):
        hits = ref_geoms.query(g.representative_point(), predicate="intersects")
        match = [ref[i][1] for i in hits if abs(ref[i][1].area - a) <= 1e-9 * a]
        assert match and shapely.symmetric_difference(match[0], g).area <= 1e-9 * a
    assert shapely.is_valid(got.geometry).all()


def test_streamed_polygons_are_the_parsed_ones_whatever_the_wkb_chunk(monkeypatch) -> None:
    """WKB written in chunks or in parts (as a huge region is), areas from the coordinates:
    the same bytes, and the areas and perimeters of the parsed polygons exactly."""
    from pipeline import vectorize as vec

    classes = _test_raster()
    conf = _conf(classes.shape, 3)
    grid = _utm_grid(*classes.shape)
    parsed = vectorize(classes, conf, grid, [1, 2], nodata=NODATA, block_size=33)
    streamed = vectorize(classes, conf, grid, [1, 2], nodata=NODATA, block_size=33, as_wkb=True)
    monkeypatch.setattr(vec, "WKB_CHUNK_BYTES", 100)  # most polygons are larger: in parts
    parts = vectorize(classes, conf, grid, [1, 2], nodata=NODATA, block_size=33, as_wkb=True)
    assert (shapely.get_num_coordinates(parsed.geometry) * 16 > 100).sum() > 10
    assert list(parts.geometry) == list(streamed.geometry)
    assert list(streamed.geometry) == list(shapely.to_wkb(parsed.geometry))
    for got in (streamed, parts):
        np.testing.assert_array_equal(got.area_m2, shapely.area(parsed.geometry))
        np.testing.assert_array_equal(got.perimeter_m, shapely.length(parsed.geometry))
        np.testing.assert_array_equal(got.instance_id, parsed.instance_id)


@pytest.mark.parametrize("block", [9, 25, 64])
def test_sieve_and_ids_do_not_depend_on_block_size(block: int) -> None:
    classes = _test_raster(11)
    conf = _conf(classes.shape, 5)
    grid = _utm_grid(*classes.shape)
    whole = vectorize(classes, conf, grid, [0, 1, 2], nodata=NODATA, sieve_pixels=6)
    blocked = vectorize(
        classes, conf, grid, [0, 1, 2], nodata=NODATA, sieve_pixels=6, block_size=block
    )
    assert len(blocked) == len(whole)
    np.testing.assert_array_equal(blocked.instance_id, whole.instance_id)
    np.testing.assert_array_equal(blocked.class_value, whole.class_value)
    np.testing.assert_array_equal(blocked.pixels, whole.pixels)
    np.testing.assert_allclose(blocked.area_m2, whole.area_m2, rtol=1e-9)
    np.testing.assert_allclose(blocked.confidence, whole.confidence, rtol=1e-12)
    np.testing.assert_array_equal(blocked.confidence_max, whole.confidence_max)
    np.testing.assert_allclose(blocked.perimeter_m, whole.perimeter_m, rtol=1e-9)
    # No region smaller than the sieve remains (regions touching nodata only may stay).
    assert (whole.pixels >= 6).mean() > 0.95


def test_sieve_rule_majority_of_neighbours() -> None:
    a = np.zeros((7, 7), dtype=np.uint8)
    a[:, 4:] = 2
    a[3, 3] = 1  # speck: 3 neighbours of class 0, 1 of class 2
    a[0, 6] = 1  # corner speck: neighbours 2 and 2
    out = sieve(a, 2, NODATA)
    assert out[3, 3] == 0 and out[0, 6] == 2
    assert (out[a != 1] == a[a != 1]).all()


@pytest.mark.parametrize("block", [None, 8, 19])
def test_hole_filling_and_perimeter(block: int | None) -> None:
    # With blocks of 8 or 19 the ring crosses blocks while the islands in its holes lie
    # wholly inside one block: they are finished apart from the ring and must still count.
    classes = np.zeros((40, 40), dtype=np.uint8)
    classes[5:35, 5:35] = 1
    classes[10:12, 10:12] = 0  # 4 px hole = 400 m²: filled with fill_holes_m2=500
    classes[20:30, 20:30] = 0  # 100 px hole = 10000 m²: kept
    classes[24:26, 24:26] = 1  # an island in the big hole: its own polygon
    conf = _conf(classes.shape)
    grid = _utm_grid(40, 40)
    polys = vectorize(classes, conf, grid, [1], nodata=NODATA, fill_holes_m2=500, block_size=block)
    big = polys.geometry[np.argmax(polys.area_m2)]
    assert len(big.interiors) == 1 and big.area == pytest.approx((900 - 100) * 100)
    assert polys.perimeter_m[np.argmax(polys.area_m2)] == pytest.approx(4 * 300 + 4 * 100)
    # A small hole that holds another polygon is never filled (no overlaps).
    classes[11, 11] = 1
    classes[10, 10] = classes[10, 11] = classes[11, 10] = 0
    classes[10:13, 10:13] = 0
    classes[11, 11] = 1
    polys = vectorize(classes, conf, grid, [1], nodata=NODATA, fill_holes_m2=1e9, block_size=block)
    assert shapely.area(polys.geometry).sum() == pytest.approx((classes == 1).sum() * 100)


def test_simplify_keeps_shared_edges() -> None:
    classes = _blobs(80, 80, 3, k=3)
    classes[classes == NODATA] = 0
    conf = _conf(classes.shape)
    grid = _utm_grid(80, 80)
    polys = vectorize(classes, conf, grid, [0, 1, 2], nodata=NODATA, simplify_m=15)
    assert shapely.is_valid(polys.geometry).all()
    union = shapely.union_all(polys.geometry)
    # Still a coverage: no overlaps (areas add up to the union) and no gaps inside the grid.
    assert shapely.area(polys.geometry).sum() == pytest.approx(union.area, rel=1e-9)
    assert union.area == pytest.approx(80 * 80 * 100, rel=1e-9)
    assert (
        shapely.get_num_coordinates(polys.geometry).sum()
        < shapely.get_num_coordinates(
            vectorize(classes, conf, grid, [0, 1, 2], nodata=NODATA).geometry
        ).sum()
    )


# --- the per-block functions on their own -------------------------------------------------


@pytest.mark.parametrize(("size", "block"), [(3, 17), (6, 23), (9, 40)])
def test_sieve_of_a_block_with_its_halo_equals_the_whole_sieve(size: int, block: int) -> None:
    rng = np.random.default_rng(size)
    classes = _blobs(90, 110, seed=size, k=3)
    classes[rng.random(classes.shape) < 0.08] = rng.integers(0, 3)  # specks to sieve
    grid = _utm_grid(*classes.shape)
    cleanup = Cleanup(sieve_pixels=size)
    whole = sieve(classes, size, NODATA)
    assert (whole != classes).sum() > 50
    for b in blocks(grid, block):
        read, _ = tile_window(grid, b, sieve_halo(cleanup))
        window = classes[
            read.row_off : read.row_off + read.height, read.col_off : read.col_off + read.width
        ]
        np.testing.assert_array_equal(
            clean_window(window, read, b, cleanup, NODATA),
            whole[b.row_off : b.row_off + b.height, b.col_off : b.col_off + b.width],
        )


def test_sieve_takes_any_integer_dtype() -> None:
    classes = _blobs(30, 30, seed=8)
    out = sieve(classes.astype(np.int64), 5, NODATA)
    np.testing.assert_array_equal(out, sieve(classes, 5, NODATA))
    with pytest.raises(ValueError, match="0..255"):
        sieve(classes.astype(np.int64) + 300, 5, NODATA)


def test_polygonize_block_equals_gdal_and_bincount() -> None:
    classes = _test_raster(5)
    conf = _conf(classes.shape, 9)
    b = Block(40, 70, 60, 50)  # somewhere inside a larger grid
    part_classes = classes[40:100, 70:120]
    part_conf = conf[40:100, 70:120]
    keep = [2, 0, 1]
    got = polygonize_block(part_classes, part_conf, b, 1000, keep)
    labels = label_regions(part_classes, keep)
    n = int(labels.max())
    flat = labels.ravel()
    np.testing.assert_array_equal(got.label, np.arange(1, n + 1))
    np.testing.assert_array_equal(got.pixels, np.bincount(flat, minlength=n + 1)[1:])
    np.testing.assert_array_equal(
        got.conf_sum, np.bincount(flat, weights=part_conf.ravel(), minlength=n + 1)[1:]
    )
    _, first = np.unique(flat, return_index=True)
    np.testing.assert_array_equal(got.class_value, part_classes.ravel()[first[1:]])
    rows, cols = np.divmod(first[1:], b.width)
    np.testing.assert_array_equal(got.first_index, (rows + 40) * 1000 + cols + 70)
    np.testing.assert_array_equal(got.top, labels[0])
    np.testing.assert_array_equal(got.right, labels[:, -1])
    for name in ("class_value", "conf_max"):
        assert getattr(got, name).dtype == np.uint8
    for name in ("pixels", "conf_sum", "first_index", "ring_offsets", "poly_offsets"):
        assert getattr(got, name).dtype == np.int64
    # Vertex for vertex what rasterio gives for the same labels, in global pixel coordinates.
    from rasterio import features
    from rasterio.transform import Affine

    built = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, got.coords, (got.ring_offsets, got.poly_offsets)
    )
    assert len(built) == n and shapely.is_valid(built).all()
    shift = Affine.translation(70, 40)
    for geom, value in features.shapes(labels, mask=labels > 0, connectivity=4, transform=shift):
        ours = built[int(value) - 1]
        rings = [np.asarray(ours.exterior.coords)] + [np.asarray(r.coords) for r in ours.interiors]
        assert len(rings) == len(geom["coordinates"])
        for a, want in zip(rings, geom["coordinates"], strict=True):
            np.testing.assert_array_equal(a, np.asarray(want))


def test_polygonize_block_nothing_kept() -> None:
    classes = np.full((5, 6), 3, np.uint8)
    got = polygonize_block(classes, _conf(classes.shape), Block(0, 0, 5, 6), 6, [1])
    assert len(got.label) == len(got.pixels) == 0
    assert got.coords.shape == (0, 2)
    np.testing.assert_array_equal(got.ring_offsets, [0])
    np.testing.assert_array_equal(got.poly_offsets, [0])


_WARM_UP_CHECK = """
import json, sys
import numpy as np
import rasterio
from pipeline.grid import blocks
from pipeline.orchestrate.polygons import _vectorize_task
from pipeline.vectorize import Cleanup, merge_blocks, warm_up
from tests.helpers import loaded_kernels as loaded
from tests.test_vectorize import _blobs, _conf, _utm_grid

warm_up()
after_warm_up = loaded()
grid = _utm_grid(300, 260)
paths = []
for name, values in (("classes", _blobs(300, 260, seed=3)), ("confidence", _conf((300, 260)))):
    path = f"{sys.argv[1]}/{name}.tif"
    with rasterio.open(path, "w", driver="GTiff", width=260, height=300, count=1,
                       dtype="uint8", crs=grid.crs_wkt, transform=grid.affine) as dst:
        dst.write(values, 1)
    paths.append(path)
cleanup = Cleanup(sieve_pixels=8, fill_holes_m2=2000.0)
done = [_vectorize_task(*paths, grid, b, (1, 2), cleanup, sys.argv[1])[0]
        for b in blocks(grid, 128)]
joined = merge_blocks([d.pieces for d in done], grid, cleanup,
                      np.concatenate([d.occupants for d in done]), as_wkb=True)
print(json.dumps({"warm": after_warm_up, "run": loaded(), "joined": len(joined)}))
"""


def test_warm_up_loads_every_kernel_a_run_calls(tmp_path):
    # A fresh process: numba's loaded signatures are per process.
    result = run_fresh(_WARM_UP_CHECK, str(tmp_path))
    assert result["joined"] > 0, "the blocks must have regions to join"
    assert set(result["warm"]) >= {"label_regions", "sieve_regions", "trace_polygons"}
    assert set(result["warm"]) >= {"region_stats", "join_pieces", "polygon_wkb"}
    assert set(result["warm"]) >= {"polygon_measures", "polygon_wkb_part"}
    # The run loaded nothing the warm-up had not: no kernel is first called mid-run.
    assert result["run"] == result["warm"]
