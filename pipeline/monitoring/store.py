"""Where a monitored series is kept (``OUT/WORKFLOW/SERIES``), one whole scene at a time.

- ``monitor.gpkg``: the ``alerts`` layer (styled for QGIS), the ``timeline`` table (a row per
  scene: its status, masked share, area per class, alerts raised and confirmed), the
  ``ledger`` (each scene taken, how it ended, the state version it made) and ``series_info``.
- ``state-N.tif``: each pixel's state after ledger version ``N`` (:class:`~.change.State`, a
  band per array), written under a new name before the ledger names it.
- ``.monitor.lock``: held while a monitor runs (:func:`series_lock`).

A scene's ledger row, timeline row and the alerts it changes go in in one SQLite transaction,
so a run killed at any moment leaves the series as it was before that scene or after it; a
state file no ledger row names yet is simply written again.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import sqlite3
import struct
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from pipeline.errors import ConfigError, SeriesBusyError
from pipeline.grid import Grid
from pipeline.monitoring.alerts import ALERT_FIELDS, LEVEL_STYLE, AlertPolygons
from pipeline.monitoring.change import State
from pipeline.publish import (
    category_style_qml,
    write_attributes,
    write_polygons,
    write_table,
)
from pipeline.workflow import Workflow

GPKG = "monitor.gpkg"
LOCK = ".monitor.lock"


@contextmanager
def series_lock(folder: Path) -> Iterator[None]:
    """Hold the series' lock, or raise :class:`~pipeline.errors.SeriesBusyError` at once.

    An ``flock`` on ``.monitor.lock``: the kernel lets it go when its process ends, however it
    ends, so a crashed run never leaves the series locked.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise SeriesBusyError(
                f"{folder}: another geoseg monitor is updating this series ({holder}); this run "
                "stops without changing anything. The lock ends with that process: run again "
                "once it is done"
            ) from None
        since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {since}".encode(), 0)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class LedgerRow:
    """One scene the monitor took: how it ended and the state version after it."""

    scene: str
    acquired: dt.date | None
    #: ``done``, ``unusable`` (too cloudy: the state is unchanged), ``baseline`` (a two-date
    #: series' first scene, not run) or ``late`` (dated before a scene already taken).
    status: str
    before: str | None = None
    run_id: str | None = None
    folder: str | None = None
    state_version: int = 0
    processed: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    message: str = ""


#: The ledger table's columns and their GeoPackage types.
LEDGER_FIELDS = {
    "scene": "TEXT",
    "acquired": "DATE",
    "status": "TEXT",
    "before": "TEXT",
    "run_id": "TEXT",
    "folder": "TEXT",
    "state_version": "INTEGER",
    "processed": "DATETIME",
    "message": "TEXT",
}


def timeline_fields(workflow: Workflow) -> dict[str, str]:
    """The timeline table's columns: the scene, its masked shares, km² per class, alerts."""
    base = {
        "scene": "TEXT",
        "acquired": "DATE",
        "status": "TEXT",
        "masked_fraction": "REAL",
        "cloud_fraction": "REAL",
        "shadow_fraction": "REAL",
    }
    classes = {f"{c.name}_km2": "REAL" for c in workflow.classes}
    alerts = {
        "new_alerts_km2": "REAL",
        "confirmed_km2": "REAL",
        "withdrawn_km2": "REAL",
        "low_alerts_km2": "REAL",
        "high_alerts_km2": "REAL",
    }
    return base | classes | alerts


@dataclass(frozen=True)
class StateUpdate:
    """A scene's new state, on the series' grid, and the alerts layer made from it."""

    state: State
    grid: Grid
    alerts: AlertPolygons


