"""Writing a run's outputs: Cloud-Optimized GeoTIFFs, the GeoPackage and ``run.json``.

With :mod:`pipeline.reading`, the only module that touches paths. Every output is written under
a hidden temporary name in its final folder and renamed only when the whole run has succeeded
(:class:`Staging`), so a failed run never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyogrio
import rasterio
import rasterio.shutil
import shapely
from rasterio.crs import CRS

from pipeline.grid import Block, Grid


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

    def __enter__(self) -> Staging:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def commit(self) -> list[Path]:
        """Rename every staged output to its final name; delete scratch files."""
        missing = [t for t, f in self._pending.items() if t != f and not t.exists()]
        assert not missing, f"staged outputs never written: {missing}"
        done = []
        for temp, final in self._pending.items():
            if temp == final:
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


class BlockRaster:
    """A single-band uint8 GeoTIFF on ``grid`` written block by block, then turned into a COG."""

    def __init__(
        self,
        path: Path,
        grid: Grid,
        nodata: int,
        colormap: dict[int, tuple[int, int, int, int]] | None = None,
        description: str = "",
    ) -> None:
        self.path = path
        self._dst = rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=grid.width,
            height=grid.height,
            count=1,
            dtype="uint8",
            crs=CRS.from_wkt(grid.crs_wkt),
            transform=grid.affine,
            nodata=nodata,
            tiled=True,
            blockxsize=512,
            blockysize=512,
            compress="deflate",
            BIGTIFF="IF_SAFER",
        )
        if colormap:
            self._dst.write_colormap(1, colormap)
        if description:
            self._dst.set_band_description(1, description)

    def write(self, block: Block, values: np.ndarray) -> None:
        """Write one block's values."""
        self._dst.write(values, 1, window=block.window)

    def close(self) -> None:
        """Flush and close the working GeoTIFF."""
        self._dst.close()

    def to_cog(self, dest: Path, overview_resampling: str) -> None:
        """Close, then copy to a Cloud-Optimized GeoTIFF at ``dest``."""
        self.close()
        rasterio.shutil.copy(
            self.path,
            dest,
            driver="COG",
            COMPRESS="DEFLATE",
            BLOCKSIZE=512,
            OVERVIEW_RESAMPLING=overview_resampling,
            BIGTIFF="IF_SAFER",
        )


def write_polygons(
    path: Path,
    layer: str,
    geometry: np.ndarray,
    fields: dict[str, np.ndarray],
    crs_wkt: str,
    description: str = "",
) -> None:
    """Write polygons and their attribute columns to a GeoPackage layer (with spatial index)."""
    layer_options = {"SPATIAL_INDEX": "YES"}
    if description:
        layer_options["DESCRIPTION"] = description
    pyogrio.raw.write(
        str(path),
        geometry=shapely.to_wkb(geometry) if len(geometry) else np.empty(0, dtype=object),
        field_data=list(fields.values()),
        fields=list(fields),
        layer=layer,
        driver="GPKG",
        geometry_type="Polygon",
        crs=crs_wkt,
        layer_options=layer_options,
    )


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON."""
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
