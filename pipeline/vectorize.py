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
rasterizing polygons back; geometries are built in bulk from coordinate arrays.

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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

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

    geometry: np.ndarray  # shapely Polygon objects in the grid's CRS
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
    coords: np.ndarray  # float64 [k, 2], pixel (col, row) coordinates
    ring_offsets: np.ndarray  # int64
    poly_offsets: np.ndarray  # int64
    top: np.ndarray  # int32 labels along the block's first row
    bottom: np.ndarray  # int32 labels along its last row
    left: np.ndarray  # int32 labels along its first column
    right: np.ndarray  # int32 labels along its last column


#: Passes of the sieve: a cluster of specks is absorbed from its edge inwards, a pass at a time.
SIEVE_PASSES = 4


def sieve(classes: np.ndarray, size: int, nodata: int) -> np.ndarray:
    """Replace regions of fewer than ``size`` pixels by their neighbours' majority class.

    Regions are 4-connected. In each of up to :data:`SIEVE_PASSES` passes, every region still
    smaller than ``size`` takes the class held by most 4-neighbour pixel pairs across its edge
    that lead into regions of at least ``size`` pixels (into any region if there are none;
    nodata ignored; ties to the smaller class), all regions deciding at once; regions of one
    class that now touch become one. A cluster of specks is thus absorbed from its edge
    inwards. A region with no valid neighbour stays; nodata is never sieved and never spreads.

    Each pass depends only on regions within ``2 * size`` pixels, so a block read with a halo
    of :func:`sieve_halo` gets exactly what the whole raster gets. The passes run on the
    graph of regions (sizes, classes, pixel pairs between neighbours), not on pixels, in
    :func:`pipeline.kernels.sieve_regions`. Returns ``classes`` itself if no region is small.
    """
    if size <= 1:
        return classes
    out, sieved = kernels.sieve_regions(_as_uint8(classes), int(size), int(nodata), SIEVE_PASSES)
    return out if sieved else classes


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
) -> BlockPolygons:
    """Polygonize one (already cleaned) block of classes, in global pixel coordinates.

    One polygon per label of :func:`label_regions`, in label order, traced by
    :func:`pipeline.kernels.trace_polygons`: the polygons ``rasterio.features.shapes`` gives
    with 4-connectivity, vertex for vertex.
    """
    classes = _as_uint8(classes)
    labels, n = kernels.label_regions(classes, _keep_order(keep))
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


def merge_blocks(
    parts: Sequence[BlockPolygons],
    grid: Grid,
    cleanup: Cleanup,
    occupants: np.ndarray | None = None,
) -> Polygons:
    """Join regions across block edges, apply the grid's transform and the clean-up.

    ``occupants`` are first-pixel indices of polygons finished elsewhere (see
    :func:`finish_block`): a hole holding one of them is never filled.
    """
    parts = [p for p in parts if len(p.class_value)]
    if not parts:
        return empty_polygons()
    offsets = np.cumsum([0] + [len(p.class_value) for p in parts])
    total = int(offsets[-1])
    class_value = np.concatenate([p.class_value for p in parts])

    # Regions of one class that touch across a block edge are one region.
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
    if src:
        s, d = np.concatenate(src), np.concatenate(dst)
        graph = coo_matrix((np.ones(len(s), dtype=np.int8), (s, d)), shape=(total, total))
        _, group = connected_components(graph, directed=False)
    else:
        group = np.arange(total)
    n_groups = int(group.max()) + 1

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

    # Geometries: one per local label, built in bulk per block.
    cut_cols = np.unique([p.block.col_off for p in parts if p.block.col_off > 0])
    cut_rows = np.unique([p.block.row_off for p in parts if p.block.row_off > 0])
    sizes = np.bincount(group, minlength=n_groups)
    crosses = sizes[group] > 1
    geoms = np.empty(total, dtype=object)
    for i, p in enumerate(parts):
        ids = p.label.astype(np.int64) - 1 + offsets[i]
        coords, rings = p.coords, p.ring_offsets
        if crosses[ids].any():
            # Pieces of merged regions meet along block edges: give every piece a vertex at
            # each pixel corner on those edges, so shared edges match vertex for vertex.
            coords, rings = _node_block_edges(coords, rings, cut_cols, cut_rows)
        built = shapely.from_ragged_array(
            shapely.GeometryType.POLYGON, coords, (rings, p.poly_offsets)
        )
        geoms[ids] = built
    merged = np.empty(n_groups, dtype=object)
    merged[group[~crosses]] = geoms[~crosses]
    multi = np.flatnonzero(sizes > 1)
    if multi.size:
        order = np.argsort(group, kind="stable")
        starts = np.searchsorted(group[order], multi)
        for g, st in zip(multi, starts, strict=True):
            # The pieces form an exact coverage (integer pixel corners, matched vertices).
            merged[g] = join_pieces(geoms[order[st : st + sizes[g]]], grid)

    # Raster order of each polygon's first pixel, which also fixes its stable id.
    rank = np.argsort(first, kind="stable")
    merged, pixels, conf_sum = merged[rank], pixels[rank], conf_sum[rank]
    conf_max, group_class, first = conf_max[rank], group_class[rank], first[rank]
    instance_id = first + 1

    geometry = shapely.transform(merged, _to_crs(grid))
    if cleanup.fill_holes_m2 > 0:
        inside = first if occupants is None else np.concatenate([first, occupants])
        geometry = _fill_holes(geometry, grid, cleanup.fill_holes_m2, _pixel_centres(inside, grid))
    area, perimeter = measure(geometry, grid)
    keep = area >= cleanup.min_area_m2
    geometry, area, perimeter = geometry[keep], area[keep], perimeter[keep]
    if cleanup.simplify_m > 0 and len(geometry):
        geometry = _simplify(geometry, grid, cleanup.simplify_m)
        area, perimeter = measure(geometry, grid)
    return Polygons(
        geometry=geometry,
        class_value=group_class[keep],
        pixels=pixels[keep].astype(np.int64),
        confidence=conf_sum[keep] / pixels[keep],
        confidence_max=conf_max[keep],
        area_m2=area,
        perimeter_m=perimeter,
        instance_id=instance_id[keep],
    )


