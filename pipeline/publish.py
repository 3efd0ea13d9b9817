"""Writing a run's outputs: Cloud-Optimized GeoTIFFs, the GeoPackage, ``preview.png``, ``run.json``.

With :mod:`pipeline.reading`, the only module that touches paths. Every output is written under
a hidden temporary name in its final folder and renamed only when the whole run has succeeded
(:class:`Staging`), so a failed run never leaves a half-written file where a good one was.

The GeoPackage is written for the QGIS analysts actually run, Debian 12's QGIS 3.22 on GDAL 3.6:
GeoPackage version :data:`GPKG_VERSION`, a QML style per polygon layer in the ``layer_styles``
table that QGIS applies on open (:func:`category_style_qml`), and a ``runs`` attribute table
with the run's provenance (:func:`write_attributes`).
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
import shapely
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.errors import RasterioIOError

from pipeline.errors import OutputError
from pipeline.grid import Block, Grid
from pipeline.workflow import ClassDef

#: GeoPackage version written. GDAL ≥ 3.8 writes 1.4 by default, which GDAL 3.6 (Debian 12,
#: under QGIS 3.22) opens with a warning that it "may only be partially supported".
GPKG_VERSION = "1.2"

#: SQLite page size of the GeoPackages written. Polygon geometries are large blobs, which
#: SQLite stores in chains of overflow pages: larger pages make the chains shorter, so the
#: writes take less time and the file less space (``BENCHMARKS.md``, "Vectorizing"). Any
#: SQLite since 3.7 and so every GeoPackage reader opens them.
GPKG_PAGE_BYTES = 65536


class Staging:
    """Collects outputs under temporary names and renames them all on :meth:`commit`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._pending: dict[Path, Path] = {}

    def path(self, name: str) -> Path:
        """Temporary path to write output ``name`` to; registered for the commit."""
        final = self.folder / name
        # Keep the extension last: GDAL picks format conventions by it.
        stem, dot, ext = name.rpartition(".")
        temp = self.folder / (f".{stem}.partial.{ext}" if dot else f".{name}.partial")
        self._pending[temp] = final
        return temp

    def scratch(self, name: str) -> Path:
        """A temporary path in the output folder that is deleted, never committed."""
        temp = self.folder / f".{name}.scratch"
        self._pending[temp] = temp
        return temp

    def track(self, path: Path) -> Path:
        """Register a scratch file or folder made elsewhere, to be deleted like :meth:`scratch`."""
        self._pending[path] = path
        return path

    def outputs(self) -> list[str]:
        """Names of the outputs staged so far (scratch files left out), in staging order."""
        return [final.name for temp, final in self._pending.items() if temp != final]

    def __enter__(self) -> Staging:
        """Make the folder and check that files can be made in it, before any work is done."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.folder, prefix=".probe-"):
                pass
        except OSError as exc:
            raise OutputError(
                f"cannot write outputs in {self.folder}: {exc.strerror or exc}; pick another "
                "--out, or make the folder writable"
            ) from None
        return self

    def commit(self) -> list[Path]:
        """Rename every staged output to its final name; delete scratch files."""
        missing = [t for t, f in self._pending.items() if t != f and not t.exists()]
        assert not missing, f"staged outputs never written: {missing}"
        done = []
        for temp, final in self._pending.items():
            if temp == final and temp.is_dir():
                shutil.rmtree(temp, ignore_errors=True)
            elif temp == final:
                temp.unlink(missing_ok=True)
            else:
                os.replace(temp, final)
                done.append(final)
        self._pending.clear()
        return done

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for temp in self._pending:
            if temp.is_dir():
                shutil.rmtree(temp, ignore_errors=True)
            else:
                temp.unlink(missing_ok=True)
        self._pending.clear()


class BlockCache:
    """Finished blocks of a run, kept on disk so a killed run resumes where it stopped.

    One ``.npy`` per block in ``root/key`` (a key per scene, grid, model and configuration, so
    a changed model or setting never finds stale blocks), holding the block's classes and
    confidence as one uint8 ``[2, h, w]`` array: a plain array file, 0.5 ms less per block in
    the client than an ``.npz`` of the two (a zip archive with a checksum). Each file is
    written under a temporary name and renamed, so a kill mid-write leaves no half block.
    """

    def __init__(self, root: Path, key: str) -> None:
        self.root, self.key = root, key
        self.folder = root / key

    def _file(self, block: Block) -> Path:
        return self.folder / f"{block.key}.npy"

    def get(self, block: Block) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached (classes, confidence) of ``block``, or None."""
        path = self._file(block)
        if not path.is_file():
            return None
        try:
            both = np.load(path)
        except (OSError, ValueError):  # unreadable: compute the block again
            return None
        if both.shape != (2, block.height, block.width) or both.dtype != np.uint8:
            return None
        return both[0], both[1]

    def put(self, block: Block, classes: np.ndarray, confidence: np.ndarray) -> None:
        """Persist one finished block."""
        self.folder.mkdir(parents=True, exist_ok=True)
        temp = self.folder / f".{block.key}.partial.npy"
        np.save(temp, np.stack([classes, confidence]))
        os.replace(temp, self._file(block))

    def clear(self) -> None:
        """Delete every cached block under the root: after a finished run none is of use."""
        shutil.rmtree(self.root, ignore_errors=True)


