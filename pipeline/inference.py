"""Running a segmentation model over blocks: tiles read, classified in batches, cropped back.

:func:`predict_batch` is arrays in, class and confidence arrays out; :func:`process_blocks`
composes reading a block's tile (with its halo), the forward pass and cropping the block out,
in the worker that runs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from rasterio.windows import Window

from pipeline.catalog import Scene
from pipeline.errors import ModelError
from pipeline.grid import Block, Grid, Padding, tile_window
from pipeline.models.engines import OpenVINOModel
from pipeline.reading import read_window
from pipeline.stitch import NODATA, crop_block, pad_tile, window_of

if TYPE_CHECKING:
    from pipeline.models.base import SegmentationModel

    #: What classifies tiles: a torch module, or a network OpenVINO runs (no torch needed).
    Model = SegmentationModel | OpenVINOModel


def predict_tile(
    model: Model, data: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Classify one tile: ``data`` float32 ``[C, H, W]``, ``valid`` boolean ``[H, W]``.

    See :func:`predict_batch`; returns uint8 ``(classes, confidence)`` of shape ``[H, W]``.
    """
    classes, confidence = predict_batch(model, data[None], valid[None])
    return classes[0], confidence[0]


def predict_batch(
    model: Model, data: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Classify a batch of equally sized tiles in one forward pass.

    ``data`` is float32 ``[N, C, H, W]`` in the model's band order, ``valid`` boolean
    ``[N, H, W]``. Returns ``(classes, confidence)``, both uint8 ``[N, H, W]``: the arg-max class
    and its softmax probability in percent, :data:`NODATA` where the input was invalid. Tiles
    without any valid pixel are left out of the forward pass. A torch model runs on its device
    (CUDA when the model was moved there), channels-last; an :class:`OpenVINOModel` on the CPU.
    On the CPU the scores become classes in one compiled pass
    (:func:`~pipeline.kernels.scores_to_classes`).
    """
    n, h, w = valid.shape
    todo = np.flatnonzero(valid.reshape(n, -1).any(axis=1))
    if todo.size < n:
        classes = np.full((n, h, w), NODATA, dtype=np.uint8)
        confidence = np.full((n, h, w), NODATA, dtype=np.uint8)
        if todo.size == 0:
            return classes, confidence
        data, valid = data[todo], valid[todo]
    x = np.ascontiguousarray(data, dtype=np.float32)
    ok = np.ascontiguousarray(valid, dtype=bool)
    expected = (len(x), model.num_classes, h, w)
    if isinstance(model, OpenVINOModel):
        scores = model(x)
        _check_scores(model, scores.shape, expected)
        cls_np, conf_np = _to_classes(scores, ok)
    else:
        cls_np, conf_np = _classify_torch(model, x, ok, expected)
    if todo.size == n:
        return cls_np, conf_np
    classes[todo] = cls_np
    confidence[todo] = conf_np
    return classes, confidence


def _check_scores(model: Model, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if shape != expected:
        raise ModelError(
            f"model {model.model_id!r} returned scores of shape {list(shape)}, "
            f"expected {list(expected)}"
        )


def _to_classes(scores: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores on the CPU to (classes, confidence), :data:`NODATA` where not ``valid``."""
    from pipeline.kernels import scores_to_classes

    return scores_to_classes(np.ascontiguousarray(scores, dtype=np.float32), valid, NODATA)


def warm_up() -> None:
    """Load this process's compiled scores kernel now (about 0.1 s), not at the first tile."""
    _to_classes(np.zeros((1, 2, 1, 1), dtype=np.float32), np.ones((1, 1, 1), dtype=bool))


def _classify_torch(
    model: SegmentationModel, x: np.ndarray, valid: np.ndarray, expected: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.inference_mode():
        device = next(model.parameters(), torch.empty(0)).device
        xt = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
        scores = model(xt)
        _check_scores(model, tuple(scores.shape), expected)
        if scores.device.type == "cpu":
            return _to_classes(scores.float().contiguous().numpy(), valid)
        # On a GPU only the uint8 results cross to the host, not the scores.
        prob, cls = torch.softmax(scores.float(), dim=1).max(dim=1)
        cls_np = cls.to(torch.uint8).cpu().numpy()
        conf_np = torch.round(prob * 100).to(torch.uint8).cpu().numpy()
    return np.where(valid, cls_np, NODATA), np.where(valid, conf_np, NODATA)


def read_tile(
    bands: tuple[str, ...], scene: Scene, before: Scene | None, grid: Grid, block: Block, halo: int
) -> tuple[np.ndarray, np.ndarray, Window, Padding]:
    """Read one block's tile (the block with its halo, reflect-padded at the grid's edges)."""
    read, pad = tile_window(grid, block, halo)
    data, valid = read_window(scene, bands, grid, read)
    if before is not None:
        data_b, valid_b = read_window(before, bands, grid, read)
        data = np.concatenate([data_b, data], axis=0)
        valid &= valid_b
    data, valid = pad_tile(data, valid, pad)
    return data, valid, read, pad


def process_blocks(
    model: Model,
    scene: Scene,
    before: Scene | None,
    grid: Grid,
    group: tuple[Block, ...],
    halo: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read, classify (in one batch per tile shape) and crop blocks; (classes, confidence) each."""
    return [(c, f) for c, f, _ in process_tiles(model, scene, before, grid, group, halo)]


def process_tiles(
    model: Model,
    scene: Scene,
    before: Scene | None,
    grid: Grid,
    group: tuple[Block, ...],
    halo: int,
    batch_size: int | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """As :func:`process_blocks`, with each tile's classes over its whole read window too.

    The window's classes (the block and the halo the tile saw on the grid) are what
    ``seams.tif`` compares with the neighbouring blocks' own classes. Tiles of one shape go
    through the network ``batch_size`` at a time (all at once when None).
    """
    tiles = [read_tile(model.bands, scene, before, grid, b, halo) for b in group]
    empty = np.empty(0)
    results: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [(empty, empty, empty)] * len(group)
    for members in _by_shape([data.shape for data, _, _, _ in tiles], batch_size or len(group)):
        data = _batch([tiles[i][0] for i in members])
        valid = _batch([tiles[i][1] for i in members])
        classes, confidence = predict_batch(model, data, valid)
        for k, i in enumerate(members):
            _, _, read, pad = tiles[i]
            results[i] = (
                crop_block(classes[k], read, pad, group[i]),
                crop_block(confidence[k], read, pad, group[i]),
                window_of(classes[k], read, pad),
            )
    return results


def _batch(arrays: list[np.ndarray]) -> np.ndarray:
    """Arrays stacked along a new first axis; one array is only viewed so (no copy)."""
    return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)


def process_block(
    model: Model,
    scene: Scene,
    before: Scene | None,
    grid: Grid,
    block: Block,
    halo: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Read, classify and crop one block; return its (classes, confidence) arrays."""
    return process_blocks(model, scene, before, grid, (block,), halo)[0]


def runs(tiles: list[Block], size: int) -> list[tuple[Block, ...]]:
    """Split blocks into runs of at most ``size`` neighbours along a row (one task each).

    Neighbouring tiles overlap in the file blocks they decompress: one process reading a run
    of them finds most of them in its GDAL block cache (768 tiles with a 32 px halo touch 3 of
    a file's 512 px block columns each, 2 of them shared with the tile before).
    """
    out: list[tuple[Block, ...]] = []
    current: list[Block] = []
    for b in tiles:
        if current and (
            len(current) == size
            or b.row_off != current[-1].row_off
            or b.col_off != current[-1].col_off + current[-1].width
        ):
            out.append(tuple(current))
            current = []
        current.append(b)
    if current:
        out.append(tuple(current))
    return out


#: Most neighbouring blocks one classification task reads and classifies in turn.
RUN_LENGTH = 4


def schedule(
    tiles: list[Block], workers: int, halo: int, batch_size: int = 1, run_length: int = RUN_LENGTH
) -> list[tuple[Block, ...]]:
    """Classification tasks for ``tiles``, in the order to hand them out: costliest first.

    Workers take the next task whenever they finish one, so the stage ends no later than the
    average load plus the last task a worker took. Runs of neighbouring blocks (see
    :func:`runs`) therefore go first, largest first, and the smallest runs, worth one largest
    run per worker, are split into single batches of ``batch_size`` tiles that even out the
    end. A task's cost is the pixels of its tiles (halos included). Measured at 4096² with 768
    blocks on two workers, runs handed out in grid order left one worker idle for the last
    4.3 s of a 25.8 s stage (torch) and 1.5 s of 10.4 s (OpenVINO bf16).
    """
    n = max(workers, 1)
    size = max(batch_size, min(run_length, len(tiles) // (4 * n)))

    def cost(group: tuple[Block, ...]) -> int:
        return sum((b.height + 2 * halo) * (b.width + 2 * halo) for b in group)

    head = sorted(runs(tiles, size), key=cost, reverse=True)
    budget = n * cost(head[0]) if head else 0
    spent = 0
    tail: list[tuple[Block, ...]] = []
    while head and spent + cost(head[-1]) <= budget:
        group = head.pop()
        spent += cost(group)
        tail.extend(batches(list(group), batch_size))
    return head + sorted(tail, key=cost, reverse=True)


def batches(tiles: list[Block], size: int) -> list[tuple[Block, ...]]:
    """Group blocks of equal shape into batches of at most ``size`` (one forward pass each)."""
    return [
        tuple(tiles[i] for i in m) for m in _by_shape([(b.height, b.width) for b in tiles], size)
    ]


def _by_shape(shapes: list[tuple[int, ...]], size: int) -> list[list[int]]:
    """Indices of equal ``shapes`` in groups of at most ``size``, in order of first appearance."""
    same: dict[tuple[int, ...], list[int]] = {}
    for i, shape in enumerate(shapes):
        same.setdefault(shape, []).append(i)
    return [m[k : k + size] for m in same.values() for k in range(0, len(m), size)]
