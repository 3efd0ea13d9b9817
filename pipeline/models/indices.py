"""Spectral-index models: one per workflow, numpy arrays in, class scores out, no torch.

Each model thresholds one or more normalized-difference indices. Hard thresholds are softened
with logistic ramps of width ``softness`` so that the model returns graded class scores (the
confidence raster then shows how close each pixel is to a threshold) while the arg-max class is
exactly the thresholded one.

The models are plain numpy (float32, as the tiles): planning an index workflow, and the
workers that run one, never import torch. :func:`~pipeline.models.build.build_model` puts
one behind the torch interface (:class:`~pipeline.models.base.IndexModule`) for callers that
hold tensors, with the same formulas.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import numpy as np

from pipeline.models.spec import REFLECTANCE_RANGE, Calibration, ModelSpec

_EPS = np.float32(1e-6)
#: What TorchGeo's index transforms add to a normalized difference's denominator.
_ND_EPS = np.float32(1e-10)

#: A float32 array of [N, 1, H, W] (one value a pixel) or [N, K, H, W] (scores).
Array = np.ndarray


class IndexModel(ModelSpec):
    """A spectral-index model: float32 ``[N, C, H, W]`` in, ``[N, K, H, W]`` scores out.

    See :class:`~pipeline.models.spec.ModelSpec` for the input and output; subclasses write
    :meth:`scores`.
    """

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The scores of ``x`` (float32), after checking its shape."""
        self.check_input(x)
        return self.scores(np.asarray(x, dtype=np.float32))

    def scores(self, x: Array) -> Array:
        """Return the ``[N, K, H, W]`` float32 scores of a checked float32 input."""
        raise NotImplementedError


def _nd(x: Array, a: int, b: int) -> Array:
    """Normalized difference of channels ``a`` and ``b``, (A − B) / (A + B), as [N, 1, H, W].

    The formula of TorchGeo's ``AppendNormalizedDifferenceIndex`` (its epsilon included).
    """
    band_a, band_b = x[:, a : a + 1], x[:, b : b + 1]
    return (band_a - band_b) / (band_a + band_b + _ND_EPS)


def _ramp(x: Array, threshold: float, softness: float) -> Array:
    """Probability-like ramp: 0.5 at ``threshold``, rising with ``x``."""
    from scipy.special import expit

    return expit((x - np.float32(threshold)) / np.float32(softness))


def _log(p: Array) -> Array:
    return np.log(np.maximum(p, _EPS))


def _minimum(first: Array, *others: Array) -> Array:
    """Element-wise minimum of all the arrays."""
    out = first
    for other in others:
        out = np.minimum(out, other)
    return out


def _log_scores(*probabilities: Array) -> Array:
    """[N, K, H, W] scores: the logarithm of each class's [N, 1, H, W] probability."""
    return np.concatenate([_log(p) for p in probabilities], axis=1)


class ForestIndexModel(IndexModel):
    """Forest where NDVI is high and short-wave infrared is low.

    Canopy is green (high NDVI) and, unlike grass and crops of the same greenness, dark in
    SWIR 1.6 µm (shadowed, water-rich foliage). On the labelled Slovenian Sentinel-2 L1C scenes
    in ``shared/data`` the defaults (NDVI ≥ 0.55, SWIR16 ≤ 0.15) reach IoU 0.78–0.89 for forest
    against the land-use register on the three clear dates, where NDVI alone reaches 0.77–0.79.
    Classes: 0 other, 1 forest.
    """

    bands = ("red", "nir", "swir16")
    num_classes = 2
    model_id = "forest-ndvi-swir"

    def __init__(
        self, ndvi_min: float = 0.55, swir16_max: float = 0.15, softness: float = 0.02
    ) -> None:
        self.ndvi_min, self.swir16_max, self.softness = ndvi_min, swir16_max, softness

    def scores(self, x: Array) -> Array:
        """Log-probabilities of (other, forest)."""
        ndvi = _nd(x, 1, 0)
        swir = x[:, 2:3]
        # The minimum, not the product: p > 0.5 exactly where both thresholds are met.
        p = np.minimum(
            _ramp(ndvi, self.ndvi_min, self.softness),
            _ramp(-swir, -self.swir16_max, self.softness),
        )
        return _log_scores(1 - p, p)


