"""Shared fixtures: the real data folder, the demo scene's catalog and synthetic scenes."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.catalog import Catalog, load_catalog
from tests.data import catalog_yaml, forest_scene

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; missing is a failure under CI and a skip elsewhere."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real test data missing: {SHARED_DATA} (CI lays shared/ beside the clone)")
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def project_catalog(shared_data: Path) -> Catalog:
    """The project's own data_catalog.yaml (demo scene plus ../shared/data scenes)."""
    return load_catalog(ROOT / "data_catalog.yaml")


@pytest.fixture
def synthetic_catalog(tmp_path: Path) -> Catalog:
    """A catalog with one small multi-resolution scene ``synth`` (see tests/data.py)."""
    paths = forest_scene(tmp_path / "synth")
    path = catalog_yaml(
        tmp_path,
        {
            "synth": {
                "assets": {k: str(v.relative_to(tmp_path)) for k, v in paths.items()},
                "scale": 0.0001,
                "acquired": "2024-06-01",
                "sensor": "sentinel-2-l1c",
            }
        },
    )
    return load_catalog(path)


@dataclass(frozen=True)
class CliRun:
    """A finished ``geoseg run`` through the real command: the process and its output folder."""

    proc: subprocess.CompletedProcess[str]
    folder: Path


def _geoseg_run(out: Path, workflow: str, scene: str, *args: str) -> CliRun:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", workflow, "--scene", scene, "--out", str(out)]
        + list(args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return CliRun(proc, out / workflow / scene)


@pytest.fixture(scope="session")
def virginia_forest_run(tmp_path_factory: pytest.TempPathFactory) -> CliRun:
    """``geoseg run forest --scene s2-virginia``, once per session (tests only read it)."""
    return _geoseg_run(tmp_path_factory.mktemp("virginia"), "forest", "s2-virginia")


@pytest.fixture(scope="session")
def hurst_fire_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> CliRun:
    """``geoseg run fire`` on the Hurst pre/post pair in 100-pixel tiles, once per session."""
    return _geoseg_run(
        tmp_path_factory.mktemp("hurst"),
        "fire",
        "hurst-post",
        "--before",
        "hurst-pre",
        "--tile-size",
        "100",
    )
