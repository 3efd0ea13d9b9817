from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rasterio.io
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from pipeline.catalog import BandSource, Catalog, Scene, load_catalog
from pipeline.errors import SceneError
from pipeline.grid import Grid
from pipeline.reading import (
    check_compatible,
    file_sha256,
    read_band,
    read_band_overview,
    read_overview,
    read_window,
    read_window_into,
    scene_grid,
)
from tests.data import (
    ORIGIN,
    UTM18,
    catalog_yaml,
    coded_band,
    decode,
    forest_scene,
    write_raster,
)
from tests.helpers import user_error

# Integer metres, so the expected lookups below are exact integer arithmetic.
X0, Y0 = int(ORIGIN[0]), int(ORIGIN[1])
WKT = CRS.from_string(UTM18).to_wkt()

# A Sentinel-2-like layout, scaled down: 10 m at the origin, 20 m starting 10 m west, 60 m
# starting 10 m west and 20 m north (as in the demo scene). The 20 m band does not reach the
# last 10 m row (6 x 20 m = 120 m < 13 x 10 m); the 60 m band stops after 100 m.
H10, W10 = 13, 11
T10 = Affine(10, 0, X0, 0, -10, Y0)
COARSE = {
    # name: (origin x, origin y, resolution, height, width)
    "swir16": (X0 - 10, Y0, 20, 6, 6),
    "nir09": (X0 - 10, Y0 + 20, 60, 2, 2),
}


def _scene(paths: dict[str, Path], scene_id: str = "t", scale: float = 1.0, **kwargs: Any) -> Scene:
    bands = tuple(BandSource(n, str(p), scale=scale) for n, p in paths.items())
    return Scene(scene_id, bands, **kwargs)


def _error(fn, *args) -> str:
    return user_error(SceneError, fn, *args)


@pytest.fixture
def coded_scene(tmp_path: Path) -> Scene:
    paths = {"red": coded_band(tmp_path / "red.tif", T10, H10, W10)}
    for name, (ox, oy, res, h, w) in COARSE.items():
        paths[name] = coded_band(tmp_path / f"{name}.tif", Affine(res, 0, ox, 0, -res, oy), h, w)
    return _scene(paths)


def _containing_pixel(name: str, i: int, j: int) -> tuple[int, int] | None:
    """The (row, col) of band ``name``'s pixel containing the centre of 10 m pixel (i, j)."""
    cx, cy = X0 + 10 * j + 5, Y0 - 10 * i - 5
    ox, oy, res, h, w = COARSE[name]
    if not (ox <= cx < ox + res * w and oy - res * h < cy <= oy):
        return None
    return (oy - cy) // res, (cx - ox) // res


# --- (1) the half-pixel offset between resolutions ------------------------------------------


def test_expected_lookup_matches_hand_derived_indices():
    # Sanity check of the test's own geometry, worked out by hand: the 20 m grid starts 10 m
    # west, so 10 m columns 0, 1, 2, 3, 4 fall in 20 m columns 0, 1, 1, 2, 2.
    assert [_containing_pixel("swir16", 0, j)[1] for j in range(5)] == [0, 1, 1, 2, 2]
    assert [_containing_pixel("swir16", i, 0)[0] for i in range(4)] == [0, 0, 1, 1]
    assert _containing_pixel("swir16", 12, 0) is None
    # 60 m: x from 10 m west, y from 20 m north: centres 25..55 m below its top are row 0.
    assert [_containing_pixel("nir09", 0, j)[1] for j in (0, 4, 5, 10)] == [0, 0, 1, 1]
    assert [_containing_pixel("nir09", i, 0)[0] for i in (0, 3, 4, 9)] == [0, 0, 1, 1]
    assert _containing_pixel("nir09", 10, 0) is None


