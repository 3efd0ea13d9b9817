"""Class rasters to polygons, block by block, merged exactly across block edges.

Each connected region (4-connectivity, as GDAL polygonizes) of a vectorized class becomes one
polygon, holes included, whatever the block size: a block is cleaned and polygonized on its
own (:func:`polygonize_block`, in pixel coordinates, so shared edges match exactly), the
regions that touch across block edges are found from the labels along those edges and joined
(:func:`merge_blocks`), and only then is the grid's transform applied. So no more than one block
of the raster (plus the sieve's halo) is in memory at a time, blocks run in parallel, and the
result equals vectorizing the whole raster in one go: the same polygons, the same areas.

Statistics per polygon (pixel count, mean and maximum confidence, first pixel in raster
order, which fixes a stable ``instance_id``) come from ``bincount`` over the labels, not from
rasterizing polygons back. Regions that cross block edges are joined in pixel coordinates by
:func:`pipeline.kernels.join_pieces`, which gives the whole raster's polygon vertex for vertex;
geometries are written as WKB straight from the coordinate arrays
(:func:`pipeline.kernels.polygon_wkb`), never built one by one.

Clean-up (:class:`Cleanup`), in order: the sieve merges regions smaller than ``sieve_pixels``
into the class most of their neighbouring pixels hold (a rule that depends only on the region
and its neighbours, so a halo of ``sieve_pixels`` around each block decides it exactly); holes
smaller than ``fill_holes_m2`` that hold no other polygon are filled; polygons smaller than
``min_area_m2`` are dropped; ``simplify_m`` simplifies the whole coverage together, so
neighbouring polygons keep sharing their edges. Areas are in m², computed in a local
Lambert azimuthal equal-area projection when the grid's CRS is geographic. Nodata never
becomes a polygon.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import pyproj
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline import kernels
from pipeline.grid import Block, Grid, pixel_size_m


@dataclass(frozen=True)
class Cleanup:
    """Clean-up applied while vectorizing (see the module docstring)."""

    sieve_pixels: int = 0
    min_area_m2: float = 0.0
    fill_holes_m2: float = 0.0
    simplify_m: float = 0.0


@dataclass(frozen=True)
class Polygons:
    """Polygons of a class raster and their attributes, one row per polygon."""

    geometry: np.ndarray  # shapely Polygons in the grid's CRS (WKB bytes when streamed)
    class_value: np.ndarray  # uint8
    pixels: np.ndarray  # int64
    confidence: np.ndarray  # float64, mean percent
    confidence_max: np.ndarray  # uint8
    area_m2: np.ndarray  # float64
    perimeter_m: np.ndarray  # float64
    instance_id: np.ndarray  # int64, 1.. in raster order of each polygon's first pixel

    def __len__(self) -> int:
        return len(self.geometry)


@dataclass(frozen=True)
class BlockPolygons:
    """Polygons of one block in global pixel coordinates, with what merging needs."""

    block: Block
    class_value: np.ndarray  # uint8 [n], per local label 1..n (index 0 = label 1)
    pixels: np.ndarray  # int64 [n]
    conf_sum: np.ndarray  # int64 [n]
    conf_max: np.ndarray  # uint8 [n]
    first_index: np.ndarray  # int64 [n], global flat index of the first pixel
    label: np.ndarray  # int32 [m], local label of each polygon below
    coords: np.ndarray  # int32 [k, 2], pixel (col, row) coordinates of the corners
    ring_offsets: np.ndarray  # int64
    poly_offsets: np.ndarray  # int64
    top: np.ndarray  # int32 labels along the block's first row
    bottom: np.ndarray  # int32 labels along its last row
    left: np.ndarray  # int32 labels along its first column
    right: np.ndarray  # int32 labels along its last column


#: Passes of the sieve: a cluster of specks is absorbed from its edge inwards, a pass at a time.
SIEVE_PASSES = 4


def sieve(classes: np.ndarray, size: int, nodata: int, fixed: tuple[int, ...] = ()) -> np.ndarray:
    """Replace regions of fewer than ``size`` pixels by their neighbours' majority class.

    Regions are 4-connected. In each of up to :data:`SIEVE_PASSES` passes, every region still
    smaller than ``size`` takes the class held by most 4-neighbour pixel pairs across its edge
    that lead into regions of at least ``size`` pixels (into any region if there are none;
    nodata ignored; ties to the smaller class), all regions deciding at once; regions of one
    class that now touch become one. A cluster of specks is thus absorbed from its edge
    inwards. A region with no valid neighbour stays; nodata is never sieved and never spreads,
    and neither are the ``fixed`` values (cloud and shadow: a speck of cloud stays cloud, and
    a class speck surrounded by cloud stays that class).

    Each pass depends only on regions within ``2 * size`` pixels, so a block read with a halo
    of :func:`sieve_halo` gets exactly what the whole raster gets. The passes run on the
    graph of regions (sizes, classes, pixel pairs between neighbours), not on pixels, in
    :func:`pipeline.kernels.sieve_regions`. Returns ``classes`` itself if no region is small.
    """
    if size <= 1:
        return classes
    original = classes
    held = None
    if fixed:
        lookup = np.zeros(256, dtype=bool)
        lookup[list(fixed)] = True
        held = lookup[_as_uint8(classes)]
        if held.any():
            classes = np.where(held, np.uint8(nodata), _as_uint8(classes))
        else:
            held = None
    out, sieved = kernels.sieve_regions(_as_uint8(classes), int(size), int(nodata), SIEVE_PASSES)
    if not sieved:
        return original
    if held is not None:
        out[held] = _as_uint8(original)[held]
    return out


def _label_all(classes: np.ndarray, nodata: int) -> tuple[np.ndarray, int]:
    """Label every 4-connected region of every class (nodata stays 0)."""
    order = np.arange(256, dtype=np.int64)  # by class value, then raster order
    if 0 <= nodata < 256:
        order[nodata] = -1
    labels, n = kernels.label_regions(_as_uint8(classes), order)
    return labels, int(n)


def _as_uint8(classes: np.ndarray) -> np.ndarray:
    """Class values as a C-contiguous uint8 array (the kernels' one compiled signature)."""
    if classes.dtype != np.uint8 and classes.size:
        low, high = classes.min(), classes.max()
        if low < 0 or high > 255:
            raise ValueError(f"class values must be 0..255, got {low}..{high}")
    return np.ascontiguousarray(classes, dtype=np.uint8)


def _keep_order(keep: Iterable[int]) -> np.ndarray:
    """Rank of each class value 0..255 in ``keep`` (-1: not kept), first occurrence wins."""
    order = np.full(256, -1, dtype=np.int64)
    rank = 0
    for value in keep:
        if 0 <= value < 256 and order[value] < 0:
            order[value] = rank
            rank += 1
    return order


def label_regions(classes: np.ndarray, keep: Iterable[int]) -> np.ndarray:
    """Label each 4-connected region of a kept class with its own positive int32 id.

    Ids run through the kept classes in ``keep``'s order, then in raster order of each
    region's first pixel.
    """
    labels, _ = kernels.label_regions(_as_uint8(classes), _keep_order(keep))
    return labels


def polygonize_block(
    classes: np.ndarray,
    confidence: np.ndarray,
    block: Block,
    grid_width: int,
    keep: Sequence[int],
    labels: np.ndarray | None = None,
) -> BlockPolygons:
    """Polygonize one (already cleaned) block of classes, in global pixel coordinates.

    One polygon per label of :func:`label_regions`, in label order, traced by
    :func:`pipeline.kernels.trace_polygons`: the polygons ``rasterio.features.shapes`` gives
    with 4-connectivity, vertex for vertex. ``labels``: :func:`label_regions` of these
    classes and ``keep`` if the caller already has them.
    """
    classes = _as_uint8(classes)
    if labels is None:
        labels = label_regions(classes, keep)
    n = int(labels.max()) if labels.size else 0
    pixels, conf_sum, conf_max, class_of, first_local = kernels.region_stats(
        labels, n, classes, np.ascontiguousarray(confidence, dtype=np.uint8)
    )
    rows, cols = np.divmod(first_local, block.width)
    first_index = (rows + block.row_off) * grid_width + cols + block.col_off
    coords, ring_offsets, poly_offsets = kernels.trace_polygons(
        labels, n, block.col_off, block.row_off
    )
    return BlockPolygons(
        block=block,
        class_value=class_of,
        pixels=pixels,
        conf_sum=conf_sum,
        conf_max=conf_max,
        first_index=first_index.astype(np.int64),
        label=np.arange(1, n + 1, dtype=np.int32),
        coords=coords,
        ring_offsets=ring_offsets,
        poly_offsets=poly_offsets,
        top=labels[0].copy(),
        bottom=labels[-1].copy(),
        left=labels[:, 0].copy(),
        right=labels[:, -1].copy(),
    )


@dataclass(frozen=True)
class RegionEdges:
    """A block's regions as far as joining them across blocks needs: no geometry.

    Local labels 1..n as :func:`label_regions` numbers them; what ``instances.tif`` is made
    from (see :func:`instance_lookup`).
    """

    block: Block
    class_value: np.ndarray  # uint8 [n]
    first_index: np.ndarray  # int64 [n], global flat index of each region's first pixel
    top: np.ndarray  # int32 labels along the block's first row
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray

    @classmethod
    def of(cls, part: BlockPolygons) -> RegionEdges:
        """The edges of a polygonized block (before :func:`finish_block` splits it)."""
        return cls(
            part.block,
            part.class_value,
            part.first_index,
            part.top,
            part.bottom,
            part.left,
            part.right,
        )


def region_groups(parts: Sequence[BlockPolygons | RegionEdges]) -> np.ndarray:
    """The region each local label of ``parts`` belongs to, across block edges.

    Labels are numbered part after part (part ``i``'s label ``k`` is entry
    ``offsets[i] + k - 1``); regions of one class that touch across an edge share a group.
    """
    offsets = np.cumsum([0] + [len(p.class_value) for p in parts])
    total = int(offsets[-1])
    if total == 0:
        return np.empty(0, dtype=np.int64)
    class_value = np.concatenate([p.class_value for p in parts])
    at = {(p.block.row_off, p.block.col_off): (i, p) for i, p in enumerate(parts)}
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    for i, p in enumerate(parts):
        for (dr, dc), mine, theirs in (
            ((0, p.block.width), "right", "left"),
            ((p.block.height, 0), "bottom", "top"),
        ):
            nb = at.get((p.block.row_off + dr, p.block.col_off + dc))
            if nb is None:
                continue
            j, q = nb
            a, b = getattr(p, mine), getattr(q, theirs)
            both = (a > 0) & (b > 0)
            ga = a[both].astype(np.int64) - 1 + offsets[i]
            gb = b[both].astype(np.int64) - 1 + offsets[j]
            same = class_value[ga] == class_value[gb]
            src.append(ga[same])
            dst.append(gb[same])
    if not src:
        return np.arange(total)
    s, d = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(len(s), dtype=np.int8), (s, d)), shape=(total, total))
    _, group = connected_components(graph, directed=False)
    return np.asarray(group, dtype=np.int64)


