"""``geoseg monitor``: a series' new scenes through the batch path, then into its alerts.

:func:`monitor` takes the scenes of a catalog series its ledger has not taken, oldest first,
runs them as a batch (:mod:`pipeline.orchestrate.batch`; for a two-date workflow each after
the latest usable scene before it), and records each in turn (:class:`~.store.SeriesStore`):
the state it leaves, the alerts, its timeline row. A scene that fails is reported and tried
again by the next run; a scene too cloudy to use is recorded as such and leaves the state as
it was.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.warp import Resampling, reproject

from pipeline.catalog import Catalog
from pipeline.errors import ConfigError, GeosegError
from pipeline.grid import Grid, pixel_size_m
from pipeline.masking import MASK_VALUES
from pipeline.monitoring.alerts import alert_polygons
from pipeline.monitoring.change import HIGH, LOW, UNSEEN, Rules, State, day_number, observe
from pipeline.monitoring.store import LedgerRow, SeriesStore, StateUpdate, series_lock
from pipeline.monitoring.timeline import timeline_png, timeline_row, write_timeline_png
from pipeline.orchestrate.batch import Batch, SceneOutcome, planned_model
from pipeline.orchestrate.cluster import RunOptions
from pipeline.planning import model_version
from pipeline.reading import scene_grid
from pipeline.selection import Job
from pipeline.stitch import NODATA
from pipeline.vectorize import sieve
from pipeline.workflow import Workflow


@dataclass
class MonitorReport:
    """What one monitor run did to a series."""

    workflow: str
    series: str
    folder: Path
    #: Ledger rows this run added, oldest scene first.
    taken: list[LedgerRow] = field(default_factory=list)
    #: Scenes that failed: not recorded, so the next run tries them again.
    failed: list[SceneOutcome] = field(default_factory=list)
    #: Alert polygons in the layer after the run, by confidence.
    alerts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def nothing_new(self) -> bool:
        """True when the series had no scene the ledger had not taken."""
        return not self.taken and not self.failed


@dataclass
class _Series:
    """A monitor run's working knowledge: the store, the rules, the grid, what was taken."""

    workflow: Workflow
    store: SeriesStore
    catalog: Catalog
    grid: Grid
    rules: Rules
    pixel_m2: float
    ledger: list[LedgerRow]


def monitor(
    workflow: Workflow,
    series: str,
    catalog: Catalog,
    options: RunOptions | None = None,
    on_scene: Callable[[LedgerRow | SceneOutcome, dict[str, Any]], None] | None = None,
) -> MonitorReport:
    """Take the new scenes of ``series`` into ``OUT/WORKFLOW/SERIES`` (see the module).

    ``on_scene`` hears of each scene as it is recorded (its ledger row and timeline row) or
    fails (its outcome, and {}). Raises :class:`~pipeline.errors.SeriesBusyError` at once when
    another monitor holds the series.
    """
    started = time.perf_counter()
    options = options or RunOptions()
    check_watches(workflow)
    folder = Path(options.out).expanduser() / workflow.name / series
    report = MonitorReport(workflow.name, series, folder)
    with series_lock(folder):
        store = SeriesStore(folder)
        ledger = store.ledger()
        taken = {r.scene for r in ledger}
        new = [sid for sid in catalog.series_ids(series) if sid not in taken]
        if new:
            _take(workflow, series, catalog, store, ledger, new, options, report, on_scene)
        if store.gpkg.exists() and (report.taken or not (folder / "timeline.png").exists()):
            png = timeline_png(store.timeline(), workflow, series)
            write_timeline_png(folder / "timeline.png", png)
        report.alerts = store.alert_counts()
    report.seconds = time.perf_counter() - started
    return report


def check_watches(workflow: Workflow) -> None:
    """Raise :class:`ConfigError` unless the workflow says what its alerts are."""
    if not (workflow.monitor.lost or workflow.monitor.appeared):
        raise ConfigError(
            f"workflow {workflow.name!r} has no `monitor:` classes: add `lost: [CLASS]` or "
            "`appeared: [CLASS]` under `monitor:` to say which changes are alerts"
        )


