"""The OpenVINO engine: conversion, cache, scores as torch's, workers that load no torch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from pipeline.bench.model import _write_catalog, bench_workflow, write_random_unet
from pipeline.bench.scenes import write_scene
from pipeline.catalog import load_catalog
from pipeline.cli import main
from pipeline.errors import ConfigError, ModelError
from pipeline.inference import predict_batch
from pipeline.models import build_model, engines
from pipeline.models.engines import (
    NetworkInfo,
    OpenVINOModel,
    check_precision,
    cpu_capabilities,
    export_key,
    export_openvino,
    openvino_version,
    prepare_openvino,
)
from pipeline.orchestrate import RunOptions, dask_client, run
from pipeline.planning import plan
from pipeline.workflow import Workflow, load_workflow
from tests.helpers import torch_threads

BANDS = ("red", "nir", "swir16")


@pytest.fixture(scope="module")
def unet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workflow, Path]:
    """A seeded random U-Net's workflow (tile 256, halo 32) and its conversion's folder."""
    folder = tmp_path_factory.mktemp("engine")
    ckpt = write_random_unet(folder / "u.ckpt", BANDS, seed=4)
    workflow = bench_workflow(str(ckpt), tile=256, halo=32, engine="openvino")
    model = build_model(workflow.model, workflow.classes)
    converted = export_openvino(model, folder / "converted")  # type: ignore[arg-type]
    return workflow, converted


@pytest.fixture
def one_thread():
    """One torch thread for the test (later tests train networks with their own)."""
    with torch_threads(1):
        yield


def test_converted_network_scores_tiles_as_torch_does(unet, one_thread):
    workflow, converted = unet
    model = build_model(workflow.model, workflow.classes)
    ov_model = OpenVINOModel(converted, "f32")
    assert ov_model.bands == BANDS and ov_model.num_classes == 2
    assert ov_model.model_id == model.model_id and ov_model.card == model.card
    gen = np.random.default_rng(1)
    # Padded by reflection (200×150), a multiple of 32 in a batch, and tiny (edge repeated).
    for shape in [(1, 3, 200, 150), (2, 3, 64, 96), (1, 3, 20, 30)]:
        x = gen.random(shape, dtype=np.float32) * 0.4
        with torch.inference_mode():
            want = model(torch.from_numpy(x)).numpy()
        got = ov_model(x)
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
        valid = np.ones((shape[0], *shape[2:]), dtype=bool)
        valid[0, :3] = False
        classes_t, conf_t = predict_batch(model, x, valid)
        classes_o, conf_o = predict_batch(ov_model, x, valid)
        assert (classes_o[valid] != 255).all() and (classes_o[~valid] == 255).all()
        assert (classes_t == classes_o).mean() > 0.999
        assert np.abs(conf_t.astype(int) - conf_o.astype(int)).max() <= 1
    with pytest.raises(ValueError, match=r"expects \[N, 3, H, W\]"):
        ov_model(np.zeros((1, 4, 32, 32), dtype=np.float32))


@pytest.mark.skipif(
    "BF16" not in cpu_capabilities(), reason="this CPU has no bfloat16 instructions"
)
def test_bf16_is_close_to_f32(unet):
    _, converted = unet
    x = np.random.default_rng(2).random((1, 3, 256, 256), dtype=np.float32) * 0.4
    f32 = OpenVINOModel(converted, "f32")(x)
    bf16 = OpenVINOModel(converted, "bf16")(x)
    assert not np.array_equal(f32, bf16)  # it does compute in another arithmetic
    # Random weights leave small margins between the classes; a trained network's are larger
    # (tests/test_parity.py holds bf16 to the trained parity bound).
    assert (f32.argmax(1) == bf16.argmax(1)).mean() > 0.99


def test_conversion_is_cached_by_content(unet, tmp_path):
    workflow, _ = unet
    config = workflow.model
    cache = tmp_path / "cache"
    folder, fresh = prepare_openvino(config, workflow.classes, cache)  # type: ignore[arg-type]
    assert fresh and (folder / "model.xml").is_file() and (folder / "model.bin").is_file()
    assert NetworkInfo.load(folder).bands == BANDS
    assert prepare_openvino(config, workflow.classes, cache) == (folder, False)
    assert [p.name for p in (cache / "openvino").iterdir()] == [folder.name]  # no leftovers
    # Precision and batch size are load-time choices: the same conversion serves them.
    same = config.model_copy(update={"precision": "bf16", "batch_size": 4})
    assert export_key(same, workflow.classes) == folder.name  # type: ignore[arg-type]
    # New weights in the same file are a new network.
    write_random_unet(Path(config.checkpoint), BANDS, seed=5)  # type: ignore[union-attr]
    try:
        assert export_key(config, workflow.classes) != folder.name  # type: ignore[arg-type]
    finally:
        write_random_unet(Path(config.checkpoint), BANDS, seed=4)  # type: ignore[union-attr]
    renamed = tuple(c.model_copy(update={"name": c.name + "x"}) for c in workflow.classes)
    assert export_key(config, renamed) != folder.name  # type: ignore[arg-type]


def test_conversion_errors_reach_the_caller_as_model_errors(unet, tmp_path):
    workflow, _ = unet
    bad = workflow.model.model_copy(update={"checkpoint": str(tmp_path / "none.ckpt")})
    (tmp_path / "none.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="none.ckpt"):
        prepare_openvino(bad, workflow.classes, tmp_path / "cache")  # type: ignore[arg-type]
    assert not list((tmp_path / "cache" / "openvino").glob("*"))


def test_missing_openvino_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ModelError, match="pip install openvino"):
        openvino_version()


def test_bf16_needs_the_openvino_engine(tmp_path):
    flow = tmp_path / "w.yaml"
    flow.write_text(
        json.dumps(
            {
                "name": "w",
                "model": {"kind": "torchgeo", "checkpoint": "u.ckpt", "precision": "bf16"},
                "classes": [{"value": 0, "name": "a", "colour": "#000000"}],
            }
        ),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="bf16.*engine: openvino"):
        load_workflow(str(flow))


@pytest.mark.slow
def test_run_with_openvino_matches_torch_and_workers_load_no_torch(unet, tmp_path):
    workflow, _ = unet
    scene = write_scene(tmp_path / "scene.tif", 600, BANDS, seed=1)
    catalog = load_catalog(_write_catalog(tmp_path, scene, BANDS))
    torch_flow = workflow.model_copy(
        update={"model": workflow.model.model_copy(update={"engine": "torch"})}
    )
    with dask_client(2, None) as client:
        opts = RunOptions(out=tmp_path / "ov", scheduler=client.scheduler.address, progress=False)
        ov_run = run(workflow, catalog.scene("bench"), options=opts)
        holds_torch = client.run(lambda: "torch" in sys.modules)
        opts = RunOptions(out=tmp_path / "pt", scheduler=client.scheduler.address, progress=False)
        pt_run = run(torch_flow, catalog.scene("bench"), options=opts)
    assert holds_torch and not any(holds_torch.values())
    assert (tmp_path / "ov" / ".cache" / "openvino").is_dir()
    with (
        rasterio.open(ov_run.folder / "classes.tif") as a,
        rasterio.open(pt_run.folder / "classes.tif") as b,
    ):
        ours, theirs = a.read(1), b.read(1)
    assert (ours != 255).all()
    assert (ours == theirs).mean() > 0.999
    assert ov_run.summary["model"] == pt_run.summary["model"]
    # The second run converts nothing: the cached network is found by content.
    model, _, _, _ = plan(workflow, catalog.scene("bench"), None, tmp_path / "ov" / ".cache")
    assert isinstance(model, NetworkInfo)


def test_cli_bench_rejects_bf16_with_torch(capsys):
    code = main(["bench", "--part", "model", "--precision", "bf16"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "--engine openvino" in err


def test_bf16_on_a_cpu_without_it_is_refused_before_any_work(unet, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engines, "cpu_capabilities", lambda: ["FP32", "INT8"])
    check_precision("f32")
    with pytest.raises(ModelError, match=r"bf16 needs a CPU.*offers FP32, INT8.*precision: f32"):
        check_precision("bf16")
    workflow, _ = unet
    bf16 = workflow.model_copy(
        update={"model": workflow.model.model_copy(update={"precision": "bf16"})}
    )
    scene = write_scene(tmp_path / "scene.tif", 64, BANDS, seed=1)
    catalog = load_catalog(_write_catalog(tmp_path, scene, BANDS))
    with pytest.raises(ModelError, match="bf16 needs a CPU"):
        plan(bf16, catalog.scene("bench"), None, tmp_path / "cache")
    assert not (tmp_path / "cache" / "openvino").exists()  # nothing converted
    # The benchmark says so in one line before it generates a scene (minutes at 10980²).
    made = []
    monkeypatch.setattr("pipeline.bench.model.write_scene", lambda *a, **k: made.append(a))
    args = ["bench", "--part", "model", "--size", "64", "--engine", "openvino"]
    code = main([*args, "--precision", "bf16"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "precision: f32" in err and not made


# --- engine: auto ---------------------------------------------------------------------------


def _auto(unet: tuple[Workflow, Path]) -> Workflow:
    workflow, _ = unet
    model = workflow.model.model_copy(update={"engine": "auto", "precision": "auto"})
    return workflow.model_copy(update={"model": model})


def test_auto_picks_openvino_and_bf16_only_where_classes_keep(unet, tmp_path):
    workflow = _auto(unet)
    choice = engines.choose_engine(workflow.model, workflow.classes, tmp_path)  # type: ignore[arg-type]
    folder = engines.converted_folder(workflow.model, workflow.classes, tmp_path)  # type: ignore[arg-type]
    assert choice.engine == "openvino" and choice.device == "cpu"
    assert (folder / "network.json").is_file()
    if "BF16" in cpu_capabilities():
        agreement = json.loads((folder / "bf16.json").read_text())["agreement"]
        assert 0.9 < agreement <= 1.0
        want = "bf16" if agreement >= engines.BF16_AGREEMENT else "f32"
        assert choice.precision == want and f"{agreement:.3%}" in choice.reason
    else:
        assert choice.precision == "f32" and "no bf16" in choice.reason


def test_bf16_agreement_is_the_share_of_equal_classes_and_is_kept(unet):
    _, converted = unet
    (converted / "bf16.json").unlink(missing_ok=True)
    if "BF16" not in cpu_capabilities():
        pytest.skip("this CPU has no bfloat16 instructions")
    first = engines.bf16_agreement(converted)
    assert json.loads((converted / "bf16.json").read_text()) == {"agreement": first}
    (converted / "bf16.json").write_text(json.dumps({"agreement": 0.5}))
    assert engines.bf16_agreement(converted) == 0.5  # read back, not measured again
    (converted / "bf16.json").unlink()


def test_auto_falls_back_where_the_fast_paths_do_not_hold(unet, tmp_path, monkeypatch):
    workflow = _auto(unet)
    config, classes = workflow.model, workflow.classes

    def choose():
        return engines.choose_engine(config, classes, tmp_path)  # type: ignore[arg-type]

    monkeypatch.setattr(engines, "cpu_capabilities", lambda: ["FP32", "BF16"])
    monkeypatch.setattr(engines, "bf16_agreement", lambda folder: 0.9981)
    choice = choose()
    assert (choice.engine, choice.precision) == ("openvino", "f32")
    assert "only 99.810%" in choice.reason
    monkeypatch.setattr(engines, "bf16_agreement", lambda folder: 0.9995)
    assert (choose().engine, choose().precision) == ("openvino", "bf16")
    monkeypatch.setattr(engines, "cpu_capabilities", lambda: ["FP32", "INT8"])
    assert (choose().precision, "no bf16" in choose().reason) == ("f32", True)

    def broken(*args, **kwargs):
        raise ModelError("OpenVINO cannot convert 'u': unsupported op")

    monkeypatch.setattr(engines, "prepare_openvino", broken)
    choice = choose()
    assert (choice.engine, choice.precision, choice.device) == ("torch", "f32", "cpu")
    assert "unsupported op" in choice.reason
    monkeypatch.setattr(engines, "cuda_present", lambda: True)
    choice = choose()
    assert (choice.engine, choice.device) == ("torch", "cuda")
    # Set in the workflow, an engine is kept, and a conversion that fails is the user's error.
    fixed = config.model_copy(update={"engine": "openvino", "precision": "f32"})
    with pytest.raises(ModelError, match="unsupported op"):
        engines.choose_engine(fixed, classes, tmp_path)  # type: ignore[arg-type]


def test_run_records_what_ran_and_why(unet, tmp_path):
    workflow = _auto(unet)
    scene = write_scene(tmp_path / "scene.tif", 300, BANDS, seed=1)
    catalog = load_catalog(_write_catalog(tmp_path, scene, BANDS))
    result = run(workflow, catalog.scene("bench"), options=RunOptions(out=tmp_path, workers=1))
    engine = result.summary["engine"]
    assert engine["engine"] == "openvino" and engine["device"] == "cpu"
    assert engine["precision"] in ("f32", "bf16") and engine["reason"]
    # The workflow as it ran: auto made concrete.
    model = result.summary["workflow"]["model"]
    assert (model["engine"], model["precision"]) == (engine["engine"], engine["precision"])
    assert "set in the workflow" not in engine["reason"]
