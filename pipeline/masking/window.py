"""A scene's mask over any window of the run's grid, the same whichever block asks for it.

The per-pixel methods (quality band, spectral test) read the window grown by the plan's
buffer. The networks are run on one fixed tiling of the whole grid instead, because their
answer for a pixel depends on the whole tile it is seen in (their encoder's
squeeze-and-excitation blocks pool over the tile): the grid's network cells (``factor`` ×
``factor`` pixels) are covered by tiles of :data:`TILE` cells, the size the networks were
trained on, overlapping by :data:`OVERLAP` cells (:func:`tile_starts`); a cell's class is the
most probable one after the probabilities of the tiles over it are blended with weights that
fall off across their overlaps, as ``ukis-csmask`` itself blends. A pixel's class so depends
on the grid alone, never on the window asking for it; each process keeps the tiles it
computed last (:data:`TILES_KEPT`), since neighbouring blocks share them. Cloud and shadow
are then grown by the plan's buffer and the window cut out.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from rasterio.windows import Window
from scipy import ndimage

from pipeline.catalog import Scene
from pipeline.grid import Block, Grid, tile_window
from pipeline.masking import network
from pipeline.masking.plan import CLOUD, SHADOW, MaskPlan
from pipeline.masking.quality import quality_mask
from pipeline.masking.spectral import spectral_mask
from pipeline.reading import read_window_into
from pipeline.stitch import reflect_borders, tile_buffers

#: Tiles a process keeps (0.45 MB each): a swath of blocks and the next.
TILES_KEPT = 64

_tiles: OrderedDict[tuple[MaskPlan, Scene, Grid, int, int], tuple[np.ndarray, np.ndarray]] = (
    OrderedDict()
)
_tiles_lock = threading.Lock()


def combined_mask(
    plans: Sequence[tuple[MaskPlan, Scene]], grid: Grid, window: Window
) -> np.ndarray | None:
    """The union of several scenes' masks over ``window`` (cloud over shadow); None if unmasked."""
    out = None
    for plan, scene in plans:
        if plan.method == "none":
            continue
        mask = mask_window(plan, scene, grid, window)
        out = mask if out is None else np.maximum(out, mask)  # CLOUD > SHADOW > clear
    return out


def mask_window(plan: MaskPlan, scene: Scene, grid: Grid, window: Window) -> np.ndarray:
    """uint8 ``[h, w]`` over ``window``: :data:`CLOUD`, :data:`SHADOW` or 0 (clear or no data)."""
    h, w = int(window.height), int(window.width)
    if plan.method == "none":
        return np.zeros((h, w), dtype=np.uint8)
    area = _grown(window, plan.buffer_px, grid)
    if plan.method == "network":
        mask = _network_area(plan, scene, grid, area)
    else:
        data, valid = _read(plan, scene, grid, area)
        if plan.method == "quality":
            mask = quality_mask(plan.bands[0], data[0])
        else:
            mask = spectral_mask(data)
        mask[~valid] = 0
    mask = _grow(mask, plan.buffer_px)
    top, left = int(window.row_off) - area.row_off, int(window.col_off) - area.col_off
    return mask[top : top + h, left : left + w]


def _grown(window: Window, by: int, grid: Grid) -> Block:
    """``window`` grown by ``by`` pixels on each side, within the grid."""
    top, left = max(int(window.row_off) - by, 0), max(int(window.col_off) - by, 0)
    bottom = min(int(window.row_off + window.height) + by, grid.height)
    right = min(int(window.col_off + window.width) + by, grid.width)
    return Block(top, left, bottom - top, right - left)


def _read(plan: MaskPlan, scene: Scene, grid: Grid, area: Block) -> tuple[np.ndarray, np.ndarray]:
    """The plan's bands over ``area`` (which may reach beyond the grid: mirrored there)."""
    read, pad = tile_window(grid, area, 0)
    data, valid = tile_buffers(len(plan.bands), int(read.height), int(read.width), pad)
    read_window_into(scene, plan.bands, grid, read, data, valid, (0, pad.top, pad.left))
    reflect_borders(data, valid, pad)
    return data, valid