def instance_lookup(parts: Sequence[RegionEdges], kept: np.ndarray) -> list[np.ndarray]:
    """Per part, each local label's ``instance_id`` (index 0 and dropped regions: 0).

    A region's id is 1 + the flat index of its first pixel in raster order, as its polygon's;
    ``kept`` holds the ids of the polygons written (clean-up drops some), so a pixel gets the
    id of its polygon or none.
    """
    if not parts:
        return []
    group = region_groups(parts)
    first = np.full(int(group.max()) + 1 if len(group) else 0, np.iinfo(np.int64).max)
    np.minimum.at(first, group, np.concatenate([p.first_index for p in parts]))
    ids = first[group] + 1
    ids[~np.isin(ids, kept)] = 0
    out = []
    start = 0
    for p in parts:
        n = len(p.class_value)
        out.append(np.concatenate([[0], ids[start : start + n]]).astype(np.int64))
        start += n
    return out


def merge_blocks(
    parts: Iterable[BlockPolygons],
    grid: Grid,
    cleanup: Cleanup,
    occupants: np.ndarray | None = None,
    as_wkb: bool = False,
) -> Polygons:
    """Join regions across block edges, apply the grid's transform and the clean-up.

    ``occupants`` are first-pixel indices of polygons finished elsewhere (see
    :func:`finish_block`): a hole holding one of them is never filled. With ``as_wkb`` the
    geometries come as WKB bytes, as they are built. The parts are let go
    as soon as their coordinates are gathered, so a caller that hands them over in an
    iterator that holds no other reference (:func:`pipeline.orchestrate.vectorize_on_cluster`
    does) has them freed before the joined geometries are built.
    """
    parts = [p for p in parts if len(p.class_value)]
    if not parts:
        return empty_polygons()
    offsets = np.cumsum([0] + [len(p.class_value) for p in parts])
    class_value = np.concatenate([p.class_value for p in parts])

    # Regions of one class that touch across a block edge are one region.
    group = region_groups(parts)
    n_groups = int(group.max()) + 1

    stats = _region_stats(parts, group, n_groups, class_value)

    # Geometries: a region in one piece keeps its traced polygon; the pieces of the regions
    # that cross block edges are joined all at once, in pixel coordinates, where they match.
    sizes = np.bincount(group, minlength=n_groups)
    cut_x = np.zeros(grid.width + 1, dtype=np.bool_)
    cut_y = np.zeros(grid.height + 1, dtype=np.bool_)
    cut_x[[p.block.col_off for p in parts]] = True
    cut_y[[p.block.row_off for p in parts]] = True
    cut_x[0] = cut_y[0] = False
    coords, ring_offsets, poly_offsets, label_of = _concat_pieces(parts, offsets)
    del parts  # a merged region can have millions of vertices: one copy at a time
    poly_group = group[label_of]
    joined = sizes[poly_group] > 1
    # Written as WKB in the grid's CRS straight from the coordinate arrays: this holds one
    # copy of a region's vertices at a time, where building, transforming and encoding
    # geometries holds several (a merged region can have millions of vertices). Areas and
    # perimeters come from the same arrays where no clean-up changes the shapes, so a stream
    # of WKB never needs its shapes built at all.
    unit = _planar_unit(grid) if cleanup.fill_holes_m2 <= 0 and cleanup.simplify_m <= 0 else None
    merged = np.empty(n_groups, dtype=object)  # WKB per region
    area = np.zeros(n_groups)
    perimeter = np.zeros(n_groups)
    single = np.flatnonzero(~joined)
    ragged = (coords, ring_offsets, poly_offsets)
    if single.size < len(poly_group):
        ragged = _take_polygons(coords, ring_offsets, poly_offsets, single)
    at = poly_group[single]
    merged[at] = _wkb_polygons(*ragged, grid)
    if unit is not None:
        area[at], perimeter[at] = _planar_measures(*ragged, grid, unit)
    del ragged
    crossing = np.flatnonzero(sizes > 1)
    if crossing.size:
        out, out_rings, out_polys, fallback = _join_crossing(
            coords, ring_offsets, poly_offsets, poly_group, crossing, cut_x, cut_y, grid
        )
        del coords, ring_offsets, poly_offsets
        merged[crossing] = _wkb_polygons(out, out_rings, out_polys, grid)
        if unit is not None:
            area[crossing], perimeter[crossing] = _planar_measures(
                out, out_rings, out_polys, grid, unit
            )
        del out
        for i, geom in fallback.items():
            merged[crossing[i]] = shapely.to_wkb(geom)
            if unit is not None:
                one_area, one_perimeter = measure(np.array([geom], dtype=object), grid)
                area[crossing[i]], perimeter[crossing[i]] = one_area[0], one_perimeter[0]
    else:
        del coords, ring_offsets, poly_offsets

    return _finish_regions(stats, merged, area, perimeter, unit, grid, cleanup, occupants, as_wkb)


