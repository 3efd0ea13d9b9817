"""Windowed reads of scene bands onto one common grid.

This module and :mod:`pipeline.publish` are the only ones that open files. No function here
reads more than the window it is asked for, so no stage ever holds a whole scene.

Bands stored at different resolutions or origins are stacked onto one grid (by default the
finest of the bands a model needs) by nearest-neighbour lookup of each target pixel's centre in
the source grid. Doing the lookup ourselves, rather than through a warper, keeps the mapping
exact and testable: on Sentinel-2 the 20 m grid starts half a 20 m pixel (10 m) west of the
10 m grid, so each 10 m pixel must take the 20 m pixel that contains its centre.

Invalid pixels (the band's nodata value, NaN, or outside a band's extent) are returned as a
mask; the data there is 0 so that models see finite numbers.
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from pipeline.catalog import BandSource, Scene
from pipeline.errors import SceneError
from pipeline.grid import Grid
from pipeline.remote import gdal_env, redact

#: GDAL block cache (MB) geoseg gives every process unless ``GDAL_CACHEMAX`` is set. GDAL's
#: default, 5 % of RAM per process, fills as a scene is read, so memory would grow with the
#: scene; each tile is read about once anyway.
GDAL_CACHE_MB = 64


def gdal_cache_setting() -> str:
    """``GDAL_CACHEMAX`` for geoseg's processes: the user's if set, else :data:`GDAL_CACHE_MB`."""
    return os.environ.get("GDAL_CACHEMAX", str(GDAL_CACHE_MB))


@dataclass(frozen=True)
class _BandInfo:
    name: str
    path: str
    transform: Affine
    crs: CRS
    width: int
    height: int


def _open(path: str, scene_id: str) -> rasterio.io.DatasetReader:
    try:
        with gdal_env(path):  # a remote file: opened without looking around it
            return rasterio.open(path)
    except RasterioIOError as exc:
        # GDAL's message repeats the path: a URL's credentials must go from both.
        raise SceneError(redact(f"scene {scene_id!r}: cannot open {path}: {exc}")) from None


#: Files each thread keeps open for :func:`read_window`, most recently used last.
_OPEN_FILES = 8
_held = threading.local()


def _open_held(path: str, scene_id: str) -> rasterio.io.DatasetReader:
    """``path`` opened for reading, kept open between calls of one thread.

    GDAL's block cache belongs to an open dataset: closing the file after every tile threw
    away the decompressed blocks the next tile shares with it (an 832² tile touches nine
    512² blocks of a tiled file). A file rewritten since it was opened is opened afresh.
    """
    try:
        stat = os.stat(path)
        key = (path, stat.st_size, stat.st_mtime_ns)
    except OSError:
        key = (path, -1, -1)
    held: dict[tuple[str, int, int], rasterio.io.DatasetReader] = _held.__dict__.setdefault(
        "files", {}
    )
    src = held.pop(key, None)
    if src is None:
        for old in [k for k in held if k[0] == path]:
            held.pop(old).close()
        src = _open(path, scene_id)
        while len(held) >= _OPEN_FILES:
            held.pop(next(iter(held))).close()
    held[key] = src
    return src


def _band_infos(scene: Scene, bands: tuple[str, ...]) -> list[_BandInfo]:
    """What the grid needs to know of each band, in ``bands``' order; each file opened once.

    A multi-band file holds all of a scene's bands, and opening it once per band took a fifth
    of a run's planning.
    """
    at: dict[int, _BandInfo] = {}  # by position in ``bands``, as _by_path gives it
    for path, members in _by_path(scene, bands).items():
        with _open(path, scene.id) as src:
            for i, band in members:
                at[i] = _band_info(scene, band, src)
    return [at[i] for i in range(len(bands))]


def _band_info(scene: Scene, band: BandSource, src: rasterio.io.DatasetReader) -> _BandInfo:
    if band.index > src.count:
        raise SceneError(
            f"scene {scene.id!r}: band {band.name!r} is listed as band {band.index} of "
            f"{band.path}, which has {src.count}; list one name per band, in file order"
        )
    if src.crs is None:
        raise SceneError(
            f"scene {scene.id!r}: {band.path} has no CRS; georeference it (gdal_edit.py -a_srs)"
        )
    t = src.transform
    if t.b != 0 or t.d != 0:
        raise SceneError(
            f"scene {scene.id!r}: {band.path} has a rotated grid; warp it to a north-up "
            "grid first (gdalwarp)"
        )
    return _BandInfo(band.name, band.path, t, src.crs, src.width, src.height)


def scene_grid(scene: Scene, bands: tuple[str, ...]) -> Grid:
    """Return the grid the given bands are stacked onto: the finest band's grid.

    Where several bands share the finest resolution, the grid is their common extent. Raises
    :class:`SceneError` when the bands are in different CRSs or do not overlap.
    """
    infos = _band_infos(scene, bands)
    crs = infos[0].crs
    for info in infos[1:]:
        if info.crs != crs:
            raise SceneError(
                f"scene {scene.id!r}: band {info.name!r} is in {info.crs} but band "
                f"{infos[0].name!r} is in {crs}; reproject the bands to one CRS"
            )
    finest = min(abs(i.transform.a) for i in infos)
    ref = [i for i in infos if math.isclose(abs(i.transform.a), finest, rel_tol=1e-9)]
    base = ref[0]
    # Column/row range of base's grid covered by every band at the finest resolution.
    c0, r0, c1, r1 = 0, 0, base.width, base.height
    for info in ref[1:]:
        left, top = info.transform @ (0, 0)
        right, bottom = info.transform @ (info.width, info.height)
        (ca, ra), (cb, rb) = ~base.transform @ (left, top), ~base.transform @ (right, bottom)
        c0 = max(c0, math.ceil(min(ca, cb) - 1e-6))
        c1 = min(c1, math.floor(max(ca, cb) + 1e-6))
        r0 = max(r0, math.ceil(min(ra, rb) - 1e-6))
        r1 = min(r1, math.floor(max(ra, rb) + 1e-6))
    if c1 <= c0 or r1 <= r0:
        raise SceneError(f"scene {scene.id!r}: bands {list(bands)} do not overlap")
    t = base.transform @ Affine.translation(c0, r0)
    return Grid(crs.to_wkt(), (t.a, t.b, t.c, t.d, t.e, t.f), c1 - c0, r1 - r0)


def check_compatible(scene: Scene, bands: tuple[str, ...], grid: Grid) -> None:
    """Raise :class:`SceneError` unless ``scene``'s bands share ``grid``'s CRS and overlap it."""
    left, bottom, right, top = grid.bounds
    crs = CRS.from_wkt(grid.crs_wkt)
    for info in _band_infos(scene, bands):
        name = info.name
        if info.crs != crs:
            raise SceneError(
                f"scene {scene.id!r}: band {name!r} is in {info.crs}, the run's grid in {crs}; "
                "reproject the scene to the grid's CRS"
            )
        bl, bt = info.transform @ (0, 0)
        br, bb = info.transform @ (info.width, info.height)
        if (
            min(bl, br) >= right
            or max(bl, br) <= left
            or min(bb, bt) >= top
            or max(bb, bt) <= bottom
        ):
            raise SceneError(
                f"scene {scene.id!r}: band {name!r} does not overlap the run's grid; "
                "pick scenes of the same area"
            )


def _read_block(
    src: rasterio.io.DatasetReader, indexes: list[int], window: Window, scene_id: str
) -> np.ndarray:
    """``src.read`` of ``window``; a file that opens but cannot be read is a :class:`SceneError`.

    A download cut short keeps its header, so it opens, and fails only where a block is read.
    """
    try:
        return src.read(indexes, window=window)
    except RasterioIOError as exc:
        cause = exc.__cause__ or exc
        reason = (str(cause).strip().splitlines() or [type(exc).__name__])[0]
        raise SceneError(
            redact(f"scene {scene_id!r}: cannot read {src.name} (truncated or corrupt?): {reason}")
        ) from None


def _by_path(scene: Scene, bands: tuple[str, ...]) -> dict[str, list[tuple[int, BandSource]]]:
    """Bands grouped by the file holding them, with their position in ``bands``."""
    by_path: dict[str, list[tuple[int, BandSource]]] = defaultdict(list)
    for i, name in enumerate(bands):
        src_band = scene.band(name)
        by_path[src_band.path].append((i, src_band))
    return by_path


def _check_file(
    src: rasterio.io.DatasetReader, scene: Scene, path: str, grid_crs: CRS, indexes: list[int]
) -> None:
    """Raise :class:`SceneError` if a file is in another CRS or lacks a listed band."""
    if src.crs != grid_crs:
        raise SceneError(
            f"scene {scene.id!r}: {path} is in {src.crs}, the run's grid in {grid_crs}; "
            "reproject it to the grid's CRS"
        )
    if max(indexes) > src.count:
        raise SceneError(
            f"scene {scene.id!r}: {path} has {src.count} bands but band "
            f"{max(indexes)} is listed; list one name per band, in file order"
        )


def _nodata_of(
    dtype: np.dtype, scene: Scene, src: rasterio.io.DatasetReader, index: int
) -> float | None:
    """The band's nodata value at its values' precision; None if it has none it can hold."""
    nodata = scene.nodata if scene.nodata is not None else src.nodatavals[index - 1]
    if nodata is None or (isinstance(nodata, float) and math.isnan(nodata)):
        return None  # NaN is invalid anyway, as every value that is not finite
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        if nodata != int(nodata) or not info.min <= nodata <= info.max:
            return None  # no stored value can equal it
        return float(nodata)
    return float(dtype.type(nodata))


def _reflectance(
    values: np.ndarray,
    scene: Scene,
    src: rasterio.io.DatasetReader,
    band: BandSource,
    out: np.ndarray,
    at: tuple[int, int, int],
    valid: np.ndarray,
) -> None:
    """Stored values to float32 reflectance at ``at`` (band, row, column) of ``out``.

    ``valid`` is cleared where nodata or NaN, over the same rows and columns. In one compiled
    pass (:func:`pipeline.kernels.to_reflectance`) where this process has loaded the kernel for
    the values' type (workers do at set-up, for uint16), else with numpy: loading it costs
    about 0.2 s, more than the client's few reads (checks, preview) take.
    """
    from pipeline.kernels import to_reflectance

    nodata = _nodata_of(values.dtype, scene, src, band.index)
    values = np.ascontiguousarray(values)
    scale, offset = band.scale, band.offset
    channel, top, left = at
    if any(sig[0] == numba.typeof(values) for sig in to_reflectance.signatures):
        to_reflectance(
            values,
            0.0 if nodata is None else nodata,
            nodata is not None,
            scale,
            offset,
            out,
            channel,
            top,
            left,
            valid,
        )
        return
    rows, cols = slice(top, top + values.shape[0]), slice(left, left + values.shape[1])
    if values.dtype.kind == "f":
        valid[rows, cols] &= np.isfinite(values)
    if nodata is not None:
        valid[rows, cols] &= values != nodata
    out[channel, rows, cols] = values.astype(np.float32) * np.float32(scale) + np.float32(offset)


def read_window(
    scene: Scene, bands: tuple[str, ...], grid: Grid, window: Window
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``bands`` of ``scene`` over ``window`` of ``grid``.

    Returns ``(data, valid)``: float32 ``[len(bands), h, w]`` scaled to reflectance with each
    band's ``scale`` and ``offset`` (0 where invalid), and a boolean ``[h, w]`` that is True
    where every band holds a real value.
    """
    h, w = int(window.height), int(window.width)
    data = np.empty((len(bands), h, w), dtype=np.float32)
    valid = np.empty((h, w), dtype=bool)
    read_window_into(scene, bands, grid, window, data, valid)
    return data, valid