def _take(
    workflow: Workflow,
    series: str,
    catalog: Catalog,
    store: SeriesStore,
    ledger: list[LedgerRow],
    new: list[str],
    options: RunOptions,
    report: MonitorReport,
    on_scene: Callable[[LedgerRow | SceneOutcome, dict[str, Any]], None] | None,
) -> None:
    """Run the ``new`` scenes and record each (see :func:`monitor`)."""
    model = planned_model(workflow, options)
    two_dates = bool(model.needs_before)
    loaded = store.state()
    grid = loaded[1] if loaded is not None else _first_grid(catalog, new, model.bands)
    if grid is None:  # no new scene resolves: each is reported below, nothing is recorded
        for sid in new:
            report.failed.append(_unresolved(catalog, sid))
            if on_scene is not None:
                on_scene(report.failed[-1], {})
        return
    store.create(workflow, series, model_version(workflow.model), grid.crs_wkt)
    width, height = pixel_size_m(grid)
    rules = Rules.of(workflow, two_dates, width * height)
    work = _Series(workflow, store, catalog, grid, rules, width * height, ledger)

    def heard(item: LedgerRow | SceneOutcome, row: dict[str, Any]) -> None:
        if isinstance(item, LedgerRow):
            report.taken.append(item)
            work.ledger.append(item)
        else:
            report.failed.append(item)
        if on_scene is not None:
            on_scene(item, row)

    runnable = _dated(work, new, heard)
    if not runnable:
        return
    with Batch(workflow, catalog.scene, options, str(catalog.path), model) as batch:
        if two_dates:
            _take_pairs(work, batch, runnable, heard)
        else:
            futures = [(sid, batch.submit(Job(sid))) for sid in runnable]
            for sid, future in futures:
                _record(work, sid, future.result(), heard)


def _first_grid(catalog: Catalog, ids: list[str], bands: tuple[str, ...]) -> Grid | None:
    """The grid of the first of ``ids`` that resolves: a new series' state lies on it."""
    for sid in ids:
        try:
            return scene_grid(catalog.scene(sid), bands)
        except GeosegError:
            continue
    return None


def _unresolved(catalog: Catalog, sid: str) -> SceneOutcome:
    """The failed outcome of a scene that does not resolve, with the catalog's reason."""
    return SceneOutcome(sid, None, "failed", 0.0, catalog.available(sid) or "cannot be read")


def _dated(
    work: _Series, new: list[str], heard: Callable[[LedgerRow | SceneOutcome, dict], None]
) -> list[str]:
    """The ``new`` scenes that can run, oldest first; the others recorded or reported.

    A scene dated before one already taken is recorded ``late`` (monitoring goes forward in
    time); one without a date, or that cannot be resolved, fails.
    """
    latest = max((r.acquired for r in work.ledger if r.acquired), default=None)
    runnable = []
    for sid in new:
        try:
            acquired = work.catalog.scene(sid).acquired
        except GeosegError:
            heard(_unresolved(work.catalog, sid), {})
            continue
        if acquired is None:
            message = "no acquisition date: monitoring orders scenes by `acquired`"
            heard(SceneOutcome(sid, None, "failed", 0.0, message), {})
        elif latest is not None and acquired < latest:
            message = f"dated {acquired}, before {latest}, already taken; not run"
            row = LedgerRow(sid, acquired, "late", message=message)
            heard(work.store.commit(row, _row(work, sid, acquired, "late", {}), None), {})
        else:
            runnable.append(sid)
    return runnable


def _take_pairs(
    work: _Series,
    batch: Batch,
    runnable: list[str],
    heard: Callable[[LedgerRow | SceneOutcome, dict], None],
) -> None:
    """A two-date series' scenes, each after the latest usable one.

    When nothing is taken yet, the first new scene is the baseline: recorded, not run.
    """
    usable = [r.scene for r in work.ledger if r.status in ("done", "baseline")]
    if not usable:
        sid = runnable.pop(0)
        acquired = work.catalog.scene(sid).acquired
        row = LedgerRow(sid, acquired, "baseline", message="the series' first scene")
        timeline = _row(work, sid, acquired, "baseline", {})
        heard(work.store.commit(row, timeline, None), timeline)
        usable = [sid]
    before = usable[-1]
    for sid in runnable:
        if _record(work, sid, batch.run_job(Job(sid, before)), heard) == "done":
            before = sid


