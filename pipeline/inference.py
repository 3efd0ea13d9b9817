"""Running a segmentation model over blocks: tiles read, classified in batches, cropped back.

:func:`predict_batch` is arrays in, class and confidence arrays out; :func:`process_blocks`
composes reading a block's tile (with its halo), the forward pass and cropping the block out,
in the worker that runs it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar, cast

import numpy as np
from rasterio.windows import Window

from pipeline.catalog import Scene
from pipeline.errors import ModelError
from pipeline.grid import Block, Grid, Padding, tile_window
from pipeline.masking import MaskPlan, combined_mask
from pipeline.models.engines import OpenVINOModel
from pipeline.reading import read_window_into
from pipeline.stitch import NODATA, crop_block, reflect_borders, tile_buffers, window_of

if TYPE_CHECKING:
    from pipeline.models.base import SegmentationModel
    from pipeline.models.indices import IndexModel

    #: What classifies tiles: a torch module, or a network OpenVINO runs (no torch needed).
    Model = SegmentationModel | OpenVINOModel | IndexModel

#: Each scene of a tile with the plan that masks it.
Masks = tuple[tuple[MaskPlan, Scene], ...]
#: A block's tile as read for the model: data, valid, read window, padding and mask (see
#: :func:`read_tile`).
Tile = tuple[np.ndarray, np.ndarray, Window, Padding, np.ndarray | None]
#: A block's classes and confidence, and its tile's classes over the whole read window.
TileResult = tuple[np.ndarray, np.ndarray, np.ndarray]


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
    if not hasattr(model, "parameters"):  # arrays in, arrays out: OpenVINO, index models
        scores = model(x)
        _check_scores(model, scores.shape, expected)
        cls_np, conf_np = _to_classes(scores, ok)
    else:
        cls_np, conf_np = _classify_torch(cast("SegmentationModel", model), x, ok, expected)
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
    """Load this process's compiled kernels of a tile now, not at the first tile.

    The scores kernel, and the reflectance kernel for uint16 bands (Sentinel-2's and Landsat's
    type; another type loads its own at its first read).
    """
    from pipeline.kernels import to_reflectance

    _to_classes(np.zeros((1, 2, 1, 1), dtype=np.float32), np.ones((1, 1, 1), dtype=bool))
    one = np.ones((1, 1), dtype=bool)
    out = np.empty((1, 1, 1), np.float32)
    to_reflectance(np.ones((1, 1), np.uint16), 0.0, True, 1.0, 0.0, out, 0, 0, 0, one)


def _classify_torch(
    model: SegmentationModel, x: np.ndarray, valid: np.ndarray, expected: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from pipeline.models.device import device_of, to_device

    with torch.inference_mode():
        xt = to_device(x, device_of(model)).contiguous(memory_format=torch.channels_last)
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
    bands: tuple[str, ...],
    scene: Scene,
    before: Scene | None,
    grid: Grid,
    block: Block,
    halo: int,
    masks: Masks = (),
) -> Tile:
    """Read one block's tile (the block with its halo, reflect-padded at the grid's edges).

    With ``before``, its bands come first. Each scene is read straight into the middle of
    the tile's buffer, whose margins are then mirrored in place. ``masks`` pairs each scene
    with its :class:`~pipeline.masking.MaskPlan`: the union of their masks (cloud before
    shadow) is made invalid, and zero like no data, before the margins are mirrored, so that a
    tile all cloud is never run through the model. Returns ``(data, valid, read, pad, mask)``,
    ``mask`` over the read window (None when unmasked).
    """
    read, pad = tile_window(grid, block, halo)
    n = len(bands)
    first = n if before is not None else 0
    data, valid = tile_buffers(first + n, int(read.height), int(read.width), pad)
    read_window_into(scene, bands, grid, read, data, valid, (first, pad.top, pad.left))
    inner = window_of(valid, read, pad)  # a view into the tile's buffer
    if before is not None:
        valid_after = inner.copy()
        read_window_into(before, bands, grid, read, data, valid, (0, pad.top, pad.left))
        inner &= valid_after
    mask = combined_mask(masks, grid, read) if masks else None
    if mask is not None:
        mask[~inner] = 0  # no data stays no data
        masked = mask != 0
        inner &= ~masked
        # Masked pixels reach the model as no data does, as zeros: a cloud's reflectance
        # must not leak into its neighbours' context.
        window_of(data, read, pad)[:, masked] = 0.0
    reflect_borders(data, valid, pad)
    return data, valid, read, pad, mask


def process_blocks(
    model: Model,
    scene: Scene,
    before: Scene | None,
    grid: Grid,
    group: tuple[Block, ...],
    halo: int,
    masks: Masks = (),
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read, classify (in one batch per tile shape) and crop blocks; (classes, confidence) each."""
    results = process_tiles(model, scene, before, grid, group, halo, masks=masks)
    return [(c, f) for c, f, _ in results]


