import dataclasses

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from pipeline.grid import Block, Grid, Padding, blocks, tile_window
from tests.data import ORIGIN, UTM18

WKT = CRS.from_string(UTM18).to_wkt()
X0, Y0 = ORIGIN


def _grid(width: int, height: int, res: float = 10.0) -> Grid:
    return Grid(WKT, (res, 0.0, X0, 0.0, -res, Y0), width, height)


# --- blocks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "width, height, size",
    [
        (12, 8, 4),  # divides both
        (12, 8, 5),  # divides neither
        (12, 8, 3),  # divides the width only
        (10, 7, 7),  # divides the height only
        (10, 7, 1),
        (10, 7, 10),
        (10, 7, 64),  # larger than the grid
        (1, 1, 16),
    ],
)
def test_blocks_cover_grid_exactly_once(width: int, height: int, size: int):
    grid = _grid(width, height)
    hits = np.zeros((height, width), dtype=int)
    result = blocks(grid, size)
    for b in result:
        assert 0 < b.height <= size and 0 < b.width <= size
        assert b.row_off >= 0 and b.col_off >= 0
        assert b.row_off + b.height <= height and b.col_off + b.width <= width
        hits[b.row_off : b.row_off + b.height, b.col_off : b.col_off + b.width] += 1
    assert (hits == 1).all()
    n_rows = -(-height // size)
    n_cols = -(-width // size)
    assert len(result) == n_rows * n_cols
    assert len(set(result)) == len(result)


def test_blocks_are_full_size_except_at_right_and_bottom():
    result = blocks(_grid(width=10, height=7), 4)
    assert result == [
        Block(0, 0, 4, 4), Block(0, 4, 4, 4), Block(0, 8, 4, 2),
        Block(4, 0, 3, 4), Block(4, 4, 3, 4), Block(4, 8, 3, 2),
    ]  # fmt: skip


def test_grid_smaller_than_one_block():
    assert blocks(_grid(width=7, height=5), 16) == [Block(0, 0, 5, 7)]


@pytest.mark.parametrize("size", [0, -4])
def test_blocks_rejects_non_positive_size(size: int):
    with pytest.raises(ValueError, match="positive"):
        blocks(_grid(4, 4), size)


# --- tile_window ----------------------------------------------------------------------------

GRID = _grid(width=80, height=100)


def _check_tile(grid: Grid, block: Block, halo: int, window: Window, pad: Padding) -> None:
    # The read window stays inside the grid and, with the padding, is the block plus halo.
    assert window.col_off >= 0 and window.row_off >= 0
    assert window.col_off + window.width <= grid.width
    assert window.row_off + window.height <= grid.height
    assert window.height + pad.top + pad.bottom == block.height + 2 * halo
    assert window.width + pad.left + pad.right == block.width + 2 * halo
    assert window.row_off - pad.top == block.row_off - halo
    assert window.col_off - pad.left == block.col_off - halo
    assert min(pad.top, pad.bottom, pad.left, pad.right) >= 0


@pytest.mark.parametrize(
    "block, halo, window, pad",
    [
        # interior: nothing clipped
        (Block(32, 32, 32, 32), 8, Window(24, 24, 48, 48), Padding()),
        # top-left corner
        (Block(0, 0, 32, 32), 8, Window(0, 0, 40, 40), Padding(top=8, left=8)),
        # top edge, interior columns
        (Block(0, 32, 32, 32), 8, Window(24, 0, 48, 40), Padding(top=8)),
        # left edge, interior rows
        (Block(32, 0, 32, 32), 8, Window(0, 24, 40, 48), Padding(left=8)),
        # bottom-right corner: a partial block (rows 96..99, cols 64..79)
        (Block(96, 64, 4, 16), 8, Window(56, 88, 24, 12), Padding(bottom=8, right=8)),
        # top-right corner
        (Block(0, 64, 32, 16), 8, Window(56, 0, 24, 40), Padding(top=8, right=8)),
        # bottom-left corner
        (Block(96, 0, 4, 32), 8, Window(0, 88, 40, 12), Padding(bottom=8, left=8)),
        # halo only partly clipped: 3 of 8 context rows exist above
        (Block(3, 32, 32, 32), 8, Window(24, 0, 48, 43), Padding(top=5)),
        # no halo
        (Block(96, 64, 4, 16), 0, Window(64, 96, 16, 4), Padding()),
    ],
)
def test_tile_window(block: Block, halo: int, window: Window, pad: Padding):
    got_window, got_pad = tile_window(GRID, block, halo)
    assert got_window == window
    assert got_pad == pad
    _check_tile(GRID, block, halo, got_window, got_pad)


def test_tile_window_for_every_block_of_a_grid():
    for block in blocks(GRID, 24):
        window, pad = tile_window(GRID, block, 5)
        _check_tile(GRID, block, 5, window, pad)


def test_halo_larger_than_grid():
    grid = _grid(width=10, height=6)
    block = Block(0, 0, 6, 10)
    window, pad = tile_window(grid, block, 25)
    assert window == Window(0, 0, 10, 6)
    assert pad == Padding(top=25, bottom=25, left=25, right=25)
    _check_tile(grid, block, 25, window, pad)


def test_grid_smaller_than_one_tile():
    grid = _grid(width=7, height=5)
    (block,) = blocks(grid, 16)
    window, pad = tile_window(grid, block, 4)
    assert window == Window(0, 0, 7, 5)
    assert pad == Padding(4, 4, 4, 4)
    # The model sees block + 2 * halo on each axis.
    assert window.height + pad.top + pad.bottom == 5 + 8
    assert window.width + pad.left + pad.right == 7 + 8


def test_tile_window_rejects_negative_halo():
    with pytest.raises(ValueError, match="halo"):
        tile_window(GRID, Block(0, 0, 4, 4), -1)


# --- value objects --------------------------------------------------------------------------


def test_block_is_frozen_hashable_and_equal_by_value():
    a, b = Block(4, 8, 16, 32), Block(4, 8, 16, 32)
    assert a == b and a is not b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert {a: 1}[b] == 1
    assert a != Block(4, 8, 16, 31)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.row_off = 0  # type: ignore[misc]
    assert sorted([Block(4, 0, 1, 1), Block(0, 9, 1, 1), Block(0, 2, 1, 1)]) == [
        Block(0, 2, 1, 1), Block(0, 9, 1, 1), Block(4, 0, 1, 1),
    ]  # fmt: skip


def test_block_window_and_key():
    b = Block(row_off=1024, col_off=2048, height=512, width=1000)
    assert b.window == Window(col_off=2048, row_off=1024, width=1000, height=512)
    assert b.key == "r1024-c2048-512x1000"
    assert len({blk.key for blk in blocks(_grid(50, 30), 7)}) == len(blocks(_grid(50, 30), 7))


def test_grid_is_frozen_hashable_and_equal_by_value():
    a, b = _grid(11, 13), _grid(11, 13)
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != _grid(11, 14)
    assert a != _grid(11, 13, res=20.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.width = 3  # type: ignore[misc]


def test_padding_is_frozen_and_hashable():
    assert Padding(1, 2, 3, 4) == Padding(top=1, bottom=2, left=3, right=4)
    assert len({Padding(), Padding(0, 0, 0, 0)}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        Padding().top = 1  # type: ignore[misc]


# --- Grid geometry --------------------------------------------------------------------------


def test_grid_bounds_res_affine():
    grid = _grid(width=11, height=13)
    assert grid.affine == Affine(10, 0, X0, 0, -10, Y0)
    assert grid.res == (10.0, 10.0)
    assert grid.bounds == (X0, Y0 - 130, X0 + 110, Y0)


def test_grid_bounds_of_south_up_grid():
    grid = Grid(WKT, (20.0, 0.0, X0, 0.0, 30.0, Y0), 4, 5)
    assert grid.res == (20.0, 30.0)
    assert grid.bounds == (X0, Y0, X0 + 80, Y0 + 150)


def test_window_transform():
    grid = _grid(width=11, height=13)
    t = grid.window_transform(Window(col_off=3, row_off=2, width=4, height=4))
    assert t == Affine(10, 0, X0 + 30, 0, -10, Y0 - 20)
    # The window's top-left pixel has the same corner in both transforms.
    assert t @ (0, 0) == grid.affine @ (3, 2)
    assert grid.window_transform(Window(0, 0, 11, 13)) == grid.affine


def test_pixel_size_m():
    from rasterio.crs import CRS

    from pipeline.grid import pixel_size_m

    utm = Grid(CRS.from_epsg(32618).to_wkt(), (10.0, 0.0, 435730.0, 0.0, -10.0, 4179460.0), 8, 6)
    assert pixel_size_m(utm) == (10.0, 10.0)
    # 0.001° pixels: a degree of longitude is 111.32 km at the equator, 55.80 km at 60° N
    # (WGS84 ellipsoid), a degree of latitude about 110.6-111.4 km.
    wgs84 = CRS.from_epsg(4326).to_wkt()
    at_equator = Grid(wgs84, (0.001, 0.0, 10.0, 0.0, -0.001, 0.05), 100, 100)
    assert pixel_size_m(at_equator)[0] == pytest.approx(111.32, rel=1e-3)
    at_60 = Grid(wgs84, (0.001, 0.0, 10.0, 0.0, -0.001, 60.05), 100, 100)
    assert pixel_size_m(at_60)[0] == pytest.approx(55.80, rel=1e-3)
