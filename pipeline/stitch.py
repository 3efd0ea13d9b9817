"""Turning blocks into tiles and model output back into blocks.

A tile is a block grown by the halo (see :func:`pipeline.grid.tile_window`). Where the grid
ends, :func:`pad_tile` completes the tile by mirror reflection, so the model sees plausible
context instead of zeros and scene edges are predicted like the interior. :func:`crop_block`
keeps only the block's centre of a tile's prediction: each output pixel comes from exactly one
tile, the one in whose centre it lies, which is where the model had the most context. Blocks do
not overlap, so writing them one after another assembles the seamless raster without ever
holding it whole.

Why centre-crop rather than blending overlaps: with a U-Net (ResNet18) trained briefly on the
Virginia scene (tests/test_parity.py), centre-crop with a 64-pixel halo and reflect padding
agrees with one forward pass over the whole scene on 99.968 % of pixels at tile 256, 99.987 %
at 512 and 99.991 % at 1024 (outside a halo-wide border band), and tile 256 agrees with tile
1024 on 99.977 %. The halo is what matters: 99.909 % with a halo of 32, 99.621 % with none.
Centre-crop reaches this while each output pixel is computed once and written once; blending
would need overlapping outputs held until every tile touching them is done, for agreement
that is already within 0.03 % of a single pass.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from rasterio.windows import Window

from pipeline.grid import Block, Padding

#: Value of ``classes.tif`` and ``confidence.tif`` where there is no data.
NODATA = 255


def pad_tile(data: np.ndarray, valid: np.ndarray, pad: Padding) -> tuple[np.ndarray, np.ndarray]:
    """Reflect-pad ``data`` ``[C, h, w]`` and ``valid`` ``[h, w]`` by ``pad``."""
    if pad == Padding():
        return data, valid
    for axis, before, after in ((0, pad.top, pad.bottom), (1, pad.left, pad.right)):
        if before == 0 and after == 0:
            continue
        # Reflection needs at least 2 pixels along an axis; a 1-pixel axis can only repeat.
        mode: Literal["reflect", "edge"] = "reflect" if valid.shape[axis] > 1 else "edge"
        widths = [(0, 0), (0, 0)]
        widths[axis] = (before, after)
        data = np.pad(data, [(0, 0), *widths], mode=mode)
        valid = np.pad(valid, widths, mode=mode)
    return data, valid


def crop_block(tile: np.ndarray, read: Window, pad: Padding, block: Block) -> np.ndarray:
    """Cut ``block`` out of a padded tile prediction (``[..., H, W]``) read through ``read``."""
    top = block.row_off - int(read.row_off) + pad.top
    left = block.col_off - int(read.col_off) + pad.left
    return tile[..., top : top + block.height, left : left + block.width]