def process_tiles(
    model: Model,
    scene: Scene,
    before: Scene | None,
    grid: Grid,
    group: tuple[Block, ...],
    halo: int,
    batch_size: int | None = None,
    masks: Masks = (),
) -> list[TileResult]:
    """As :func:`process_blocks`, with each tile's classes over its whole read window too.

    :func:`read_tiles` then :func:`classify_tiles`, in one process.
    """
    tiles = read_tiles(model.bands, scene, before, grid, group, halo, masks)
    return classify_tiles(model, group, tiles, batch_size)


def read_tiles(
    bands: tuple[str, ...],
    scene: Scene,
    before: Scene | None,
    grid: Grid,
    group: tuple[Block, ...],
    halo: int,
    masks: Masks = (),
) -> list[Tile]:
    """Each block's tile of ``group``, read and masked (see :func:`read_tile`)."""
    return [read_tile(bands, scene, before, grid, b, halo, masks) for b in group]


def classify_tiles(
    model: Model, group: tuple[Block, ...], tiles: list[Tile], batch_size: int | None = None
) -> list[TileResult]:
    """Classify the read ``tiles`` of ``group``'s blocks and crop each block out of its tile.

    Returns each block's (classes, confidence) and its tile's classes over the whole read
    window (the block and the halo the tile saw on the grid), which ``seams.tif`` compares
    with the neighbouring blocks' own classes. Tiles of one shape go through the network
    ``batch_size`` at a time (all at once when None). Masked pixels (see :func:`read_tile`)
    hold their mask value in the classes and :data:`NODATA` in the confidence.
    """
    empty = np.empty(0)
    results: list[TileResult] = [(empty, empty, empty)] * len(group)
    for members in _by_shape([t[0].shape for t in tiles], batch_size or len(group)):
        data = _batch([tiles[i][0] for i in members])
        valid = _batch([tiles[i][1] for i in members])
        classes, confidence = predict_batch(model, data, valid)
        for k, i in enumerate(members):
            _, _, read, pad, mask = tiles[i]
            window = window_of(classes[k], read, pad)
            if mask is not None:
                np.copyto(window, mask, where=mask != 0)
            results[i] = (
                crop_block(classes[k], read, pad, group[i]),
                crop_block(confidence[k], read, pad, group[i]),
                window,
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
    masks: Masks = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Read, classify and crop one block; return its (classes, confidence) arrays."""
    return process_blocks(model, scene, before, grid, (block,), halo, masks)[0]


#: Width (grid pixels) of the swaths :func:`sweep` goes down. A row of 768 tiles three wide,
#: with halos, touches 18 of a 6-band file's 512² blocks, 56 MB decompressed: that fits in the
#: 64 MB block cache (:data:`pipeline.reading.GDAL_CACHE_MB`), so the next row of tiles finds
#: the blocks it shares with this one there (the widths compared: ``BENCHMARKS.md``).
SWATH_PX = 2304


def swath_columns(tile_size: int) -> int:
    """Blocks across one swath of :func:`sweep`: :data:`SWATH_PX` wide, at least one block."""
    return max(1, SWATH_PX // tile_size)


def sweep(tiles: list[Block], columns: int) -> list[Block]:
    """Blocks in reading order: swaths ``columns`` blocks wide, each from top to bottom.

    Swaths go left to right, and each row of blocks in a swath left to right. A process that
    reads tiles in this order finds the file blocks a tile shares with its neighbours, left
    and above, still in its block cache (see :data:`SWATH_PX`).
    """
    cols = sorted({b.col_off for b in tiles})
    swath = {c: i // max(columns, 1) for i, c in enumerate(cols)}
    return sorted(tiles, key=lambda b: (swath[b.col_off], b.row_off, b.col_off))


def consecutive_batches(order: list[Block], size: int) -> list[tuple[Block, ...]]:
    """Neighbours in ``order`` of equal shape, in batches of at most ``size`` (one pass each)."""
    out: list[tuple[Block, ...]] = []
    current: list[Block] = []
    for b in order:
        if current and (
            len(current) == size or (b.height, b.width) != (current[0].height, current[0].width)
        ):
            out.append(tuple(current))
            current = []
        current.append(b)
    if current:
        out.append(tuple(current))
    return out


def tile_pixels(group: tuple[Block, ...], halo: int) -> int:
    """Pixels the forward passes of ``group`` take in (halos included): a task's cost."""
    return sum((b.height + 2 * halo) * (b.width + 2 * halo) for b in group)


def classification_tasks(
    tiles: list[Block], tile_size: int, batch_size: int
) -> list[tuple[Block, ...]]:
    """The model stage's tasks in reading order: :func:`sweep`, :func:`consecutive_batches`."""
    return consecutive_batches(sweep(tiles, swath_columns(tile_size)), batch_size)


Task = TypeVar("Task")


class Dispatcher(Generic[Task]):
    """Hands out tasks so that each worker goes through a stretch of them in order.

    The tasks (in :func:`sweep` order) are cut into one stretch per worker, of equal cost. A
    worker takes the next task of its own stretch; once through, it takes the back half of the
    stretch with the most cost left, whose worker keeps the front half it is heading into.
    Each worker so reads neighbouring tiles one after another (see :func:`sweep`), and all
    finish within about one task of each other however their speeds differ. A worker not
    named at the start begins by taking a half.
    """

    def __init__(
        self, tasks: Sequence[Task], workers: Sequence[str], cost: Callable[[Task], float]
    ) -> None:
        self._cost = cost
        names = list(workers) or [""]
        self._left: dict[str, deque[Task]] = {w: deque() for w in names}
        total = sum(cost(t) for t in tasks)
        spent = 0.0
        for t in tasks:
            # A task belongs to the stretch its middle falls in.
            k = int((spent + cost(t) / 2) * len(names) / total) if total > 0 else 0
            self._left[names[min(k, len(names) - 1)]].append(t)
            spent += cost(t)

    def __len__(self) -> int:
        """Tasks not handed out yet."""
        return sum(len(q) for q in self._left.values())

    def next(self, worker: str) -> Task | None:
        """The task ``worker`` runs next, or None once every task has been handed out."""
        own = self._left.setdefault(worker, deque())
        if not own:
            self._take_half(own)
        return own.popleft() if own else None

    def _take_half(self, own: deque[Task]) -> None:
        """Move the back half (by cost) of the costliest stretch left into ``own``."""
        stretch = max(self._left.values(), key=lambda q: sum(self._cost(t) for t in q))
        if not stretch:
            return
        costs = [self._cost(t) for t in stretch]
        half, before, cut = sum(costs) / 2, 0.0, len(costs) - 1
        for i in range(1, len(costs)):
            before += costs[i - 1]
            if before >= half:
                cut = i
                break
        if len(costs) == 1:
            cut = 0
        for _ in range(len(costs) - cut):
            own.appendleft(stretch.pop())


def _by_shape(shapes: list[tuple[int, ...]], size: int) -> list[list[int]]:
    """Indices of equal ``shapes`` in groups of at most ``size``, in order of first appearance."""
    same: dict[tuple[int, ...], list[int]] = {}
    for i, shape in enumerate(shapes):
        same.setdefault(shape, []).append(i)
    return [m[k : k + size] for m in same.values() for k in range(0, len(m), size)]
