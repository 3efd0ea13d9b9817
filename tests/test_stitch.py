from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from rasterio.crs import CRS

from pipeline.grid import Block, Grid, Padding, blocks, tile_window
from pipeline.inference import NODATA, predict_tile
from pipeline.models.base import SegmentationModel
from pipeline.stitch import crop_block, pad_tile, reflect_borders
from tests.data import ORIGIN, UTM18

RADIUS = 2  # the mean filter below is 5x5


class MeanFilter(SegmentationModel):
    """Two classes from a 5x5 mean: logits [-m, m] with m = mean - 0.5 (needs 2 px context)."""

    bands = ("red",)
    num_classes = 2
    model_id = "mean-5x5"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        padded = F.pad(x, (RADIUS,) * 4, mode="replicate")
        ones = torch.ones(1, 1, 2 * RADIUS + 1, 2 * RADIUS + 1, dtype=x.dtype)
        m = F.conv2d(padded, ones) / (2 * RADIUS + 1) ** 2 - 0.5
        return torch.cat([-m, m], dim=1)


def _grid(height: int, width: int) -> Grid:
    x0, y0 = ORIGIN
    return Grid(CRS.from_string(UTM18).to_wkt(), (10.0, 0.0, x0, 0.0, -10.0, y0), width, height)


