"""Cloud and cloud-shadow masks: the stage between reading a tile and classifying it.

A masked pixel is never classified: it gets a reserved value in ``classes.tif``
(:data:`CLOUD` or :data:`SHADOW`, beside :data:`~pipeline.stitch.NODATA`), never becomes a
polygon, and is drawn in its own colour in the preview and in QGIS. Which method masks a
scene is decided once per scene when a run is planned (:func:`plan_mask`):

1. the scene's own quality band where the catalog lists one (:mod:`.quality`: Sentinel-2
   L2A ``scl``, Landsat Collection 2 ``qa_pixel``);
2. otherwise a network made for the job, where the scene has its bands (:mod:`.network`: the
   UKIS cloud and shadow networks of ``ukis-csmask``, run by OpenVINO);
3. otherwise a spectral cloud test (:mod:`.spectral`), and nothing where even its bands are
   missing.

:func:`mask_window` computes a plan's mask over any window of the run's grid, reading the
context it needs around it, so that blocks masked one by one agree with a whole-scene pass.
"""

from __future__ import annotations

from pipeline.masking.plan import (
    CLOUD,
    MASK_CLASSES,
    MASK_VALUES,
    SHADOW,
    MaskPlan,
    plan_mask,
)
from pipeline.masking.window import combined_mask, mask_window

__all__ = [
    "CLOUD",
    "MASK_CLASSES",
    "MASK_VALUES",
    "SHADOW",
    "MaskPlan",
    "combined_mask",
    "mask_window",
    "plan_mask",
]