#: zlib effort of the output COGs: level 1 against GDAL's default 6 makes files a few per cent
#: larger and copies them almost three times faster.
COG_DEFLATE_LEVEL = 1
#: GDAL's block cache (bytes) while COGs are copied. Building overviews and copying read each
#: block once, so a larger cache only holds memory: at 10980² two copies side by side took
#: 136-167 MB more than before them with the usual 64 MB cache, 81-87 MB with 16 MB, in the
#: same time.
COPY_CACHE_BYTES = 16 * 2**20
#: Block size of the output COGs, and the size below which they have no overviews.
COG_BLOCK = 512


_stderr_lock = threading.Lock()
_stderr_users = 0
_stderr_saved = -1
_stderr_capture: Any = None
#: What libtiff printed about failed writes (``_tiffWriteProc: No space left on device.``).
_libtiff_said: list[str] = []


@contextmanager
def libtiff_complaints() -> Iterator[None]:
    """Hold what libtiff prints on stderr while GDAL writes a GeoTIFF; keep its complaints.

    libtiff reports a failed write (a full disk) by printing straight to the process's
    stderr, past GDAL's and rasterio's error handling, so a run stopped by a full disk would
    show it beside our own line. While any write runs, file descriptor 2 points at a
    temporary file; afterwards the libtiff lines are kept for :func:`write_failure` and
    anything else written meanwhile (another thread's message) is passed on unchanged.
    """
    global _stderr_users, _stderr_saved, _stderr_capture
    with _stderr_lock:
        if _stderr_users == 0:
            if _stderr_capture is None:
                _stderr_capture = tempfile.TemporaryFile()
            sys.stderr.flush()
            _stderr_saved = os.dup(2)
            os.dup2(_stderr_capture.fileno(), 2)
        _stderr_users += 1
    try:
        yield
    finally:
        with _stderr_lock:
            _stderr_users -= 1
            if _stderr_users == 0:
                sys.stderr.flush()
                os.dup2(_stderr_saved, 2)
                os.close(_stderr_saved)
                _stderr_saved = -1
                _pass_on(_stderr_capture)


def restore_stderr() -> None:
    """Point file descriptor 2 back at the process's stderr if a stop left it captured.

    A stop's exception (Ctrl-C, SIGTERM) is raised wherever the main thread is, which can be
    between the halves of :func:`libtiff_complaints`, after stderr was pointed at the capture
    and before the code that points it back: the line that reports the stop must be seen.
    """
    global _stderr_users
    capture = _stderr_capture
    if capture is None or _stderr_saved < 0:
        return
    try:
        here, held = os.fstat(2), os.fstat(capture.fileno())
    except OSError:
        return
    if (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino):
        sys.stderr.flush()
        os.dup2(_stderr_saved, 2)
        _stderr_users = 0
        _pass_on(capture)


def _pass_on(capture: Any) -> None:
    """Keep libtiff's lines from ``capture``, write the rest to stderr, and empty it."""
    if os.fstat(capture.fileno()).st_size == 0:
        return
    capture.seek(0)
    text = capture.read().decode("utf-8", "replace")
    capture.seek(0)
    capture.truncate()
    rest = []
    for line in text.splitlines(keepends=True):
        if line.startswith(("_tiffWriteProc:", "TIFF")):
            _libtiff_said.append(line.strip())
        else:
            rest.append(line)
    if rest:
        sys.stderr.write("".join(rest))
        sys.stderr.flush()


