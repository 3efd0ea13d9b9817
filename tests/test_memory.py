"""Bounded memory: a run's processes do not grow with the scene (≤ 1.25× from 2744² to 10980²).

The full-size measurement (10980², 6 bands, U-Net) is ``geoseg bench`` (BENCHMARKS.md); here the
same pipeline step runs on two generated scenes, one with 9× the pixels of the other, each in
its own process, and the peaks of the client and of the workers are compared.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.bench.common import in_subprocess
from pipeline.bench.model import _write_catalog, bench_workflow, write_random_unet
from pipeline.bench.scenes import write_scene

BANDS = ("red", "nir", "swir16")


def _peaks(folder: Path, size: int, ckpt: Path) -> dict[str, float]:
    folder.mkdir()
    scene = write_scene(folder / "scene.tif", size, BANDS, seed=size)
    catalog = _write_catalog(folder, scene, BANDS)
    workflow = folder / "workflow.json"
    workflow.write_text(bench_workflow(str(ckpt), tile=256, halo=16).model_dump_json())
    return in_subprocess(
        "pipeline.bench.model:run_pipeline", str(catalog), str(workflow), str(folder / "out"), "2"
    )


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_scene(tmp_path: Path) -> None:
    ckpt = write_random_unet(tmp_path / "u.ckpt", BANDS, seed=5)
    small = _peaks(tmp_path / "small", 768, ckpt)
    large = _peaks(tmp_path / "large", 2304, ckpt)  # 9× the pixels, 81 blocks instead of 9
    # Growth only: the absolute peak is a benchmark figure (BENCHMARKS.md), and it depends on
    # the machine, even on its page cache (a freshly installed torch maps up to 0.2 GB more).
    for role in ("client_peak_rss_mb", "worker_peak_rss_mb", "run_peak_pss_mb"):
        assert large[role] <= 1.25 * small[role], (role, small[role], large[role])
