"""STAC sources: static trees built here with pystac from ../shared/data, and a local STAC API.

The trees hold the Slovenia scenes of the project catalog (one item per date), so a STAC scene
can be checked against the same scene listed in ``data_catalog.yaml``, pixel for pixel.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import requests
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.raster import RasterBand, RasterExtension
from rasterio.warp import transform_bounds

from pipeline import sources
from pipeline.catalog import Catalog, StacSource, load_catalog
from pipeline.errors import ConfigError, SceneError
from tests.data import catalog_yaml
from tests.helpers import user_error
from tests.stac_server import serve

#: The 13 bands of the Slovenia files, in file order, as eo common names and S2 band names.
S2_BANDS = [
    ("coastal", "B01"),
    ("blue", "B02"),
    ("green", "B03"),
    ("red", "B04"),
    ("rededge071", "B05"),
    ("rededge075", "B06"),
    ("rededge078", "B07"),
    ("nir", "B08"),
    ("nir08", "B8A"),
    ("nir09", "B09"),
    ("cirrus", "B10"),
    ("swir16", "B11"),
    ("swir22", "B12"),
]
#: The bands the one-file-per-band layout writes (a few are enough), by 1-based file index.
SPLIT_BANDS = {"blue": 2, "red": 4, "nir": 8, "swir16": 12}
DATES = ["2015-07-11", "2015-07-31", "2015-08-20", "2015-08-30", "2015-09-09"]
COLLECTION = "slovenia-2015"


def _slovenia_file(shared: Path, date: str) -> Path:
    return shared / "slovenia" / f"s2_l1c_13band_{date}.tif"


def _item(file: Path, date: str) -> pystac.Item:
    with rasterio.open(file) as src:
        box = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    w, s, e, n = box
    geometry = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    when = dt.datetime.fromisoformat(date).replace(hour=10, tzinfo=dt.UTC)
    return pystac.Item(f"slovenia-{date}", geometry, list(box), when, {})


def _add_asset(
    item: pystac.Item, key: str, href: Path, bands: list[tuple[str, str]], scale: float | None
) -> None:
    """Add a GeoTIFF asset whose ``eo:bands`` name ``bands`` (and scale, as raster:bands)."""
    asset = pystac.Asset(str(href), media_type=pystac.MediaType.GEOTIFF, roles=["data"])
    item.add_asset(key, asset)
    EOExtension.ext(asset, add_if_missing=True).bands = [
        Band.create(name=name, common_name=common) for common, name in bands
    ]
    if scale is not None:
        RasterExtension.ext(asset, add_if_missing=True).bands = [
            RasterBand.create(scale=scale, offset=0.0) for _ in bands
        ]


def _split(shared: Path, folder: Path, date: str) -> dict[str, Path]:
    """Write the ``SPLIT_BANDS`` of one date as single-band files, and an all-clear ``scl``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    with rasterio.open(_slovenia_file(shared, date)) as src:
        profile = src.profile | {"count": 1}
        for name, index in SPLIT_BANDS.items():
            out[name] = folder / f"{name}.tif"
            with rasterio.open(out[name], "w", **profile) as dst:
                dst.write(src.read(index), 1)
        out["scl"] = folder / "scl.tif"
        with rasterio.open(out["scl"], "w", **(profile | {"dtype": "uint8"})) as dst:
            dst.write(np.full(src.shape, 4, dtype=np.uint8), 1)
    return out