def read_window_into(
    scene: Scene,
    bands: tuple[str, ...],
    grid: Grid,
    window: Window,
    data: np.ndarray,
    valid: np.ndarray,
    at: tuple[int, int, int] = (0, 0, 0),
) -> None:
    """As :func:`read_window`, into part of larger arrays.

    The bands land in ``data[b:b + len(bands), r:r + h, c:c + w]`` for ``at`` = ``(b, r, c)``
    (``data`` C-contiguous float32, ``valid`` C-contiguous bool ``[H, W]``, whose rows and
    columns there are set). A tile is read this way into the middle of its padded buffer,
    which saves a copy of the whole tile per padded axis.
    """
    h, w = int(window.height), int(window.width)
    b0, r0, c0 = at
    here = (slice(r0, r0 + h), slice(c0, c0 + w))
    if not (
        data.dtype == np.float32
        and valid.dtype == np.bool_
        and data.flags.c_contiguous
        and valid.flags.c_contiguous
        and valid.shape == data.shape[1:]
    ):
        raise ValueError("data must be C-contiguous float32 [C, H, W] and valid bool [H, W]")
    size = data.shape
    # The compiled pass does not check its indices: a part outside the buffer must stop here.
    if min(at) < 0 or b0 + len(bands) > size[0] or r0 + h > size[1] or c0 + w > size[2]:
        raise ValueError(
            f"{len(bands)} bands of {h}x{w} at {at} do not fit in a buffer of {data.shape}"
        )
    valid[here] = True
    t = grid.affine
    xs = t.c + t.a * (window.col_off + np.arange(w) + 0.5)
    ys = t.f + t.e * (window.row_off + np.arange(h) + 0.5)

    by_path = _by_path(scene, bands)

    grid_crs = CRS.from_wkt(grid.crs_wkt)
    for path, members in by_path.items():
        src = _open_held(path, scene.id)
        indexes = [b.index for _, b in members]
        _check_file(src, scene, path, grid_crs, indexes)
        st = src.transform
        # Index of the source pixel containing each target pixel centre.
        cols = np.floor((xs - st.c) / st.a + 1e-9).astype(np.int64)
        rows = np.floor((ys - st.f) / st.e + 1e-9).astype(np.int64)
        col_ok = (cols >= 0) & (cols < src.width)
        row_ok = (rows >= 0) & (rows < src.height)
        if not col_ok.any() or not row_ok.any():
            valid[here] = False
            continue
        sc0, sc1 = int(cols[col_ok].min()), int(cols[col_ok].max()) + 1
        sr0, sr1 = int(rows[row_ok].min()), int(rows[row_ok].max()) + 1
        with gdal_env(path):  # the settings of remote reads, in this thread
            block = _read_block(src, indexes, Window(sc0, sr0, sc1 - sc0, sr1 - sr0), scene.id)
        ci = np.clip(cols - sc0, 0, sc1 - sc0 - 1)
        ri = np.clip(rows - sr0, 0, sr1 - sr0 - 1)
        inside = row_ok[:, None] & col_ok[None, :]
        valid[here] &= inside
        # On the file's own grid the lookup is the identity: a view, not a gather (which
        # took 16 ms of a 60 ms 832² six-band read).
        same = block.shape[1:] == (h, w) and _is_range(ri) and _is_range(ci)
        for k, (i, b) in enumerate(members):
            source = block[k] if same else block[k][np.ix_(ri, ci)]
            _reflectance(source, scene, src, b, data, (b0 + i, r0, c0), valid)
    ok = valid[here]
    if not ok.all():
        data[b0 : b0 + len(bands), here[0], here[1]][:, ~ok] = 0.0