def _network_area(plan: MaskPlan, scene: Scene, grid: Grid, area: Block) -> np.ndarray:
    """The network's mask over ``area`` (inside the grid), blended from the tiles over it."""
    f = plan.factor
    r0, c0 = area.row_off // f, area.col_off // f  # the cells covering the area
    r1 = -(-(area.row_off + area.height) // f)
    c1 = -(-(area.col_off + area.width) // f)
    scores = np.zeros((3, r1 - r0, c1 - c0), dtype=np.float32)
    valid = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    n_rows, n_cols = -(-grid.height // f), -(-grid.width // f)
    for top in _starts_over(r0, r1, n_rows):
        for left in _starts_over(c0, c1, n_cols):
            tile_scores, tile_valid = _tile(plan, scene, grid, (top, left), (n_rows, n_cols))
            a, b = max(top, r0), min(top + TILE, r1)
            c, d = max(left, c0), min(left + TILE, c1)
            here = (slice(a - r0, b - r0), slice(c - c0, d - c0))
            there = (slice(a - top, b - top), slice(c - left, d - left))
            scores[(slice(None), *here)] += tile_scores[(slice(None), *there)]
            valid[here] = tile_valid[there]
    classes = np.array([0, CLOUD, SHADOW], dtype=np.uint8)[np.argmax(scores, axis=0)]
    classes[~valid] = 0
    mask = np.repeat(np.repeat(classes, f, axis=0), f, axis=1)
    top, left = area.row_off - r0 * f, area.col_off - c0 * f
    return mask[top : top + area.height, left : left + area.width]


#: Cells on a side of a network tile, and of the overlap of neighbouring tiles.
TILE = network.TILE_CELLS
OVERLAP = network.OVERLAP_CELLS


@functools.cache
def tile_starts(cells: int) -> tuple[int, ...]:
    """First cells of the network tiles along an axis of ``cells`` cells.

    Tiles step by ``TILE - OVERLAP`` and lie inside the grid, the last one ending at its
    edge; an axis shorter than a tile gets one tile centred on it (mirrored beyond it).
    """
    if cells <= TILE:
        return (-((TILE - cells) // 2),)
    step = TILE - OVERLAP
    starts = list(range(0, cells - TILE, step))
    return (*starts, cells - TILE)


def _starts_over(first: int, stop: int, cells: int) -> list[int]:
    """Starts of the tiles (:func:`tile_starts`) that overlap cells ``first``..``stop`` - 1."""
    return [s for s in tile_starts(cells) if s < stop and s + TILE > first]


@functools.cache
def _ramp(start: int, cells: int) -> np.ndarray:
    """A tile's weight along one axis: 1, falling linearly to 0 across its overlaps.

    Where a tile's side is the grid's edge, nothing overlaps it and it keeps weight 1.
    """
    u = np.arange(TILE) + 0.5
    ramp = np.ones(TILE)
    if start > 0:
        ramp = np.minimum(ramp, u / OVERLAP)
    if start + TILE < cells:
        ramp = np.minimum(ramp, (TILE - u) / OVERLAP)
    return ramp.astype(np.float32)


def _tile(
    plan: MaskPlan,
    scene: Scene,
    grid: Grid,
    start: tuple[int, int],
    cells: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """The network tile at cell ``start`` (row, column) of a grid of ``cells`` cells.

    Its class probabilities weighted for blending (float16 ``[3, TILE, TILE]``), and which of
    its cells hold data. Kept for the next windows of this process (:data:`TILES_KEPT`).
    """
    key = (plan, scene, grid, *start)
    with _tiles_lock:
        if key in _tiles:
            _tiles.move_to_end(key)
            return _tiles[key]
    f = plan.factor
    side = TILE * f
    data, valid = _read(plan, scene, grid, Block(start[0] * f, start[1] * f, side, side))
    assert plan.network is not None, "a network plan names its network"
    probabilities = network.load(plan.network).probabilities(_cells(data, f))
    weights = np.outer(_ramp(start[0], cells[0]), _ramp(start[1], cells[1]))
    cell_valid = np.asarray(valid.reshape(TILE, f, TILE, f).any(axis=(1, 3)))
    entry: tuple[np.ndarray, np.ndarray] = (
        (probabilities * weights).astype(np.float16),
        cell_valid,
    )
    with _tiles_lock:
        _tiles[key] = entry
        while len(_tiles) > TILES_KEPT:
            _tiles.popitem(last=False)
    return entry


def _cells(data: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor`` × ``factor`` cell of ``data`` ``[C, H, W]`` (0 where invalid)."""
    if factor == 1:
        return data
    c, h, w = data.shape
    cells = data.reshape(c, h // factor, factor, w // factor, factor).mean(axis=(2, 4))
    return cells.astype(np.float32, copy=False)


def _grow(mask: np.ndarray, buffer_px: int) -> np.ndarray:
    """Cloud and shadow each grown by ``buffer_px`` pixels (Euclidean); cloud wins overlaps."""
    if buffer_px <= 0:
        return mask
    out = np.zeros_like(mask)
    for value in (SHADOW, CLOUD):
        hit = mask == value
        if hit.any():
            out[ndimage.distance_transform_edt(~hit) <= buffer_px] = value
    return out