class ForestIFZModel(IndexModel):
    """Forest by the integrated forest z-score (IFZ), and forest loss when given an earlier date.

    Huang et al. (2008, Remote Sensing of Environment 112, 970–985) and their Vegetation
    Change Tracker (Huang et al. 2010, RSE 114, 183–198): forest is the darkest vegetation in
    the red and short-wave infrared, so each scene is calibrated on its own forest. Among its
    vegetated pixels (NDVI ≥ ``ndvi_min``), the darker component of a two-Gaussian mixture of
    red reflectance gives forest samples; their mean and standard deviation in red and
    SWIR 1.6 µm (:meth:`calibrate`) turn every pixel into a z-score per band, and the IFZ, the
    root mean square of those z-scores, is at most ``ifz_max`` on forest. ``ndvi_min`` 0.45
    and ``ifz_max`` 3 are the VCT's published defaults (Google Earth Engine's
    ``TemporalSegmentation.VCT``: minNdvi, forThrMax). The samples being re-fitted per scene,
    the rule holds on top-of-atmosphere and surface reflectance, across seasons and sensors,
    and on scaled display values; it maps dense shrub, the darkest vegetation where there is
    no forest, as forest too.

    With a pre-event scene first in the input (each date calibrated on its own), a pixel that
    was forest, is not forest now and lost at least ``loss_ndmi_drop`` of its NDMI ((NIR −
    SWIR16) / (NIR + SWIR16), canopy water) is forest loss: the NDMI drop keeps pixels that
    only move across the IFZ threshold between dates (misregistration, phenology) out of it.
    The 0.1 follows the ±0.1 unchanged band of Key and Benson's dNBR. Classes: 0 other,
    1 forest, 2 forest loss.
    """

    bands = ("red", "nir", "swir16")
    accepts_before = True
    num_classes = 3
    model_id = "forest-ifz"
    value_range = MappingProxyType({b: REFLECTANCE_RANGE for b in bands})
    #: Vegetated sample pixels a scene needs for its forest to be calibrated.
    MIN_SAMPLES = 100

    def __init__(
        self,
        ndvi_min: float = 0.45,
        ifz_max: float = 3.0,
        loss_ndmi_drop: float = 0.1,
        softness: float = 0.02,
        ifz_softness: float = 0.1,
        forest_mean: Sequence[float] = (),
        forest_std: Sequence[float] = (),
        before_forest_mean: Sequence[float] = (),
        before_forest_std: Sequence[float] = (),
    ) -> None:
        self.ndvi_min, self.ifz_max, self.loss_ndmi_drop = ndvi_min, ifz_max, loss_ndmi_drop
        self.softness, self.ifz_softness = softness, ifz_softness
        self.forest = _stats(forest_mean, forest_std)
        self.before_forest = _stats(before_forest_mean, before_forest_std)

    def calibrate(
        self, samples: Sequence[np.ndarray], pixel_m: tuple[float, float] = (0.0, 0.0)
    ) -> Calibration:
        """Each date's forest mean and standard deviation in red and SWIR16 (see the class)."""
        out: Calibration = {}
        *earlier, scene = samples
        for prefix, sample in (("", scene), *(("before_", s) for s in earlier)):
            mean, std = self._forest_statistics(sample)
            out[f"{prefix}forest_mean"], out[f"{prefix}forest_std"] = mean, std
        return out

    def _forest_statistics(self, sample: np.ndarray) -> tuple[list[float], list[float]]:
        """Mean and standard deviation of (red, SWIR16) over the forest samples; none: []."""
        red, nir, swir = (np.asarray(b, dtype=np.float64) for b in sample)
        with np.errstate(divide="ignore", invalid="ignore"):
            vegetated = (nir - red) / (nir + red) >= self.ndvi_min
        if vegetated.sum() < self.MIN_SAMPLES:
            return [], []
        dark = darker_component(red[vegetated])
        if dark.sum() < self.MIN_SAMPLES:
            return [], []
        picked = np.stack([red[vegetated][dark], swir[vegetated][dark]])
        return picked.mean(axis=1).tolist(), np.maximum(picked.std(axis=1), 1e-4).tolist()

    def scores(self, x: Array) -> Array:
        """Log-probabilities of (other, forest, forest loss)."""
        n = len(self.bands)
        after = x[:, -n:]
        p_after = self._forest_probability(after, self.forest)
        if x.shape[1] == n:
            p_loss = np.zeros_like(p_after)
        else:
            before = x[:, :n]
            p_before = self._forest_probability(before, self.before_forest)
            drop = _nd(after, 2, 1) - _nd(before, 2, 1)  # NDMI drop = NDBI rise
            p_loss = _minimum(
                p_before, 1 - p_after, _ramp(drop, self.loss_ndmi_drop, self.softness)
            )
        # Minima, so that the arg-max is exactly the rule: loss where all its tests hold, then
        # forest or other by the forest test.
        kept = 1 - p_loss
        return _log_scores(np.minimum(kept, 1 - p_after), np.minimum(kept, p_after), p_loss)

    def _forest_probability(self, x: Array, stats: tuple[Array, Array] | None) -> Array:
        """[N, 1, H, W]: above 0.5 exactly where vegetated and the IFZ is at most ``ifz_max``."""
        if stats is None:  # a scene without forest to calibrate on has none
            return np.zeros_like(x[:, :1])
        mean, std = stats
        z = (x[:, [0, 2]] - mean) / std
        ifz = np.sqrt((z * z).mean(axis=1, keepdims=True))
        return np.minimum(
            _ramp(_nd(x, 1, 0), self.ndvi_min, self.softness),
            _ramp(-ifz, -self.ifz_max, self.ifz_softness),
        )