class BlockRaster:
    """A single-band GeoTIFF on ``grid`` written block by block, then turned into a COG."""

    def __init__(
        self,
        path: Path,
        grid: Grid,
        nodata: int,
        colormap: dict[int, tuple[int, int, int, int]] | None = None,
        description: str = "",
        dtype: str = "uint8",
    ) -> None:
        self.path = path
        self.dtype = dtype
        self._width, self._height = grid.width, grid.height
        self._dst = rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=grid.width,
            height=grid.height,
            count=1,
            dtype=dtype,
            crs=CRS.from_wkt(grid.crs_wkt),
            transform=grid.affine,
            nodata=nodata,
            tiled=True,
            blockxsize=512,
            blockysize=512,
            # Uncompressed: this copy is scratch, read back by the vectorizer and the COG copy
            # (which compresses once); deflating it too costs the client CPU the workers need.
            BIGTIFF="IF_SAFER",
        )
        if colormap:
            self._dst.write_colormap(1, colormap)
        if description:
            self._dst.set_band_description(1, description)

    def write(self, block: Block, values: np.ndarray) -> None:
        """Write one block's values."""
        with libtiff_complaints():
            self._dst.write(values, 1, window=block.window)

    def close(self) -> None:
        """Flush and close the working GeoTIFF."""
        with libtiff_complaints():
            self._dst.close()

    def to_cog(self, dest: Path, overview_resampling: str) -> None:
        """Close, then copy to a Cloud-Optimized GeoTIFF at ``dest``.

        The overviews (halving until the smallest fits in one 512² block, the levels the COG
        driver makes) are built in the uncompressed working file first, and the copy takes
        them as they are; left to the COG driver, they went through a compressed temporary
        file, which took twice as long.
        """
        self.close()
        factors = overview_factors(self._width, self._height, COG_BLOCK)
        with small_block_cache(), libtiff_complaints():
            if factors:
                with rasterio.open(self.path, "r+") as work:
                    work.build_overviews(factors, Resampling[overview_resampling.lower()])
            rasterio.shutil.copy(
                self.path,
                dest,
                driver="COG",
                COMPRESS="DEFLATE",
                LEVEL=COG_DEFLATE_LEVEL,
                BLOCKSIZE=COG_BLOCK,
                OVERVIEWS="FORCE_USE_EXISTING" if factors else "NONE",
                BIGTIFF="IF_SAFER",
                # The tiles are done when the COGs are copied: compress on every core.
                NUM_THREADS="ALL_CPUS",
            )


_cache_lock = threading.Lock()
_copies_running = 0
_cache_before = 0


@contextmanager
def small_block_cache() -> Iterator[None]:
    """GDAL's block cache held at most :data:`COPY_CACHE_BYTES` while any COG copy runs.

    The cache is one per process, so copies in several threads share this setting: the first
    to start lowers it, the last to end puts back what it was.
    """
    global _copies_running, _cache_before
    with _cache_lock:
        if _copies_running == 0:
            _cache_before = int(get_gdal_config("GDAL_CACHEMAX"))
            set_gdal_config("GDAL_CACHEMAX", min(_cache_before, COPY_CACHE_BYTES))
        _copies_running += 1
    try:
        yield
    finally:
        with _cache_lock:
            _copies_running -= 1
            if _copies_running == 0:
                set_gdal_config("GDAL_CACHEMAX", _cache_before)


def overview_factors(width: int, height: int, block: int) -> list[int]:
    """Overview decimation factors of a COG: 2, 4, … until the overview fits in one block."""
    factors: list[int] = []
    factor = 1
    while math.ceil(width / factor) > block or math.ceil(height / factor) > block:
        factor *= 2
        factors.append(factor)
    return factors


def _wkb(geometry: np.ndarray) -> np.ndarray:
    """Geometries as an object array of WKB bytes (shapely objects are encoded)."""
    if len(geometry) == 0:
        return np.empty(0, dtype=object)
    if isinstance(geometry[0], bytes):
        return geometry
    return shapely.to_wkb(geometry)


#: WKB a :class:`PolygonWriter` gathers before it writes. Each write opens the GeoPackage,
#: updates its spatial index and commits, so fewer, larger writes cost less CPU
#: (``BENCHMARKS.md``, "Vectorizing").
WRITE_BATCH_BYTES = 32 * 2**20


def load_polygon_writer() -> None:
    """Import what :class:`PolygonWriter` writes with now, not at its first write."""
    import pyogrio.raw  # noqa: F401


