"""Seam-free stitching with a trained network: tile sizes agree with each other and with one
forward pass over the whole scene."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from pipeline.catalog import load_catalog
from pipeline.grid import Block, blocks
from pipeline.inference import predict_tile, process_block
from pipeline.models import build_model
from pipeline.reading import read_window, scene_grid
from pipeline.training import Sample, TrainOptions, train
from pipeline.workflow import load_workflow
from tests.conftest import ROOT
from tests.data import write_raster
from tests.helpers import torch_threads

#: The halo under test. With 64 px parity holds for some trainings and not others: three of
#: the fixture's recipe on an AVX2-only host (two torch threads and 120 steps; one thread and
#: 120 or 200 steps) put tile 256 at 99.979, 99.870 and 99.716 % of one whole-scene pass with
#: a halo of 64, and at 99.999, 99.993 and 99.983 % with 128 (BENCHMARKS.md, stitching parity).
HALO = 128


def _predict(model, scene, grid, tile: int) -> np.ndarray:
    out = np.empty((grid.height, grid.width), dtype=np.uint8)
    for b in blocks(grid, tile):
        classes, _ = process_block(model, scene, None, grid, b, HALO)
        out[b.row_off : b.row_off + b.height, b.col_off : b.col_off + b.width] = classes
    return out


@pytest.fixture(scope="module")
def virginia_unet(tmp_path_factory):
    """A U-Net trained briefly on Virginia to reproduce the forest index model's map."""
    folder = tmp_path_factory.mktemp("parity")
    catalog = load_catalog(ROOT / "data_catalog.yaml")
    scene = catalog.scene("s2-virginia")
    index = build_model(load_workflow("forest").model)
    grid = scene_grid(scene, index.bands)
    whole = Block(0, 0, grid.height, grid.width).window
    data, valid = read_window(scene, index.bands, grid, whole)
    labels, _ = predict_tile(index, data, valid)
    label_path = write_raster(
        folder / "labels.tif", labels, grid.affine, crs=grid.crs_wkt, nodata=255
    )
    flow = {
        "name": "forest-unet",
        "model": {
            "kind": "torchgeo",
            "arch": "unet",
            "backbone": "resnet18",
            "bands": ["red", "nir", "swir16"],
            "checkpoint": "unet.ckpt",
        },
        "classes": [
            {"value": 0, "name": "other", "colour": "#d9d9d9", "vectorize": False},
            {"value": 1, "name": "forest", "colour": "#1b7837"},
        ],
        "tile_size": 256,
        "halo": HALO,
    }
    (folder / "forest-unet.yaml").write_text(yaml.safe_dump(flow))
    workflow = load_workflow(str(folder / "forest-unet.yaml"))
    options = TrainOptions(epochs=1, steps_per_epoch=120, batch_size=8, chip_size=128, seed=0)
    # Two threads whatever earlier tests left: the thread count changes the trained weights.
    with torch_threads(2):
        train(
            workflow, [Sample(scene, None, str(label_path))], folder / "unet.ckpt", options=options
        )
    model = build_model(workflow.model, workflow.classes)
    return model, scene, grid, labels


@pytest.mark.slow
def test_tile_sizes_agree_with_each_other_and_with_one_pass(virginia_unet):
    model, scene, grid, labels = virginia_unet
    small, large = _predict(model, scene, grid, 256), _predict(model, scene, grid, 1024)
    valid = labels != 255
    # It learnt something: most pixels agree with the map it was trained on.
    assert (small[valid] == labels[valid]).mean() > 0.9

    agree = (small == large)[valid].mean()
    assert agree >= 0.999, agree

    data, ok = read_window(scene, model.bands, grid, Block(0, 0, grid.height, grid.width).window)
    one_pass, _ = predict_tile(model, data, ok)
    # At the scene's edge the whole-scene pass pads differently by design: leave a halo out.
    inner = np.zeros_like(valid)
    inner[HALO:-HALO, HALO:-HALO] = True
    for tiled in (small, large):
        assert (tiled == one_pass)[valid & inner].mean() >= 0.999


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_openvino_engine_keeps_parity_and_agrees_with_torch(virginia_unet, tmp_path, precision):
    from pipeline.models.engines import OpenVINOModel, cpu_capabilities, export_openvino

    if precision == "bf16" and "BF16" not in cpu_capabilities():
        pytest.skip("this CPU has no bfloat16 instructions")
    model, scene, grid, labels = virginia_unet
    engine = OpenVINOModel(export_openvino(model, tmp_path / "converted"), precision)
    small, large = _predict(engine, scene, grid, 256), _predict(engine, scene, grid, 1024)
    valid = labels != 255
    assert (small == large)[valid].mean() >= 0.999
    reference = _predict(model, scene, grid, 256)  # torch, float32
    agree = (small == reference)[valid].mean()
    assert agree >= (0.99999 if precision == "f32" else 0.999), agree
