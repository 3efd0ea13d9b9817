"""Running a segmentation model over blocks: tiles read, classified in batches, cropped back.

:func:`predict_batch` is arrays in, class and confidence arrays out; :func:`process_blocks`
composes reading a block's tile (with its halo), the forward pass and cropping the block out,
in the worker that runs it.
"""

from __future__ import annotations

import numpy as np
import torch
from rasterio.windows import Window

from pipeline.catalog import Scene
from pipeline.errors import ModelError
from pipeline.grid import Block, Grid, Padding, tile_window
from pipeline.models.base import SegmentationModel
from pipeline.reading import read_window
from pipeline.stitch import NODATA, crop_block, pad_tile, window_of


def predict_tile(
    model: SegmentationModel, data: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Classify one tile: ``data`` float32 ``[C, H, W]``, ``valid`` boolean ``[H, W]``.

    See :func:`predict_batch`; returns uint8 ``(classes, confidence)`` of shape ``[H, W]``.
    """
    classes, confidence = predict_batch(model, data[None], valid[None])
    return classes[0], confidence[0]


@torch.inference_mode()
def predict_batch(
    model: SegmentationModel, data: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Classify a batch of equally sized tiles in one forward pass.

    ``data`` is float32 ``[N, C, H, W]`` in the model's band order, ``valid`` boolean
    ``[N, H, W]``. Returns ``(classes, confidence)``, both uint8 ``[N, H, W]``: the arg-max class
    and its softmax probability in percent, :data:`NODATA` where the input was invalid. Tiles
    without any valid pixel are left out of the forward pass. Runs on the model's device (CUDA
    when the model was moved there), channels-last.
    """
    n, h, w = valid.shape
    classes = np.full((n, h, w), NODATA, dtype=np.uint8)
    confidence = np.full((n, h, w), NODATA, dtype=np.uint8)
    todo = np.flatnonzero(valid.reshape(n, -1).any(axis=1))
    if todo.size == 0:
        return classes, confidence
    device = next(model.parameters(), torch.empty(0)).device
    x = torch.from_numpy(np.ascontiguousarray(data[todo], dtype=np.float32)).to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    scores = model(x)
    expected = (len(todo), model.num_classes, h, w)
    if tuple(scores.shape) != expected:
        raise ModelError(
            f"model {model.model_id!r} returned scores of shape {list(scores.shape)}, "
            f"expected {list(expected)}"
        )
    prob, cls = torch.softmax(scores.float(), dim=1).max(dim=1)
    cls_np = cls.to(torch.uint8).cpu().numpy()
    conf_np = torch.round(prob * 100).to(torch.uint8).cpu().numpy()
    ok = valid[todo]
    classes[todo] = np.where(ok, cls_np, NODATA)
    confidence[todo] = np.where(ok, conf_np, NODATA)
    return classes, confidence


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
    model: SegmentationModel,
    scene: Scene,
    before: Scene | None,
    grid: Grid,
    group: tuple[Block, ...],
    halo: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read, classify (in one batch per tile shape) and crop blocks; (classes, confidence) each."""
    return [(c, f) for c, f, _ in process_tiles(model, scene, before, grid, group, halo)]


def process_tiles(
    model: SegmentationModel,
    scene: Scene,
    before: Scene | None,
    grid: Grid,
    group: tuple[Block, ...],
    halo: int,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """As :func:`process_blocks`, with each tile's classes over its whole read window too.

    The window's classes (the block and the halo the tile saw on the grid) are what
    ``seams.tif`` compares with the neighbouring blocks' own classes.
    """
    tiles = [read_tile(model.bands, scene, before, grid, b, halo) for b in group]
    empty = np.empty(0)
    results: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [(empty, empty, empty)] * len(group)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, (data, _, _, _) in enumerate(tiles):
        by_shape.setdefault(data.shape, []).append(i)
    for members in by_shape.values():
        data = np.stack([tiles[i][0] for i in members])
        valid = np.stack([tiles[i][1] for i in members])
        classes, confidence = predict_batch(model, data, valid)
        for k, i in enumerate(members):
            _, _, read, pad = tiles[i]
            results[i] = (
                crop_block(classes[k], read, pad, group[i]),
                crop_block(confidence[k], read, pad, group[i]),
                window_of(classes[k], read, pad),
            )
    return results


def process_block(
    model: SegmentationModel,
    scene: Scene,
    before: Scene | None,
    grid: Grid,
    block: Block,
    halo: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Read, classify and crop one block; return its (classes, confidence) arrays."""
    return process_blocks(model, scene, before, grid, (block,), halo)[0]


def batches(tiles: list[Block], size: int) -> list[tuple[Block, ...]]:
    """Group blocks of equal shape into batches of at most ``size`` (one forward pass each)."""
    by_shape: dict[tuple[int, int], list[Block]] = {}
    for b in tiles:
        by_shape.setdefault((b.height, b.width), []).append(b)
    return [
        tuple(same[i : i + size]) for same in by_shape.values() for i in range(0, len(same), size)
    ]
