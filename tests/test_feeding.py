"""One model fed by the other workers (pipeline/orchestrate/feeding.py), run with the model on
the CPU: the scheduling a GPU gets, checked where there is none."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyogrio
import pytest
import rasterio
import torch

from pipeline.catalog import Catalog
from pipeline.models.device import MOST_GPU_TILES, fitting_batch, to_device
from pipeline.orchestrate import RunOptions, run
from pipeline.orchestrate.feeding import (
    HOST_RESOURCE,
    FeedPlan,
    _Feed,
    model_host,
    uses_one_model,
)
from pipeline.workflow import Workflow

BANDS = ("red", "nir", "swir16")


@pytest.fixture(scope="module")
def unet(tmp_path_factory: pytest.TempPathFactory) -> Workflow:
    """An untrained U-Net in blocks of 16 px, two tiles a pass: classes that depend on context."""
    from pipeline.bench.model import bench_workflow, write_random_unet

    ckpt = write_random_unet(tmp_path_factory.mktemp("feed") / "u.ckpt", BANDS, seed=5)
    return bench_workflow(str(ckpt), tile=16, halo=8, batch=2)


def _outputs(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for name in ("classes", "confidence", "seams"):
        with rasterio.open(folder / f"{name}.tif") as src:
            out[name] = src.read(1)
    table = pyogrio.read_dataframe(folder / "polygons.gpkg", layer="bench")
    out["polygons"] = np.array(sorted(g.wkt for g in table.geometry))
    return out


def test_one_model_fed_by_readers_writes_what_every_worker_with_a_model_writes(
    synthetic_catalog: Catalog, unet: Workflow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backlogs: list[tuple[int, int]] = []
    send = _Feed._send

    def watched(feed: _Feed) -> None:
        backlogs.append((feed.backlog, feed.feed.backlog))
        send(feed)

    monkeypatch.setattr(_Feed, "_send", watched)
    scene = synthetic_catalog.scene("synth")
    runs = {}
    for one_model in (False, True):
        options = RunOptions(
            out=tmp_path / str(one_model),
            workers=3,
            progress=False,
            seams=True,
            one_model=one_model,
        )
        runs[one_model] = run(unet, scene, options=options)
    fed = runs[True].summary["execution"]["model_layout"]
    assert runs[False].summary["execution"]["model_layout"] == {"one_model": False}
    assert fed["one_model"] and fed["readers"] == 2 and fed["batch"] == 2
    tiles = runs[True].summary["execution"]["tiles"]
    assert tiles >= 8  # blocks of 16 px: enough for every reader to take turns
    # Every tile went to the host in batches, never more read and waiting than the backlog.
    assert len(backlogs) >= tiles // 2
    assert all(0 < held <= limit for held, limit in backlogs)
    ours, theirs = _outputs(runs[True].folder), _outputs(runs[False].folder)
    assert (theirs["seams"] == 1).any()  # tiles disagree: the halos really were read
    for name, want in theirs.items():
        np.testing.assert_array_equal(ours[name], want, err_msg=name)


def test_only_the_host_builds_the_model(synthetic_catalog: Catalog, unet: Workflow) -> None:
    from pipeline.orchestrate.cluster import dask_client, register_model
    from pipeline.orchestrate.feeding import fed_blocks, plan_feed
    from pipeline.planning import plan_run

    plan = plan_run(unet, synthetic_catalog.scene("synth"), None, None)
    with dask_client(3, None, one_model=True) as client:
        name = register_model(client, plan.workflow, plan.converted, Path("unused"), lazy=True)
        todo = list(plan.tiles)
        feed = plan_feed(client, plan, name, todo)
        blocks = [r[0] for r in fed_blocks(client, plan, name, todo, RunOptions(), feed)]
        built = client.run(lambda dask_worker: dask_worker.plugins[name].model is not None)
        stealing = client.run_on_scheduler(
            lambda dask_scheduler: "stealing" in dask_scheduler.extensions
        )
    assert sorted(blocks) == sorted(todo)
    assert built == {a: a == feed.host for a in built}
    assert feed.host not in feed.readers and len(feed.readers) == 2
    assert not stealing  # a batch stolen from the host would build a second model


def test_the_host_is_the_worker_marked_for_it() -> None:
    def client(resources: dict[str, dict[str, float]]) -> SimpleNamespace:
        workers = {a: {"resources": r} for a, r in resources.items()}
        return SimpleNamespace(scheduler_info=lambda: {"workers": workers})

    assert model_host(client({"tcp://b:1": {}, "tcp://a:1": {}})) == "tcp://a:1"
    marked = {"tcp://a:1": {}, "tcp://c:1": {HOST_RESOURCE: 1}, "tcp://b:1": {}}
    assert model_host(client(marked)) == "tcp://c:1"


def test_one_model_is_the_default_on_a_gpu_only() -> None:
    from pipeline.models.engines import EngineChoice

    gpu = EngineChoice("torch", "f32", "cuda", "a CUDA GPU is present")
    cpu = EngineChoice("openvino", "bf16", "cpu", "")
    assert uses_one_model(RunOptions(), gpu) and not uses_one_model(RunOptions(), cpu)
    assert uses_one_model(RunOptions(one_model=True), cpu)
    assert not uses_one_model(RunOptions(one_model=False), gpu)
    assert FeedPlan("h", ("a", "b"), 4).backlog == 12


def test_batches_on_the_cpu_are_the_workflows(unet: Workflow) -> None:
    from pipeline.models import build_model

    model = build_model(unet.model, unet.classes)
    assert fitting_batch(model, (3, 32, 32), 2) == 2
    assert fitting_batch(model, (3, 32, 32), 0) == 1
    x = np.ones((1, 3, 4, 4), np.float32)
    assert to_device(x, torch.device("cpu")).data_ptr() == torch.from_numpy(x).data_ptr()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_batches_fit_its_memory_and_inputs_come_pinned(unet: Workflow) -> None:
    from pipeline.models import build_model

    model = build_model(unet.model, unet.classes).to("cuda")
    batch = fitting_batch(model, (3, 1088, 1088), 1)
    assert 1 <= batch <= MOST_GPU_TILES
    x = to_device(np.ones((2, 3, 8, 8), np.float32), torch.device("cuda"))
    assert x.is_cuda and float(x.sum()) == 384.0


def test_run_json_says_how_the_model_was_laid_out(
    synthetic_catalog: Catalog, unet: Workflow, tmp_path: Path
) -> None:
    from pipeline.cli import main

    catalog = synthetic_catalog.path
    wf = tmp_path / "bench.yaml"
    wf.write_text(json.dumps(unet.model_dump(mode="json")), encoding="utf-8")
    args = ["run", str(wf), "--catalog", str(catalog), "--scene", "synth", "--out", str(tmp_path)]
    assert main([*args, "--workers", "2", "--one-model", "--quiet"]) == 0
    summary = json.loads((tmp_path / unet.name / "synth" / "run.json").read_text())
    assert summary["execution"]["model_layout"]["readers"] == 1