def _record(
    work: _Series,
    sid: str,
    outcome: SceneOutcome,
    heard: Callable[[LedgerRow | SceneOutcome, dict], None],
) -> str:
    """Record a scene's outcome in the store (a failure is only reported); its status."""
    if outcome.status == "failed":
        heard(outcome, {})
        return outcome.status
    acquired = work.catalog.scene(sid).acquired
    assert acquired is not None  # scenes without dates never run (see _dated)
    row = LedgerRow(sid, acquired, outcome.status, outcome.before, message=outcome.message)
    if outcome.status == "unusable":
        timeline = _row(work, sid, acquired, "unusable", outcome.masked)
        heard(work.store.commit(row, timeline, None), timeline)
        return outcome.status
    assert outcome.folder is not None and outcome.summary is not None
    row = LedgerRow(
        sid,
        acquired,
        "done",
        outcome.before,
        outcome.summary["run_id"],
        str(outcome.folder),
    )
    update, alerts_km2 = _observe(work, outcome.folder / "classes.tif", day_number(acquired))
    classes_km2 = {
        name: info["area_m2_approx"] / 1e6
        for name, info in outcome.summary["counts"]["classes"].items()
    }
    timeline = _row(work, sid, acquired, "done", outcome.masked, classes_km2, alerts_km2)
    heard(work.store.commit(row, timeline, update), timeline)
    return outcome.status


def _observe(work: _Series, classes_path: Path, day: int) -> tuple[StateUpdate, dict[str, float]]:
    """The state after a run's classes, its alerts layer, and its alert areas in km²."""
    loaded = work.store.state()
    state = loaded[0] if loaded is not None else State.empty((work.grid.height, work.grid.width))
    # Cleaned as the run's polygons are, so that a speck the polygons drop raises no alert.
    sieve_px = work.workflow.cleanup.sieve_pixels
    classes = sieve(_on_grid(classes_path, work.grid), sieve_px, NODATA, MASK_VALUES)
    new, change = observe(state, classes, day, work.rules)
    scenes_by_day = {
        day_number(r.acquired): r.scene for r in work.ledger if r.acquired and r.status == "done"
    }
    scenes_by_day[day] = classes_path.parent.name
    alerts = alert_polygons(new, work.grid.affine, work.workflow, scenes_by_day, work.pixel_m2)
    km2 = work.pixel_m2 / 1e6
    areas = {
        "new_alerts": change.new * km2,
        "confirmed": change.confirmed * km2,
        "withdrawn": change.withdrawn * km2,
        "low_alerts": int((new.alert == LOW).sum()) * km2,
        "high_alerts": int((new.alert == HIGH).sum()) * km2,
    }
    return StateUpdate(new, work.grid, alerts), areas


def _on_grid(path: Path, grid: Grid) -> np.ndarray:
    """A class raster on ``grid``: as it is when it lies on it, else resampled (nearest)."""
    with rasterio.open(path) as src:
        same = (
            (src.width, src.height) == (grid.width, grid.height)
            and np.allclose(tuple(src.transform)[:6], grid.transform)
            and src.crs == rasterio.crs.CRS.from_wkt(grid.crs_wkt)
        )
        if same:
            return np.asarray(src.read(1))
        out = np.full((grid.height, grid.width), UNSEEN, np.uint8)
        reproject(
            rasterio.band(src, 1),
            out,
            dst_transform=grid.affine,
            dst_crs=grid.crs_wkt,
            dst_nodata=UNSEEN,
            resampling=Resampling.nearest,
        )
        return out


def _row(
    work: _Series,
    sid: str,
    acquired: dt.date | None,
    status: str,
    masked: dict[str, float],
    classes_km2: dict[str, float] | None = None,
    alerts_km2: dict[str, float] | None = None,
) -> dict[str, Any]:
    return timeline_row(sid, acquired, status, work.workflow, masked, classes_km2, alerts_km2)
