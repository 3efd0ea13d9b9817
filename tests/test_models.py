from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import GeosegError, ModelError
from pipeline.models import SegmentationModel, build_model
from pipeline.models.indices import (
    FireSeverityModel,
    ForestIndexModel,
    MiningBareGroundModel,
)
from pipeline.workflow import IndexModelConfig, load_workflow

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"

#: Key & Benson (2006) dNBR class boundaries (USGS FIREMON), as shipped in workflows/fire.yaml.
KEY_BENSON = (-0.25, -0.1, 0.1, 0.27, 0.44, 0.66)

SHIPPED = {
    "forest-ndvi-swir": (ForestIndexModel, ("red", "nir", "swir16"), False, 2),
    "fire-dnbr": (FireSeverityModel, ("nir", "swir22"), True, 7),
    "mining-bare-ground": (MiningBareGroundModel, ("red", "nir", "swir16"), True, 2),
}


def _build(name: str, **params: float | list[float]) -> SegmentationModel:
    return build_model(IndexModelConfig(kind="index", name=name, params=params))


def _run(model: SegmentationModel, channels: list[np.ndarray]) -> torch.Tensor:
    """Stack 1-D per-channel arrays into a [1, C, 1, P] input and return the model's scores."""
    x = np.stack([np.asarray(c, dtype=np.float32) for c in channels])[None, :, None, :]
    with torch.no_grad():
        return model(torch.from_numpy(x))


def _classes(model: SegmentationModel, channels: list[np.ndarray]) -> np.ndarray:
    return _run(model, channels).argmax(dim=1)[0, 0].numpy()


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
    assert isinstance(model, SegmentationModel)
    assert not model.training
    assert model.model_id == name
    assert model.bands == bands
    assert model.needs_before is needs_before
    assert model.num_classes == k
    assert model.in_channels == len(bands) * (2 if needs_before else 1)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_output_shape(name: str) -> None:
    model = _build(name)
    x = torch.rand(3, model.in_channels, 5, 7) * 0.5 + 0.01
    with torch.no_grad():
        out = model(x)
    assert tuple(out.shape) == (3, model.num_classes, 5, 7)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_output_shape_channels_last(name: str) -> None:
    model = _build(name)
    x = (torch.rand(1, model.in_channels, 4, 6) * 0.5 + 0.01).contiguous(
        memory_format=torch.channels_last
    )
    with torch.no_grad():
        assert tuple(model(x).shape) == (1, model.num_classes, 4, 6)


@pytest.mark.parametrize(
    ("workflow", "cls", "attrs"),
    [
        ("forest", ForestIndexModel, {"ndvi_min": 0.55, "swir16_max": 0.15, "softness": 0.02}),
        ("fire", FireSeverityModel, {"boundaries": list(KEY_BENSON), "softness": 0.02}),
        (
            "mining",
            MiningBareGroundModel,
            {
                "ndvi_before_min": 0.5,
                "ndvi_after_max": 0.25,
                "ndbi_after_min": -0.05,
                "softness": 0.03,
            },
        ),
    ],
)
def test_build_model_from_shipped_workflow(
    workflow: str, cls: type[SegmentationModel], attrs: dict[str, object]
) -> None:
    wf = load_workflow(str(WORKFLOWS / f"{workflow}.yaml"))
    model = build_model(wf.model)
    assert type(model) is cls
    assert not model.training
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
    x = torch.rand(1, model.in_channels + shape_delta, 4, 4) + 0.01
    with pytest.raises(ValueError, match=rf"expects \[N, {model.in_channels}, H, W\]"):
        model(x)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_three_dimensional_input_raises_value_error(name: str) -> None:
    model = _build(name)
    with pytest.raises(ValueError, match="expects"):
        model(torch.rand(model.in_channels, 4, 4) + 0.01)


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
    prob = torch.softmax(_run(model, [red, nir, np.full(4, 0.005)]), dim=1)[0, 1, 0].numpy()
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
    logits = _run(model, inputs)[0, :, 0].numpy().astype(np.float64)  # [7, P]
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
    with torch.no_grad():
        got = model.dnbr(torch.from_numpy(x)).numpy()
    expected = _nd(x[:, 0], x[:, 1]) - _nd(x[:, 2], x[:, 3])
    np.testing.assert_allclose(got[:, 0], expected, atol=1e-5)


# --- mining ---------------------------------------------------------------------------------

VEGETATED = (0.04, 0.40, 0.15)  # red, nir, swir16: NDVI 0.82
BARE = (0.15, 0.20, 0.30)  # NDVI 0.14, NDBI 0.2
WATER = (0.05, 0.03, 0.01)  # NDVI -0.25, NDBI -0.5
DRY_GRASS = (0.10, 0.16, 0.25)  # NDVI 0.23 before: not vegetated enough


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (VEGETATED, BARE, 1),
        (VEGETATED, WATER, 0),
        (VEGETATED, VEGETATED, 0),
        (BARE, BARE, 0),
        (DRY_GRASS, BARE, 0),
    ],
)
def test_mining_cases(
    before: tuple[float, float, float], after: tuple[float, float, float], expected: int
) -> None:
    model = _build("mining-bare-ground")
    assert isinstance(model, MiningBareGroundModel)
    # The cases must be what their names say under the model's own thresholds.
    ndvi_b = _nd(np.array(before[1]), np.array(before[0]))
    ndvi_a = _nd(np.array(after[1]), np.array(after[0]))
    ndbi_a = _nd(np.array(after[2]), np.array(after[1]))
    independent = (
        (ndvi_b >= model.ndvi_before_min)
        and (ndvi_a <= model.ndvi_after_max)
        and (ndbi_a >= model.ndbi_after_min)
    )
    assert int(independent) == expected
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
    swir_b = np.full(len(db), 0.15)
    expected = (
        (_nd(nir_b, red_b) >= model.ndvi_before_min)
        & (_nd(nir_a, red_a) <= model.ndvi_after_max)
        & (_nd(swir_a, nir_a) >= model.ndbi_after_min)
    )
    got = _classes(model, [red_b, nir_b, swir_b, red_a, nir_a, swir_a])
    np.testing.assert_array_equal(got, expected.astype(np.int64))
