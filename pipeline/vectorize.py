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
from dataclasses import dataclass

import numpy as np
import pyproj
import shapely
from affine import Affine
from rasterio import features
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.grid import Block, Grid

_FOUR = ndimage.generate_binary_structure(2, 1)


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


def sieve(classes: np.ndarray, size: int, nodata: int) -> np.ndarray:
    """Replace regions of fewer than ``size`` pixels by their neighbours' majority class.

    Regions are 4-connected; the replacement is the class held by most 4-neighbour pixel
    pairs across the region's edge that lead into regions of at least ``size`` pixels (into
    any region if there are none; nodata neighbours ignored, ties to the smaller class). A
    region with no valid neighbour stays. Nodata is never sieved and never spreads. The result
    depends only on each region and its neighbours, so blocks with a halo of ``2 * size`` get
    exactly what the whole raster gets.
    """
    if size <= 1:
        return classes
    labels, _ = _label_all(classes, nodata)
    sizes = np.bincount(labels.ravel())
    small = sizes < size
    small[0] = False
    if not small[labels].any():
        return classes
    # Neighbours in large regions decide; only a region with small neighbours alone takes
    # theirs. (Two adjacent specks would otherwise just swap classes.)
    large_keys, small_keys = [], []
    for a, b, cb in _neighbour_pairs(labels, classes):
        pick = small[a] & (a != b) & (cb != nodata)
        into_large = pick & ~small[b]
        large_keys.append(a[into_large].astype(np.int64) * 256 + cb[into_large])
        small_keys.append(a[pick & ~into_large].astype(np.int64) * 256 + cb[pick & ~into_large])
    from_large = np.concatenate(large_keys)
    from_small = np.concatenate(small_keys)
    decided = np.zeros(len(sizes), dtype=bool)
    decided[from_large // 256] = True
    key, count = np.unique(
        np.concatenate([from_large, from_small[~decided[from_small // 256]]]), return_counts=True
    )
    if key.size == 0:  # every small region is surrounded by nodata
        return classes
    label_of, class_of = key // 256, (key % 256).astype(np.uint8)
    # Most adjacencies first, then the smaller class: the first row per label is the winner.
    order = np.lexsort((class_of, -count, label_of))
    label_of, class_of = label_of[order], class_of[order]
    first = np.r_[True, label_of[1:] != label_of[:-1]]
    replacement = np.arange(len(sizes), dtype=np.int64)  # identity marker: "keep"
    value = np.zeros(len(sizes), dtype=np.uint8)
    replacement[label_of[first]] = -1
    value[label_of[first]] = class_of[first]
    out = classes.copy()
    change = replacement[labels] == -1
    out[change] = value[labels[change]]
    return out


def _label_all(classes: np.ndarray, nodata: int) -> tuple[np.ndarray, int]:
    """Label every 4-connected region of every class (nodata stays 0)."""
    labels = np.zeros(classes.shape, dtype=np.int32)
    n = 0
    for value in np.unique(classes):
        if value == nodata:
            continue
        lab, k = ndimage.label(classes == value, structure=_FOUR)
        inside = lab > 0
        labels[inside] = lab[inside] + n
        n += k
    return labels, n


def _neighbour_pairs(
    labels: np.ndarray, classes: np.ndarray
) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(label, neighbour label, neighbour class) for every 4-neighbour pixel pair."""
    for a_sl, b_sl in (
        ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
        ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
        ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
        ((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
    ):
        yield labels[a_sl].ravel(), labels[b_sl].ravel(), classes[b_sl].ravel()


def label_regions(classes: np.ndarray, keep: Iterable[int]) -> np.ndarray:
    """Label each 4-connected region of a kept class with its own positive int32 id."""
    labels = np.zeros(classes.shape, dtype=np.int32)
    next_id = 0
    for value in keep:
        lab, n = ndimage.label(classes == value, structure=_FOUR)
        if n:
            inside = lab > 0
            labels[inside] = lab[inside] + next_id
            next_id += n
    return labels


def polygonize_block(
    classes: np.ndarray,
    confidence: np.ndarray,
    block: Block,
    grid_width: int,
    keep: Sequence[int],
) -> BlockPolygons:
    """Polygonize one (already cleaned) block of classes, in global pixel coordinates."""
    labels = label_regions(classes, keep)
    n = int(labels.max())
    flat = labels.ravel()
    pixels = np.bincount(flat, minlength=n + 1)[1:]
    conf = confidence.astype(np.int64).ravel()
    conf_sum = np.bincount(flat, weights=conf, minlength=n + 1)[1:].astype(np.int64)
    conf_max = np.zeros(n + 1, dtype=np.uint8)
    np.maximum.at(conf_max, flat, confidence.ravel())
    class_of = np.zeros(n + 1, dtype=np.uint8)
    class_of[flat] = classes.ravel()  # every pixel of a label has the same class
    first_local = np.zeros(n + 1, dtype=np.int64)
    uniq, idx = np.unique(flat, return_index=True)  # first occurrence in row-major order
    first_local[uniq] = idx
    rows, cols = np.divmod(first_local[1:], block.width)
    first_index = (rows + block.row_off) * grid_width + cols + block.col_off

    coords: list[np.ndarray] = []
    ring_sizes: list[int] = []
    rings: list[int] = []
    label_list: list[int] = []
    if n:
        shift = Affine.translation(block.col_off, block.row_off)
        for geom, value in features.shapes(
            labels, mask=labels > 0, connectivity=4, transform=shift
        ):
            label_list.append(int(value))
            rings.append(len(geom["coordinates"]))
            for ring in geom["coordinates"]:
                coords.append(np.asarray(ring, dtype=np.float64))
                ring_sizes.append(len(ring))
    return BlockPolygons(
        block=block,
        class_value=class_of[1:],
        pixels=pixels.astype(np.int64),
        conf_sum=conf_sum,
        conf_max=conf_max[1:],
        first_index=first_index.astype(np.int64),
        label=np.asarray(label_list, dtype=np.int32),
        coords=np.concatenate(coords) if coords else np.zeros((0, 2)),
        ring_offsets=np.concatenate([[0], np.cumsum(ring_sizes)]).astype(np.int64),
        poly_offsets=np.concatenate([[0], np.cumsum(rings)]).astype(np.int64),
        top=labels[0].copy(),
        bottom=labels[-1].copy(),
        left=labels[:, 0].copy(),
        right=labels[:, -1].copy(),
    )


def merge_blocks(parts: Sequence[BlockPolygons], grid: Grid, cleanup: Cleanup) -> Polygons:
    """Join regions across block edges, apply the grid's transform and the clean-up."""
    parts = [p for p in parts if len(p.class_value)]
    if not parts:
        return _empty()
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
    geoms = np.empty(total, dtype=object)
    for i, p in enumerate(parts):
        built = shapely.from_ragged_array(
            shapely.GeometryType.POLYGON, p.coords, (p.ring_offsets, p.poly_offsets)
        )
        geoms[p.label.astype(np.int64) - 1 + offsets[i]] = built
    merged = np.empty(n_groups, dtype=object)
    sizes = np.bincount(group, minlength=n_groups)
    single = sizes[group] == 1
    merged[group[single]] = geoms[single]
    multi = np.flatnonzero(sizes > 1)
    if multi.size:
        order = np.argsort(group, kind="stable")
        starts = np.searchsorted(group[order], multi)
        for g, st in zip(multi, starts, strict=True):
            # Pixel coordinates are integers, so the union of edge-sharing pieces is exact.
            merged[g] = shapely.union_all(geoms[order[st : st + sizes[g]]])

    # Stable ids: raster order of each polygon's first pixel, whatever the block size.
    rank = np.argsort(first, kind="stable")
    merged, pixels, conf_sum = merged[rank], pixels[rank], conf_sum[rank]
    conf_max, group_class = conf_max[rank], group_class[rank]
    instance_id = np.arange(1, n_groups + 1, dtype=np.int64)

    geometry = shapely.transform(merged, _to_crs(grid))
    geometry = _fill_holes(geometry, grid, cleanup.fill_holes_m2)
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


def _fill_holes(geometry: np.ndarray, grid: Grid, max_m2: float) -> np.ndarray:
    """Fill interior rings smaller than ``max_m2`` that hold no other polygon."""
    if max_m2 <= 0 or len(geometry) == 0:
        return geometry
    n_holes = shapely.get_num_interior_rings(geometry)
    candidates = np.flatnonzero(n_holes > 0)
    if candidates.size == 0:
        return geometry
    tree = shapely.STRtree(geometry)
    points = shapely.point_on_surface(geometry)
    out = geometry.copy()
    for i in candidates:
        poly = geometry[i]
        holes = [shapely.Polygon(r) for r in poly.interiors]
        areas = area_m2(np.array(holes, dtype=object), grid)
        kept = []
        for ring, hole, a in zip(poly.interiors, holes, areas, strict=True):
            inside = tree.query(hole, predicate="contains_properly")
            occupied = any(j != i and shapely.contains_properly(hole, points[j]) for j in inside)
            if a >= max_m2 or occupied:
                kept.append(ring)
        if len(kept) != len(poly.interiors):
            out[i] = shapely.Polygon(poly.exterior, kept)
    return out


def _simplify(geometry: np.ndarray, grid: Grid, tolerance_m: float) -> np.ndarray:
    """Simplify the polygons as one coverage, so shared edges stay shared (no gaps, overlaps)."""
    crs = pyproj.CRS.from_wkt(grid.crs_wkt)
    tolerance = tolerance_m
    if crs.is_geographic:
        _, bottom, _, top = grid.bounds
        tolerance = tolerance_m / (111_320.0 * np.cos(np.radians((bottom + top) / 2)))
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
    parts = []
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
        parts.append(polygonize_block(cleaned, conf, block, grid.width, keep))
    return merge_blocks(parts, grid, cleanup)


def sieve_halo(cleanup: Cleanup) -> int:
    """Pixels of context a block needs so the sieve decides every region exactly.

    A small region touching the block lies within ``sieve_pixels`` of it, and whether each of
    its neighbours is small is decided within ``sieve_pixels`` further out.
    """
    return 2 * cleanup.sieve_pixels if cleanup.sieve_pixels > 1 else 0


def clean_window(
    classes: np.ndarray, read: object, block: Block, cleanup: Cleanup, nodata: int
) -> np.ndarray:
    """Sieve a block read with :func:`sieve_halo` around it, then cut the block out."""
    cleaned = sieve(classes, cleanup.sieve_pixels, nodata)
    top = block.row_off - int(read.row_off)  # type: ignore[attr-defined]
    left = block.col_off - int(read.col_off)  # type: ignore[attr-defined]
    return cleaned[top : top + block.height, left : left + block.width]


def clean_classes(classes: np.ndarray, sieve_pixels: int, nodata: int) -> np.ndarray:
    """Sieve a whole in-memory class raster (see :func:`sieve`)."""
    return sieve(classes, sieve_pixels, nodata)


def _empty() -> Polygons:
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