def _pixels(metres: float, pixel_m: tuple[float, float]) -> int:
    """Pixels that ``metres`` spans along the grid's shorter pixel side (0 if unknown)."""
    if metres <= 0 or min(pixel_m) <= 0:
        return 0
    return int(np.ceil(metres / min(pixel_m)))


def _within(mask: Array, metres: float, pixel_m: tuple[float, float]) -> Array:
    """[N, 1, H, W]: True within ``metres`` (Euclidean) of a True pixel of ``mask``."""
    from scipy import ndimage

    sampling = (pixel_m[1], pixel_m[0])  # rows, then columns
    return np.stack(
        [
            [ndimage.distance_transform_edt(~m, sampling=sampling) <= metres if m.any() else m]
            for m in mask[:, 0]
        ]
    )


def _stats(mean: Sequence[float], std: Sequence[float]) -> tuple[Array, Array] | None:
    """Calibrated (mean, std) of (red, SWIR16) as float32 [1, 2, 1, 1]; None if not calibrated."""
    if len(mean) == 0:
        return None
    if len(mean) != 2 or len(std) != 2 or min(std) <= 0:
        raise ValueError("forest statistics need two means and two positive standard deviations")
    shape = (1, 2, 1, 1)
    return (
        np.asarray(mean, dtype=np.float32).reshape(shape),
        np.asarray(std, dtype=np.float32).reshape(shape),
    )


