"""Segmentation models: the common interface and the builders behind workflow ``model:`` entries.

:class:`~pipeline.models.base.SegmentationModel` is the interface; :mod:`.indices` holds the
spectral-index models, :mod:`.networks` the TorchGeo networks, :mod:`.card` their model cards
and :mod:`.checkpoints` the safe loading of weight files. :func:`build_runnable` turns a
validated model configuration into the model a run uses (an index model in numpy, a network as
a torch module); :func:`build_model` into a torch module whatever its kind.

Nothing here imports torch until it is used, so that model cards can be read, the vectorizing
stage run, and index models planned and run by processes that never load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.models.base import SegmentationModel
    from pipeline.models.build import build_model, build_runnable

#: Where each name of this package is defined, imported at its first use.
_LAZY = {
    "SegmentationModel": "pipeline.models.base",
    "build_model": "pipeline.models.build",
    "build_runnable": "pipeline.models.build",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = ["SegmentationModel", "build_model", "build_runnable"]
