"""Building the model a workflow's ``model:`` entry describes."""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from pipeline.errors import ModelError
from pipeline.models.base import SegmentationModel
from pipeline.models.indices import INDEX_MODELS
from pipeline.workflow import ClassDef, IndexModelConfig, ModelConfig, TorchGeoModelConfig


def build_model(
    config: ModelConfig,
    classes: tuple[ClassDef, ...] = (),
    calibration: Mapping[str, float | list[float]] | None = None,
) -> SegmentationModel:
    """Build the model a workflow describes, in eval mode; raise :class:`ModelError` if it can't.

    ``classes`` are the workflow's classes, which a network without a model card predicts;
    ``calibration`` what the model's :meth:`~SegmentationModel.calibrate` fitted to a run's
    scenes, given to its constructor beside the workflow's parameters.
    """
    if isinstance(config, TorchGeoModelConfig):
        from pipeline.models.networks import build_torchgeo_model

        return build_torchgeo_model(config, classes)
    if isinstance(config, IndexModelConfig):
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
        return model.eval()
    raise AssertionError(f"unhandled model kind {config!r}")  # pragma: no cover