def darker_component(values: np.ndarray, iterations: int = 200) -> np.ndarray:
    """Which ``values`` belong to the darker of two Gaussians fitted to them (posterior ≥ 0.5).

    Expectation-maximisation from the 25th and 75th percentiles, on the values rounded to
    1e-4 and weighted by their counts (the same fit, far fewer points).
    """
    x = np.round(np.asarray(values, dtype=np.float64), 4)
    levels, counts = np.unique(x, return_counts=True)
    if len(levels) < 2:
        return np.ones(x.shape, dtype=bool)
    weights = counts.astype(np.float64)
    mu = np.percentile(x, [25, 75]).astype(np.float64)
    sd = np.full(2, max(x.std() / 2, 1e-4))
    share = np.array([0.5, 0.5])
    for _ in range(iterations):
        dark = _posterior(levels, share, mu, sd)
        resp = np.stack([dark, 1 - dark], axis=1) * weights[:, None]
        total = np.maximum(resp.sum(axis=0), 1e-12)
        new_mu = (resp * levels[:, None]).sum(axis=0) / total
        sd = np.sqrt((resp * (levels[:, None] - new_mu) ** 2).sum(axis=0) / total) + 1e-9
        share = total / weights.sum()
        converged = np.allclose(new_mu, mu, rtol=0, atol=1e-7)
        mu = new_mu
        if converged:
            break
    if mu[0] > mu[1]:
        mu, sd, share = mu[::-1], sd[::-1], share[::-1]
    return _posterior(x, share, mu, sd) >= 0.5


