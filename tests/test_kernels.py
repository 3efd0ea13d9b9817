from __future__ import annotations

import numpy as np
import pytest
import shapely
from rasterio import features
from rasterio.transform import Affine
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline import kernels
from pipeline.vectorize import SIEVE_PASSES

NODATA = 255
FOUR = ndimage.generate_binary_structure(2, 1)


def _order(keep: list[int]) -> np.ndarray:
    order = np.full(256, -1, dtype=np.int64)
    for i, v in enumerate(keep):
        order[v] = i
    return order


def _random_classes(shape: tuple[int, int], seed: int, kind: str, k: int = 3) -> np.ndarray:
    """Classes 0..k-1 of a given fragmentation, with scattered nodata."""
    rng = np.random.default_rng(seed)
    if kind == "noise":  # every pixel independent: mostly one-pixel regions and pinches
        classes = rng.integers(0, k, size=shape).astype(np.uint8)
    else:
        sigma = {"specks": 0.7, "patches": 1.5, "blobs": 4.0}[kind]
        field = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
        edges = np.quantile(field, np.linspace(0, 1, k + 1)[1:-1])
        classes = np.digitize(field, edges).astype(np.uint8)
    classes[rng.random(shape) < 0.04] = NODATA
    return classes


# --- labelling ----------------------------------------------------------------------------


def _reference_labels(classes: np.ndarray, keep: list[int]) -> np.ndarray:
    """scipy's labelling, one class at a time in ``keep`` order (the numbering we keep)."""
    labels = np.zeros(classes.shape, dtype=np.int32)
    n = 0
    for value in keep:
        lab, k = ndimage.label(classes == value, structure=FOUR)
        labels[lab > 0] = lab[lab > 0] + n
        n += k
    return labels


@pytest.mark.parametrize(
    ("dtype", "nodata"),
    [("uint16", 0.0), ("uint8", 255.0), ("int16", -9999.0), ("float32", -1.5), ("float64", None)],
)
def test_to_reflectance_is_numpys_scaling_and_masks(dtype: str, nodata: float | None) -> None:
    rng = np.random.default_rng(7)
    kind = np.dtype(dtype).kind
    if kind == "f":
        values = rng.normal(0, 3000, (30, 40)).astype(dtype)
        values[0, :3] = [np.nan, np.inf, -np.inf]
    else:
        info = np.iinfo(dtype)
        values = rng.integers(max(info.min, -3000), min(info.max, 3000), (30, 40)).astype(dtype)
    if nodata is not None:
        values[5, 5:9] = nodata
    # Into band 1 of a larger buffer, 3 rows down and 2 columns in: the rest stays untouched.
    out = np.full((3, 36, 45), -7.0, np.float32)
    valid = np.ones((36, 45), bool)
    valid[3 + 29, 2 + 39] = False  # a pixel another band already marked stays invalid
    valid[0, 0] = False  # and one outside the values' part
    kernels.to_reflectance(
        values,
        0.0 if nodata is None else nodata,
        nodata is not None,
        1e-4,
        -0.1,
        out,
        1,
        3,
        2,
        valid,
    )
    expected = np.full(out.shape, -7.0, np.float32)
    expected[1, 3:33, 2:42] = values.astype(np.float32) * np.float32(1e-4) + np.float32(-0.1)
    np.testing.assert_array_equal(out, expected)
    ok = np.ones(valid.shape, bool)
    ok[3:33, 2:42] = np.isfinite(values) & (values != nodata if nodata is not None else True)
    ok[3 + 29, 2 + 39] = False
    ok[0, 0] = False
    np.testing.assert_array_equal(valid, ok)
    assert not valid[3 + 5, 2 + 5 : 2 + 9].any() or nodata is None


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (768, 768), (3, 0)])
def test_count_values_equals_bincount(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(shape[1])
    kinds = np.array([0, 1, 2, 255], dtype=np.uint8)
    values = rng.choice(kinds, size=shape, p=[0.5, 0.3, 0.1, 0.1])
    counts = kernels.count_values(values)
    assert counts.dtype == np.int64 and counts.shape == (256,)
    np.testing.assert_array_equal(counts, np.bincount(values.ravel(), minlength=256))


@pytest.mark.parametrize("k", [2, 3, 6])
def test_scores_to_classes_is_argmax_and_rounded_softmax(k: int) -> None:
    rng = np.random.default_rng(k)
    scores = rng.normal(size=(2, k, 40, 50)).astype(np.float32)
    scores[1] *= 30  # confident pixels: probabilities near 100 %
    scores[0, :, 0, 0] = 1.5  # a tie: the first class wins, at 100 / k %
    valid = rng.random((2, 40, 50)) > 0.2
    valid[0, 0, 0] = True
    classes, confidence = kernels.scores_to_classes(scores, valid, 255)
    assert classes.dtype == confidence.dtype == np.uint8
    assert classes.shape == confidence.shape == (2, 40, 50)
    np.testing.assert_array_equal(classes == 255, ~valid)
    np.testing.assert_array_equal(confidence == 255, ~valid)
    np.testing.assert_array_equal(classes[valid], scores.argmax(axis=1)[valid])
    z = scores.astype(np.float64)
    prob = np.exp(z - z.max(axis=1, keepdims=True))
    percent = 100 * (prob / prob.sum(axis=1, keepdims=True)).max(axis=1)
    # float32 sums may round the other way only where the percentage is a half.
    differ = confidence[valid].astype(int) != np.round(percent[valid])
    assert (np.abs(percent[valid][differ] % 1 - 0.5) < 1e-3).all()
    assert classes[0, 0, 0] == 0 and confidence[0, 0, 0] == round(100 / k)


@pytest.mark.parametrize("kind", ["noise", "specks", "patches", "blobs"])
@pytest.mark.parametrize("keep", [[0, 1, 2], [2, 0], [1], [NODATA, 1]])
def test_label_regions_equals_scipy_per_class(kind: str, keep: list[int]) -> None:
    classes = _random_classes((47, 61), 3, kind)
    labels, n = kernels.label_regions(classes, _order(keep))
    expected = _reference_labels(classes, keep)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, expected)
    assert n == expected.max()