class _RegionStats(NamedTuple):
    """Per joined region: pixels, confidence sum and max, first pixel's flat index, class."""

    pixels: np.ndarray
    conf_sum: np.ndarray
    conf_max: np.ndarray
    first: np.ndarray
    group_class: np.ndarray


def _region_stats(
    parts: list[BlockPolygons], group: np.ndarray, n_groups: int, class_value: np.ndarray
) -> _RegionStats:
    """The pieces' counts gathered per joined region (``group``: each piece's region)."""
    pixels = np.bincount(
        group, weights=np.concatenate([p.pixels for p in parts]), minlength=n_groups
    )
    conf_sum = np.bincount(
        group, weights=np.concatenate([p.conf_sum for p in parts]), minlength=n_groups
    )
    conf_max = np.zeros(n_groups, dtype=np.uint8)
    np.maximum.at(conf_max, group, np.concatenate([p.conf_max for p in parts]))
    first = np.full(n_groups, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, group, np.concatenate([p.first_index for p in parts]))
    group_class = np.zeros(n_groups, dtype=np.uint8)
    group_class[group] = class_value
    return _RegionStats(pixels, conf_sum, conf_max, first, group_class)


def _finish_regions(
    stats: _RegionStats,
    merged: np.ndarray,
    area: np.ndarray,
    perimeter: np.ndarray,
    unit: float | None,
    grid: Grid,
    cleanup: Cleanup,
    occupants: np.ndarray | None,
    as_wkb: bool,
) -> Polygons:
    """The joined regions (WKB ``merged``) in raster order, cleaned up, as polygons.

    ``area`` and ``perimeter`` are already measured when ``unit`` is given (see
    :func:`merge_blocks`); otherwise they come from the shapes.
    """
    # Raster order of each polygon's first pixel, which also fixes its stable id.
    rank = np.argsort(stats.first, kind="stable")
    pixels, conf_sum, conf_max = stats.pixels[rank], stats.conf_sum[rank], stats.conf_max[rank]
    group_class, first = stats.group_class[rank], stats.first[rank]
    merged, area, perimeter = merged[rank], area[rank], perimeter[rank]
    instance_id = first + 1

    wkb = merged
    geometry = None if as_wkb and unit is not None else shapely.from_wkb(wkb)
    if geometry is not None and cleanup.fill_holes_m2 > 0:
        inside = first if occupants is None else np.concatenate([first, occupants])
        geometry, changed = _fill_holes(
            geometry, grid, cleanup.fill_holes_m2, _pixel_centres(inside, grid)
        )
        if changed.size:
            wkb = wkb.copy()
            wkb[changed] = shapely.to_wkb(geometry[changed])
    if geometry is not None and unit is None:
        area, perimeter = measure(geometry, grid)
    keep = area >= cleanup.min_area_m2
    area, perimeter, wkb = area[keep], perimeter[keep], wkb[keep]
    if geometry is not None:
        geometry = geometry[keep]
    if geometry is not None and cleanup.simplify_m > 0 and len(geometry):
        geometry = _simplify(geometry, grid, cleanup.simplify_m)
        area, perimeter = measure(geometry, grid)
        if as_wkb:
            wkb = shapely.to_wkb(geometry)
    return Polygons(
        geometry=wkb if as_wkb or geometry is None else geometry,
        class_value=group_class[keep],
        pixels=pixels[keep].astype(np.int64),
        confidence=conf_sum[keep] / pixels[keep],
        confidence_max=conf_max[keep],
        area_m2=area,
        perimeter_m=perimeter,
        instance_id=instance_id[keep],
    )


