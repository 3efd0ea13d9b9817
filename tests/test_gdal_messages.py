"""GDAL's messages reach Python's logging from every thread; libtiff's layout notes do not."""

from __future__ import annotations

import textwrap

import pytest

from tests.helpers import geoseg, run_python

#: Reads a Pucallpa composite (four samples, no ExtraSamples tag: libtiff notes it at every
#: directory read) in the main thread and in another, then has GDAL warn from that thread.
SCRIPT = textwrap.dedent(
    """
    import ctypes, logging, sys, threading
    import rasterio, rasterio._env
    from rasterio.windows import Window
    from pipeline.gdal_messages import route_gdal_messages

    logging.basicConfig(format="%(name)s %(levelname)s: %(message)s")
    if sys.argv[2] == "routed":
        route_gdal_messages()
    gdal = ctypes.CDLL(rasterio._env.__file__)

    def read_and_warn():
        with rasterio.open(sys.argv[1]) as src:
            src.read(1, window=Window(0, 0, 16, 16))
        gdal.CPLError(2, 1, b"%s", b"a warning of GDAL's own")

    read_and_warn()
    thread = threading.Thread(target=read_and_warn)
    thread.start()
    thread.join()
    print("done")
    """
)


def _read_pucallpa(shared_data, how: str) -> str:
    proc = run_python("-c", SCRIPT, str(shared_data / "pucallpa" / "2020.tif"), how)
    assert proc.returncode == 0 and proc.stdout == "done\n", proc.stderr
    return proc.stderr


def test_the_file_does_raise_libtiff_notes_and_gdal_prints_in_threads(shared_data):
    stderr = _read_pucallpa(shared_data, "as rasterio leaves it")
    assert "rasterio._env WARNING: CPLE_AppDefined" in stderr and "TIFFReadDirectory:" in stderr
    assert stderr.count("Warning 1: a warning of GDAL's own") == 2  # printed, past logging


def test_routed_messages_are_logged_and_layout_notes_dropped(shared_data):
    stderr = _read_pucallpa(shared_data, "routed")
    assert "TIFFReadDirectory" not in stderr
    # GDAL's warning, given outside rasterio's environment in each thread, is logged by ours.
    assert stderr.splitlines() == ["pipeline.gdal WARNING: GDAL (1): a warning of GDAL's own"] * 2


@pytest.mark.slow
def test_a_series_of_such_files_runs_with_nothing_on_stderr(shared_data, tmp_path):
    proc = geoseg(
        "run",
        "mining",
        "--scene",
        "pucallpa-2020",
        "--before",
        "pucallpa-2000",
        "--out",
        str(tmp_path),
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
