"""The real ``geoseg`` command, end to end, and every error path it shows a user."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely

from pipeline.cli import main
from tests.conftest import ROOT
from tests.data import catalog_yaml
from tests.helpers import geoseg

#: The Hurst fire's pre and post scenes, from the project root.
HURST = "../shared/data/fire/HURST_20250107"

GEOSEG = [sys.executable, "-m", "pipeline"]


def in_process(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> subprocess.CompletedProcess[str]:
    """Run ``main`` in this process (fast) and report it like a finished subprocess."""
    try:
        code = main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def assert_user_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "args", [["--help"], ["run", "--help"], ["catalog", "--help"], ["catalog", "list", "--help"]]
)
def test_help(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: geoseg" in out
    if args[0] == "run":
        for option in (
            "--scene",
            "--before",
            "--catalog",
            "--out",
            "--tile-size",
            "--halo",
            "--workers",
            "--scheduler",
        ):
            assert option in out


def test_catalog_list_shows_every_scene(shared_data, capsys):
    assert main(["catalog", "list", "--catalog", str(ROOT / "data_catalog.yaml")]) == 0
    out = capsys.readouterr().out
    for sid in ("s2-virginia", "hurst-pre", "hurst-post", "slovenia-2015-07-11", "pucallpa-2020"):
        line = next(ln for ln in out.splitlines() if ln.startswith(sid + " "))
        assert line.rstrip().endswith("ok")


def test_catalog_list_marks_missing_files(tmp_path, capsys):
    cat = catalog_yaml(tmp_path, {"gone": {"path": "nowhere.tif", "bands": ["red"]}})
    assert main(["catalog", "list", "--catalog", str(cat)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("gone "))
    assert line.rstrip().endswith("missing")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["run", "forest", "--scene", "nope"], ["no scene 'nope'", "s2-virginia"]),
        (["run", "woods", "--scene", "s2-virginia"], ["no workflow named 'woods'", "forest"]),
        (["run", "fire", "--scene", "hurst-post"], ["--before"]),
        (
            ["run", "forest", "--scene", "s2-virginia", "--before", "hurst-pre"],
            ["no band 'swir16'"],
        ),
        (["run", "fire", "--scene", "hurst-post", "--before", "s2-virginia"], ["s2-virginia"]),
        (["run", "forest", "--scene", "s2-virginia", "--tile-size", "0"], ["--tile-size"]),
        (["run", "forest", "--scene", "s2-virginia", "--tile-size", "8"], ["tile_size"]),
        (["run", "forest", "--scene", "s2-virginia", "--halo", "-3"], ["--halo"]),
        (["run", "forest"], ["--scene"]),
        (
            ["run", "forest", "--scene", "s2-virginia", "--catalog", "missing.yaml"],
            ["missing.yaml"],
        ),
        (
            [
                "run",
                "forest",
                "--scene",
                "s2-virginia",
                "--workers",
                "2",
                "--scheduler",
                "tcp://127.0.0.1:1",
            ],
            ["--scheduler"],
        ),
        (["frobnicate"], ["frobnicate"]),
        (["run", "fire", "--scene", f"{HURST}/post.tif"], ["catalog ids", "--bands"]),
        (
            ["run", "fire", "--scene", "hurst-post", "--before", "hurst-pre", "--scale", "1e-4"],
            ["--scale describes a scene given as a file", "--bands"],
        ),
        (
            ["run", "fire", "--scene", "a.tif", "--scene", "b.tif", "--bands", "red,nir"],
            ["--bands runs one --scene"],
        ),
        (["run", "forest", "--scene", "a.tif", "--bands", "red,,nir"], ["--bands", "NAME,NAME"]),
        (["run", "forest", "--scene", "a.tif", "--bands", "red", "--scale", "x"], ["--scale"]),
    ],
)
def test_user_errors_are_one_line_exit_2(shared_data, args, needles, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    extra = ["--out", str(tmp_path)] if args[0] == "run" and len(args) > 2 else []
    assert_user_error(in_process([*args, *extra], capsys), *needles)
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_file_scene_without_a_catalog_maps_what_its_catalog_entry_maps(
    shared_data, hurst_fire_run, tmp_path
):
    """``--bands`` and ``--scale`` describe the Hurst files as the catalog does."""
    bands = "blue,green,red,nir,swir22"
    described = ["--bands", bands, "--scale", "0.0001", "--sensor", "sentinel-2-l2a"]
    proc = geoseg(
        "run", "fire", "--scene", f"{HURST}/post.tif", "--before", f"{HURST}/pre.tif",
        *described, "--tile-size", "100", "--out", str(tmp_path), cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("fire on post: 1 polygons")
    for name in ("classes.tif", "confidence.tif"):
        with (
            rasterio.open(tmp_path / "fire" / "post" / name) as ours,
            rasterio.open(hurst_fire_run.folder / name) as catalogued,
        ):
            assert np.array_equal(ours.read(), catalogued.read())


def test_user_error_through_the_real_command(tmp_path):
    proc = geoseg("run", "forest", "--scene", "nope", "--out", str(tmp_path))
    assert_user_error(proc, "no scene 'nope'")


def test_bad_catalog_names_file_scene_and_field(tmp_path, capsys):
    cat = catalog_yaml(
        tmp_path, {"x": {"path": "a.tif", "bands": ["red"], "acquired": "2024-13-01"}}
    )
    line = assert_user_error(
        in_process(
            ["run", "forest", "--scene", "x", "--catalog", str(cat), "--out", str(tmp_path / "o")],
            capsys,
        )
    )
    assert str(cat) in line and "'x'" in line and "acquired" in line


def test_unreachable_scheduler_is_a_user_error(tmp_path, shared_data, capsys):
    proc = in_process(
        [
            "run",
            "forest",
            "--scene",
            "s2-virginia",
            "--scheduler",
            "tcp://127.0.0.1:9",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert_user_error(proc, "tcp://127.0.0.1:9")


@pytest.mark.slow
def test_forest_on_virginia_end_to_end(virginia_forest_run):
    """The main job: forest workflow on the embedded Sentinel-2 L1C scene of Virginia.

    Expected forest area, 30–55 km²: the scene is 19.3 × 19.5 km (376 km²), of which about
    57 % is open water (NDWI > 0: Atlantic, bays and marsh channels), leaving about 160 km² of
    land, mostly cropland with woodlots and forested wetland. The workflow's rule, calibrated
    on the scene's own darkest vegetation, marks 42.2 km² of it after the sieve and minimum
    mapping unit (26 % of the land; the woodlots, not the salt marsh or the fields, in the
    preview). A wrong band order or a misregistered 20 m band moves the figure far outside
    the range (no forest at all, or most green fields as forest).
    """
    proc, folder = virginia_forest_run.proc, virginia_forest_run.folder
    assert proc.returncode == 0, proc.stderr
    assert str(folder) in proc.stdout
    for name in ("classes.tif", "confidence.tif", "polygons.gpkg", "preview.png", "run.json"):
        assert (folder / name).is_file()
    assert not list(folder.glob(".*"))  # no temporary files left

    with rasterio.open(folder / "classes.tif") as src:
        assert src.crs.to_epsg() == 32618 and src.res == (10.0, 10.0)
        assert (src.width, src.height) == (1933, 1947)
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        scene_box = shapely.box(*src.bounds)
        classes = src.read(1)
    # The 20 m bands stop 10 m short of the 10 m grid's last row: nodata there, nowhere else.
    assert (classes[-1] == 255).all() and (classes[:-1] != 255).all()

    info = pyogrio.read_info(folder / "polygons.gpkg", layer="forest")
    assert info["crs"] == "EPSG:32618" and info["geometry_type"] == "Polygon"
    _, _, wkb, fields = pyogrio.raw.read(folder / "polygons.gpkg", layer="forest")
    polys = shapely.from_wkb(wkb)
    assert shapely.within(polys, scene_box).all()
    assert shapely.is_valid(polys).all()
    names = list(info["fields"])
    assert names == [
        "instance_id",
        "class",
        "class_name",
        "area_m2",
        "perimeter_m",
        "pixels",
        "confidence",
        "confidence_max",
        "scene",
        "acquired",
        "model",
        "model_version",
        "run_id",
    ]
    area = fields[names.index("area_m2")]
    np.testing.assert_allclose(area, shapely.area(polys), rtol=1e-9)
    assert 30e6 <= area.sum() <= 55e6
    assert (area >= 1000).all()  # the workflow's minimum mapping unit
    assert set(fields[names.index("class_name")]) == {"forest"}  # no loss from one date
    assert set(fields[names.index("scene")]) == {"s2-virginia"}
    conf = fields[names.index("confidence")]
    assert ((conf > 50) & (conf <= 100)).all()

    summary = json.loads((folder / "run.json").read_text())
    assert len(set(fields[names.index("run_id")])) == 1
    assert fields[names.index("run_id")][0] == summary["run_id"]
    assert set(fields[names.index("model_version")]) == {summary["model_version"]}
    assert summary["counts"]["polygons"] == len(polys)


@pytest.mark.slow
def test_fire_on_hurst_matches_the_perimeter(shared_data, hurst_fire_run):
    """Burned pixels and burn-scar polygons against the CAL FIRE perimeter (IoU 0.90 here)."""
    proc, folder = hurst_fire_run.proc, hurst_fire_run.folder
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(folder / "classes.tif") as src:
        classes = src.read(1)
        assert src.crs.to_epsg() == 4326
    perimeter_tif = shared_data / "fire" / "HURST_20250107" / "perimeter_mask.tif"
    with rasterio.open(perimeter_tif) as src:
        perimeter = src.read(1) == 1
    burned = (classes >= 3) & (classes <= 6)
    iou = (burned & perimeter).sum() / (burned | perimeter).sum()
    assert iou >= 0.8, iou
    # The perimeters: every severity as one polygon class, islands filled, specks dropped.
    report = geoseg(
        "evaluate",
        "--pred",
        str(folder / "polygons.gpkg"),
        "--truth",
        str(perimeter_tif),
        "--pred-map",
        "0=0,3=1",
        "--json",
    )
    assert report.returncode == 0, report.stderr
    scores = {c["value"]: c for c in json.loads(report.stdout)["classes"]}
    assert scores[1]["iou"] >= 0.85, scores

    # Geographic CRS: polygon areas are square metres from an equal-area projection.
    info = pyogrio.read_info(folder / "polygons.gpkg", layer="fire")
    assert info["crs"] == "EPSG:4326"
    _, _, wkb, fields = pyogrio.raw.read(folder / "polygons.gpkg", layer="fire")
    names = list(info["fields"])
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    polys = shapely.from_wkb(wkb)
    expected = np.array([abs(geod.geometry_area_perimeter(p)[0]) for p in polys])
    np.testing.assert_allclose(fields[names.index("area_m2")], expected, rtol=5e-3)
    assert set(fields[names.index("class")]) == {3}
    assert set(fields[names.index("class_name")]) == {"burned"}
    assert (fields[names.index("area_m2")] >= 200_000).all()  # 20 ha and more
    summary = json.loads((folder / "run.json").read_text())
    assert summary["workflow"]["halo"] >= 6  # raised to the model's reach
    assert set(summary["calibration"]) == {
        "dnbr_median",
        "red_log_median",
        "pixel_w_m",
        "pixel_h_m",
    }


@pytest.mark.slow
def test_a_cloudy_scene_is_refused_with_one_line(shared_data, tmp_path):
    """The fully cloudy Slovenia date is masked, not mapped: one line, exit 2, nothing written."""
    proc = geoseg("run", "forest", "--scene", "slovenia-2015-07-31", "--out", str(tmp_path))
    line = assert_user_error(proc, "scene 'slovenia-2015-07-31'", "max_masked_fraction")
    assert "100.0% of the pixels with data are masked (cloud 100.0%" in line
    # Not even the resume cache stays: the folder the run made is gone.
    assert not (tmp_path / "forest" / "slovenia-2015-07-31").exists()


@pytest.mark.parametrize("logger", ["tornado.application", "asyncio"])
@pytest.mark.parametrize("stopping", [False, True])
def test_the_dask_loop_is_quiet_only_once_a_signal_stops_the_run(stopping, logger):
    """A stop that lands while Dask's ``sync`` waits makes Tornado log a traceback of Dask's."""
    from pipeline.cli import STOPPED_BY, _quiet_dask

    try:
        raise NameError("cannot access free variable 'future'")
    except NameError:
        record = logging.getLogger(logger).makeRecord(
            logger,
            logging.ERROR,
            __file__,
            0,
            "Exception in callback %r",
            ("cancel",),
            sys.exc_info(),
        )
    ours = logging.LogRecord("pipeline.orchestrate", logging.ERROR, __file__, 0, "x", None, None)
    if stopping:
        STOPPED_BY.append(signal.SIGTERM)
    try:
        assert _quiet_dask(record) is not stopping
        assert _quiet_dask(ours)
    finally:
        STOPPED_BY.clear()


def test_a_reader_that_stops_early_ends_the_listing_quietly(tmp_path):
    """``geoseg catalog list | head -1``: the pipe closes while the table is printed."""
    entries = {f"scene-{i:04d}": {"path": f"s{i}.tif", "bands": ["red"]} for i in range(3000)}
    cat = catalog_yaml(tmp_path, entries)
    listing = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "catalog", "list", "--catalog", str(cat)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert listing.stdout is not None and listing.stderr is not None
    first = listing.stdout.readline()
    listing.stdout.close()  # as `head -1` exits
    stderr = listing.stderr.read().decode()
    assert listing.wait(timeout=60) == 141
    assert first.startswith(b"catalog: ") and stderr == ""