#: Pixels a scene's sample holds at most (:func:`sample_pixels`): about a megapixel.
SAMPLE_WINDOWS = 16
SAMPLE_EDGE = 64


def sample_windows(grid: Grid) -> list[Window]:
    """Windows a scene is sampled through (:func:`sample_pixels`).

    The whole grid when it holds at most a megapixel, else :data:`SAMPLE_WINDOWS` ×
    :data:`SAMPLE_WINDOWS` windows of :data:`SAMPLE_EDGE` pixels spread evenly over it:
    full-resolution pixels, so that statistics fitted to them hold at any scene size, as
    those of a decimated read would not.
    """
    full = SAMPLE_WINDOWS * SAMPLE_EDGE
    if grid.width * grid.height <= full * full:
        return [Window(0, 0, grid.width, grid.height)]
    out = []
    edge_r, edge_c = min(SAMPLE_EDGE, grid.height), min(SAMPLE_EDGE, grid.width)
    for i in range(SAMPLE_WINDOWS):
        for j in range(SAMPLE_WINDOWS):
            row = (grid.height - edge_r) * (2 * i + 1) // (2 * SAMPLE_WINDOWS)
            col = (grid.width - edge_c) * (2 * j + 1) // (2 * SAMPLE_WINDOWS)
            out.append(Window(col, row, edge_c, edge_r))
    return out


