"""What every model of geoseg declares, torch or not: its bands, dates, classes and value range.

:class:`ModelSpec` is shared by the torch modules (:class:`~pipeline.models.base.SegmentationModel`)
and the numpy index models (:class:`~pipeline.models.indices.IndexModel`). It imports neither
torch nor anything heavy, so that planning an index workflow, and the workers that run one,
never load torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Protocol

import numpy as np

#: Reflectance a model of reflectance expects, per band: below it a value is noise or an
#: offset error, above it a value is rarely reflectance (fresh snow and bright cloud top out
#: about 1.2 at the top of the atmosphere).
REFLECTANCE_RANGE = (-0.1, 1.2)

#: What :meth:`ModelSpec.calibrate` returns: parameter name → value(s).
Calibration = dict[str, float | list[float]]


class Shaped(Protocol):
    """What :meth:`ModelSpec.check_input` reads of its input: a numpy array's or a tensor's."""

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        ...

    @property
    def shape(self) -> Sequence[int]:
        """Size of each dimension."""
        ...


class ModelSpec:
    """The interface of a segmentation model, less the forward pass.

    Input of a model: float32 ``[N, C, H, W]`` reflectance of the bands in :attr:`bands`, in
    that order; when :attr:`needs_before` is True (or :attr:`accepts_before` and a pre-event
    scene is given), ``C = 2 * len(bands)`` with the pre-event scene's bands first, then the
    scene's own. Output: ``[N, K, H, W]`` unnormalised scores (logits) for the
    ``K = num_classes`` classes; :mod:`pipeline.inference` turns them into classes and
    confidence with a softmax, so a model that computes probabilities returns their logarithm.
    """

    #: Band common names the model reads, in input order.
    bands: tuple[str, ...] = ()
    #: Whether the model also needs a pre-event scene (change detection).
    needs_before: bool = False
    #: Whether the model can take a pre-event scene without needing one (a change it maps
    #: only when given one, such as forest loss).
    accepts_before: bool = False
    #: Number of classes K in the output.
    num_classes: int = 0
    #: Short identifier written into outputs (``model`` field).
    model_id: str = "unnamed"
    #: Values each band should mostly take after the catalog's scale and offset (band → low,
    #: high); a scene whose values mostly fall outside is refused before any tile runs.
    value_range: Mapping[str, tuple[float, float]] = MappingProxyType({})
    #: What :meth:`calibrate` fitted to the scenes of this run (empty when nothing was).
    calibration: Mapping[str, float | list[float]] = MappingProxyType({})

    @property
    def in_channels(self) -> int:
        """Channels the model expects: the bands, twice when a pre-event scene is needed."""
        return len(self.bands) * (2 if self.needs_before else 1)

    def check_input(self, x: Shaped) -> None:
        """Raise ValueError unless ``x`` (an array or tensor) is [N, in_channels, H, W].

        Two dates' worth of channels are accepted too when the model :attr:`accepts_before`.
        """
        allowed = {self.in_channels}
        if self.accepts_before:
            allowed.add(2 * len(self.bands))
        if x.ndim != 4 or x.shape[1] not in allowed:
            raise ValueError(
                f"model {self.model_id!r} expects [N, {self.in_channels}, H, W], "
                f"got {list(x.shape)}"
            )

    @property
    def context_px(self) -> int:
        """Pixels of context a tile needs around its block (a run's halo is at least this)."""
        return 0

    def calibrate(
        self, samples: Sequence[np.ndarray], pixel_m: tuple[float, float] = (0.0, 0.0)
    ) -> Calibration:
        """Parameters fitted to the scenes a run is about to classify; none by default.

        ``samples`` holds a sample of each scene's pixels, float32 reflectance ``[len(bands),
        N]`` without no-data, the pre-event scene's first when there is one; ``pixel_m`` is
        the grid's pixel width and height in metres. What this returns is passed to the
        model's constructor with the workflow's own parameters, so every block of the scene
        is classified with the same values.
        """
        return {}
