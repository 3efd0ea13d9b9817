"""Our GeoPackages in a real client: Debian 12's QGIS 3.22 (GDAL 3.6) through PyQGIS, offscreen.

PyQGIS lives in the system Python (``python3-qgis``, installed by scripts/test when run as root),
not in the virtual environment, so ``tests/qgis_client.py`` runs there in a subprocess and
reports what QGIS sees as JSON. Without PyQGIS these tests skip, and fail under ``CI``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import shapely
from PIL import Image

from pipeline.masking import MASK_CLASSES
from pipeline.publish import GPKG_VERSION
from pipeline.workflow import load_workflow
from tests.conftest import CliRun

SYSTEM_PYTHON = Path("/usr/bin/python3")
CLIENT = Path(__file__).with_name("qgis_client.py")


def _env(tmp: Path) -> dict[str, str]:
    runtime = tmp / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(runtime)}


@pytest.fixture(scope="module")
def pyqgis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The system Python with PyQGIS; missing is a failure under CI and a skip elsewhere."""
    env = _env(tmp_path_factory.mktemp("probe"))
    found = SYSTEM_PYTHON.is_file() and (
        subprocess.run(
            [str(SYSTEM_PYTHON), "-c", "import qgis.core"],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        ).returncode
        == 0
    )
    if not found:
        message = (
            f"no PyQGIS for {SYSTEM_PYTHON}: install python3-qgis "
            "(scripts/test does when run as root with apt)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SYSTEM_PYTHON


def open_in_qgis(
    python: Path, gpkg: Path, out: Path, raster: Path | None = None
) -> tuple[dict[str, Any], str]:
    """Open every layer GDAL lists in ``gpkg`` (and ``raster``) with QGIS; report and stderr."""
    out.mkdir(parents=True, exist_ok=True)
    layers = [str(name) for name in pyogrio.list_layers(gpkg)[:, 0]]
    options = ["--raster", str(raster)] if raster is not None else []
    proc = subprocess.run(
        [str(python), str(CLIENT), *options, str(gpkg), str(out), *layers],
        env=_env(out),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert set(report["layers"]) == set(layers)
    return report, proc.stderr


def gdal_complaints(stderr: str, messages: list[dict[str, Any]]) -> list[str]:
    """GDAL warnings and errors on stderr plus every message QGIS logged at warning or above."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith(("Warning", "ERROR"))]
    return lines + [m["message"] for m in messages if m["level"] >= 1]


def colour_pixels(png: Path, hex_colour: str) -> int:
    """How many pixels of ``png`` have exactly ``hex_colour``."""
    rgb = np.asarray(Image.open(png).convert("RGB"))
    want = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return int((rgb == want).all(axis=2).sum())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("which", "crs"), [("virginia_forest_run", "EPSG:32618"), ("hurst_fire_run", "EPSG:4326")]
)
def test_qgis_opens_the_geopackage_styled(
    pyqgis: Path, which: str, crs: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    cli_run: CliRun = request.getfixturevalue(which)
    assert cli_run.proc.returncode == 0, cli_run.proc.stderr
    gpkg = cli_run.folder / "polygons.gpkg"
    summary = json.loads((cli_run.folder / "run.json").read_text())
    workflow = load_workflow(summary["workflow"]["name"])
    report, stderr = open_in_qgis(pyqgis, gpkg, tmp_path, cli_run.folder / "classes.tif")

    # Every layer opens, and nothing complains about the GeoPackage (version 1.4 would).
    assert all(info["valid"] for info in report["layers"].values()), report["layers"]
    assert gdal_complaints(stderr, report["messages"]) == []

    # The polygon layer: feature count and CRS as written, the stored style applied on open.
    written = pyogrio.read_info(gpkg, layer=workflow.name)
    layer = report["layers"][workflow.name]
    assert layer["spatial"] and layer["features"] == written["features"] > 0
    assert layer["crs"] == written["crs"] == crs
    assert layer["renderer"] == "categorizedSymbol"
    assert layer["class_attribute"] == "class"
    assert not layer["labels_enabled"]
    shown = workflow.polygon_classes()
    assert layer["categories"] == [
        {"value": str(c.value), "label": c.name, "colour": c.colour, "render": True} for c in shown
    ]

    # classes.tif opens with its style (classes.qml): a palette of named classes, cloud and
    # cloud shadow among them.
    raster = report["raster"]
    assert raster["valid"] and raster["crs"] == crs and raster["renderer"] == "paletted"
    expected = [*workflow.classes, *MASK_CLASSES]
    assert raster["classes"] == [
        {"value": c.value, "label": c.name, "colour": c.colour} for c in expected
    ]
    # And GDAL names the values (classes.tif.aux.xml), as gdalinfo lists them.
    categories = raster["gdal_categories"]
    assert len(categories) == 256 and categories[255] == "nodata"
    assert {c.value: c.name for c in expected} == {
        v: name for v, name in enumerate(categories) if name and v != 255
    }

    # The provenance table reads as a table of one row: this run's.
    runs = report["layers"]["runs"]
    assert not runs["spatial"] and runs["features"] == 1
    row = runs["rows"][0]
    assert row["run_id"] == summary["run_id"]
    assert row["workflow"] == workflow.name and row["scene"] == summary["scene"]["id"]
    assert row["model_version"] == summary["model_version"]
    assert json.loads(row["config"])["workflow"] == summary["workflow"]

    # The rendered map shows the polygons in their class colours.
    png = tmp_path / "map.png"
    assert png.is_file()
    rgb = np.asarray(Image.open(png).convert("RGB"))
    assert (rgb != 255).any(axis=2).mean() > 0.02  # not blank
    _, _, wkb, values = pyogrio.raw.read(gpkg, layer=workflow.name, columns=["class"])
    areas = shapely.area(shapely.from_wkb(wkb))
    for c in shown:
        share = areas[values[0] == c.value].sum() / areas.sum()
        if share > 0.05:  # a class that covers a visible part of the map
            assert colour_pixels(png, c.colour) > 200, c.name


def test_qgis_client_sees_a_geopackage_1_4_warning(pyqgis: Path, tmp_path: Path) -> None:
    """The check above can fail: GDAL 3.6 warns about GeoPackage 1.4, our old default."""
    assert GPKG_VERSION != "1.4"
    gpkg = tmp_path / "new.gpkg"
    pyogrio.raw.write(
        str(gpkg),
        geometry=shapely.to_wkb(np.array([shapely.box(0, 0, 10, 10)])),
        field_data=[np.array([1], dtype=np.int32)],
        fields=["class"],
        layer="forest",
        driver="GPKG",
        geometry_type="Polygon",
        crs="EPSG:32618",
        dataset_options={"VERSION": "1.4"},
    )
    report, stderr = open_in_qgis(pyqgis, gpkg, tmp_path / "qgis")
    complaints = gdal_complaints(stderr, report["messages"])
    assert any("partially supported" in c for c in complaints), stderr
    assert report["layers"]["forest"]["renderer"] == "singleSymbol"  # no stored style
