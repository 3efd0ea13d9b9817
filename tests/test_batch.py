"""Batches: many scenes on one cluster, each as a single run writes it, bad ones reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.orchestrate.batch import Batch, SceneOutcome, run_series
from pipeline.orchestrate.cluster import RunOptions
from pipeline.selection import Job
from tests.data import catalog_yaml
from tests.helpers import geoseg

SLOVENIA = [f"slovenia-2015-{d}" for d in ("07-11", "07-31", "08-20", "08-30", "09-09")]


class FakeBatch:
    """Runs nothing: each job's outcome is looked up, and the jobs asked for are kept."""

    def __init__(self, statuses: dict[str, str]) -> None:
        self.statuses, self.jobs = statuses, []

    def run_job(self, job: Job) -> SceneOutcome:
        self.jobs.append(job)
        return SceneOutcome(job.scene, job.before, self.statuses[job.scene], 0.0)  # type: ignore[arg-type]


def test_a_two_date_series_pairs_each_scene_with_the_latest_usable_one():
    fake = FakeBatch({"b": "unusable", "c": "failed", "d": "done", "e": "done"})
    heard = []
    outcomes = run_series(fake, ["a", "b", "c", "d", "e"], heard.append)  # type: ignore[arg-type]
    assert fake.jobs == [Job("b", "a"), Job("c", "a"), Job("d", "a"), Job("e", "d")]
    assert [o.scene for o in outcomes] == [o.scene for o in heard] == ["b", "c", "d", "e"]


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory, shared_data):
    """The Slovenia series plus an unreadable scene, as one batch through the command line."""
    root = tmp_path_factory.mktemp("batch")
    broken = root / "broken.tif"
    good = shared_data / "slovenia" / "s2_l1c_13band_2015-08-30.tif"
    broken.write_bytes(good.read_bytes()[:5000])  # a download cut short
    bands = ["coastal", "blue", "green", "red", "rededge071", "rededge075", "rededge078",
             "nir", "nir08", "nir09", "cirrus", "swir16", "swir22"]  # fmt: skip
    scenes = {
        sid: {
            "path": str(shared_data / "slovenia" / f"s2_l1c_13band_{sid[9:]}.tif"),
            "bands": bands,
            "acquired": sid[9:],
            "sensor": "sentinel-2-l1c",
            "series": "slovenia",
        }
        for sid in SLOVENIA
    }
    scenes["broken"] = {"path": "broken.tif", "bands": bands, "sensor": "sentinel-2-l1c"}
    catalog = catalog_yaml(root, scenes)
    out = root / "out"
    args = ["run", "forest", "--series", "slovenia", "--scene", "broken"]
    first = geoseg(*args, "--catalog", str(catalog), "--out", str(out))
    again = geoseg(*args, "--catalog", str(catalog), "--out", str(out))
    single_out = root / "single"
    single = geoseg(
        "run", "forest", "--scene", SLOVENIA[3], "--catalog", str(catalog), "--out", str(single_out)
    )
    return first, again, single, out / "forest", single_out / "forest"


def test_a_batch_reports_bad_scenes_and_completes_the_others(batch_run):
    first, _, _, folder, _ = batch_run
    assert first.returncode == 4, first.stderr  # some failed
    lines = first.stdout.splitlines()
    for sid in (SLOVENIA[0], SLOVENIA[3], SLOVENIA[4]):
        assert any(line.startswith(f"{sid}: done in") for line in lines)
    errors = first.stderr.splitlines()
    assert any(line.startswith("broken: failed: ") for line in errors)
    assert sum(": unusable: " in line for line in errors) == 2
    assert "Traceback" not in first.stderr
    assert "3 done, 2 unusable, 1 failed" in first.stdout
    record = json.loads((folder / "batch.json").read_text())
    assert record["counts"] == {"done": 3, "unusable": 2, "failed": 1}
    rows = {r["scene"]: r for r in record["scenes"]}
    assert set(rows) == {*SLOVENIA, "broken"}
    assert rows[SLOVENIA[1]]["masked_fraction"] == pytest.approx(1.0)
    assert rows[SLOVENIA[3]]["polygons"] > 0 and rows[SLOVENIA[3]]["seconds"] > 0
    assert rows["broken"]["folder"] is None and rows["broken"]["message"]
    assert not (folder / "broken").exists() and not (folder / SLOVENIA[1]).exists()


def test_each_scene_of_a_batch_is_what_a_single_run_writes(batch_run):
    _, _, single, folder, single_folder = batch_run
    assert single.returncode == 0, single.stderr
    mine, theirs = folder / SLOVENIA[3], single_folder / SLOVENIA[3]
    assert sorted(p.name for p in mine.iterdir()) == sorted(p.name for p in theirs.iterdir())
    for name in ("classes.tif", "confidence.tif"):
        with rasterio.open(mine / name) as a, rasterio.open(theirs / name) as b:
            np.testing.assert_array_equal(a.read(), b.read())
    a, b = (json.loads((f / "run.json").read_text()) for f in (mine, theirs))
    assert a["counts"] == b["counts"]
    assert a["execution"]["inputs_key"] == b["execution"]["inputs_key"]


def test_a_batch_run_again_reuses_finished_scenes(batch_run):
    _, again, _, folder, _ = batch_run
    assert again.returncode == 4
    assert sum("already done" in line for line in again.stdout.splitlines()) == 3
    record = json.loads((folder / "batch.json").read_text())
    assert sum(r["reused"] for r in record["scenes"]) == 3


def test_one_model_per_worker_for_the_whole_batch(synthetic_catalog, tmp_path):
    from pipeline.workflow import load_workflow

    options = RunOptions(out=tmp_path, workers=2, progress=False)
    with Batch(load_workflow("forest"), synthetic_catalog.scene, options) as batch:
        assert batch._shared is not None
        client, name = batch._shared.client, batch._shared.plugin

        def model_id(dask_worker):
            return id(dask_worker.plugins[name].model)

        before = client.run(model_id)
        first = batch.submit(Job("synth")).result()
        second = batch.run_job(Job("synth"))
        after = client.run(model_id)
    assert first.status == "done" and second.status == "done" and second.reused
    assert len(before) == 2 and before == after


def test_run_needs_a_scene_series_or_all():
    proc = geoseg("run", "forest")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: give --scene ID")


def test_batch_help_documents_the_exit_status():
    proc = geoseg("run", "--help")
    text = " ".join(proc.stdout.split())
    assert "3 some scenes unusable" in text and "4 some scenes failed" in text
    assert "batch.json" in text


def test_api_batch_by_series(tmp_path, shared_data):
    import pipeline

    record = pipeline.run_batch("fire", series=["hurst", "fire-66"], out=tmp_path, workers=2)
    assert [(o.scene, o.before, o.status) for o in record.outcomes] == [
        ("hurst-post", "hurst-pre", "done"),
        ("fire-66-post", "fire-66-pre", "done"),
    ]
    assert record.path == Path(tmp_path) / "fire" / "batch.json"
    assert record.outcomes[0].summary is not None
    assert record.outcomes[0].summary["counts"]["polygon_classes"]["burned"]["polygons"] >= 1
