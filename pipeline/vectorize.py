"""Class rasters to polygons with per-polygon statistics.

Each connected region (4-connectivity, as GDAL polygonizes) of one class becomes one polygon,
holes included. Regions are labelled first, so per-polygon statistics (pixel count, mean
confidence) come from one ``bincount`` rather than from rasterizing polygons back. Shapely
geometries are built in bulk from coordinate arrays, which costs far less than building them one
by one. Nodata never becomes a polygon.

This version works on a whole class raster in memory (one byte per pixel); block-wise
vectorizing with merges across block edges is planned.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyproj
import shapely
from rasterio import features
from scipy import ndimage

from pipeline.grid import Grid

_FOUR = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class Polygons:
    """Polygons of a class raster and their attributes, one row per polygon."""

    geometry: np.ndarray  # shapely Polygon objects
    class_value: np.ndarray  # uint8
    pixels: np.ndarray  # int64
    confidence: np.ndarray  # float64, mean percent
    area_m2: np.ndarray  # float64

    def __len__(self) -> int:
        return len(self.geometry)


def clean_classes(classes: np.ndarray, sieve_pixels: int, nodata: int) -> np.ndarray:
    """Merge regions smaller than ``sieve_pixels`` into their neighbours; nodata stays nodata."""
    if sieve_pixels <= 1:
        return classes
    valid = classes != nodata
    sieved = features.sieve(classes, size=sieve_pixels, mask=valid, connectivity=4)
    # A small region surrounded by nodata would be absorbed into nodata: keep it instead.
    lost = valid & (sieved == nodata)
    sieved[lost] = classes[lost]
    sieved[~valid] = nodata
    return sieved


def label_regions(classes: np.ndarray, keep: Iterable[int]) -> np.ndarray:
    """Label each 4-connected region of a kept class with its own positive int32 id."""
    labels = np.zeros(classes.shape, dtype=np.int32)
    next_id = 0
    for value in keep:
        lab, n = ndimage.label(classes == value, structure=_FOUR)
        if n:
            inside = lab > 0
            labels[inside] = lab[inside] + next_id
            next_id += n
    return labels


def area_m2(geometry: np.ndarray, grid: Grid) -> np.ndarray:
    """Areas in m²: planar in a projected CRS, in a local equal-area projection if geographic."""
    if len(geometry) == 0:
        return np.zeros(0)
    crs = pyproj.CRS.from_wkt(grid.crs_wkt)
    if crs.is_geographic:
        left, bottom, right, top = grid.bounds
        laea = pyproj.CRS.from_proj4(
            f"+proj=laea +lat_0={(bottom + top) / 2} +lon_0={(left + right) / 2} +datum=WGS84"
        )
        to_laea = pyproj.Transformer.from_crs(crs, laea, always_xy=True)
        projected = shapely.transform(
            geometry, lambda xy: np.column_stack(to_laea.transform(xy[:, 0], xy[:, 1]))
        )
        return np.asarray(shapely.area(projected), dtype=np.float64)
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return np.asarray(shapely.area(geometry), dtype=np.float64) * unit * unit


def vectorize(
    classes: np.ndarray,
    confidence: np.ndarray,
    grid: Grid,
    keep: Iterable[int],
    nodata: int = 255,
    sieve_pixels: int = 0,
    min_area_m2: float = 0.0,
) -> Polygons:
    """Polygonize the ``keep`` classes of a class raster laid on ``grid``."""
    cleaned = clean_classes(classes, sieve_pixels, nodata)
    labels = label_regions(cleaned, keep)
    n = int(labels.max())
    if n == 0:
        return _empty()
    flat = labels.ravel()
    pixels = np.bincount(flat, minlength=n + 1)
    conf_sum = np.bincount(flat, weights=confidence.ravel().astype(np.float64), minlength=n + 1)
    class_of = np.zeros(n + 1, dtype=np.uint8)
    class_of[flat] = cleaned.ravel()  # every pixel of a label has the same class

    coords: list[np.ndarray] = []
    ring_sizes: list[int] = []
    rings_per_polygon = np.zeros(n + 1, dtype=np.int64)
    order: list[int] = []
    for geom, value in features.shapes(
        labels, mask=labels > 0, connectivity=4, transform=grid.affine
    ):
        label = int(value)
        order.append(label)
        for ring in geom["coordinates"]:
            arr = np.asarray(ring, dtype=np.float64)
            coords.append(arr)
            ring_sizes.append(len(arr))
        rings_per_polygon[label] = len(geom["coordinates"])
    order_arr = np.asarray(order, dtype=np.int64)
    ring_offsets = np.concatenate([[0], np.cumsum(ring_sizes)])
    poly_offsets = np.concatenate([[0], np.cumsum(rings_per_polygon[order_arr])])
    geoms = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON,
        np.concatenate(coords),
        (ring_offsets, poly_offsets),
    )
    # Rows in label order: deterministic for a given raster.
    sort = np.argsort(order_arr, kind="stable")
    geoms = geoms[sort]
    ids = order_arr[sort]
    areas = area_m2(geoms, grid)
    keep_rows = areas >= min_area_m2
    ids = ids[keep_rows]
    return Polygons(
        geometry=geoms[keep_rows],
        class_value=class_of[ids].astype(np.uint8),
        pixels=pixels[ids].astype(np.int64),
        confidence=conf_sum[ids] / pixels[ids],
        area_m2=areas[keep_rows],
    )


def _empty() -> Polygons:
    return Polygons(
        geometry=np.empty(0, dtype=object),
        class_value=np.empty(0, dtype=np.uint8),
        pixels=np.empty(0, dtype=np.int64),
        confidence=np.empty(0),
        area_m2=np.empty(0),
    )
