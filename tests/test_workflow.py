import copy
from pathlib import Path

import pytest
import yaml

from pipeline.errors import ConfigError, GeosegError
from pipeline.workflow import (
    PROJECT_WORKFLOWS,
    Workflow,
    available_workflows,
    find_workflow,
    load_workflow,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("fire", "forest", "mining")

BASE = {
    "name": "test-flow",
    "description": "a small test workflow",
    "model": {"kind": "index", "name": "forest-ndvi-swir", "params": {"ndvi_min": 0.5}},
    "classes": [
        {"value": 0, "name": "other", "colour": "#D9D9D9", "vectorize": False},
        {"value": 1, "name": "forest", "colour": "#1b7837"},
    ],
    "tile_size": 64,
    "halo": 2,
    "cleanup": {"sieve_pixels": 3, "min_area_m2": 100.0},
}


@pytest.fixture(autouse=True)
def _isolated_lookup(tmp_path: Path, monkeypatch):
    # Name lookup must not depend on where pytest was started or on the environment.
    monkeypatch.delenv("GEOSEG_WORKFLOWS", raising=False)
    monkeypatch.chdir(tmp_path)


def _write(tmp_path: Path, data: dict, name: str = "flow.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _variant(**changes) -> dict:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return data


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, GeosegError)
    message = str(info.value)
    assert "\n" not in message
    return message


def _load_error(tmp_path: Path, data: dict) -> tuple[str, Path]:
    path = _write(tmp_path, data)
    return _error(load_workflow, str(path)), path


# --- valid workflows ------------------------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_workflows_load_by_name(name: str):
    path = ROOT / "workflows" / f"{name}.yaml"
    assert find_workflow(name) == path.resolve()
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))

    wf = load_workflow(name)
    assert wf.name == name
    assert wf.model.kind == "index"
    assert wf.model.name == raw["model"]["name"]
    assert [c.name for c in wf.classes] == [c["name"] for c in raw["classes"]]
    assert [c.value for c in wf.classes] == list(range(len(raw["classes"])))
    assert any(c.vectorize for c in wf.classes)
    assert wf.tile_size == raw["tile_size"]
    assert wf.halo == raw["halo"]
    assert wf.cleanup.sieve_pixels == raw["cleanup"]["sieve_pixels"]
    assert load_workflow(str(path)) == wf


def test_shipped_workflows_are_available():
    assert set(SHIPPED) <= set(available_workflows())
    assert PROJECT_WORKFLOWS == ROOT / "workflows"


def test_valid_workflow_from_path(tmp_path: Path):
    wf = load_workflow(str(_write(tmp_path, BASE)))
    assert wf.name == "test-flow"
    assert wf.model.params == {"ndvi_min": 0.5}
    assert wf.classes[0].colour == "#d9d9d9"  # normalised to lower case
    assert wf.classes[0].rgb == (0xD9, 0xD9, 0xD9)
    assert wf.classes[1].rgb == (0x1B, 0x78, 0x37)
    assert [c.vectorize for c in wf.classes] == [False, True]  # vectorize defaults to true
    assert (wf.tile_size, wf.halo) == (64, 2)
    assert (wf.cleanup.sieve_pixels, wf.cleanup.min_area_m2) == (3, 100.0)


def test_defaults(tmp_path: Path):
    data = _variant()
    for key in ("description", "tile_size", "halo", "cleanup"):
        del data[key]
    wf = load_workflow(str(_write(tmp_path, data)))
    assert (wf.description, wf.tile_size, wf.halo) == ("", 1024, 0)
    assert (wf.cleanup.sieve_pixels, wf.cleanup.min_area_m2) == (0, 0.0)


def test_workflow_is_frozen(tmp_path: Path):
    wf = load_workflow(str(_write(tmp_path, BASE)))
    with pytest.raises(ValueError):
        wf.tile_size = 32


def test_geoseg_workflows_dir_is_searched_first(tmp_path: Path, monkeypatch):
    own = tmp_path / "own"
    own.mkdir()
    _write(own, _variant(name="forest", tile_size=32), name="forest.yaml")
    _write(own, _variant(name="custom"), name="custom.yaml")
    monkeypatch.setenv("GEOSEG_WORKFLOWS", str(own))
    assert load_workflow("forest").tile_size == 32
    assert load_workflow("custom").name == "custom"
    assert {"custom", *SHIPPED} <= set(available_workflows())


def test_workflows_folder_in_cwd_is_searched(tmp_path: Path):
    (tmp_path / "workflows").mkdir()
    _write(tmp_path / "workflows", _variant(name="local"), name="local.yaml")
    assert load_workflow("local").name == "local"


