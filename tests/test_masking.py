from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from rasterio.crs import CRS
from rasterio.windows import Window
from scipy import ndimage

from pipeline.catalog import BandSource, Catalog, Scene, load_catalog
from pipeline.errors import ConfigError
from pipeline.grid import Block, Grid, blocks
from pipeline.masking import CLOUD, SHADOW, MaskPlan, combined_mask, mask_window, plan_mask
from pipeline.masking import network as network_module
from pipeline.masking import window as window_module
from pipeline.masking.quality import quality_mask
from pipeline.masking.spectral import spectral_mask
from pipeline.reading import read_window, scene_grid
from pipeline.workflow import MaskConfig
from tests.data import ORIGIN, catalog_yaml, forest_scene, quality_band
from tests.helpers import user_error

GRID_10M = Grid(CRS.from_epsg(32618).to_wkt(), (10.0, 0.0, ORIGIN[0], 0.0, -10.0, ORIGIN[1]), 8, 8)


def _scene(bands: tuple[str, ...], sensor: str | None = "sentinel-2-l1c") -> Scene:
    return Scene("s", tuple(BandSource(b, f"/nowhere/{b}.tif") for b in bands), sensor=sensor)


# --- which method ---------------------------------------------------------------------------

SIX = ("blue", "green", "red", "nir", "swir16", "swir22")


@pytest.mark.parametrize(
    ("bands", "sensor", "method", "network"),
    [
        ((*SIX, "scl"), "sentinel-2-l2a", "quality", None),
        ((*SIX, "qa_pixel"), "landsat-9-l2", "quality", None),
        (SIX, "sentinel-2-l1c", "network", "model_6b_l1c"),
        (SIX, "sentinel-2-l2a", "network", "model_6b_l2a"),
        (("blue", "green", "red", "nir", "swir22"), "sentinel-2-l2a", "network", "model_4b_l2a"),
        (SIX, "landsat-8-l1", "network", "model_6b_l1c"),
        (SIX, "landsat-8-l2", "network", "model_6b_l2a"),
        (SIX, None, "spectral", None),  # the networks know only Sentinel-2 and Landsat
        (("swir16", "nir", "red", "green"), "landsat", "spectral", None),
        (("red", "nir", "swir16"), "sentinel-2-l1c", "none", None),
    ],
)
def test_auto_prefers_quality_band_then_network_then_spectral(bands, sensor, method, network):
    plan = plan_mask(MaskConfig(), _scene(bands, sensor), GRID_10M)
    assert (plan.method, plan.network) == (method, network)
    assert plan.reason
    if method == "network":
        assert plan.factor == 3  # 10 m pixels in 30 m cells
        assert set(plan.bands) <= set(bands)
    described = plan.describe()
    assert described["method"] == method
    if method == "network":
        assert described["network"].startswith("ukis-csmask 1.0.0, network 1.0.0-")
        assert described["cell_m"] == 30.0 and described["buffer_m"] == 60.0


def test_named_methods_that_cannot_run_are_one_line_errors():
    s2 = _scene(("red", "nir", "swir16"))
    for method, words in [
        ("quality", "no quality band"),
        ("network", "blue, green"),
        ("spectral", "green"),
    ]:
        message = user_error(ConfigError, plan_mask, MaskConfig(method=method), s2, GRID_10M)
        assert "'s'" in message and words in message
    off = plan_mask(MaskConfig(method="none"), _scene(SIX), GRID_10M)
    assert off.method == "none" and "method: none" in off.reason


# --- the methods ----------------------------------------------------------------------------


def test_quality_codes_scl_and_qa_pixel():
    scl = np.array([[0, 3, 4, 8], [9, 10, 11, 6]], dtype=np.float32)
    assert quality_mask("scl", scl).tolist() == [[0, SHADOW, 0, CLOUD], [CLOUD, CLOUD, 0, 0]]
    # Collection 2 bits: 1 dilated cloud, 2 cirrus, 3 cloud, 4 shadow, 6 clear, 7 water.
    qa = np.array([[1 << 6, 1 << 1, 1 << 2, 1 << 3], [1 << 4, (1 << 4) | (1 << 3), 1 << 7, 1]])
    assert quality_mask("qa_pixel", qa.astype(np.float32)).tolist() == [
        [0, CLOUD, CLOUD, CLOUD],
        [SHADOW, CLOUD, 0, 0],
    ]


