"""Every bad input and every stop signal, through the real command: one clear line, nothing lost.

A bad input gives exactly one ``error: …`` line on stderr naming the input and the problem,
exit status 2, no traceback, no warning from a library, and no file written; the outputs an
earlier good run of the same scene wrote stay byte for byte as they were. SIGINT and SIGTERM
mid-run exit 130 and 143 with no temporary file beside the outputs, and the next run resumes.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from tests.bad_inputs import (
    SCENE,
    SCENE_VARIANTS,
    copy_scene,
    digests,
    entry,
    read_band,
    variant_catalog,
)
from tests.conftest import ROOT
from tests.data import catalog_yaml, forest_scene, write_raster
from tests.helpers import geoseg, run_args, start_geoseg

WORKFLOW_YAML = ROOT / "workflows" / "forest.yaml"


@dataclass(frozen=True)
class GoodRun:
    """A finished good run of the synthetic scene: its files, catalog, output root and digests."""

    bands: dict[str, Path]
    catalog: Path
    out: Path
    before: dict[str, str]

    @property
    def folder(self) -> Path:
        return self.out / "forest" / SCENE

    def run(self, workflow: str, catalog: Path | None = None, out: Path | None = None):
        """``geoseg run WORKFLOW --scene synth`` against ``catalog``, into the good run's root."""
        return geoseg(*_quiet_run(workflow, catalog or self.catalog, out or self.out))

    def assert_intact(self) -> None:
        """The good outputs are as the good run left them, and nothing was added beside them."""
        assert digests(self.folder) == self.before
        assert sorted(p.name for p in self.folder.iterdir()) == sorted(self.before)


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> GoodRun:
    """The forest workflow run once, successfully, on a small synthetic scene."""
    root = tmp_path_factory.mktemp("good")
    bands = forest_scene(root / "scene")
    catalog = catalog_yaml(root, {SCENE: entry(bands)})
    out = root / "out"
    proc = geoseg(*_quiet_run("forest", catalog, out))
    assert proc.returncode == 0, proc.stderr
    return GoodRun(bands, catalog, out, digests(out / "forest" / SCENE))


def _quiet_run(workflow: str, catalog: Path, out: Path, *extra: str) -> list[str]:
    """``run WORKFLOW --scene synth`` on one worker, quiet: the arguments of most runs here."""
    return run_args(workflow, SCENE, catalog, out, *extra, "--workers", "1", "--quiet")


def one_error_line(proc: subprocess.CompletedProcess[str], *needles: str, status: int = 2) -> str:
    """Assert the process printed exactly one ``error:`` line (and nothing else) on stderr."""
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --- bad scenes -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(SCENE_VARIANTS))
def test_a_bad_scene_is_one_line_and_keeps_earlier_outputs(good, tmp_path, case):
    make, needles = SCENE_VARIANTS[case]
    catalog = variant_catalog(tmp_path, make(tmp_path, good.bands))
    line = one_error_line(good.run("forest", catalog=catalog), *needles)
    assert SCENE in line
    good.assert_intact()


def test_a_bad_scene_writes_nothing_where_nothing_was(good, tmp_path):
    catalog = variant_catalog(tmp_path, SCENE_VARIANTS["truncated"][0](tmp_path, good.bands))
    out = tmp_path / "out"
    one_error_line(good.run("forest", catalog=catalog, out=out), "truncated or corrupt")
    assert not out.exists() or not any(out.rglob("*"))


def test_a_one_pixel_scene_runs_to_one_classified_pixel(good, tmp_path):
    """1×1 is a scene: one pixel of a declared class, no polygon (under min_area_m2)."""
    t = Affine(10, 0, 435930.0, 0, -10, 4179260.0)
    values = {"green": 500, "red": 300, "nir": 2700, "swir16": 1000}
    bands = {
        k: write_raster(tmp_path / f"{k}.tif", np.full((1, 1), v, np.uint16), t, nodata=0)
        for k, v in values.items()
    }
    out = tmp_path / "out"
    proc = good.run("forest", catalog=variant_catalog(tmp_path, entry(bands)), out=out)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    with rasterio.open(out / "forest" / SCENE / "classes.tif") as src:
        classes = src.read(1)
    assert classes.shape == (1, 1) and classes[0, 0] in (0, 1)
    summary = json.loads((out / "forest" / SCENE / "run.json").read_text())
    assert summary["counts"]["polygons"] == 0