# --- errors ---------------------------------------------------------------------------------


def test_unknown_top_level_key(tmp_path: Path):
    message, path = _load_error(tmp_path, _variant(tilesize=256))
    assert str(path) in message
    assert "'tilesize'" in message
    assert "unknown key" in message


def test_unknown_key_in_class(tmp_path: Path):
    data = _variant()
    data["classes"][1]["color"] = "#000000"
    message, path = _load_error(tmp_path, data)
    assert str(path) in message
    assert "'classes.1.color'" in message
    assert "unknown key" in message


def test_unknown_key_in_cleanup(tmp_path: Path):
    message, path = _load_error(tmp_path, _variant(cleanup={"sieve": 3}))
    assert str(path) in message
    assert "'cleanup.sieve'" in message


@pytest.mark.parametrize("colour", ["green", "#12345", "#1234567", "#gg0000", "1b7837"])
def test_bad_colour(tmp_path: Path, colour: str):
    data = _variant()
    data["classes"][1]["colour"] = colour
    message, path = _load_error(tmp_path, data)
    assert str(path) in message
    assert "'classes.1.colour'" in message
    assert repr(colour) in message
    assert "#rrggbb" in message


@pytest.mark.parametrize("values", [[1, 2], [0, 2], [1, 0], [0, 0]])
def test_class_values_not_0_to_k_minus_1(tmp_path: Path, values: list[int]):
    data = _variant()
    for cls, value in zip(data["classes"], values, strict=True):
        cls["value"] = value
    message, path = _load_error(tmp_path, data)
    assert str(path) in message
    assert "class values must be 0, 1, 2" in message
    assert str(values) in message


def test_class_value_out_of_range(tmp_path: Path):
    data = _variant()
    data["classes"][1]["value"] = 255
    message, _ = _load_error(tmp_path, data)
    assert "'classes.1.value'" in message


def test_repeated_class_names(tmp_path: Path):
    data = _variant()
    data["classes"][1]["name"] = "other"
    message, path = _load_error(tmp_path, data)
    assert str(path) in message
    assert "class names repeat" in message
    assert "'other'" in message


def test_no_vectorized_class(tmp_path: Path):
    data = _variant()
    data["classes"][1]["vectorize"] = False
    message, path = _load_error(tmp_path, data)
    assert str(path) in message
    assert "vectorize" in message


def _three_classes() -> dict:
    data = _variant()
    data["classes"].append({"value": 2, "name": "loss", "colour": "#e7298a"})
    return data


def test_polygon_classes_merge_vectorized_classes(tmp_path: Path):
    plain = load_workflow(str(_write(tmp_path, _three_classes())))
    assert [(c.value, c.name) for c in plain.polygon_classes()] == [(1, "forest"), (2, "loss")]
    assert plain.polygon_lookup() == tuple(range(256))
    data = _three_classes() | {
        "polygons": [{"name": "woods", "colour": "#00FF00", "classes": [2, 1]}]
    }
    merged = load_workflow(str(_write(tmp_path, data)))
    (woods,) = merged.polygon_classes()
    assert (woods.value, woods.name, woods.colour, woods.vectorize) == (1, "woods", "#00ff00", True)
    lookup = merged.polygon_lookup()
    assert lookup[:4] == (0, 1, 1, 3) and lookup[253:] == (253, 254, 255)
    # The fire workflow's perimeters: every burned severity class, as one.
    fire = load_workflow("fire")
    assert [(c.value, c.name) for c in fire.polygon_classes()] == [(3, "burned")]


@pytest.mark.parametrize(
    ("groups", "needle"),
    [
        ([{"name": "g", "colour": "#000000", "classes": [0]}], "classes [0] are not vectorized"),
        ([{"name": "g", "colour": "#000000", "classes": [7]}], "classes [7] are not vectorized"),
        (
            [
                {"name": "a", "colour": "#000000", "classes": [1]},
                {"name": "b", "colour": "#000000", "classes": [1, 2]},
            ],
            "in two polygon classes",
        ),
        ([{"name": "loss", "colour": "#000000", "classes": [1]}], "polygon class names repeat"),
        ([{"name": "g", "colour": "green", "classes": [1]}], "is not #rrggbb"),
        ([{"name": "g", "colour": "#000000", "classes": []}], "polygons.0.classes"),
    ],
)
def test_polygon_classes_are_validated(tmp_path: Path, groups: list, needle: str):
    message, path = _load_error(tmp_path, _three_classes() | {"polygons": groups})
    assert str(path) in message and needle in message, message