def _posterior(x: np.ndarray, share: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Posterior probability of the first of two Gaussians at ``x``."""
    density = share / sd * np.exp(-0.5 * ((x[:, None] - mu) / sd) ** 2)
    return density[:, 0] / np.maximum(density.sum(axis=1), 1e-300)


class FireSeverityModel(IndexModel):
    """Burn severity from dNBR (pre-fire NBR minus post-fire NBR), classed after Key and Benson.

    The USGS FIREMON classes, from ``boundaries`` (dNBR, ascending): 0 enhanced regrowth (high),
    1 enhanced regrowth (low), 2 unburned, 3 low severity, 4 moderate-low severity,
    5 moderate-high severity, 6 high severity. A class's score is minus the distance from the
    pixel's dNBR to the class's dNBR interval, in units of ``softness``: 0 inside the interval,
    so the arg-max is exactly the Key and Benson class however narrow an interval is, and the
    confidence falls towards 50 % as dNBR nears a boundary.
    """

    bands = ("nir", "swir22")
    needs_before = True
    num_classes = 7
    model_id = "fire-dnbr"

    def __init__(
        self,
        boundaries: Sequence[float] = (-0.25, -0.1, 0.1, 0.27, 0.44, 0.66),
        softness: float = 0.02,
    ) -> None:
        bounds = [float(b) for b in boundaries]
        if len(bounds) != self.num_classes - 1 or bounds != sorted(bounds):
            raise ValueError(
                f"boundaries must be {self.num_classes - 1} ascending dNBR values, got {bounds}"
            )
        self.boundaries, self.softness = bounds, softness

    def dnbr(self, x: Array) -> Array:
        """DNBR of a checked input as [N, 1, H, W]: the NBR before minus the NBR after."""
        return _nd(x, 0, 1) - _nd(x, 2, 3)

    def scores(self, x: Array) -> Array:
        """Scores of the severity classes."""
        return self.interval_scores(self.dnbr(x))

    def interval_scores(self, d: Array) -> Array:
        """[N, 7, H, W]: minus each pixel's dNBR ``d`` distance to each class's interval."""
        inf = float("inf")
        lows = [-inf, *self.boundaries]
        highs = [*self.boundaries, inf]
        zero, softness = np.float32(0), np.float32(self.softness)
        scores = [
            -(np.maximum(np.float32(low) - d, zero) + np.maximum(d - np.float32(high), zero))
            / softness
            for low, high in zip(lows, highs, strict=True)
        ]
        return np.concatenate(scores, axis=1)


class BurnedAreaModel(IndexModel):
    """Burned area decided on the scene as a whole, its severity classed after Key and Benson.

    The burned/unburned decision, chosen leave-one-fire-out on the nine CAL FIRE fires of
    ``shared/data/fire`` (``BENCHMARKS.md``, "Fire"; every size in metres, so it holds at any
    pixel size):

    1. dNBR offset: the scene's median dNBR is taken off every pixel (Miller and Thode 2007;
       Parks et al. 2014), since most of a scene is unburned and phenology moves them all;
    2. the offset dNBR smoothed by a Gaussian of ``smoothing_m`` (over pixels with data);
    3. candidates where it exceeds ``burn_threshold``, unless red brightened by more than
       ``red_veto`` in log ratio, again against the scene's median: fields harvested or
       ploughed between the dates lose NBR like a burn, but brighten in red where char darkens;
    4. a morphological closing of ``closing_m`` joins what the fire burned in patches.

    Perimeters hold their unburned islands and no specks: the workflow fills holes and drops
    patches under 20 ha when it makes polygons of the burned classes together (its
    ``polygons:``). Burned pixels take the Key and Benson class of their offset dNBR (low
    severity at least), unburned ones the class of enhanced regrowth or unburned. Classes as
    :class:`FireSeverityModel`'s. The scene medians and pixel size are fitted per run
    (:meth:`calibrate`).
    """

    bands = ("red", "nir", "swir22")
    needs_before = True
    num_classes = 7
    model_id = "fire-burned-dnbr"
    value_range = MappingProxyType({b: REFLECTANCE_RANGE for b in bands})
    #: The first burned class (low severity); classes below it are unburned.
    FIRST_BURNED = 3

    def __init__(
        self,
        boundaries: Sequence[float] = (-0.25, -0.1, 0.1, 0.27, 0.44, 0.66),
        burn_threshold: float = 0.05,
        red_veto: float = 0.75,
        smoothing_m: float = 20.0,
        closing_m: float = 30.0,
        softness: float = 0.02,
        dnbr_median: float = 0.0,
        red_log_median: float = 0.0,
        pixel_w_m: float = 0.0,
        pixel_h_m: float = 0.0,
    ) -> None:
        self.severity = FireSeverityModel(boundaries, softness)
        self.burn_threshold, self.red_veto = burn_threshold, red_veto
        self.smoothing_m, self.closing_m, self.softness = smoothing_m, closing_m, softness
        self.dnbr_median, self.red_log_median = dnbr_median, red_log_median
        self.pixel_m = (pixel_w_m, pixel_h_m)

    @property
    def context_px(self) -> int:
        """Pixels of context a tile needs: the smoothing's reach and the closing's, twice."""
        return _pixels(3 * self.smoothing_m + 2 * self.closing_m, self.pixel_m)

    def calibrate(
        self, samples: Sequence[np.ndarray], pixel_m: tuple[float, float] = (0.0, 0.0)
    ) -> Calibration:
        """The scene's median dNBR and median red log ratio, and the grid's pixel size."""
        before, after = (np.asarray(s, dtype=np.float64) for s in samples)
        with np.errstate(divide="ignore", invalid="ignore"):
            dnbr = _nbr(before[1], before[2]) - _nbr(after[1], after[2])
            red = _log_ratio(after[0], before[0])
        finite = np.isfinite(dnbr)
        return {
            "dnbr_median": float(np.median(dnbr[finite])) if finite.any() else 0.0,
            "red_log_median": float(np.median(red[finite])) if finite.any() else 0.0,
            "pixel_w_m": float(pixel_m[0]),
            "pixel_h_m": float(pixel_m[1]),
        }

    def scores(self, x: Array) -> Array:
        """Key and Benson classes' scores, burned ones only where the scene burned."""
        n = len(self.bands)
        before, after = x[:, :n], x[:, n:]
        # The reader gives no-data as zeros in every band.
        valid = (before != 0).any(axis=1, keepdims=True) & (after != 0).any(axis=1, keepdims=True)
        dnbr = _nbr_date(before) - _nbr_date(after) - np.float32(self.dnbr_median)
        smooth = _gaussian(np.where(valid, dnbr, 0), valid, self.smoothing_m, self.pixel_m)
        floor = np.float32(1e-4)
        red = np.log(np.maximum(after[:, :1], floor) / np.maximum(before[:, :1], floor))
        candidate = valid & (smooth > np.float32(self.burn_threshold))
        candidate &= (red - np.float32(self.red_log_median)) < np.float32(self.red_veto)
        burned = _closing(candidate, self.closing_m, self.pixel_m) & valid
        scores = self.severity.interval_scores(dnbr)
        # A class on the wrong side of the burned decision is out of reach, however close its
        # dNBR interval: 40 units below the best class on the right side.
        value = np.arange(self.num_classes).reshape(1, -1, 1, 1)
        wrong = np.where(burned, value < self.FIRST_BURNED, value >= self.FIRST_BURNED)
        best = np.where(wrong, -np.inf, scores).max(axis=1, keepdims=True)
        return np.where(wrong, best - np.float32(40), scores).astype(np.float32, copy=False)


