"""Open a GeoPackage the way QGIS does and report what QGIS sees (run by the system Python).

Not a test module: tests/test_qgis.py runs it with Debian's ``/usr/bin/python3``, which has
PyQGIS (``python3-qgis``) but not the project's virtual environment, so it uses the standard
library and PyQGIS only.

Usage: ``python3 tests/qgis_client.py [--raster TIF] GPKG OUT_DIR LAYER [LAYER ...]``. Opens
every LAYER with ``QgsVectorLayer``, renders the spatial ones to ``OUT_DIR/map.png`` and
writes ``OUT_DIR/report.json``: per layer its validity, feature count, CRS, renderer and
categories, the rows of non-spatial tables, and every message QGIS logged. With ``--raster``,
that raster is opened with ``QgsRasterLayer`` too and reported under ``raster``: validity,
renderer and, for a paletted one, its classes (value, label, colour), and the category names
GDAL reads for it (what ``gdalinfo`` lists).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor


def text(value: Any) -> str | None:
    # PyQGIS gives NULL as a null QVariant, whose str() is "NULL".
    return None if value is None or str(value) == "NULL" else str(value)


def describe(layer: QgsVectorLayer) -> dict[str, Any]:
    info: dict[str, Any] = {
        "valid": layer.isValid(),
        "features": layer.featureCount(),
        "spatial": layer.isSpatial(),
        "crs": layer.crs().authid() if layer.isSpatial() else None,
        "fields": [f.name() for f in layer.fields()],
        "labels_enabled": layer.labelsEnabled(),
    }
    renderer = layer.renderer() if layer.isSpatial() else None
    if renderer is not None:
        info["renderer"] = renderer.type()
        if renderer.type() == "categorizedSymbol":
            info["class_attribute"] = renderer.classAttribute()
            info["categories"] = [
                {
                    "value": str(c.value()),
                    "label": c.label(),
                    "colour": c.symbol().color().name(),
                    "render": c.renderState(),
                }
                for c in renderer.categories()
            ]
    if not layer.isSpatial() and layer.featureCount() <= 10:
        names = info["fields"]
        info["rows"] = [
            dict(zip(names, map(text, f.attributes()), strict=True)) for f in layer.getFeatures()
        ]
    return info


def render(layers: list[QgsVectorLayer], path: Path) -> None:
    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(layers[0].crs())
    extent = QgsRectangle(layers[0].extent())
    for layer in layers[1:]:
        extent.combineExtentWith(layer.extent())
    settings.setExtent(extent)
    settings.setOutputSize(QSize(800, 800))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    job.renderedImage().save(str(path), "PNG")


def describe_raster(layer: QgsRasterLayer) -> dict[str, Any]:
    info: dict[str, Any] = {"valid": layer.isValid(), "crs": layer.crs().authid()}
    try:  # what gdalinfo shows of the band: GDAL's category names
        from osgeo import gdal

        band = gdal.Info(layer.source(), format="json")["bands"][0]
        info["gdal_categories"] = band.get("categories")
    except ImportError:
        info["gdal_categories"] = None
    renderer = layer.renderer()
    info["renderer"] = renderer.type() if renderer is not None else None
    if renderer is not None and renderer.type() == "paletted":
        info["classes"] = [
            {"value": int(c.value), "label": c.label, "colour": c.color.name()}
            for c in renderer.classes()
        ]
    return info


def inspect(
    gpkg: str,
    out_dir: str,
    layer_names: list[str],
    report: dict[str, Any],
    raster: str | None = None,
) -> None:
    try:
        from osgeo import gdal

        report["gdal"] = gdal.__version__
    except ImportError:
        report["gdal"] = None
    layers = {name: QgsVectorLayer(f"{gpkg}|layername={name}", name, "ogr") for name in layer_names}
    for name, layer in layers.items():
        report["layers"][name] = describe(layer)
    spatial = [lyr for lyr in layers.values() if lyr.isValid() and lyr.isSpatial()]
    if spatial:
        render(spatial, Path(out_dir) / "map.png")
    if raster is not None:
        report["raster"] = describe_raster(QgsRasterLayer(raster, "classes"))


def main(gpkg: str, out_dir: str, layer_names: list[str], raster: str | None = None) -> None:
    app = QgsApplication([], False)
    app.initQgis()
    messages: list[dict[str, Any]] = []
    QgsApplication.messageLog().messageReceived.connect(
        lambda message, tag, level: messages.append(
            {"tag": tag, "level": int(level), "message": message}
        )
    )
    report: dict[str, Any] = {"qgis": Qgis.QGIS_VERSION, "layers": {}, "messages": messages}
    # Layers live only inside inspect(): QGIS crashes on exit if any outlives exitQgis().
    inspect(gpkg, out_dir, layer_names, report, raster)
    app.processEvents()
    Path(out_dir, "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    app.exitQgis()


if __name__ == "__main__":
    args = sys.argv[1:]
    tif = None
    if args[:1] == ["--raster"]:
        tif, args = args[1], args[2:]
    main(args[0], args[1], args[2:], tif)
