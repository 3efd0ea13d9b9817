"""Compiled per-block kernels of the vectorizer: labelling, region statistics, sieve, ring tracing.

These are the pixel loops of :mod:`pipeline.vectorize` (which keeps the rules and documents
them), compiled with numba: on a 2048² block each step takes a quarter to a tenth of the time
the numpy, scipy and ``rasterio.features.shapes`` versions took.

* :func:`label_regions` labels the 4-connected regions of every selected class in one
  union-find pass, numbered by class rank, then raster order of each region's first pixel.
* :func:`region_stats` gathers pixel count, confidence sum and maximum, class and first pixel
  of every label in one pass.
* :func:`sieve_regions` runs the sieve of :func:`pipeline.vectorize.sieve` on the graph of
  regions (sizes, classes, pixel pairs between touching regions).
* :func:`trace_polygons` walks the outline of every label into closed rings, exactly the
  polygons GDAL's polygonize gives with 4-connectivity, without a Python object per vertex.

Inputs are C-contiguous arrays of fixed dtypes (uint8 classes and confidence, int32 labels),
so each kernel compiles once. The compiled code is cached on disk (``cache=True``, in
``pipeline/__pycache__``, or numba's user cache directory or ``NUMBA_CACHE_DIR`` where that is
read-only): the first use after installing or editing this file compiles for about 10 s (on a
2-core machine); every later process loads the cache once, in about 0.3 s, never per block.
"""

from __future__ import annotations

import numba
import numpy as np

#: Steps of the four directions, clockwise on screen (x right, y down): E, S, W, N.
_DX = np.array([1, 0, -1, 0], dtype=np.int64)
_DY = np.array([0, 1, 0, -1], dtype=np.int64)


@numba.njit(cache=True, inline="always")
def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression keeps later finds short
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@numba.njit(cache=True, inline="always")
def _union_min(parent: np.ndarray, a: int, b: int) -> None:
    ra = _find(parent, a)
    rb = _find(parent, b)
    # The smaller (earlier) label stays the root: roots then come in raster order.
    if ra < rb:
        parent[rb] = ra
    elif rb < ra:
        parent[ra] = rb


@numba.njit(cache=True)
def label_regions(classes: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, int]:
    """Label 4-connected regions of classes with ``rank[class] >= 0``: (int32 labels, count)."""
    labels, count, _, _ = _label(classes, rank)
    return labels, count