class PolygonWriter:
    """A GeoPackage polygon layer written batch by batch, so no run holds all its polygons.

    The first write creates the layer (GeoPackage :data:`GPKG_VERSION`, spatial index,
    description); later ones are appended. Batches are gathered until they hold
    :data:`WRITE_BATCH_BYTES` of WKB, and written together, in the order they came.
    :meth:`close` writes what is left (an empty layer if no batch came), then ``style_qml``
    (see :func:`category_style_qml`) as the layer's default style.

    A ``staged`` file (one :class:`Staging` renames into place only once the run succeeds)
    is not forced to disk at each write's commit: a half-written one is never used, and the
    rasters beside it are not forced either.
    """

    def __init__(
        self,
        path: Path,
        layer: str,
        crs_wkt: str,
        description: str = "",
        style_qml: str | None = None,
        staged: bool = False,
    ) -> None:
        self.path, self.layer, self.crs_wkt = path, layer, crs_wkt
        self.description, self.style_qml, self.staged = description, style_qml, staged
        #: Polygons appended so far (written, or waiting to be at the next write).
        self.count = 0
        self._created = False
        self._pending: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        self._pending_bytes = 0

    def append(self, geometry: np.ndarray, fields: dict[str, np.ndarray]) -> None:
        """Add one batch of polygons in the layer's CRS and their fields.

        ``geometry`` holds shapely objects or their WKB bytes (written as they are). A batch
        of :data:`WRITE_BATCH_BYTES` or more is written at once, alone, after those waiting.
        """
        wkb = _wkb(geometry)
        size = sum(len(g) for g in wkb)
        if size >= WRITE_BATCH_BYTES:
            self._flush()
        self._pending.append((wkb, fields))
        self._pending_bytes += size
        self.count += len(wkb)
        if self._pending_bytes >= WRITE_BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        """Write the batches waiting, as one."""
        if not self._pending:
            return
        batches, self._pending, self._pending_bytes = self._pending, [], 0
        geometry = np.concatenate([wkb for wkb, _ in batches])
        names = list(batches[0][1])
        fields = {name: np.concatenate([f[name] for _, f in batches]) for name in names}
        del batches
        self._write(geometry, fields)

    def _write(self, geometry: np.ndarray, fields: dict[str, np.ndarray]) -> None:
        """Write WKB ``geometry`` and ``fields`` now: create the layer, or append to it."""
        if self._created and len(geometry) == 0:
            return
        options: dict[str, Any] = {"append": True}
        if not self._created:
            layer_options = {"SPATIAL_INDEX": "YES"}
            if self.description:
                layer_options["DESCRIPTION"] = self.description
            options = {
                "dataset_options": {"VERSION": GPKG_VERSION},
                "layer_options": layer_options,
            }
        import pyogrio  # not at module level: workers import this module and never need it

        with _gpkg_options(synchronous=not self.staged):
            pyogrio.raw.write(
                str(self.path),
                geometry=geometry,
                field_data=list(fields.values()),
                fields=list(fields),
                layer=self.layer,
                driver="GPKG",
                geometry_type="Polygon",
                crs=self.crs_wkt,
                **options,
            )
        self._created = True

    def close(self, empty_fields: dict[str, np.ndarray] | None = None) -> None:
        """Write what waits and finish the layer: empty (with ``empty_fields``) if none came."""
        self._flush()
        if not self._created:
            self._write(np.empty(0, dtype=object), empty_fields or {})
        if self.style_qml is not None:
            write_layer_style(self.path, self.layer, self.style_qml, description=self.description)


def write_polygons(
    path: Path,
    layer: str,
    geometry: np.ndarray,
    fields: dict[str, np.ndarray],
    crs_wkt: str,
    description: str = "",
    style_qml: str | None = None,
) -> None:
    """Write polygons and their attributes to a GeoPackage layer (with spatial index and style).

    A new file is a GeoPackage :data:`GPKG_VERSION`; an existing one gains the layer.
    """
    writer = PolygonWriter(path, layer, crs_wkt, description, style_qml)
    writer.append(geometry, fields)
    writer.close()


def write_attributes(
    path: Path, layer: str, row: Mapping[str, str | None], description: str = ""
) -> None:
    """Append one row of text fields to a non-spatial table of a GeoPackage (made if missing).

    The table is registered in ``gpkg_contents`` as ``attributes``, so GDAL and QGIS list it.
    """
    write_table(
        path,
        layer,
        {name: np.array([value], dtype=object) for name, value in row.items()},
        description=description,
    )


