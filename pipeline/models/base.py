"""The torch interface of geoseg's segmentation models, and numpy models behind it.

What a model declares (bands, dates, classes, value range, calibration) is
:class:`~pipeline.models.spec.ModelSpec`, which imports no torch; this module adds the torch
module around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from pipeline.models.spec import REFLECTANCE_RANGE, Calibration, ModelSpec

if TYPE_CHECKING:
    from pipeline.models.indices import IndexModel


class SegmentationModel(ModelSpec, nn.Module):
    """A torch module mapping band stacks to per-pixel class scores (see :class:`ModelSpec`).

    ``forward`` takes the float32 ``[N, C, H, W]`` tensor and returns the ``[N, K, H, W]``
    scores.
    """


class IndexModule(SegmentationModel):
    """An index model (numpy) as a torch module, for callers that hold tensors.

    The formulas stay the index model's: the tensor goes to numpy, the scores come back on
    the tensor's device. Runs themselves use the index model directly, without torch.
    """

    def __init__(self, model: IndexModel) -> None:
        super().__init__()
        self.index = model
        self.bands, self.num_classes, self.model_id = model.bands, model.num_classes, model.model_id
        self.needs_before, self.accepts_before = model.needs_before, model.accepts_before
        self.value_range, self.calibration = model.value_range, model.calibration

    @property
    def context_px(self) -> int:
        """The index model's context (see :attr:`ModelSpec.context_px`)."""
        return self.index.context_px

    def calibrate(
        self, samples: Sequence[np.ndarray], pixel_m: tuple[float, float] = (0.0, 0.0)
    ) -> Calibration:
        """The index model's calibration (see :meth:`ModelSpec.calibrate`)."""
        return self.index.calibrate(samples, pixel_m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the index model's ``[N, K, H, W]`` scores of ``x``."""
        scores = self.index(x.detach().cpu().numpy())
        return torch.from_numpy(scores).to(x.device)


__all__ = ["REFLECTANCE_RANGE", "Calibration", "IndexModule", "SegmentationModel"]