def sample_pixels(scenes: list[Scene], bands: tuple[str, ...], grid: Grid) -> list[np.ndarray]:
    """Each scene's ``bands`` where every scene holds data, through :func:`sample_windows`.

    float32 reflectance ``[len(bands), N]`` per scene, in the order of ``scenes``.
    """
    parts: list[list[np.ndarray]] = [[] for _ in scenes]
    for window in sample_windows(grid):
        reads = [read_window(s, bands, grid, window) for s in scenes]
        valid = np.logical_and.reduce([v for _, v in reads])
        for part, (data, _) in zip(parts, reads, strict=True):
            part.append(data[:, valid])
    return [np.concatenate(p, axis=1) for p in parts]


def _is_range(index: np.ndarray) -> bool:
    """Whether ``index`` is 0, 1, 2, … (a lookup that changes nothing)."""
    return bool(index.size == 0 or (index[0] == 0 and (np.diff(index) == 1).all()))


def raster_grid(path: str) -> Grid:
    """The grid (CRS, transform, size) of a raster file."""
    with _open(path, path) as src:
        if src.crs is None:
            raise SceneError(f"{path} has no CRS; georeference it (gdal_edit.py -a_srs)")
        t = src.transform
        return Grid(src.crs.to_wkt(), (t.a, t.b, t.c, t.d, t.e, t.f), src.width, src.height)