def write_layer_style(
    path: Path, layer: str, qml: str, name: str = "", description: str = ""
) -> None:
    """Store ``qml`` as the default style of ``layer`` in the GeoPackage's ``layer_styles`` table.

    The table has the schema QGIS creates when it saves a style into a GeoPackage (its ``FID``
    is ``id``); QGIS looks rows up by ``f_table_schema = ''``, table and geometry column.
    """
    import pyogrio

    geometry_column = pyogrio.read_info(str(path), layer=layer)["geometry_name"]
    row: dict[str, np.ndarray] = {
        "f_table_catalog": np.array([""], dtype=object),
        "f_table_schema": np.array([""], dtype=object),
        "f_table_name": np.array([layer], dtype=object),
        "f_geometry_column": np.array([geometry_column], dtype=object),
        "styleName": np.array([name or layer], dtype=object),
        "styleQML": np.array([qml], dtype=object),
        "styleSLD": np.array([""], dtype=object),
        "useAsDefault": np.array([True]),
        "description": np.array([description], dtype=object),
        "owner": np.array([""], dtype=object),
        "ui": np.array([None], dtype=object),
        "update_time": np.array(
            [np.datetime64(dt.datetime.now(dt.UTC).replace(tzinfo=None), "ms")]
        ),
    }
    write_table(path, "layer_styles", row, fid="id")


def write_table(
    path: Path, layer: str, fields: dict[str, np.ndarray], description: str = "", fid: str = ""
) -> None:
    """Rows ``fields`` (name -> column) into attributes table ``layer`` of a GeoPackage.

    The table is made when missing, with ``description`` and the feature-id column ``fid``.
    """
    import pyogrio

    exists = path.exists() and layer in pyogrio.list_layers(str(path))[:, 0]
    layer_options = {}
    if description:
        layer_options["DESCRIPTION"] = description
    if fid:
        layer_options["FID"] = fid
    with _gpkg_options():
        pyogrio.raw.write(
            str(path),
            geometry=None,
            field_data=list(fields.values()),
            fields=list(fields),
            layer=layer,
            driver="GPKG",
            geometry_type=None,
            append=exists,
            dataset_options={"VERSION": GPKG_VERSION},
            layer_options=None if exists else layer_options,
        )


@contextmanager
def _gpkg_options(synchronous: bool = True) -> Iterator[None]:
    """GeoPackages that pyogrio creates in this block get :data:`GPKG_PAGE_BYTES` pages.

    SQLite fixes a file's page size when it creates it; on an existing file the setting does
    nothing. Without ``synchronous``, the block's commits are not forced to disk.
    """
    import pyogrio

    options = {"OGR_SQLITE_PRAGMA": f"page_size={GPKG_PAGE_BYTES}"}
    if not synchronous:
        options["OGR_SQLITE_SYNCHRONOUS"] = "OFF"
    before = {name: pyogrio.get_gdal_config_option(name) for name in options}
    pyogrio.set_gdal_config_options(options)
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options(before)


def category_style_qml(field: str, classes: Sequence[ClassDef], outline_mm: float = 0.2) -> str:
    """A QGIS style (QML) for polygons: one category per class on ``field``, labels off.

    Each category fills with the class colour, is labelled with the class name and outlined
    in a darker shade of it, so neighbouring polygons of one class stay distinguishable.
    """
    root = ET.Element(
        "qgis",
        {"version": "3.22.0", "labelsEnabled": "0", "styleCategories": "Symbology|Labeling"},
    )
    renderer = ET.SubElement(
        root,
        "renderer-v2",
        {
            "type": "categorizedSymbol",
            "attr": field,
            "symbollevels": "0",
            "enableorderby": "0",
            "forceraster": "0",
            "referencescale": "-1",
        },
    )
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for i, c in enumerate(classes):
        ET.SubElement(
            categories,
            "category",
            {"value": str(c.value), "symbol": str(i), "label": c.name, "render": "true"},
        )
        symbol = ET.SubElement(
            symbols,
            "symbol",
            {"type": "fill", "name": str(i), "alpha": "1", "clip_to_extent": "1", "force_rhr": "0"},
        )
        sym_layer = ET.SubElement(
            symbol, "layer", {"class": "SimpleFill", "enabled": "1", "locked": "0", "pass": "0"}
        )
        r, g, b = c.rgb
        props = {
            "color": f"{r},{g},{b},255",
            "style": "solid",
            "outline_color": ",".join(str(int(v * 0.6)) for v in (r, g, b)) + ",255",
            "outline_style": "solid",
            "outline_width": f"{outline_mm:g}",
            "outline_width_unit": "MM",
            "joinstyle": "bevel",
        }
        # QGIS 3.22 writes properties twice, as an Option map (newer readers) and as <prop>
        # elements (older readers); doing the same keeps the style readable by both.
        options = ET.SubElement(sym_layer, "Option", {"type": "Map"})
        for k, v in props.items():
            ET.SubElement(options, "Option", {"type": "QString", "name": k, "value": v})
        for k, v in props.items():
            ET.SubElement(sym_layer, "prop", {"k": k, "v": v})
    ET.SubElement(root, "layerGeometryType").text = "2"  # polygons
    ET.indent(root)
    doctype = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
    return doctype + ET.tostring(root, encoding="unicode") + "\n"


