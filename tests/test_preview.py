from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rasterio.crs import CRS

from pipeline.grid import Grid
from pipeline.preview import (
    MAX_SIZE,
    NATURAL_COLOUR,
    NODATA_COLOUR,
    OVERLAY_ALPHA,
    compose,
    format_length,
    ground_size_m,
    muted_scene,
    nice_length,
    overview_shape,
    preview_bands,
    render_preview,
    stretch,
)
from pipeline.workflow import ClassDef, load_workflow
from tests.conftest import CliRun
from tests.data import ORIGIN, UTM18

FOREST = load_workflow("forest").classes
FIRE = load_workflow("fire").classes


def _utm_grid(height: int, width: int, res: float = 10.0) -> Grid:
    x0, y0 = ORIGIN
    return Grid(CRS.from_string(UTM18).to_wkt(), (res, 0.0, x0, 0.0, -res, y0), width, height)


def _hurst_like_grid() -> Grid:
    res = 0.0001796630568239043
    return Grid(CRS.from_epsg(4326).to_wkt(), (res, 0.0, -118.42, 0.0, -res, 34.33), 225, 225)


def _rgb(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _count(rgb: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((rgb == colour).all(axis=2).sum())


# --- choices: bands, sizes, scale bar -------------------------------------------------------


def test_natural_colour_when_the_scene_has_it_else_the_models_first_band():
    assert preview_bands(("blue", "green", "red", "nir"), ("nir", "swir22")) == NATURAL_COLOUR
    assert preview_bands(("swir16", "nir", "red", "green"), ("red", "nir")) == ("red",)


@pytest.mark.parametrize(
    ("max_m", "expected"), [(3700, 2000), (999, 500), (1000, 1000), (0.3, 0.2), (12_000, 10_000)]
)
def test_nice_length(max_m, expected):
    assert nice_length(max_m) == pytest.approx(expected)


def test_nice_length_needs_a_positive_length():
    with pytest.raises(ValueError):
        nice_length(0)


def test_format_length():
    assert [format_length(m) for m in (200, 500, 1000, 2500, 10_000)] == [
        "200 m",
        "500 m",
        "1 km",
        "2.5 km",
        "10 km",
    ]


def test_overview_shape_of_a_projected_scene_is_bounded_and_keeps_the_aspect():
    grid = _utm_grid(1947, 1933)  # the Virginia demo grid
    assert ground_size_m(grid) == (19330.0, 19470.0)
    assert overview_shape(grid) == (MAX_SIZE, 993)
    assert overview_shape(_utm_grid(11000, 22000)) == (500, 1000)
    assert overview_shape(_utm_grid(96, 80)) == (96, 80)  # small scenes are not upsampled


def test_overview_shape_of_a_geographic_scene_has_square_ground_pixels():
    grid = _hurst_like_grid()
    width_m, height_m = ground_size_m(grid)
    # 225 pixels of 0.00018° at 34.3° N: ~3.7 km east-west, ~4.5 km north-south.
    assert 3_600 < width_m < 3_800 and 4_400 < height_m < 4_500
    h, w = overview_shape(grid)
    assert h == 225 and w < 200
    assert width_m / w == pytest.approx(height_m / h, rel=0.01)


def test_stretch_maps_percentiles_over_valid_pixels_to_0_1():
    band = np.tile(np.linspace(0.0, 1.0, 101, dtype=np.float32), (3, 1))
    valid = np.ones(band.shape, bool)
    band[0, 0], valid[0, 0] = 1000.0, False  # an invalid outlier must not move the stretch
    out = stretch(band[None], valid)
    assert out.shape == (3, 101, 1)
    assert out[1, 2, 0] == pytest.approx(0.0, abs=1e-6)  # 2nd percentile
    assert out[1, 98, 0] == pytest.approx(1.0, abs=1e-6)  # 98th percentile
    assert out[1, 50, 0] == pytest.approx(0.5, abs=0.01)
    assert out.min() >= 0 and out.max() <= 1


# --- the picture ----------------------------------------------------------------------------


def _checkerboard(h: int, w: int, bands: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Two reflectances in a checkerboard: the stretch maps them to exactly 0 and 1."""
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.where((yy + xx) % 2, 0.3, 0.1).astype(np.float32)
    return np.repeat(image[None], bands, axis=0), np.ones((h, w), bool)


def test_compose_blends_vectorized_classes_only():
    image, valid = _checkerboard(6, 8)
    classes = np.zeros((6, 8), np.uint8)  # class 0, "other", is not vectorized
    classes[:, 4:] = 1
    valid[0, 0] = False
    classes[0, 0] = 255
    out = compose(image, valid, classes, FOREST)
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    light, dark = out[1, 0], out[1, 1]
    assert tuple(dark) == (0, 0, 0) and tuple(light) == (255, 255, 255)  # muted, unclassified
    forest = np.array(FOREST[1].rgb)
    for base in (0, 255):
        blended = (1 - OVERLAY_ALPHA) * base + OVERLAY_ALPHA * forest
        pixels = out[:, 4:][(image[0, :, 4:] > 0.2) == (base == 255)]
        assert (np.abs(pixels - blended) <= 0.5 + 1e-3).all()
    assert tuple(out[0, 0]) == tuple(int(NODATA_COLOUR[i : i + 2], 16) for i in (1, 3, 5))


def test_compose_draws_cloud_and_shadow_in_their_colours():
    from pipeline.masking import MASK_CLASSES

    image, valid = _checkerboard(4, 4)
    classes = np.zeros((4, 4), np.uint8)
    cloud_shadow, cloud = MASK_CLASSES
    classes[0, :2] = cloud.value
    classes[3, 2:] = cloud_shadow.value
    out = compose(image, valid, classes, FOREST)
    for mask_class in MASK_CLASSES:
        rows, cols = np.nonzero(classes == mask_class.value)
        for r, c in zip(rows, cols, strict=True):
            base = 255 if image[0, r, c] > 0.2 else 0  # the muted checkerboard under it
            blended = (1 - OVERLAY_ALPHA) * base + OVERLAY_ALPHA * np.array(mask_class.rgb)
            assert (np.abs(out[r, c] - blended) <= 0.5 + 1e-3).all(), mask_class.name


def test_compose_of_one_band_is_grey_under_the_classes():
    rng = np.random.default_rng(0)
    image = rng.random((1, 20, 20)).astype(np.float32)
    classes = np.full((20, 20), 2, np.uint8)  # "unburned": not vectorized in the fire workflow
    classes[:5] = 6  # high severity
    out = compose(image, np.ones((20, 20), bool), classes, FIRE)
    grey = out[5:]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    assert (out[:5, :, 2] > out[:5, :, 1]).all()  # purple over grey


@pytest.mark.parametrize("bands", [3, 1])
def test_compose_over_a_muted_scene_made_beforehand_is_the_same(bands):
    """A run mutes the scene while the tiles run and blends the classes in once they exist."""
    rng = np.random.default_rng(1)
    image = rng.random((bands, 40, 50)).astype(np.float32)
    valid = rng.random((40, 50)) > 0.1
    classes = rng.integers(0, len(FIRE), (40, 50)).astype(np.uint8)
    classes[rng.random((40, 50)) > 0.8] = 255
    classes[~valid & (rng.random((40, 50)) > 0.5)] = 6  # a class where the scene has no data
    muted = muted_scene(image, valid)
    assert muted.shape == (40, 50, 3)
    out = compose(image, valid, classes, FIRE, muted)
    assert np.array_equal(out, compose(image, valid, classes, FIRE))
    nodata = tuple(int(NODATA_COLOUR[i : i + 2], 16) for i in (1, 3, 5))
    assert (out[~valid] == nodata).all()
    plain = np.round(muted * 255).astype(np.uint8)
    unburned, high = valid & (classes == 2), valid & (classes == 6)  # 2 is not vectorized
    assert (out[unburned] == plain[unburned]).all()
    assert (out[high] != plain[high]).any(axis=1).all()


def test_render_preview_png(tmp_path: Path):
    h, w = 120, 160
    image, valid = _checkerboard(h, w)
    classes = np.full((h, w), 2, np.uint8)
    classes[:, :40], classes[:, 40:80], classes[:, 80:120] = 3, 4, 6
    valid[-10:] = False
    classes[-10:] = 255
    png = render_preview(
        image,
        valid,
        classes,
        FIRE,
        _utm_grid(1200, 1600),
        "hurst-post",
        dt.date(2025, 1, 20),
        subtitle="fire · model fire-dnbr",
        labels={3: "low severity\n3 polygons"},
    )
    assert png.startswith(b"\x89PNG")
    im = Image.open(io.BytesIO(png))
    assert im.info.get("Title") == "hurst-post 2025-01-20"
    width, height = im.size
    # The map is shown at least 640 pixels wide, plus the legend; never more than ~1400.
    assert 640 + 250 < width < 1400 and 480 + 60 < height < 1200
    rgb = _rgb(png)
    assert rgb.std() > 20  # not blank
    # Every vectorized class is in the legend in its colour; classes without polygons too.
    for c in FIRE:
        if c.vectorize:
            assert _count(rgb, c.rgb) > 80, c.name
    assert _count(rgb, (10, 224, 66)) == 0  # "unburned" is not vectorized: not shown
    # The map holds the blended class colours over the whole class areas (4x upscaled).
    picture = compose(image, valid, classes, FIRE)
    for cols in (slice(0, 40), slice(40, 80), slice(80, 120)):
        for colour in {tuple(int(v) for v in p) for p in picture[: h - 10, cols].reshape(-1, 3)}:
            expected = (picture[: h - 10, cols] == colour).all(axis=2).sum() * 16
            assert _count(rgb, colour) >= 0.9 * expected


def test_render_preview_of_a_picture_composed_beforehand_is_the_same():
    """A run composes the map while the polygons come in and renders it once they are counted."""
    h, w = 60, 80
    image, valid = _checkerboard(h, w)
    classes = np.full((h, w), 2, np.uint8)
    classes[:, :30] = 4
    args = (image, valid, classes, FIRE, _utm_grid(600, 800), "hurst-post", None)
    picture = compose(image, valid, classes, FIRE)
    assert render_preview(*args, picture=picture) == render_preview(*args)
    other = compose(image, valid, np.full((h, w), 6, np.uint8), FIRE)
    assert render_preview(*args, picture=other) != render_preview(*args)


def test_render_preview_needs_matching_shapes():
    image, valid = _checkerboard(10, 10)
    with pytest.raises(AssertionError):
        render_preview(
            image, valid, np.zeros((10, 12), np.uint8), FOREST, _utm_grid(10, 10), "s", None
        )


# --- real runs ------------------------------------------------------------------------------


def _check_run_preview(run: CliRun, classes: tuple[ClassDef, ...]) -> np.ndarray:
    assert run.proc.returncode == 0, run.proc.stderr
    png = (run.folder / "preview.png").read_bytes()
    rgb = _rgb(png)
    assert rgb.std() > 20
    summary = json.loads((run.folder / "run.json").read_text())
    workflow = load_workflow(summary["workflow"]["name"])
    # Each vectorized class has its swatch in the legend, and so has a merged polygon class.
    for c in (*classes, *workflow.polygon_classes()):
        if c.vectorize:
            assert _count(rgb, c.rgb) > 80, c.name
    return rgb


@pytest.mark.slow
def test_virginia_preview(virginia_forest_run: CliRun):
    rgb = _check_run_preview(virginia_forest_run, FOREST)
    height, width = rgb.shape[:2]
    assert 1000 + 250 < width < 1400 and 1000 < height < 1200  # decimated to 1000 px
    # Forest is a tenth of the scene: its blend with the muted scene is green-dominated.
    map_area = rgb[80:-20, 16:1010].astype(int)
    greenish = (map_area[..., 1] > map_area[..., 0] + 25) & (map_area[..., 1] > map_area[..., 2])
    assert 0.05 < greenish.mean() < 0.3


@pytest.mark.slow
def test_hurst_preview(hurst_fire_run: CliRun):
    rgb = _check_run_preview(hurst_fire_run, FIRE)
    height, width = rgb.shape[:2]
    # 225 pixels shown at 640: taller than wide, as the scene on the ground.
    assert 640 + 60 < height < 800 and width < 640 + 320