def join_pieces(pieces: np.ndarray, grid: Grid) -> shapely.Polygon:
    """Join edge-sharing pieces of one region (pixel coordinates, matched vertices) exactly.

    Every ring is cut into its segments, oriented so the region lies on the left; a segment
    shared by two pieces appears once in each direction and both copies are dropped; what is
    left is the outline of the union, walked into rings. Where the outline touches itself at a
    pixel corner (4-connectivity), the walk takes the rightmost turn, wrapping the pixel outside
    the region, so rings touch at that corner instead of crossing it, as GDAL's polygonize
    pairs them. This is linear in the number of vertices, unlike a general polygon union.
    """
    oriented = shapely.orient_polygons(pieces, exterior_cw=False)
    rings = shapely.get_rings(oriented)
    coords, ring_of = shapely.get_coordinates(rings, return_index=True)
    pts = np.rint(coords).astype(np.int64)
    same_ring = ring_of[1:] == ring_of[:-1]
    start, end = pts[:-1][same_ring], pts[1:][same_ring]
    k = np.int64(grid.height + 1)
    start_key = start[:, 0] * k + start[:, 1]
    end_key = end[:, 0] * k + end[:, 1]
    span = np.int64((grid.width + 1) * (grid.height + 1))
    seg = start_key * span + end_key
    sorted_seg = np.sort(seg)
    reverse = end_key * span + start_key
    at = np.minimum(np.searchsorted(sorted_seg, reverse), len(sorted_seg) - 1)
    keep = sorted_seg[at] != reverse  # drop segments whose reverse belongs to another piece
    start, end, start_key, end_key = start[keep], end[keep], start_key[keep], end_key[keep]
    m = len(start_key)
    order = np.argsort(start_key, kind="stable")
    first = np.searchsorted(start_key[order], end_key, side="left")
    count = np.searchsorted(start_key[order], end_key, side="right") - first
    nxt = order[np.minimum(first, m - 1)]
    pinch = np.flatnonzero(count > 1)
    if pinch.size:
        # Two ways on: take the rightmost turn (the region is on the left), as GDAL does.
        d_in = end[pinch] - start[pinch]
        a, b = order[first[pinch]], order[first[pinch] + 1]
        d_a = end[a] - start[a]
        cross_a = d_in[:, 0] * d_a[:, 1] - d_in[:, 1] * d_a[:, 0]
        nxt[pinch] = np.where(cross_a < 0, a, b)
    nxt_l = nxt.tolist()
    seen = bytearray(m)
    loops: list[np.ndarray] = []
    for s0 in range(m):
        if seen[s0]:
            continue
        walk = []
        s_ = s0
        while not seen[s_]:
            seen[s_] = 1
            walk.append(s_)
            s_ = nxt_l[s_]
        ring = start[walk]
        # Drop vertices where the outline goes straight on (left over from the joins).
        d = np.diff(np.vstack([ring[-1:], ring, ring[:1]]), axis=0)
        turn = (d[:-1, 0] * d[1:, 1] - d[:-1, 1] * d[1:, 0]) != 0
        ring = ring[turn]
        loops.append(np.vstack([ring, ring[:1]]).astype(np.float64))
    area = np.array([_signed_area(r) for r in loops])
    shells = [r for r, a_ in zip(loops, area, strict=True) if a_ > 0]
    holes = [r for r, a_ in zip(loops, area, strict=True) if a_ < 0]
    if len(shells) != 1:  # not one 4-connected region: fall back to a general union
        return shapely.union_all(pieces)
    return shapely.Polygon(shells[0], holes)


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2