def test_label_regions_u_shapes_join_late() -> None:
    # Runs that only meet further down (a U, a comb, a spiral): union-find must join them.
    classes = np.zeros((9, 12), dtype=np.uint8)
    classes[0:8, 0] = classes[0:8, 3] = classes[7, 0:4] = 1  # a U
    classes[0:5, 6:12:2] = 1  # a comb's teeth...
    classes[5, 6:11] = 1  # ...joined at the bottom
    labels, n = kernels.label_regions(classes, _order([1]))
    np.testing.assert_array_equal(labels, _reference_labels(classes, [1]))
    assert n == 2


def test_region_stats_equal_bincount() -> None:
    rng = np.random.default_rng(4)
    classes = _random_classes((40, 33), 4, "patches")
    conf = rng.integers(0, 101, size=classes.shape).astype(np.uint8)
    labels, n = kernels.label_regions(classes, _order([0, 2]))
    pixels, conf_sum, conf_max, class_of, first = kernels.region_stats(labels, n, classes, conf)
    flat = labels.ravel()
    np.testing.assert_array_equal(pixels, np.bincount(flat, minlength=n + 1)[1:])
    np.testing.assert_array_equal(
        conf_sum, np.bincount(flat, weights=conf.ravel(), minlength=n + 1)[1:].astype(np.int64)
    )
    expected_max = np.zeros(n + 1, dtype=np.uint8)
    np.maximum.at(expected_max, flat, conf.ravel())
    np.testing.assert_array_equal(conf_max, expected_max[1:])
    _, first_idx = np.unique(flat, return_index=True)
    np.testing.assert_array_equal(first, first_idx[1:])
    np.testing.assert_array_equal(class_of, classes.ravel()[first_idx[1:]])
    assert (pixels.dtype, conf_sum.dtype, conf_max.dtype) == (np.int64, np.int64, np.uint8)


# --- ring tracing -------------------------------------------------------------------------


