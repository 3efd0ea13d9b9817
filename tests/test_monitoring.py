"""geoseg monitor on real series: ledger, alerts, timeline, lock, and a run killed mid-series."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio

from pipeline.errors import ConfigError, SeriesBusyError
from pipeline.monitoring import monitor
from pipeline.monitoring.change import HIGH, State, day_number
from pipeline.monitoring.store import LOCK, LedgerRow, SeriesStore, series_lock
from pipeline.orchestrate.cluster import RunOptions
from pipeline.workflow import load_workflow
from tests.conftest import ROOT
from tests.data import catalog_yaml
from tests.helpers import geoseg

PUCALLPA_YEARS = (1985, 1990, 1995, 2000, 2005, 2010, 2015, 2020)


def pucallpa_catalog(folder: Path, shared: Path, years: tuple[int, ...]) -> Path:
    """A catalog whose series ``puc`` is a file pattern over links to some Pucallpa years."""
    files = folder / "puc"
    files.mkdir(parents=True, exist_ok=True)
    for year in years:
        link = files / f"{year}.tif"
        if not link.exists():
            link.symlink_to(shared / "pucallpa" / f"{year}.tif")
    entry = {
        "path": "puc/{year}.tif",
        "bands": ["swir16", "nir", "red", "green"],
        "scale": 1 / 255 * 0.4,
        "nodata": 0,
        "sensor": "landsat",
    }
    return catalog_yaml(folder, {"puc-{year}": entry})


def table(gpkg: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(gpkg) as con:
        return con.execute(sql).fetchall()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def slovenia_monitor(tmp_path_factory, shared_data):
    """``geoseg monitor forest --series slovenia`` once, then again with nothing new."""
    out = tmp_path_factory.mktemp("slovenia")
    first = geoseg("monitor", "forest", "--series", "slovenia", "--out", str(out))
    folder = out / "forest" / "slovenia"
    before = {p.name: digest(p) for p in folder.iterdir() if p.is_file() and p.name != LOCK}
    second = geoseg("monitor", "forest", "--series", "slovenia", "--out", str(out))
    return first, second, folder, before


def test_slovenia_cloudy_dates_are_masked_in_the_timeline_and_raise_no_alert(slovenia_monitor):
    first, _, folder, _ = slovenia_monitor
    assert first.returncode == 0, first.stderr
    gpkg = folder / "monitor.gpkg"
    rows = table(gpkg, "SELECT scene, status, masked_fraction, forest_km2 FROM timeline")
    by_scene = {r[0]: r[1:] for r in rows}
    assert list(by_scene) == [
        f"slovenia-2015-{d}" for d in ("07-11", "07-31", "08-20", "08-30", "09-09")
    ]
    for cloudy in ("slovenia-2015-07-31", "slovenia-2015-08-20"):
        status, masked, forest = by_scene[cloudy]
        assert status == "unusable" and masked == pytest.approx(1.0) and forest is None
    for clear in ("slovenia-2015-07-11", "slovenia-2015-08-30", "slovenia-2015-09-09"):
        status, masked, forest = by_scene[clear]
        assert status == "done" and masked < 0.01 and forest > 0.5
    assert table(gpkg, "SELECT count(*) FROM alerts") == [(0,)]
    assert table(gpkg, "SELECT sum(new_alerts_km2) FROM timeline") == [(0.0,)]
    ledger = table(gpkg, "SELECT scene, status, state_version FROM ledger ORDER BY fid")
    assert [r[1] for r in ledger] == ["done", "unusable", "unusable", "done", "done"]
    assert [r[2] for r in ledger] == [1, 1, 1, 2, 3]
    assert "unusable" in first.stdout and "100.0% of the pixels" in first.stdout
    # Each scene's own outputs are kept where a single run writes them.
    assert (folder.parent / "slovenia-2015-08-30" / "classes.tif").is_file()
    assert not (folder.parent / "slovenia-2015-07-31").exists()


def test_a_rerun_with_nothing_new_changes_nothing_and_says_so(slovenia_monitor):
    _, second, folder, before = slovenia_monitor
    assert second.returncode == 0, second.stderr
    assert "nothing new" in second.stdout
    after = {p.name: digest(p) for p in folder.iterdir() if p.is_file() and p.name != LOCK}
    assert after == before  # the lock file names its last holder; nothing else changed


def test_the_series_files_open_as_qgis_would(slovenia_monitor):
    _, _, folder, _ = slovenia_monitor
    gpkg = str(folder / "monitor.gpkg")
    layers = {name for name, _ in pyogrio.list_layers(gpkg)}
    assert {"alerts", "timeline", "ledger", "series_info", "layer_styles"} <= layers
    info = pyogrio.read_info(gpkg, layer="alerts")
    assert info["geometry_type"] == "Polygon"
    assert {"confidence", "first_detected", "last_seen", "area_m2"} <= set(info["fields"])
    styles = table(folder / "monitor.gpkg", "SELECT f_table_name, useAsDefault FROM layer_styles")
    assert ("alerts", 1) in styles
    with rasterio.open(next(folder.glob("state-*.tif"))) as src:
        assert src.descriptions == State.names()
    png = folder / "timeline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pucallpa_monitor(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("pucallpa")
    proc = geoseg("monitor", "forest", "--series", "pucallpa", "--out", str(out))
    return proc, out / "forest" / "pucallpa"


def test_pucallpa_forest_area_per_year_and_alerts_where_forest_was(pucallpa_monitor):
    proc, folder = pucallpa_monitor
    assert proc.returncode == 0, proc.stderr
    gpkg = folder / "monitor.gpkg"
    rows = table(gpkg, "SELECT acquired, forest_km2 FROM timeline ORDER BY acquired")
    assert [r[0] for r in rows] == [f"{y}-01-01" for y in PUCALLPA_YEARS]
    assert all(1000 < r[1] < 1700 for r in rows)  # of the scene's ~2100 km²
    high = table(gpkg, "SELECT count(*), sum(area_m2) FROM alerts WHERE confidence = 'high'")
    assert high[0][0] > 0
    # Alerts concentrate on what was forest in 1985, more than the scene's forest share.
    state = SeriesStore(folder).state()
    assert state is not None
    forest_1985 = rasterio.open(folder.parent / "pucallpa-1985" / "classes.tif").read(1) == 1
    alerts = state[0].alert == HIGH
    first_2020 = (state[0].alert > 0) & (state[0].first_detected == day_number(dt.date(2020, 1, 1)))
    assert forest_1985[alerts].mean() > forest_1985.mean() + 0.05
    assert forest_1985[first_2020].mean() > forest_1985.mean()
    assert first_2020.sum() > 0


def test_a_killed_monitor_finishes_its_series_once_when_started_again(tmp_path, shared_data):
    years = PUCALLPA_YEARS[:5]
    clean_catalog = pucallpa_catalog(tmp_path / "clean", shared_data, years)
    clean = geoseg(
        "monitor",
        "forest",
        "--series",
        "puc",
        "--catalog",
        str(clean_catalog),
        "--out",
        str(tmp_path / "clean" / "out"),
    )
    assert clean.returncode == 0, clean.stderr

    catalog = pucallpa_catalog(tmp_path / "killed", shared_data, years)
    out = tmp_path / "killed" / "out"
    args = ["monitor", "forest", "--series", "puc", "--catalog", str(catalog), "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    gpkg = out / "forest" / "puc" / "monitor.gpkg"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if gpkg.exists() and table(gpkg, "SELECT count(*) FROM ledger")[0][0] >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the monitor ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its Dask workers, mid-series
    proc.wait()
    taken = table(gpkg, "SELECT count(*) FROM ledger")[0][0]
    assert 2 <= taken < len(years)

    again = geoseg(*args)
    assert again.returncode == 0, again.stderr
    ledger = table(gpkg, "SELECT scene FROM ledger ORDER BY fid")
    assert [r[0] for r in ledger] == [f"puc-{y}" for y in years]  # each once, in order
    assert len(table(gpkg, "SELECT scene FROM timeline")) == len(years)
    clean_gpkg = tmp_path / "clean" / "out" / "forest" / "puc" / "monitor.gpkg"
    sql = "SELECT confidence, first_detected, last_seen, pixels FROM alerts ORDER BY 2, 3, 4, 1"
    assert table(gpkg, sql) == table(clean_gpkg, sql)
    mine = SeriesStore(gpkg.parent).state()
    theirs = SeriesStore(clean_gpkg.parent).state()
    assert mine is not None and theirs is not None
    for a, b in zip(mine[0].arrays(), theirs[0].arrays(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in gpkg.parent.glob("state-*.tif")) == [f"state-{len(years)}.tif"]

    # A new file in the pattern's folder is the next run's one new scene.
    pucallpa_catalog(tmp_path / "killed", shared_data, PUCALLPA_YEARS[:6])
    newer = geoseg(*args)
    assert newer.returncode == 0, newer.stderr
    assert "puc-2010" in newer.stdout and "1 scenes taken" in newer.stdout


def test_a_second_monitor_on_a_busy_series_exits_at_once_with_its_own_status(tmp_path):
    folder = tmp_path / "forest" / "slovenia"
    with series_lock(folder):
        t0 = time.monotonic()
        proc = geoseg("monitor", "forest", "--series", "slovenia", "--out", str(tmp_path))
        waited = time.monotonic() - t0
    assert proc.returncode == 75
    assert proc.stderr.startswith("error: ") and "another geoseg monitor" in proc.stderr
    assert f"pid {os.getpid()}" in proc.stderr
    assert waited < 30  # no cluster was started
    assert not (folder / "monitor.gpkg").exists()


def test_the_lock_ends_with_a_killed_holder(tmp_path):
    folder = tmp_path / "series"
    code = (
        "import sys, time; from pathlib import Path\n"
        "from pipeline.monitoring.store import series_lock\n"
        f"with series_lock(Path({str(folder)!r})):\n"
        "    print('held', flush=True); time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(SeriesBusyError, match="another geoseg monitor"), series_lock(folder):
        pass
    holder.kill()
    holder.wait()
    with series_lock(folder):  # free again: the kernel let go of the dead holder's lock
        pass


def test_a_scene_is_recorded_whole_or_not_at_all(tmp_path, monkeypatch):
    workflow = load_workflow("forest")
    store = SeriesStore(tmp_path)
    from pipeline.grid import Grid

    grid = Grid("EPSG:32633", (10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0), 4, 3)
    store.create(workflow, "s", "v1", rasterio.crs.CRS.from_epsg(32633).to_wkt())
    from pipeline.monitoring.alerts import alert_polygons
    from pipeline.monitoring.store import StateUpdate
    from pipeline.monitoring.timeline import timeline_row

    state = State.empty((3, 4))
    state.alert[1, 1:3] = HIGH
    state.alert_class[1, 1:3] = 1
    state.first_detected[1, 1:3] = state.alert_seen[1, 1:3] = 16000
    update = StateUpdate(state, grid, alert_polygons(state, grid.affine, workflow, {}, 100.0))
    row = LedgerRow("a", dt.date(2015, 7, 1), "done")
    timeline = timeline_row("a", dt.date(2015, 7, 1), "done", workflow, {"total": 0.0})

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(SeriesStore, "_replace_alerts", broken)
    with pytest.raises(OSError, match="disk full"):
        store.commit(row, timeline, update)
    assert store.ledger() == [] and store.timeline() == [] and store.state() is None
    monkeypatch.undo()
    stored = store.commit(row, timeline, update)
    assert stored.state_version == 1 and [r.scene for r in store.ledger()] == ["a"]
    assert table(store.gpkg, "SELECT count(*), sum(pixels) FROM alerts") == [(1, 2)]
    assert store.alert_counts() == {"high": 1}
    # The spatial index GDAL maintains was filled by our inserts.
    assert table(store.gpkg, "SELECT count(*) FROM rtree_alerts_geom") == [(1,)]
    got = pyogrio.read_dataframe(str(store.gpkg), layer="alerts")
    assert got.geometry.iloc[0].area == pytest.approx(200.0)


def test_a_series_monitored_with_another_model_is_refused(tmp_path):
    store = SeriesStore(tmp_path)
    wkt = rasterio.crs.CRS.from_epsg(32633).to_wkt()
    store.create(load_workflow("forest"), "s", "v1", wkt)
    with pytest.raises(ConfigError, match="model_version 'v1', not 'v2'"):
        store.create(load_workflow("forest"), "s", "v2", wkt)


def test_a_workflow_without_monitor_classes_is_refused(tmp_path, project_catalog):
    workflow = load_workflow("forest").model_copy(
        update={"monitor": load_workflow("forest").monitor.model_copy(update={"lost": ()})}
    )
    with pytest.raises(ConfigError, match="no `monitor:` classes"):
        monitor(workflow, "slovenia", project_catalog, RunOptions(out=tmp_path))