@numba.njit(cache=True)
def _label(classes: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    h, w = classes.shape
    labels = np.zeros((h, w), dtype=np.int32)
    # One provisional label per run start at most; np.empty costs only the pages touched.
    parent = np.empty(h * w + 1, dtype=np.int32)
    pclass = np.empty(h * w + 1, dtype=np.uint8)
    n = 0
    for r in range(h):
        for c in range(w):
            v = classes[r, c]
            if rank[v] < 0:
                continue
            same_left = c > 0 and classes[r, c - 1] == v
            same_up = r > 0 and classes[r - 1, c] == v
            if same_left:
                lab = labels[r, c - 1]
                # With the up-left pixel of the class too, up and left are already joined.
                if same_up and not classes[r - 1, c - 1] == v:
                    _union_min(parent, labels[r - 1, c], lab)
            elif same_up:
                lab = labels[r - 1, c]
            else:
                n += 1
                parent[n] = n
                pclass[n] = v
                lab = n
            labels[r, c] = lab
    # Final numbering: by class rank, then by the raster order of each region's first pixel.
    per_rank = np.zeros(257, dtype=np.int64)
    count = 0
    for i in range(1, n + 1):
        if parent[i] == i:
            per_rank[rank[pclass[i]] + 1] += 1
            count += 1
    for k in range(1, 257):
        per_rank[k] += per_rank[k - 1]
    final = np.empty(n + 1, dtype=np.int32)
    final[0] = 0
    region_class = np.zeros(count + 1, dtype=np.uint8)
    for i in range(1, n + 1):
        root = _find(parent, i)
        if root == i:
            per_rank[rank[pclass[i]]] += 1
            final[i] = per_rank[rank[pclass[i]]]
            region_class[final[i]] = pclass[i]
        else:
            final[i] = final[root]  # the root is smaller, so already numbered
    sizes = np.zeros(count + 1, dtype=np.int64)
    for r in range(h):
        for c in range(w):
            lab = labels[r, c]
            if lab:
                lab = final[lab]
                labels[r, c] = lab
                sizes[lab] += 1
    return labels, count, sizes, region_class


@numba.njit(cache=True)
def region_stats(
    labels: np.ndarray, n: int, classes: np.ndarray, confidence: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per label 1..n: pixels, confidence sum and max, class, flat index of the first pixel."""
    h, w = labels.shape
    pixels = np.zeros(n, dtype=np.int64)
    conf_sum = np.zeros(n, dtype=np.int64)
    conf_max = np.zeros(n, dtype=np.uint8)
    class_of = np.zeros(n, dtype=np.uint8)
    first = np.full(n, -1, dtype=np.int64)
    for r in range(h):
        for c in range(w):
            lab = labels[r, c] - 1
            if lab < 0:
                continue
            if first[lab] < 0:
                first[lab] = r * w + c
                class_of[lab] = classes[r, c]
            pixels[lab] += 1
            q = confidence[r, c]
            conf_sum[lab] += q
            if q > conf_max[lab]:
                conf_max[lab] = q
    return pixels, conf_sum, conf_max, class_of, first


@numba.njit(cache=True)
def sieve_regions(
    classes: np.ndarray, size: int, nodata: int, passes: int
) -> tuple[np.ndarray, bool]:
    """The sieve of :func:`pipeline.vectorize.sieve`: (classes after it, whether any was small)."""
    h, w = classes.shape
    # All classes in one numbering, raster order: touching regions get nearby ids, which
    # keeps the per-region arrays below cache-friendly.
    rank = np.zeros(256, dtype=np.int64)
    if 0 <= nodata < 256:
        rank[nodata] = -1
    labels, n, sizes, region_class = _label(classes, rank)
    small = np.zeros(n + 1, dtype=np.bool_)
    n_small = 0
    for i in range(1, n + 1):
        if sizes[i] < size:
            small[i] = True
            n_small += 1
    if n_small == 0:
        return classes, False

    # Regions only grow, so every decision and merge involves a region small from the start:
    # the pixel pairs touching one are all the region graph needs. A region has at most four
    # pairs per pixel, which bounds each small region's slice of the neighbour list.
    start = np.zeros(n + 2, dtype=np.int64)
    for i in range(1, n + 1):
        start[i + 1] = start[i] + (4 * sizes[i] if small[i] else 0)
    fill = start[:-1].copy()
    nbr = np.empty(start[n + 1], dtype=np.int32)
    for r in range(h):
        for c in range(w):
            a = labels[r, c]
            if a == 0:
                continue
            if c + 1 < w:
                b = labels[r, c + 1]
                if b != a and b != 0:
                    if small[a]:
                        nbr[fill[a]] = b
                        fill[a] += 1
                    if small[b]:
                        nbr[fill[b]] = a
                        fill[b] += 1
            if r + 1 < h:
                b = labels[r + 1, c]
                if b != a and b != 0:
                    if small[a]:
                        nbr[fill[a]] = b
                        fill[a] += 1
                    if small[b]:
                        nbr[fill[b]] = a
                        fill[b] += 1
    # Each small region's neighbours, once each, with the pixel pairs between them.
    adj_start = np.zeros(n + 2, dtype=np.int64)
    adj_nb = np.empty(start[n + 1], dtype=np.int32)
    adj_cnt = np.empty(start[n + 1], dtype=np.int32)
    stamp = np.zeros(n + 1, dtype=np.int32)
    slot = np.empty(n + 1, dtype=np.int64)
    roots = np.empty(n_small, dtype=np.int32)
    m = 0
    k = 0
    for a in range(1, n + 1):
        adj_start[a] = m
        if not small[a]:
            continue
        roots[k] = a
        k += 1
        for j in range(start[a], fill[a]):
            b = nbr[j]
            if stamp[b] != a:
                stamp[b] = a
                slot[b] = m
                adj_nb[m] = b
                adj_cnt[m] = 1
                m += 1
            else:
                adj_cnt[slot[b]] += 1
    adj_start[n + 1] = m

    # Groups of merged regions: union-find roots carry size and class; members form a linked
    # list, so a small group can gather its members' neighbours. A small group holds only
    # regions small from the start, whose neighbour lists are complete.
    parent = np.arange(n + 1).astype(np.int32)
    gsize = sizes
    gclass = region_class
    tail = np.arange(n + 1).astype(np.int32)
    nxt = np.full(n + 1, -1, dtype=np.int32)
    into_large = np.zeros(256, dtype=np.int64)
    into_any = np.zeros(256, dtype=np.int64)
    seen = np.zeros(256, dtype=np.int64)
    touched = np.empty(256, dtype=np.int64)
    changed = np.empty(n_small, dtype=np.int32)
    new_class = np.empty(n_small, dtype=np.uint8)
    members = np.empty(n_small, dtype=np.int32)
    n_roots = n_small  # roots[:n_roots]: the groups still small, from the last pass
    visit = 0
    for _ in range(passes):
        kept = 0
        n_dec = 0
        for t in range(n_roots):
            g = roots[t]
            if parent[g] != g or gsize[g] >= size:
                continue
            roots[kept] = g
            kept += 1
            visit += 1
            n_touched = 0
            has_large = False
            mem = g
            while mem != -1:
                for j in range(adj_start[mem], adj_start[mem + 1]):
                    other = _find(parent, adj_nb[j])
                    if other == g:
                        continue
                    cls = gclass[other]
                    if seen[cls] != visit:
                        seen[cls] = visit
                        touched[n_touched] = cls
                        n_touched += 1
                    if gsize[other] >= size:
                        into_large[cls] += adj_cnt[j]
                        has_large = True
                    else:
                        into_any[cls] += adj_cnt[j]
                mem = nxt[mem]
            if n_touched == 0:
                continue
            # Neighbours in large regions decide; only a group with small neighbours alone
            # takes theirs. Most pixel pairs wins, ties to the smaller class.
            best = -1
            best_cls = 0
            for i in range(n_touched):
                cls = touched[i]
                total = into_large[cls] if has_large else into_any[cls]
                if total > best or (total == best and cls < best_cls):
                    best = total
                    best_cls = cls
                into_large[cls] = 0
                into_any[cls] = 0
            if best_cls != gclass[g]:
                changed[n_dec] = g
                new_class[n_dec] = best_cls
                n_dec += 1
        n_roots = kept
        if n_dec == 0:
            break  # nothing changes class, so nothing new touches its own class
        # All groups decide at once, on the classes before the pass. Only a group that
        # changed class can now touch another of its class: merge along its members' pairs.
        n_mem = 0
        for t in range(n_dec):
            g = changed[t]
            gclass[g] = new_class[t]
            mem = g
            while mem != -1:
                members[n_mem] = mem
                n_mem += 1
                mem = nxt[mem]
        for t in range(n_mem):
            a = members[t]
            for j in range(adj_start[a], adj_start[a + 1]):
                ra = _find(parent, a)
                rb = _find(parent, adj_nb[j])
                if ra != rb and gclass[ra] == gclass[rb]:
                    if rb < ra:
                        ra, rb = rb, ra
                    parent[rb] = ra
                    gsize[ra] += gsize[rb]
                    nxt[tail[ra]] = rb
                    tail[ra] = tail[rb]
    final = np.empty(n + 1, dtype=np.uint8)
    final[0] = nodata if 0 <= nodata < 256 else 0  # label 0 is exactly the nodata pixels
    for i in range(1, n + 1):
        final[i] = gclass[_find(parent, i)]
    out = np.empty((h, w), dtype=np.uint8)
    for r in range(h):
        for c in range(w):
            out[r, c] = final[labels[r, c]]
    return out, True


@numba.njit(cache=True, inline="always")
def _label_at(labels: np.ndarray, r: int, c: int) -> int:
    h, w = labels.shape
    if r < 0 or c < 0 or r >= h or c >= w:
        return 0
    return labels[r, c]


@numba.njit(cache=True)
def _grow(buf: np.ndarray, need: int) -> np.ndarray:
    if need <= buf.shape[0]:
        return buf
    out = np.empty(max(need, 2 * buf.shape[0]), dtype=buf.dtype)
    out[: buf.shape[0]] = buf
    return out


@numba.njit(cache=True)
def trace_polygons(
    labels: np.ndarray, n: int, col_off: int, row_off: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rings of labels 1..n (each one 4-connected region): coords, ring and polygon offsets.

    Polygon ``i`` is label ``i + 1``: its exterior, then its holes, each a closed ring of
    pixel-corner coordinates ``(col + col_off, row + row_off)`` with a vertex only where the
    outline turns. Rings run with the region on their left on screen (exterior
    counter-clockwise, holes clockwise, rows growing down) from their top-left vertex, holes
    in raster order of that vertex: as GDAL's polygonize writes them.
    """
    h, w = labels.shape
    # A ring is met first, scanning the horizontal pixel edges in raster order, on its
    # top-left edge: a label's exterior on the top side of its first pixel, each hole on the
    # bottom side of the pixel above the hole's first pixel. Bit 1: top side walked, bit 2:
    # bottom side walked (a label is on the walk's left there).
    walked = np.zeros((h, w), dtype=np.uint8)
    has_exterior = np.zeros(n + 1, dtype=np.bool_)
    xs = np.empty(max(1024, 2 * (h + w)), dtype=np.int32)
    ys = np.empty(xs.shape[0], dtype=np.int32)
    ring_start = np.empty(max(16, n + 1), dtype=np.int64)
    ring_label = np.empty(ring_start.shape[0], dtype=np.int32)
    n_rings = 0
    k = 0
    for r in range(h + 1):
        for c in range(w):
            above = labels[r - 1, c] if r > 0 else 0
            below = labels[r, c] if r < h else 0
            if above == below:
                continue
            for side in range(2):
                if side == 0:
                    lab = below
                    if lab == 0 or walked[r, c] & 1:
                        continue
                    if has_exterior[lab]:
                        raise ValueError("a label is not one 4-connected region")
                    has_exterior[lab] = True
                    d = 1  # exterior: down the first pixel's left side
                else:
                    lab = above
                    if lab == 0 or walked[r - 1, c] & 2:
                        continue
                    d = 0  # hole: right along the bottom of the pixel above it
                if n_rings + 1 >= ring_start.shape[0]:
                    ring_start = _grow(ring_start, n_rings + 2)
                    ring_label = _grow(ring_label, n_rings + 2)
                ring_start[n_rings] = k
                ring_label[n_rings] = lab
                n_rings += 1
                x0, y0, d0 = c, r, d
                x, y = x0, y0
                if k + 2 > xs.shape[0]:
                    xs = _grow(xs, k + 2)
                    ys = _grow(ys, k + 2)
                xs[k] = x
                ys[k] = y
                k += 1
                while True:
                    if d == 0:
                        walked[y - 1, x] |= 2
                    elif d == 2:
                        walked[y, x - 1] |= 1
                    x += _DX[d]
                    y += _DY[d]
                    # The two pixels ahead, left and right of the walk.
                    if d == 0:
                        ahead_l = _label_at(labels, y - 1, x)
                        ahead_r = _label_at(labels, y, x)
                    elif d == 1:
                        ahead_l = _label_at(labels, y, x)
                        ahead_r = _label_at(labels, y, x - 1)
                    elif d == 2:
                        ahead_l = _label_at(labels, y, x - 1)
                        ahead_r = _label_at(labels, y - 1, x - 1)
                    else:
                        ahead_l = _label_at(labels, y - 1, x - 1)
                        ahead_r = _label_at(labels, y - 1, x)
                    # Hug the pixels outside the region (on the right): at a pinch, where two
                    # pixels of the region touch only at this corner, turn right around the
                    # outside pixel, so rings touch at the corner instead of crossing it.
                    if ahead_r == lab:
                        nd = (d + 1) & 3
                    elif ahead_l == lab:
                        nd = d
                    else:
                        nd = (d + 3) & 3
                    if nd != d:
                        if k + 1 > xs.shape[0]:
                            xs = _grow(xs, k + 1)
                            ys = _grow(ys, k + 1)
                        xs[k] = x
                        ys[k] = y
                        k += 1
                        if x == x0 and y == y0 and nd == d0:
                            break
                    d = nd
    ring_start[n_rings] = k

    # Group the rings by label; discovery order keeps each exterior before its holes.
    poly_offsets = np.zeros(n + 1, dtype=np.int64)
    for i in range(n_rings):
        poly_offsets[ring_label[i]] += 1
    for i in range(1, n + 1):
        poly_offsets[i] += poly_offsets[i - 1]
    order = np.empty(n_rings, dtype=np.int64)
    pos = poly_offsets[:-1].copy()
    for i in range(n_rings):
        lab = ring_label[i] - 1
        order[pos[lab]] = i
        pos[lab] += 1
    coords = np.empty((k, 2), dtype=np.float64)
    ring_offsets = np.empty(n_rings + 1, dtype=np.int64)
    ring_offsets[0] = 0
    out = 0
    for j in range(n_rings):
        i = order[j]
        for v in range(ring_start[i], ring_start[i + 1]):
            coords[out, 0] = xs[v] + col_off
            coords[out, 1] = ys[v] + row_off
            out += 1
        ring_offsets[j + 1] = out
    return coords, ring_offsets, poly_offsets
