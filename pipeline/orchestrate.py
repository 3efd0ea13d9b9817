"""Running a workflow on a scene with Dask distributed: the only module that knows Dask.

The client plans the run (grid, blocks), then hands the blocks out as tasks, each worker going
down its own stretch of swaths (:class:`~pipeline.inference.Dispatcher`). A task carries
small frozen value objects only (the scene references, the grid, the blocks); it reads its
tiles, classifies them with the model its worker built once (:class:`ModelPlugin`), and returns
each block's class and confidence arrays. The client writes each block into the output rasters
as it arrives, so neither workers nor client hold a whole scene. The workers then polygonize
while the client copies the rasters to COGs; provenance and the preview follow, and every
output is renamed into place only when all of them are complete.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import logging
import os
import platform
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import dask
import numpy as np
from distributed import Client, LocalCluster, as_completed, get_worker
from distributed.diagnostics.plugin import WorkerPlugin
from tqdm import tqdm

from pipeline import __version__
from pipeline.catalog import Catalog, Scene
from pipeline.errors import ConfigError, ModelError, UnusableSceneError
from pipeline.grid import Block, Grid, blocks, pixel_size_m, tile_window
from pipeline.kernels import count_values
from pipeline.masking import CLOUD, MASK_CLASSES, MASK_VALUES, SHADOW, plan_mask
from pipeline.models.card import ModelCard, check_resolution, check_values
from pipeline.models.engines import NetworkInfo
from pipeline.publish import (
    BlockCache,
    BlockRaster,
    PolygonWriter,
    Staging,
    category_style_qml,
    raster_style_qml,
    write_attributes,
    write_bytes,
    write_json,
    write_text,
)
from pipeline.reading import (
    check_compatible,
    gdal_cache_setting,
    read_band_overview,
    read_band_window,
    read_overview,
    sample_pixels,
    scene_grid,
)
from pipeline.stitch import NODATA, SeamTracker
from pipeline.vectorize import (
    BlockPolygons,
    Cleanup,
    FinishedBlock,
    Polygons,
    RegionEdges,
    clean_window,
    empty_polygons,
    finish_block,
    instance_lookup,
    label_regions,
    merge_blocks,
    polygonize_block,
    sieve_halo,
    warm_up,
)
from pipeline.workflow import (
    ClassDef,
    ModelConfig,
    TorchGeoModelConfig,
    Workflow,
    model_content,
    uses_openvino,
)

if TYPE_CHECKING:
    from pipeline.inference import Masks
    from pipeline.models import SegmentationModel
    from pipeline.models.engines import OpenVINOModel

    #: What :func:`plan` learns of a model: the torch model, or a converted network's info.
    ModelInfo = SegmentationModel | NetworkInfo

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Dask settings of the local cluster's processes: its monitors sample less often. A worker
#: has one core; by default its statistical profiler wakes every 10 ms, the event-loop check
#: every 20 ms, the memory monitor every 100 ms and the system monitor every 500 ms, and
#: together they slowed a one-thread forward pass by 4–6 % (832² OpenVINO bf16: 0.57–0.60 s
#: per pass in a worker, 0.55 s with these settings and in a plain process). The profile
#: only feeds the dashboard; memory limits are still enforced, within a second.
QUIET_MONITORS = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "1s",
}

#: How much lower than the rest of the client the COG copies run after the tiles (a nice step).
COPY_NICENESS = 10

#: Edge of the central sample whose values :func:`check_scene_against_card` checks.
_SAMPLE_PX = 512

#: Edge of the blocks the class raster is polygonized in (bounds memory per task).
VECTORIZE_BLOCK = 2048


@dataclass(frozen=True)
class RunOptions:
    """How to run: output root, parallelism and progress display."""

    out: Path = Path("outputs")
    workers: int | None = None
    scheduler: str | None = None
    progress: bool = True
    instances: bool = False  # also write instances.tif (each pixel's polygon instance_id)
    seams: bool = False  # also write seams.tif (where overlapping tiles disagree)


@dataclass
class RunResult:
    """What a finished run wrote, and its summary (the content of ``run.json``)."""

    folder: Path
    files: list[Path]
    summary: dict[str, Any] = field(default_factory=dict)


class ModelPlugin(WorkerPlugin):
    """A Dask worker plugin that builds the model once per worker process.

    Only the model's configuration travels to the workers; the weights are built (or, for
    network models, loaded) on each worker at registration, never shipped inside a task. With
    ``engine: openvino`` the worker loads the converted network from ``converted`` (a folder
    the workers can read) and never imports torch.
    """

    def __init__(
        self,
        config: ModelConfig,
        classes: tuple[ClassDef, ...],
        converted: str | None = None,
        mask_networks: tuple[str, ...] = (),
        cache: str | None = None,
        calibration: Mapping[str, float | list[float]] | None = None,
    ) -> None:
        self.config = config
        self.classes = classes
        self.converted = converted
        self.mask_networks = mask_networks
        self.cache = cache
        self.calibration = dict(calibration or {})
        self.model: SegmentationModel | OpenVINOModel | None = None

    def setup(self, worker: Any) -> None:
        """Build the model in the worker process, with one thread; on a GPU if torch has one.

        The worker's compiled kernels are loaded too (:func:`pipeline.inference.warm_up`,
        :func:`pipeline.vectorize.warm_up`): set-up is where a worker loads what it runs, and
        its first tile and first polygon task are then not 0.1-0.2 s slower than the others.
        """
        from pipeline import inference
        from pipeline.masking import network

        self.model = self._build()
        cache = Path(self.cache) / "openvino" / "masks" if self.cache else None
        for name in self.mask_networks:  # compiled once, for the one thread a worker has
            network.load(name, threads=1, cache_dir=cache)
        inference.warm_up()
        warm_up()

    def _build(self) -> SegmentationModel | OpenVINOModel:
        if self.converted is not None:
            from pipeline.models.engines import OpenVINOModel

            precision = getattr(self.config, "precision", "f32")
            return OpenVINOModel(Path(self.converted), precision, threads=1)
        import torch

        from pipeline.models import build_model

        torch.set_num_threads(1)
        model = build_model(self.config, self.classes, self.calibration)
        if torch.cuda.is_available():
            model = model.to("cuda")
        return model

    def teardown(self, worker: Any) -> None:
        """Release the model."""
        self.model = None


def resume_key(
    workflow: Workflow,
    scene: Scene,
    before: Scene | None,
    grid: Grid,
    masks: Masks = (),
    calibration: Mapping[str, Any] | None = None,
) -> str:
    """Name of the block cache of a run: changes with the scene, grid, model, mask or settings."""
    import hashlib

    h = hashlib.sha256(plugin_name(workflow, calibration).encode())
    settings = (scene, before, grid, workflow.tile_size, workflow.halo, masks, __version__)
    h.update(repr(settings).encode())
    for s in (scene, before):
        for band in s.bands if s else ():
            if Path(band.path).is_file():
                stat = Path(band.path).stat()
                h.update(f"{band.path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def plugin_name(workflow: Workflow, calibration: Mapping[str, Any] | None = None) -> str:
    """A name unique to a model: runs with another model, checkpoint or calibration differ."""
    import hashlib

    h = hashlib.sha256(workflow.model.model_dump_json().encode())
    h.update(json.dumps(dict(calibration or {}), sort_keys=True).encode())
    h.update(repr([c.model_dump() for c in workflow.classes]).encode())
    checkpoint = getattr(workflow.model, "checkpoint", None)
    if checkpoint and Path(checkpoint).is_file():
        stat = Path(checkpoint).stat()
        h.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"geoseg-model-{h.hexdigest()[:16]}"


def _blocks_task(
    plugin: str,
    scene: Scene,
    before: Scene | None,
    grid: Grid,
    group: tuple[Block, ...],
    halo: int,
    seams: bool = False,
    batch_size: int | None = None,
    masks: Masks = (),
) -> list[tuple[Block, np.ndarray, np.ndarray, np.ndarray | None]]:
    from pipeline.inference import process_tiles

    model = cast(ModelPlugin, get_worker().plugins[plugin]).model
    assert model is not None, "model plugin was not set up"
    results = process_tiles(model, scene, before, grid, group, halo, batch_size, masks)
    # A tile's classes over its whole window travel only when seams.tif needs them.
    return [(b, c, f, w if seams else None) for b, (c, f, w) in zip(group, results, strict=True)]


@contextmanager
def dask_client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    """A distributed client: on ``scheduler`` if given, else on a LocalCluster of processes."""
    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(
                f"cannot reach the Dask scheduler at {scheduler}: {exc}; "
                "check the address or leave --scheduler out to use a local cluster"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or len(os.sched_getaffinity(0))
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    one_thread["GDAL_CACHEMAX"] = gdal_cache_setting()
    # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also freezes glibc's mmap
    # threshold at 128 KiB: every large tensor of a forward pass is then mapped and unmapped
    # afresh, page faults and all, and a U-Net forward pass takes 18 % longer (1.66 s against
    # 1.40 s at 832², measured here). Workers keep glibc's own adaptive thresholds instead.
    no_trim = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    with (
        dask.config.set(no_trim | QUIET_MONITORS),
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # any free port: never clash with another cluster
            silence_logs=logging.ERROR,
            env=one_thread,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "geoseg": __version__}
    for pkg in (
        "torch",
        "torchgeo",
        "rasterio",
        "dask",
        "distributed",
        "numpy",
        "shapely",
        "pyogrio",
        "pyproj",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    import rasterio

    out["gdal"] = rasterio.__gdal_version__
    return out


def _scene_info(scene: Scene | None) -> dict[str, Any] | None:
    if scene is None:
        return None
    return {
        "id": scene.id,
        "acquired": scene.acquired.isoformat() if scene.acquired else None,
        "sensor": scene.sensor,
        "series": scene.series,
        "bands": {
            b.name: {"path": b.path, "index": b.index, "scale": b.scale, "offset": b.offset}
            for b in scene.bands
        },
    }


def plan(
    workflow: Workflow,
    catalog: Catalog,
    scene_id: str,
    before_id: str | None,
    cache: Path | None = None,
) -> tuple[ModelInfo, Scene, Scene | None, Grid]:
    """Check that the workflow's model fits the scenes and return what a run needs.

    Everything a user can get wrong is found here, before any cluster starts. A workflow with
    ``engine: openvino`` gets its network converted into ``cache`` (once per model; in a child
    process, so that this one never imports torch) and a :class:`NetworkInfo` in place of the
    model.
    """
    model: ModelInfo
    config = workflow.model
    if uses_openvino(config):
        from pipeline.models.engines import prepare_openvino

        folder, _ = prepare_openvino(
            cast(TorchGeoModelConfig, config), workflow.classes, cache or default_cache()
        )
        model = NetworkInfo.load(folder)
    else:
        from pipeline.models import build_model

        model = build_model(config, workflow.classes)
    if model.num_classes != len(workflow.classes):
        raise ModelError(
            f"workflow {workflow.name!r} lists {len(workflow.classes)} classes but model "
            f"{model.model_id!r} predicts {model.num_classes}; list one class per model output"
        )
    if model.needs_before and before_id is None:
        raise ConfigError(
            f"workflow {workflow.name!r} compares two dates: give the pre-event scene with "
            "--before ID"
        )
    takes_before = model.needs_before or getattr(model, "accepts_before", False)
    if not takes_before and before_id is not None:
        raise ConfigError(
            f"workflow {workflow.name!r} uses one date only; drop --before {before_id}"
        )
    scene = catalog.scene(scene_id)
    before = catalog.scene(before_id) if before_id is not None else None
    if before is not None and before.id == scene.id:
        raise ConfigError("--before names the same scene as --scene; pick the pre-event scene")
    grid = scene_grid(scene, model.bands)
    if before is not None:
        check_compatible(before, model.bands, grid)
    card = getattr(model, "card", None)
    if isinstance(card, ModelCard):
        check_scene_against_card(card, scene, before, grid)
    if not isinstance(model, NetworkInfo) and model.value_range:
        model = fit_to_scenes(workflow, model, scene, before, grid)
    return model, scene, before, grid


def fit_to_scenes(
    workflow: Workflow,
    model: SegmentationModel,
    scene: Scene,
    before: Scene | None,
    grid: Grid,
) -> SegmentationModel:
    """Check a sample of the scenes against the model's value ranges, then calibrate on it.

    Returns the model built with what its :meth:`~SegmentationModel.calibrate` fitted to the
    sample (:func:`~pipeline.reading.sample_pixels`), or the model itself if nothing was.
    """
    from pipeline.models import build_model

    scenes = [before, scene] if before is not None else [scene]
    samples = sample_pixels(scenes, model.bands, grid)
    for s, sample in zip(scenes, samples, strict=True):
        check_value_range(model, s, sample)
    if before is not None and all(np.array_equal(a, b) for a, b in zip(*samples, strict=True)):
        raise UnusableSceneError(
            f"scenes {scene.id!r} and {before.id!r} hold the same values: a pair of identical "
            "scenes cannot show change; give --before an earlier scene of the same area"
        )
    calibration = model.calibrate(samples, pixel_size_m(grid))
    if not calibration:
        return model
    return build_model(workflow.model, workflow.classes, calibration)


def check_value_range(model: SegmentationModel, scene: Scene, sample: np.ndarray) -> None:
    """Raise :class:`ModelError` when a band's sample mostly lies outside the model's range.

    The model expects reflectance, say; a file of digital numbers or display values without
    the right ``scale``/``offset`` in the catalog stops here, with the fix, before any tile.
    """
    for name, values in zip(model.bands, sample, strict=True):
        if name not in model.value_range or values.size == 0:
            continue
        low, high = model.value_range[name]
        outside = float(((values < low) | (values > high)).mean())
        if outside <= 0.5:
            continue
        median = float(np.median(values))
        hint = ""
        if median > 100 * high:
            hint = (
                " (they look like digital numbers: Sentinel-2 and Landsat Collection 2 "
                "reflectance is often stored ×10000, `scale: 0.0001`)"
            )
        raise ModelError(
            f"scene {scene.id!r} band {name!r}: {outside:.0%} of its values after the "
            f"catalog's scale and offset lie outside {low:g}..{high:g}, which model "
            f"{model.model_id!r} expects (median {median:.4g}){hint}; describe the file in the "
            "catalog with `scale` and `offset` so that stored × scale + offset is reflectance, "
            "as lists with one value per band where bands differ"
        )


def scene_masks(workflow: Workflow, scene: Scene, before: Scene | None, grid: Grid) -> Masks:
    """Each scene of the run with the plan that masks its clouds and shadows.

    Raises :class:`ConfigError` when the workflow names a method a scene cannot use, and
    :class:`~pipeline.errors.SceneError` when the bands it reads do not fit the grid.
    """
    out = []
    for s in (scene, before):
        if s is None:
            continue
        mask = plan_mask(workflow.mask, s, grid)
        if mask.bands:
            check_compatible(s, mask.bands, grid)
        out.append((mask, s))
    return tuple(out)


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


def check_masked(
    workflow: Workflow, scene: Scene, before: Scene | None, counts: np.ndarray
) -> None:
    """Raise :class:`UnusableSceneError` when more is masked than the workflow accepts."""
    share = masked_fractions(counts)
    limit = workflow.mask.max_masked_fraction
    if share["total"] <= limit:
        return
    which = f"scenes {scene.id!r} and {before.id!r} together" if before else f"scene {scene.id!r}"
    raise UnusableSceneError(
        f"{which}: {share['total']:.1%} of the pixels with data are masked (cloud "
        f"{share['cloud']:.1%}, cloud shadow {share['cloud_shadow']:.1%}), more than the "
        f"workflow's mask.max_masked_fraction of {limit:.0%}; no output was written. Pick a "
        "clearer scene, or raise max_masked_fraction to map what is clear"
    )


def default_cache(out: str | Path = RunOptions.out) -> Path:
    """Where converted networks are kept: ``.cache`` in the output folder."""
    return Path(out).expanduser() / ".cache"


def check_scene_against_card(
    card: ModelCard, scene: Scene, before: Scene | None, grid: Grid
) -> None:
    """Stop before any tile runs when the scene does not look like what the model was trained on.

    Bands are checked when the grid is built; here the pixel size and, on a central sample of
    at most 512×512 pixels, the value range after the catalog's scale and offset.
    """
    from pipeline.inference import read_tile

    check_resolution(card, scene.id, pixel_size_m(grid)[0])
    size = min(_SAMPLE_PX, grid.height), min(_SAMPLE_PX, grid.width)
    # On a multiple of 512 pixels, the sample is one block of a COG tiled 512 (or four of one
    # tiled 256) to decompress, not four (or nine): 0.01 s instead of 0.04 s at 6 bands.
    row = (grid.height - size[0]) // 2 // _SAMPLE_PX * _SAMPLE_PX
    col = (grid.width - size[1]) // 2 // _SAMPLE_PX * _SAMPLE_PX
    sample = Block(row, col, *size)
    data, valid, _, _, _ = read_tile(card.bands, scene, before, grid, sample, 0)
    names = card.bands
    if before is not None:
        names = tuple(f"{b} (before)" for b in card.bands) + card.bands
    check_values(card, scene.id, names, data, valid)


def run(
    workflow: Workflow,
    catalog: Catalog,
    scene_id: str,
    before_id: str | None = None,
    options: RunOptions | None = None,
) -> RunResult:
    """Run ``workflow`` on a catalog scene and write every output; return what was written."""
    options = options or RunOptions()
    started = time.perf_counter()
    times: dict[str, float] = {}
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]

    t0 = time.perf_counter()
    model, scene, before, grid = plan(
        workflow, catalog, scene_id, before_id, default_cache(options.out)
    )
    masks = scene_masks(workflow, scene, before, grid)
    context = getattr(model, "context_px", 0)
    if context > workflow.halo:  # a model that looks further than the workflow's halo
        workflow = workflow.with_overrides(halo=context)
    converted = model.folder if isinstance(model, NetworkInfo) else None
    tiles = blocks(grid, workflow.tile_size)
    times["plan_s"] = time.perf_counter() - t0
    folder = Path(options.out).expanduser() / workflow.name / scene.id
    colormap = {c.value: (*c.rgb, 255) for c in (*workflow.classes, *MASK_CLASSES)}

    cleanup = Cleanup(
        sieve_pixels=workflow.cleanup.sieve_pixels,
        min_area_m2=workflow.cleanup.min_area_m2,
        fill_holes_m2=workflow.cleanup.fill_holes_m2,
        simplify_m=workflow.cleanup.simplify_m,
    )
    keep = tuple(c.value for c in workflow.polygon_classes())
    with Staging(folder) as staging:
        work_classes = staging.scratch("classes.work.tif")
        work_conf = staging.scratch("confidence.work.tif")
        classes_out = BlockRaster(
            work_classes, grid, NODATA, colormap=colormap, description="class"
        )
        conf_out = BlockRaster(work_conf, grid, NODATA, description="confidence %")
        seams_out = None
        if options.seams:
            seams_out = BlockRaster(
                staging.scratch("seams.work.tif"),
                grid,
                NODATA,
                colormap={0: (0, 0, 0, 0), 1: (230, 20, 20, 255)},
                description="1: another overlapping tile predicts another class",
            )
        calibration = dict(getattr(model, "calibration", {}))
        key = resume_key(workflow, scene, before, grid, masks, calibration)
        cache = BlockCache(folder / ".work", key)
        t0 = time.perf_counter()
        with (
            # A thread of the client's own for work that can wait: while the workers load the
            # model it loads the polygon stage's kernels and the scene's muted picture; while
            # they polygonize, it composes the preview's map and then renders it.
            ThreadPoolExecutor(1, thread_name_prefix="geoseg-client") as pool,
            dask_client(options.workers, options.scheduler) as client,
        ):
            times["cluster_start_s"] = time.perf_counter() - t0
            workers = {
                address: int(info.get("nthreads", 1))
                for address, info in client.scheduler_info().get("workers", {}).items()
            }
            warmed = pool.submit(_client_warm_up)
            overview = pool.submit(_preview_scene, scene, grid, model.bands)
            try:
                counts = _classify(
                    client,
                    workflow,
                    scene,
                    before,
                    grid,
                    tiles,
                    options,
                    classes_out,
                    conf_out,
                    times,
                    cache,
                    seams_out,
                    converted,
                    workers,
                    masks,
                    calibration,
                )
            finally:
                classes_out.close()
                conf_out.close()
                if seams_out is not None:
                    seams_out.close()
            check_masked(workflow, scene, before, counts)
            # The COG copies run in threads of their own, whose allocations glibc serves from
            # fresh arenas: without this the main arena kept what the tiles stage freed (GDAL's
            # block cache of the working rasters, the results) and the copies added theirs, a
            # client peak of 0.62 GB at 10980² instead of 0.51 GB.
            release_memory()
            shown = list(workflow.polygon_classes())
            gpkg = staging.path("polygons.gpkg")
            writer = PolygonWriter(
                gpkg,
                layer=workflow.name,
                crs_wkt=grid.crs_wkt,
                description=f"{workflow.name} polygons of scene {scene.id} by {model.model_id}",
                style_qml=category_style_qml("class", shown),
            )
            tally = PolygonTally()
            version_of_model = model_version(workflow.model)
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
            batches = vectorize_on_cluster(
                client,
                str(work_classes),
                str(work_conf),
                grid,
                keep,
                cleanup,
                options,
                instances,
                workflow.polygon_lookup(),
            )
            # After the tiles the client's cores are shared by the COG copies (a thread each;
            # GDAL releases the GIL), the polygons coming from the workers (this thread writes
            # them) and the preview (the client's thread composes its picture at once, and
            # renders it once the polygons are counted), none waiting for what it does not
            # need. The stage is CPU-bound (at 4096² about 0.7 s of CPU, client and workers,
            # in 0.4 s); with the muted scene made early and a faster PNG it went 0.55-0.67 s
            # -> 0.48-0.51 s at 4096² (alternating runs).
            t1 = time.perf_counter()
            # The preview's classes are read before the COG copy builds overviews into the
            # working file: decimated from its blocks, 0.01 s. Waiting for the class COG to
            # read its overviews held the picture back 0.2 s; without the wait the stage went
            # 0.44-0.50 s -> 0.40-0.45 s at 4096² (four alternating pairs).
            image, valid, muted = overview.result()
            shown_classes = read_band_overview(str(work_classes), image.shape[1:])
            picture = pool.submit(_preview_picture, workflow, image, valid, muted, shown_classes)
            masked = masked_fractions(counts)
            pixel_w, pixel_h = pixel_size_m(grid)
            pixel_area = pixel_w * pixel_h  # nominal: at the grid's centre if geographic
            rasters = [
                (classes_out, staging.path("classes.tif"), "NEAREST"),
                (conf_out, staging.path("confidence.tif"), "AVERAGE"),
            ]
            if seams_out is not None:
                rasters.append((seams_out, staging.path("seams.tif"), "NEAREST"))
            with ThreadPoolExecutor(2, thread_name_prefix="geoseg-cog") as copier:
                copies = [copier.submit(_copy_to_cog, *r) for r in rasters]
                warmed.result()
                for batch in batches:
                    fields_of = _polygon_fields(
                        batch, workflow, scene, model.model_id, version_of_model, run_id
                    )
                    writer.append(batch.geometry, fields_of)
                    tally.add(batch)
                if instances is not None:
                    instances.to_cog(staging.path("instances.tif"), "NEAREST")
                polygons_done = time.perf_counter()
                subtitle = (
                    f"{workflow.name} · model {model.model_id} ({version_of_model}) · run {run_id}"
                )
                preview = pool.submit(
                    _timed,
                    lambda: _render(
                        picture.result(),
                        workflow,
                        scene,
                        grid,
                        tally,
                        subtitle,
                        masked,
                        counts * pixel_area,
                    ),
                )

                t0 = time.perf_counter()
                created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
                writer.close(
                    _polygon_fields(
                        empty_polygons(),
                        workflow,
                        scene,
                        model.model_id,
                        version_of_model,
                        run_id,
                    )
                )
                write_attributes(
                    gpkg,
                    "runs",
                    {
                        "run_id": run_id,
                        "created": created,
                        "workflow": workflow.name,
                        "scene": scene.id,
                        "before": before.id if before else None,
                        "model": model.model_id,
                        "model_version": version_of_model,
                        "catalog": str(catalog.path),
                        "geoseg_version": __version__,
                        "config": json.dumps(
                            {
                                "workflow": workflow.model_dump(mode="json"),
                                "scene": _scene_info(scene),
                                "before": _scene_info(before),
                            }
                        ),
                    },
                    description="Provenance of the geoseg run that wrote this GeoPackage",
                )
                times["polygons_s"] = time.perf_counter() - t0
                png, times["preview_s"] = preview.result()
                write_bytes(staging.path("preview.png"), png)
                style = raster_style_qml((*workflow.classes, *MASK_CLASSES))
                write_text(staging.path("classes.qml"), style)
                times["cog_s"] = max(c.result() for c in copies) - t1
            # The polygon stage's wall time beyond the COG copies it ran beside.
            times["vectorize_s"] = max(0.0, polygons_done - t1 - times["cog_s"])

        summary: dict[str, Any] = {
            "run_id": run_id,
            "created": created,
            "workflow": workflow.model_dump(mode="json"),
            "scene": _scene_info(scene),
            "before": _scene_info(before),
            "catalog": str(catalog.path),
            "grid": {
                "crs": grid.crs_wkt,
                "transform": list(grid.transform),
                "width": grid.width,
                "height": grid.height,
            },
            "model": model.model_id,
            "model_version": version_of_model,
            "calibration": calibration,
            "mask": {
                "scene": masks[0][0].describe(),
                "before": masks[1][0].describe() if len(masks) > 1 else None,
                "masked_fraction": masked,
                "max_masked_fraction": workflow.mask.max_masked_fraction,
            },
            "execution": {
                "scheduler": options.scheduler or "local",
                "workers": len(workers),
                "tiles": len(tiles),
                "resumed_blocks": int(times.pop("resumed_blocks", 0)),
            },
            "counts": {
                "pixels": grid.width * grid.height,
                "nodata_pixels": int(counts[NODATA]),
                "masked_pixels": {c.name: int(counts[c.value]) for c in MASK_CLASSES},
                "classes": {
                    c.name: {
                        "pixels": int(counts[c.value]),
                        "area_m2_approx": float(counts[c.value] * pixel_area),
                    }
                    | (
                        {
                            "polygons": int(tally.count[c.value]),
                            "polygon_area_m2": float(tally.area_m2[c.value]),
                        }
                        if c in shown
                        else {}
                    )
                    for c in workflow.classes
                },
                "polygon_classes": {
                    c.name: {
                        "value": c.value,
                        "polygons": int(tally.count[c.value]),
                        "polygon_area_m2": float(tally.area_m2[c.value]),
                    }
                    for c in shown
                },
                "polygons": tally.total,
            },
            "versions": _versions(),
            "times": times,
        }
        times["total_s"] = time.perf_counter() - started
        write_json(staging.path("run.json"), summary)
        files = staging.commit()
        cache.clear()  # the outputs are complete: nothing left to resume
    return RunResult(folder=folder, files=files, summary=summary)


def model_version(config: ModelConfig) -> str:
    """A short stable digest (12 hex) of a model: its configuration, and a checkpoint's bytes.

    The checkpoint enters by content (:func:`~pipeline.workflow.model_content`).
    """
    import hashlib

    data = model_content(config)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _polygon_fields(
    polys: Polygons,
    workflow: Workflow,
    scene: Scene,
    model_id: str,
    version_of_model: str,
    run_id: str,
) -> dict[str, np.ndarray]:
    """The GeoPackage fields of ``polys``, in the order the README documents."""
    names = np.full(256, "", dtype=object)
    for c in workflow.polygon_classes():
        names[c.value] = c.name
    n = len(polys)
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
        "model": np.full(n, model_id, dtype=object),
        "model_version": np.full(n, version_of_model, dtype=object),
        "run_id": np.full(n, run_id, dtype=object),
    }


@dataclass(frozen=True)
class _PreviewParts:
    """What the preview shows, read and composed before the polygons' counts are known."""

    image: np.ndarray
    valid: np.ndarray
    classes: np.ndarray
    picture: np.ndarray