def _concat_pieces(
    parts: Sequence[BlockPolygons], offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The parts' polygons as one ragged array, with each polygon's label across all parts."""
    if len(parts) == 1:  # a finished block: no copy
        p = parts[0]
        return p.coords, p.ring_offsets, p.poly_offsets, p.label.astype(np.int64) - 1
    coord_base = np.cumsum([0] + [len(p.coords) for p in parts])
    ring_base = np.cumsum([0] + [len(p.ring_offsets) - 1 for p in parts])
    coords = np.concatenate([p.coords for p in parts])
    ring_offsets = np.concatenate(
        [p.ring_offsets[:-1] + base for p, base in zip(parts, coord_base, strict=False)]
        + [coord_base[-1:]]
    )
    poly_offsets = np.concatenate(
        [p.poly_offsets[:-1] + base for p, base in zip(parts, ring_base, strict=False)]
        + [ring_base[-1:]]
    )
    label_of = np.concatenate(
        [p.label.astype(np.int64) - 1 + off for p, off in zip(parts, offsets, strict=False)]
    )
    return coords, ring_offsets.astype(np.int64), poly_offsets.astype(np.int64), label_of


#: WKB bytes written per kernel call: bounds the array a batch of WKB is held in beside its
#: copies as ``bytes``. A polygon larger than this is written in parts of this size.
WKB_CHUNK_BYTES = 16 * 2**20


def _wkb_polygons(
    coords: np.ndarray, ring_offsets: np.ndarray, poly_offsets: np.ndarray, grid: Grid
) -> np.ndarray:
    """WKB bytes of polygons given as a ragged array in pixel corners, in the grid's CRS.

    Written a chunk of polygons at a time, so the kernel's output array (copied into one
    ``bytes`` per polygon) stays small beside the result even when it holds a region of
    millions of vertices.
    """
    coords = np.ascontiguousarray(coords, dtype=np.int32)
    ring_offsets = np.ascontiguousarray(ring_offsets, dtype=np.int64)
    poly_offsets = np.ascontiguousarray(poly_offsets, dtype=np.int64)
    transform = np.asarray(grid.transform[:6], dtype=np.float64)
    n_rings = np.diff(poly_offsets)
    n_coords = ring_offsets[poly_offsets[1:]] - ring_offsets[poly_offsets[:-1]]
    size = 9 + 4 * n_rings + 16 * n_coords
    end = np.cumsum(size)  # each polygon's end in all the polygons' WKB
    out = np.empty(len(size), dtype=object)
    start = 0
    while start < len(size):
        if size[start] > WKB_CHUNK_BYTES:
            out[start] = _large_wkb(
                coords, ring_offsets, poly_offsets, transform, start, int(size[start])
            )
            start += 1
            continue
        # The polygons that end within one chunk from here (a large one never does).
        stop = int(np.searchsorted(end, end[start] - size[start] + WKB_CHUNK_BYTES, "right"))
        buf, offsets = kernels.polygon_wkb(
            coords, ring_offsets, poly_offsets[start : stop + 1], transform
        )
        pairs = zip(offsets[:-1], offsets[1:], strict=True)
        out[start:stop] = [buf[a:b].tobytes() for a, b in pairs]
        start = stop
    return out


def _large_wkb(
    coords: np.ndarray,
    ring_offsets: np.ndarray,
    poly_offsets: np.ndarray,
    transform: np.ndarray,
    p: int,
    size: int,
) -> bytes:
    """Polygon ``p``'s WKB written part by part into one ``bytes``, never held twice.

    ``BytesIO`` grows its buffer in place and hands it over as the result without a copy.
    """
    stream = io.BytesIO()
    for lo in range(0, size, WKB_CHUNK_BYTES):
        hi = min(size, lo + WKB_CHUNK_BYTES)
        part = kernels.polygon_wkb_part(coords, ring_offsets, poly_offsets, transform, p, lo, hi)
        stream.write(part.data)
    return stream.getvalue()


def _take_polygons(
    coords: np.ndarray, ring_offsets: np.ndarray, poly_offsets: np.ndarray, chosen: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The polygons ``chosen`` (indices) of a ragged array, as a ragged array of their own."""
    ring_start, ring_end = poly_offsets[chosen], poly_offsets[chosen + 1]
    rings = _ranges(ring_start, ring_end)
    coord_start, coord_end = ring_offsets[rings], ring_offsets[rings + 1]
    return (
        coords[_ranges(coord_start, coord_end)],
        np.concatenate([[0], np.cumsum(coord_end - coord_start)]).astype(np.int64),
        np.concatenate([[0], np.cumsum(ring_end - ring_start)]).astype(np.int64),
    )


