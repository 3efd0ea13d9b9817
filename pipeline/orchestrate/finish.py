"""The stage after the tiles: COGs, polygons, the preview and styles, made side by side.

The client's cores are shared by the COG copies (a thread each, at a lower priority: GDAL
releases the GIL), the polygons coming from the workers (the main thread writes them) and the
preview (a thread of its own composes the picture at once and renders it once the polygons
are counted), none waiting for what it does not need. Everything goes to staged paths;
:mod:`pipeline.orchestrate` commits them together.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pipeline.catalog import Scene
from pipeline.grid import Grid
from pipeline.kernels import count_values
from pipeline.masking import MASK_CLASSES
from pipeline.orchestrate.cluster import RunOptions, release_memory
from pipeline.orchestrate.polygons import labels_folder, vectorize_on_cluster
from pipeline.orchestrate.tiles import WorkingRasters
from pipeline.planning import RunPlan
from pipeline.publish import (
    BlockRaster,
    PolygonWriter,
    Staging,
    category_names_pam,
    category_style_qml,
    load_polygon_writer,
    raster_style_qml,
    write_attributes,
    write_bytes,
    write_text,
)
from pipeline.reading import read_band_overview, read_overview
from pipeline.summary import PolygonTally, masked_fractions, pixel_area_m2, polygon_fields, runs_row
from pipeline.vectorize import Cleanup, Polygons, empty_polygons, warm_up

_T = TypeVar("_T")

#: How much lower than the rest of the client the COG copies run (a nice step).
COPY_NICENESS = 10


@dataclass(frozen=True)
class EarlyWork:
    """Client work started while the workers set up: its kernels, the preview's scene."""

    warmed: Future[None]
    overview: Future[tuple[np.ndarray, np.ndarray, np.ndarray]]

    @classmethod
    def start(cls, pool: ThreadPoolExecutor, plan: RunPlan) -> EarlyWork:
        """Start loading the client's kernels and reading the preview's scene, in ``pool``."""
        return cls(
            pool.submit(warm_up_client),
            pool.submit(_preview_scene, plan.scene, plan.grid, plan.model.bands),
        )


@dataclass(frozen=True)
class PreviewParts:
    """What the preview shows, read and composed before the polygons' counts are known."""

    image: np.ndarray
    valid: np.ndarray
    classes: np.ndarray
    picture: np.ndarray


def publish(
    client: Any,
    pool: ThreadPoolExecutor,
    plan: RunPlan,
    rasters: WorkingRasters,
    early: EarlyWork,
    counts: np.ndarray,
    staging: Staging,
    options: RunOptions,
    times: dict[str, float],
) -> tuple[PolygonTally, str]:
    """Write every output of the run to ``staging``; return the polygons' tally and the time."""
    # The COG copies run in threads of their own, whose allocations glibc serves from fresh
    # arenas: what the tiles stage freed goes back first, so the two do not add up.
    release_memory()
    polygons = PolygonOutput.start(client, plan, rasters, staging, options)
    t1 = time.perf_counter()
    picture = _compose_preview(pool, plan, early, rasters)
    with ThreadPoolExecutor(2, thread_name_prefix="geoseg-cog") as copier:
        copies = [copier.submit(_copy_to_cog, *r) for r in rasters.to_publish(staging)]
        early.warmed.result()
        tally = polygons.write_all(plan)
        polygons_done = time.perf_counter()
        preview = pool.submit(_timed, lambda: _render(picture.result(), plan, tally, counts))
        t0 = time.perf_counter()
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        polygons.close(plan, created)
        times["polygons_s"] = time.perf_counter() - t0
        png, times["preview_s"] = preview.result()
        write_bytes(staging.path("preview.png"), png)
        named = (*plan.workflow.classes, *MASK_CLASSES)
        write_text(staging.path("classes.qml"), raster_style_qml(named))
        write_text(staging.path("classes.tif.aux.xml"), category_names_pam(named))
        times["cog_s"] = max(c.result() for c in copies) - t1
    # The polygon stage's wall time beyond the COG copies it ran beside.
    times["vectorize_s"] = max(0.0, polygons_done - t1 - times["cog_s"])
    return tally, created


