from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax

from pipeline.errors import GeosegError, ModelError
from pipeline.models import SegmentationModel, build_model, build_runnable
from pipeline.models.build import build_index_model
from pipeline.models.indices import (
    BurnedAreaModel,
    FireSeverityModel,
    ForestIFZModel,
    ForestIndexModel,
    IndexModel,
    MiningBareGroundModel,
    darker_component,
)
from pipeline.workflow import IndexModelConfig, load_workflow

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"

#: Key & Benson (2006) dNBR class boundaries (USGS FIREMON), as shipped in workflows/fire.yaml.
KEY_BENSON = (-0.25, -0.1, 0.1, 0.27, 0.44, 0.66)

SHIPPED = {
    "forest-ifz": (ForestIFZModel, ("red", "nir", "swir16"), False, 3),
    "forest-ndvi-swir": (ForestIndexModel, ("red", "nir", "swir16"), False, 2),
    "fire-dnbr": (FireSeverityModel, ("nir", "swir22"), True, 7),
    "mining-bare-ground": (MiningBareGroundModel, ("green", "red", "nir", "swir16"), True, 2),
}


def _build(name: str, **params: float | list[float]) -> IndexModel:
    return build_index_model(IndexModelConfig(kind="index", name=name, params=params))


def _run(model: IndexModel, channels: list[np.ndarray]) -> np.ndarray:
    """Stack 1-D per-channel arrays into a [1, C, 1, P] input and return the model's scores."""
    return model(np.stack([np.asarray(c, dtype=np.float32) for c in channels])[None, :, None, :])


def _classes(model: IndexModel, channels: list[np.ndarray]) -> np.ndarray:
    return _run(model, channels).argmax(axis=1)[0, 0]