def test_nan_and_inf_in_float_bands_are_nodata(good, tmp_path):
    """NaN, +inf and -inf are no data: classes there are nodata, elsewhere as if they were 0.

    The float scene holds the good scene's values (scale 0.0001, so the reflectance is the
    same float32) with NaN, +inf and -inf in three strips of red; the reference is the good
    scene with 0, its nodata, in the same strips. Both runs must give the same classes.
    """
    strips = [
        (slice(40, 44), slice(10, 20)),
        (slice(50, 52), slice(10, 30)),
        (slice(60, 62), slice(5, 9)),
    ]
    red, transform = read_band(good.bands["red"])
    as_float, as_nodata = red.astype(np.float32), red.copy()
    for (rows, cols), bad in zip(strips, (np.nan, np.inf, -np.inf), strict=True):
        as_float[rows, cols] = bad
        as_nodata[rows, cols] = 0
    runs = {}
    for name, values, nodata in (("float", as_float, None), ("zeros", as_nodata, 0)):
        folder = tmp_path / name
        bands = copy_scene(good.bands, folder)
        bands["red"] = write_raster(folder / "red.tif", values, transform, nodata=nodata)
        out = folder / "out"
        proc = good.run("forest", catalog=variant_catalog(folder, entry(bands)), out=out)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        with rasterio.open(out / "forest" / SCENE / "classes.tif") as src:
            runs[name] = src.read(1)
    for rows, cols in strips:
        assert (runs["float"][rows, cols] == 255).all()
    np.testing.assert_array_equal(runs["float"], runs["zeros"])
    assert set(np.unique(runs["float"])) <= {0, 1, 255}


# --- bad catalogs, workflows and models -------------------------------------------------------