def _traced(labels: np.ndarray, col_off: int = 0, row_off: int = 0) -> list[list[np.ndarray]]:
    """Our polygons, as lists of rings, polygon i being label i + 1."""
    n = int(labels.max())
    coords, ring_offsets, poly_offsets = kernels.trace_polygons(labels, n, col_off, row_off)
    assert coords.dtype == np.int32 and coords.shape[1:] == (2,)
    assert len(poly_offsets) == n + 1 and poly_offsets[-1] == len(ring_offsets) - 1
    assert ring_offsets[-1] == len(coords)
    return [
        [
            coords[ring_offsets[j] : ring_offsets[j + 1]]
            for j in range(poly_offsets[i], poly_offsets[i + 1])
        ]
        for i in range(n)
    ]


def _gdal(labels: np.ndarray, col_off: int = 0, row_off: int = 0) -> dict[int, list[np.ndarray]]:
    """rasterio's (GDAL's) polygons of the same labels, by label."""
    out: dict[int, list[np.ndarray]] = {}
    shift = Affine.translation(col_off, row_off)
    for geom, value in features.shapes(labels, mask=labels > 0, connectivity=4, transform=shift):
        assert int(value) not in out  # one polygon per label
        out[int(value)] = [np.asarray(r, dtype=np.float64) for r in geom["coordinates"]]
    return out