def _nd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalized difference (a - b) / (a + b) in float64, from the float32 values fed in."""
    a64 = np.asarray(a, dtype=np.float32).astype(np.float64)
    b64 = np.asarray(b, dtype=np.float32).astype(np.float64)
    return (a64 - b64) / (a64 + b64)


def _red_nir_for_ndvi(ndvi: np.ndarray, red: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return red, red * (1 + ndvi) / (1 - ndvi)


def _nir_swir_for_nbr(nbr: np.ndarray, total: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    return total * (1 + nbr) / 2, total * (1 - nbr) / 2


# --- building ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_build_model_from_config(name: str) -> None:
    cls, bands, needs_before, k = SHIPPED[name]
    model = _build(name)
    assert type(model) is cls
    assert isinstance(model, IndexModel)
    assert model.model_id == name
    assert model.bands == bands
    assert model.needs_before is needs_before
    assert model.num_classes == k
    assert model.in_channels == len(bands) * (2 if needs_before else 1)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_output_shape(name: str) -> None:
    model = _build(name)
    x = np.random.default_rng(0).random((3, model.in_channels, 5, 7), np.float32) * 0.5 + 0.01
    out = model(x)
    assert out.shape == (3, model.num_classes, 5, 7)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_channels_last_input_gives_the_same_scores(name: str) -> None:
    model = _build(name)
    x = np.random.default_rng(1).random((2, model.in_channels, 4, 6), np.float32) * 0.5 + 0.01
    # The same values laid out channels-last, as a torch caller's tensor often is.
    last = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(model(last), model(x))


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_torch_module_gives_the_index_models_scores(name: str) -> None:
    import torch

    config = IndexModelConfig(kind="index", name=name)
    module, index = build_model(config), build_index_model(config)
    assert isinstance(module, SegmentationModel) and not module.training
    assert (module.bands, module.num_classes, module.needs_before, module.model_id) == (
        index.bands,
        index.num_classes,
        index.needs_before,
        index.model_id,
    )
    x = np.random.default_rng(2).random((2, index.in_channels, 5, 7), np.float32) * 0.5 + 0.01
    tensor = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        scores = module(tensor)
    assert scores.dtype == torch.float32
    np.testing.assert_array_equal(scores.numpy(), index(x))


@pytest.mark.parametrize(
    ("workflow", "cls", "attrs"),
    [
        (
            "forest",
            ForestIFZModel,
            {"ndvi_min": 0.45, "ifz_max": 3.0, "loss_ndmi_drop": 0.1, "softness": 0.02},
        ),
        (
            "fire",
            BurnedAreaModel,
            {
                "burn_threshold": 0.05,
                "red_veto": 0.75,
                "smoothing_m": 20.0,
                "closing_m": 30.0,
                "softness": 0.02,
            },
        ),
        (
            "mining",
            MiningBareGroundModel,
            {
                "ndvi_before_min": 0.5,
                "ndvi_after_max": 0.25,
                "ndbi_after_min": -0.05,
                "ndbi_before_max": 0.0,
                "mndwi_max": 0.0,
                "water_buffer_m": 500.0,
                "softness": 0.03,
            },
        ),
    ],
)
def test_build_model_from_shipped_workflow(
    workflow: str, cls: type[IndexModel], attrs: dict[str, object]
) -> None:
    wf = load_workflow(str(WORKFLOWS / f"{workflow}.yaml"))
    model = build_runnable(wf.model)
    assert type(model) is cls
    assert model.num_classes == len(wf.classes)
    for key, value in attrs.items():
        assert getattr(model, key) == pytest.approx(value)


def test_params_override_defaults() -> None:
    model = _build("forest-ndvi-swir", ndvi_min=0.3, swir16_max=0.2)
    assert isinstance(model, ForestIndexModel)
    assert (model.ndvi_min, model.swir16_max, model.softness) == (0.3, 0.2, 0.02)


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SHIPPED))
@pytest.mark.parametrize("shape_delta", [-1, 1])
def test_wrong_channel_count_raises_value_error(name: str, shape_delta: int) -> None:
    model = _build(name)
    x = np.full((1, model.in_channels + shape_delta, 4, 4), 0.1, np.float32)
    with pytest.raises(ValueError, match=rf"expects \[N, {model.in_channels}, H, W\]"):
        model(x)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_three_dimensional_input_raises_value_error(name: str) -> None:
    model = _build(name)
    with pytest.raises(ValueError, match="expects"):
        model(np.full((model.in_channels, 4, 4), 0.1, np.float32))


def test_unknown_model_name() -> None:
    with pytest.raises(ModelError) as info:
        _build("forest-ndvi")
    msg = str(info.value)
    assert "'forest-ndvi'" in msg
    for known in SHIPPED:
        assert known in msg
    assert "\n" not in msg
    assert isinstance(info.value, GeosegError)


def test_unknown_param_lists_accepted_params() -> None:
    with pytest.raises(ModelError) as info:
        _build("forest-ndvi-swir", ndvi_max=0.5)
    msg = str(info.value)
    assert "'ndvi_max'" in msg
    assert "'forest-ndvi-swir'" in msg
    for accepted in ("ndvi_min", "swir16_max", "softness"):
        assert accepted in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "boundaries",
    [
        [0.66, 0.44, 0.27, 0.1, -0.1, -0.25],  # descending
        [-0.25, -0.1, 0.27, 0.1, 0.44, 0.66],  # one pair swapped
        [-0.25, -0.1, 0.1, 0.27, 0.44],  # five
        [-0.3, -0.25, -0.1, 0.1, 0.27, 0.44, 0.66],  # seven
    ],
)
def test_invalid_boundaries(boundaries: list[float]) -> None:
    with pytest.raises(ModelError) as info:
        _build("fire-dnbr", boundaries=boundaries)
    msg = str(info.value)
    assert "'fire-dnbr'" in msg
    assert "boundaries" in msg
    assert "\n" not in msg


def test_scalar_boundaries_is_model_error() -> None:
    with pytest.raises(ModelError, match="fire-dnbr"):
        _build("fire-dnbr", boundaries=0.3)


# --- forest ---------------------------------------------------------------------------------


def _forest_grid(
    ndvi_min: float, swir_max: float, offsets: list[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    reds = [0.02, 0.05, 0.09]
    rows = [
        (red, ndvi_min + dn, swir_max + ds)
        for red, dn, ds in itertools.product(reds, offsets, offsets)
    ]
    red, ndvi, swir = (np.array(c) for c in zip(*rows, strict=True))
    red, nir = _red_nir_for_ndvi(ndvi, red)
    return red, nir, swir


def _check_forest(model: ForestIndexModel, offsets: list[float]) -> None:
    red, nir, swir = _forest_grid(model.ndvi_min, model.swir16_max, offsets)
    ndvi = _nd(nir, red)
    swir64 = swir.astype(np.float32).astype(np.float64)
    # The grid must straddle both thresholds and keep clear of them.
    assert np.abs(ndvi - model.ndvi_min).min() > 1e-3
    assert np.abs(swir64 - model.swir16_max).min() > 1e-3
    expected = (ndvi >= model.ndvi_min) & (swir64 <= model.swir16_max)
    assert expected.any() and (~expected).any()
    got = _classes(model, [red, nir, swir])
    np.testing.assert_array_equal(got, expected.astype(np.int64))


@pytest.mark.parametrize(
    "params", [{}, {"ndvi_min": 0.3, "swir16_max": 0.22}, {"ndvi_min": 0.7, "softness": 0.01}]
)
def test_forest_class_far_from_thresholds(params: dict[str, float]) -> None:
    model = _build("forest-ndvi-swir", **params)
    assert isinstance(model, ForestIndexModel)
    _check_forest(model, [-0.25, -0.1, 0.1, 0.25])


@pytest.mark.parametrize("params", [{}, {"ndvi_min": 0.3, "swir16_max": 0.22}])
def test_forest_class_is_the_thresholded_one(params: dict[str, float]) -> None:
    model = _build("forest-ndvi-swir", **params)
    assert isinstance(model, ForestIndexModel)
    _check_forest(model, [-0.2, -0.05, -0.01, -0.002, 0.002, 0.01, 0.05, 0.2])


def test_forest_confidence_grows_away_from_threshold() -> None:
    model = _build("forest-ndvi-swir")
    # NDVI 0.01 to 0.07 above its threshold, SWIR far below its own.
    ndvi = np.array([0.56, 0.58, 0.60, 0.62])
    red, nir = _red_nir_for_ndvi(ndvi, np.full(4, 0.03))
    prob = softmax(_run(model, [red, nir, np.full(4, 0.005)]), axis=1)[0, 1, 0]
    assert np.all(np.diff(prob) > 0)
    assert prob[0] > 0.5 and prob[-1] < 0.99


# --- fire -----------------------------------------------------------------------------------


def _fire_inputs(dnbr: np.ndarray, nbr_before: float) -> list[np.ndarray]:
    nbr_after = nbr_before - dnbr
    assert np.all(np.abs(nbr_after) < 1)
    nir_b, swir_b = _nir_swir_for_nbr(np.full_like(dnbr, nbr_before))
    nir_a, swir_a = _nir_swir_for_nbr(nbr_after, total=0.45)
    return [nir_b, swir_b, nir_a, swir_a]


def _dnbr_sweep(boundaries: tuple[float, ...], lo: float, hi: float) -> np.ndarray:
    d = np.linspace(lo, hi, 1501)
    return d[np.abs(d[:, None] - np.array(boundaries)[None]).min(axis=1) > 1.5e-3]


@pytest.mark.parametrize("nbr_before", [0.2, 0.35])
def test_fire_class_is_key_benson_digitize(nbr_before: float) -> None:
    model = _build("fire-dnbr", boundaries=list(KEY_BENSON), softness=0.02)
    d = _dnbr_sweep(KEY_BENSON, -0.6, 0.95)
    inputs = _fire_inputs(d, nbr_before)
    dnbr = _nd(inputs[0], inputs[1]) - _nd(inputs[2], inputs[3])
    assert np.abs(dnbr - d).max() < 1e-5
    expected = np.digitize(dnbr, KEY_BENSON)
    assert set(expected) == set(range(7))
    np.testing.assert_array_equal(_classes(model, inputs), expected)


def test_fire_default_boundaries_are_key_benson() -> None:
    model = _build("fire-dnbr")
    assert isinstance(model, FireSeverityModel)
    assert model.boundaries == list(KEY_BENSON)


def test_fire_custom_boundaries() -> None:
    bounds = (-0.4, -0.2, 0.0, 0.2, 0.4, 0.6)
    model = _build("fire-dnbr", boundaries=list(bounds))
    d = _dnbr_sweep(bounds, -0.7, 0.9)
    inputs = _fire_inputs(d, 0.2)
    expected = np.digitize(_nd(inputs[0], inputs[1]) - _nd(inputs[2], inputs[3]), bounds)
    np.testing.assert_array_equal(_classes(model, inputs), expected)


def test_fire_narrow_class_is_rejected_or_classed_exactly() -> None:
    bounds = (-0.25, -0.1, 0.1, 0.15, 0.44, 0.66)
    try:
        model = _build("fire-dnbr", boundaries=list(bounds), softness=0.02)
    except ModelError:
        return
    d = _dnbr_sweep(bounds, -0.6, 0.95)
    inputs = _fire_inputs(d, 0.3)
    expected = np.digitize(_nd(inputs[0], inputs[1]) - _nd(inputs[2], inputs[3]), bounds)
    np.testing.assert_array_equal(_classes(model, inputs), expected)


def test_fire_probabilities() -> None:
    softness = 0.02
    model = _build("fire-dnbr", boundaries=list(KEY_BENSON), softness=softness)
    d = np.linspace(-0.5, 0.9, 57)
    inputs = _fire_inputs(d, 0.3)
    logits = _run(model, inputs)[0, :, 0].astype(np.float64)  # [7, P]
    soft = np.exp(logits - logits.max(axis=0))
    soft /= soft.sum(axis=0)
    np.testing.assert_allclose(soft.sum(axis=0), 1.0, atol=1e-9)
    # Score of class k: minus the distance from dNBR to [b_k, b_k+1), in softness units.
    dnbr = _nd(inputs[0], inputs[1]) - _nd(inputs[2], inputs[3])
    lows = np.array([-np.inf, *KEY_BENSON])[:, None]
    highs = np.array([*KEY_BENSON, np.inf])[:, None]
    dist = np.maximum(lows - dnbr[None], 0) + np.maximum(dnbr[None] - highs, 0)
    np.testing.assert_allclose(logits, -dist / softness, atol=1e-3)
    expected = np.exp(-dist / softness)
    expected /= expected.sum(axis=0)
    np.testing.assert_allclose(soft, expected, atol=1e-4)
    # Inside an interval its class scores 0, the maximum: the arg-max is the interval's class.
    assert (logits.max(axis=0) == 0).all()


def test_fire_dnbr_matches_independent_nbr() -> None:
    model = _build("fire-dnbr")
    assert isinstance(model, FireSeverityModel)
    rng = np.random.default_rng(3)
    x = rng.uniform(0.02, 0.6, size=(2, 4, 3, 5)).astype(np.float32)
    got = model.dnbr(x)
    expected = _nd(x[:, 0], x[:, 1]) - _nd(x[:, 2], x[:, 3])
    np.testing.assert_allclose(got[:, 0], expected, atol=1e-5)


# --- mining ---------------------------------------------------------------------------------

VEGETATED = (0.06, 0.04, 0.40, 0.15)  # green, red, nir, swir16: NDVI 0.82, NDBI -0.45
BARE = (0.12, 0.15, 0.20, 0.30)  # NDVI 0.14, NDBI 0.2, MNDWI -0.43
WATER = (0.08, 0.05, 0.03, 0.01)  # NDVI -0.25, NDBI -0.5, MNDWI 0.78
DRY_GRASS = (0.09, 0.10, 0.16, 0.25)  # NDVI 0.23 before: not vegetated enough
GREEN_ON_ROCK = (0.06, 0.04, 0.40, 0.45)  # NDVI 0.82 but NDBI 0.06: bare already
FLOODED_GREEN = (0.20, 0.04, 0.40, 0.10)  # NDVI 0.82 but MNDWI 0.33: water before


def _mining_tests(model: MiningBareGroundModel, before, after) -> bool:
    """The rule, computed independently of the model (in float64)."""
    (g_b, r_b, n_b, s_b), (g_a, r_a, n_a, s_a) = (
        [np.array(v) for v in date] for date in (before, after)
    )
    return bool(
        (_nd(n_b, r_b) >= model.ndvi_before_min)
        & (_nd(n_a, r_a) <= model.ndvi_after_max)
        & (_nd(s_a, n_a) >= model.ndbi_after_min)
        & (_nd(s_b, n_b) < model.ndbi_before_max)
        & (_nd(g_b, s_b) <= model.mndwi_max)
        & (_nd(g_a, s_a) <= model.mndwi_max)
    )


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (VEGETATED, BARE, 1),
        (VEGETATED, WATER, 0),
        (VEGETATED, VEGETATED, 0),
        (BARE, BARE, 0),
        (DRY_GRASS, BARE, 0),
        (GREEN_ON_ROCK, BARE, 0),
        (FLOODED_GREEN, BARE, 0),
    ],
)
def test_mining_cases(before: tuple[float, ...], after: tuple[float, ...], expected: int) -> None:
    model = _build("mining-bare-ground")
    assert isinstance(model, MiningBareGroundModel)
    # The cases must be what their names say under the model's own thresholds.
    assert int(_mining_tests(model, before, after)) == expected
    channels = [np.array([v]) for v in (*before, *after)]
    assert _classes(model, channels).tolist() == [expected]


def test_mining_class_is_the_thresholded_one_near_thresholds() -> None:
    model = _build("mining-bare-ground")
    assert isinstance(model, MiningBareGroundModel)
    offsets = [-0.05, -0.01, 0.01, 0.05]
    rows = list(itertools.product(offsets, offsets, offsets))
    db, da, dx = (np.array(c) for c in zip(*rows, strict=True))
    red_b, nir_b = _red_nir_for_ndvi(model.ndvi_before_min + db, np.full(len(db), 0.05))
    red_a, nir_a = _red_nir_for_ndvi(model.ndvi_after_max + da, np.full(len(db), 0.1))
    ndbi = model.ndbi_after_min + dx
    swir_a = nir_a * (1 + ndbi) / (1 - ndbi)
    swir_b = nir_b * 0.5  # NDBI before -0.33: not bare
    green = np.full(len(db), 0.02)  # MNDWI < 0 in both dates: no water
    expected = (
        (_nd(nir_b, red_b) >= model.ndvi_before_min)
        & (_nd(nir_a, red_a) <= model.ndvi_after_max)
        & (_nd(swir_a, nir_a) >= model.ndbi_after_min)
    )
    assert 0 < expected.sum() < len(expected)
    got = _classes(model, [green, red_b, nir_b, swir_b, green, red_a, nir_a, swir_a])
    np.testing.assert_array_equal(got, expected.astype(np.int64))


def test_mining_keeps_a_buffer_of_the_grid_pixels_from_water() -> None:
    model = _build("mining-bare-ground")
    assert model.calibrate([], pixel_m=(100.0, 90.0)) == {"pixel_w_m": 100.0, "pixel_h_m": 90.0}
    buffered = _build("mining-bare-ground", pixel_w_m=100.0, pixel_h_m=100.0)
    assert buffered.context_px == 5 and model.context_px == 0
    # A row of 20 pixels: water in the new scene at pixel 0, bare new ground everywhere else.
    before = np.array([VEGETATED] * 20).T
    after = np.array([WATER] + [BARE] * 19).T
    x = np.concatenate([before, after]).astype(np.float32)[None, :, None, :]
    near = buffered(x).argmax(axis=1)[0, 0]
    plain = model(x).argmax(axis=1)[0, 0]
    assert plain.tolist() == [0] + [1] * 19
    assert near.tolist() == [0] * 6 + [1] * 14  # within 5 pixels of the water: not mining


# --- forest (integrated forest z-score) ------------------------------------------------------


def _forest_sample(seed: int = 0) -> np.ndarray:
    """Red, NIR, SWIR16 of 3000 pixels: 1000 forest, 1500 crops, 500 bare soil."""
    rng = np.random.default_rng(seed)
    forest = [
        rng.normal(0.03, 0.003, 1000),
        rng.normal(0.30, 0.03, 1000),
        rng.normal(0.12, 0.01, 1000),
    ]
    crops = [
        rng.normal(0.06, 0.006, 1500),
        rng.normal(0.35, 0.04, 1500),
        rng.normal(0.22, 0.02, 1500),
    ]
    soil = [rng.normal(0.15, 0.02, 500), rng.normal(0.20, 0.02, 500), rng.normal(0.30, 0.03, 500)]
    return np.stack([np.concatenate(parts) for parts in zip(forest, crops, soil, strict=True)])


def test_darker_component_splits_two_gaussians() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0.03, 0.003, 1000), rng.normal(0.06, 0.006, 1500)])
    dark = darker_component(values)
    assert dark[:1000].mean() > 0.97 and dark[1000:].mean() < 0.03


def test_forest_is_calibrated_on_the_scenes_own_dark_vegetation() -> None:
    model = _build("forest-ifz")
    fitted = model.calibrate([_forest_sample()])
    assert set(fitted) == {"forest_mean", "forest_std"}
    np.testing.assert_allclose(fitted["forest_mean"], [0.03, 0.12], atol=0.002)
    np.testing.assert_allclose(fitted["forest_std"], [0.003, 0.01], rtol=0.2)
    two = model.calibrate([_forest_sample(2) + 0.01, _forest_sample(3)])
    assert set(two) == {"forest_mean", "forest_std", "before_forest_mean", "before_forest_std"}
    assert two["before_forest_mean"][0] == pytest.approx(0.04, abs=0.002)
    # A scene with no vegetation has no forest to calibrate on, and maps none.
    bare = np.stack([np.full(500, 0.2), np.full(500, 0.25), np.full(500, 0.3)])
    assert model.calibrate([bare]) == {"forest_mean": [], "forest_std": []}
    uncalibrated = _build("forest-ifz")
    assert (_classes(uncalibrated, list(_forest_sample()[:, :5])) == 0).all()


def test_forest_class_is_vegetated_and_within_ifz_max() -> None:
    mean, std = [0.03, 0.12], [0.003, 0.01]
    model = _build("forest-ifz", forest_mean=mean, forest_std=std)
    rng = np.random.default_rng(4)
    z = rng.uniform(-5, 5, (2, 400))
    red, swir = mean[0] + z[0] * std[0], mean[1] + z[1] * std[1]
    ndvi = rng.uniform(0.3, 0.6, 400)
    red = np.abs(red) + 1e-3
    nir = red * (1 + ndvi) / (1 - ndvi)
    ifz = np.sqrt((((red - mean[0]) / std[0]) ** 2 + ((swir - mean[1]) / std[1]) ** 2) / 2)
    expected = (_nd(nir, red) >= model.ndvi_min) & (ifz <= model.ifz_max)
    far = (np.abs(ifz - model.ifz_max) > 0.01) & (np.abs(_nd(nir, red) - model.ndvi_min) > 1e-3)
    assert 50 < expected.sum() < 350
    got = _classes(model, [red, nir, swir])
    np.testing.assert_array_equal(got[far], expected[far].astype(np.int64))
    assert set(got.tolist()) <= {0, 1}  # no loss without an earlier date


def test_forest_loss_needs_forest_before_none_now_and_a_drop_in_ndmi() -> None:
    stats = {"forest_mean": [0.03, 0.12], "forest_std": [0.003, 0.01]}
    before_stats = {f"before_{k}": v for k, v in stats.items()}
    model = _build("forest-ifz", **stats, **before_stats)
    forest = (0.03, 0.30, 0.12)  # NDMI 0.43
    cleared = (0.08, 0.25, 0.25)  # NDVI 0.51, IFZ 12: not forest; NDMI 0.0
    greened = (0.06, 0.40, 0.16)  # NDVI 0.74, IFZ 4: not forest; NDMI 0.43: no drop
    cases = [(forest, cleared, 2), (forest, forest, 1), (forest, greened, 0), (cleared, cleared, 0)]
    for before, after, expected in cases:
        channels = [np.array([v]) for v in (*before, *after)]
        assert _classes(model, channels).tolist() == [expected], (before, after)


# --- burned area ---------------------------------------------------------------------------


def _fire_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 60 x 60 pre/post pair (red, nir, swir22) at 20 m: a burned disc, a harvested field.

    Returns the input [1, 6, 60, 60], and masks of the disc, the field and a gap in the disc.
    """
    yy, xx = np.mgrid[0:60, 0:60]
    disc = (yy - 25) ** 2 + (xx - 25) ** 2 < 15**2
    gap = (yy == 25) & (xx >= 22) & (xx <= 28)  # a 1-pixel line the fire skipped
    field = (yy >= 45) & (xx >= 45)
    pre = np.stack([np.full((60, 60), v) for v in (0.04, 0.30, 0.12)])  # NBR 0.43
    post = pre.copy()
    burned = disc & ~gap
    post[:, burned] = np.array([0.05, 0.12, 0.20])[:, None]  # NBR -0.25: dNBR 0.68
    post[:, field] = np.array([0.15, 0.20, 0.25])[:, None]  # NBR -0.11, red x3.75
    x = np.concatenate([pre, post]).astype(np.float32)[None]
    return x, disc, field, gap


