"""Generated rasters for the benchmarks: class rasters and multi-band scenes of any size.

Everything is generated block by block from a coarse random field, so a 10980² raster never
sits in memory whole; the same seed gives the same bytes. Benchmarks write these into a
temporary folder and delete them afterwards; nothing generated is ever committed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from scipy import ndimage

from pipeline.bench.common import bench_grid
from pipeline.grid import Block, Grid, blocks

_GEN_BLOCK = 1024
_COARSE = 6

#: Bands of the generated scene: Sentinel-2's 10 and 20 m bands a land-cover model uses.
SCENE_BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")

#: Reflectance of the scene's three surfaces per band (forest, bare ground or crops, water).
_SPECTRA = {
    "coastal": (0.03, 0.09, 0.07),
    "blue": (0.03, 0.08, 0.06),
    "green": (0.05, 0.11, 0.05),
    "red": (0.03, 0.14, 0.03),
    "rededge071": (0.08, 0.17, 0.03),
    "rededge075": (0.24, 0.20, 0.02),
    "rededge078": (0.30, 0.22, 0.02),
    "nir": (0.35, 0.25, 0.02),
    "nir08": (0.34, 0.26, 0.02),
    "swir16": (0.16, 0.30, 0.01),
    "swir22": (0.07, 0.22, 0.01),
}
_OTHER_BAND = (0.10, 0.15, 0.02)


def _profile(grid: Grid, count: int, dtype: str, nodata: int) -> dict[str, Any]:
    return {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": count,
        "dtype": dtype,
        "crs": CRS.from_wkt(grid.crs_wkt),
        "transform": grid.affine,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
    }


def _smooth_fields(
    grid: Grid, seed: int, count: int, sigma: float = 1.2
) -> Iterator[tuple[Block, list[np.ndarray]]]:
    """Per generation block, ``count`` smooth random fields (features tens of pixels across)."""
    rng = np.random.default_rng(seed)
    shape = (grid.height // _COARSE + 3, grid.width // _COARSE + 3)
    coarse = [ndimage.gaussian_filter(rng.normal(size=shape), sigma) for _ in range(count)]
    for b in blocks(grid, _GEN_BLOCK):
        rows = (b.row_off + np.arange(b.height)) / _COARSE
        cols = (b.col_off + np.arange(b.width)) / _COARSE
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        yield b, [ndimage.map_coordinates(c, [rr, cc], order=1) for c in coarse]


def write_class_raster(path: Path, size: int, seed: int = 0) -> Path:
    """Write a fragmented 3-class uint8 raster (and a confidence raster beside it), block-wise.

    Classes come from a smooth random field (fields and woods tens of pixels across) plus
    pixel noise (specks for the sieve), cut into three classes. The noise is set so that a
    16-pixel sieve leaves about 4 000 polygons per 2048² (about 100 000 at 10980²), the
    fragmentation of the land-cover raster the issue measured.
    """
    grid = bench_grid(size)
    profile = _profile(grid, 1, "uint8", 255)
    conf_path = path.with_name(path.stem + "-confidence.tif")
    with rasterio.open(path, "w", **profile) as dst, rasterio.open(conf_path, "w", **profile) as cf:
        for b, (smooth,) in _smooth_fields(grid, seed, 1):
            noise = np.random.default_rng((seed, b.row_off, b.col_off)).normal(
                scale=0.12, size=smooth.shape
            )
            field = smooth + noise
            classes = np.digitize(field, [-0.12, 0.12]).astype(np.uint8)
            conf = np.clip(50 + np.abs(field) * 150, 34, 100).astype(np.uint8)
            dst.write(classes, 1, window=b.window)
            cf.write(conf, 1, window=b.window)
    return path


def write_scene(path: Path, size: int, bands: tuple[str, ...] = SCENE_BANDS, seed: int = 0) -> Path:
    """Write a ``size``² multi-band uint16 scene (reflectance × 10 000, nodata 0), block-wise.

    Each pixel mixes forest, bare ground and water, in proportions set by two smooth random
    fields (so surfaces form patches tens of pixels across with soft edges), plus 1 % sensor
    noise. Band values follow each surface's typical reflectance (:data:`_SPECTRA`). Tiled 512,
    deflate-compressed and with overviews, as Sentinel-2 COGs are.
    """
    grid = bench_grid(size)
    spectra = np.array([_SPECTRA.get(b, _OTHER_BAND) for b in bands], dtype=np.float32)
    with rasterio.open(path, "w", **_profile(grid, len(bands), "uint16", 0)) as dst:
        for b, (land, wet) in _smooth_fields(grid, seed, 2):
            forest = 1 / (1 + np.exp(-12 * land))  # soft edges between forest and bare ground
            water = np.clip((wet - 0.35) * 8, 0, 1)
            weights = np.stack([forest * (1 - water), (1 - forest) * (1 - water), water])
            refl = np.tensordot(spectra, weights.astype(np.float32), axes=1)
            noise = np.random.default_rng((seed, b.row_off, b.col_off)).normal(
                scale=0.01, size=refl.shape
            )
            dn = np.clip((refl + noise.astype(np.float32)) * 10000, 1, 10000).astype(np.uint16)
            dst.write(dn, window=b.window)
        # Overviews, as Sentinel-2 COGs carry: previews read them, not the full scene.
        dst.build_overviews([2, 4, 8, 16, 32], Resampling.average)
    return path
