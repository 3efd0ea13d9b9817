"""The pixel grid of a run and its division into blocks and tiles.

A :class:`Grid` is the CRS, affine transform and size every output shares. A :class:`Block` is
one output window of that grid; the model sees it through a *tile*: the block grown by a halo
on each side, clipped to the grid, and padded back to full size by reflection where the grid
ends (:func:`tile_window`). Everything here is a frozen value object, so Dask task keys and
resume keys derived from them are deterministic. Nothing here opens a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyproj
from affine import Affine
from rasterio.windows import Window


@dataclass(frozen=True)
class Grid:
    """A georeferenced pixel grid: CRS (as WKT), affine transform and size in pixels."""

    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int

    @property
    def affine(self) -> Affine:
        """The grid's transform as an :class:`affine.Affine`."""
        return Affine(*self.transform)

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y) in CRS units, both positive."""
        a, _, _, _, e, _ = self.transform
        return abs(a), abs(e)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units."""
        left, top = self.affine @ (0, 0)
        right, bottom = self.affine @ (self.width, self.height)
        return min(left, right), min(bottom, top), max(left, right), max(bottom, top)

    def window_transform(self, window: Window) -> Affine:
        """Transform of the pixel at the window's top-left corner."""
        return self.affine @ Affine.translation(window.col_off, window.row_off)


@dataclass(frozen=True, order=True)
class Block:
    """One output window of a grid, in pixels: offsets then size."""

    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def window(self) -> Window:
        """The block as a rasterio window."""
        return Window(self.col_off, self.row_off, self.width, self.height)

    @property
    def key(self) -> str:
        """A short stable name, e.g. ``r1024-c2048-1024x1024``."""
        return f"r{self.row_off}-c{self.col_off}-{self.height}x{self.width}"


@dataclass(frozen=True)
class Padding:
    """Pixels added by reflection on each side of a tile, where the grid ended."""

    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0


def ground_size_m(grid: Grid) -> tuple[float, float]:
    """The grid's width and height in metres; geodesic through its centre if geographic."""
    crs = pyproj.CRS.from_wkt(grid.crs_wkt)
    left, bottom, right, top = grid.bounds
    if crs.is_geographic:
        geod = pyproj.Geod(ellps="WGS84")
        lat, lon = (bottom + top) / 2, (left + right) / 2
        width = geod.inv(left, lat, right, lat)[2]
        height = geod.inv(lon, bottom, lon, top)[2]
        return float(width), float(height)
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return (right - left) * unit, (top - bottom) * unit


def pixel_size_m(grid: Grid) -> tuple[float, float]:
    """A pixel's width and height in metres (at the grid's centre if the CRS is geographic)."""
    width_m, height_m = ground_size_m(grid)
    return width_m / grid.width, height_m / grid.height


def blocks(grid: Grid, size: int) -> list[Block]:
    """Cover the grid with blocks of ``size``×``size`` (smaller at the right and bottom edges)."""
    if size < 1:
        raise ValueError(f"block size must be positive, got {size}")
    out = []
    for r in range(math.ceil(grid.height / size)):
        for c in range(math.ceil(grid.width / size)):
            row, col = r * size, c * size
            out.append(Block(row, col, min(size, grid.height - row), min(size, grid.width - col)))
    return out


@dataclass(frozen=True)
class BBox:
    """A rectangle of a scene to run on: west, south, east, north in ``crs``.

    ``crs`` is anything pyproj reads (``EPSG:4326``, WKT); None means the scene's own CRS.
    """

    west: float
    south: float
    east: float
    north: float
    crs: str | None = None

    def __str__(self) -> str:
        text = ",".join(f"{v:.10g}" for v in (self.west, self.south, self.east, self.north))
        return f"{text} ({self.crs})" if self.crs else text


def bbox_block(grid: Grid, bbox: BBox) -> Block | None:
    """The block of ``grid`` that ``bbox`` covers, or None when it misses the grid.

    ``bbox`` is taken into the grid's CRS (its edges densified, so the result holds the whole
    rectangle), its edges moved outwards to whole pixels, and clipped to the grid.
    """
    west, south, east, north = bbox.west, bbox.south, bbox.east, bbox.north
    if bbox.crs is not None:
        source = pyproj.CRS.from_user_input(bbox.crs)
        target = pyproj.CRS.from_wkt(grid.crs_wkt)
        if source != target:
            to_grid = pyproj.Transformer.from_crs(source, target, always_xy=True)
            west, south, east, north = to_grid.transform_bounds(
                west, south, east, north, densify_pts=21
            )
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        return None  # outside the area the grid's CRS can express
    inverse = ~grid.affine
    cols, rows = zip(*(inverse @ xy for xy in ((west, north), (east, south))), strict=True)
    # A bbox edge on a pixel edge (to rounding) takes no pixel beyond it.
    c0 = max(math.floor(min(cols) + 1e-6), 0)
    c1 = min(math.ceil(max(cols) - 1e-6), grid.width)
    r0 = max(math.floor(min(rows) + 1e-6), 0)
    r1 = min(math.ceil(max(rows) - 1e-6), grid.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return Block(r0, c0, r1 - r0, c1 - c0)


def sub_grid(grid: Grid, block: Block) -> Grid:
    """The part of ``grid`` under ``block``, as a grid of its own."""
    t = grid.window_transform(block.window)
    return Grid(grid.crs_wkt, (t.a, t.b, t.c, t.d, t.e, t.f), block.width, block.height)


def tile_window(grid: Grid, block: Block, halo: int) -> tuple[Window, Padding]:
    """Return the window to read for ``block`` with ``halo``, and the padding that completes it.

    The read window is the block grown by ``halo`` and clipped to the grid; the padding is what
    the clipping removed, to be filled by reflection so the model always sees the halo.
    """
    if halo < 0:
        raise ValueError(f"halo must be >= 0, got {halo}")
    top = block.row_off - halo
    left = block.col_off - halo
    bottom = block.row_off + block.height + halo
    right = block.col_off + block.width + halo
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(bottom, grid.height), min(right, grid.width)
    pad = Padding(top=r0 - top, bottom=bottom - r1, left=c0 - left, right=right - c1)
    return Window(c0, r0, c1 - c0, r1 - r0), pad