def _assert_same_polygons(labels: np.ndarray, col_off: int = 0, row_off: int = 0) -> None:
    ours = _traced(labels, col_off, row_off)
    ref = _gdal(labels, col_off, row_off)
    assert len(ours) == len(ref)
    ours_geom = np.array([shapely.Polygon(r[0], r[1:]) for r in ours], dtype=object)
    ref_geom = np.array([shapely.Polygon(ref[i + 1][0], ref[i + 1][1:]) for i in range(len(ours))])
    assert shapely.is_valid(ours_geom).all()
    np.testing.assert_allclose(shapely.area(ours_geom), shapely.area(ref_geom), rtol=1e-9)
    assert shapely.equals(ours_geom, ref_geom).all()
    areas = np.bincount(labels.ravel(), minlength=len(ours) + 1)[1:]
    np.testing.assert_array_equal(shapely.area(ours_geom), areas)
    # Closed rings, a vertex only where the outline turns.
    for rings in ours:
        for ring in rings:
            assert (ring[0] == ring[-1]).all() and len(ring) >= 5
            d = np.diff(np.vstack([ring[-2:-1], ring]), axis=0)
            assert ((d[:, 0] == 0) != (d[:, 1] == 0)).all()  # unit axis steps, no zero steps
            assert ((d[1:] * d[:-1]).sum(axis=1) == 0).all()  # every vertex turns
    # In fact GDAL's output vertex for vertex: same start, direction and order of holes.
    for i, rings in enumerate(ours):
        assert len(rings) == len(ref[i + 1])
        for got, want in zip(rings, ref[i + 1], strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", ["noise", "specks", "patches", "blobs"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trace_matches_gdal_on_random_rasters(kind: str, seed: int) -> None:
    classes = _random_classes((53, 67), seed, kind, k=2 + seed)
    keep = list(range(2 + seed))[::-1]
    labels, _ = kernels.label_regions(classes, _order(keep))
    _assert_same_polygons(labels, col_off=2048 * seed, row_off=512)


def _ring(n: int, width: int = 1) -> np.ndarray:
    a = np.zeros((n, n), dtype=np.uint8)
    a[:width], a[-width:], a[:, :width], a[:, -width:] = 1, 1, 1, 1
    return a


def _tricky() -> dict[str, np.ndarray]:
    cases: dict[str, np.ndarray] = {}
    cases["one pixel"] = np.ones((1, 1), np.uint8)
    cases["one row"] = np.array([[1, 1, 0, 1, 2, 2, 0]], np.uint8)
    cases["one column"] = np.array([[1, 1, 0, 1, 2, 2, 0]], np.uint8).T.copy()
    cases["whole raster"] = np.ones((5, 4), np.uint8)
    cases["checkerboard"] = (np.indices((9, 8)).sum(axis=0) % 2).astype(np.uint8)
    cases["checkerboard of three"] = (np.indices((7, 10)).sum(axis=0) % 3).astype(np.uint8)
    diag = np.zeros((6, 6), np.uint8)
    diag[1:3, 1:3] = diag[3:5, 3:5] = 1  # two squares touching at one corner
    cases["diagonal squares"] = diag
    stair = np.zeros((8, 8), np.uint8)
    for i in range(8):
        stair[i, i] = 1  # a staircase of one-pixel regions, each touching the next at a corner
    stair[0, 1:] = 1  # the first joined to the top row
    cases["staircase"] = stair
    # A hole, pixel (1, 2), closed by a diagonal step: it touches the exterior at a corner.
    pinch = np.array([[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 1, 1], [0, 0, 0, 1]], np.uint8)
    cases["hole touching the exterior"] = pinch
    holes = np.ones((7, 7), np.uint8)
    holes[1:3, 1:3] = holes[3:5, 3:5] = 0  # two holes touching each other at a corner
    cases["holes touching holes"] = holes
    chain = np.ones((5, 5), np.uint8)
    for i in range(4):
        chain[i, i] = 0  # outside corner, then three holes, each touching the next
    cases["chain of touching holes"] = chain
    framed = (np.indices((9, 9)).sum(axis=0) % 2 == 0).astype(np.uint8)
    framed[0, :] = framed[-1, :] = framed[:, 0] = framed[:, -1] = 1
    cases["checkerboard in a frame"] = framed  # the frame touches its cells at corners
    nested = np.zeros((15, 15), np.uint8)
    nested[:] = _ring(15)
    nested[2:13, 2:13] = _ring(11) * 2
    nested[4:11, 4:11] = _ring(7)
    nested[6:9, 6:9] = 2  # rings of alternate classes inside each other's holes
    nested[7, 7] = 1
    cases["holes inside holes"] = nested
    frame = _ring(10, 2)
    frame[4:6, 4:6] = 1  # an island in the hole, same class
    frame[0, 0] = 0  # the frame's corner nibbled
    cases["frame with island"] = frame
    edges = np.zeros((6, 9), np.uint8)
    edges[0, :] = 1
    edges[:, 0] = 2
    edges[-1, 3:] = 1
    edges[2:, -1] = 3
    cases["regions along the edges"] = edges
    spiral = np.zeros((11, 11), np.uint8)
    spiral[0, :] = spiral[:, 10] = spiral[10, :] = spiral[2:, 0] = 1
    spiral[2, 0:9] = spiral[2:9, 8] = spiral[8, 2:9] = spiral[4:9, 2] = 1
    spiral[4, 2:7] = spiral[4:7, 6] = 1
    cases["spiral"] = spiral
    masked = _random_classes((20, 25), 9, "noise", k=2)
    masked[5:15, 5:20] = NODATA  # a nodata hole: holes in many polygons, never a polygon
    cases["nodata mask"] = masked
    return cases


@pytest.mark.parametrize("name", list(_tricky()))
def test_trace_matches_gdal_on_tricky_shapes(name: str) -> None:
    classes = _tricky()[name]
    for keep in ([1], [0, 1, 2, 3]):
        labels, _ = kernels.label_regions(classes, _order(keep))
        _assert_same_polygons(labels, col_off=7, row_off=3)


def test_pinch_rings_touch_instead_of_crossing() -> None:
    classes = _tricky()["hole touching the exterior"]
    labels, _ = kernels.label_regions(classes, _order([1]))
    (poly,) = _traced(labels)
    assert len(poly) == 2  # exterior and the hole, meeting at one corner
    shell, hole = shapely.LinearRing(poly[0]), shapely.LinearRing(poly[1])
    assert shell.is_simple and hole.is_simple
    assert shapely.intersection(shell, hole).geom_type == "Point"


def test_trace_nothing_labelled() -> None:
    coords, ring_offsets, poly_offsets = kernels.trace_polygons(np.zeros((4, 5), np.int32), 0, 0, 0)
    assert coords.shape == (0, 2)
    np.testing.assert_array_equal(ring_offsets, [0])
    np.testing.assert_array_equal(poly_offsets, [0])


def test_trace_refuses_a_label_in_two_pieces() -> None:
    labels = np.zeros((3, 3), np.int32)
    labels[0, 0] = labels[2, 2] = 1
    with pytest.raises(ValueError, match="4-connected"):
        kernels.trace_polygons(labels, 1, 0, 0)


# --- sieve --------------------------------------------------------------------------------


def _reference_sieve(classes: np.ndarray, size: int, nodata: int) -> np.ndarray:
    """The sieve as first written in numpy and scipy (pipeline/vectorize.py before numba)."""
    if size <= 1:
        return classes
    labels = np.zeros(classes.shape, dtype=np.int32)
    n = 0
    for value in np.unique(classes):
        if value == nodata:
            continue
        lab, k = ndimage.label(classes == value, structure=FOUR)
        labels[lab > 0] = lab[lab > 0] + n
        n += k
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=n + 1).astype(np.int64)
    sizes[0] = 0
    if n == 0 or not (sizes[1:] < size).any():
        return classes
    region_class = np.zeros(n + 1, dtype=np.uint8)
    region_class[flat] = classes.ravel()
    small_px = (sizes < size)[labels]
    small_px[labels == 0] = False
    keys = []
    for a_sl, b_sl in (
        ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
        ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
    ):
        la, lb = labels[a_sl], labels[b_sl]
        edge = np.nonzero((small_px[a_sl] | small_px[b_sl]) & (la != lb) & (la > 0) & (lb > 0))
        lo, hi = np.minimum(la[edge], lb[edge]), np.maximum(la[edge], lb[edge])
        keys.append(lo.astype(np.int64) * (n + 1) + hi)
    pair, count = np.unique(np.concatenate(keys), return_counts=True)
    lo, hi = pair // (n + 1), pair % (n + 1)
    ea, eb, count = np.concatenate([lo, hi]), np.concatenate([hi, lo]), np.concatenate([count] * 2)
    group = np.arange(n + 1)
    gclass = region_class.copy()
    for _ in range(SIEVE_PASSES):
        gsize = np.bincount(group, weights=sizes, minlength=n + 1)
        small = gsize < size
        small[0] = False
        ga, gb = group[ea], group[eb]
        pick = (ga != gb) & small[ga]
        ga, gb, cnt = ga[pick], gb[pick], count[pick]
        if ga.size == 0:
            break
        into_large = ~small[gb]
        has_large = np.zeros(n + 1, dtype=bool)
        has_large[ga[into_large]] = True
        use = into_large | ~has_large[ga]
        key = ga[use] * 256 + gclass[gb[use]]
        uniq, inverse = np.unique(key, return_inverse=True)
        total = np.bincount(inverse, weights=cnt[use])
        g_of, c_of = uniq // 256, uniq % 256
        order = np.lexsort((c_of, -total, g_of))
        g_of, c_of = g_of[order], c_of[order]
        first = np.r_[True, g_of[1:] != g_of[:-1]]
        gclass[g_of[first]] = c_of[first]
        ga, gb = group[ea], group[eb]
        same = (ga != gb) & (gclass[ga] == gclass[gb])
        if same.any():
            graph = coo_matrix(
                (np.ones(int(same.sum()), dtype=np.int8), (ga[same], gb[same])),
                shape=(n + 1, n + 1),
            )
            _, comp = connected_components(graph, directed=False)
            rep = np.full(int(comp.max()) + 1, n + 1, dtype=np.int64)
            np.minimum.at(rep, comp, np.arange(n + 1))
            group = rep[comp][group]
    out = gclass[group][labels]
    out[labels == 0] = classes[labels == 0]
    return out