def test_spectral_test_flags_bright_white_pixels_only():
    # green, red, nir, swir16 reflectance: cloud, forest, bare soil, water, snow, dark grey.
    pixels = np.array(
        [
            [0.45, 0.05, 0.18, 0.03, 0.80, 0.12],
            [0.46, 0.03, 0.25, 0.02, 0.78, 0.12],
            [0.50, 0.35, 0.30, 0.01, 0.70, 0.13],
            [0.40, 0.15, 0.38, 0.01, 0.05, 0.12],
        ],
        dtype=np.float32,
    )[:, None, :]
    assert spectral_mask(pixels)[0].tolist() == [CLOUD, 0, 0, 0, 0, 0]


@pytest.fixture
def scl_catalog(tmp_path: Path) -> Catalog:
    """The synthetic forest scene with an SCL band: cloud and shadow in 20 m pixel blocks."""
    paths = forest_scene(tmp_path / "s")
    codes = [
        (10, 15, 5, 10, 9),  # cloud, high probability
        (30, 35, 25, 30, 3),  # cloud shadow
        (40, 42, 2, 4, 11),  # snow: not masked
    ]
    paths["scl"] = quality_band(tmp_path / "s" / "scl.tif", 96, 80, codes)
    entry = {
        "assets": {k: str(v) for k, v in paths.items()},
        "scale": 0.0001,
        "sensor": "sentinel-2-l2a",
    }
    return load_catalog(catalog_yaml(tmp_path, {"s": entry}))


def test_quality_band_masks_its_pixels_on_the_run_grid_grown_by_the_buffer(scl_catalog):
    scene = scl_catalog.scene("s")
    grid = scene_grid(scene, ("red", "nir"))
    plan = plan_mask(MaskConfig(buffer_m=0), scene, grid)
    assert plan.method == "quality" and plan.bands == ("scl",)
    whole = mask_window(plan, scene, grid, Window(0, 0, grid.width, grid.height))
    # The 20 m grid starts 10 m west of the 10 m one: 20 m column j covers 10 m columns
    # 2j - 1 and 2j; row i covers rows 2i and 2i + 1.
    expected = np.zeros((grid.height, grid.width), dtype=np.uint8)
    expected[20:30, 9:19] = CLOUD
    expected[60:70, 49:59] = SHADOW
    expected[:4] = 0  # the scene's own no-data rows are never masked
    np.testing.assert_array_equal(whole, expected)

    grown = plan_mask(MaskConfig(buffer_m=20), scene, grid)
    assert grown.buffer_px == 2
    mask = mask_window(grown, scene, grid, Window(0, 0, grid.width, grid.height))
    near = {v: ndimage.distance_transform_edt(whole != v) <= 2 for v in (CLOUD, SHADOW)}
    np.testing.assert_array_equal(mask == CLOUD, near[CLOUD])
    np.testing.assert_array_equal(mask == SHADOW, near[SHADOW] & ~near[CLOUD])
    assert mask[18, 9] == CLOUD and mask[17, 9] == 0 and mask[18, 7] == 0  # corners rounded
    # Any window agrees with the whole scene, the buffer included.
    for block in blocks(grid, 7):
        np.testing.assert_array_equal(
            mask_window(grown, scene, grid, block.window), _cut(mask, block)
        )


def test_combined_mask_takes_cloud_over_shadow(monkeypatch):
    quality = MaskPlan("quality", "a", ("scl",))
    off = MaskPlan("none", "off")
    masks = {"a": [[0, SHADOW, CLOUD]], "b": [[SHADOW, CLOUD, SHADOW]]}
    calls = []

    def fake(plan, scene, grid, window):
        calls.append(scene.id)
        return np.array(masks[scene.id], dtype=np.uint8)

    monkeypatch.setattr(window_module, "mask_window", fake)
    pairs = ((quality, _named("a")), (quality, _named("b")), (off, _named("c")))
    got = combined_mask(pairs, GRID_10M, Window(0, 0, 3, 1))
    assert got is not None and got.tolist() == [[SHADOW, CLOUD, CLOUD]]
    assert calls == ["a", "b"]
    assert combined_mask(((off, _named("c")),), GRID_10M, Window(0, 0, 3, 1)) is None


def _cut(array: np.ndarray, block: Block) -> np.ndarray:
    return array[
        block.row_off : block.row_off + block.height, block.col_off : block.col_off + block.width
    ]


def _named(scene_id: str) -> Scene:
    return dataclasses.replace(_scene(("red",)), id=scene_id)


# --- the networks on real scenes ------------------------------------------------------------