def _nbr(nir: np.ndarray, swir22: np.ndarray) -> np.ndarray:
    return (nir - swir22) / (nir + swir22)


def _log_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(a, 1e-4) / np.maximum(b, 1e-4))


def _nbr_date(x: Array) -> Array:
    """NBR of a [N, (red, nir, swir22), H, W] date, 0 where both bands are 0."""
    nir, swir = x[:, 1:2], x[:, 2:3]
    return (nir - swir) / np.maximum(nir + swir, _EPS)


def _gaussian(values: Array, valid: Array, sigma_m: float, pixel_m: tuple[float, float]) -> Array:
    """``values`` smoothed by a Gaussian of ``sigma_m`` metres, normalised over ``valid``."""
    from scipy import ndimage

    if sigma_m <= 0 or min(pixel_m) <= 0:
        return values
    num = values * valid
    den = valid.astype(values.dtype)
    for axis, size in ((3, pixel_m[0]), (2, pixel_m[1])):
        sigma = sigma_m / size
        radius = int(np.ceil(3 * sigma))
        taps = np.arange(-radius, radius + 1, dtype=np.float32)
        kernel = np.exp(np.float32(-0.5) * (taps / np.float32(sigma)) ** 2)
        kernel /= kernel.sum()
        # "nearest": the edge value repeated, as a replicate padding.
        num = ndimage.correlate1d(num, kernel, axis=axis, mode="nearest")
        den = ndimage.correlate1d(den, kernel, axis=axis, mode="nearest")
    return np.where(valid, num / np.maximum(den, np.float32(1e-6)), np.float32(0))


def _closing(mask: Array, radius_m: float, pixel_m: tuple[float, float]) -> Array:
    """Morphological closing of ``mask`` by a disk of ``radius_m`` metres (Euclidean)."""
    if radius_m <= 0 or min(pixel_m) <= 0:
        return mask
    grown = _within(mask, radius_m, pixel_m)
    return ~_within(~grown, radius_m, pixel_m)


