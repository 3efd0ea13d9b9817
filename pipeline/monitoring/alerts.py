"""The alerts layer: a series state's alert pixels as polygons, with what an analyst filters on.

One polygon per 4-connected patch of pixels sharing an alert's level, class and first date;
its fields say what was lost or appeared, how confident the alert is, when it was first
detected and last seen, which scene first showed it, and its area.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import shapely
from affine import Affine
from rasterio import features
from scipy import ndimage

from pipeline.monitoring.change import HIGH, LOW, NONE, State, date_of
from pipeline.workflow import ClassDef, Workflow

#: Confidence names by alert level.
CONFIDENCE = {LOW: "low", HIGH: "high"}
#: How QGIS shows the layer: by ``level``, low in orange and high in red.
LEVEL_STYLE = (
    ClassDef(value=LOW, name="low confidence", colour="#fdae61"),
    ClassDef(value=HIGH, name="high confidence", colour="#d7191c"),
)


@dataclass(frozen=True)
class AlertPolygons:
    """The alerts as WKB polygons and their fields, in the layer's column order."""

    wkb: list[bytes]
    fields: dict[str, list[object]]

    def __len__(self) -> int:
        return len(self.wkb)


def alert_polygons(
    state: State,
    transform: Affine,
    workflow: Workflow,
    scenes_by_day: Mapping[int, str],
    pixel_area_m2: float,
) -> AlertPolygons:
    """Polygons of the state's alerts (see the module).

    ``scenes_by_day`` names the scene of each day number, for the ``first_scene`` field.
    """
    patches, count = alert_patches(state)
    fields: dict[str, list[object]] = {name: [] for name in ALERT_FIELDS}
    if count == 0:
        return AlertPolygons([], fields)
    index = np.arange(1, count + 1)
    pick = {  # each patch's values: constant over it, but for the latest observation
        "level": ndimage.maximum(state.alert, patches, index),
        "class": ndimage.maximum(state.alert_class, patches, index),
        "first": ndimage.maximum(state.first_detected, patches, index),
        "seen": ndimage.maximum(state.alert_seen, patches, index),
        "pixels": ndimage.sum_labels(np.ones_like(patches), patches, index),
    }
    names = {c.value: c.name for c in workflow.classes}
    lost = set(workflow.monitor.lost)
    wkb: list[bytes] = []
    for geometry, label in features.shapes(patches, mask=patches > 0, transform=transform):
        i = int(label) - 1
        level, klass, pixels = int(pick["level"][i]), int(pick["class"][i]), int(pick["pixels"][i])
        first = int(pick["first"][i])
        wkb.append(shapely.to_wkb(shapely.geometry.shape(geometry)))
        row = {
            "level": level,
            "confidence": CONFIDENCE[level],
            "change": "lost" if names[klass] in lost else "appeared",
            "class_name": names[klass],
            "first_detected": date_of(first),
            "last_seen": date_of(int(pick["seen"][i])),
            "first_scene": scenes_by_day.get(first),
            "pixels": pixels,
            "area_m2": pixels * pixel_area_m2,
        }
        for name, value in row.items():
            fields[name].append(value)
    return AlertPolygons(wkb, fields)


def alert_patches(state: State) -> tuple[np.ndarray, int]:
    """Label each 4-connected patch of pixels with one alert level, class and first date.

    Returns int32 labels (0: no alert) and their count.
    """
    alerting = state.alert != NONE
    if not alerting.any():
        return np.zeros(state.alert.shape, np.int32), 0
    parts = (state.alert, state.alert_class, state.first_detected)
    keys = np.stack([part[alerting].astype(np.int64) for part in parts])
    _, inverse = np.unique(keys, axis=1, return_inverse=True)
    kinds = np.zeros(state.alert.shape, np.int32)
    kinds[alerting] = inverse.ravel() + 1
    patches = np.zeros(state.alert.shape, np.int32)
    count = 0
    four = ndimage.generate_binary_structure(2, 1)
    for kind in range(1, int(kinds.max()) + 1):
        labels, n = ndimage.label(kinds == kind, structure=four)
        patches[labels > 0] = labels[labels > 0] + count
        count += n
    return patches, count


#: The layer's fields after its geometry, and their GeoPackage types.
ALERT_FIELDS = {
    "level": "INTEGER",
    "confidence": "TEXT",
    "change": "TEXT",
    "class_name": "TEXT",
    "first_detected": "DATE",
    "last_seen": "DATE",
    "first_scene": "TEXT",
    "pixels": "INTEGER",
    "area_m2": "REAL",
}