def _join_crossing(
    coords: np.ndarray,
    ring_offsets: np.ndarray,
    poly_offsets: np.ndarray,
    poly_group: np.ndarray,
    crossing: np.ndarray,
    cut_x: np.ndarray,
    cut_y: np.ndarray,
    grid: Grid,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, shapely.Geometry]]:
    """Join the groups ``crossing`` from their pieces: a ragged array in pixel corners.

    Also returned: the geometries (in the grid's CRS) of any group that needed a general
    union instead, by position in ``crossing``. The pieces form an exact coverage (integer
    pixel corners), so :func:`pipeline.kernels.join_pieces` joins them exactly, in time
    linear in their vertices.
    """
    dense = np.full(int(poly_group.max()) + 1, -1, dtype=np.int64)
    dense[crossing] = np.arange(len(crossing))
    of = dense[poly_group]
    members = np.flatnonzero(of >= 0)
    members = members[np.argsort(of[members], kind="stable")]
    group_offsets = np.concatenate(
        [[0], np.cumsum(np.bincount(of[members], minlength=len(crossing)))]
    ).astype(np.int64)
    out, out_rings, out_polys, ok = kernels.join_pieces(
        np.ascontiguousarray(coords, dtype=np.int32),
        np.ascontiguousarray(ring_offsets, dtype=np.int64),
        np.ascontiguousarray(poly_offsets, dtype=np.int64),
        group_offsets,
        members.astype(np.int64),
        cut_x,
        cut_y,
    )
    fallback: dict[int, shapely.Geometry] = {}
    for i in np.flatnonzero(~ok):
        # Not one 4-connected region (it should not happen): fall back to a general union.
        chosen = members[group_offsets[i] : group_offsets[i + 1]]
        piece_coords, piece_rings, piece_polys = _take_polygons(
            coords, ring_offsets, poly_offsets, chosen
        )
        pieces = _wkb_polygons(piece_coords, piece_rings, piece_polys, grid)
        fallback[int(i)] = shapely.union_all(shapely.from_wkb(pieces))
    return out, out_rings, out_polys, fallback


