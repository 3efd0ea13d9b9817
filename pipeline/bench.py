"""``geoseg bench``: measured speed and memory of pipeline stages on generated scenes.

Today it measures vectorizing (``vectorize_s``): geoseg's block-wise polygonizing on Dask,
merges across blocks and the GeoPackage included, against the usual way — sieve, one
``rasterio.features.shapes`` call over the whole raster, shapely objects one by one, GeoPackage
— on the same generated class raster with realistic fragmentation. Each side runs in its own
process so that peak memory is its own. Generated rasters live in a temporary folder and are
deleted afterwards; nothing is committed.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from scipy import ndimage

from pipeline.grid import Grid, blocks

#: Sieve used on both sides of the vectorizing benchmark (pixels).
SIEVE = 16
_GEN_BLOCK = 1024
_COARSE = 6


def bench_grid(size: int) -> Grid:
    """A 10 m UTM grid of ``size`` × ``size`` pixels (Sentinel-2 tile 18STG's corner)."""
    return Grid(
        CRS.from_epsg(32618).to_wkt(), (10.0, 0.0, 399960.0, 0.0, -10.0, 4200000.0), size, size
    )


def write_class_raster(path: Path, size: int, seed: int = 0) -> Path:
    """Write a fragmented 3-class uint8 raster (and a confidence raster beside it), block-wise.

    Classes come from a smooth random field (fields and woods tens of pixels across) plus
    pixel noise (specks for the sieve), cut into three classes; generated block by block from
    a coarse field so the whole raster is never in memory. The noise is set so that a 16-pixel
    sieve leaves about 4 000 polygons per 2048² (about 110 000 at 10980²), the fragmentation of
    the land-cover raster the issue measured.
    """
    grid = bench_grid(size)
    rng = np.random.default_rng(seed)
    coarse = ndimage.gaussian_filter(rng.normal(size=(size // _COARSE + 3,) * 2), 1.2)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": "uint8",
        "crs": CRS.from_wkt(grid.crs_wkt),
        "transform": grid.affine,
        "nodata": 255,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
    }
    conf_path = path.with_name(path.stem + "-confidence.tif")
    with rasterio.open(path, "w", **profile) as dst, rasterio.open(conf_path, "w", **profile) as cf:
        for b in blocks(grid, _GEN_BLOCK):
            rows = (b.row_off + np.arange(b.height)) / _COARSE
            cols = (b.col_off + np.arange(b.width)) / _COARSE
            rr, cc = np.meshgrid(rows, cols, indexing="ij")
            smooth = ndimage.map_coordinates(coarse, [rr, cc], order=1)
            noise = np.random.default_rng((seed, b.row_off, b.col_off)).normal(
                scale=0.12, size=smooth.shape
            )
            field = smooth + noise
            classes = np.digitize(field, [-0.12, 0.12]).astype(np.uint8)
            conf = np.clip(50 + np.abs(field) * 150, 34, 100).astype(np.uint8)
            dst.write(classes, 1, window=b.window)
            cf.write(conf, 1, window=b.window)
    return path


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_geoseg_vectorize(classes: str, out: str, workers: int | str) -> dict[str, Any]:
    """Geoseg's way: block-wise on a local Dask cluster, merge, GeoPackage. Returns measures."""
    from pipeline.orchestrate import RunOptions, dask_client, vectorize_on_cluster
    from pipeline.publish import write_polygons
    from pipeline.reading import raster_grid
    from pipeline.vectorize import Cleanup

    grid = raster_grid(classes)
    conf = str(Path(classes).with_name(Path(classes).stem + "-confidence.tif"))
    with dask_client(int(workers), None) as client:
        t0 = time.perf_counter()
        polys = vectorize_on_cluster(
            client,
            classes,
            conf,
            grid,
            (0, 1, 2),
            Cleanup(sieve_pixels=SIEVE),
            RunOptions(progress=False),
        )
        t_poly = time.perf_counter() - t0
        write_polygons(
            Path(out),
            "bench",
            polys.geometry,
            {"class": polys.class_value.astype(np.int32), "area_m2": polys.area_m2},
            grid.crs_wkt,
        )
        total = time.perf_counter() - t0
        worker_rss = client.run(_peak_rss_mb)
    return {
        "polygons": len(polys),
        "vectorize_s": total,
        "polygonize_s": t_poly,
        "peak_rss_mb": max([_peak_rss_mb(), *worker_rss.values()]),
        "client_peak_rss_mb": _peak_rss_mb(),
        "worker_peak_rss_mb": max(worker_rss.values()),
    }


def run_usual_vectorize(classes: str, out: str) -> dict[str, Any]:
    """The usual way: whole-raster sieve and shapes, shapely objects one by one, GeoPackage."""
    import pyogrio
    import shapely
    import shapely.geometry
    from rasterio import features

    t0 = time.perf_counter()
    with rasterio.open(classes) as src:
        data, transform, crs = src.read(1), src.transform, src.crs
    sieved = features.sieve(data, size=SIEVE, connectivity=4)
    geoms, values = [], []
    for geom, value in features.shapes(sieved, connectivity=4, transform=transform):
        geoms.append(shapely.geometry.shape(geom))
        values.append(int(value))
    arr = np.array(geoms, dtype=object)
    pyogrio.raw.write(
        out,
        geometry=shapely.to_wkb(arr),
        field_data=[np.array(values, dtype=np.int32)],
        fields=["class"],
        crs=crs.to_wkt(),
        driver="GPKG",
        geometry_type="Polygon",
    )
    return {
        "polygons": len(arr),
        "vectorize_s": time.perf_counter() - t0,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _in_subprocess(func: str, *args: str) -> dict[str, Any]:
    code = (
        "import json, sys; from pipeline import bench; "
        f"print(json.dumps(bench.{func}(*sys.argv[1:])))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark step {func} failed:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def bench_vectorize(size: int, workers: int, baseline: bool = True) -> dict[str, Any]:
    """Generate a size² class raster and time both ways of vectorizing it."""
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        t0 = time.perf_counter()
        classes = str(write_class_raster(Path(tmp) / "classes.tif", size))
        generate_s = time.perf_counter() - t0
        ours = _in_subprocess(
            "run_geoseg_vectorize", classes, str(Path(tmp) / "ours.gpkg"), str(workers)
        )
        result: dict[str, Any] = {
            "size": size,
            "workers": workers,
            "sieve_pixels": SIEVE,
            "generate_s": generate_s,
            "vectorize_s": ours["vectorize_s"],
            "vectorize_polygons": ours["polygons"],
            "vectorize_peak_rss_mb": ours["peak_rss_mb"],
            "vectorize_client_peak_rss_mb": ours["client_peak_rss_mb"],
            "vectorize_worker_peak_rss_mb": ours["worker_peak_rss_mb"],
        }
        if baseline:
            usual = _in_subprocess("run_usual_vectorize", classes, str(Path(tmp) / "usual.gpkg"))
            result |= {
                "vectorize_baseline_s": usual["vectorize_s"],
                "vectorize_baseline_polygons": usual["polygons"],
                "vectorize_baseline_peak_rss_mb": usual["peak_rss_mb"],
                "vectorize_speedup": usual["vectorize_s"] / ours["vectorize_s"],
            }
        return result


def default_workers() -> int:
    """Worker processes the benchmark uses by default: one per core."""
    return len(os.sched_getaffinity(0))
