from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.bench.common import bench_grid
from pipeline.catalog import BandSource, Scene
from pipeline.errors import ModelError
from pipeline.grid import Block, blocks
from pipeline.inference import (
    NODATA,
    Dispatcher,
    classification_tasks,
    consecutive_batches,
    predict_batch,
    predict_tile,
    read_tile,
    swath_columns,
    sweep,
    tile_pixels,
)
from pipeline.models import build_model
from pipeline.models.base import SegmentationModel
from pipeline.reading import read_window, scene_grid
from pipeline.stitch import pad_tile
from pipeline.workflow import IndexModelConfig
from tests.data import forest_scene
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


# --- order and hand-out of classification tasks ----------------------------------------------


def _cost(group: tuple[Block, ...]) -> int:
    return tile_pixels(group, 32)


def _forest(folder: Path, seed: int) -> Scene:
    paths = forest_scene(folder, height=45, width=38, seed=seed)
    return Scene(folder.name, tuple(BandSource(n, str(p), scale=1e-4) for n, p in paths.items()))


@pytest.mark.parametrize(("size", "halo"), [(16, 4), (16, 15), (40, 30)])
def test_read_tile_is_the_read_window_reflect_padded(tmp_path: Path, size: int, halo: int):
    # Read into the middle of the tile's buffer and mirrored there, a tile is what reading
    # its window and padding it gave: at edges, corners, halos wider than the block, on a
    # scene with a nodata strip and a 20 m band, with and without a scene before it.
    bands = ("red", "nir", "swir16")
    scene, before = _forest(tmp_path / "after", 1), _forest(tmp_path / "before", 2)
    grid = scene_grid(scene, bands)
    for block in blocks(grid, size):
        for earlier in (None, before):
            data, valid, read, pad, _ = read_tile(bands, scene, earlier, grid, block, halo)
            expected, expected_valid = read_window(scene, bands, grid, read)
            if earlier is not None:
                data_b, valid_b = read_window(earlier, bands, grid, read)
                expected = np.concatenate([data_b, expected])
                expected_valid &= valid_b
            expected, expected_valid = pad_tile(expected, expected_valid, pad)
            np.testing.assert_array_equal(data, expected)
            np.testing.assert_array_equal(valid, expected_valid)
            assert data.flags.c_contiguous and data.shape[1:] == valid.shape


def test_sweep_goes_down_swaths_left_to_right():
    grid = bench_grid(4096)  # 768 blocks: 6 columns, the last 256 wide
    tiles = blocks(grid, 768)
    order = sweep(tiles, 4)
    assert sorted(order, key=lambda b: b.key) == sorted(tiles, key=lambda b: b.key)
    first, second = order[:24], order[24:]
    assert {b.col_off for b in first} == {0, 768, 1536, 2304}
    assert {b.col_off for b in second} == {3072, 3840}
    for swath in (first, second):  # top to bottom, each row left to right
        assert swath == sorted(swath, key=lambda b: (b.row_off, b.col_off))
    assert swath_columns(768) == 3 and swath_columns(4096) == 1


def test_consecutive_batches_keep_the_order_and_one_shape():
    tiles = sweep(blocks(bench_grid(2000), 768), 4)  # 3 columns: 768, 768, 464 wide
    groups = consecutive_batches(tiles, 2)
    assert [b for g in groups for b in g] == tiles
    assert all(len(g) <= 2 and len({(b.height, b.width) for b in g}) == 1 for g in groups)
    assert [len(g) for g in groups[:2]] == [2, 1]  # a row: two full blocks, one narrow


