"""What a run records of itself: ``run.json``, the polygons' fields and the ``runs`` row.

Plain data built from a :class:`~pipeline.planning.RunPlan` and what the run counted; written by
:mod:`pipeline.publish`. Nothing here reads a file or knows Dask.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import __version__
from pipeline.catalog import Scene
from pipeline.grid import pixel_size_m
from pipeline.masking import CLOUD, MASK_CLASSES, SHADOW
from pipeline.remote import redact
from pipeline.stitch import NODATA
from pipeline.vectorize import Polygons

if TYPE_CHECKING:
    from pipeline.planning import RunPlan

#: Packages whose versions a run records, beside Python's, geoseg's and GDAL's.
PACKAGES = (
    "torch",
    "torchgeo",
    "rasterio",
    "dask",
    "distributed",
    "numpy",
    "shapely",
    "pyogrio",
    "pyproj",
)


@dataclass
class PolygonTally:
    """Polygon count and area per class, added up over the batches a run writes."""

    count: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    area_m2: np.ndarray = field(default_factory=lambda: np.zeros(256))

    def add(self, polys: Polygons) -> None:
        """Count one batch."""
        self.count += np.bincount(polys.class_value, minlength=256)
        self.area_m2 += np.bincount(polys.class_value, weights=polys.area_m2, minlength=256)

    @property
    def total(self) -> int:
        """Polygons counted."""
        return int(self.count.sum())


@dataclass
class RunRecord:
    """What a run counted and timed, beside its plan: the makings of ``run.json``."""

    counts: np.ndarray  # pixels per class value, from the tiles
    tally: PolygonTally
    times: dict[str, float]
    created: str
    scheduler: str | None = None
    workers: int = 0
    resumed_blocks: int = 0
    #: The run's inputs in one digest (see :func:`pipeline.orchestrate.tiles.resume_key`).
    inputs_key: str = ""
    #: Whether one worker held the model and the others fed it, and how (``model_layout``).
    layout: dict[str, Any] | None = None


def versions() -> dict[str, str]:
    """Python's, geoseg's, GDAL's and :data:`PACKAGES`' versions."""
    out = {"python": platform.python_version(), "geoseg": __version__}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    import rasterio

    out["gdal"] = rasterio.__gdal_version__
    return out


def scene_info(scene: Scene | None) -> dict[str, Any] | None:
    """A scene as ``run.json`` records it: id, date, sensor, series and each band's file."""
    if scene is None:
        return None
    return {
        "id": scene.id,
        "acquired": scene.acquired.isoformat() if scene.acquired else None,
        "sensor": scene.sensor,
        "series": scene.series,
        "bands": {
            b.name: {
                "path": redact(b.path),  # a URL's credentials are not for the outputs
                "index": b.index,
                "scale": b.scale,
                "offset": b.offset,
            }
            for b in scene.bands
        },
    }


def bbox_info(plan: RunPlan) -> dict[str, Any] | None:
    """``--bbox`` as ``run.json`` records it: as given, and the window of the scene it took.

    None for a run on the whole scene. ``crs`` is None where the bbox was in the scene's CRS;
    ``window`` is in pixels of the scene's grid (``grid`` is the window's own).
    """
    if plan.bbox is None or plan.window is None:
        return None
    box, w = plan.bbox, plan.window
    return {
        "west": box.west,
        "south": box.south,
        "east": box.east,
        "north": box.north,
        "crs": box.crs,
        "window": {
            "col_off": w.col_off,
            "row_off": w.row_off,
            "width": w.width,
            "height": w.height,
        },
    }


def pixel_area_m2(plan: RunPlan) -> float:
    """A pixel's nominal area in m² (at the grid's centre when the CRS is geographic)."""
    width, height = pixel_size_m(plan.grid)
    return width * height


def masked_fractions(counts: np.ndarray) -> dict[str, float]:
    """Share of the pixels with data that are cloud, shadow and either, from class counts."""
    with_data = int(counts.sum() - counts[NODATA])
    cloud, shadow = int(counts[CLOUD]), int(counts[SHADOW])
    if with_data == 0:
        return {"cloud": 0.0, "cloud_shadow": 0.0, "total": 0.0}
    return {
        "cloud": cloud / with_data,
        "cloud_shadow": shadow / with_data,
        "total": (cloud + shadow) / with_data,
    }


