"""Spectral-index models: one per workflow, built on TorchGeo's index transforms.

Each model thresholds one or more normalized-difference indices. Hard thresholds are softened
with logistic ramps of width ``softness`` so that the model returns graded class scores (the
confidence raster then shows how close each pixel is to a threshold) while the arg-max class is
exactly the thresholded one.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import numpy as np
import torch
from torchgeo.transforms import AppendNBR, AppendNDBI, AppendNDSI, AppendNDVI

from pipeline.models.base import REFLECTANCE_RANGE, Calibration, SegmentationModel

_EPS = 1e-6


def _ramp(x: torch.Tensor, threshold: float, softness: float) -> torch.Tensor:
    """Probability-like ramp: 0.5 at ``threshold``, rising with ``x``."""
    return torch.sigmoid((x - threshold) / softness)


def _log(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p.clamp_min(_EPS))


def _last(x: torch.Tensor) -> torch.Tensor:
    """The channel an ``Append*`` transform just added, as [N, 1, H, W]."""
    return x[:, -1:, :, :]


class ForestIndexModel(SegmentationModel):
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
        super().__init__()
        self.ndvi_min, self.swir16_max, self.softness = ndvi_min, swir16_max, softness
        self.ndvi = AppendNDVI(index_nir=1, index_red=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return [N, 2, H, W] log-probabilities of (other, forest)."""
        self.check_input(x)
        ndvi = _last(self.ndvi(x))
        swir = x[:, 2:3]
        # The minimum, not the product: p > 0.5 exactly where both thresholds are met.
        p = torch.minimum(
            _ramp(ndvi, self.ndvi_min, self.softness),
            _ramp(-swir, -self.swir16_max, self.softness),
        )
        return torch.cat([_log(1 - p), _log(p)], dim=1)


class ForestIFZModel(SegmentationModel):
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
        super().__init__()
        self.ndvi_min, self.ifz_max, self.loss_ndmi_drop = ndvi_min, ifz_max, loss_ndmi_drop
        self.softness, self.ifz_softness = softness, ifz_softness
        self.forest = _stats(forest_mean, forest_std)
        self.before_forest = _stats(before_forest_mean, before_forest_std)
        self.ndvi = AppendNDVI(index_nir=1, index_red=0)
        self.ndbi = AppendNDBI(index_swir=2, index_nir=1)

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return [N, 3, H, W] log-probabilities of (other, forest, forest loss)."""
        self.check_input(x)
        n = len(self.bands)
        after = x[:, -n:]
        p_after = self._forest_probability(after, self.forest)
        if x.shape[1] == n:
            p_loss = torch.zeros_like(p_after)
        else:
            before = x[:, :n]
            p_before = self._forest_probability(before, self.before_forest)
            drop = _last(self.ndbi(after)) - _last(self.ndbi(before))  # NDMI = −NDBI
            p_loss = torch.minimum(
                torch.minimum(p_before, 1 - p_after),
                _ramp(drop, self.loss_ndmi_drop, self.softness),
            )
        # Minima, so that the arg-max is exactly the rule: loss where all its tests hold, then
        # forest or other by the forest test.
        kept = 1 - p_loss
        scores = [torch.minimum(kept, 1 - p_after), torch.minimum(kept, p_after), p_loss]
        return torch.cat([_log(p) for p in scores], dim=1)

    def _forest_probability(
        self, x: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        """[N, 1, H, W]: above 0.5 exactly where vegetated and the IFZ is at most ``ifz_max``."""
        if stats is None:  # a scene without forest to calibrate on has none
            return torch.zeros_like(x[:, :1])
        mean, std = stats
        z = (x[:, [0, 2]] - mean.to(x)) / std.to(x)
        ifz = torch.sqrt((z * z).mean(dim=1, keepdim=True))
        return torch.minimum(
            _ramp(_last(self.ndvi(x)), self.ndvi_min, self.softness),
            _ramp(-ifz, -self.ifz_max, self.ifz_softness),
        )


def _pixels(metres: float, pixel_m: tuple[float, float]) -> int:
    """Pixels that ``metres`` spans along the grid's shorter pixel side (0 if unknown)."""
    if metres <= 0 or min(pixel_m) <= 0:
        return 0
    return int(np.ceil(metres / min(pixel_m)))


