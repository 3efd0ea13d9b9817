"""Seeded generators of small, real-CRS test rasters (kilobytes; never committed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

UTM18 = "EPSG:32618"
#: A 10 m grid origin on the Eastern Shore of Virginia, like the demo scene.
ORIGIN = (435730.0, 4179460.0)


def write_raster(
    path: Path,
    array: np.ndarray,
    transform: Affine,
    crs: str | None = UTM18,
    nodata: float | None = None,
) -> Path:
    """Write a [bands, h, w] (or [h, w]) array as a GeoTIFF and return its path (no CRS: None)."""
    if array.ndim == 2:
        array = array[None]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=array.shape[2],
        height=array.shape[1],
        count=array.shape[0],
        dtype=array.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    ) as dst:
        dst.write(array)
    return path


def forest_scene(folder: Path, height: int = 96, width: int = 80, seed: int = 0) -> dict[str, Path]:
    """Write a Sentinel-2-like scene as green/red/nir at 10 m and swir16 at 20 m (10 m west).

    Reflectance x 10000 as uint16, nodata 0. The left half is forest (red ≈ 0.03, NDVI ≈ 0.8,
    SWIR ≈ 0.10), the right half bright crop (red ≈ 0.06, NDVI ≈ 0.64, SWIR ≈ 0.25) with a
    forest disc in it, and a strip of nodata along the top rows. Returns band name → path.
    """
    rng = np.random.default_rng(seed)
    x0, y0 = ORIGIN
    t10 = Affine(10, 0, x0, 0, -10, y0)
    t20 = Affine(20, 0, x0 - 10, 0, -20, y0)
    h20, w20 = (height + 1) // 2 + 1, (width + 1) // 2 + 1
    swir = np.full((h20, w20), 2500, dtype=np.uint16)
    swir[:, : w20 // 2] = 1000
    yy, xx = np.mgrid[0:h20, 0:w20]
    swir[(yy - h20 * 0.6) ** 2 + (xx - w20 * 0.75) ** 2 < (min(h20, w20) * 0.15) ** 2] = 1000
    # Each 10 m pixel lies in the 20 m pixel holding its centre: forest is dark in red too.
    rows, cols = np.mgrid[0:height, 0:width]
    forest = swir[rows // 2, (cols + 1) // 2] == 1000
    red = (np.where(forest, 300, 600) + rng.integers(0, 20, (height, width))).astype(np.uint16)
    nir = (2700 + rng.integers(0, 100, (height, width))).astype(np.uint16)
    green = (500 + rng.integers(0, 30, (height, width))).astype(np.uint16)
    red[:4] = 0
    nir[:4] = 0
    green[:4] = 0
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "green": write_raster(folder / "green.tif", green, t10, nodata=0),
        "red": write_raster(folder / "red.tif", red, t10, nodata=0),
        "nir": write_raster(folder / "nir.tif", nir, t10, nodata=0),
        "swir16": write_raster(folder / "swir16.tif", swir, t20, nodata=0),
    }


def catalog_yaml(folder: Path, scenes: dict[str, dict[str, object]]) -> Path:
    """Write a catalog file with the given scene entries into ``folder``."""
    import yaml

    path = folder / "data_catalog.yaml"
    path.write_text(yaml.safe_dump({"scenes": scenes}, sort_keys=False), encoding="utf-8")
    return path


def coded_band(
    path: Path,
    transform: Affine,
    height: int,
    width: int,
    crs: str = UTM18,
    dtype: str = "int32",
    nodata: float | None = None,
) -> Path:
    """Write one band whose pixel (row, col) holds ``row * 1000 + col + 1`` (never 0).

    Lets a test tell which source pixel a read took a value from; ``width`` must be under 1000.
    """
    rows, cols = np.mgrid[0:height, 0:width]
    return write_raster(path, (rows * 1000 + cols + 1).astype(dtype), transform, crs, nodata)


def decode(value: float) -> tuple[int, int]:
    """The (row, col) that :func:`coded_band` stored as ``value``."""
    return divmod(int(value) - 1, 1000)


def quality_band(
    path: Path,
    height: int,
    width: int,
    codes: list[tuple[int, int, int, int, int]],
    fill: int = 4,
) -> Path:
    """Write a Sentinel-2 SCL-like band at 20 m over :func:`forest_scene`'s 10 m grid.

    Every pixel holds ``fill`` (4: vegetation) except the 20 m pixel ranges in ``codes``
    (``(row0, row1, col0, col1, code)``, ends excluded). Same origin as forest_scene's 20 m band.
    """
    x0, y0 = ORIGIN
    h20, w20 = (height + 1) // 2 + 1, (width + 1) // 2 + 1
    scl = np.full((h20, w20), fill, dtype=np.uint8)
    for r0, r1, c0, c1, code in codes:
        scl[r0:r1, c0:c1] = code
    return write_raster(path, scl, Affine(20, 0, x0 - 10, 0, -20, y0), nodata=0)
