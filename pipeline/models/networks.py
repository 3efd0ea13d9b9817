"""TorchGeo segmentation networks behind the :class:`SegmentationModel` interface.

The network is built exactly as TorchGeo's ``SemanticSegmentationTask`` builds it (so its
Lightning checkpoints load unchanged), wrapped with the normalization and band order of its
model card, and padded to a multiple of 32 pixels inside ``forward`` so tiles of any size work.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from pipeline.errors import ModelError
from pipeline.models.base import SegmentationModel
from pipeline.models.card import CardClass, ModelCard, Normalization
from pipeline.models.checkpoints import (
    first_mismatch,
    is_full_model,
    load_checkpoint,
    load_pretrained,
    pretrained_weights,
)
from pipeline.models.engines import stride_padding
from pipeline.workflow import ClassDef, TorchGeoModelConfig

#: The segmentation_models_pytorch class TorchGeo's ``SemanticSegmentationTask`` builds per
#: ``model`` (torchgeo 0.8 ``configure_models``); ``fcn`` is TorchGeo's own network.
_SMP_ARCHS = {
    "unet": "Unet",
    "deeplabv3+": "DeepLabV3Plus",
    "upernet": "UPerNet",
    "segformer": "Segformer",
    "dpt": "DPT",
}


def build_network(arch: str, backbone: str, in_channels: int, num_classes: int) -> nn.Module:
    """The bare network TorchGeo's SemanticSegmentationTask builds, randomly initialised.

    The segmentation_models_pytorch networks are built directly, with the arguments the task
    passes (a test checks the two agree parameter for parameter): importing the task pulls in
    Lightning and its metrics, about 200 MB in every worker that only runs inference.
    """
    try:
        if arch in _SMP_ARCHS:
            import segmentation_models_pytorch as smp

            net: nn.Module = getattr(smp, _SMP_ARCHS[arch])(
                encoder_name=backbone,
                encoder_weights=None,
                in_channels=in_channels,
                classes=num_classes,
            )
            return net
        from torchgeo.trainers import SemanticSegmentationTask

        task = SemanticSegmentationTask(
            model=arch,  # type: ignore[arg-type]
            backbone=backbone,
            weights=None,
            in_channels=in_channels,
            num_classes=num_classes,
        )
    except (ValueError, KeyError, RuntimeError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if len(reason) > 200:
            reason = reason[:200] + "…"
        raise ModelError(
            f"TorchGeo cannot build {arch} with backbone {backbone!r}: {reason}"
        ) from None
    return task.model


class TorchGeoSegmentation(SegmentationModel):
    """A TorchGeo network with its card's band order and normalization."""

    def __init__(self, net: nn.Module, card: ModelCard, model_id: str) -> None:
        super().__init__()
        self.net = net
        self.card = card
        self.bands = card.bands
        self.needs_before = card.needs_before
        self.num_classes = len(card.classes)
        self.model_id = model_id
        c = card.in_channels
        norm = card.normalization or Normalization(mean=(0.0,) * c, std=(1.0,) * c)
        if len(norm.mean) != c:
            raise ModelError(
                f"model {model_id!r}: normalization has {len(norm.mean)} values for {c} input "
                "channels; give one mean and std per channel"
            )
        self.mean_: torch.Tensor
        self.std_: torch.Tensor
        self.register_buffer("mean_", torch.tensor(norm.mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std_", torch.tensor(norm.std, dtype=torch.float32).view(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return [N, K, H, W] logits for reflectance [N, C, H, W] of any H and W."""
        self.check_input(x)
        h, w = x.shape[-2:]
        x = (x - self.mean_) / self.std_
        ph, pw, reflect = stride_padding(h, w)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if reflect else "replicate")
        scores: torch.Tensor = self.net(x)
        return scores[..., :h, :w]


def card_from_config(config: TorchGeoModelConfig, classes: tuple[ClassDef, ...]) -> ModelCard:
    """A card for a network described only by a workflow (no card in its checkpoint)."""
    if not config.bands:
        raise ModelError(
            "the model has no card naming its bands: list them in the workflow under "
            "`model.bands` (common names in input order)"
        )
    norm = config.normalization
    return ModelCard(
        arch=config.arch,
        backbone=config.backbone,
        bands=config.bands,
        needs_before=config.needs_before,
        classes=tuple(CardClass(value=c.value, name=c.name, colour=c.colour) for c in classes),
        gsd_m=config.gsd_m,
        normalization=Normalization(mean=norm.mean, std=norm.std) if norm else None,
    )


def _agree(what: str, ours: object, theirs: object, source: str) -> None:
    if theirs is not None and ours != theirs:
        raise ModelError(
            f"the workflow says {what} {ours!r} but {source} says {theirs!r}; "
            f"set `model.{what}: {theirs}` in the workflow or use the matching checkpoint"
        )


def build_torchgeo_model(
    config: TorchGeoModelConfig, classes: tuple[ClassDef, ...]
) -> TorchGeoSegmentation:
    """Build a ready-to-run network from a workflow's ``kind: torchgeo`` model entry."""
    if config.checkpoint:
        ckpt = load_checkpoint(config.checkpoint)
        source = f"checkpoint {config.checkpoint}"
        card = ckpt.card
        if card is not None:
            _agree("arch", config.arch, card.arch, source)
            _agree("backbone", config.backbone, card.backbone, source)
            if config.bands:
                _agree("bands", tuple(config.bands), card.bands, source)
            names = [c.name for c in classes]
            if names != [c.name for c in card.classes]:
                raise ModelError(
                    f"{source} predicts classes {[c.name for c in card.classes]} but the workflow "
                    f"lists {names}; list the card's classes in the workflow"
                )
        else:
            card = card_from_config(config, classes)
        hp = ckpt.hyper_parameters
        _agree("arch", config.arch, hp.get("model"), source)
        _agree("backbone", config.backbone, hp.get("backbone"), source)
        if hp.get("in_channels") not in (None, card.in_channels):
            raise ModelError(
                f"{source} takes {hp['in_channels']} input channels but the workflow's bands "
                f"give {card.in_channels}; list the bands the model was trained on"
            )
        net = build_network(card.arch, card.backbone, card.in_channels, len(card.classes))
        try:
            net.load_state_dict(ckpt.state_dict)
        except RuntimeError as exc:
            raise ModelError(
                f"{source} does not fit {card.arch}/{card.backbone} with {card.in_channels} "
                f"input channels and {len(card.classes)} classes: {str(exc).splitlines()[1:2]}"
            ) from None
        model_id = f"{card.arch}-{card.backbone}:{Path(config.checkpoint).stem}"
    elif config.weights:
        card = card_from_config(config, classes)
        if not is_full_model(pretrained_weights(config.weights)):
            raise ModelError(
                f"weights {config.weights} initialise the backbone only, so the network cannot "
                "segment yet; train it first (geoseg train) and give the `checkpoint`"
            )
        state, _ = load_pretrained(config.weights)
        net = build_network(card.arch, card.backbone, card.in_channels, len(card.classes))
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelError(
                f"weights {config.weights} do not fit {card.arch}/{card.backbone} with "
                f"{card.in_channels} channels and {len(card.classes)} classes: "
                f"{first_mismatch(exc)}"
            ) from None
        model_id = f"{card.arch}-{card.backbone}:{config.weights}"
    else:
        raise ModelError(
            "a `kind: torchgeo` model needs `checkpoint` (trained weights) or full-model "
            "`weights` to run; train one with geoseg train"
        )
    model = TorchGeoSegmentation(net, card, model_id)
    model.net.to(memory_format=torch.channels_last)
    return model.eval()


def init_backbone(net: nn.Module, weights_name: str) -> None:
    """Load TorchGeo pretrained backbone weights (from the hub cache) into ``net``'s encoder."""
    state, _ = load_pretrained(weights_name)
    encoder = getattr(net, "encoder", None)
    if encoder is None:
        raise ModelError(f"this network has no encoder to load {weights_name} into")
    try:
        encoder.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(
            f"weights {weights_name} do not fit the {type(encoder).__name__} encoder "
            f"(check `bands`: their number sets its input channels): {first_mismatch(exc)}"
        ) from None