class MiningBareGroundModel(IndexModel):
    """New bare ground: vegetated before, bare soil or rock now, away from water.

    Open-pit and alluvial mining strips vegetation and exposes soil and rock, which is bright
    in SWIR 1.6 µm relative to NIR (NDBI = (SWIR16 − NIR) / (SWIR16 + NIR) high) and no longer
    green (NDVI low). A pixel is new bare ground where NDVI before ≥ ``ndvi_before_min``, NDVI
    now ≤ ``ndvi_after_max`` and NDBI now ≥ ``ndbi_after_min`` (change), NDBI before
    < ``ndbi_before_max`` (not bare in both dates), it is not water in either date (MNDWI =
    (green − SWIR16) / (green + SWIR16) ≤ ``mndwi_max``; Xu 2006), and no water of either date
    lies within ``water_buffer_m``: a river that moves lays sandbars on what was floodplain
    forest, which is new bare ground to every other test. The buffer's 500 m is the distance
    out to which such sandbars lay on the Pucallpa series (479 m at most), so it was set on
    that river: wider rivers may need more, and it hides alluvial mining beside a channel.
    It cannot tell mining from other clearing that leaves soil bare (construction, roads,
    ploughed fields, landslides). Classes: 0 other, 1 new bare ground.
    """

    bands = ("green", "red", "nir", "swir16")
    needs_before = True
    num_classes = 2
    model_id = "mining-bare-ground"
    value_range = MappingProxyType({b: REFLECTANCE_RANGE for b in bands})

    def __init__(
        self,
        ndvi_before_min: float = 0.5,
        ndvi_after_max: float = 0.25,
        ndbi_after_min: float = -0.05,
        ndbi_before_max: float = 0.0,
        mndwi_max: float = 0.0,
        water_buffer_m: float = 500.0,
        softness: float = 0.03,
        pixel_w_m: float = 0.0,
        pixel_h_m: float = 0.0,
    ) -> None:
        self.ndvi_before_min, self.ndvi_after_max = ndvi_before_min, ndvi_after_max
        self.ndbi_after_min, self.ndbi_before_max = ndbi_after_min, ndbi_before_max
        self.mndwi_max, self.water_buffer_m = mndwi_max, water_buffer_m
        self.softness, self.pixel_m = softness, (pixel_w_m, pixel_h_m)

    @property
    def context_px(self) -> int:
        """Pixels of context a tile needs around its block: the water buffer."""
        return _pixels(self.water_buffer_m, self.pixel_m)

    def calibrate(
        self, samples: Sequence[np.ndarray], pixel_m: tuple[float, float] = (0.0, 0.0)
    ) -> Calibration:
        """The grid's pixel size, which the water buffer is measured in."""
        return {"pixel_w_m": float(pixel_m[0]), "pixel_h_m": float(pixel_m[1])}

    def scores(self, x: Array) -> Array:
        """Log-probabilities of (other, new bare ground)."""
        n = len(self.bands)
        before, after = x[:, :n], x[:, n:]
        s = self.softness

        def ndvi(date: Array) -> Array:
            return _nd(date, 2, 1)

        def ndbi(date: Array) -> Array:
            return _nd(date, 3, 2)

        tests = [
            _ramp(ndvi(before), self.ndvi_before_min, s),
            _ramp(-ndvi(after), -self.ndvi_after_max, s),
            _ramp(ndbi(after), self.ndbi_after_min, s),
            _ramp(-ndbi(before), -self.ndbi_before_max, s),
        ]
        wet = [_nd(date, 0, 3) for date in (before, after)]  # MNDWI: green against SWIR16
        tests += [_ramp(-w, -self.mndwi_max, s) for w in wet]
        wet_above = np.float32(self.mndwi_max)
        water = (wet[0] > wet_above) | (wet[1] > wet_above)
        tests.append(1 - self._near(water).astype(np.float32))
        # The minimum, not the product: p > 0.5 exactly where every test holds.
        p = _minimum(*tests)
        return _log_scores(1 - p, p)

    def _near(self, water: Array) -> Array:
        """[N, 1, H, W]: True within ``water_buffer_m`` of a water pixel (Euclidean, in metres).

        Without the grid's pixel size (an uncalibrated model) only water itself.
        """
        if self.water_buffer_m <= 0 or min(self.pixel_m) <= 0:
            return water
        return _within(water, self.water_buffer_m, self.pixel_m)


#: Index models by the name a workflow's ``model.name`` uses.
INDEX_MODELS: dict[str, type[IndexModel]] = {
    "forest-ifz": ForestIFZModel,
    "forest-ndvi-swir": ForestIndexModel,
    "fire-burned-dnbr": BurnedAreaModel,
    "fire-dnbr": FireSeverityModel,
    "mining-bare-ground": MiningBareGroundModel,
}

__all__ = [
    "INDEX_MODELS",
    "BurnedAreaModel",
    "FireSeverityModel",
    "ForestIFZModel",
    "ForestIndexModel",
    "IndexModel",
    "MiningBareGroundModel",
    "darker_component",
]