def _raster(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    # Odd multiples of 1/128: sums of 25 of them are exact in float32 and never make m == 0,
    # so the block-wise and whole-raster passes can be compared for exact equality.
    rng = np.random.default_rng(seed)
    data = ((2 * rng.integers(0, 64, size=(1, height, width)) + 1) / 128).astype(np.float32)
    valid = np.ones((height, width), bool)
    valid[height // 3 : height // 3 + 4, width // 2 : width // 2 + 3] = False
    return data, valid


def _whole_pass(
    model: SegmentationModel, data: np.ndarray, valid: np.ndarray, pad: int
) -> tuple[np.ndarray, np.ndarray]:
    padded = np.pad(data, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    padded_valid = np.pad(valid, pad, mode="reflect")
    classes, confidence = predict_tile(model, padded, padded_valid)
    h, w = valid.shape
    return classes[pad : pad + h, pad : pad + w], confidence[pad : pad + h, pad : pad + w]


def _blockwise(
    model: SegmentationModel, data: np.ndarray, valid: np.ndarray, size: int, halo: int
) -> tuple[np.ndarray, np.ndarray]:
    h, w = valid.shape
    grid = _grid(h, w)
    classes = np.full((h, w), 77, np.uint8)
    confidence = np.full((h, w), 77, np.uint8)
    written = np.zeros((h, w), np.int64)
    for block in blocks(grid, size):
        read, pad = tile_window(grid, block, halo)
        r0, c0 = int(read.row_off), int(read.col_off)
        r1, c1 = r0 + int(read.height), c0 + int(read.width)
        tile, tile_valid = pad_tile(data[:, r0:r1, c0:c1], valid[r0:r1, c0:c1], pad)
        assert tile.shape[1:] == (block.height + 2 * halo, block.width + 2 * halo)
        cls, conf = predict_tile(model, tile, tile_valid)
        rows = slice(block.row_off, block.row_off + block.height)
        cols = slice(block.col_off, block.col_off + block.width)
        classes[rows, cols] = crop_block(cls, read, pad, block)
        confidence[rows, cols] = crop_block(conf, read, pad, block)
        written[rows, cols] += 1
    assert (written == 1).all()
    return classes, confidence


# --- pad_tile / crop_block ------------------------------------------------------------------


def test_no_padding_returns_input() -> None:
    data, valid = _raster(5, 6)
    out, out_valid = pad_tile(data, valid, Padding())
    np.testing.assert_array_equal(out, data)
    np.testing.assert_array_equal(out_valid, valid)


@pytest.mark.parametrize("size", [7, 16, 64])
@pytest.mark.parametrize("halo", [0, 1, 3, 9])
def test_pad_then_crop_round_trip(size: int, halo: int) -> None:
    h, w = 50, 61
    rng = np.random.default_rng(size + halo)
    data = rng.normal(size=(3, h, w)).astype(np.float32)
    valid = rng.random((h, w)) > 0.2
    grid = _grid(h, w)
    for block in blocks(grid, size):
        read, pad = tile_window(grid, block, halo)
        rows = slice(int(read.row_off), int(read.row_off + read.height))
        cols = slice(int(read.col_off), int(read.col_off + read.width))
        tile, tile_valid = pad_tile(data[:, rows, cols], valid[rows, cols], pad)
        assert tile.shape == (3, block.height + 2 * halo, block.width + 2 * halo)
        assert tile_valid.shape == tile.shape[1:]
        assert tile_valid.dtype == bool
        brows = slice(block.row_off, block.row_off + block.height)
        bcols = slice(block.col_off, block.col_off + block.width)
        np.testing.assert_array_equal(crop_block(tile, read, pad, block), data[:, brows, bcols])
        np.testing.assert_array_equal(crop_block(tile_valid, read, pad, block), valid[brows, bcols])


def test_reflection_at_edges_and_corners() -> None:
    data = np.arange(2 * 5 * 6, dtype=np.float32).reshape(2, 5, 6)
    valid = (np.arange(30).reshape(5, 6) % 3) > 0
    pad = Padding(top=2, bottom=3, left=1, right=4)
    out, out_valid = pad_tile(data, valid, pad)
    assert out.shape == (2, 10, 11)
    # Reflection about the edge pixel, which is not repeated.
    ri = [2, 1, 0, 1, 2, 3, 4, 3, 2, 1]
    ci = [1, 0, 1, 2, 3, 4, 5, 4, 3, 2, 1]
    np.testing.assert_array_equal(out, data[:, ri][:, :, ci])
    np.testing.assert_array_equal(out_valid, valid[ri][:, ci])
    # Corners, edges and centre by hand.
    assert out[1, 0, 0] == data[1, 2, 1]
    assert out[0, 0, -1] == data[0, 2, 1]
    assert out[0, -1, 0] == data[0, 1, 1]
    assert out[1, -1, -1] == data[1, 1, 1]
    np.testing.assert_array_equal(out[:, 2:7, 1:7], data)
    # And numpy's own reflect, computed here.
    widths = ((0, 0), (2, 3), (1, 4))
    np.testing.assert_array_equal(out, np.pad(data, widths, mode="reflect"))
    np.testing.assert_array_equal(out_valid, np.pad(valid, widths[1:], mode="reflect"))


def test_reflection_wider_than_the_tile() -> None:
    data = np.array([[[1.0, 2.0]]], np.float32).repeat(3, axis=1)  # 3 x 2
    out, _ = pad_tile(data, np.ones((3, 2), bool), Padding(0, 0, 3, 3))
    np.testing.assert_array_equal(out[0, 0], [2, 1, 2, 1, 2, 1, 2, 1])


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (6, 1)])
def test_one_pixel_tiles_pad_without_error(shape: tuple[int, int]) -> None:
    h, w = shape
    data = np.arange(2 * h * w, dtype=np.float32).reshape(2, h, w) + 1
    valid = np.ones(shape, bool)
    pad = Padding(2, 1, 3, 2)
    out, out_valid = pad_tile(data, valid, pad)
    assert out.shape == (2, h + 3, w + 5)
    assert out_valid.shape == (h + 3, w + 5) and out_valid.all()
    np.testing.assert_array_equal(out[:, 2 : 2 + h, 3 : 3 + w], data)
    # Along a 1-pixel axis there is nothing to reflect: the pixel repeats.
    if w == 1:
        np.testing.assert_array_equal(out[:, 2 : 2 + h], np.repeat(data, w + 5, axis=2))
    if h == 1:
        np.testing.assert_array_equal(out[:, :, 3 : 3 + w], np.repeat(data, h + 3, axis=1))
    block = Block(0, 0, h, w)
    read = block.window
    np.testing.assert_array_equal(crop_block(out, read, pad, block), data)


@pytest.mark.parametrize("shape", [(1, 6), (6, 1)])
def test_one_pixel_wide_tile_reflects_along_its_long_axis(shape: tuple[int, int]) -> None:
    h, w = shape
    data = np.arange(h * w, dtype=np.float32).reshape(1, h, w)
    out, _ = pad_tile(data, np.ones(shape, bool), Padding(2, 2, 2, 2))
    line = out[0, 2, :] if h == 1 else out[0, :, 2]
    np.testing.assert_array_equal(line, [2, 1, 0, 1, 2, 3, 4, 5, 4, 3])


@pytest.mark.parametrize(
    ("h", "w", "pad"),
    [
        (40, 50, Padding(0, 0, 0, 0)),
        (40, 50, Padding(8, 0, 0, 0)),
        (40, 50, Padding(0, 8, 0, 0)),
        (40, 50, Padding(0, 0, 8, 0)),
        (40, 50, Padding(0, 0, 0, 8)),
        (40, 50, Padding(8, 3, 5, 8)),
        (9, 50, Padding(8, 8, 8, 8)),  # as wide as reflection allows: one pass each side
        (3, 2, Padding(2, 3, 1, 3)),  # wider than the read: reflected more than once
        (1, 6, Padding(2, 1, 3, 2)),  # a 1-pixel axis repeats
        (6, 1, Padding(2, 1, 3, 2)),
    ],
)
def test_reflect_borders_in_place_equals_numpys_pad(h: int, w: int, pad: Padding) -> None:
    rng = np.random.default_rng(h * w)
    data = rng.normal(size=(3, h, w)).astype(np.float32)
    valid = rng.random((h, w)) > 0.3
    # numpy's own padding, rows then columns; a 1-pixel axis can only repeat its pixel.
    expected, expected_valid = data, valid
    for axis, widths in ((1, (pad.top, pad.bottom)), (2, (pad.left, pad.right))):
        mode = "reflect" if data.shape[axis] > 1 else "edge"
        all_widths = [(0, 0)] * 3
        all_widths[axis] = widths
        expected = np.pad(expected, all_widths, mode=mode)
        expected_valid = np.pad(expected_valid, all_widths[1:], mode=mode)
    np.testing.assert_array_equal(pad_tile(data, valid, pad)[0], expected)
    # The read in the middle of a buffer whose margins hold garbage.
    shape = (h + pad.top + pad.bottom, w + pad.left + pad.right)
    buffer = np.full((3, *shape), np.nan, np.float32)
    buffer_valid = rng.random(shape) > 0.5
    buffer[:, pad.top : pad.top + h, pad.left : pad.left + w] = data
    buffer_valid[pad.top : pad.top + h, pad.left : pad.left + w] = valid
    reflect_borders(buffer, buffer_valid, pad)
    np.testing.assert_array_equal(buffer, expected)
    np.testing.assert_array_equal(buffer_valid, expected_valid)


def test_crop_block_uses_read_offsets() -> None:
    grid = _grid(30, 40)
    block = Block(row_off=10, col_off=20, height=8, width=12)
    read, pad = tile_window(grid, block, halo=4)
    assert pad == Padding()
    tile = np.arange(int(read.height) * int(read.width)).reshape(int(read.height), int(read.width))
    got = crop_block(tile, read, pad, block)
    np.testing.assert_array_equal(got, tile[4:12, 4:16])


# --- block-wise prediction equals one whole-raster pass -------------------------------------


def test_mean_filter_model_is_spatial() -> None:
    # Sanity check of the test model: one bright pixel changes its neighbours' scores.
    x = torch.full((1, 1, 9, 9), 0.25)
    y0 = MeanFilter()(x)
    x[0, 0, 4, 4] = 1.0
    y1 = MeanFilter()(x)
    changed = (y0 != y1).any(dim=1)[0]
    assert changed[2:7, 2:7].all() and changed.sum() == 25


@pytest.mark.parametrize("size", [7, 16, 64])
@pytest.mark.parametrize("halo", [2, 3, 5])
def test_blockwise_equals_whole_raster(size: int, halo: int) -> None:
    model = MeanFilter().eval()
    data, valid = _raster(50, 61, seed=size)
    expected = _whole_pass(model, data, valid, RADIUS)
    got = _blockwise(model, data, valid, size, halo)
    # Both classes occur, so the comparison means something.
    assert set(np.unique(expected[0])) == {0, 1, NODATA}
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize("size", [7, 16])
def test_blockwise_without_halo_differs_at_block_seams(size: int) -> None:
    model = MeanFilter().eval()
    h, w = 50, 61
    data, valid = _raster(h, w, seed=size)
    expected = _whole_pass(model, data, valid, RADIUS)
    got = _blockwise(model, data, valid, size, halo=0)
    diff = got[1] != expected[1]
    # Differences appear inside the raster, within 2 pixels of a block seam.
    rows, cols = np.nonzero(diff[RADIUS : h - RADIUS, RADIUS : w - RADIUS])
    assert len(rows) > 0
    rows, cols = rows + RADIUS, cols + RADIUS
    near_seam = np.minimum(rows % size, size - 1 - rows % size) < RADIUS
    near_seam |= np.minimum(cols % size, size - 1 - cols % size) < RADIUS
    assert near_seam.all()
    # Away from every seam and edge, the halo makes no difference.
    r = np.arange(h)[:, None] % size
    c = np.arange(w)[None, :] % size
    inner = (r >= RADIUS) & (r < size - RADIUS) & (c >= RADIUS) & (c < size - RADIUS)
    inner[:RADIUS] = inner[h - RADIUS :] = False
    inner[:, :RADIUS] = inner[:, w - RADIUS :] = False
    assert not diff[inner].any()


@pytest.mark.parametrize("shape", [(40, 1), (1, 40)])
def test_blockwise_equals_whole_raster_on_one_pixel_wide_grid(shape: tuple[int, int]) -> None:
    model = MeanFilter().eval()
    data, _ = _raster(*shape, seed=3)
    valid = np.ones(shape, bool)
    expected = _whole_pass(model, data, valid, RADIUS)
    got = _blockwise(model, data, valid, 16, halo=2)
    np.testing.assert_array_equal(got[1], expected[1])


def _brute_seams(grid: Grid, tiles: list[Block], halo: int, final, windows, skip=()):
    """Seam mask by comparing every tile's window with every block it reaches."""
    from pipeline.stitch import disagreement

    out = np.zeros((grid.height, grid.width), dtype=np.uint8)
    for c in tiles:
        if c in skip:
            continue
        read, _ = tile_window(grid, c, halo)
        for b in tiles:
            if b == c:
                continue
            found = disagreement(windows[c], read, final[b], b)
            if found is not None:
                part, mask = found
                out[
                    part.row_off : part.row_off + part.height,
                    part.col_off : part.col_off + part.width,
                ] |= mask.astype(np.uint8)
    return out


@pytest.mark.parametrize("order", ["raster", "reversed", "shuffled"])
def test_seam_tracker_matches_brute_force_in_any_order(order: str) -> None:
    from pipeline.stitch import SeamTracker, window_of

    rng = np.random.default_rng(3)
    grid = Grid(UTM18, (10.0, 0.0, ORIGIN[0], 0.0, -10.0, ORIGIN[1]), width=45, height=38)
    halo = 4
    tiles = blocks(grid, 12)
    truth = rng.integers(0, 3, (grid.height, grid.width)).astype(np.uint8)
    truth[:3, :10] = NODATA
    final, windows = {}, {}
    for b in tiles:
        read, pad = tile_window(grid, b, halo)
        # A tile mostly agrees with the truth, except for noise that depends on the tile.
        tile = np.pad(truth, halo, mode="reflect")[
            b.row_off + halo - halo : b.row_off + b.height + 2 * halo,
            b.col_off + halo - halo : b.col_off + b.width + 2 * halo,
        ].copy()
        flip = rng.random(tile.shape) < 0.05
        tile[flip] = (tile[flip] + 1) % 3
        windows[b] = window_of(tile, read, pad)
        final[b] = crop_block(tile, read, pad, b)
    arrival = {
        "raster": list(tiles),
        "reversed": list(reversed(tiles)),
        "shuffled": [tiles[i] for i in rng.permutation(len(tiles))],
    }[order]
    resumed = {arrival[5]}  # a block from the cache: no tile of its own to compare
    tracker = SeamTracker(grid, tiles, halo)
    got = np.full((grid.height, grid.width), 99, dtype=np.uint8)
    emitted = []
    for b in arrival:
        for done, mask in tracker.add(b, final[b], None if b in resumed else windows[b]):
            emitted.append(done)
            got[
                done.row_off : done.row_off + done.height, done.col_off : done.col_off + done.width
            ] = mask
    assert sorted(emitted) == sorted(tiles)  # every block once, when it is complete
    want = _brute_seams(grid, tiles, halo, final, windows, skip=resumed)
    whole = np.zeros_like(truth)
    for b in tiles:
        whole[b.row_off : b.row_off + b.height, b.col_off : b.col_off + b.width] = final[b]
    want[whole == NODATA] = NODATA
    np.testing.assert_array_equal(got, want)
    assert (want == 1).sum() > 20  # the noise makes seams, only within a halo of block edges
    rows, cols = np.nonzero(want == 1)
    near = np.array(
        [
            min(r % 12, 11 - r % 12) < halo or min(c % 12, 11 - c % 12) < halo
            for r, c in zip(rows, cols, strict=True)
        ]
    )
    assert near.all()
