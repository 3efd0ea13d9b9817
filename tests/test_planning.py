"""Planning a run: what it imports, on the project's real scenes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.catalog import Catalog
from pipeline.workflow import load_workflow

ROOT = Path(__file__).resolve().parents[1]

#: Plans each shipped index workflow on a real pair of scenes in this process, then reports
#: what each plan holds and which heavy packages the process imported on the way.
_PLAN_INDEX_WORKFLOWS = textwrap.dedent(
    """
    import json, sys
    from pipeline.catalog import load_catalog
    from pipeline.planning import plan_run
    from pipeline.workflow import load_workflow

    catalog = load_catalog(sys.argv[1])
    pairs = json.loads(sys.argv[2])
    plans = {}
    for workflow, (scene, before) in pairs.items():
        plan = plan_run(load_workflow(workflow), catalog.scene(scene), catalog.scene(before))
        plans[workflow] = {"model": type(plan.model).__name__, "calibration": plan.calibration}
    heavy = ("torch", "torchgeo", "lightning", "openvino")
    print(json.dumps({"plans": plans, "imported": [m for m in heavy if m in sys.modules]}))
    """
)


@pytest.mark.usefixtures("shared_data")
def test_planning_index_workflows_never_imports_torch(tmp_path: Path) -> None:
    pairs = {
        "forest": ["slovenia-2015-09-09", "slovenia-2015-07-11"],
        "fire": ["hurst-post", "hurst-pre"],
        "mining": ["pucallpa-2020", "pucallpa-2000"],
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _PLAN_INDEX_WORKFLOWS,
            str(ROOT / "data_catalog.yaml"),
            json.dumps(pairs),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    plans = report["plans"]
    assert {name: plan["model"] for name, plan in plans.items()} == {
        "forest": "ForestIFZModel",
        "fire": "BurnedAreaModel",
        "mining": "MiningBareGroundModel",
    }
    # Each model was calibrated on its scenes: forest statistics of both dates, the fire's
    # scene medians and the grids' pixel sizes.
    forest = plans["forest"]["calibration"]
    assert len(forest["forest_mean"]) == 2 and len(forest["before_forest_mean"]) == 2
    assert plans["fire"]["calibration"]["pixel_w_m"] > 0
    assert plans["mining"]["calibration"]["pixel_w_m"] > 0
    assert report["imported"] == []


def _worker_imports() -> list[str]:
    """Which of torch and TorchGeo this process imported (run on a worker)."""
    return [m for m in ("torch", "torchgeo") if m in sys.modules]


def test_index_workflow_workers_never_import_torch(
    synthetic_catalog: Catalog, tmp_path: Path
) -> None:
    from distributed import Client, LocalCluster

    from pipeline.orchestrate import RunOptions, run

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        result = run(
            load_workflow("forest").with_overrides(tile_size=32),
            synthetic_catalog.scene("synth"),
            options=RunOptions(out=tmp_path, scheduler=cluster.scheduler_address, progress=False),
        )
        with Client(cluster) as client:
            imported = client.run(_worker_imports)
    assert result.summary["counts"]["classes"]["forest"]["pixels"] > 0  # the worker classified
    assert list(imported.values()) == [[]]