@pytest.fixture(scope="module")
def landsat_cloudy() -> tuple[MaskPlan, Scene, Grid]:
    catalog = load_catalog(Path(__file__).resolve().parents[1] / "data_catalog.yaml")
    scene = catalog.scene("l8-cloudy")
    grid = scene_grid(scene, ("red", "nir"))
    return plan_mask(MaskConfig(), scene, grid), scene, grid


def test_network_mask_is_the_same_whichever_window_asks(landsat_cloudy):
    plan, scene, grid = landsat_cloudy
    assert (plan.method, plan.network, plan.factor) == ("network", "model_6b_l1c", 1)
    window_module._tiles.clear()
    whole = mask_window(plan, scene, grid, Window(0, 0, grid.width, grid.height))
    # The cumulus field over the middle of the scene, and its shadows to the north.
    assert 0.5 < (whole == CLOUD).mean() < 0.75 and 0.1 < (whole == SHADOW).mean() < 0.45
    assert (whole[200:400] == CLOUD).mean() > 0.95 and (whole[:50] == SHADOW).mean() > 0.5
    window_module._tiles.clear()
    for size in (100, 256):
        for block in blocks(grid, size):
            got = mask_window(plan, scene, grid, block.window)
            np.testing.assert_array_equal(got, _cut(whole, block))


def test_network_runs_each_core_once_per_process(landsat_cloudy, monkeypatch):
    plan, scene, grid = landsat_cloudy
    window_module._tiles.clear()
    net = network_module.load(plan.network)
    runs = []
    real = net.probabilities

    def counted(cells):
        runs.append(cells.shape)
        return real(cells)

    monkeypatch.setattr(net, "probabilities", counted)
    for block in blocks(grid, 128):
        mask_window(plan, scene, grid, block.window)
    # 603 x 627 cells: tiles start at rows 0, 192, 347 and columns 0, 192, 371.
    assert window_module.tile_starts(603) == (0, 192, 347)
    assert window_module.tile_starts(100) == (-78,)  # one tile, centred
    assert len(runs) == 9
    assert set(runs) == {(6, 256, 256)}


def _compile_into(cache: str) -> list[float]:
    net = network_module.CloudNetwork("model_4b_l1c", 1, Path(cache))
    return net.probabilities(np.full((4, 256, 256), 0.1, np.float32))[:, 0, 0].tolist()


def test_workers_starting_together_share_the_compiled_network(tmp_path):
    """Four processes compile into one empty cache at once, as a cluster's workers do."""
    import multiprocessing

    cache = tmp_path / "openvino"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        answers = pool.map(_compile_into, [str(cache)] * 4)
    assert all(a == answers[0] for a in answers)
    assert sum(answers[0]) == pytest.approx(1.0, abs=1e-5)
    # One compiled form, beside the one network it was compiled from (OpenVINO's format,
    # description and weights), and no half-written file.
    files = [p for p in cache.iterdir() if p.name != ".lock"]
    kept = {p.suffix: p.stem for p in files}
    assert len(files) == 3 and sorted(kept) == [".bin", ".blob", ".xml"]
    assert kept[".bin"] == kept[".xml"]
    # A cache that cannot be a folder costs the compile time, not the answer.
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert _compile_into(str(blocked)) == answers[0]


def test_masked_fractions_of_the_real_scenes(shared_data, project_catalog):
    """Cloudy Slovenia dates ≥ 90 % masked; clear ones ≤ 5 %; Virginia ≤ 2 %; fire posts ≤ 5 %."""
    limits = {
        "slovenia-2015-07-31": (0.9, 1.0),
        "slovenia-2015-08-20": (0.9, 1.0),
        "slovenia-2015-07-11": (0.0, 0.05),
        "slovenia-2015-08-30": (0.0, 0.05),
        "slovenia-2015-09-09": (0.0, 0.05),
        "s2-virginia": (0.0, 0.02),
    }
    limits |= {s: (0.0, 0.05) for s in project_catalog.ids() if s.endswith("-post")}
    assert len([s for s in limits if s.endswith("-post")]) == 9
    for scene_id, (low, high) in limits.items():
        scene = project_catalog.scene(scene_id)
        grid = scene_grid(scene, ("red", "nir"))
        plan = plan_mask(MaskConfig(), scene, grid)
        assert plan.method == "network", scene_id
        window = Window(0, 0, grid.width, grid.height)
        mask = mask_window(plan, scene, grid, window)
        _, valid = read_window(scene, ("red", "nir"), grid, window)
        share = float((mask[valid] != 0).mean())
        assert low <= share <= high, (scene_id, share)
