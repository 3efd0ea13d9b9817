"""geoseg from Python: the runs the command line makes, with their results as Python objects.

>>> import pipeline
>>> result = pipeline.run("forest", "s2-virginia", out="/tmp/out")   # doctest: +SKIP
>>> result.polygons()                                                # a GeoDataFrame
>>> result.summary["counts"]["polygon_classes"]["forest"]["polygons"]

A scene is a catalog id (``catalog`` names the catalog file, else ``./data_catalog.yaml`` or
the project's), a :class:`~pipeline.catalog.Scene` (:func:`scene_from_file` makes one from a
file without a catalog), or a file path given with ``bands=``. Errors are the same
:class:`~pipeline.errors.GeosegError` the command line prints in one line.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pyproj import CRS
from pyproj.exceptions import CRSError

from pipeline.catalog import Catalog, Scene, SceneEntry, default_catalog, load_catalog
from pipeline.errors import ConfigError
from pipeline.gdal_messages import route_gdal_messages
from pipeline.grid import BBox
from pipeline.orchestrate import RunOptions, RunResult
from pipeline.remote import is_remote, redact
from pipeline.workflow import Workflow
from pipeline.workflow import load_workflow as _load_workflow

if TYPE_CHECKING:
    from pipeline.monitoring import MonitorReport
    from pipeline.orchestrate.batch import BatchRecord, SceneOutcome

#: Keyword options of :func:`run` that describe a scene given as a file (:func:`scene_from_file`).
FILE_OPTIONS = ("bands", "scale", "offset", "nodata", "acquired", "sensor", "series")
#: Keyword options of :func:`run` that say how to run.
RUN_OPTIONS = (
    "workers",
    "scheduler",
    "one_model",
    "progress",
    "instances",
    "seams",
    "tile_size",
    "halo",
)
#: Keyword options of :func:`run` and :func:`run_batch` that run on part of each scene: ``bbox``
#: (west, south, east, north) in the scene's CRS, or in ``bbox_crs``.
WINDOW_OPTIONS = ("bbox", "bbox_crs")


def open_catalog(path: str | Path | None = None) -> Catalog:
    """The catalog at ``path``; without one, ``./data_catalog.yaml`` or the project's own."""
    return load_catalog(path if path is not None else default_catalog())


def load_workflow(name_or_path: str | Path) -> Workflow:
    """A workflow by name (``forest``) or path to a ``.yaml`` file, validated."""
    return _load_workflow(str(name_or_path))


def scene_from_file(
    path: str | Path,
    bands: Sequence[str],
    *,
    scene_id: str | None = None,
    scale: float | Sequence[float] = 1.0,
    offset: float | Sequence[float] = 0.0,
    nodata: float | None = None,
    acquired: dt.date | str | None = None,
    sensor: str | None = None,
    series: str | None = None,
) -> Scene:
    """A scene from one multi-band file, as a catalog entry with ``path`` and ``bands`` says.

    ``scene_id`` defaults to the file's name without its suffix. The same checks as a
    catalog's: known band names, one ``scale``/``offset`` per band when lists, the file there.
    """
    if is_remote(str(path)):  # a URL GDAL reads: kept as given, named by its last part
        location, folder = str(path), Path.cwd()
        name = PurePosixPath(urlsplit(location).path).stem
    else:
        file = Path(path).expanduser().resolve()
        location, folder, name = str(file), file.parent, file.stem
    scene_id = scene_id or name
    raw: dict[str, Any] = {"path": location, "bands": list(bands), "nodata": nodata}
    raw |= {"scale": _listed(scale), "offset": _listed(offset), "sensor": sensor}
    raw |= {"acquired": str(acquired) if acquired else None, "series": series}
    entry = _entry(raw, redact(location))
    catalog = Catalog(path=folder / "(no catalog)", entries={scene_id: entry})
    return catalog.scene(scene_id)


