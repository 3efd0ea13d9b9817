"""The model interface every segmentation model of geoseg implements."""

from __future__ import annotations

import torch
from torch import nn


class SegmentationModel(nn.Module):
    """A torch module mapping band stacks to per-pixel class scores.

    Input: float32 ``[N, C, H, W]`` reflectance of the bands in :attr:`bands`, in that order;
    when :attr:`needs_before` is True, ``C = 2 * len(bands)`` with the pre-event scene's bands
    first, then the scene's own. Output: ``[N, K, H, W]`` unnormalised scores (logits) for the
    ``K = num_classes`` classes; :mod:`pipeline.inference` turns them into classes and confidence
    with a softmax, so a model that computes probabilities returns their logarithm.
    """

    #: Band common names the model reads, in input order.
    bands: tuple[str, ...] = ()
    #: Whether the model also needs a pre-event scene (change detection).
    needs_before: bool = False
    #: Number of classes K in the output.
    num_classes: int = 0
    #: Short identifier written into outputs (``model`` field).
    model_id: str = "unnamed"

    @property
    def in_channels(self) -> int:
        """Channels the model expects: the bands, twice when a pre-event scene is needed."""
        return len(self.bands) * (2 if self.needs_before else 1)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is [N, in_channels, H, W]."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"model {self.model_id!r} expects [N, {self.in_channels}, H, W], "
                f"got {list(x.shape)}"
            )