@pytest.mark.parametrize("kind", ["noise", "specks", "patches", "blobs"])
@pytest.mark.parametrize("size", [2, 5, 16, 40])
def test_sieve_equals_reference(kind: str, size: int) -> None:
    for seed in range(3):
        classes = _random_classes((61, 58), seed, kind, k=3 + seed % 2)
        expected = _reference_sieve(classes, size, NODATA)
        got, sieved = kernels.sieve_regions(classes, size, NODATA, SIEVE_PASSES)
        assert sieved == (expected is not classes)
        np.testing.assert_array_equal(got, expected)


def test_sieve_nodata_outside_the_classes() -> None:
    # A nodata value no pixel can hold: every pixel is a class and may be sieved.
    classes = _random_classes((30, 30), 5, "specks")
    classes[classes == NODATA] = 3
    got, sieved = kernels.sieve_regions(classes, 6, -1, SIEVE_PASSES)
    assert sieved
    np.testing.assert_array_equal(got, _reference_sieve(classes, 6, -1))


def test_sieve_without_small_regions_returns_its_input() -> None:
    classes = np.zeros((8, 8), np.uint8)
    classes[:, 4:] = 1
    got, sieved = kernels.sieve_regions(classes, 5, NODATA, SIEVE_PASSES)
    assert not sieved and got is classes


