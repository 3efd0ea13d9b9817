"""Clouds and shadows from a product's own quality band.

- Sentinel-2 L2A scene classification (``scl``), as ESA's Sen2Cor documents it: 3 cloud
  shadow; 8 cloud (medium probability), 9 cloud (high probability), 10 thin cirrus.
- Landsat Collection 2 pixel quality (``qa_pixel``, Level-1 and Level-2 alike), as the USGS
  product guides document its bits: 1 dilated cloud, 2 cirrus, 3 cloud; 4 cloud shadow.

Everything else (clear land, water, snow, saturated or no-data codes) is left unmasked; no
data is no data from the spectral bands already.
"""

from __future__ import annotations

import numpy as np

from pipeline.masking.plan import CLOUD, SHADOW

#: SCL codes that are cloud (medium, high probability; thin cirrus) and cloud shadow.
SCL_CLOUD = (8, 9, 10)
SCL_SHADOW = (3,)
#: QA_PIXEL bits that mark cloud (dilated cloud, cirrus, cloud) and cloud shadow.
QA_CLOUD_BITS = (1, 2, 3)
QA_SHADOW_BIT = 4


def quality_mask(band: str, codes: np.ndarray) -> np.ndarray:
    """uint8 mask (0, :data:`CLOUD`, :data:`SHADOW`) of quality ``band`` values ``codes``."""
    values = np.nan_to_num(codes, nan=0).astype(np.int64)
    if band == "scl":
        cloud = np.isin(values, SCL_CLOUD)
        shadow = np.isin(values, SCL_SHADOW)
    elif band == "qa_pixel":
        cloud_bits = sum(1 << b for b in QA_CLOUD_BITS)
        cloud = (values & cloud_bits) != 0
        shadow = (values & (1 << QA_SHADOW_BIT)) != 0
    else:
        raise ValueError(f"no quality decoding for band {band!r}")
    out = np.zeros(values.shape, dtype=np.uint8)
    out[shadow] = SHADOW
    out[cloud] = CLOUD
    return out