def run(
    workflow: str | Path | Workflow,
    scene: str | Path | Scene,
    before: str | Path | Scene | None = None,
    catalog: str | Path | Catalog | None = None,
    out: str | Path | None = None,
    **options: Any,
) -> RunResult:
    """Run ``workflow`` on ``scene`` (after ``before``) and write its outputs under ``out``.

    ``workflow`` is a name, a path or a :class:`~pipeline.workflow.Workflow`; ``scene`` and
    ``before`` are catalog ids, :class:`~pipeline.catalog.Scene` objects, or files when
    ``bands=`` (and the other keywords of :func:`scene_from_file`) describe them (both
    alike, for a pre/post pair of one product). The other
    options are the command line's: ``tile_size``, ``halo``, ``workers``, ``scheduler``,
    ``instances``, ``seams``, ``progress`` (default False), and ``bbox`` (west, south, east,
    north: run on that part of the scene only) in the scene's CRS or in ``bbox_crs``
    (``"EPSG:4326"``). Returns the
    :class:`~pipeline.orchestrate.RunResult`: ``folder``, ``files``, ``summary`` (``run.json``),
    ``polygons()`` as a GeoDataFrame, ``item()`` (the STAC Item) and ``path(name)``.
    """
    from pipeline.orchestrate import run as run_workflow

    route_gdal_messages()
    unknown = sorted(set(options) - set(FILE_OPTIONS) - set(RUN_OPTIONS) - set(WINDOW_OPTIONS))
    if unknown:
        known = ", ".join((*RUN_OPTIONS, *WINDOW_OPTIONS, *FILE_OPTIONS))
        raise ConfigError(f"run() has no option {unknown[0]!r}; it takes: {known}")
    flow = _workflow(workflow, options)
    files = {k: options[k] for k in FILE_OPTIONS if k in options}
    cat = catalog if isinstance(catalog, Catalog) or catalog is None else open_catalog(catalog)

    def resolve(given: str | Path | Scene) -> Scene:
        nonlocal cat
        if isinstance(given, Scene):
            return given
        if files:
            if "bands" not in files:
                raise ConfigError(f"{given}: a scene given as a file needs bands=[...]")
            return scene_from_file(given, **files)
        cat = cat or open_catalog()
        return cat.scene(str(given))

    resolved = resolve(scene)
    earlier = resolve(before) if before is not None else None
    settings = _run_options(out, options)
    return run_workflow(flow, resolved, earlier, settings, str(cat.path) if cat else None)


def run_batch(
    workflow: str | Path | Workflow,
    scenes: Sequence[str] = (),
    befores: Sequence[str] = (),
    series: Sequence[str] = (),
    every: bool = False,
    catalog: str | Path | Catalog | None = None,
    out: str | Path | None = None,
    on_outcome: Callable[[SceneOutcome], None] | None = None,
    on_left_out: Callable[[str], None] | None = None,
    **options: Any,
) -> BatchRecord:
    """Run ``workflow`` on many catalog scenes as one batch, on one cluster; how each ended.

    The scenes are ``scenes`` (each after its ``befores`` entry, when given), every scene of
    each of ``series`` (a two-date workflow pairs each with the latest usable scene before it)
    and, with ``every``, each catalog scene that has the bands the workflow reads. Each
    scene's outputs are those of :func:`run`; one that fails or is too cloudy is recorded and
    the others go on. ``on_outcome`` hears of each scene as it ends, ``on_left_out`` of each
    scene ``every`` passed over and why. Options as :func:`run`'s (but ``progress``). Returns
    the :class:`~pipeline.orchestrate.batch.BatchRecord` also written to
    ``OUT/WORKFLOW/batch.json``; its ``outcomes`` hold each scene's ``run.json``.
    """
    from pipeline.orchestrate.batch import Batch, BatchRecord, planned_model
    from pipeline.orchestrate.batch import run_batch as run_scenes
    from pipeline.selection import select_scenes

    route_gdal_messages()
    unknown = sorted(set(options) - set(RUN_OPTIONS) - set(WINDOW_OPTIONS))
    if unknown:
        known = (*RUN_OPTIONS, *WINDOW_OPTIONS)
        raise ConfigError(f"run_batch() has no option {unknown[0]!r}; it takes: {known}")
    started, started_at = time.perf_counter(), dt.datetime.now(dt.UTC)
    flow = _workflow(workflow, options)
    cat = catalog if isinstance(catalog, Catalog) else open_catalog(catalog)
    settings = _run_options(out, options | {"progress": False})
    model = planned_model(flow, settings)
    selection = select_scenes(cat, model.bands, model.needs_before, scenes, befores, series, every)
    for line in selection.left_out:
        if on_left_out is not None:
            on_left_out(line)
    if not selection.scenes:
        raise ConfigError(
            f"no scene to run: none of the catalog's scenes has what workflow {flow.name!r} "
            f"needs (bands {', '.join(model.bands)}"
            + (", and a series of two scenes or more)" if model.needs_before else ")")
        )
    with Batch(flow, cat.scene, settings, str(cat.path), model) as batch:
        outcomes = run_scenes(batch, selection.singles, selection.series, on_outcome)
    total_s = time.perf_counter() - started
    record = BatchRecord(flow.name, outcomes, batch.setup_s, total_s, started_at)
    record.write(settings.out)
    return record


