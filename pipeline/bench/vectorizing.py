"""``geoseg bench`` for polygons: geoseg's block-wise vectorizing against the usual way.

It measures vectorizing (``vectorize_s``): geoseg's block-wise polygonizing on Dask,
merges across blocks and the GeoPackage included, against the usual way — sieve, one
``rasterio.features.shapes`` call over the whole raster, shapely objects one by one, GeoPackage
— on the same generated class raster with realistic fragmentation. Each side runs in its own
process so that peak memory is its own. Generated rasters live in a temporary folder and are
deleted afterwards; nothing is committed.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from pipeline.bench.common import MemorySampler, in_subprocess, memory_figures, peak_rss_mb
from pipeline.bench.scenes import write_class_raster

#: Sieve used on both sides of the vectorizing benchmark (pixels).
SIEVE = 16


def run_geoseg_vectorize(
    classes: str, out: str, workers: int | str, watch_memory: str = "1"
) -> dict[str, Any]:
    """Geoseg's way: block-wise on a local Dask cluster, merge, GeoPackage. Returns measures.

    The workers load their compiled kernels and the client what it runs at the end first, as
    a run's set-up has them do (:func:`pipeline.vectorize.warm_up`,
    :func:`pipeline.orchestrate.warm_up_client`): ``setup_s``, apart from ``vectorize_s``.
    With ``watch_memory`` ("1"), the processes' PSS is sampled throughout, which slows them.
    """
    from pipeline.orchestrate import RunOptions, dask_client, vectorize_on_cluster, warm_up_client
    from pipeline.publish import PolygonWriter
    from pipeline.reading import raster_grid
    from pipeline.vectorize import Cleanup, warm_up

    grid = raster_grid(classes)
    conf = str(Path(classes).with_name(Path(classes).stem + "-confidence.tif"))
    sampler = MemorySampler(enabled=watch_memory == "1")
    with sampler as memory, dask_client(int(workers), None) as client:
        t0 = time.perf_counter()
        client.run(warm_up)
        warm_up_client()
        t1 = time.perf_counter()
        writer = PolygonWriter(Path(out), "bench", grid.crs_wkt, staged=True)
        for batch in vectorize_on_cluster(
            client,
            classes,
            conf,
            grid,
            (0, 1, 2),
            Cleanup(sieve_pixels=SIEVE),
            RunOptions(progress=False),
        ):
            writer.append(
                batch.geometry,
                {"class": batch.class_value.astype(np.int32), "area_m2": batch.area_m2},
            )
        writer.close()
        total = time.perf_counter() - t1
        worker_rss = client.run(peak_rss_mb)
        worker_pids = client.run(os.getpid).values()
    return {
        "polygons": writer.count,
        "setup_s": t1 - t0,
        "vectorize_s": total,
        "peak_rss_mb": max([peak_rss_mb(), *worker_rss.values()]),
        "client_peak_rss_mb": peak_rss_mb(),
        "worker_peak_rss_mb": max(worker_rss.values()),
    } | memory.pss_figures(worker_pids)


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
        "peak_rss_mb": peak_rss_mb(),
    }


def bench_vectorize(size: int, workers: int, baseline: bool = True) -> dict[str, Any]:
    """Generate a size² class raster and time both ways of vectorizing it."""
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        t0 = time.perf_counter()
        classes = str(write_class_raster(Path(tmp) / "classes.tif", size))
        generate_s = time.perf_counter() - t0
        # Timed with nothing watching its processes; its memory from a second, watched run.
        step = "pipeline.bench.vectorizing:run_geoseg_vectorize"
        ours = in_subprocess(step, classes, str(Path(tmp) / "ours.gpkg"), str(workers), "0")
        watched = in_subprocess(step, classes, str(Path(tmp) / "watched.gpkg"), str(workers))
        ours |= memory_figures(watched)
        result: dict[str, Any] = {
            "size": size,
            "workers": workers,
            "sieve_pixels": SIEVE,
            "class_raster_generate_s": generate_s,
            "vectorize_setup_s": ours["setup_s"],
            "vectorize_s": ours["vectorize_s"],
            "vectorize_polygons": ours["polygons"],
            "vectorize_peak_rss_mb": ours["peak_rss_mb"],
            "vectorize_client_peak_rss_mb": ours["client_peak_rss_mb"],
            "vectorize_worker_peak_rss_mb": ours["worker_peak_rss_mb"],
            "vectorize_client_peak_pss_mb": ours["client_peak_pss_mb"],
            "vectorize_worker_peak_pss_mb": ours["worker_peak_pss_mb"],
            "vectorize_run_peak_pss_mb": ours["run_peak_pss_mb"],
        }
        if baseline:
            usual = in_subprocess(
                "pipeline.bench.vectorizing:run_usual_vectorize",
                classes,
                str(Path(tmp) / "usual.gpkg"),
            )
            result |= {
                "vectorize_baseline_s": usual["vectorize_s"],
                "vectorize_baseline_polygons": usual["polygons"],
                "vectorize_baseline_peak_rss_mb": usual["peak_rss_mb"],
                "vectorize_speedup": usual["vectorize_s"] / ours["vectorize_s"],
            }
        return result