def _within(mask: torch.Tensor, metres: float, pixel_m: tuple[float, float]) -> torch.Tensor:
    """[N, 1, H, W]: True within ``metres`` (Euclidean) of a True pixel of ``mask``."""
    from scipy import ndimage

    sampling = (pixel_m[1], pixel_m[0])  # rows, then columns
    near = np.stack(
        [
            [ndimage.distance_transform_edt(~m, sampling=sampling) <= metres if m.any() else m]
            for m in mask.cpu().numpy()[:, 0]
        ]
    )
    return torch.from_numpy(near).to(mask.device)


def _stats(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Calibrated (mean, std) of (red, SWIR16) as [1, 2, 1, 1] tensors; None if not calibrated."""
    if len(mean) == 0:
        return None
    if len(mean) != 2 or len(std) != 2 or min(std) <= 0:
        raise ValueError("forest statistics need two means and two positive standard deviations")
    shape = (1, 2, 1, 1)
    return torch.tensor(mean).reshape(shape), torch.tensor(std).reshape(shape)


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


class FireSeverityModel(SegmentationModel):
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
        super().__init__()
        bounds = [float(b) for b in boundaries]
        if len(bounds) != self.num_classes - 1 or bounds != sorted(bounds):
            raise ValueError(
                f"boundaries must be {self.num_classes - 1} ascending dNBR values, got {bounds}"
            )
        self.boundaries, self.softness = bounds, softness
        self.nbr_before = AppendNBR(index_nir=0, index_swir=1)
        self.nbr_after = AppendNBR(index_nir=2, index_swir=3)

    def dnbr(self, x: torch.Tensor) -> torch.Tensor:
        """DNBR as [N, 1, H, W]."""
        self.check_input(x)
        before = _last(self.nbr_before(x))
        after = _last(self.nbr_after(x))
        return before - after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return [N, 7, H, W] scores of the severity classes."""
        return self.interval_scores(self.dnbr(x))

    def interval_scores(self, d: torch.Tensor) -> torch.Tensor:
        """[N, 7, H, W]: minus each pixel's dNBR ``d`` distance to each class's interval."""
        inf = float("inf")
        lows = [-inf, *self.boundaries]
        highs = [*self.boundaries, inf]
        scores = [
            -(torch.relu(low - d) + torch.relu(d - high)) / self.softness
            for low, high in zip(lows, highs, strict=True)
        ]
        return torch.cat(scores, dim=1)


class BurnedAreaModel(SegmentationModel):
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
        super().__init__()
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return [N, 7, H, W] scores: Key and Benson classes, burned ones only where burned."""
        self.check_input(x)
        n = len(self.bands)
        before, after = x[:, :n], x[:, n:]
        # The reader gives no-data as zeros in every band.
        valid = (before != 0).any(dim=1, keepdim=True) & (after != 0).any(dim=1, keepdim=True)
        dnbr = _nbr_t(before) - _nbr_t(after) - self.dnbr_median
        smooth = _gaussian(torch.where(valid, dnbr, 0.0), valid, self.smoothing_m, self.pixel_m)
        red = torch.log(after[:, :1].clamp_min(1e-4) / before[:, :1].clamp_min(1e-4))
        candidate = valid & (smooth > self.burn_threshold)
        candidate &= (red - self.red_log_median) < self.red_veto
        burned = _closing(candidate, self.closing_m, self.pixel_m) & valid
        scores = self.severity.interval_scores(dnbr)
        # A class on the wrong side of the burned decision is out of reach, however close its
        # dNBR interval: 40 units below the best class on the right side.
        value = torch.arange(self.num_classes, device=x.device).reshape(1, -1, 1, 1)
        wrong = torch.where(burned, value < self.FIRST_BURNED, value >= self.FIRST_BURNED)
        best = torch.where(wrong, -torch.inf, scores).amax(dim=1, keepdim=True)
        return torch.where(wrong, best - 40.0, scores)


def _nbr(nir: np.ndarray, swir22: np.ndarray) -> np.ndarray:
    return (nir - swir22) / (nir + swir22)


def _log_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(a, 1e-4) / np.maximum(b, 1e-4))


def _nbr_t(x: torch.Tensor) -> torch.Tensor:
    """NBR of a [N, (red, nir, swir22), H, W] date, 0 where both bands are 0."""
    nir, swir = x[:, 1:2], x[:, 2:3]
    return (nir - swir) / (nir + swir).clamp_min(_EPS)


def _gaussian(
    values: torch.Tensor, valid: torch.Tensor, sigma_m: float, pixel_m: tuple[float, float]
) -> torch.Tensor:
    """``values`` smoothed by a Gaussian of ``sigma_m`` metres, normalised over ``valid``."""
    if sigma_m <= 0 or min(pixel_m) <= 0:
        return values
    weight = valid.to(values.dtype)
    num, den = values * weight, weight
    for axis, size in ((3, pixel_m[0]), (2, pixel_m[1])):
        sigma = sigma_m / size
        radius = int(np.ceil(3 * sigma))
        taps = torch.arange(-radius, radius + 1, dtype=values.dtype, device=values.device)
        kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
        kernel = (kernel / kernel.sum()).reshape((1, 1, -1, 1) if axis == 2 else (1, 1, 1, -1))
        pad = (0, 0, radius, radius) if axis == 2 else (radius, radius, 0, 0)
        num = torch.nn.functional.conv2d(
            torch.nn.functional.pad(num, pad, mode="replicate"), kernel
        )
        den = torch.nn.functional.conv2d(
            torch.nn.functional.pad(den, pad, mode="replicate"), kernel
        )
    return torch.where(valid, num / den.clamp_min(1e-6), 0.0)


def _closing(mask: torch.Tensor, radius_m: float, pixel_m: tuple[float, float]) -> torch.Tensor:
    """Morphological closing of ``mask`` by a disk of ``radius_m`` metres (Euclidean)."""
    if radius_m <= 0 or min(pixel_m) <= 0:
        return mask
    grown = _within(mask, radius_m, pixel_m)
    return ~_within(~grown, radius_m, pixel_m)


class MiningBareGroundModel(SegmentationModel):
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
        super().__init__()
        self.ndvi_before_min, self.ndvi_after_max = ndvi_before_min, ndvi_after_max
        self.ndbi_after_min, self.ndbi_before_max = ndbi_after_min, ndbi_before_max
        self.mndwi_max, self.water_buffer_m = mndwi_max, water_buffer_m
        self.softness, self.pixel_m = softness, (pixel_w_m, pixel_h_m)
        self.ndvi = AppendNDVI(index_nir=2, index_red=1)
        self.ndbi = AppendNDBI(index_swir=3, index_nir=2)
        self.mndwi = AppendNDSI(index_green=0, index_swir=3)  # the same ratio as snow's NDSI

    @property
    def context_px(self) -> int:
        """Pixels of context a tile needs around its block: the water buffer."""
        return _pixels(self.water_buffer_m, self.pixel_m)

    def calibrate(
        self, samples: Sequence[np.ndarray], pixel_m: tuple[float, float] = (0.0, 0.0)
    ) -> Calibration:
        """The grid's pixel size, which the water buffer is measured in."""
        return {"pixel_w_m": float(pixel_m[0]), "pixel_h_m": float(pixel_m[1])}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return [N, 2, H, W] log-probabilities of (other, new bare ground)."""
        self.check_input(x)
        n = len(self.bands)
        before, after = x[:, :n], x[:, n:]
        s = self.softness
        tests = [
            _ramp(_last(self.ndvi(before)), self.ndvi_before_min, s),
            _ramp(-_last(self.ndvi(after)), -self.ndvi_after_max, s),
            _ramp(_last(self.ndbi(after)), self.ndbi_after_min, s),
            _ramp(-_last(self.ndbi(before)), -self.ndbi_before_max, s),
        ]
        wet = [_last(self.mndwi(date)) for date in (before, after)]
        tests += [_ramp(-w, -self.mndwi_max, s) for w in wet]
        water = (wet[0] > self.mndwi_max) | (wet[1] > self.mndwi_max)
        tests.append(1 - self._near(water).to(x.dtype))
        # The minimum, not the product: p > 0.5 exactly where every test holds.
        p = tests[0]
        for t in tests[1:]:
            p = torch.minimum(p, t)
        return torch.cat([_log(1 - p), _log(p)], dim=1)

    def _near(self, water: torch.Tensor) -> torch.Tensor:
        """[N, 1, H, W]: True within ``water_buffer_m`` of a water pixel (Euclidean, in metres).

        Without the grid's pixel size (an uncalibrated model) only water itself.
        """
        if self.water_buffer_m <= 0 or min(self.pixel_m) <= 0:
            return water
        return _within(water, self.water_buffer_m, self.pixel_m)


#: Index models by the name a workflow's ``model.name`` uses.
INDEX_MODELS: dict[str, type[SegmentationModel]] = {
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
    "darker_component",
    "MiningBareGroundModel",
]