def test_invalid_catalog_yaml_names_its_line(good, tmp_path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(f"scenes:\n  {SCENE}:\n    path: x.tif\n    bands: [red\n  other: {{}}\n")
    one_error_line(good.run("forest", catalog=catalog), str(catalog), "line 5", "not valid YAML")
    good.assert_intact()


def test_invalid_workflow_yaml_names_its_line(good, tmp_path):
    workflow = tmp_path / "forest.yaml"
    text = WORKFLOW_YAML.read_text(encoding="utf-8").replace("tile_size: 1024", "tile_size: [1024")
    workflow.write_text(text, encoding="utf-8")
    line_no = text.splitlines().index("tile_size: [1024") + 1
    line = one_error_line(good.run(str(workflow)), str(workflow), "not valid YAML")
    assert f"opened on line {line_no}" in line
    good.assert_intact()


def test_unknown_catalog_key(good, tmp_path):
    catalog = variant_catalog(tmp_path, entry(good.bands) | {"colour": "blue"})
    one_error_line(good.run("forest", catalog=catalog), str(catalog), "'colour'", "unknown key")
    good.assert_intact()


def test_unknown_workflow_key(good, tmp_path):
    workflow = tmp_path / "forest.yaml"
    text = WORKFLOW_YAML.read_text(encoding="utf-8")
    workflow.write_text(text.replace("tile_size: 1024", "tile_size: 1024\ntile_szie: 512"))
    one_error_line(good.run(str(workflow)), str(workflow), "'tile_szie'", "unknown key")
    good.assert_intact()


def test_unknown_workflow_and_scene(good):
    one_error_line(good.run("woods"), "no workflow named 'woods'", "forest")
    proc = geoseg(
        "run", "forest", "--scene", "nope", "--catalog", str(good.catalog), "--out", str(good.out)
    )
    one_error_line(proc, "no scene 'nope'", SCENE)
    good.assert_intact()


def _network_workflow(folder: Path, checkpoint: Path, bands: str) -> Path:
    """A torchgeo workflow reading ``bands`` through ``checkpoint``."""
    path = folder / "net.yaml"
    path.write_text(
        "name: forest\n"  # the good run's folder
        "model:\n  kind: torchgeo\n  arch: unet\n  backbone: resnet18\n"
        f"  checkpoint: {checkpoint}\n  bands: {bands}\n"
        "classes:\n"
        '  - {value: 0, name: other, colour: "#000000", vectorize: false}\n'
        '  - {value: 1, name: forest, colour: "#00aa00"}\n'
        "tile_size: 64\nhalo: 16\n",
        encoding="utf-8",
    )
    return path


def test_model_and_scene_bands_that_do_not_match(good, tmp_path):
    from pipeline.models.checkpoints import save_checkpoint
    from tests.test_networks import HPARAMS, make_card, seeded_net

    ckpt = tmp_path / "net.ckpt"
    save_checkpoint(ckpt, seeded_net().state_dict(), dict(HPARAMS), make_card())
    # The workflow reads other bands than the network was trained on …
    other = _network_workflow(tmp_path, ckpt, "[red, nir, green]")
    one_error_line(good.run(str(other)), str(ckpt), "('red', 'nir', 'swir16')")
    # … or the scene lacks a band the network needs.
    needs_blue = tmp_path / "blue.ckpt"
    save_checkpoint(
        needs_blue,
        seeded_net().state_dict(),
        dict(HPARAMS),
        make_card(bands=("red", "nir", "blue")),
    )
    workflow = _network_workflow(tmp_path, needs_blue, "[red, nir, blue]")
    one_error_line(good.run(str(workflow)), f"scene '{SCENE}' has no band 'blue'")
    good.assert_intact()


class _Hostile:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def test_a_checkpoint_holding_code_is_refused_in_our_words(good, tmp_path):
    import torch

    marker, ckpt = tmp_path / "pwned", tmp_path / "evil.ckpt"
    torch.save({"state_dict": _Hostile(marker)}, ckpt)
    workflow = _network_workflow(tmp_path, ckpt, "[red, nir, swir16]")
    line = one_error_line(good.run(str(workflow)), str(ckpt), "holds pickled code", "not run")
    assert "weights_only" not in line and "torch.load" not in line
    assert not marker.exists()
    good.assert_intact()


# --- output folders, disks and schedulers -----------------------------------------------------


def test_an_out_folder_under_a_file(good, tmp_path):
    blocker = tmp_path / "some_file"
    blocker.write_text("")
    one_error_line(good.run("forest", out=blocker / "sub"), str(blocker / "sub"), "Not a directory")
    assert blocker.read_text() == ""


def test_a_read_only_out_folder(good):
    folder = good.folder
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            one_error_line(good.run("forest"), str(folder), "Permission denied")
        finally:
            folder.chmod(0o755)
    else:  # permissions do not stop root: a read-only mount of the folder does
        if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode:
            pytest.skip("running as root without mount namespaces to make a read-only folder")
        proc = subprocess.run(
            [*_mounted_read_only(folder), sys.executable, "-m", "pipeline"]
            + _quiet_run("forest", good.catalog, good.out),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        one_error_line(proc, f"cannot write outputs in {folder}", "Read-only file system")
    good.assert_intact()


def _mounted_read_only(folder: Path) -> list[str]:
    """A command prefix: what follows it runs where ``folder`` is a read-only mount.

    A mount namespace of its own (``unshare -m``), so nothing outside the command sees it.
    """
    script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    return ["unshare", "-m", "sh", "-c", script, str(folder)]


def _file_size_limit(limit: int):
    """For a child: files it writes stop at ``limit`` bytes (EFBIG), as on a full disk."""

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limited


def test_a_full_disk_during_the_write(good):
    """Writes fail past 20 kB (RLIMIT_FSIZE), which no unprivileged test can do with a disk.

    The working rasters (262 kB each, tiled in 512² blocks) fail; the finished block (15 kB)
    is kept to resume. The kernel answers EFBIG where a full disk answers ENOSPC, by the
    same path.
    """
    proc = geoseg(
        *_quiet_run("forest", good.catalog, good.out),
        timeout=300,
        preexec_fn=_file_size_limit(20_000),
    )
    one_error_line(proc, f"cannot write outputs in {good.folder}", "File too large")
    work = good.folder / ".work"
    assert list(work.glob("*/*.npy")), "the finished blocks are kept"
    shutil.rmtree(work)
    good.assert_intact()


@pytest.mark.parametrize(
    ("listens", "says"),
    [
        (False, "cannot reach the Dask scheduler"),  # nothing listens: refused at once
        (True, "no answer in 5 s"),  # the kernel accepts, nobody answers
    ],
)
def test_a_scheduler_that_does_not_answer(good, listens, says):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        if listens:
            s.listen(8)
        else:
            s.close()  # a port that was free a moment ago
        t0 = time.monotonic()
        scheduler = ("--scheduler", f"tcp://127.0.0.1:{port}")
        proc = geoseg(*run_args("forest", SCENE, good.catalog, good.out, *scheduler), timeout=60)
    assert time.monotonic() - t0 < 30  # generous: start-up, planning, the 5-10 s deadline
    one_error_line(proc, f"tcp://127.0.0.1:{port}", says)
    good.assert_intact()


# --- signals ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A catalog of a 480×480 synthetic scene: 225 blocks of 32², seconds of classifying."""
    root = tmp_path_factory.mktemp("big")
    return catalog_yaml(root, {SCENE: entry(forest_scene(root / "scene", 480, 480))})


def _cached_blocks(folder: Path) -> list[Path]:
    """The blocks in the run's resume cache (not one still being written, a dot file)."""
    return [p for p in folder.glob(".work/*/*.npy") if not p.name.startswith(".")]


def _wait_until_classifying(proc: subprocess.Popen[str], folder: Path) -> None:
    """Return once a block is in the resume cache beside the working raster, or the run ended."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (folder / ".classes.work.tif.scratch").exists() and _cached_blocks(folder):
            return
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "status", "word", "group"),
    [
        (signal.SIGINT, 130, "interrupted", False),
        (signal.SIGTERM, 143, "terminated", False),
        # As a terminal's Ctrl-C and systemd's stop deliver them: to every process of the run.
        (signal.SIGINT, 130, "interrupted", True),
        (signal.SIGTERM, 143, "terminated", True),
    ],
)
def test_a_signal_mid_run_leaves_no_temporary_file_and_the_run_resumes(
    big_scene, tmp_path, sig, status, word, group
):
    out = tmp_path / "out"
    args = _quiet_run("forest", big_scene, out, "--tile-size", "32")
    folder = out / "forest" / SCENE
    proc = start_geoseg(*args, start_new_session=group)
    try:
        _wait_until_classifying(proc, folder)
        assert proc.poll() is None, "the run ended before it could be stopped"
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # pragma: no cover
            proc.kill()
    finished = subprocess.CompletedProcess(args, proc.returncode, "", stderr)
    one_error_line(finished, word, "no output was replaced", status=status)
    assert sorted(p.name for p in folder.iterdir()) == [".work"]
    kept = len(_cached_blocks(folder))
    assert 0 < kept < 225
    again = geoseg(*args, timeout=300)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    summary = json.loads((folder / "run.json").read_text())
    assert summary["execution"]["resumed_blocks"] == kept
    assert not (folder / ".work").exists()


# --- batches and monitoring -------------------------------------------------------------------


def test_a_monitor_reports_a_bad_scene_and_takes_the_others(good, tmp_path):
    """A truncated scene in a series: one ``failed`` line, exit 4, the good dates taken."""
    broken = tmp_path / "broken"
    bands = copy_scene(good.bands, broken)
    bands["red"].write_bytes(good.bands["red"].read_bytes()[:1500])
    scenes = {
        f"d{day}": {**entry(good.bands), "acquired": f"2024-06-0{day}", "series": "s"}
        for day in (1, 3)
    }
    scenes["d2"] = {**entry(bands), "acquired": "2024-06-02", "series": "s"}
    catalog = catalog_yaml(tmp_path, scenes)
    out = tmp_path / "out"
    proc = geoseg(
        "monitor",
        "forest",
        "--series",
        "s",
        "--catalog",
        str(catalog),
        "--out",
        str(out),
        "--workers",
        "1",
    )
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("d2: failed: "), proc.stderr
    assert "truncated or corrupt" in lines[0]
    assert "2 scenes taken, 1 failed" in proc.stdout
    assert not (out / "forest" / "d2").exists()
    for sid in ("d1", "d3"):
        assert (out / "forest" / sid / "classes.tif").is_file()
