"""Building the model a workflow's ``model:`` entry describes.

:func:`build_runnable` gives each kind of model in the form a run uses: an index model as
numpy (:func:`build_index_model`, torch never imported), a network as its torch module;
:func:`build_on_worker` as one worker thread runs it. :func:`build_model` gives every kind as
a torch module, for callers that hold tensors.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import ModelError
from pipeline.models.indices import INDEX_MODELS, IndexModel
from pipeline.workflow import ClassDef, IndexModelConfig, ModelConfig, TorchGeoModelConfig

if TYPE_CHECKING:
    from pipeline.models.base import SegmentationModel
    from pipeline.models.engines import OpenVINOModel

#: What a calibrated model is built with: what its ``calibrate`` fitted to a run's scenes.
Fitted = Mapping[str, float | list[float]]


def build_model(
    config: ModelConfig, classes: tuple[ClassDef, ...] = (), calibration: Fitted | None = None
) -> SegmentationModel:
    """Build the model a workflow describes as a torch module, in eval mode.

    An index model comes behind :class:`~pipeline.models.base.IndexModule`. See
    :func:`build_runnable` for the arguments; raises :class:`ModelError` if it can't.
    """
    model = build_runnable(config, classes, calibration)
    if isinstance(model, IndexModel):
        from pipeline.models.base import IndexModule

        return IndexModule(model).eval()
    return model


def build_runnable(
    config: ModelConfig, classes: tuple[ClassDef, ...] = (), calibration: Fitted | None = None
) -> IndexModel | SegmentationModel:
    """Build the model a workflow describes: an index model as numpy, a network as torch.

    ``classes`` are the workflow's classes, which a network without a model card predicts;
    ``calibration`` what the model's :meth:`~pipeline.models.spec.ModelSpec.calibrate` fitted
    to a run's scenes, given to its constructor beside the workflow's parameters. Raises
    :class:`ModelError` if the model cannot be built.
    """
    if isinstance(config, TorchGeoModelConfig):
        from pipeline.models.networks import build_torchgeo_model

        return build_torchgeo_model(config, classes)
    if isinstance(config, IndexModelConfig):
        return build_index_model(config, calibration)
    raise AssertionError(f"unhandled model kind {config!r}")  # pragma: no cover


def build_on_worker(
    config: ModelConfig,
    classes: tuple[ClassDef, ...] = (),
    converted: Path | None = None,
    calibration: Fitted | None = None,
) -> IndexModel | SegmentationModel | OpenVINOModel:
    """The model as a worker of one thread runs it.

    The network OpenVINO converted into ``converted`` when given (torch never imported); an
    index model in numpy (nor then); else the torch module, on a CUDA GPU when torch has one.
    """
    if converted is not None:
        from pipeline.models.engines import OpenVINOModel

        return OpenVINOModel(converted, getattr(config, "precision", "f32"), threads=1)
    if isinstance(config, IndexModelConfig):
        return build_index_model(config, calibration)
    import torch

    torch.set_num_threads(1)
    model = build_model(config, classes, calibration)
    return model.to("cuda") if torch.cuda.is_available() else model


def build_index_model(config: IndexModelConfig, calibration: Fitted | None = None) -> IndexModel:
    """The index model ``config`` names, with its parameters and ``calibration``; numpy only."""
    cls = INDEX_MODELS.get(config.name)
    if cls is None:
        raise ModelError(
            f"unknown index model {config.name!r}; known: {', '.join(sorted(INDEX_MODELS))}"
        )
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(config.params) - set(accepted))
    if unknown:
        raise ModelError(
            f"index model {config.name!r} has no parameter {unknown[0]!r}; "
            f"it takes: {', '.join(accepted)}"
        )
    fitted = dict(calibration or {})
    try:
        model = cls(**config.params, **fitted)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"index model {config.name!r}: {exc}") from None
    model.calibration = fitted
    return model