def test_burned_area_calibrates_the_scenes_offsets_and_pixel_size() -> None:
    model = _build("fire-burned-dnbr")
    x, disc, field, _ = _fire_scene()
    samples = [x[0, :3].reshape(3, -1), x[0, 3:].reshape(3, -1)]
    fitted = model.calibrate(samples, (20.0, 20.0))
    assert fitted["dnbr_median"] == pytest.approx(0.0, abs=1e-6)  # most of it unburned
    assert fitted["red_log_median"] == pytest.approx(0.0, abs=1e-6)
    assert (fitted["pixel_w_m"], fitted["pixel_h_m"]) == (20.0, 20.0)
    calibrated = _build("fire-burned-dnbr", **fitted)
    # 3 sigma of 20 m smoothing and twice the 30 m closing, in 20 m pixels.
    assert calibrated.context_px == 6 and model.context_px == 0


def test_burned_area_fills_gaps_vetoes_brightening_and_classes_severity() -> None:
    x, disc, field, gap = _fire_scene()
    model = _build("fire-burned-dnbr", pixel_w_m=20.0, pixel_h_m=20.0)
    classes = model(x).argmax(axis=1)[0]
    inside = disc & ~gap
    assert (classes[inside & (np.abs(np.mgrid[0:60, 0:60][0] - 25) < 12)] == 6).all()  # high
    assert (classes[gap] >= 3).all()  # closed over: burned, at its own (low) severity
    assert (classes[gap] == 3).all()
    assert (classes[field] <= 2).all()  # lost NBR but brightened in red: harvest, not fire
    from scipy import ndimage

    # Unburned beyond the smoothing's reach (σ one pixel) of the disc and the field: their
    # edges spread a pixel (the field's fringe is a sliver the 20 ha minimum drops).
    reach = ndimage.binary_dilation(disc | field, iterations=2)
    assert (classes[~reach] == 2).all()
    # Without the veto the field would burn.
    no_veto = _build("fire-burned-dnbr", pixel_w_m=20.0, pixel_h_m=20.0, red_veto=100.0)
    assert (no_veto(x).argmax(axis=1)[0][field] >= 3).all()
    # No-data pixels (zeros in every band) are never burned.
    x[:, :, 20:30, 20:30] = 0.0
    hole = model(x).argmax(axis=1)[0][20:30, 20:30]
    assert (hole <= 2).all()
