"""The Python API (:mod:`pipeline.api`): the README's example, scenes as files, errors."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import geopandas
import numpy as np
import pytest
import rasterio

import pipeline
from pipeline.catalog import Catalog, Scene
from pipeline.errors import ConfigError, GeosegError, SceneError
from tests.conftest import ROOT
from tests.data import forest_scene, write_raster
from tests.helpers import user_error


def _readme_python() -> str:
    """The README's Python example, as it stands."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)  # type: ignore[union-attr]


@pytest.mark.slow
def test_the_readmes_example_runs(shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    """The example as written, its outputs sent to a temporary folder."""
    code = _readme_python()
    assert 'out="outputs"' in code
    code = code.replace('out="outputs"', f"out={str(tmp_path)!r}")
    monkeypatch.chdir(ROOT)  # the example's paths are the project's
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - our own documentation
    lines = printed.getvalue().splitlines()
    count, crs, km2, _ = lines[0].split(" ", 3)
    assert int(count) > 1000 and crs == "EPSG:32618" and 30 < float(km2) < 55
    assert 0 <= float(lines[1]) < 0.02  # the demo scene is clear
    assert lines[2].endswith("forest/s2-virginia/classes.tif ./classes.tif")
    assert "burned" in lines[3]


@pytest.fixture(scope="module")
def file_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic forest scene as one multi-band file (green, red, nir, swir16 at 10 m)."""
    folder = tmp_path_factory.mktemp("file")
    paths = forest_scene(folder / "bands")
    with rasterio.open(paths["red"]) as src:
        transform = src.transform
        bands = [rasterio.open(paths[b]).read(1) for b in ("green", "red", "nir")]
    with rasterio.open(paths["swir16"]) as src:  # 20 m: repeat to 10 m, one column west
        swir = np.repeat(np.repeat(src.read(1), 2, axis=0), 2, axis=1)[: bands[0].shape[0], 1:]
        swir = swir[:, : bands[0].shape[1]]
    return write_raster(folder / "scene.tif", np.stack([*bands, swir]), transform, nodata=0)


def test_a_file_runs_without_a_catalog(file_scene: Path, tmp_path: Path) -> None:
    result = pipeline.run(
        "forest",
        file_scene,
        out=tmp_path,
        bands=["green", "red", "nir", "swir16"],
        scale=0.0001,
        workers=1,
        tile_size=32,
    )
    assert isinstance(result, pipeline.RunResult)
    assert result.folder == tmp_path / "forest" / "scene"
    assert result.summary["catalog"] is None and result.summary["workflow"]["tile_size"] == 32
    polygons = result.polygons()
    assert isinstance(polygons, geopandas.GeoDataFrame)
    assert polygons.crs.to_epsg() == 32618
    assert set(polygons["class_name"]) == {"forest"}
    assert list(polygons.columns)[:3] == ["instance_id", "class", "class_name"]
    assert len(polygons) == result.summary["counts"]["polygons"] > 0
    assert polygons.area.sum() == pytest.approx(polygons["area_m2"].sum())
    assert result.item()["id"] == "forest-scene"
    with pytest.raises(KeyError, match="seams.tif"):
        result.path("seams.tif")


def test_scenes_and_workflows_by_name_path_or_object(
    synthetic_catalog: Catalog, tmp_path: Path
) -> None:
    scene = synthetic_catalog.scene("synth")
    assert isinstance(scene, Scene)
    workflow = pipeline.load_workflow(ROOT / "workflows" / "forest.yaml")
    by_object = pipeline.run(workflow, scene, out=tmp_path / "a", workers=1)
    by_name = pipeline.run(
        "forest", "synth", catalog=synthetic_catalog.path, out=tmp_path / "b", workers=1
    )
    for result in (by_object, by_name):
        with rasterio.open(result.path("classes.tif")) as src:
            classes = src.read(1)
        assert (classes == 1).sum() > 1000
    assert by_name.summary["catalog"] == str(synthetic_catalog.path)
    runs = [json.loads(r.path("run.json").read_text())["counts"] for r in (by_object, by_name)]
    assert runs[0] == runs[1]
    assert pipeline.open_catalog(synthetic_catalog.path).ids() == ["synth"]
    assert "s2-virginia" in pipeline.open_catalog().ids()  # the project's, from elsewhere


def test_errors_are_geoseg_errors(synthetic_catalog: Catalog, tmp_path: Path) -> None:
    def misspelt() -> None:
        pipeline.run("forest", "synth", catalog=synthetic_catalog, out=tmp_path, wokers=2)

    message = user_error(ConfigError, misspelt)
    assert "no option 'wokers'" in message and "workers" in message
    message = user_error(ConfigError, pipeline.run, "forest", "nope", None, synthetic_catalog)
    assert "no scene 'nope'" in message
    message = user_error(ConfigError, pipeline.run, "woods", "synth", None, synthetic_catalog)
    assert "no workflow named 'woods'" in message
    missing = tmp_path / "none.tif"
    message = user_error(SceneError, pipeline.scene_from_file, missing, ["red"])
    assert str(missing) in message
    write_raster(tmp_path / "one.tif", np.ones((1, 4, 4), np.uint16), forest_scene_transform())
    message = user_error(ConfigError, pipeline.scene_from_file, tmp_path / "one.tif", ["reds"])
    assert "unknown band name 'reds'" in message
    with pytest.raises(GeosegError, match="needs bands"):
        pipeline.run("forest", tmp_path / "one.tif", out=tmp_path, scale=0.0001)
    with pytest.raises(AttributeError):
        pipeline.frobnicate  # noqa: B018 - the package's lazy attributes stop at the API


def forest_scene_transform() -> rasterio.Affine:
    from tests.data import ORIGIN

    return rasterio.Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1])