# --- joining pieces across block edges ----------------------------------------------------


def _joined_by_blocks(
    labels: np.ndarray, step: int, backwards: bool = False, times: int = 1
) -> tuple[list[shapely.Polygon], np.ndarray]:
    """Trace each ``step``-sized block on its own, then join each label's pieces.

    ``backwards`` gives the join every ring the other way round; ``times`` lists each piece
    that many times in its group.
    """
    h, w = labels.shape
    n = int(labels.max())
    coords, rings, polys, owner = [], [0], [0], []
    for r in range(0, h, step):
        for c in range(0, w, step):
            block = labels[r : r + step, c : c + step]
            pieces = np.zeros(block.shape, np.int32)
            count = 0
            for lab in np.unique(block[block > 0]):
                part, k = ndimage.label(block == lab, FOUR)
                pieces[part > 0] = part[part > 0] + count
                owner += [lab] * k
                count += k
            xy, ring_offsets, poly_offsets = kernels.trace_polygons(pieces, count, c, r)
            if backwards:
                for lo, hi in zip(ring_offsets[:-1], ring_offsets[1:], strict=True):
                    xy[lo:hi] = xy[lo:hi][::-1].copy()
            polys += list(poly_offsets[1:] + len(rings) - 1)
            rings += list(ring_offsets[1:] + sum(len(x) for x in coords))
            coords.append(xy)
    owner_a = np.repeat(np.asarray(owner), times)
    members = np.argsort(owner_a, kind="stable").astype(np.int64) // times
    group_offsets = np.concatenate([[0], np.cumsum(np.bincount(owner_a, minlength=n + 1)[1:])])
    cut_x = np.zeros(w + 1, np.bool_)
    cut_y = np.zeros(h + 1, np.bool_)
    cut_x[step:w:step] = True
    cut_y[step:h:step] = True
    out, out_rings, out_polys, ok = kernels.join_pieces(
        np.concatenate(coords),
        np.asarray(rings, np.int64),
        np.asarray(polys, np.int64),
        group_offsets.astype(np.int64),
        members,
        cut_x,
        cut_y,
    )
    joined = [
        [out[out_rings[j] : out_rings[j + 1]] for j in range(out_polys[i], out_polys[i + 1])]
        for i in range(n)
    ]
    return joined, ok


def _assert_joins_to_whole(labels: np.ndarray, step: int, backwards: bool = False) -> None:
    joined, ok = _joined_by_blocks(labels, step, backwards)
    assert ok.all()
    whole = _traced(labels)
    for got, want in zip(joined, whole, strict=True):
        # Vertex for vertex: same rings, same start, same way round, holes in the same order.
        assert len(got) == len(want)
        for g, h in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, h)


@pytest.mark.parametrize("name", list(_tricky()))
@pytest.mark.parametrize("step", [1, 2, 3])
def test_join_pieces_rebuilds_the_whole_trace_on_tricky_shapes(name: str, step: int) -> None:
    labels, _ = kernels.label_regions(_tricky()[name], _order([0, 1, 2, 3]))
    _assert_joins_to_whole(labels, step)


@pytest.mark.parametrize("kind", ["noise", "specks", "patches", "blobs"])
@pytest.mark.parametrize("step", [4, 7, 16])
def test_join_pieces_rebuilds_the_whole_trace_on_random_rasters(kind: str, step: int) -> None:
    classes = _random_classes((45, 52), 3, kind)
    labels, _ = kernels.label_regions(classes, _order([2, 0, 1]))
    _assert_joins_to_whole(labels, step)


@pytest.mark.parametrize("step", [4, 7])
def test_join_pieces_reads_rings_given_the_other_way_round(step: int) -> None:
    classes = _random_classes((45, 52), 5, "patches")
    labels, _ = kernels.label_regions(classes, _order([0, 1, 2]))
    _assert_joins_to_whole(labels, step, backwards=True)