@pytest.mark.parametrize(
    "bands",
    [
        ("red", "swir16"),
        ("swir16", "red"),
        ("red", "nir09"),
        ("nir09", "swir16", "red"),
    ],
)
def test_each_10m_pixel_takes_the_coarse_pixel_containing_its_centre(
    coded_scene: Scene, bands: tuple[str, ...]
):
    grid = scene_grid(coded_scene, bands)
    assert grid == Grid(WKT, tuple(T10)[:6], W10, H10)

    data, valid = read_window(coded_scene, bands, grid, Window(0, 0, W10, H10))
    assert data.shape == (len(bands), H10, W10)
    assert data.dtype == np.float32
    assert valid.shape == (H10, W10) and valid.dtype == bool

    expected_valid = np.ones((H10, W10), dtype=bool)
    for i in range(H10):
        for j in range(W10):
            for name in bands:
                if name != "red" and _containing_pixel(name, i, j) is None:
                    expected_valid[i, j] = False
    assert (valid == expected_valid).all()
    assert valid.any() and not valid.all()

    for k, name in enumerate(bands):
        for i in range(H10):
            for j in range(W10):
                if not expected_valid[i, j]:
                    assert data[k, i, j] == 0
                    continue
                want = (i, j) if name == "red" else _containing_pixel(name, i, j)
                assert decode(data[k, i, j]) == want, (name, i, j)


def test_last_10m_row_outside_20m_band_is_invalid(coded_scene: Scene):
    grid = scene_grid(coded_scene, ("red", "swir16"))
    _, valid = read_window(coded_scene, ("red", "swir16"), grid, Window(0, H10 - 2, W10, 2))
    assert valid[0].all()
    assert not valid[1].any()


def test_interior_window_uses_the_same_lookup(coded_scene: Scene):
    bands = ("red", "swir16", "nir09")
    grid = scene_grid(coded_scene, bands)
    window = Window(col_off=3, row_off=2, width=5, height=6)
    data, valid = read_window(coded_scene, bands, grid, window)
    assert valid.all()
    for i in range(6):
        for j in range(5):
            row, col = 2 + i, 3 + j
            assert decode(data[0, i, j]) == (row, col)
            assert decode(data[1, i, j]) == _containing_pixel("swir16", row, col)
            assert decode(data[2, i, j]) == _containing_pixel("nir09", row, col)


def test_grid_of_coarse_band_alone_is_its_own_grid(coded_scene: Scene):
    ox, oy, res, h, w = COARSE["swir16"]
    grid = scene_grid(coded_scene, ("swir16",))
    assert grid == Grid(WKT, (res, 0.0, ox, 0.0, -res, oy), w, h)
    data, valid = read_window(coded_scene, ("swir16",), grid, Window(0, 0, w, h))
    assert valid.all()
    assert [[decode(v) for v in row] for row in data[0]] == [
        [(r, c) for c in range(w)] for r in range(h)
    ]


def test_same_resolution_bands_stack_onto_their_common_extent(tmp_path: Path):
    red = coded_band(tmp_path / "red.tif", T10, H10, W10)
    nir = coded_band(tmp_path / "nir.tif", Affine(10, 0, X0 + 20, 0, -10, Y0 - 30), H10, W10)
    scene = _scene({"red": red, "nir": nir})
    grid = scene_grid(scene, ("red", "nir"))
    # Overlap: red columns 2..10 and rows 3..12.
    assert grid == Grid(WKT, (10.0, 0.0, X0 + 20, 0.0, -10.0, Y0 - 30), W10 - 2, H10 - 3)
    data, valid = read_window(scene, ("red", "nir"), grid, Window(0, 0, grid.width, grid.height))
    assert valid.all()
    assert decode(data[0, 0, 0]) == (3, 2)
    assert decode(data[1, 0, 0]) == (0, 0)
    assert decode(data[0, -1, -1]) == (H10 - 1, W10 - 1)


def test_same_resolution_bands_that_do_not_overlap(tmp_path: Path):
    red = coded_band(tmp_path / "red.tif", T10, H10, W10)
    nir = coded_band(tmp_path / "nir.tif", Affine(10, 0, X0 + 10 * W10, 0, -10, Y0), H10, W10)
    message = _error(scene_grid, _scene({"red": red, "nir": nir}, "apart"), ("red", "nir"))
    assert "'apart'" in message
    assert "do not overlap" in message


# --- (2) the real demo scene ----------------------------------------------------------------

DEMO_X0, DEMO_Y0 = 435730, 4179460
DEMO_W, DEMO_H = 1933, 1947


