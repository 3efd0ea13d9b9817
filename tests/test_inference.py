from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.bench.common import bench_grid
from pipeline.errors import ModelError
from pipeline.grid import Block, blocks
from pipeline.inference import NODATA, predict_batch, predict_tile, schedule
from pipeline.models import build_model
from pipeline.models.base import SegmentationModel
from pipeline.workflow import IndexModelConfig
from tests.helpers import run_fresh


class FixedLogits(SegmentationModel):
    """Returns preset logits [K, H, W] whatever the input; counts forward passes."""

    bands = ("red", "nir")
    model_id = "fixed-logits"

    def __init__(self, logits: np.ndarray) -> None:
        super().__init__()
        self.logits = torch.from_numpy(logits.astype(np.float32))
        self.num_classes = logits.shape[0]
        self.calls = 0
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        self.calls += 1
        self.batch_sizes.append(x.shape[0])
        return self.logits[None].expand(x.shape[0], -1, -1, -1)


class Exploding(FixedLogits):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        raise RuntimeError("forward must not run")


class WrongShape(FixedLogits):
    def __init__(self, logits: np.ndarray, shape: tuple[int, ...]) -> None:
        super().__init__(logits)
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.shape)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    e = np.exp(z - z.max(axis=0))
    return e / e.sum(axis=0)