def test_join_pieces_reports_pieces_that_overlap_instead_of_writing_past_its_arrays() -> None:
    labels = np.ones((4, 4), np.int32)
    joined, ok = _joined_by_blocks(labels, 2, times=1)
    assert ok.all() and len(joined[0]) == 1
    # Each 2×2 piece twice: twice the unit steps the cut lines can hold.
    joined, ok = _joined_by_blocks(labels, 2, times=2)
    assert not ok[0] and joined[0] == []


def test_join_pieces_reports_pieces_that_do_not_touch() -> None:
    labels = np.zeros((4, 4), np.int32)
    labels[0, 0] = labels[3, 3] = 1  # one "region" in two pieces far apart: not joinable
    joined, ok = _joined_by_blocks(labels, 2)
    assert not ok[0] and joined[0] == []


# --- WKB and measures ---------------------------------------------------------------------

#: Grid transforms: UTM 10 m, degrees, and a rotated one with fractions everywhere.
_TRANSFORMS = [
    (10.0, 0.0, 399960.0, 0.0, -10.0, 4200000.0),
    (0.00017966, 0.0, -118.45, 0.0, -0.00017966, 34.3),
    (10.3, 0.7, 399960.123, -0.4, -9.7, 4200000.77),
]


def _traced_patches(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Traced polygons of a fragmented raster, holes included, off the grid's origin."""
    classes = _random_classes((61, 47), seed, "patches")
    labels, n = kernels.label_regions(classes, _order([0, 1, 2]))
    coords, ring_offsets, poly_offsets = kernels.trace_polygons(labels, n, 3, 7)
    assert (np.diff(poly_offsets) > 1).any(), "the test needs polygons with holes"
    return coords, ring_offsets, poly_offsets


def _parsed(coords, ring_offsets, poly_offsets, transform: np.ndarray) -> np.ndarray:
    buf, offsets = kernels.polygon_wkb(coords, ring_offsets, poly_offsets, transform)
    return np.array([buf[a:b].tobytes() for a, b in zip(offsets[:-1], offsets[1:], strict=True)])


@pytest.mark.parametrize("transform", _TRANSFORMS)
def test_polygon_measures_equal_geos_bit_for_bit(transform: tuple[float, ...]) -> None:
    t = np.array(transform)
    coords, ring_offsets, poly_offsets = _traced_patches(4)
    geoms = shapely.from_wkb(_parsed(coords, ring_offsets, poly_offsets, t))
    area, length = kernels.polygon_measures(coords, ring_offsets, poly_offsets, t)
    np.testing.assert_array_equal(area, shapely.area(geoms))
    np.testing.assert_array_equal(length, shapely.length(geoms))


@pytest.mark.parametrize("part", [1, 5, 16, 100])
def test_polygon_wkb_parts_make_the_whole_wkb(part: int) -> None:
    t = np.array(_TRANSFORMS[2])
    coords, ring_offsets, poly_offsets = _traced_patches(5)
    whole = _parsed(coords, ring_offsets, poly_offsets, t)
    for p, wkb in enumerate(whole):
        pieces = [
            kernels.polygon_wkb_part(
                coords, ring_offsets, poly_offsets, t, p, lo, min(len(wkb), lo + part)
            ).tobytes()
            for lo in range(0, len(wkb), part)
        ]
        assert b"".join(pieces) == wkb


def test_every_kernel_loads_from_the_cache_in_a_new_process():
    """Once compiled (scripts/setup-env does it), no process compiles a kernel again.

    A kernel that calls an ``inline="always"`` function was compiled again in every process
    (numba found no entry for it in its own cache index): 15 s of each worker's set-up.
    """
    import os
    import subprocess
    import sys

    env = os.environ | {"NUMBA_DEBUG_CACHE": "1"}
    command = [sys.executable, "-m", "pipeline.kernels"]
    subprocess.run(command, env=env, capture_output=True, check=True, timeout=600)
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    saved = [line for line in again.stdout.splitlines() if "data saved" in line]
    assert saved == []
    assert any("data loaded" in line for line in again.stdout.splitlines())