class SeriesStore:
    """The files of one monitored series (see the module)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.gpkg = folder / GPKG

    def create(self, workflow: Workflow, series: str, model_version: str, crs_wkt: str) -> None:
        """Make ``monitor.gpkg`` with empty layers, unless it exists (then check it fits)."""
        info = {"workflow": workflow.name, "series": series, "model_version": model_version}
        info["classes"] = ",".join(c.name for c in workflow.classes)
        if self.gpkg.exists():
            self._check(info)
            return
        tmp = self.folder / f".monitor.{os.getpid()}.tmp.gpkg"
        tmp.unlink(missing_ok=True)
        description = f"{workflow.name} alerts of series {series}"
        write_polygons(
            tmp,
            "alerts",
            np.empty(0, dtype=object),
            _empty_columns(ALERT_FIELDS),
            crs_wkt,
            description=description,
            style_qml=category_style_qml("level", LEVEL_STYLE),
        )
        for name, columns in (("timeline", timeline_fields(workflow)), ("ledger", LEDGER_FIELDS)):
            _create_table(tmp, name, columns)
        for key, value in info.items():
            write_attributes(tmp, "series_info", {"key": key, "value": value})
        os.replace(tmp, self.gpkg)

    def _check(self, info: Mapping[str, str]) -> None:
        with closing(self._connect()) as con:
            stored = dict(con.execute("SELECT key, value FROM series_info").fetchall())
        for key, value in info.items():
            if stored.get(key) != value:
                raise ConfigError(
                    f"{self.gpkg}: this series was monitored with {key} {stored.get(key)!r}, "
                    f"not {value!r}; monitor into another --out folder, or delete "
                    f"{self.folder} to start the series again"
                )

    def ledger(self) -> list[LedgerRow]:
        """The scenes taken so far, in the order they were."""
        if not self.gpkg.exists():
            return []
        with closing(self._connect()) as con:
            rows = con.execute(f"SELECT {', '.join(LEDGER_FIELDS)} FROM ledger ORDER BY fid")
            return [_ledger_row(r) for r in rows.fetchall()]

    def state(self) -> tuple[State, Grid] | None:
        """The state the ledger last recorded, with its grid (None before the first)."""
        version = max((r.state_version for r in self.ledger()), default=0)
        if version == 0:
            return None
        with rasterio.open(self._state_path(version)) as src:
            arrays = src.read()
            grid = Grid(src.crs.to_wkt(), tuple(src.transform)[:6], src.width, src.height)
        dtypes = [a.dtype for a in State.empty((1, 1)).arrays()]
        return State(*(a.astype(d) for a, d in zip(arrays, dtypes, strict=True))), grid

    def timeline(self) -> list[dict[str, Any]]:
        """The timeline table's rows, oldest scene first."""
        if not self.gpkg.exists():
            return []
        with closing(self._connect()) as con:
            con.row_factory = sqlite3.Row
            rows = con.execute("SELECT * FROM timeline ORDER BY acquired, fid").fetchall()
            return [dict(r) for r in rows]

    def alert_counts(self) -> dict[str, int]:
        """Alert polygons in the layer, by confidence."""
        if not self.gpkg.exists():
            return {}
        with closing(self._connect()) as con:
            rows = con.execute("SELECT confidence, count(*) FROM alerts GROUP BY confidence")
            return {str(k): int(n) for k, n in rows.fetchall()}

    def commit(
        self, row: LedgerRow, timeline: Mapping[str, Any], update: StateUpdate | None
    ) -> LedgerRow:
        """Record one scene: its state file first, then the tables together; the row stored.

        With an ``update`` the row gets the next state version and the alerts layer is
        replaced by the update's.
        """
        version = max((r.state_version for r in self.ledger()), default=0)
        if update is not None:
            version += 1
            self._write_state(version, update)
        row = LedgerRow(**(asdict(row) | {"state_version": version}))
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                _insert(con, "ledger", _ledger_values(row))
                _insert(con, "timeline", dict(timeline))
                if update is not None:
                    self._replace_alerts(con, update.alerts)
                con.execute(
                    "UPDATE gpkg_contents SET last_change = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
                    " WHERE table_name IN ('ledger', 'timeline', 'alerts')"
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        self._drop_states_before(version)
        return row

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.gpkg, isolation_level=None, timeout=30)
        # The functions GDAL's spatial-index triggers call, which plain SQLite lacks.
        con.create_function("ST_IsEmpty", 1, _is_empty, deterministic=True)
        for i, name in enumerate(("ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY")):
            con.create_function(name, 1, _envelope_getter(i), deterministic=True)
        return con

    def _replace_alerts(self, con: sqlite3.Connection, alerts: AlertPolygons) -> None:
        (srs_id,) = con.execute(
            "SELECT srs_id FROM gpkg_geometry_columns WHERE table_name = 'alerts'"
        ).fetchone()
        con.execute("DELETE FROM alerts")
        envelopes = []
        for i, wkb in enumerate(alerts.wkb):
            blob, envelope = _gpkg_geometry(wkb, srs_id)
            envelopes.append(envelope)
            values = {name: _sql_value(alerts.fields[name][i]) for name in ALERT_FIELDS}
            _insert(con, "alerts", {"geom": blob} | values)
        if envelopes:
            e = np.array(envelopes)
            extent = (e[:, 0].min(), e[:, 2].min(), e[:, 1].max(), e[:, 3].max())
            con.execute(
                "UPDATE gpkg_contents SET min_x = ?, min_y = ?, max_x = ?, max_y = ? "
                "WHERE table_name = 'alerts'",
                tuple(float(v) for v in extent),
            )

    def _state_path(self, version: int) -> Path:
        return self.folder / f"state-{version}.tif"

    def _write_state(self, version: int, update: StateUpdate) -> None:
        grid, arrays = update.grid, update.state.arrays()
        path = self._state_path(version)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        profile = {
            "driver": "GTiff",
            "width": grid.width,
            "height": grid.height,
            "count": len(arrays),
            "dtype": "int32",
            "crs": grid.crs_wkt,
            "transform": rasterio.Affine(*grid.transform),
            "compress": "deflate",
            "tiled": True,
        }
        with rasterio.open(tmp, "w", **profile) as dst:
            for band, (name, array) in enumerate(zip(State.names(), arrays, strict=True), 1):
                dst.write(array.astype(np.int32), band)
                dst.set_band_description(band, name)
        os.replace(tmp, path)

    def _drop_states_before(self, version: int) -> None:
        for path in self.folder.glob("state-*.tif"):
            number = path.stem.removeprefix("state-")
            if number.isdigit() and int(number) < version:
                path.unlink(missing_ok=True)


