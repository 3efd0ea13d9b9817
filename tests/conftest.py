"""Shared fixtures: the real data folder, the demo scene's catalog and synthetic scenes."""

from __future__ import annotations

import os
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