def _hand_out(
    tasks: list[tuple[Block, ...]], speeds: dict[str, float], depth: int = 2
) -> dict[str, list[tuple[float, tuple[Block, ...]]]]:
    """Simulate workers of the given speeds taking tasks from a Dispatcher; (end, task) each."""
    dispatcher = Dispatcher(tasks, list(speeds), _cost)
    queue: dict[str, list[tuple[Block, ...]]] = {w: [] for w in speeds}
    clock = dict.fromkeys(speeds, 0.0)
    done: dict[str, list[tuple[float, tuple[Block, ...]]]] = {w: [] for w in speeds}
    for w in speeds:
        for _ in range(depth):
            task = dispatcher.next(w)
            if task is not None:
                queue[w].append(task)
    while any(queue.values()):
        # The worker whose current task ends first finishes it and asks for the next.
        w = min(
            (w for w in speeds if queue[w]), key=lambda w: clock[w] + _cost(queue[w][0]) / speeds[w]
        )
        task = queue[w].pop(0)
        clock[w] += _cost(task) / speeds[w]
        done[w].append((clock[w], task))
        following = dispatcher.next(w)
        if following is not None:
            queue[w].append(following)
    assert len(dispatcher) == 0
    return done


@pytest.mark.parametrize(
    ("size", "speeds"),
    [
        (4096, {"a": 1.0, "b": 1.0}),
        (10980, {"a": 1.0, "b": 1.0}),
        (10980, {"a": 1.0, "b": 0.8}),  # one worker 20 % slower
        (10980, {"a": 1.0, "b": 1.1, "c": 0.9, "d": 1.0}),
    ],
)
def test_dispatcher_hands_each_task_once_in_stretches_and_ends_evenly(size, speeds):
    tiles = blocks(bench_grid(size), 768)
    tasks = classification_tasks(tiles, 768, 1)  # the run's own: swaths of 3 blocks
    done = _hand_out(tasks, speeds)
    got = [t for runs in done.values() for _, t in runs]
    assert sorted(got, key=lambda t: t[0].key) == sorted(tasks, key=lambda t: t[0].key)
    # Each worker mostly takes the task after its previous one in sweep order: a jump only
    # when it starts another stretch (its own, then halves it takes at the end).
    index = {t: i for i, t in enumerate(tasks)}
    for runs in done.values():
        order = [index[t] for _, t in runs]
        jumps = sum(b != a + 1 for a, b in zip(order, order[1:], strict=False))
        assert jumps <= 2 + 2 * len(speeds), order
    # All end within about one tile of each other, whatever their speeds.
    ends = [runs[-1][0] for runs in done.values()]
    tile = (768 + 64) ** 2 / min(speeds.values())
    assert max(ends) - min(ends) <= 1.1 * tile


def test_dispatcher_without_named_workers_hands_out_everything():
    tasks = consecutive_batches(sweep(blocks(bench_grid(2000), 768), 4), 1)
    dispatcher = Dispatcher(tasks, [], _cost)
    assert [dispatcher.next("") for _ in tasks] == tasks
    assert dispatcher.next("") is None
    late = Dispatcher(tasks, ["a"], _cost)  # a worker that joins later takes the back half
    cut = tasks.index(late.next("b"))
    costs = [_cost(t) for t in tasks]
    assert sum(costs[: cut - 1]) < sum(costs) / 2 <= sum(costs[:cut])
    assert late.next("a") == tasks[0]
    assert late.next("b") == tasks[cut + 1]
    assert Dispatcher([], ["a"], _cost).next("a") is None


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
from pipeline.bench.scenes import write_scene
from pipeline.catalog import BandSource, Scene
from pipeline.reading import read_window, scene_grid
from rasterio.windows import Window
import tempfile, pathlib
path = write_scene(pathlib.Path(tempfile.mkdtemp()) / "s.tif", 300, ("red", "nir"))
scene = Scene("s", (BandSource("red", str(path), 1), BandSource("nir", str(path), 2)))
read_window(scene, ("red", "nir"), scene_grid(scene, ("red", "nir")), Window(10, 20, 100, 90))
print(json.dumps({"warm": after_warm_up, "run": loaded()}))
"""


def test_warm_up_loads_the_kernel_a_forward_pass_calls():
    # A fresh process: numba's loaded signatures are per process.
    result = run_fresh(_WARM_UP_CHECK)
    assert result["warm"] == {"scores_to_classes": 1, "to_reflectance": 1}
    assert result["run"] == result["warm"]
