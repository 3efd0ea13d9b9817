"""Segmentation models: the common interface and the builders behind workflow ``model:`` entries.

:class:`~pipeline.models.base.SegmentationModel` is the interface; :mod:`.indices` holds the
spectral-index models, :mod:`.networks` the TorchGeo networks, :mod:`.card` their model cards
and :mod:`.checkpoints` the safe loading of weight files. :func:`build_model` turns a validated
model configuration into a module.

Nothing here imports torch until it is used, so that model cards can be read (and the
vectorizing stage run) by processes that never load a network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.models.base import SegmentationModel
    from pipeline.models.build import build_model


def __getattr__(name: str) -> Any:
    if name == "SegmentationModel":
        from pipeline.models.base import SegmentationModel

        return SegmentationModel
    if name == "build_model":
        from pipeline.models.build import build_model

        return build_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SegmentationModel", "build_model"]