def raster_style_qml(classes: Sequence[ClassDef]) -> str:
    """A QGIS style (QML) for a class raster: a palette of the classes, named and coloured.

    Written as ``classes.qml`` beside ``classes.tif``, which QGIS applies when it opens the
    raster (a layer's default style is the ``.qml`` of the same name), so the legend reads
    the class names, not the values.
    """
    root = ET.Element("qgis", {"version": "3.22.0", "styleCategories": "Symbology"})
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(
        pipe,
        "rasterrenderer",
        {"type": "paletted", "band": "1", "opacity": "1", "alphaBand": "-1", "nodataColor": ""},
    )
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for c in classes:
        ET.SubElement(
            palette,
            "paletteEntry",
            {"value": str(c.value), "color": c.colour, "alpha": "255", "label": c.name},
        )
    ET.SubElement(pipe, "brightnesscontrast", {"brightness": "0", "contrast": "0", "gamma": "1"})
    ET.SubElement(pipe, "rasterresampler", {"maxOversampling": "2"})
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root)
    doctype = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
    return doctype + ET.tostring(root, encoding="unicode") + "\n"


def category_names_pam(classes: Sequence[ClassDef], nodata: int = 255) -> str:
    """GDAL's sidecar (``.aux.xml``) naming a class raster's values: its category names.

    GDAL (``gdalinfo``, QGIS) reads it beside the raster: category *n* names value *n*;
    values no class uses are left unnamed, and ``nodata`` is named so.
    """
    names = {c.value: c.name for c in classes} | {nodata: "nodata"}
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", {"band": "1"})
    categories = ET.SubElement(band, "CategoryNames")
    for value in range(max(names) + 1):
        ET.SubElement(categories, "Category").text = names.get(value, "")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (a style, a document) to ``path`` as UTF-8."""
    path.write_text(text, encoding="utf-8")


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` (an encoded image such as ``preview.png``) to ``path``."""
    path.write_bytes(data)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON."""
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


#: What a write fails with when the disk, the user's quota or the file size limit is full.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def write_failure(folder: Path, exc: BaseException) -> OutputError | None:
    """The :class:`OutputError` to raise for ``exc``, if it is a failed write; else None.

    Python's writes carry the reason as an ``errno``; GDAL's (a GeoTIFF block, a COG copy)
    arrive as :class:`~rasterio.errors.RasterioIOError` saying the write failed, the reason
    printed by libtiff on its own.
    """
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    full = next((e for e in chain if getattr(e, "errno", None) in FULL_ERRNOS), None)
    if full is not None:
        reason = os.strerror(full.errno)  # type: ignore[attr-defined]
    elif isinstance(chain[0], RasterioIOError) and "write" in str(chain[0]).lower():
        said = _libtiff_said[-1:] or ["a GeoTIFF write failed"]
        reason = said[0].removeprefix("_tiffWriteProc:").strip().rstrip(".")
    else:
        return None
    return OutputError(
        f"cannot write outputs in {folder}: {reason}; make room (a full disk, quota or file size "
        "limit) and run again: no output was replaced, finished blocks are kept to resume"
    )


def replace_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON under a temporary name, then rename it to ``path``.

    For a file outside a run's staging (a batch's table): a reader sees the old file or the
    new one, never half of one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_json(tmp, data)
    os.replace(tmp, path)