def monitor(
    workflow: str | Path | Workflow,
    series: str,
    catalog: str | Path | Catalog | None = None,
    out: str | Path | None = None,
    on_scene: Callable[[Any, dict[str, Any]], None] | None = None,
    **options: Any,
) -> MonitorReport:
    """Take the scenes of catalog ``series`` not yet taken into ``OUT/WORKFLOW/SERIES``.

    What ``geoseg monitor`` does (see :mod:`pipeline.monitoring`): the new scenes run as a
    batch, then each updates the series' state, alerts layer, timeline and ledger in
    ``monitor.gpkg``. ``on_scene`` hears of each scene as it is recorded (its
    :class:`~pipeline.monitoring.store.LedgerRow` and timeline row) or fails (its
    :class:`~pipeline.orchestrate.batch.SceneOutcome` and {}). Options as :func:`run_batch`'s.
    Returns the :class:`~pipeline.monitoring.MonitorReport`; raises
    :class:`~pipeline.errors.SeriesBusyError` when another monitor holds the series.
    """
    from pipeline.monitoring import monitor as monitor_series

    route_gdal_messages()
    unknown = sorted(set(options) - set(RUN_OPTIONS))
    if unknown:
        raise ConfigError(f"monitor() has no option {unknown[0]!r}; it takes: {RUN_OPTIONS}")
    flow = _workflow(workflow, options)
    cat = catalog if isinstance(catalog, Catalog) else open_catalog(catalog)
    settings = _run_options(out, options | {"progress": False})
    return monitor_series(flow, series, cat, settings, on_scene)


def _workflow(workflow: str | Path | Workflow, options: dict[str, Any]) -> Workflow:
    """The workflow asked for, with the ``tile_size`` and ``halo`` of ``options``."""
    flow = workflow if isinstance(workflow, Workflow) else load_workflow(workflow)
    return flow.with_overrides(options.get("tile_size"), options.get("halo"))


def _run_options(out: str | Path | None, options: dict[str, Any]) -> RunOptions:
    """How to run, from the keyword options of :func:`run`."""
    return RunOptions(
        out=Path(out) if out is not None else RunOptions.out,
        workers=options.get("workers"),
        scheduler=options.get("scheduler"),
        one_model=_optional_bool(options.get("one_model")),
        progress=bool(options.get("progress", False)),
        instances=bool(options.get("instances", False)),
        seams=bool(options.get("seams", False)),
        bbox=_bbox(options.get("bbox"), options.get("bbox_crs")),
    )


def _optional_bool(value: Any) -> bool | None:
    """``value`` as True, False or None (None: geoseg decides)."""
    return None if value is None else bool(value)


def _bbox(values: Sequence[float] | None, crs: str | None) -> BBox | None:
    """``bbox`` and ``bbox_crs`` checked: four finite numbers, west < east, south < north."""
    if values is None:
        if crs is not None:
            raise ConfigError("--bbox-crs names the CRS of --bbox: give --bbox too")
        return None
    try:
        west, south, east, north = (float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"--bbox {values!r}: give four numbers, west,south,east,north") from None
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        raise ConfigError(f"--bbox {values!r}: the four numbers must be finite")
    if not (west < east and south < north):
        raise ConfigError(
            f"--bbox {west:g},{south:g},{east:g},{north:g}: give west,south,east,north, "
            "with west < east and south < north"
        )
    if crs is not None:
        try:
            CRS.from_user_input(crs)
        except CRSError as exc:
            raise ConfigError(f"--bbox-crs {crs!r} is not a CRS: {exc}") from None
    return BBox(west, south, east, north, crs)


def _listed(value: float | Sequence[float]) -> float | list[float]:
    return value if isinstance(value, int | float) else [float(v) for v in value]


def _entry(raw: dict[str, Any], where: str) -> SceneEntry:
    """``raw`` validated as a catalog entry; its first problem as a one-line error."""
    from pydantic import ValidationError

    try:
        return SceneEntry.model_validate({k: v for k, v in raw.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(scene)"
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{where}: field {field!r}: {msg}") from None