def run_summary(plan: RunPlan, record: RunRecord) -> dict[str, Any]:
    """The content of ``run.json``."""
    workflow, masks = plan.workflow, plan.masks
    return {
        "run_id": plan.run_id,
        "created": record.created,
        "workflow": workflow.model_dump(mode="json"),
        "scene": scene_info(plan.scene),
        "before": scene_info(plan.before),
        "catalog": plan.catalog,
        "grid": {
            "crs": plan.grid.crs_wkt,
            "transform": list(plan.grid.transform),
            "width": plan.grid.width,
            "height": plan.grid.height,
        },
        "bbox": bbox_info(plan),
        "model": plan.model.model_id,
        "model_version": plan.model_version,
        "engine": plan.engine.to_dict() if plan.engine else None,
        "calibration": plan.calibration,
        "mask": {
            "scene": masks[0][0].describe(),
            "before": masks[1][0].describe() if len(masks) > 1 else None,
            "masked_fraction": masked_fractions(record.counts),
            "max_masked_fraction": workflow.mask.max_masked_fraction,
        },
        "execution": {
            "scheduler": record.scheduler or "local",
            "workers": record.workers,
            "model_layout": record.layout,
            "tiles": len(plan.tiles),
            "resumed_blocks": record.resumed_blocks,
            "inputs_key": record.inputs_key,
        },
        "counts": counts_summary(plan, record),
        "versions": versions(),
        "times": record.times,
    }


def counts_summary(plan: RunPlan, record: RunRecord) -> dict[str, Any]:
    """Pixels and area per class, polygons per polygon class, masked and nodata pixels."""
    counts, tally, area = record.counts, record.tally, pixel_area_m2(plan)
    shown = plan.workflow.polygon_classes()

    def polygons_of(value: int) -> dict[str, Any]:
        return {
            "polygons": int(tally.count[value]),
            "polygon_area_m2": float(tally.area_m2[value]),
        }

    return {
        "pixels": plan.grid.width * plan.grid.height,
        "nodata_pixels": int(counts[NODATA]),
        "masked_pixels": {c.name: int(counts[c.value]) for c in MASK_CLASSES},
        "classes": {
            c.name: {
                "pixels": int(counts[c.value]),
                "area_m2_approx": float(counts[c.value] * area),
            }
            | (polygons_of(c.value) if c in shown else {})
            for c in plan.workflow.classes
        },
        "polygon_classes": {c.name: {"value": c.value, **polygons_of(c.value)} for c in shown},
        "polygons": tally.total,
    }


def runs_row(plan: RunPlan, created: str) -> dict[str, Any]:
    """The run's row in the GeoPackage's ``runs`` table (its provenance)."""
    return {
        "run_id": plan.run_id,
        "created": created,
        "workflow": plan.workflow.name,
        "scene": plan.scene.id,
        "before": plan.before.id if plan.before else None,
        "model": plan.model.model_id,
        "model_version": plan.model_version,
        "catalog": plan.catalog,
        "geoseg_version": __version__,
        "config": json.dumps(
            {
                "workflow": plan.workflow.model_dump(mode="json"),
                "scene": scene_info(plan.scene),
                "before": scene_info(plan.before),
            }
        ),
    }


def polygon_fields(polys: Polygons, plan: RunPlan) -> dict[str, np.ndarray]:
    """The GeoPackage fields of ``polys``, in the order the README documents."""
    names = np.full(256, "", dtype=object)
    for c in plan.workflow.polygon_classes():
        names[c.value] = c.name
    n = len(polys)
    scene = plan.scene
    acquired = scene.acquired.isoformat() if scene.acquired else None
    return {
        "instance_id": polys.instance_id.astype(np.int64),
        "class": polys.class_value.astype(np.int32),
        "class_name": names[polys.class_value] if n else np.empty(0, dtype=object),
        "area_m2": polys.area_m2,
        "perimeter_m": polys.perimeter_m,
        "pixels": polys.pixels,
        "confidence": polys.confidence,
        "confidence_max": polys.confidence_max.astype(np.uint8),
        "scene": np.full(n, scene.id, dtype=object),
        "acquired": np.full(n, acquired, dtype=object),
        "model": np.full(n, plan.model.model_id, dtype=object),
        "model_version": np.full(n, plan.model_version, dtype=object),
        "run_id": np.full(n, plan.run_id, dtype=object),
    }
