"""Model weight files: safe loading of checkpoints, offline pretrained weights, saving.

Like :mod:`pipeline.reading` for scenes, this is the one place that opens model files.
Every file is loaded with ``torch.load(weights_only=True)``: tensors and plain data only, so a
checkpoint carrying pickled code is refused instead of executed. Pretrained weights named by
TorchGeo are looked up in the torch hub cache and never downloaded at run time; when the file
is missing the error says which file to put where.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from pipeline.errors import ModelError
from pipeline.models.card import ModelCard

CHECKPOINT_FORMAT = "geoseg-checkpoint/1"


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint's network weights (keys of the bare network), hyper-parameters and card."""

    state_dict: dict[str, torch.Tensor]
    hyper_parameters: dict[str, Any]
    card: ModelCard | None


def safe_load(path: str | Path) -> Any:
    """``torch.load`` with ``weights_only=True``; refuse files that need arbitrary unpickling.

    torch's own words are not passed on: its message advises loading again with
    ``weights_only=False``, which would run the code of a file nobody should trust, and its
    warnings about pickle protocols say nothing a user can act on.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} not found; check `checkpoint:` in the workflow")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(unpickling_refusal(path, str(exc))) from None
    except (RuntimeError, EOFError, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"cannot read checkpoint {path}: {reason}") from None


#: How torch names what a weights-only load refused: ``GLOBAL posix.system`` and the like.
_BLOCKED = re.compile(r"GLOBAL\s+([\w.]+)", re.IGNORECASE)


def unpickling_refusal(path: Path, message: str) -> str:
    """Our one line for a checkpoint a weights-only load refused, from torch's ``message``.

    A file naming a Python callable (``os.system``, a class) holds code: it is refused, and it
    was not run. Anything else is a file that is not a checkpoint; torch's advice to load it
    unsafely is left out either way.
    """
    blocked = _BLOCKED.search(message)
    if blocked is not None:
        return (
            f"refused to load checkpoint {path}: it holds pickled code (it calls "
            f"{blocked.group(1)}), not only tensors and plain data; it was not run. Use only "
            "checkpoints from a source you trust, re-saved as a state_dict"
        )
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    reason = next((ln for ln in lines if "weights_only" not in ln), "not a torch checkpoint")
    return f"cannot read checkpoint {path}: {reason}; nothing in it was run"


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Load a geoseg or TorchGeo Lightning checkpoint, or a plain state dict, safely."""
    raw = safe_load(path)
    if not isinstance(raw, dict):
        raise ModelError(f"checkpoint {path}: expected a dict of tensors or a checkpoint dict")
    card = None
    if "geoseg_card" in raw:
        try:
            card = ModelCard.model_validate(json.loads(raw["geoseg_card"]))
        except (ValueError, TypeError) as exc:
            reason = " ".join(str(exc).split())[:300]
            raise ModelError(f"checkpoint {path}: its model card is invalid: {reason}") from None
    if "state_dict" in raw and isinstance(raw["state_dict"], dict):
        # Lightning: the task's parameters, prefixed with the attribute holding the network.
        state = {
            k.removeprefix("model."): v
            for k, v in raw["state_dict"].items()
            if k.startswith("model.")
        } or dict(raw["state_dict"])
        hparams = dict(raw.get("hyper_parameters") or {})
    elif raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state, hparams = dict(raw), {}
    else:
        raise ModelError(
            f"checkpoint {path}: neither a Lightning checkpoint (with 'state_dict') nor a "
            "plain state dict of tensors"
        )
    return LoadedCheckpoint(state_dict=state, hyper_parameters=hparams, card=card)


def save_checkpoint(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    hyper_parameters: dict[str, Any],
    card: ModelCard,
) -> None:
    """Write a checkpoint TorchGeo's Lightning task can load too, with the card; atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.partial")
    from lightning import __version__ as lightning_version

    payload = {
        "format": CHECKPOINT_FORMAT,
        # Lightning's loader requires its version key; with it TorchGeo's
        # SemanticSegmentationTask.load_from_checkpoint reads our files unchanged.
        "pytorch-lightning_version": lightning_version,
        "state_dict": {f"model.{k}": v.detach().cpu() for k, v in state_dict.items()},
        "hyper_parameters": hyper_parameters,
        "geoseg_card": card.to_json(),
    }
    try:
        torch.save(payload, temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def hub_cache_file(url: str) -> Path:
    """Where torch hub keeps the file downloaded from ``url`` (honours ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def pretrained_weights(name: str) -> Any:
    """The TorchGeo ``WeightsEnum`` member called ``name`` (no file is touched)."""
    from torchgeo.models import get_weight

    try:
        return get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise ModelError(
            f"unknown TorchGeo weights {name!r}; use a name such as "
            "'ResNet18_Weights.SENTINEL2_ALL_MOCO' (see torchgeo.models.list_models)"
        ) from None


def is_full_model(weights: Any) -> bool:
    """Whether TorchGeo weights hold a whole segmentation network, not just a backbone."""
    return type(weights).__name__.startswith("Unet")


def load_pretrained(name: str) -> tuple[dict[str, torch.Tensor], Any]:
    """Resolve TorchGeo weights ``name`` from the hub cache, offline; return (state, weights)."""
    weights = pretrained_weights(name)
    cached = hub_cache_file(weights.url)
    if not cached.is_file():
        raise ModelError(
            f"pretrained weights {name} are not in the torch hub cache and geoseg never "
            f"downloads at run time: place {cached.name} (from {weights.url}) at {cached}, or on "
            f'a connected machine run `python -c "from torchgeo.models import get_weight; '
            f"get_weight('{name}').get_state_dict()\"` and copy ~/.cache/torch/hub/checkpoints/"
            f"{cached.name} there (set TORCH_HOME to use another cache folder)"
        )
    state = safe_load(cached)
    if not isinstance(state, dict):
        raise ModelError(f"pretrained weights file {cached} does not hold a state dict")
    return state, weights


def first_mismatch(exc: RuntimeError) -> str:
    """The first specific line of a ``load_state_dict`` error (which key or shape is wrong)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[1:] or lines or [type(exc).__name__])[0]