def _tile(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.uniform(0.01, 0.5, size=(2, h, w)).astype(np.float32)
    valid = rng.random((h, w)) > 0.3
    return data, valid


@pytest.mark.parametrize("k", [2, 3, 7])
def test_classes_and_confidence(k: int) -> None:
    h, w = 9, 13
    rng = np.random.default_rng(k)
    logits = rng.normal(0, 2, size=(k, h, w))
    data, valid = _tile(h, w, seed=k)
    model = FixedLogits(logits)
    classes, confidence = predict_tile(model, data, valid)

    assert model.calls == 1
    assert classes.dtype == np.uint8 and confidence.dtype == np.uint8
    assert classes.shape == confidence.shape == (h, w)

    prob = _softmax(logits)
    np.testing.assert_array_equal(classes[valid], prob.argmax(axis=0)[valid])
    np.testing.assert_array_equal(confidence[valid], np.round(100 * prob.max(axis=0))[valid])
    assert classes[valid].max() < k
    assert confidence[valid].min() >= np.floor(100 / k)
    assert confidence[valid].max() <= 100
    np.testing.assert_array_equal(classes == NODATA, ~valid)
    np.testing.assert_array_equal(confidence == NODATA, ~valid)


def test_confidence_extremes() -> None:
    # Certain pixels give 100, an even split between two classes gives 50.
    logits = np.zeros((2, 1, 3))
    logits[1, 0, 0] = 50.0
    logits[0, 0, 2] = 50.0
    data, _ = _tile(1, 3)
    classes, confidence = predict_tile(FixedLogits(logits), data, np.ones((1, 3), bool))
    assert confidence.tolist() == [[100, 50, 100]]
    assert classes[0, 0] == 1 and classes[0, 2] == 0


def test_nodata_is_255() -> None:
    assert NODATA == 255


def test_all_invalid_tile_skips_the_model() -> None:
    data, _ = _tile(6, 5)
    model = Exploding(np.zeros((3, 6, 5)))
    classes, confidence = predict_tile(model, data, np.zeros((6, 5), bool))
    assert model.calls == 0
    assert classes.dtype == np.uint8 and confidence.dtype == np.uint8
    assert (classes == NODATA).all() and (confidence == NODATA).all()
    assert classes.shape == confidence.shape == (6, 5)


def test_single_valid_pixel_runs_the_model() -> None:
    data, _ = _tile(4, 4)
    valid = np.zeros((4, 4), bool)
    valid[2, 1] = True
    model = FixedLogits(np.zeros((2, 4, 4)))
    classes, confidence = predict_tile(model, data, valid)
    assert model.calls == 1
    assert confidence[2, 1] == 50
    assert (classes == NODATA).sum() == 15


def test_batch_with_an_empty_tile_runs_the_model_on_the_others_only() -> None:
    rng = np.random.default_rng(3)
    model = FixedLogits(rng.normal(0, 2, size=(3, 5, 6)))
    data = np.stack([_tile(5, 6, seed=s)[0] for s in range(3)])
    valid = np.stack([_tile(5, 6, seed=s)[1] for s in range(3)])
    valid[1] = False
    classes, confidence = predict_batch(model, data, valid)
    assert model.batch_sizes == [2]
    assert classes.shape == confidence.shape == (3, 5, 6)
    assert (classes[1] == NODATA).all() and (confidence[1] == NODATA).all()
    for i in (0, 2):
        alone = predict_tile(FixedLogits(model.logits.numpy()), data[i], valid[i])
        np.testing.assert_array_equal(classes[i], alone[0])
        np.testing.assert_array_equal(confidence[i], alone[1])


@pytest.mark.parametrize(
    "shape",
    [(1, 3, 4, 5), (1, 2, 4, 6), (1, 2, 3, 5), (2, 2, 4, 5), (2, 4, 5)],
)
def test_wrong_output_shape_raises_model_error(shape: tuple[int, ...]) -> None:
    data, _ = _tile(4, 5)
    model = WrongShape(np.zeros((2, 4, 5)), shape)
    with pytest.raises(ModelError) as info:
        predict_tile(model, data, np.ones((4, 5), bool))
    msg = str(info.value)
    assert "'fixed-logits'" in msg
    assert str(list(shape)) in msg
    assert "[1, 2, 4, 5]" in msg
    assert "\n" not in msg


def test_wrong_input_channels_surface_as_value_error() -> None:
    model = FixedLogits(np.zeros((2, 4, 5)))
    data = np.ones((3, 4, 5), np.float32)
    with pytest.raises(ValueError, match="expects"):
        predict_tile(model, data, np.ones((4, 5), bool))


def test_input_is_not_modified_and_accepts_other_dtypes() -> None:
    rng = np.random.default_rng(7)
    data = rng.integers(100, 3000, size=(2, 5, 6)).astype(np.float64)
    before = data.copy()
    valid = np.ones((5, 6), bool)
    logits = rng.normal(size=(2, 5, 6))
    classes, _ = predict_tile(FixedLogits(logits), data, valid)
    np.testing.assert_array_equal(data, before)
    np.testing.assert_array_equal(classes, logits.argmax(axis=0))


def test_forest_model_tile() -> None:
    model = build_model(IndexModelConfig(kind="index", name="forest-ndvi-swir"))
    h, w = 4, 6
    red = np.full((h, w), 0.03, np.float32)
    nir = np.full((h, w), 0.30, np.float32)  # NDVI 0.82
    swir = np.full((h, w), 0.08, np.float32)
    swir[:, 3:] = 0.30  # bright in SWIR: not forest
    valid = np.ones((h, w), bool)
    valid[0, 0] = False
    classes, confidence = predict_tile(model, np.stack([red, nir, swir]), valid)
    expected = np.zeros((h, w), np.uint8)
    expected[:, :3] = 1
    expected[0, 0] = NODATA
    np.testing.assert_array_equal(classes, expected)
    assert (confidence[valid] >= 90).all()


# --- scheduling of classification tasks ------------------------------------------------------


def _cost(group: tuple[Block, ...], halo: int) -> int:
    return sum((b.height + 2 * halo) * (b.width + 2 * halo) for b in group)


def _makespan(groups: list[tuple[Block, ...]], workers: int, halo: int) -> int:
    """When the last worker finishes if each takes the next task as soon as it is free."""
    loads = [0] * workers
    for g in groups:
        loads[loads.index(min(loads))] += _cost(g, halo)
    return max(loads)


@pytest.mark.parametrize(("size", "workers", "batch"), [(4096, 2, 1), (10980, 2, 1), (4096, 4, 2)])
def test_schedule_covers_every_block_once_and_ends_evenly(size: int, workers: int, batch: int):
    grid, halo = bench_grid(size), 32
    tiles = blocks(grid, 768)
    groups = schedule(tiles, workers, halo, batch)
    flat = [b for g in groups for b in g]
    assert sorted(flat, key=lambda b: b.key) == sorted(tiles, key=lambda b: b.key)
    for g in groups:  # a task is a run of neighbours along one row
        assert all(b.row_off == g[0].row_off for b in g)
        assert all(b.col_off == a.col_off + a.width for a, b in zip(g, g[1:], strict=False))
    # Handed out costliest first: the runs, then (one step up at most) the single batches,
    # of which the last tasks are made.
    costs = [_cost(g, halo) for g in groups]
    assert sum(b > a for a, b in zip(costs, costs[1:], strict=False)) <= 1
    for g in groups[-2 * workers :]:
        assert len(g) <= batch and len({(b.height, b.width) for b in g}) == 1
    # Workers that each take the next task when free end within a fifth of a tile of the
    # average load (grid-order runs of 4: 0.27, 0.29 and 0.75 tiles over it in these cases).
    total = sum(_cost(g, halo) for g in groups)
    biggest_tile = (768 + 2 * halo) ** 2
    assert _makespan(groups, workers, halo) <= total / workers + 0.2 * biggest_tile


def test_schedule_of_a_few_blocks_is_single_batches():
    tiles = blocks(bench_grid(1000), 512)
    groups = schedule(tiles, 2, 32)
    assert [len(g) for g in groups] == [1, 1, 1, 1]
    assert groups[0] == (Block(0, 0, 512, 512),)
    assert schedule([], 2, 32) == []


_WARM_UP_CHECK = """
import json
import numpy as np
from pipeline.inference import predict_batch, warm_up
from tests.helpers import loaded_kernels as loaded
from tests.test_inference import FixedLogits, _tile

warm_up()
after_warm_up = loaded()
model = FixedLogits(np.random.default_rng(0).normal(size=(3, 20, 30)))
data = np.stack([_tile(20, 30, seed=s)[0] for s in range(3)])
valid = np.stack([_tile(20, 30, seed=s)[1] for s in range(3)])
predict_batch(model, data, valid)
valid[1] = False  # a batch with an empty tile takes the others apart
predict_batch(model, data[:, :, ::-1], valid)  # and an input that is not C-contiguous
print(json.dumps({"warm": after_warm_up, "run": loaded()}))
"""


def test_warm_up_loads_the_kernel_a_forward_pass_calls():
    # A fresh process: numba's loaded signatures are per process.
    result = run_fresh(_WARM_UP_CHECK)
    assert result["warm"] == {"scores_to_classes": 1}
    assert result["run"] == result["warm"]
