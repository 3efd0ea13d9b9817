"""Bad variants of one small synthetic scene, each as a catalog whose scene ``synth`` is broken.

Every variant keeps the scene id ``synth``, so a run of it writes to the folder a good run of
the scene wrote to, and a test can check that the good outputs survive the failure.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from tests.data import catalog_yaml, write_raster

SCENE = "synth"


def entry(assets: dict[str, Path | str], scale: float | None = 0.0001) -> dict[str, object]:
    """A catalog entry of one file per band, stored ×10000 unless ``scale`` says otherwise."""
    out: dict[str, object] = {"assets": {k: str(v) for k, v in assets.items()}}
    if scale is not None:
        out["scale"] = scale
    out["sensor"] = "sentinel-2-l1c"
    return out


def variant_catalog(folder: Path, scene_entry: dict[str, object]) -> Path:
    """A catalog in ``folder`` (made) whose only scene ``synth`` is ``scene_entry``."""
    folder.mkdir(parents=True, exist_ok=True)
    return catalog_yaml(folder, {SCENE: scene_entry})


def read_band(path: Path) -> tuple[np.ndarray, Affine]:
    with rasterio.open(path) as src:
        return src.read(1), src.transform


def truncated(folder: Path, good: dict[str, Path]) -> dict[str, object]:
    """Red cut after 1500 bytes: the header survives, the pixels do not (a broken download)."""
    red = folder / "red.tif"
    red.write_bytes(good["red"].read_bytes()[:1500])
    return entry({**good, "red": red})


def not_a_raster(folder: Path, good: dict[str, Path]) -> dict[str, object]:
    """Red is a text file with a .tif name."""
    red = folder / "red.tif"
    red.write_text("these are field notes, not pixels\n", encoding="utf-8")
    return entry({**good, "red": red})


def no_crs(folder: Path, good: dict[str, Path]) -> dict[str, object]:
    """Red has a transform but no CRS."""
    values, transform = read_band(good["red"])
    red = write_raster(folder / "red.tif", values, transform, crs=None, nodata=0)
    return entry({**good, "red": red})


def apart(folder: Path, good: dict[str, Path]) -> dict[str, object]:
    """Red lies 100 km east of the other bands."""
    values, t = read_band(good["red"])
    red = write_raster(
        folder / "red.tif", values, Affine(t.a, 0, t.c + 100_000, 0, t.e, t.f), nodata=0
    )
    return entry({**good, "red": red})


def missing_band(folder: Path, good: dict[str, Path]) -> dict[str, object]:
    """No swir16, which the forest workflow reads."""
    return entry({k: v for k, v in good.items() if k != "swir16"})


def all_nodata(folder: Path, good: dict[str, Path]) -> dict[str, object]:
    """Every band holds only its nodata value, 0."""
    paths = {}
    for name, path in good.items():
        values, transform = read_band(path)
        paths[name] = write_raster(
            folder / f"{name}.tif", np.zeros_like(values), transform, nodata=0
        )
    return entry(paths)


def unscaled(folder: Path, good: dict[str, Path]) -> dict[str, object]:
    """The good files, ×10000 digital numbers, with no `scale` in the catalog."""
    return entry(good, scale=None)


def missing_file(folder: Path, good: dict[str, Path]) -> dict[str, object]:
    return entry({**good, "red": folder / "nowhere.tif"})


def missing_url(folder: Path, good: dict[str, Path]) -> dict[str, object]:
    return entry({**good, "red": "https://127.0.0.1:1/x.tif"})


#: name → (what makes the variant, what its error line must say).
SCENE_VARIANTS: dict[
    str, tuple[Callable[[Path, dict[str, Path]], dict[str, object]], list[str]]
] = {
    "truncated": (truncated, ["red.tif", "cannot read", "truncated or corrupt"]),
    "not a raster": (
        not_a_raster,
        ["red.tif", "not recognized as being in a supported file format"],
    ),
    "no CRS": (no_crs, ["red.tif", "has no CRS"]),
    "grids apart": (apart, ["do not overlap"]),
    "missing band": (missing_band, ["no band 'swir16'"]),
    "all nodata": (all_nodata, ["no pixel holds data", "no output was written"]),
    "integers without scale": (unscaled, ["band 'red'", "scale: 0.0001"]),
    "missing file": (missing_file, ["nowhere.tif", "file not found"]),
    "missing URL": (missing_url, ["https://127.0.0.1:1/x.tif", "cannot open"]),
}


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file directly in ``folder``, hidden ones included, by name."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()
    }


def copy_scene(good: dict[str, Path], folder: Path) -> dict[str, Path]:
    """A copy of the scene's files in ``folder`` (made), to be changed there."""
    folder.mkdir(parents=True, exist_ok=True)
    return {k: Path(shutil.copy(v, folder / v.name)) for k, v in good.items()}