def test_mask_settings(tmp_path: Path):
    data = _variant(mask={"method": "spectral", "max_masked_fraction": 0.5, "buffer_m": 30})
    mask = load_workflow(str(_write(tmp_path, data))).mask
    assert (mask.method, mask.max_masked_fraction, mask.buffer_m) == ("spectral", 0.5, 30)
    defaults = load_workflow(str(_write(tmp_path, _variant()))).mask
    assert (defaults.method, defaults.max_masked_fraction, defaults.buffer_m) == ("auto", 0.9, 60)
    for bad, needle in [
        ({"method": "fmask"}, "mask.method"),
        ({"max_masked_fraction": 1.5}, "mask.max_masked_fraction"),
        ({"buffer": 3}, "mask.buffer"),
    ]:
        message, _ = _load_error(tmp_path, _variant(mask=bad))
        assert needle in message, message


@pytest.mark.parametrize("tile_size", [0, 15, 16385, -1])
def test_tile_size_out_of_range(tmp_path: Path, tile_size: int):
    message, path = _load_error(tmp_path, _variant(tile_size=tile_size))
    assert str(path) in message
    assert "'tile_size'" in message


@pytest.mark.parametrize("tile_size", [16, 16384])
def test_tile_size_limits_are_inclusive(tmp_path: Path, tile_size: int):
    assert (
        load_workflow(str(_write(tmp_path, _variant(tile_size=tile_size)))).tile_size == tile_size
    )


def test_negative_halo(tmp_path: Path):
    message, _ = _load_error(tmp_path, _variant(halo=-1))
    assert "'halo'" in message


def test_bad_name(tmp_path: Path):
    message, _ = _load_error(tmp_path, _variant(name="has space"))
    assert "'name'" in message


def test_unknown_model_kind(tmp_path: Path):
    message, _ = _load_error(tmp_path, _variant(model={"kind": "unet", "name": "x"}))
    assert "'model.kind'" in message


def test_missing_required_field(tmp_path: Path):
    data = _variant()
    del data["classes"]
    message, _ = _load_error(tmp_path, data)
    assert "'classes'" in message


def test_unknown_workflow_name_lists_known():
    message = _error(load_workflow, "no-such-flow")
    assert "'no-such-flow'" in message
    known = message.split("known:", 1)[1]
    for name in SHIPPED:
        assert name in known


@pytest.mark.parametrize("given", ["missing.yaml", "sub/dir/missing", "missing.yml"])
def test_path_to_missing_file(tmp_path: Path, given: str):
    message = _error(load_workflow, given)
    assert given in message
    assert "not found" in message


def test_invalid_yaml(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nclasses: [ {value: 0\n", encoding="utf-8")
    message = _error(load_workflow, str(path))
    assert str(path.resolve()) in message
    assert "not valid YAML" in message


@pytest.mark.parametrize("text", ["", "- a\n- b\n"])
def test_workflow_that_is_not_a_mapping(tmp_path: Path, text: str):
    path = tmp_path / "list.yaml"
    path.write_text(text, encoding="utf-8")
    message = _error(load_workflow, str(path))
    assert str(path.resolve()) in message
    assert "mapping" in message


# --- with_overrides -------------------------------------------------------------------------


def test_with_overrides_applies_and_keeps_the_rest(tmp_path: Path):
    wf = load_workflow(str(_write(tmp_path, BASE)))
    assert wf.with_overrides() == wf
    changed = wf.with_overrides(tile_size=256, halo=8)
    assert (changed.tile_size, changed.halo) == (256, 8)
    assert (wf.tile_size, wf.halo) == (64, 2)
    assert changed.model == wf.model
    assert changed.classes == wf.classes
    assert changed.cleanup == wf.cleanup
    assert wf.with_overrides(halo=0).tile_size == 64


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"tile_size": 0}, "tile_size"),
        ({"tile_size": 10**6}, "tile_size"),
        ({"halo": -3}, "halo"),
    ],
)
def test_with_overrides_validates(tmp_path: Path, overrides: dict, field: str):
    wf = load_workflow(str(_write(tmp_path, BASE)))
    message = _error(wf.with_overrides, **overrides)
    assert "'test-flow'" in message
    assert f"'{field}'" in message


def test_with_overrides_on_shipped_workflow():
    wf = load_workflow("forest")
    assert isinstance(wf.with_overrides(tile_size=512), Workflow)
    message = _error(wf.with_overrides, tile_size=0)
    assert "'forest'" in message and "'tile_size'" in message