def _empty_columns(columns: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Empty numpy columns whose types pyogrio writes as the GeoPackage ``columns`` say."""
    dtypes: dict[str, Any] = {
        "TEXT": object,
        "INTEGER": np.int64,
        "REAL": np.float64,
        "DATE": "datetime64[D]",
        "DATETIME": "datetime64[ms]",
    }
    return {name: np.empty(0, dtype=dtypes[kind]) for name, kind in columns.items()}


def _create_table(path: Path, name: str, columns: Mapping[str, str]) -> None:
    """An empty attributes table ``name`` of ``columns`` in the GeoPackage at ``path``."""
    write_table(path, name, _empty_columns(columns))


def _insert(con: sqlite3.Connection, table: str, values: Mapping[str, Any]) -> None:
    names = ", ".join(f'"{k}"' for k in values)
    marks = ", ".join("?" for _ in values)
    con.execute(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', tuple(values.values()))


def _sql_value(value: Any) -> Any:
    """``value`` as SQLite stores it in a GeoPackage: dates as ISO text, NaN as NULL."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _ledger_values(row: LedgerRow) -> dict[str, Any]:
    return {name: _sql_value(value) for name, value in asdict(row).items()}


def _ledger_row(values: Sequence[Any]) -> LedgerRow:
    raw = dict(zip(LEDGER_FIELDS, values, strict=True))
    raw["acquired"] = dt.date.fromisoformat(raw["acquired"]) if raw["acquired"] else None
    raw["processed"] = dt.datetime.fromisoformat(raw["processed"].replace("Z", "+00:00"))
    raw["message"] = raw["message"] or ""
    return LedgerRow(**raw)


#: A GeoPackage geometry header: "GP", version 0, flags (little-endian, an XY envelope).
_HEADER = struct.Struct("<2sBBi4d")
_FLAGS = 0b0000_0011


def _gpkg_geometry(wkb: bytes, srs_id: int) -> tuple[bytes, tuple[float, ...]]:
    """A polygon's GeoPackage blob (header, envelope, WKB) and its envelope (x0, x1, y0, y1)."""
    import shapely

    x0, y0, x1, y1 = shapely.from_wkb(wkb).bounds
    envelope = (x0, x1, y0, y1)
    return _HEADER.pack(b"GP", 0, _FLAGS, srs_id, *envelope) + wkb, envelope


def _is_empty(blob: bytes | None) -> int:
    """GeoPackage's ST_IsEmpty: the header's empty flag."""
    return int(blob is None or bool(blob[3] & 0b0001_0000))


def _envelope_getter(index: int) -> Any:
    """ST_MinX, ST_MaxX, ST_MinY or ST_MaxY of a blob with an XY envelope (as ours have)."""

    def get(blob: bytes | None) -> float | None:
        if blob is None or (blob[3] >> 1) & 0b111 == 0:
            return None
        return float(_HEADER.unpack_from(blob)[4 + index])

    return get