class PolygonOutput:
    """The GeoPackage of a run (and ``instances.tif``), filled as the workers polygonize."""

    def __init__(
        self,
        writer: PolygonWriter,
        path: Path,
        batches: Iterator[Polygons],
        instances: BlockRaster | None,
        staging: Staging,
    ) -> None:
        self.writer, self.path, self.batches = writer, path, batches
        self.instances, self.staging = instances, staging

    @classmethod
    def start(
        cls,
        client: Any,
        plan: RunPlan,
        rasters: WorkingRasters,
        staging: Staging,
        options: RunOptions,
    ) -> PolygonOutput:
        """Open the GeoPackage and submit the polygon tasks (their results come later)."""
        workflow, grid, model = plan.workflow, plan.grid, plan.model
        path = staging.path("polygons.gpkg")
        writer = PolygonWriter(
            path,
            layer=workflow.name,
            crs_wkt=grid.crs_wkt,
            description=f"{workflow.name} polygons of scene {plan.scene.id} by {model.model_id}",
            style_qml=category_style_qml("class", workflow.polygon_classes()),
            staged=True,
        )
        instances = None
        if options.instances:
            # Ids are 1 + a pixel's flat index: 32 bits hold them up to 65535² pixels.
            wide = grid.width * grid.height >= 2**32 - 1
            instances = BlockRaster(
                staging.scratch("instances.work.tif"),
                grid,
                0,
                description="instance_id",
                dtype="int64" if wide else "uint32",
            )
            staging.track(labels_folder(instances))
        c = workflow.cleanup
        batches = vectorize_on_cluster(
            client,
            str(rasters.classes.path),
            str(rasters.confidence.path),
            grid,
            tuple(p.value for p in workflow.polygon_classes()),
            Cleanup(c.sieve_pixels, c.min_area_m2, c.fill_holes_m2, c.simplify_m),
            options,
            instances,
            workflow.polygon_lookup(),
        )
        return cls(writer, path, batches, instances, staging)

    def write_all(self, plan: RunPlan) -> PolygonTally:
        """Write every batch of polygons as it comes (and ``instances.tif``); count them."""
        tally = PolygonTally()
        for batch in self.batches:
            self.writer.append(batch.geometry, polygon_fields(batch, plan))
            tally.add(batch)
        if self.instances is not None:
            self.instances.to_cog(self.staging.path("instances.tif"), "NEAREST")
        return tally

    def close(self, plan: RunPlan, created: str) -> None:
        """Finish the layer and add the run's provenance as the ``runs`` table."""
        self.writer.close(polygon_fields(empty_polygons(), plan))
        write_attributes(
            self.path,
            "runs",
            runs_row(plan, created),
            description="Provenance of the geoseg run that wrote this GeoPackage",
        )


def _compose_preview(
    pool: ThreadPoolExecutor, plan: RunPlan, early: EarlyWork, rasters: WorkingRasters
) -> Future[PreviewParts]:
    """Start composing the preview's map from the working class raster, in ``pool``.

    The classes are read decimated from the working file's blocks before its COG copy adds
    overviews to it, so the picture does not wait for the copy.
    """
    image, valid, muted = early.overview.result()
    classes = read_band_overview(str(rasters.classes.path), image.shape[1:])
    return pool.submit(_preview_picture, plan, image, valid, muted, classes)


def warm_up_client() -> None:
    """Load what the client runs at the end: its compiled kernels, the GeoPackage writer.

    The kernels are the class counts' and the polygon stage's; the writer is pyogrio, whose
    import (with the pandas and pyarrow it loads) would otherwise take CPU from the workers
    while they polygonize.
    """
    count_values(np.zeros((1, 1), dtype=np.uint8))
    warm_up()
    load_polygon_writer()


def _preview_scene(
    scene: Scene, grid: Grid, model_bands: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scene as the preview shows it: a decimated read of its colour (or first) bands.

    Returns the read (image, valid) and the map's muted scene made of it
    (:func:`pipeline.preview.muted_scene`), all before any class is known.
    """
    # Imported here: workers import this package and never draw a preview.
    from pipeline.preview import muted_scene, overview_shape, preview_bands

    shape = overview_shape(grid)
    image, valid = read_overview(scene, preview_bands(scene.band_names, model_bands), grid, shape)
    return image, valid, muted_scene(image, valid)


def _preview_picture(
    plan: RunPlan, image: np.ndarray, valid: np.ndarray, muted: np.ndarray, classes: np.ndarray
) -> PreviewParts:
    """The class raster, read at the preview's size, composed over the scene's picture."""
    from pipeline.preview import compose

    picture = compose(image, valid, classes, plan.workflow.classes, muted)
    return PreviewParts(image, valid, classes, picture)


def _render(parts: PreviewParts, plan: RunPlan, tally: PolygonTally, counts: np.ndarray) -> bytes:
    """``preview.png``: the map with its legend (polygons and area per class, the mask)."""
    from pipeline.preview import legend, render_preview

    workflow = plan.workflow
    labels, extra = legend(
        workflow, tally.count, tally.area_m2, counts * pixel_area_m2(plan), masked_fractions(counts)
    )
    subtitle = (
        f"{workflow.name} · model {plan.model.model_id} ({plan.model_version}) · run {plan.run_id}"
    )
    return render_preview(
        parts.image,
        parts.valid,
        parts.classes,
        workflow.classes,
        plan.grid,
        plan.scene.id,
        plan.scene.acquired,
        subtitle=subtitle,
        labels=labels,
        picture=parts.picture,
        extra=extra,
    )


def _copy_to_cog(raster: BlockRaster, dest: Path, resampling: str) -> float:
    """Copy ``raster`` to a COG at ``dest``; return when it was done (``time.perf_counter``).

    The copy runs at a lower CPU priority (:func:`lower_thread_priority`): nothing waits for
    it until the end, while the polygons and then the preview's render wait on the workers'
    polygon tasks, with which it would otherwise share the cores as an equal.
    """
    lower_thread_priority()
    raster.to_cog(dest, resampling)
    return time.perf_counter()


def lower_thread_priority(step: int = COPY_NICENESS) -> None:
    """Raise the calling thread's nice value by ``step`` (Linux, where nice is per thread).

    Elsewhere the nice value belongs to the whole process, so nothing is changed. Threads the
    thread starts from then on (GDAL's compression threads among them) inherit it.
    """
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + step)
    except OSError:  # not allowed here: the copy runs at the usual priority
        pass


def _timed(work: Callable[[], _T]) -> tuple[_T, float]:
    """``work()``'s result and the seconds it took."""
    t0 = time.perf_counter()
    out = work()
    return out, time.perf_counter() - t0