def _client_warm_up() -> None:
    """Load the client's compiled kernels: the class counts', then the polygon stage's."""
    count_values(np.zeros((1, 1), dtype=np.uint8))
    warm_up()


def _preview_scene(
    scene: Scene, grid: Grid, model_bands: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scene as the preview shows it: a decimated read of its colour (or first) bands.

    Returns the read (image, valid) and the map's muted scene made of it
    (:func:`pipeline.preview.muted_scene`), all before any class is known.
    """
    # Imported here: workers import this module and never draw a preview.
    from pipeline.preview import muted_scene, overview_shape, preview_bands

    shape = overview_shape(grid)
    image, valid = read_overview(scene, preview_bands(scene.band_names, model_bands), grid, shape)
    return image, valid, muted_scene(image, valid)


def _preview_picture(
    workflow: Workflow,
    image: np.ndarray,
    valid: np.ndarray,
    muted: np.ndarray,
    classes: np.ndarray,
) -> _PreviewParts:
    """The class raster, read at the preview's size, composed over the scene's picture."""
    from pipeline.preview import compose

    picture = compose(image, valid, classes, workflow.classes, muted)
    return _PreviewParts(image, valid, classes, picture)


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


def _render(
    parts: _PreviewParts,
    workflow: Workflow,
    scene: Scene,
    grid: Grid,
    tally: PolygonTally,
    subtitle: str,
    masked: dict[str, float],
    areas: np.ndarray,
) -> bytes:
    """``preview.png``: the map with a legend of each class's polygons and area, and the mask.

    ``areas`` holds each class value's area in m² (from the pixel counts): a class merged
    into a polygon class with others shows its own area, and the polygon class its polygons.
    """
    from pipeline.preview import render_preview

    shown = workflow.polygon_classes()
    own = {c.value: c for c in shown}
    labels = {}
    for c in workflow.classes:
        if own.get(c.value) == c:
            labels[c.value] = (
                f"{c.name}\n{int(tally.count[c.value]):,} polygons · "
                f"{_format_area(float(tally.area_m2[c.value]))}"
            )
        else:
            labels[c.value] = f"{c.name}\n{_format_area(float(areas[c.value]))}"
    for c in MASK_CLASSES:
        labels[c.value] = f"{c.name.replace('_', ' ')}\n{masked[c.name]:.1%} of the scene"
    merged = [
        (
            c.colour,
            f"{c.name} (polygons)\n{int(tally.count[c.value]):,} polygons · "
            f"{_format_area(float(tally.area_m2[c.value]))}",
        )
        for c in shown
        if c not in workflow.classes
    ]
    return render_preview(
        parts.image,
        parts.valid,
        parts.classes,
        workflow.classes,
        grid,
        scene.id,
        scene.acquired,
        subtitle=subtitle,
        labels=labels,
        picture=parts.picture,
        extra=merged,
    )


def _format_area(m2: float) -> str:
    if m2 >= 1e6:
        return f"{m2 / 1e6:,.2f} km²"
    return f"{m2 / 1e4:,.2f} ha"


def _classify(
    client: Any,
    workflow: Workflow,
    scene: Scene,
    before: Scene | None,
    grid: Grid,
    tiles: list[Block],
    options: RunOptions,
    classes_out: BlockRaster,
    conf_out: BlockRaster,
    times: dict[str, float],
    cache: BlockCache,
    seams_out: BlockRaster | None = None,
    converted: Path | None = None,
    workers: dict[str, int] | None = None,
    masks: Masks = (),
    calibration: Mapping[str, float | list[float]] | None = None,
) -> np.ndarray:
    """Classify every block on Dask, writing each result as it arrives; return class counts.

    Blocks a killed earlier run of the same configuration finished come from ``cache``;
    every block finished now is added to it before it is written. With ``seams_out``, the
    seam mask of every block is written there (see :class:`~pipeline.stitch.SeamTracker`);
    a block from the cache brings no tile to compare. ``workers`` (address: threads) are
    handed their tasks by a :class:`~pipeline.inference.Dispatcher`: each goes down its own
    stretch of the :func:`~pipeline.inference.sweep`.
    """
    workers = workers or {}
    counts = np.zeros(256, dtype=np.int64)
    seams = None if seams_out is None else SeamTracker(grid, tiles, workflow.halo)

    def seams_of(block: Block, classes: np.ndarray, window: np.ndarray | None) -> None:
        if seams is not None and seams_out is not None:
            for done, mask in seams.add(block, classes, window):
                seams_out.write(done, mask)

    todo = []
    for block in tiles:
        cached = cache.get(block)
        if cached is None:
            todo.append(block)
            continue
        classes_out.write(block, cached[0])
        conf_out.write(block, cached[1])
        seams_of(block, cached[0], None)
        counts += count_values(np.ascontiguousarray(cached[0]))
    times["resumed_blocks"] = len(tiles) - len(todo)
    t0 = time.perf_counter()
    name = plugin_name(workflow, calibration)
    networks = tuple(sorted({p.network for p, _ in masks if p.network is not None}))
    plugin = ModelPlugin(
        workflow.model,
        workflow.classes,
        str(converted) if converted else None,
        networks,
        str(default_cache(options.out).resolve()),
        calibration,
    )
    client.register_plugin(plugin, name=name)
    times["model_setup_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    from pipeline.inference import Dispatcher, classification_tasks, tile_pixels

    batch_size = getattr(workflow.model, "batch_size", 1)
    halo = workflow.halo
    tasks = classification_tasks(todo, workflow.tile_size, batch_size)
    dispatcher = Dispatcher(tasks, list(workers), lambda group: tile_pixels(group, halo))
    running: dict[Any, str] = {}
    finished = as_completed()

    def submit(worker: str) -> None:
        group = dispatcher.next(worker)
        if group is None:
            return
        # Pinned to the worker whose stretch it is, but free to run elsewhere if that worker
        # is lost.
        where = {"workers": [worker], "allow_other_workers": True} if worker else {}
        future = client.submit(
            _blocks_task,
            name,
            scene,
            before,
            grid,
            group,
            halo,
            seams is not None,
            batch_size,
            masks,
            key=f"geoseg-blocks-{name}-{scene.id}-{group[0].key}-n{len(group)}"
            f"-h{halo}-{uuid.uuid4().hex[:6]}",
            pure=False,
            **where,
        )
        running[future] = worker
        finished.add(future)

    # Each worker holds one task beyond those it runs, so it never waits for the client. With
    # no worker known yet, every task goes out at once, in sweep order, to whoever takes it.
    for worker, threads in (workers or {"": len(tasks)}).items():
        for _ in range(threads + 1):
            submit(worker)
    bar = tqdm(
        total=len(tiles),
        initial=len(tiles) - len(todo),
        desc=f"{workflow.name} {scene.id}",
        unit="block",
        disable=not options.progress,
        leave=False,
    )
    try:
        for future in finished:
            submit(running.pop(future))
            for block, classes, confidence, window in future.result():
                cache.put(block, classes, confidence)
                classes_out.write(block, classes)
                conf_out.write(block, confidence)
                seams_of(block, classes, window)
                counts += count_values(np.ascontiguousarray(classes))
                bar.update()
            future.release()
    finally:
        bar.close()
        client.cancel(list(running))
        # The workers vectorize next: let them drop the network and the heap its forward
        # passes left, so the two stages' peaks do not add up in one process.
        client.unregister_worker_plugin(name)
        client.run(release_memory)
    times["tiles_s"] = time.perf_counter() - t0
    return counts


def _vectorize_task(
    classes_path: str,
    confidence_path: str,
    grid: Grid,
    block: Block,
    keep: tuple[int, ...],
    cleanup: Cleanup,
    labels_dir: str | None,
    lookup: tuple[int, ...] | None = None,
) -> tuple[FinishedBlock, RegionEdges | None]:
    read, _ = tile_window(grid, block, sieve_halo(cleanup))
    classes = read_band_window(classes_path, read)
    if lookup is not None:  # classes merged into one polygon class (Workflow.polygons)
        classes = np.asarray(lookup, dtype=np.uint8)[classes]
    confidence = read_band_window(confidence_path, block.window)
    cleaned = clean_window(classes, read, block, cleanup, NODATA, MASK_VALUES)
    labels = label_regions(cleaned, keep)
    part = polygonize_block(cleaned, confidence, block, grid.width, keep, labels)
    edges = None
    if labels_dir is not None:
        # The block's region labels wait on disk until the joins give each its instance id.
        np.save(_labels_file(labels_dir, block), labels)
        edges = RegionEdges.of(part)
    # Shipped as the WKB it is written in: the client then neither parses nor re-encodes it.
    return finish_block(part, grid, cleanup, as_wkb=True), edges


def _labels_file(folder: str, block: Block) -> Path:
    return Path(folder) / f"labels-{block.row_off}-{block.col_off}.npy"


def vectorize_on_cluster(
    client: Any,
    classes_path: str,
    confidence_path: str,
    grid: Grid,
    keep: tuple[int, ...],
    cleanup: Cleanup,
    options: RunOptions,
    instances: BlockRaster | None = None,
    lookup: tuple[int, ...] | None = None,
) -> Iterator[Polygons]:
    """Polygonize the class raster block by block on Dask; polygons come as they are done.

    The tasks are submitted when this is called; the returned iterator yields their
    polygons, so the caller can do other work (the COG copies) while the workers polygonize.

    Each block's regions that touch no other block come finished from its worker and are
    yielded at once; the regions that cross block edges are joined in the client at the end
    and yielded last. So the client holds one block's polygons and the crossing pieces, never
    all the polygons of the scene. Geometries come as WKB bytes (``shapely.from_wkb`` turns
    them into shapely objects), the form :class:`~pipeline.publish.PolygonWriter` writes.

    With ``instances``, each pixel's ``instance_id`` is written there once the last batch
    has been taken: workers keep their blocks' region labels on disk beside it, and the
    joins give every label its region's id (see :func:`~pipeline.vectorize.instance_lookup`).
    ``lookup`` maps class values to the values they are vectorized as (see
    :meth:`~pipeline.workflow.Workflow.polygon_lookup`).
    """
    parts = blocks(grid, VECTORIZE_BLOCK)
    labels_dir = None
    if instances is not None:
        labels_dir = labels_folder(instances)
        labels_dir.mkdir(exist_ok=True)
    futures = [
        client.submit(
            _vectorize_task,
            classes_path,
            confidence_path,
            grid,
            b,
            keep,
            cleanup,
            None if labels_dir is None else str(labels_dir),
            None if lookup == tuple(range(256)) else lookup,
            key=f"geoseg-vectorize-{b.key}-{uuid.uuid4().hex[:6]}",
            pure=False,
        )
        for b in parts
    ]
    return _collect_polygons(client, futures, grid, cleanup, options, instances, labels_dir)


def _collect_polygons(
    client: Any,
    futures: list[Any],
    grid: Grid,
    cleanup: Cleanup,
    options: RunOptions,
    instances: BlockRaster | None,
    labels_dir: Path | None,
) -> Iterator[Polygons]:
    """Yield each vectorize task's finished polygons, then the joined crossing regions."""
    pieces: list[BlockPolygons] = []
    occupants: list[np.ndarray] = []
    edges: list[RegionEdges] = []
    written: list[np.ndarray] = []
    bar = tqdm(
        total=len(futures), desc="polygons", unit="block", disable=not options.progress, leave=False
    )
    try:
        for future in as_completed(futures):
            done, block_edges = future.result()
            future.release()
            bar.update()
            pieces.append(done.pieces)
            if cleanup.fill_holes_m2 > 0:
                occupants.append(done.occupants)
            if block_edges is not None:
                edges.append(block_edges)
                written.append(done.polygons.instance_id)
            if len(done.polygons):
                yield done.polygons
    finally:
        bar.close()
        client.cancel(futures)
    inside = np.concatenate(occupants) if occupants else np.empty(0, dtype=np.int64)
    # Handed over one by one, so the merge can let them go once it has their coordinates.
    handed = (pieces.pop() for _ in range(len(pieces)))
    release_memory()
    joined = merge_blocks(handed, grid, cleanup, inside, as_wkb=True)
    del occupants, inside
    written.append(joined.instance_id)
    release_memory()  # before the caller writes the joins, which can hold a huge region
    yield joined
    del joined
    if instances is not None and labels_dir is not None:
        _write_instances(instances, edges, np.concatenate(written), labels_dir)


def labels_folder(instances: BlockRaster) -> Path:
    """Where the region labels of ``instances``' blocks wait for their ids."""
    return instances.path.with_name(instances.path.name + "-labels")


def _write_instances(
    raster: BlockRaster, edges: list[RegionEdges], written: np.ndarray, labels_dir: Path
) -> None:
    """Each block's labels replaced by their instance ids, into ``raster``; labels removed."""
    dtype = np.dtype(raster.dtype)
    for part, lookup in zip(edges, instance_lookup(edges, np.sort(written)), strict=True):
        path = _labels_file(str(labels_dir), part.block)
        raster.write(part.block, lookup.astype(dtype)[np.load(path)])
        path.unlink()
    shutil.rmtree(labels_dir, ignore_errors=True)


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc only; elsewhere a no-op).

    The merge frees hundreds of MB in pieces of every size; glibc keeps such memory in the
    process unless asked, and the process's peak then adds up what is freed and what comes
    next (measured at 10980²: 921 MB client peak with it, 1.08 GB without).
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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