def _equal_area(grid: Grid) -> pyproj.Transformer | None:
    crs = pyproj.CRS.from_wkt(grid.crs_wkt)
    if not crs.is_geographic:
        return None
    left, bottom, right, top = grid.bounds
    laea = pyproj.CRS.from_proj4(
        f"+proj=laea +lat_0={(bottom + top) / 2} +lon_0={(left + right) / 2} +datum=WGS84"
    )
    return pyproj.Transformer.from_crs(crs, laea, always_xy=True)


def _planar_unit(grid: Grid) -> float | None:
    """Metres per unit of the grid's CRS; None if it is geographic (areas need a projection)."""
    crs = pyproj.CRS.from_wkt(grid.crs_wkt)
    if crs.is_geographic:
        return None
    return crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0


def _planar_measures(
    coords: np.ndarray, ring_offsets: np.ndarray, poly_offsets: np.ndarray, grid: Grid, unit: float
) -> tuple[np.ndarray, np.ndarray]:
    """(area m², perimeter m) of a ragged array in pixel corners, as :func:`measure` gives them.

    :func:`pipeline.kernels.polygon_measures` sums them as GEOS does from the coordinates
    :func:`_wkb_polygons` writes, so they equal ``measure`` of the parsed polygons exactly.
    """
    area, length = kernels.polygon_measures(
        np.ascontiguousarray(coords, dtype=np.int32),
        np.ascontiguousarray(ring_offsets, dtype=np.int64),
        np.ascontiguousarray(poly_offsets, dtype=np.int64),
        np.asarray(grid.transform[:6], dtype=np.float64),
    )
    return area * unit * unit, length * unit


def _metric(geometry: np.ndarray, grid: Grid) -> tuple[np.ndarray, float]:
    """Geometries in a metric CRS (an equal-area one if geographic) and the unit's size in m."""
    to_laea = _equal_area(grid)
    if to_laea is not None:
        projected = shapely.transform(
            geometry, lambda xy: np.column_stack(to_laea.transform(xy[:, 0], xy[:, 1]))
        )
        return projected, 1.0
    crs = pyproj.CRS.from_wkt(grid.crs_wkt)
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return geometry, unit


