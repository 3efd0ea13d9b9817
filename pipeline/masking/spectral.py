"""A spectral cloud test, for scenes without a quality band or the bands of the networks.

The potential-cloud tests of Fmask (Zhu and Woodcock 2012, Remote Sensing of Environment
118, eq. 1, 2 and 4) that need no blue or thermal band: not green vegetation (NDVI < 0.8),
not snow (NDSI < 0.8) and white (the visible bands' summed absolute deviation over their
mean < 0.7). Fmask's haze test needs blue; in its place the scene must be bright (mean
visible reflectance > 0.2, which dark grey surfaces fail), and Fmask's NIR / SWIR16 > 0.75
is tightened to > 1: soil, sand and rock are brighter at 1.6 µm than in the NIR, clouds
are not. Thin cloud and haze over vegetation are missed, and shadows are not detected: the
networks (:mod:`.network`) find both where the scene has their bands.
"""

from __future__ import annotations

import numpy as np

from pipeline.masking.plan import CLOUD

NDVI_MAX = 0.8
NDSI_MAX = 0.8
WHITENESS_MAX = 0.7
NIR_SWIR_MIN = 1.0
VISIBLE_MIN = 0.2


def spectral_mask(bands: np.ndarray) -> np.ndarray:
    """uint8 mask (0 or :data:`CLOUD`) of reflectance ``[4, h, w]``: green, red, nir, swir16."""
    green, red, nir, swir = (b.astype(np.float32) for b in bands)
    with np.errstate(divide="ignore", invalid="ignore"):
        ndvi = (nir - red) / (nir + red)
        ndsi = (green - swir) / (green + swir)
        visible = (green + red) / 2
        whiteness = (np.abs(green - visible) + np.abs(red - visible)) / visible
        cloud = (
            (ndvi < NDVI_MAX)
            & (ndsi < NDSI_MAX)
            & (visible > VISIBLE_MIN)
            & (whiteness < WHITENESS_MAX)
            & (nir > NIR_SWIR_MIN * swir)
        )
    return np.where(cloud, CLOUD, 0).astype(np.uint8)