@pytest.fixture(scope="module")
def demo_scene(project_catalog: Catalog) -> Scene:
    return project_catalog.scene("s2-virginia")


def test_demo_grid_is_the_10m_grid(demo_scene: Scene):
    grid = scene_grid(demo_scene, ("red", "nir", "swir16"))
    assert (grid.width, grid.height) == (DEMO_W, DEMO_H)
    assert grid.transform == (10.0, 0.0, DEMO_X0, 0.0, -10.0, DEMO_Y0)
    assert CRS.from_wkt(grid.crs_wkt).to_epsg() == 32618


def test_demo_bottom_row_is_not_covered_by_20m_bands(demo_scene: Scene):
    bands = ("red", "swir16")
    grid = scene_grid(demo_scene, bands)
    window = Window(col_off=100, row_off=DEMO_H - 4, width=6, height=4)
    data, valid = read_window(demo_scene, bands, grid, window)

    # The last 10 m row: its centre lies below the 20 m band's bottom edge.
    with rasterio.open(demo_scene.band("swir16").path) as src:
        assert src.res == (20.0, 20.0)
        assert src.bounds.bottom > DEMO_Y0 - 10 * DEMO_H + 5
        assert src.bounds.bottom < DEMO_Y0 - 10 * (DEMO_H - 1) + 5
        swir_raw = src.read(1)
        st = src.transform
    with rasterio.open(demo_scene.band("red").path) as src:
        red_raw = src.read(1, window=window)

    assert not valid[-1].any()
    assert (data[:, -1] == 0).all()

    # Rows above: valid wherever both bands hold a non-zero value (the catalog's nodata is 0).
    expected = np.zeros((3, 6), dtype=bool)
    swir = np.zeros((3, 6))
    for i in range(3):
        for j in range(6):
            cx = DEMO_X0 + 10 * (100 + j) + 5
            cy = DEMO_Y0 - 10 * (DEMO_H - 4 + i) - 5
            r, c = int((st.f - cy) // 20), int((cx - st.c) // 20)
            swir[i, j] = swir_raw[r, c]
            expected[i, j] = red_raw[i, j] != 0 and swir_raw[r, c] != 0
    assert expected.any()
    assert (valid[:-1] == expected).all()
    np.testing.assert_allclose(data[0, :-1][expected], red_raw[:3][expected] * 1e-4, rtol=1e-6)
    np.testing.assert_allclose(data[1, :-1][expected], swir[expected] * 1e-4, rtol=1e-6)


def test_demo_60m_band_offset_in_y(demo_scene: Scene):
    with rasterio.open(demo_scene.band("coastal").path) as src:
        t60, h60, w60 = src.transform, src.height, src.width
    assert (t60.a, t60.c, t60.f) == (60.0, DEMO_X0 - 10, DEMO_Y0 + 20)

    bands = ("red", "coastal")
    grid = scene_grid(demo_scene, bands)
    window = Window(col_off=DEMO_W - 8, row_off=DEMO_H - 7, width=8, height=7)
    _, valid = read_window(demo_scene, bands, grid, window)
    for i in range(7):
        for j in range(8):
            cx = DEMO_X0 + 10 * (DEMO_W - 8 + j) + 5
            cy = DEMO_Y0 - 10 * (DEMO_H - 7 + i) - 5
            inside = t60.c <= cx < t60.c + 60 * w60 and t60.f - 60 * h60 < cy <= t60.f
            if not inside:
                assert not valid[i, j], (i, j)
    assert valid.any() and not valid.all()


# --- (3) nodata, NaN -------------------------------------------------------------------------


def _small(tmp_path: Path, name: str, array: np.ndarray, nodata=None) -> Path:
    return write_raster(tmp_path / f"{name}.tif", array, T10, nodata=nodata)


def _read_all(scene: Scene, bands: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    grid = scene_grid(scene, bands)
    return read_window(scene, bands, grid, Window(0, 0, grid.width, grid.height))


def test_file_nodata_marks_pixels_invalid(tmp_path: Path):
    red = np.arange(1, 21, dtype=np.uint16).reshape(4, 5)
    red[1, 2] = red[3, 0] = 0
    nir = np.full((4, 5), 9, dtype=np.uint16)
    nir[0, 4] = 65535
    scene = _scene(
        {"red": _small(tmp_path, "red", red, nodata=0), "nir": _small(tmp_path, "nir", nir, 65535)}
    )
    data, valid = _read_all(scene, ("red", "nir"))
    expected = (red != 0) & (nir != 65535)
    assert (valid == expected).all()
    assert (data[:, ~expected] == 0).all()  # invalid in one band is 0 in every band
    assert (data[0][expected] == red[expected]).all()
    assert (data[1][expected] == 9).all()


def test_catalog_nodata_overrides_file_nodata(tmp_path: Path):
    red = np.arange(20, dtype=np.uint16).reshape(4, 5)  # holds a 0 at (0, 0)
    red[2, 2] = 7
    _small(tmp_path, "red", red, nodata=0)
    path = catalog_yaml(tmp_path, {"s": {"assets": {"red": "red.tif"}, "nodata": 7}})
    scene = load_catalog(path).scene("s")
    assert scene.nodata == 7
    data, valid = _read_all(scene, ("red",))
    expected = red != 7
    assert (valid == expected).all()
    assert valid[0, 0]  # the file's own nodata no longer applies
    assert (data[0][expected] == red[expected]).all()
    assert data[0, 2, 2] == 0


def test_catalog_nodata_without_file_nodata(tmp_path: Path):
    red = np.ones((3, 3), dtype=np.uint8)
    red[0, 1] = 255
    scene = _scene({"red": _small(tmp_path, "red", red)}, nodata=255)
    _, valid = _read_all(scene, ("red",))
    assert (valid == (red != 255)).all()


def test_nan_in_float_data_is_invalid(tmp_path: Path):
    red = np.linspace(0.0, 1.0, 20, dtype=np.float32).reshape(4, 5)
    red[1, 1] = np.nan
    red[2, 3] = np.inf
    scene = _scene({"red": _small(tmp_path, "red", red)})
    data, valid = _read_all(scene, ("red",))
    expected = np.isfinite(red)
    assert (valid == expected).all()
    assert np.isfinite(data).all()
    assert data[0, 1, 1] == 0 and data[0, 2, 3] == 0
    assert (data[0][expected] == red[expected]).all()
    assert valid[0, 0] and data[0, 0, 0] == 0.0  # a real 0.0 stays valid


def test_float_nodata_value_and_nan_nodata(tmp_path: Path):
    red = np.full((3, 4), 0.25, dtype=np.float32)
    red[0, 0] = -9999.0
    red[1, 1] = np.nan
    nir = np.full((3, 4), 0.5, dtype=np.float32)
    nir[2, 3] = np.nan
    scene = _scene(
        {
            "red": _small(tmp_path, "red", red, nodata=-9999.0),
            "nir": _small(tmp_path, "nir", nir, nodata=float("nan")),
        }
    )
    data, valid = _read_all(scene, ("red", "nir"))
    expected = np.ones((3, 4), dtype=bool)
    expected[0, 0] = expected[1, 1] = expected[2, 3] = False
    assert (valid == expected).all()
    assert (data[:, ~expected] == 0).all()
    assert np.isfinite(data).all()


def test_nodata_in_coarse_band_spreads_to_the_10m_pixels_it_covers(tmp_path: Path):
    red = np.full((4, 6), 5, dtype=np.uint16)
    swir = np.full((2, 4), 6, dtype=np.uint16)  # 20 m from 10 m west: covers all 10 m pixels
    swir[1, 2] = 0
    scene = _scene(
        {
            "red": _small(tmp_path, "red", red, nodata=0),
            "swir16": write_raster(
                tmp_path / "swir16.tif", swir, Affine(20, 0, X0 - 10, 0, -20, Y0), nodata=0
            ),
        }
    )
    _, valid = _read_all(scene, ("red", "swir16"))
    expected = np.ones((4, 6), dtype=bool)
    for i in range(4):
        for j in range(6):
            cx, cy = X0 + 10 * j + 5, Y0 - 10 * i - 5
            if ((Y0 - cy) // 20, (cx - (X0 - 10)) // 20) == (1, 2):
                expected[i, j] = False
    assert (~expected).sum() == 4
    assert (valid == expected).all()


# --- (4) scale and offset -------------------------------------------------------------------


def test_scale_and_offset_applied(tmp_path: Path):
    raw = (np.arange(30, dtype=np.uint16).reshape(5, 6) * 100) + 1
    raw[4, 5] = 0
    _small(tmp_path, "red", raw, nodata=0)
    path = catalog_yaml(
        tmp_path, {"s": {"assets": {"red": "red.tif"}, "scale": 0.0001, "offset": -0.1}}
    )
    scene = load_catalog(path).scene("s")
    data, valid = _read_all(scene, ("red",))
    expected = raw.astype(np.float64) * 0.0001 - 0.1
    ok = raw != 0
    assert (valid == ok).all()
    np.testing.assert_allclose(data[0][ok], expected[ok], rtol=1e-6, atol=1e-7)
    assert data[0, 4, 5] == 0  # invalid is 0, not the offset


def test_scale_applies_to_every_band_of_a_multiband_file(tmp_path: Path):
    stack = np.stack([np.full((3, 3), v, dtype=np.int16) for v in (10, 20, 30)])
    write_raster(tmp_path / "stack.tif", stack, T10)
    path = catalog_yaml(
        tmp_path,
        {"s": {"path": "stack.tif", "bands": ["blue", "green", "red"], "scale": 0.5, "offset": 1}},
    )
    scene = load_catalog(path).scene("s")
    data, valid = _read_all(scene, ("red", "blue"))
    assert valid.all()
    assert (data[0] == 30 * 0.5 + 1).all()
    assert (data[1] == 10 * 0.5 + 1).all()


def test_per_band_scale_and_offset_lists(tmp_path: Path):
    stack = np.stack([np.full((3, 3), v, dtype=np.uint8) for v in (10, 20, 30)])
    write_raster(tmp_path / "stack.tif", stack, T10)
    entry = {"path": "stack.tif", "bands": ["swir16", "nir", "red"]}
    entry |= {"scale": [0.002, 0.004, 0.001], "offset": [-0.01, 0.0, 0.005]}
    scene = load_catalog(catalog_yaml(tmp_path, {"s": entry})).scene("s")
    data, valid = _read_all(scene, ("red", "swir16", "nir"))
    assert valid.all()
    expected = [30 * 0.001 + 0.005, 10 * 0.002 - 0.01, 20 * 0.004]
    np.testing.assert_allclose(data[:, 0, 0], expected, rtol=1e-6)


# --- (5) windowed reads ---------------------------------------------------------------------


@pytest.fixture
def forest(tmp_path: Path) -> Scene:
    paths = forest_scene(tmp_path / "forest", height=96, width=80)
    return _scene(paths, "forest", scale=0.0001)


@pytest.mark.parametrize(
    "window",
    [
        Window(0, 0, 7, 5),  # top-left, in the nodata strip
        Window(13, 17, 20, 9),
        Window(1, 3, 16, 16),  # odd offsets: halves of 20 m pixels
        Window(60, 88, 20, 8),  # bottom-right corner
        Window(79, 95, 1, 1),  # last pixel
        Window(0, 0, 80, 96),  # everything
    ],
)
def test_windowed_read_equals_slice_of_full_read(forest: Scene, window: Window):
    bands = ("red", "nir", "swir16")
    grid = scene_grid(forest, bands)
    assert (grid.width, grid.height) == (80, 96)
    full_data, full_valid = read_window(forest, bands, grid, Window(0, 0, 80, 96))
    data, valid = read_window(forest, bands, grid, window)
    rows, cols = window.toslices()
    assert np.array_equal(valid, full_valid[rows, cols])
    assert np.array_equal(data, full_data[:, rows, cols])


@pytest.mark.parametrize("at", [(0, 0, 0), (2, 5, 3), (1, 0, 7)])
def test_read_into_a_buffer_fills_only_its_part(forest: Scene, at: tuple[int, int, int]):
    bands = ("red", "nir", "swir16")
    grid = scene_grid(forest, bands)
    window = Window(1, 2, 30, 20)  # in the nodata strip, and on halves of 20 m pixels
    expected, expected_valid = read_window(forest, bands, grid, window)
    data = np.full((6, 30, 40), -1.0, np.float32)
    valid = np.zeros((30, 40), bool)
    valid[-1, -1] = True  # outside the window: left as it was
    read_window_into(forest, bands, grid, window, data, valid, at)
    b, r, c = at
    np.testing.assert_array_equal(data[b : b + 3, r : r + 20, c : c + 30], expected)
    np.testing.assert_array_equal(valid[r : r + 20, c : c + 30], expected_valid)
    assert not expected_valid.all() and expected_valid.any()
    outside = np.ones(data.shape, bool)
    outside[b : b + 3, r : r + 20, c : c + 30] = False
    assert (data[outside] == -1.0).all()
    assert valid.sum() == expected_valid.sum() + 1


def test_read_into_rejects_a_buffer_it_cannot_fill(forest: Scene):
    bands = ("red", "nir")
    grid = scene_grid(forest, bands)
    window = Window(0, 0, 8, 8)
    valid = np.ones((8, 8), bool)
    for data, mask in [
        (np.zeros((2, 8, 8), np.float64), valid),  # not float32
        (np.zeros((2, 8, 16), np.float32)[:, :, ::2], valid),  # a strided view
        (np.zeros((2, 8, 8), np.float32), np.ones((8, 9), bool)),  # mask of another shape
        (np.zeros((2, 8, 8), np.float32), np.ones((8, 8), np.uint8)),  # mask not bool
    ]:
        with pytest.raises(ValueError, match="C-contiguous"):
            read_window_into(forest, bands, grid, window, data, mask)
    data = np.zeros((3, 10, 10), np.float32)
    before = data.copy()
    for at in [(2, 0, 0), (0, 3, 0), (0, 0, 3), (-1, 0, 0), (0, -1, 1)]:  # past an edge
        with pytest.raises(ValueError, match="do not fit"):
            read_window_into(forest, bands, grid, window, data, np.ones((10, 10), bool), at)
    np.testing.assert_array_equal(data, before)


def test_full_read_matches_the_files(forest: Scene):
    bands = ("red", "swir16")
    grid = scene_grid(forest, bands)
    data, valid = read_window(forest, bands, grid, Window(0, 0, grid.width, grid.height))
    with rasterio.open(forest.band("red").path) as src:
        red = src.read(1)
    assert not valid[:4].any()  # the generator's nodata strip
    np.testing.assert_allclose(data[0][valid], red[valid] * 1e-4, rtol=1e-6)


def test_read_never_reads_more_than_the_window_needs(forest: Scene, monkeypatch):
    calls: list[tuple[str, Window]] = []
    original = rasterio.io.DatasetReader.read

    def recording_read(self, *args, **kwargs):
        calls.append((Path(self.name).name, kwargs.get("window")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", recording_read)
    bands = ("red", "nir", "swir16")
    grid = scene_grid(forest, bands)
    window = Window(col_off=21, row_off=33, width=10, height=12)
    read_window(forest, bands, grid, window)

    assert sorted(name for name, _ in calls) == ["nir.tif", "red.tif", "swir16.tif"]
    for name, win in calls:
        assert win is not None, f"{name} was read whole"
        if name == "swir16.tif":
            # 10 x 12 pixels of 10 m touch at most 6 x 7 pixels of 20 m.
            assert win.width <= 6 and win.height <= 7
        else:
            assert win == window


# --- (6) errors -----------------------------------------------------------------------------


def test_bands_in_different_crs(tmp_path: Path):
    red = coded_band(tmp_path / "red.tif", T10, 4, 4)
    nir = coded_band(tmp_path / "nir.tif", T10, 4, 4, crs="EPSG:32617")
    scene = _scene({"red": red, "nir": nir}, "mixed")
    message = _error(scene_grid, scene, ("red", "nir"))
    assert "'mixed'" in message
    assert "'red'" in message and "'nir'" in message
    assert "32617" in message and "32618" in message


def test_band_index_beyond_file_band_count(tmp_path: Path):
    write_raster(tmp_path / "stack.tif", np.ones((2, 3, 3), dtype=np.uint16), T10)
    path = catalog_yaml(tmp_path, {"s": {"path": "stack.tif", "bands": ["red", "nir", "swir16"]}})
    scene = load_catalog(path).scene("s")
    assert scene.band("swir16").index == 3
    message = _error(scene_grid, scene, ("red", "swir16"))
    assert "'s'" in message
    assert "'swir16'" in message
    assert "stack.tif" in message
    assert "band 3" in message and "has 2" in message


def test_scene_missing_a_requested_band(tmp_path: Path):
    red = coded_band(tmp_path / "red.tif", T10, 4, 4)
    nir = coded_band(tmp_path / "nir.tif", T10, 4, 4)
    scene = _scene({"red": red, "nir": nir}, "two")
    grid = Grid(WKT, tuple(T10)[:6], 4, 4)
    for fn, args in [
        (scene_grid, (scene, ("red", "swir16"))),
        (read_window, (scene, ("red", "swir16"), grid, Window(0, 0, 4, 4))),
        (check_compatible, (scene, ("swir16",), grid)),
    ]:
        message = _error(fn, *args)
        assert "'two'" in message
        assert "'swir16'" in message
        assert "red, nir" in message


def test_check_compatible_accepts_overlapping_scene(tmp_path: Path):
    a = _scene({"red": coded_band(tmp_path / "a.tif", T10, 8, 8)}, "a")
    b = _scene({"red": coded_band(tmp_path / "b.tif", T10 @ Affine.translation(5, 5), 8, 8)}, "b")
    grid = scene_grid(a, ("red",))
    assert check_compatible(b, ("red",), grid) is None


@pytest.mark.parametrize(
    "shift",
    [
        (1000, 0),  # far east
        (0, -1000),  # far south
        (8, 0),  # touching the east edge
        (0, 8),  # touching the south edge
    ],
)
def test_check_compatible_rejects_non_overlapping_scene(tmp_path: Path, shift):
    a = _scene({"red": coded_band(tmp_path / "a.tif", T10, 8, 8)}, "a")
    b_path = coded_band(tmp_path / "b.tif", T10 @ Affine.translation(*shift), 8, 8)
    b = _scene({"red": b_path}, "b")
    grid = scene_grid(a, ("red",))
    message = _error(check_compatible, b, ("red",), grid)
    assert "'b'" in message
    assert "'red'" in message
    assert "does not overlap" in message


def test_check_compatible_rejects_other_crs(tmp_path: Path):
    a = _scene({"red": coded_band(tmp_path / "a.tif", T10, 8, 8)}, "a")
    b = _scene({"red": coded_band(tmp_path / "b.tif", T10, 8, 8, crs="EPSG:32617")}, "b")
    message = _error(check_compatible, b, ("red",), scene_grid(a, ("red",)))
    assert "'b'" in message and "'red'" in message and "32617" in message


def test_unreadable_file(tmp_path: Path):
    bad = tmp_path / "red.tif"
    bad.write_bytes(b"this is not a GeoTIFF")
    message = _error(scene_grid, _scene({"red": bad}, "junk"), ("red",))
    assert "'junk'" in message
    assert str(bad) in message


def test_file_without_crs(tmp_path: Path):
    path = write_raster(tmp_path / "red.tif", np.ones((3, 3), dtype=np.uint8), T10, crs=None)
    message = _error(scene_grid, _scene({"red": path}, "nocrs"), ("red",))
    assert "'nocrs'" in message
    assert "no CRS" in message


# --- (7) read_band --------------------------------------------------------------------------


def test_read_band(tmp_path: Path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = write_raster(tmp_path / "classes.tif", array, T10, nodata=255)
    out, grid, nodata = read_band(str(path))
    assert out.dtype == np.uint8
    assert np.array_equal(out, array)
    assert grid == Grid(WKT, (10.0, 0.0, float(X0), 0.0, -10.0, float(Y0)), 4, 3)
    assert CRS.from_wkt(grid.crs_wkt) == CRS.from_string(UTM18)
    assert nodata == 255


def test_read_band_without_nodata_reads_band_one(tmp_path: Path):
    stack = np.stack([np.full((2, 2), 0.5, np.float32), np.full((2, 2), 9.0, np.float32)])
    path = write_raster(tmp_path / "conf.tif", stack, T10)
    out, grid, nodata = read_band(str(path))
    assert nodata is None
    assert out.shape == (2, 2) and (out == 0.5).all()
    assert (grid.width, grid.height) == (2, 2)


# --- (7) decimated reads for previews -------------------------------------------------------


def test_overview_is_the_block_mean_of_the_full_read(tmp_path: Path):
    # 2 x 2 averaging of a 40 x 60 band onto 20 x 30: each output pixel is a block mean.
    rng = np.random.default_rng(3)
    values = rng.integers(100, 5000, (40, 60)).astype(np.uint16)
    scene = _scene({"red": _small(tmp_path, "red", values)}, scale=1e-4)
    grid = scene_grid(scene, ("red",))
    data, valid = read_overview(scene, ("red",), grid, (20, 30))
    assert data.shape == (1, 20, 30) and valid.all()
    expected = values.reshape(20, 2, 30, 2).mean(axis=(1, 3)) * 1e-4
    np.testing.assert_allclose(data[0], expected, atol=1e-4)


def test_overview_marks_nodata_and_uncovered_pixels(forest: Scene):
    bands = ("red", "nir", "swir16")
    grid = scene_grid(forest, bands)
    data, valid = read_overview(forest, bands, grid, (48, 40))
    assert data.shape == (3, 48, 40)
    # The generator's 4 nodata rows are the top 2 rows at half resolution; the rest is data.
    assert not valid[:2].any() and valid[2:].all()
    assert (data[:, ~valid] == 0).all()
    full, full_valid = read_window(forest, bands, grid, Window(0, 0, grid.width, grid.height))
    # Forest on the left (SWIR ≈ 0.10), bright crop on the right (SWIR ≈ 0.25), as at full size.
    assert abs(data[2, 30:, :8].mean() - full[2, 60:, :16].mean()) < 0.01
    assert abs(data[2, 10:20, 28:].mean() - 0.25) < 0.01


def test_overview_reads_each_file_once_decimated(forest: Scene, monkeypatch):
    calls: list[tuple[str, tuple[int, ...] | None]] = []
    original = rasterio.io.DatasetReader.read

    def recording_read(self, *args, **kwargs):
        calls.append((Path(self.name).name, kwargs.get("out_shape")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", recording_read)
    bands = ("red", "nir", "swir16")
    read_overview(forest, bands, scene_grid(forest, bands), (24, 20))
    assert sorted(name for name, _ in calls) == ["nir.tif", "red.tif", "swir16.tif"]
    for name, shape in calls:
        assert shape is not None and shape[-2] <= 24 and shape[-1] <= 20, name


def test_overview_rejects_a_band_in_another_crs(tmp_path: Path):
    red = coded_band(tmp_path / "red.tif", T10, 4, 4)
    scene = _scene({"red": red})
    grid = scene_grid(scene, ("red",))
    other = Grid(CRS.from_string("EPSG:32617").to_wkt(), grid.transform, grid.width, grid.height)
    assert "reproject" in _error(read_overview, scene, ("red",), other, (2, 2))


def test_band_overview_keeps_class_values(tmp_path: Path):
    classes = np.zeros((40, 60), dtype=np.uint8)
    classes[:, 30:] = 3
    classes[:10] = 255
    path = _small(tmp_path, "classes", classes, nodata=255)
    small = read_band_overview(str(path), (20, 30))
    assert small.shape == (20, 30) and small.dtype == np.uint8
    assert set(np.unique(small)) == {0, 3, 255}
    assert (small[5:, :15] == 0).all() and (small[5:, 15:] == 3).all() and (small[:5] == 255).all()


def test_file_sha256(tmp_path: Path):
    import hashlib

    path = tmp_path / "model.ckpt"
    data = bytes(range(256)) * 5000  # several read chunks
    path.write_bytes(data)
    assert file_sha256(str(path)) == hashlib.sha256(data).hexdigest()


def test_file_sha256_follows_a_rewritten_file(tmp_path: Path):
    import hashlib
    import os

    path = tmp_path / "model.ckpt"
    path.write_bytes(b"first")
    assert file_sha256(str(path)) == hashlib.sha256(b"first").hexdigest()
    path.write_bytes(b"other")  # same size: a new modification time tells it apart
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert file_sha256(str(path)) == hashlib.sha256(b"other").hexdigest()