def read_band_window(path: str, window: Window) -> np.ndarray:
    """Read band 1 of a raster over ``window`` (inside the raster)."""
    with _open(path, path) as src:
        return src.read(1, window=window)


def read_band(path: str) -> tuple[np.ndarray, Grid, float | None]:
    """Read band 1 of a (single-band output) raster whole, with its grid and nodata value."""
    with rasterio.open(path) as src:
        t = src.transform
        grid = Grid(src.crs.to_wkt(), (t.a, t.b, t.c, t.d, t.e, t.f), src.width, src.height)
        return src.read(1), grid, src.nodata


#: Value of label arrays where the label is unknown (ignored in training and scoring).
NO_LABEL = 255


def read_labels(path: str, grid: Grid, window: Window, field: str = "class") -> np.ndarray:
    """Read class labels over ``window`` of ``grid`` from a raster mask or a polygon file.

    A raster (band 1) is looked up like a band, by pixel centre, so it may have any resolution
    and origin in the grid's CRS; its nodata and pixels outside it become :data:`NO_LABEL`.
    Polygons (GeoPackage, Shapefile, GeoJSON …) are burned in with the value of ``field``;
    pixels no polygon covers are class 0. Returns uint8 ``[h, w]``.
    """
    if is_raster(path):
        labels = Scene(id=path, bands=(BandSource("label", path, 1),))
        data, valid = read_window(labels, ("label",), grid, window)
        if (data[0][valid] > 254).any() or (data[0][valid] < 0).any():
            raise SceneError(f"labels {path}: class values must lie in 0..254")
        out = data[0].astype(np.uint8)
        out[~valid] = NO_LABEL
        return out
    return _rasterize_polygons(path, grid, window, field)


#: File suffixes read as rasters; any other label or prediction file is read as polygons.
RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".vrt", ".img", ".jp2"})


def is_raster(path: str) -> bool:
    """Whether ``path`` is read as a raster (by suffix) rather than as polygons."""
    return Path(path).suffix.lower() in RASTER_SUFFIXES


def _polygon_layer(path: str) -> str:
    """The file's first layer with geometries (a run's GeoPackage also holds tables)."""
    import pyogrio

    layers = pyogrio.list_layers(path)
    for name, geometry_type in layers:
        if geometry_type is not None:
            return str(name)
    return str(layers[0][0])


