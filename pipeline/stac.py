"""The STAC Item of a run (``item.json``), so that catalogs of results can find its outputs.

One Item per run, built with ``pystac``: the scene's footprint and bounding box in WGS 84, its
acquisition date, an asset per output with its media type and roles, the ``classification``
extension's classes and colours and the ``raster`` extension's band description on the class
raster, the ``projection`` extension's grid, the ``processing`` extension's software and
lineage, and ``derived_from`` links to the input files. Asset hrefs are relative, so the
output folder can be moved or served as it is. Nothing here writes a file:
:mod:`pipeline.publish` does.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import pystac
from pyproj import CRS, Transformer
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension

from pipeline import __version__
from pipeline.grid import Grid, pixel_size_m
from pipeline.masking import MASK_CLASSES
from pipeline.remote import is_remote, redact
from pipeline.stitch import NODATA

if TYPE_CHECKING:
    from pipeline.planning import RunPlan

PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
#: Each output's asset key, title, media type and roles (STAC asset roles).
ASSETS: dict[str, tuple[str, str, str, list[str]]] = {
    "classes.tif": ("classes", "Class of each pixel", pystac.MediaType.COG, ["data"]),
    "confidence.tif": (
        "confidence",
        "Confidence of each pixel's class, %",
        pystac.MediaType.COG,
        ["data", "quality"],
    ),
    "polygons.gpkg": (
        "polygons",
        "Polygons of the classes, styled for QGIS",
        "application/geopackage+sqlite3",
        ["data"],
    ),
    "instances.tif": (
        "instances",
        "Polygon instance id of each pixel",
        pystac.MediaType.COG,
        ["data"],
    ),
    "seams.tif": ("seams", "Where overlapping tiles disagree", pystac.MediaType.COG, ["quality"]),
    "preview.png": ("preview", "Preview", pystac.MediaType.PNG, ["thumbnail", "overview"]),
    "classes.qml": ("classes_style", "QGIS style of classes.tif", pystac.MediaType.XML, ["style"]),
    "classes.tif.aux.xml": (
        "classes_categories",
        "GDAL's names of classes.tif's values",
        pystac.MediaType.XML,
        ["metadata"],
    ),
    "run.json": (
        "run",
        "The run's inputs, settings, counts and times",
        pystac.MediaType.JSON,
        ["metadata"],
    ),
}


def run_item(plan: RunPlan, summary: dict[str, Any], files: list[str]) -> pystac.Item:
    """The run's Item; ``files`` are the names of its outputs in the output folder."""
    geometry, bbox = footprint(plan.grid)
    acquired = plan.scene.acquired
    created = dt.datetime.fromisoformat(summary["created"])
    when = dt.datetime.combine(acquired, dt.time(), dt.UTC) if acquired else created
    item = pystac.Item(
        id=f"{plan.workflow.name}-{plan.scene.id}",
        geometry=geometry,
        bbox=bbox,
        datetime=when,
        properties=_properties(plan, summary),
    )
    item.common_metadata.created = created
    item.stac_extensions.append(PROCESSING_SCHEMA)  # its fields are set by _properties
    _projection(item, plan.grid)
    for name in files:
        if name in ASSETS:
            key, title, media, roles = ASSETS[name]
            item.add_asset(key, pystac.Asset(f"./{name}", title, None, media, roles))
    if "classes" in item.assets:
        _describe_classes(item.assets["classes"], plan)
    if "confidence" in item.assets:
        band = RasterBand.create(nodata=NODATA, data_type=DataType.UINT8, unit="percent")
        RasterExtension.ext(item.assets["confidence"], add_if_missing=True).bands = [band]
    for path in sorted({b.path for s in (plan.scene, plan.before) if s for b in s.bands}):
        name = Path(urlsplit(path).path if is_remote(path) else path).name  # no URL query
        item.add_link(pystac.Link("derived_from", _href(path), title=f"input {name}"))
    return item


def footprint(grid: Grid) -> tuple[dict[str, Any], list[float]]:
    """The grid's outline in WGS 84 as GeoJSON (21 points a side) and its bounding box."""
    left, bottom, right, top = grid.bounds
    t = np.linspace(0.0, 1.0, 21)
    xs = np.concatenate([left + (right - left) * t, np.full(21, right), right - (right - left) * t])
    ys = np.concatenate([np.full(21, top), top - (top - bottom) * t, np.full(21, bottom)])
    xs = np.concatenate([xs, np.full(21, left)])
    ys = np.concatenate([ys, bottom + (top - bottom) * t])
    to_wgs84 = Transformer.from_crs(CRS.from_wkt(grid.crs_wkt), "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform(xs, ys)
    ring = [[float(x), float(y)] for x, y in zip(lon, lat, strict=True)]
    ring.append(ring[0])
    bbox = [float(min(lon)), float(min(lat)), float(max(lon)), float(max(lat))]
    return {"type": "Polygon", "coordinates": [ring]}, bbox


def _properties(plan: RunPlan, summary: dict[str, Any]) -> dict[str, Any]:
    """The Item's properties: what ran, the processing extension, the masked share."""
    versions = summary["versions"]
    return {
        "title": f"{plan.workflow.name} on {plan.scene.id}",
        "description": plan.workflow.description,
        "processing:software": {
            "geoseg": __version__,
            **{k: v for k, v in versions.items() if k in ("torch", "torchgeo", "gdal")},
        },
        "processing:lineage": (
            f"geoseg workflow {plan.workflow.name}, model {plan.model.model_id} "
            f"({plan.model_version}), on scene {plan.scene.id}"
            + (f" after {plan.before.id}" if plan.before else "")
        ),
        "processing:level": "L4",
        "processing:datetime": summary["created"],
        "geoseg:run_id": plan.run_id,
        "geoseg:workflow": plan.workflow.name,
        "geoseg:model": plan.model.model_id,
        "geoseg:model_version": plan.model_version,
        "geoseg:before": plan.before.id if plan.before else None,
        "geoseg:masked_fraction": summary["mask"]["masked_fraction"]["total"],
    }


def _projection(item: pystac.Item, grid: Grid) -> None:
    """The ``projection`` extension: the grid's CRS, shape and transform."""
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = CRS.from_wkt(grid.crs_wkt).to_epsg()
    proj.code = f"EPSG:{epsg}" if epsg else None
    if epsg is None:
        proj.wkt2 = grid.crs_wkt
    proj.shape = [grid.height, grid.width]
    proj.transform = list(grid.transform)


def _describe_classes(asset: pystac.Asset, plan: RunPlan) -> None:
    """The class raster's ``classification:classes`` (names, colours) and ``raster:bands``."""
    classes = [
        Classification.create(value=c.value, name=c.name, color_hint=c.colour[1:].upper())
        for c in (*plan.workflow.classes, *MASK_CLASSES)
    ]
    classes.append(Classification.create(value=NODATA, name="nodata", nodata=True))
    ClassificationExtension.ext(asset, add_if_missing=True).classes = classes
    resolution = min(pixel_size_m(plan.grid))
    band = RasterBand.create(nodata=NODATA, data_type=DataType.UINT8, spatial_resolution=resolution)
    RasterExtension.ext(asset, add_if_missing=True).bands = [band]


def _href(path: str) -> str:
    """A link's href: URLs without their credentials, files as absolute ``file://`` URIs."""
    if "://" in path or path.startswith("/vsi"):
        return redact(path)
    return Path(path).resolve().as_uri()