def _node_block_edges(
    coords: np.ndarray, ring_offsets: np.ndarray, cols: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Insert a vertex at every pixel corner of ring segments lying on a block edge.

    ``coords`` are closed rings in pixel coordinates; ``cols`` and ``rows`` are the interior
    block edges (x = col, y = row). Segments along them are cut into unit steps.
    """
    n = len(coords)
    if n < 2:
        return coords, ring_offsets
    last = np.zeros(n, dtype=bool)
    last[ring_offsets[1:] - 1] = True
    p, q = coords[:-1], coords[1:]
    d = q - p
    length = np.abs(d).sum(axis=1)
    on_edge = ((d[:, 0] == 0) & np.isin(p[:, 0], cols)) | ((d[:, 1] == 0) & np.isin(p[:, 1], rows))
    on_edge &= ~last[:-1] & (length > 1)
    emit = np.ones(n, dtype=np.int64)
    emit[:-1] += np.where(on_edge, length - 1, 0).astype(np.int64)
    src = np.repeat(np.arange(n), emit)
    step = np.arange(int(emit.sum())) - np.repeat(np.cumsum(emit) - emit, emit)
    direction = np.zeros((n, 2))
    direction[:-1] = np.sign(d)
    out = coords[src] + direction[src] * step[:, None]
    new_offsets = np.concatenate([[0], np.cumsum(emit)])[ring_offsets]
    return out, new_offsets


def _to_crs(grid: Grid) -> object:
    a, b, c, d, e, f = grid.transform

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([c + a * x + b * y, f + d * x + e * y])

    return apply


def _equal_area(grid: Grid) -> pyproj.Transformer | None:
    crs = pyproj.CRS.from_wkt(grid.crs_wkt)
    if not crs.is_geographic:
        return None
    left, bottom, right, top = grid.bounds
    laea = pyproj.CRS.from_proj4(
        f"+proj=laea +lat_0={(bottom + top) / 2} +lon_0={(left + right) / 2} +datum=WGS84"
    )
    return pyproj.Transformer.from_crs(crs, laea, always_xy=True)


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
    xy = _to_crs(grid)(np.column_stack([cols + 0.5, rows + 0.5]))  # type: ignore[operator]
    return np.asarray(shapely.points(xy), dtype=object)


def _fill_holes(
    geometry: np.ndarray, grid: Grid, max_m2: float, occupants: np.ndarray
) -> np.ndarray:
    """Fill interior rings smaller than ``max_m2`` that hold none of the ``occupants`` points.

    Every polygon holds its own first pixel's centre, so the first pixels of all polygons tell
    whether a hole holds another polygon.
    """
    n_holes = shapely.get_num_interior_rings(geometry)
    candidates = np.flatnonzero(n_holes > 0)
    if candidates.size == 0:
        return geometry
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
    return out


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
) -> Polygons:
    """Polygonize an in-memory class raster block by block (the whole raster if no block size)."""
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
        cleaned = clean_window(window_classes, read, block, cleanup, nodata)
        conf = confidence[
            block.row_off : block.row_off + block.height,
            block.col_off : block.col_off + block.width,
        ]
        part = polygonize_block(cleaned, conf, block, grid.width, keep)
        finished.append(finish_block(part, grid, cleanup))
    occupants = np.concatenate([f.occupants for f in finished])
    joined = merge_blocks([f.pieces for f in finished], grid, cleanup, occupants)
    whole = concat_polygons([*(f.polygons for f in finished), joined])
    return take(whole, np.argsort(whole.instance_id, kind="stable"))


@dataclass(frozen=True)
class FinishedBlock:
    """A block's polygons that are complete, and the pieces that must be joined to others."""

    polygons: Polygons  # regions wholly inside the block, cleaned and measured
    pieces: BlockPolygons  # regions touching a neighbouring block, for :func:`merge_blocks`
    occupants: np.ndarray  # int64 first-pixel index of every region in ``polygons``


def finish_block(part: BlockPolygons, grid: Grid, cleanup: Cleanup) -> FinishedBlock:
    """Finish the regions of a block that touch no neighbouring block; set aside the others.

    A region that touches no edge shared with another block is complete: it is cleaned and
    measured here, in the worker, so the client only joins the (far fewer) regions that cross
    block edges. Coverage simplification needs every neighbour of a polygon, so with
    ``simplify_m`` all regions are set aside for the join.
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
    done = merge_blocks([inner], grid, cleanup, occupants=np.empty(0, dtype=np.int64))
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
    classes: np.ndarray, read: object, block: Block, cleanup: Cleanup, nodata: int
) -> np.ndarray:
    """Sieve a block read with :func:`sieve_halo` around it, then cut the block out."""
    cleaned = sieve(classes, cleanup.sieve_pixels, nodata)
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
