"""Model cards: what a network expects and how it was made, stored inside its checkpoint.

Every checkpoint geoseg writes carries a card; loading reads it back, and before any tile runs
the scene is checked against it (bands, ground sample distance, value range after scaling), so
a 4-band file fed to a 13-band model, a wrong ``scale`` or a 60 m scene given to a 10 m model
stops the run with the fix in the message instead of producing nonsense polygons.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.errors import ModelError

CARD_SCHEMA = "geoseg-model-card/1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CardClass(_Strict):
    """One output class of a network."""

    value: int
    name: str
    colour: str


class Normalization(_Strict):
    """Per input channel: the network sees ``(reflectance - mean) / std``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @model_validator(mode="after")
    def _same_length(self) -> Normalization:
        if len(self.mean) != len(self.std):
            raise ValueError("normalization mean and std need one value per input channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("normalization std values must be positive")
        return self


class ModelCard(_Strict):
    """What a network expects and how it was made."""

    schema_: str = Field(default=CARD_SCHEMA, alias="schema")
    arch: str
    backbone: str
    bands: tuple[str, ...]
    needs_before: bool = False
    classes: tuple[CardClass, ...]
    gsd_m: float | None = Field(default=None, description="Ground sample distance trained on.")
    normalization: Normalization | None = None
    value_range: tuple[tuple[float, float], ...] | None = Field(
        default=None, description="Per input channel, 1st and 99th percentile when trained."
    )
    tile_size: int | None = None
    halo: int | None = None
    training_data: dict[str, object] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    licence: str = "unspecified"
    created: str | None = None
    geoseg_version: str | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _per_channel(self) -> ModelCard:
        for name, values in (
            ("normalization", self.normalization.mean if self.normalization else None),
            ("value_range", self.value_range),
        ):
            if values is not None and len(values) != self.in_channels:
                raise ValueError(
                    f"{name} has {len(values)} entries for {self.in_channels} input channels"
                )
        return self

    @property
    def in_channels(self) -> int:
        """Input channels: the bands, twice with a pre-event scene."""
        return len(self.bands) * (2 if self.needs_before else 1)

    def to_json(self) -> str:
        """The card as JSON (what is stored in a checkpoint)."""
        return self.model_dump_json(by_alias=True)


def check_resolution(card: ModelCard, scene_id: str, gsd_m: float) -> None:
    """Raise :class:`ModelError` when the scene's pixel size is far from the card's."""
    if card.gsd_m is None:
        return
    ratio = gsd_m / card.gsd_m
    if not 1 / 1.5 <= ratio <= 1.5:
        raise ModelError(
            f"scene {scene_id!r} has {gsd_m:.1f} m pixels but the model was trained at "
            f"{card.gsd_m:.1f} m; resample the scene to about {card.gsd_m:.0f} m "
            "(gdalwarp -tr) or use a model trained at this resolution"
        )


def check_values(
    card: ModelCard, scene_id: str, channels: tuple[str, ...], sample: np.ndarray, valid: np.ndarray
) -> None:
    """Raise :class:`ModelError` when a sample of the scene is far outside the trained range.

    ``sample`` is float32 ``[C, h, w]`` reflectance as the model would see it (before its
    normalization); ``channels`` names each channel for the message.
    """
    if card.value_range is None or not valid.any():
        return
    for name, band, (lo, hi) in zip(channels, sample, card.value_range, strict=True):
        median = float(np.median(band[valid]))
        span = max(hi - lo, 1e-6)
        if not lo - 2 * span <= median <= hi + 2 * span:
            hint = ""
            if median > 100 * max(abs(hi), 1e-6):
                hint = " (values look unscaled: set `scale:` in the catalog, e.g. 0.0001)"
            raise ModelError(
                f"scene {scene_id!r} band {name!r} has median {median:.4g} after scaling, but "
                f"the model was trained on {lo:.4g}..{hi:.4g}; check the scene's `scale` and "
                f"`offset` in the catalog{hint}"
            )
