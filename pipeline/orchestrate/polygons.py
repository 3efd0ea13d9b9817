"""The polygon stage on the cluster: the class raster polygonized block by block.

Workers clean and polygonize one block of the working class raster each (with the halo the
sieve needs) and finish the regions that touch no other block; the client joins the regions
that cross block edges (:func:`pipeline.vectorize.merge_blocks`) and takes each block's
polygons as it comes, so it never holds all the polygons of a scene.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from distributed import as_completed
from tqdm import tqdm

from pipeline.grid import Block, Grid, blocks, tile_window
from pipeline.masking import MASK_VALUES
from pipeline.orchestrate.cluster import RunOptions, release_memory
from pipeline.publish import BlockRaster
from pipeline.reading import read_band_window
from pipeline.stitch import NODATA
from pipeline.vectorize import (
    BlockPolygons,
    Cleanup,
    FinishedBlock,
    Polygons,
    RegionEdges,
    clean_window,
    finish_block,
    instance_lookup,
    label_regions,
    merge_blocks,
    polygonize_block,
    sieve_halo,
)

#: Edge of the blocks the class raster is polygonized in (bounds memory per task).
VECTORIZE_BLOCK = 2048


def _vectorize_task(
    classes_path: str,
    confidence_path: str,
    grid: Grid,
    block: Block,
    keep: tuple[int, ...],
    cleanup: Cleanup,
    labels_dir: str | None,
    lookup: tuple[int, ...] | None = None,
) -> tuple[FinishedBlock, RegionEdges | None]:
    read, _ = tile_window(grid, block, sieve_halo(cleanup))
    classes = read_band_window(classes_path, read)
    if lookup is not None:  # classes merged into one polygon class (Workflow.polygons)
        classes = np.asarray(lookup, dtype=np.uint8)[classes]
    confidence = read_band_window(confidence_path, block.window)
    cleaned = clean_window(classes, read, block, cleanup, NODATA, MASK_VALUES)
    labels = label_regions(cleaned, keep)
    part = polygonize_block(cleaned, confidence, block, grid.width, keep, labels)
    edges = None
    if labels_dir is not None:
        # The block's region labels wait on disk until the joins give each its instance id.
        np.save(_labels_file(labels_dir, block), labels)
        edges = RegionEdges.of(part)
    # Shipped as the WKB it is written in: the client then neither parses nor re-encodes it.
    return finish_block(part, grid, cleanup, as_wkb=True), edges


def _labels_file(folder: str, block: Block) -> Path:
    return Path(folder) / f"labels-{block.row_off}-{block.col_off}.npy"


def vectorize_on_cluster(
    client: Any,
    classes_path: str,
    confidence_path: str,
    grid: Grid,
    keep: tuple[int, ...],
    cleanup: Cleanup,
    options: RunOptions,
    instances: BlockRaster | None = None,
    lookup: tuple[int, ...] | None = None,
) -> Iterator[Polygons]:
    """Polygonize the class raster block by block on Dask; polygons come as they are done.

    The tasks are submitted when this is called; the returned iterator yields their
    polygons, so the caller can do other work (the COG copies) while the workers polygonize.

    Each block's regions that touch no other block come finished from its worker and are
    yielded at once; the regions that cross block edges are joined in the client at the end
    and yielded last. So the client holds one block's polygons and the crossing pieces, never
    all the polygons of the scene. Geometries come as WKB bytes (``shapely.from_wkb`` turns
    them into shapely objects), the form :class:`~pipeline.publish.PolygonWriter` writes.

    With ``instances``, each pixel's ``instance_id`` is written there once the last batch
    has been taken: workers keep their blocks' region labels on disk beside it, and the
    joins give every label its region's id (see :func:`~pipeline.vectorize.instance_lookup`).
    ``lookup`` maps class values to the values they are vectorized as (see
    :meth:`~pipeline.workflow.Workflow.polygon_lookup`).
    """
    parts = blocks(grid, VECTORIZE_BLOCK)
    labels_dir = None
    if instances is not None:
        labels_dir = labels_folder(instances)
        labels_dir.mkdir(exist_ok=True)
    futures = [
        client.submit(
            _vectorize_task,
            classes_path,
            confidence_path,
            grid,
            b,
            keep,
            cleanup,
            None if labels_dir is None else str(labels_dir),
            None if lookup == tuple(range(256)) else lookup,
            key=f"geoseg-vectorize-{b.key}-{uuid.uuid4().hex[:6]}",
            pure=False,
        )
        for b in parts
    ]
    return _collect_polygons(client, futures, grid, cleanup, options, instances, labels_dir)


def _collect_polygons(
    client: Any,
    futures: list[Any],
    grid: Grid,
    cleanup: Cleanup,
    options: RunOptions,
    instances: BlockRaster | None,
    labels_dir: Path | None,
) -> Iterator[Polygons]:
    """Yield each vectorize task's finished polygons, then the joined crossing regions."""
    pieces: list[BlockPolygons] = []
    occupants: list[np.ndarray] = []
    edges: list[RegionEdges] = []
    written: list[np.ndarray] = []
    bar = tqdm(
        total=len(futures), desc="polygons", unit="block", disable=not options.progress, leave=False
    )
    try:
        for future in as_completed(futures):
            done, block_edges = future.result()
            future.release()
            bar.update()
            pieces.append(done.pieces)
            if cleanup.fill_holes_m2 > 0:
                occupants.append(done.occupants)
            if block_edges is not None:
                edges.append(block_edges)
                written.append(done.polygons.instance_id)
            if len(done.polygons):
                yield done.polygons
    finally:
        bar.close()
        client.cancel(futures)
    inside = np.concatenate(occupants) if occupants else np.empty(0, dtype=np.int64)
    # Handed over one by one, so the merge can let them go once it has their coordinates.
    handed = (pieces.pop() for _ in range(len(pieces)))
    release_memory()
    joined = merge_blocks(handed, grid, cleanup, inside, as_wkb=True)
    del occupants, inside
    written.append(joined.instance_id)
    release_memory()  # before the caller writes the joins, which can hold a huge region
    yield joined
    del joined
    if instances is not None and labels_dir is not None:
        _write_instances(instances, edges, np.concatenate(written), labels_dir)


def labels_folder(instances: BlockRaster) -> Path:
    """Where the region labels of ``instances``' blocks wait for their ids."""
    return instances.path.with_name(instances.path.name + "-labels")


def _write_instances(
    raster: BlockRaster, edges: list[RegionEdges], written: np.ndarray, labels_dir: Path
) -> None:
    """Each block's labels replaced by their instance ids, into ``raster``; labels removed."""
    dtype = np.dtype(raster.dtype)
    for part, lookup in zip(edges, instance_lookup(edges, np.sort(written)), strict=True):
        path = _labels_file(str(labels_dir), part.block)
        raster.write(part.block, lookup.astype(dtype)[np.load(path)])
        path.unlink()
    shutil.rmtree(labels_dir, ignore_errors=True)