def measure(geometry: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(area m², perimeter m) of each geometry: planar if projected, equal-area if geographic."""
    if len(geometry) == 0:
        return np.zeros(0), np.zeros(0)
    metric, unit = _metric(geometry, grid)
    return (
        np.asarray(shapely.area(metric), dtype=np.float64) * unit * unit,
        np.asarray(shapely.length(metric), dtype=np.float64) * unit,
    )


def area_m2(geometry: np.ndarray, grid: Grid) -> np.ndarray:
    """Areas in m²: planar in a projected CRS, in a local equal-area projection if geographic."""
    return measure(geometry, grid)[0]


def _pixel_centres(index: np.ndarray, grid: Grid) -> np.ndarray:
    """Points at the centres of pixels given by raster-order index, in the grid's CRS."""
    rows, cols = np.divmod(index, grid.width)
    a, b, c, d, e, f = grid.transform
    col, row = cols + 0.5, rows + 0.5
    return np.asarray(shapely.points(a * col + b * row + c, d * col + e * row + f), dtype=object)


def _fill_holes(
    geometry: np.ndarray, grid: Grid, max_m2: float, occupants: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fill interior rings smaller than ``max_m2`` that hold none of the ``occupants`` points.

    Every polygon holds its own first pixel's centre, so the first pixels of all polygons tell
    whether a hole holds another polygon. Returns the polygons and the indices of those
    changed.
    """
    n_holes = shapely.get_num_interior_rings(geometry)
    candidates = np.flatnonzero(n_holes > 0)
    changed: list[int] = []
    if candidates.size == 0:
        return geometry, np.array(changed, dtype=np.int64)
    tree = shapely.STRtree(occupants)
    out = geometry.copy()
    for i in candidates:
        poly = geometry[i]
        holes = np.array([shapely.Polygon(r) for r in poly.interiors], dtype=object)
        areas = area_m2(holes, grid)
        kept = [
            ring
            for ring, hole, a in zip(poly.interiors, holes, areas, strict=True)
            if a >= max_m2 or len(tree.query(hole, predicate="contains_properly"))
        ]
        if len(kept) != len(poly.interiors):
            out[i] = shapely.Polygon(poly.exterior, kept)
            changed.append(int(i))
    return out, np.array(changed, dtype=np.int64)


def _simplify(geometry: np.ndarray, grid: Grid, tolerance_m: float) -> np.ndarray:
    """Simplify the polygons as one coverage, so shared edges stay shared (no gaps, overlaps)."""
    tolerance = tolerance_m * grid.res[0] / pixel_size_m(grid)[0]  # metres to CRS units
    simplified = shapely.coverage_simplify(geometry, tolerance)
    return np.asarray(shapely.make_valid(simplified), dtype=object)


def vectorize(
    classes: np.ndarray,
    confidence: np.ndarray,
    grid: Grid,
    keep: Iterable[int],
    nodata: int = 255,
    sieve_pixels: int = 0,
    min_area_m2: float = 0.0,
    block_size: int | None = None,
    fill_holes_m2: float = 0.0,
    simplify_m: float = 0.0,
    as_wkb: bool = False,
    fixed: tuple[int, ...] = (),
) -> Polygons:
    """Polygonize an in-memory class raster block by block (the whole raster if no block size).

    ``as_wkb`` as for :func:`merge_blocks`; ``fixed`` values are never sieved (:func:`sieve`).
    """
    from pipeline.grid import blocks, tile_window

    keep = list(keep)
    cleanup = Cleanup(sieve_pixels, min_area_m2, fill_holes_m2, simplify_m)
    size = block_size or max(grid.height, grid.width)
    finished = []
    for block in blocks(grid, size):
        read, _ = tile_window(grid, block, sieve_halo(cleanup))
        window_classes = classes[
            read.row_off : read.row_off + read.height, read.col_off : read.col_off + read.width
        ]
        cleaned = clean_window(window_classes, read, block, cleanup, nodata, fixed)
        conf = confidence[
            block.row_off : block.row_off + block.height,
            block.col_off : block.col_off + block.width,
        ]
        part = polygonize_block(cleaned, conf, block, grid.width, keep)
        finished.append(finish_block(part, grid, cleanup, as_wkb))
    occupants = np.concatenate([f.occupants for f in finished])
    joined = merge_blocks([f.pieces for f in finished], grid, cleanup, occupants, as_wkb)
    whole = concat_polygons([*(f.polygons for f in finished), joined])
    return take(whole, np.argsort(whole.instance_id, kind="stable"))


def warm_up() -> None:
    """Load this process's compiled kernels of the polygon stage now, on a tiny raster.

    Numba loads a cached kernel at its first call in a process, about 0.2 s for this stage's
    set; a run has its workers and client do it while they would otherwise wait, not when the
    polygons are due. The 8×8 raster in 4×4 blocks takes every path: the sieve, region
    labels, tracing, a hole, joins across blocks, WKB and areas; then a polygon's WKB is
    written in parts, as a region of millions of vertices is.
    """
    classes = np.zeros((8, 8), dtype=np.uint8)
    classes[1:7, 1:7] = 1
    classes[3:5, 3:5] = 0
    classes[0, 7] = 1  # a speck for the sieve
    grid = Grid(pyproj.CRS.from_epsg(32618).to_wkt(), (10.0, 0.0, 0.0, 0.0, -10.0, 80.0), 8, 8)
    confidence = np.full_like(classes, 90)
    vectorize(classes, confidence, grid, [1], sieve_pixels=2, block_size=4, as_wkb=True)
    square = np.array([[0, 0], [0, 1], [1, 1], [1, 0], [0, 0]], dtype=np.int32)
    offsets = np.array([0, 5], dtype=np.int64)
    transform = np.asarray(grid.transform[:6], dtype=np.float64)
    _large_wkb(square, offsets, np.array([0, 1], dtype=np.int64), transform, 0, 93)


@dataclass(frozen=True)
class FinishedBlock:
    """A block's polygons that are complete, and the pieces that must be joined to others."""

    polygons: Polygons  # regions wholly inside the block, cleaned and measured
    pieces: BlockPolygons  # regions touching a neighbouring block, for :func:`merge_blocks`
    occupants: np.ndarray  # int64 first-pixel index of every region in ``polygons``


def finish_block(
    part: BlockPolygons, grid: Grid, cleanup: Cleanup, as_wkb: bool = False
) -> FinishedBlock:
    """Finish the regions of a block that touch no neighbouring block; set aside the others.

    A region that touches no edge shared with another block is complete: it is cleaned and
    measured here, in the worker, so the client only joins the (far fewer) regions that cross
    block edges. Coverage simplification needs every neighbour of a polygon, so with
    ``simplify_m`` all regions are set aside for the join. ``as_wkb`` as for
    :func:`merge_blocks`.
    """
    b = part.block
    sides = [
        (b.row_off > 0, part.top),
        (b.row_off + b.height < grid.height, part.bottom),
        (b.col_off > 0, part.left),
        (b.col_off + b.width < grid.width, part.right),
    ]
    n = len(part.class_value)
    touching = np.zeros(n + 1, dtype=bool)
    for shared, labels in sides:
        if shared:
            touching[labels] = True
    touching = touching[1:]
    if cleanup.simplify_m > 0:
        touching[:] = True
    inner = _subset(part, ~touching)
    done = merge_blocks([inner], grid, cleanup, np.empty(0, dtype=np.int64), as_wkb)
    return FinishedBlock(done, _subset(part, touching), inner.first_index)


def _subset(part: BlockPolygons, chosen: np.ndarray) -> BlockPolygons:
    """The part with only the regions (local labels 1..n) where ``chosen`` is True, renumbered."""
    new_label = np.zeros(len(chosen) + 1, dtype=np.int32)
    new_label[1:][chosen] = np.arange(1, int(chosen.sum()) + 1, dtype=np.int32)
    polys = np.flatnonzero(chosen[part.label - 1]) if len(part.label) else part.label[:0]
    ring_start, ring_end = part.poly_offsets[polys], part.poly_offsets[polys + 1]
    rings = _ranges(ring_start, ring_end)
    coord_start, coord_end = part.ring_offsets[rings], part.ring_offsets[rings + 1]
    coords = part.coords[_ranges(coord_start, coord_end)]
    return BlockPolygons(
        block=part.block,
        class_value=part.class_value[chosen],
        pixels=part.pixels[chosen],
        conf_sum=part.conf_sum[chosen],
        conf_max=part.conf_max[chosen],
        first_index=part.first_index[chosen],
        label=new_label[part.label[polys]],
        coords=coords,
        ring_offsets=np.concatenate([[0], np.cumsum(coord_end - coord_start)]).astype(np.int64),
        poly_offsets=np.concatenate([[0], np.cumsum(ring_end - ring_start)]).astype(np.int64),
        top=new_label[part.top],
        bottom=new_label[part.bottom],
        left=new_label[part.left],
        right=new_label[part.right],
    )


def _ranges(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, e)`` for each pair, without a Python loop."""
    lengths = end - start
    if lengths.sum() == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(start - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return (np.arange(int(lengths.sum())) + offsets).astype(np.int64)


def concat_polygons(batches: Sequence[Polygons]) -> Polygons:
    """One :class:`Polygons` holding the rows of every batch, in order."""
    if not batches:
        return empty_polygons()
    return Polygons(
        **{f.name: np.concatenate([getattr(b, f.name) for b in batches]) for f in fields(Polygons)}
    )


def take(polys: Polygons, index: np.ndarray) -> Polygons:
    """The rows of ``polys`` at ``index`` (an integer or boolean index array)."""
    return Polygons(**{f.name: getattr(polys, f.name)[index] for f in fields(Polygons)})


def sieve_halo(cleanup: Cleanup) -> int:
    """Pixels of context a block needs so the sieve decides every region exactly.

    In one pass a small region touching the block lies within ``sieve_pixels`` of it, and
    whether each of its neighbours is small is decided within ``sieve_pixels`` further out;
    each further pass depends on the previous one's result that far around.
    """
    return 2 * cleanup.sieve_pixels * SIEVE_PASSES if cleanup.sieve_pixels > 1 else 0


def clean_window(
    classes: np.ndarray,
    read: object,
    block: Block,
    cleanup: Cleanup,
    nodata: int,
    fixed: tuple[int, ...] = (),
) -> np.ndarray:
    """Sieve a block read with :func:`sieve_halo` around it, then cut the block out.

    ``fixed`` values are never sieved (see :func:`sieve`).
    """
    cleaned = sieve(classes, cleanup.sieve_pixels, nodata, fixed)
    top = block.row_off - int(read.row_off)  # type: ignore[attr-defined]
    left = block.col_off - int(read.col_off)  # type: ignore[attr-defined]
    return cleaned[top : top + block.height, left : left + block.width]


def empty_polygons() -> Polygons:
    """No polygons: every column empty, with its dtype."""
    return Polygons(
        geometry=np.empty(0, dtype=object),
        class_value=np.empty(0, dtype=np.uint8),
        pixels=np.empty(0, dtype=np.int64),
        confidence=np.empty(0),
        confidence_max=np.empty(0, dtype=np.uint8),
        area_m2=np.empty(0),
        perimeter_m=np.empty(0),
        instance_id=np.empty(0, dtype=np.int64),
    )