def slovenia_tree(
    shared: Path, folder: Path, layout: str = "stack", scale: float | None = None
) -> Path:
    """Build and save a static STAC catalog of the Slovenia dates; return its catalog.json.

    The root catalog holds collection ``slovenia-2015`` (one item per date) and collection
    ``other`` (one item, elsewhere in time). ``layout`` is ``stack`` (one 13-band asset, the
    shared file) or ``split`` (one asset per band, files written under ``folder``, plus an
    ``scl`` asset). ``scale`` goes into every band's ``raster:bands`` when given.
    """
    root = pystac.Catalog("root", "Slovenia test catalog")
    items = []
    for date in DATES:
        file = _slovenia_file(shared, date)
        item = _item(file, date)
        if layout == "stack":
            _add_asset(item, "image", file, S2_BANDS, scale)
        else:
            names = dict(S2_BANDS)
            written = _split(shared, folder / "files" / date, date)
            for name, path in written.items():
                if name == "scl":  # a quality band: known by its asset key, no eo:bands
                    item.add_asset(name, pystac.Asset(str(path), roles=["data"]))
                else:
                    _add_asset(item, name, path, [(name, names[name])], scale)
        items.append(item)
    extent = pystac.Extent(
        pystac.SpatialExtent([items[0].bbox]),
        pystac.TemporalExtent([[items[0].datetime, items[-1].datetime]]),
    )
    collection = pystac.Collection(COLLECTION, "Slovenia, summer 2015", extent)
    collection.add_items(items)
    other = pystac.Collection("other", "Another collection", extent)
    elsewhere = _item(_slovenia_file(shared, DATES[0]), "2020-01-01")
    elsewhere.id = "other-2020"
    _add_asset(elsewhere, "image", _slovenia_file(shared, DATES[0]), S2_BANDS, scale)
    other.add_item(elsewhere)
    root.add_child(collection)
    root.add_child(other)
    root.normalize_hrefs(str(folder / "stac"))
    root.make_all_asset_hrefs_relative()
    root.save(pystac.CatalogType.SELF_CONTAINED)
    return folder / "stac" / "catalog.json"


