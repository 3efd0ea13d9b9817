"""Running a segmentation model on a tile: arrays in, class and confidence arrays out."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import ModelError
from pipeline.models.base import SegmentationModel

#: Value of ``classes.tif`` and ``confidence.tif`` where there is no data.
NODATA = 255


@torch.inference_mode()
def predict_tile(
    model: SegmentationModel, data: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Classify one tile.

    ``data`` is float32 ``[C, H, W]`` in the model's band order, ``valid`` a boolean ``[H, W]``.
    Returns ``(classes, confidence)``, both uint8 ``[H, W]``: the arg-max class and its softmax
    probability in percent, :data:`NODATA` where the input was invalid. A tile without any valid
    pixel skips the forward pass.
    """
    h, w = valid.shape
    classes = np.full((h, w), NODATA, dtype=np.uint8)
    confidence = np.full((h, w), NODATA, dtype=np.uint8)
    if not valid.any():
        return classes, confidence
    x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None]
    x = x.contiguous(memory_format=torch.channels_last)
    scores = model(x)
    expected = (1, model.num_classes, h, w)
    if tuple(scores.shape) != expected:
        raise ModelError(
            f"model {model.model_id!r} returned scores of shape {list(scores.shape)}, "
            f"expected {list(expected)}"
        )
    prob, cls = torch.softmax(scores[0].float(), dim=0).max(dim=0)
    cls_np = cls.to(torch.uint8).numpy()
    conf_np = torch.round(prob * 100).to(torch.uint8).numpy()
    classes[valid] = cls_np[valid]
    confidence[valid] = conf_np[valid]
    return classes, confidence
