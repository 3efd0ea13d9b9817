"""The STAC Item of a run (``item.json``), validated offline.

The core specification is validated against the JSON schema pystac ships (STAC 1.1.0, with the
GeoJSON schemas it refers to), with no network. The extensions' schemas are not shipped in
any installed package, so every field each extension used requires is asserted here.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pystac
import pytest
import shapely
from pystac.validation import JsonSchemaSTACValidator

import pipeline
from pipeline.catalog import Catalog
from pipeline.masking import MASK_CLASSES
from pipeline.stac import footprint
from pipeline.workflow import load_workflow


@pytest.fixture(scope="module")
def item(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """``item.json`` of a forest run on the synthetic scene, and its folder."""
    from pipeline.catalog import load_catalog
    from tests.data import catalog_yaml, forest_scene

    tmp = tmp_path_factory.mktemp("stac")
    paths = forest_scene(tmp / "s")
    entry = {"assets": {k: str(v) for k, v in paths.items()}, "scale": 0.0001}
    entry |= {"acquired": "2024-06-01", "sensor": "sentinel-2-l1c"}
    catalog: Catalog = load_catalog(catalog_yaml(tmp, {"synth": entry}))
    result = pipeline.run("forest", "synth", catalog=catalog, out=tmp / "out", workers=1)
    return json.loads(result.path("item.json").read_text()), result.folder


def test_the_core_specification_validates_offline(item: tuple[dict, Path]) -> None:
    data, _ = item
    schema = JsonSchemaSTACValidator().validate_core(
        data, pystac.STACObjectType.ITEM, data["stac_version"]
    )
    assert schema == "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"
    # And it breaks where it should: a validator that passes everything proves nothing.
    broken = {k: v for k, v in data.items() if k != "geometry"}
    with pytest.raises(pystac.STACValidationError):
        JsonSchemaSTACValidator().validate_core(broken, pystac.STACObjectType.ITEM, "1.1.0")


def test_item_describes_the_scene_and_the_run(item: tuple[dict, Path]) -> None:
    data, folder = item
    summary = json.loads((folder / "run.json").read_text())
    assert data["type"] == "Feature" and data["id"] == "forest-synth"
    assert data["properties"]["datetime"] == "2024-06-01T00:00:00Z"  # acquired
    assert data["properties"]["created"].startswith(summary["created"][:19])
    # The footprint holds the scene's pixels, in WGS 84 (the Eastern Shore of Virginia).
    polygon = shapely.geometry.shape(data["geometry"])
    assert polygon.is_valid and shapely.box(*data["bbox"]).contains(polygon.centroid)
    west, south, east, north = data["bbox"]
    assert -75.8 < west < east < -75.6 and 37.7 < south < north < 37.8
    assert data["properties"]["geoseg:run_id"] == summary["run_id"]
    assert data["properties"]["geoseg:model_version"] == summary["model_version"]
    # Every output but the Item itself is an asset, by a relative href that exists.
    outputs = {p.name for p in folder.iterdir() if p.is_file()} - {"item.json"}
    assert {a["href"][2:] for a in data["assets"].values()} == outputs
    for asset in data["assets"].values():
        assert asset["href"].startswith("./") and (folder / asset["href"][2:]).is_file()
    assert data["assets"]["preview"]["roles"][0] == "thumbnail"
    assert data["assets"]["classes"]["type"] == pystac.MediaType.COG
    # The inputs, as links.
    derived = [link["href"] for link in data["links"] if link["rel"] == "derived_from"]
    assert sorted(Path(h.removeprefix("file://")).name for h in derived) == [
        "green.tif",
        "nir.tif",
        "red.tif",
        "swir16.tif",
    ]
    assert pystac.Item.from_dict(data).id == data["id"]  # pystac reads it back


def test_every_field_the_extensions_require(item: tuple[dict, Path]) -> None:
    data, _ = item
    extensions = set(data["stac_extensions"])
    assert extensions == {
        "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
        "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
        "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
    }
    props = data["properties"]
    # processing v1.2.0: at least one processing field, software a name → version map.
    assert props["processing:lineage"] and props["processing:level"] == "L4"
    assert props["processing:software"]["geoseg"] == pipeline.__version__
    assert all(isinstance(v, str) for v in props["processing:software"].values())
    dt.datetime.fromisoformat(props["processing:datetime"])
    # projection v2.0.0: proj:code (or wkt2), shape [rows, cols], a 6-number transform.
    assert props["proj:code"] == "EPSG:32618"
    assert props["proj:shape"] == [96, 80] and len(props["proj:transform"]) == 6
    classes = data["assets"]["classes"]
    # classification v2.0.0: classes with an integer value and a name of [0-9A-Za-z-_].
    workflow = load_workflow("forest")
    listed = classes["classification:classes"]
    named = [(c.value, c.name, c.colour[1:].upper()) for c in (*workflow.classes, *MASK_CLASSES)]
    assert [(c["value"], c["name"], c.get("color_hint")) for c in listed[:-1]] == named
    assert listed[-1] == {"value": 255, "name": "nodata", "nodata": True}
    for c in listed:
        assert isinstance(c["value"], int) and re.fullmatch(r"[0-9A-Za-z_-]+", c["name"])
        assert "color_hint" not in c or re.fullmatch(r"[0-9A-F]{6}", c["color_hint"])
    # raster v1.1.0: bands with a data type from its list and a nodata value.
    for key in ("classes", "confidence"):
        (band,) = data["assets"][key]["raster:bands"]
        assert band["data_type"] == "uint8" and band["nodata"] == 255
    assert data["assets"]["confidence"]["raster:bands"][0]["unit"] == "percent"


def test_footprint_of_a_geographic_grid_is_its_corners() -> None:
    from rasterio.crs import CRS

    from pipeline.grid import Grid

    grid = Grid(CRS.from_epsg(4326).to_wkt(), (0.01, 0, -118.5, 0, -0.01, 34.4), 50, 20)
    geometry, bbox = footprint(grid)
    assert bbox == pytest.approx([-118.5, 34.2, -118.0, 34.4])
    assert shapely.geometry.shape(geometry).area == pytest.approx(0.5 * 0.2)