@pytest.fixture(scope="module")
def stack_tree(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 13-band-asset tree (no raster:bands), built once for the module."""
    return slovenia_tree(shared_data, tmp_path_factory.mktemp("stack"))


def _catalog(folder: Path, stac: dict[str, dict], scenes: dict | None = None) -> Catalog:
    """Load a catalog of ``scenes`` and ``stac`` sources written into ``folder``."""
    path = folder / "data_catalog.yaml"
    data = {"scenes": scenes or {}, "stac": stac}
    path.write_text(json.dumps(data), encoding="utf-8")  # JSON is YAML
    return load_catalog(path)


def _read(path: str, index: int) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(index)


# --- static catalogs and collections --------------------------------------------------------


def test_static_catalog_gives_the_series_oldest_first(
    stack_tree: Path, tmp_path: Path, shared_data: Path
):
    href = str(stack_tree)
    catalog = _catalog(tmp_path, {"slovenia-stac": {"href": href, "collection": COLLECTION}})
    assert catalog.series_names() == ["slovenia-stac"]
    assert catalog.ids() == []  # STAC ids are known once read, not at load
    ids = catalog.series_ids("slovenia-stac")
    assert ids == [f"slovenia-{d}" for d in DATES]
    saved = json.loads(next(stack_tree.parent.glob("*/slovenia-2015-07-11/*.json")).read_text())
    assert saved["assets"]["image"]["href"].startswith("../")
    scenes = catalog.series("slovenia-stac")
    assert [s.acquired for s in scenes] == [dt.date.fromisoformat(d) for d in DATES]
    assert {s.series for s in scenes} == {"slovenia-stac"}
    scene = scenes[0]
    assert scene.band_names == tuple(c for c, _ in S2_BANDS)
    assert [b.index for b in scene.bands] == list(range(1, 14))
    assert {b.path for b in scene.bands} == {str(_slovenia_file(shared_data, DATES[0]).resolve())}
    assert {(b.scale, b.offset) for b in scene.bands} == {(1.0, 0.0)}
    # Item ids join the catalog's ids for Catalog.scene.
    assert catalog.scene("slovenia-2015-08-30").acquired == dt.date(2015, 8, 30)


def test_stac_scene_reads_the_pixels_of_the_yaml_scene(
    stack_tree: Path, project_catalog: Catalog, tmp_path: Path
):
    catalog = _catalog(tmp_path, {"s": {"href": str(stack_tree), "collection": COLLECTION}})
    for date in (DATES[0], DATES[3]):
        mine = catalog.scene(f"slovenia-{date}").band("red")
        theirs = project_catalog.scene(f"slovenia-{date}").band("red")
        assert (mine.index, theirs.index) == (4, 4)
        np.testing.assert_array_equal(_read(mine.path, mine.index), _read(theirs.path, 4))


def test_catalog_without_collection_takes_every_item(stack_tree: Path, tmp_path: Path):
    catalog = _catalog(tmp_path, {"s": {"href": str(stack_tree)}})
    assert catalog.series_ids("s") == [*(f"slovenia-{d}" for d in DATES), "other-2020"]


def test_collection_file_read_directly(stack_tree: Path, tmp_path: Path):
    href = stack_tree.parent / COLLECTION / "collection.json"
    assert href.is_file()
    folder = tmp_path / "cat"
    folder.mkdir()
    relative = os.path.relpath(href, folder)
    assert relative.startswith("..")
    catalog = _catalog(folder, {"s": {"href": relative, "sensor": "sentinel-2-l1c"}})
    assert catalog.series_ids("s") == [f"slovenia-{d}" for d in DATES]
    assert catalog.scene(f"slovenia-{DATES[1]}").sensor == "sentinel-2-l1c"


def test_filters_apply_to_static_items(stack_tree: Path, tmp_path: Path):
    window = {"href": str(stack_tree), "datetime": "2015-07-20/2015-08-25"}
    box = {"href": str(stack_tree), "bbox": [0, 0, 1, 1]}
    open_end = {"href": str(stack_tree), "datetime": "2015-08-30/.."}
    catalog = _catalog(tmp_path, {"w": window, "b": box, "o": open_end})
    assert catalog.series_ids("w") == ["slovenia-2015-07-31", "slovenia-2015-08-20"]
    assert catalog.series_ids("b") == []
    assert catalog.series_ids("o") == ["slovenia-2015-08-30", "slovenia-2015-09-09", "other-2020"]


def test_single_band_assets_and_quality_key(shared_data: Path, tmp_path: Path):
    tree = slovenia_tree(shared_data, tmp_path, layout="split")
    catalog = _catalog(tmp_path, {"s": {"href": str(tree), "collection": COLLECTION}})
    scene = catalog.scene("slovenia-2015-07-11")
    assert scene.band_names == ("blue", "red", "nir", "swir16", "scl")
    assert all(b.index == 1 for b in scene.bands)
    red = scene.band("red")
    assert Path(red.path) == (tmp_path / "files" / "2015-07-11" / "red.tif").resolve()
    np.testing.assert_array_equal(
        _read(red.path, 1), _read(str(_slovenia_file(shared_data, "2015-07-11")), 4)
    )
    # Only the bands asked for, in the order asked.
    picked = _catalog(tmp_path, {"s": {"href": str(tree), "assets": ["nir", "red"]}})
    assert picked.scene("slovenia-2015-07-11").band_names == ("nir", "red")


def test_raster_bands_scale_wins_over_the_source_default(shared_data: Path, tmp_path: Path):
    tree = slovenia_tree(shared_data, tmp_path, layout="split", scale=0.0001)
    source = {"href": str(tree), "collection": COLLECTION, "scale": 0.5, "offset": -0.1}
    scene = _catalog(tmp_path, {"s": source}).scene("slovenia-2015-08-30")
    scaled = {b.name: (b.scale, b.offset) for b in scene.bands}
    assert scaled == {n: (0.0001, 0.0) for n in SPLIT_BANDS} | {"scl": (1.0, 0.0)}
    # Without raster:bands the source's own defaults apply.
    plain = slovenia_tree(shared_data, tmp_path / "plain", layout="split")
    source["href"] = str(plain)
    scene = _catalog(tmp_path, {"s": source}).scene("slovenia-2015-08-30")
    assert scene.band("red").scale == 0.5 and scene.band("red").offset == -0.1
    assert scene.band("scl").scale == 1.0


def test_stac_1_1_bands_and_the_narrowest_asset(tmp_path: Path):
    for name in ("visual.tif", "red.tif", "nir.tif"):
        (tmp_path / name).write_bytes(b"")
    data = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "s1",
        "geometry": None,
        "properties": {
            "datetime": None,
            "start_datetime": "2024-06-01T00:00:00Z",
            "end_datetime": "2024-06-30T00:00:00Z",
        },
        "links": [{"rel": "self", "href": str(tmp_path / "item.json")}],
        "assets": {
            # A true-colour preview names red too; the red band's own asset must win.
            "visual": {
                "href": "./visual.tif",
                "bands": [{"eo:common_name": c} for c in ("red", "green", "blue")],
            },
            "red": {
                "href": "./red.tif",
                "bands": [{"eo:common_name": "red", "raster:scale": 2e-5, "nodata": 0}],
            },
            "nir": {"href": "./nir.tif", "bands": [{"eo:common_name": "nir", "nodata": 0}]},
            "thumbnail": {"href": "./thumb.png"},
        },
    }
    item = pystac.Item.from_dict(data)
    scene = sources.item_scene(item, "s", StacSource(href="x.json", scale=0.1), "here")
    assert scene.band_names == ("red", "green", "blue", "nir")
    assert scene.band("red").path == str((tmp_path / "red.tif").resolve())
    assert (scene.band("red").scale, scene.band("nir").scale) == (2e-5, 0.1)
    assert scene.band("green").index == 2 and scene.band("green").path.endswith("visual.tif")
    assert scene.acquired == dt.date(2024, 6, 1)
    # The chosen bands' nodata disagree (green and blue give none): the source's applies.
    assert scene.nodata is None
    narrow = StacSource(href="x.json", assets=("red", "nir"))
    assert sources.item_scene(item, "s", narrow, "here").nodata == 0


def test_loading_reads_no_source_and_each_is_read_once(
    stack_tree: Path, tmp_path: Path, monkeypatch
):
    calls: list[str] = []
    real = sources.read_source

    def counted(name, source, catalog):
        calls.append(name)
        return real(name, source, catalog)

    monkeypatch.setattr(sources, "read_source", counted)
    unreachable = {"href": "http://127.0.0.1:9/catalog.json", "collection": "x"}
    catalog = _catalog(tmp_path, {"s": {"href": str(stack_tree)}, "remote": unreachable})
    assert calls == [] and catalog.series_names() == ["s", "remote"]
    catalog.series_ids("s")
    catalog.series("s")
    catalog.scene("slovenia-2015-07-11")
    assert calls == ["s"]


def test_stac_and_yaml_scenes_share_one_catalog(
    stack_tree: Path, tmp_path: Path, shared_data: Path
):
    file = _slovenia_file(shared_data, DATES[0])
    plain = {"local": {"path": str(file), "bands": ["coastal", "blue"], "series": "mine"}}
    catalog = _catalog(tmp_path, {"s": {"href": str(stack_tree)}}, plain)
    assert catalog.ids() == ["local"]
    assert catalog.series_names() == ["mine", "s"]
    assert catalog.scene("local").band_names == ("coastal", "blue")
    assert catalog.scene("other-2020").acquired == dt.date(2020, 1, 1)


# --- a STAC API -----------------------------------------------------------------------------


def test_api_search_gives_the_items_in_the_window(stack_tree: Path, tmp_path: Path):
    with serve(stack_tree.parent) as server:
        source = {
            "href": server.url + "/",
            "collection": COLLECTION,
            "datetime": "2015-07-20/2015-08-25",
            "bbox": [14.0, 45.0, 16.0, 47.0],
        }
        catalog = _catalog(tmp_path, {"api": source})
        assert catalog.series_ids("api") == ["slovenia-2015-07-31", "slovenia-2015-08-20"]
        scene = catalog.scene("slovenia-2015-08-20")
        assert scene.acquired == dt.date(2015, 8, 20) and scene.series == "api"
        red = scene.band("red")
        assert red.path.startswith(server.url + "/") and red.index == 4
        assert "POST /search" in server.requests_seen
        # The other collection and a box elsewhere give nothing.
        away = source | {"bbox": [0.0, 0.0, 1.0, 1.0]}
        other = source | {"collection": "other", "datetime": None}
        catalog = _catalog(tmp_path, {"away": away, "other": other})
        assert catalog.series_ids("away") == []
        assert catalog.series_ids("other") == ["other-2020"]


def test_test_server_answers_a_get_search(stack_tree: Path):
    with serve(stack_tree.parent) as server:
        params = {
            "collections": COLLECTION,
            "datetime": "2015-08-29T00:00:00Z/..",
            "bbox": "14,45,16,47",
        }
        found = requests.get(server.url + "/search", params=params, timeout=10).json()
    assert [f["id"] for f in found["features"]] == ["slovenia-2015-08-30", "slovenia-2015-09-09"]
    assert all(f["links"][-1]["rel"] == "self" for f in found["features"])


def test_static_catalog_over_http(stack_tree: Path, tmp_path: Path):
    with serve(stack_tree.parent) as server:
        source = {"href": server.url + "/catalog.json", "collection": COLLECTION}
        catalog = _catalog(tmp_path, {"web": source})
        assert catalog.series_ids("web") == [f"slovenia-{d}" for d in DATES]
        assert not any("search" in r for r in server.requests_seen)
        path = catalog.scene("slovenia-2015-07-11").band("nir").path
        assert path.startswith(server.url + "/")


def test_api_without_collection(stack_tree: Path, tmp_path: Path):
    with serve(stack_tree.parent) as server:
        catalog = _catalog(tmp_path, {"api": {"href": server.url + "/"}})
        message = user_error(ConfigError, catalog.series_ids, "api")
    assert "'api'" in message and "STAC API" in message and "`collection:`" in message


# --- errors ---------------------------------------------------------------------------------


def test_missing_static_file(tmp_path: Path):
    catalog = _catalog(tmp_path, {"s": {"href": "nowhere/catalog.json"}})
    message = user_error(ConfigError, catalog.series_ids, "s")
    assert str(catalog.path) in message and "STAC source 's'" in message
    assert str((tmp_path / "nowhere" / "catalog.json").resolve()) in message
    assert "not found" in message and "`href`" in message


@pytest.mark.parametrize("text", ["{not json", '{"type": "Catalog"}', "[1, 2]"])
def test_invalid_static_file(tmp_path: Path, text: str):
    (tmp_path / "catalog.json").write_text(text, encoding="utf-8")
    catalog = _catalog(tmp_path, {"s": {"href": "catalog.json"}})
    message = user_error(ConfigError, catalog.series_ids, "s")
    assert "STAC source 's'" in message and "cannot read" in message
    assert "STAC catalog, collection or API root" in message


def test_unreachable_server(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/catalog.json"
    catalog = _catalog(tmp_path, {"remote": {"href": url}})
    message = user_error(ConfigError, catalog.series_ids, "remote")
    assert "STAC source 'remote'" in message and url in message and "network" in message
    # Looking up an id that is nowhere says so, and why the source could not help.
    message = user_error(ConfigError, catalog.scene, "nope")
    assert "no scene 'nope'" in message and "STAC source 'remote'" in message


def test_unknown_collection(stack_tree: Path, tmp_path: Path):
    catalog = _catalog(tmp_path, {"s": {"href": str(stack_tree), "collection": "nope"}})
    message = user_error(ConfigError, catalog.series_ids, "s")
    assert "no collection 'nope'" in message and "slovenia-2015, other" in message


def test_unknown_series_lists_stac_sources(stack_tree: Path, tmp_path: Path):
    catalog = _catalog(tmp_path, {"s": {"href": str(stack_tree)}})
    message = user_error(ConfigError, catalog.series_ids, "slovenia")
    assert "no series 'slovenia'" in message and "known: s)" in message


def test_missing_band_is_the_items_problem_only(shared_data: Path, tmp_path: Path):
    tree = slovenia_tree(shared_data, tmp_path, layout="split")
    source = {"href": str(tree), "collection": COLLECTION, "assets": ["red", "swir22"]}
    catalog = _catalog(tmp_path, {"s": source})
    assert catalog.series_ids("s") == [f"slovenia-{d}" for d in DATES]
    message = user_error(SceneError, catalog.scene, "slovenia-2015-07-11")
    assert "STAC source 's'" in message and "'slovenia-2015-07-11'" in message
    assert "no band 'swir22'" in message and "blue, red, nir, swir16, scl" in message
    assert "`assets:`" in message
    assert "swir22" in (catalog.available("slovenia-2015-08-20") or "")


def test_missing_asset_file_is_the_items_problem_only(shared_data: Path, tmp_path: Path):
    tree = slovenia_tree(shared_data, tmp_path, layout="split")
    gone = tmp_path / "files" / "2015-07-31" / "nir.tif"
    gone.unlink()
    catalog = _catalog(tmp_path, {"s": {"href": str(tree), "collection": COLLECTION}})
    assert len(catalog.series_ids("s")) == 5
    message = user_error(SceneError, catalog.scene, "slovenia-2015-07-31")
    assert "asset 'nir'" in message and "file not found" in message and str(gone) in message
    assert catalog.scene("slovenia-2015-08-20").band_names[0] == "blue"


def test_item_id_that_clashes(stack_tree: Path, tmp_path: Path, shared_data: Path):
    file = str(_slovenia_file(shared_data, DATES[0]))
    plain = {"slovenia-2015-07-11": {"path": file, "bands": ["coastal"]}}
    catalog = _catalog(tmp_path, {"s": {"href": str(stack_tree)}}, plain)
    message = user_error(ConfigError, catalog.series_ids, "s")
    assert "'slovenia-2015-07-11'" in message and "`scenes:`" in message and "rename" in message
    both = _catalog(tmp_path, {"a": {"href": str(stack_tree)}, "b": {"href": str(stack_tree)}})
    both.series_ids("a")
    message = user_error(ConfigError, both.series_ids, "b")
    assert "STAC source 'a'" in message and "STAC source 'b'" in message


def test_source_named_like_a_series_of_scenes(tmp_path: Path):
    plain = {"a": {"path": "a.tif", "bands": ["red"], "series": "s"}}
    path = catalog_yaml(tmp_path, plain)
    path.write_text(json.dumps({"scenes": plain, "stac": {"s": {"href": "c.json"}}}))
    message = user_error(ConfigError, load_catalog, path)
    assert "STAC source 's'" in message and "rename" in message


@pytest.mark.parametrize(
    "source, field, needle",
    [
        ({"href": "s3://bucket/catalog.json"}, "href", "local path or an http(s) URL"),
        ({"href": "c.json", "bbox": [10, 50, 11, 40]}, "bbox", "south <= north"),
        ({"href": "c.json", "bbox": [1, 2, 3]}, "bbox", "four numbers"),
        ({"href": "c.json", "datetime": "2015-13-01/2015-12-31"}, "datetime", "not a date"),
        ({"href": "c.json", "datetime": "2015-12-31/2015-01-01"}, "datetime", "after the end"),
        ({"href": "c.json", "datetime": ".."}, "datetime", "`start/end`"),
        ({"href": "c.json", "assets": ["red", "B04"]}, "assets", "unknown band name 'B04'"),
        ({"href": "c.json", "scale": 0}, "scale", "must not be 0"),
        ({"href": "c.json", "colection": "x"}, "colection", "unknown key"),
    ],
)
def test_malformed_source(tmp_path: Path, source: dict, field: str, needle: str):
    path = tmp_path / "data_catalog.yaml"
    path.write_text(json.dumps({"scenes": {}, "stac": {"src": source}}), encoding="utf-8")
    message = user_error(ConfigError, load_catalog, path)
    assert str(path) in message and "STAC source 'src'" in message
    assert f"field {field!r}" in message and needle in message, message


def test_source_that_is_yaml(tmp_path: Path, stack_tree: Path):
    path = tmp_path / "data_catalog.yaml"
    path.write_text(
        "stac:\n"
        "  summer:\n"
        f"    href: {stack_tree}\n"
        "    collection: slovenia-2015\n"
        "    datetime: 2015-07-11\n"
        "    assets: [red, nir]\n",
        encoding="utf-8",
    )
    catalog = load_catalog(path)
    assert catalog.ids() == [] and catalog.series_ids("summer") == ["slovenia-2015-07-11"]
    assert catalog.scene("slovenia-2015-07-11").band_names == ("red", "nir")