def _rasterize_polygons(path: str, grid: Grid, window: Window, field: str) -> np.ndarray:
    import pyogrio
    import shapely
    from pyproj import Transformer
    from rasterio import features
    from rasterio.warp import transform_bounds

    try:
        layer = _polygon_layer(path)
        info = pyogrio.read_info(path, layer=layer)
    except Exception as exc:  # pyogrio raises several unrelated types for unreadable files
        raise SceneError(f"labels {path}: cannot read polygons: {exc}") from None
    if field not in list(info["fields"]):
        raise SceneError(
            f"labels {path}: no field {field!r} (fields: {', '.join(info['fields'])}); "
            "name the class field with --label-field"
        )
    if not info["crs"]:
        raise SceneError(f"labels {path}: the layer has no CRS; assign one (ogr2ogr -a_srs)")
    src_crs = CRS.from_user_input(info["crs"])
    grid_crs = CRS.from_wkt(grid.crs_wkt)
    # Read only the polygons that reach this window, not the whole layer for every block.
    t = grid.window_transform(window)
    x0, y0 = t @ (0, 0)
    x1, y1 = t @ (int(window.width), int(window.height))
    bbox = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
    if src_crs != grid_crs:
        bbox = transform_bounds(grid_crs, src_crs, *bbox, densify_pts=21)
    meta, _, wkb, values = pyogrio.raw.read(path, layer=layer, columns=[field], bbox=bbox)
    geoms = shapely.from_wkb(wkb)
    if src_crs != grid_crs:
        tr = Transformer.from_crs(src_crs.to_wkt(), grid.crs_wkt, always_xy=True)
        geoms = shapely.transform(
            geoms, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1]))
        )
    h, w = int(window.height), int(window.width)
    vals = np.asarray(values[0])
    if len(geoms) == 0:
        return np.zeros((h, w), dtype=np.uint8)
    if (vals < 0).any() or (vals > 254).any():
        raise SceneError(f"labels {path}: field {field!r} must hold class values in 0..254")
    return features.rasterize(
        zip(geoms, vals.astype(int), strict=True),
        out_shape=(h, w),
        transform=grid.window_transform(window),
        fill=0,
        dtype="uint8",
    )


def read_overview(
    scene: Scene, bands: tuple[str, ...], grid: Grid, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``bands`` of ``scene`` over the whole of ``grid``, decimated to ``shape`` (h, w).

    For quick looks: each file is read once with a decimated read (``out_shape``, averaging,
    from the file's overviews where it has them), so the full-resolution scene is never held.
    Returns ``(data, valid)`` like :func:`read_window`: float32 ``[len(bands), h, w]``
    reflectance and a boolean ``[h, w]``.
    """
    from rasterio.enums import Resampling

    h, w = shape
    data = np.zeros((len(bands), h, w), dtype=np.float32)
    valid = np.ones((h, w), dtype=bool)
    left, bottom, right, top = grid.bounds
    grid_crs = CRS.from_wkt(grid.crs_wkt)
    by_path = _by_path(scene, bands)
    for path, members in by_path.items():
        with _open(path, scene.id) as src:
            indexes = [b.index for _, b in members]
            _check_file(src, scene, path, grid_crs, indexes)
            # The grid's extent in the file's pixel coordinates, and the part the file covers.
            inv = ~src.transform
            ca, ra = inv @ (left, top)
            cb, rb = inv @ (right, bottom)
            c_lo, c_hi, r_lo, r_hi = min(ca, cb), max(ca, cb), min(ra, rb), max(ra, rb)
            sc0, sc1 = max(c_lo, 0.0), min(c_hi, float(src.width))
            sr0, sr1 = max(r_lo, 0.0), min(r_hi, float(src.height))
            oc0 = round((sc0 - c_lo) / (c_hi - c_lo) * w)
            oc1 = round((sc1 - c_lo) / (c_hi - c_lo) * w)
            or0 = round((sr0 - r_lo) / (r_hi - r_lo) * h)
            or1 = round((sr1 - r_lo) / (r_hi - r_lo) * h)
            inside = np.zeros((h, w), dtype=bool)
            if oc1 <= oc0 or or1 <= or0:
                valid &= inside
                continue
            inside[or0:or1, oc0:oc1] = True
            valid &= inside
            with gdal_env(path):
                block = src.read(
                    indexes,
                    window=Window(sc0, sr0, sc1 - sc0, sr1 - sr0),
                    out_shape=(len(indexes), or1 - or0, oc1 - oc0),
                    resampling=Resampling.average,
                )
            for k, (i, b) in enumerate(members):
                _reflectance(block[k], scene, src, b, data, (i, or0, oc0), valid)
    if not valid.all():
        data[:, ~valid] = 0.0
    return data, valid


def read_band_overview(path: str, shape: tuple[int, int]) -> np.ndarray:
    """Read band 1 of a raster whole, decimated to ``shape`` (h, w) by nearest neighbour.

    Nearest keeps class values exact; a COG's overviews make the read cheap.
    """
    with _open(path, path) as src:
        return src.read(1, out_shape=shape)


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, read in chunks, as hex.

    Remembered per process by path, size and modification time: a run asks twice for its
    checkpoint's (the OpenVINO cache key, then the model version in the outputs), 0.05 s each
    for a 45 MB U-Net. A file rewritten since is read again.
    """
    stat = os.stat(path)
    return _sha256_of(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
