"""Which method masks a scene, decided once per scene before any tile runs.

:func:`plan_mask` turns a workflow's ``mask:`` settings and a scene into a :class:`MaskPlan`:
a small frozen value that travels with every task and says which bands to read, how, and
with how much context. ``method: auto`` prefers the scene's own quality band, then the
network, then the spectral test (see :mod:`pipeline.masking`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.catalog import QUALITY_BANDS, Scene
from pipeline.errors import ConfigError
from pipeline.grid import Grid, pixel_size_m
from pipeline.workflow import ClassDef, MaskConfig

#: Value of a cloud pixel in ``classes.tif`` (thin cirrus included).
CLOUD = 254
#: Value of a cloud-shadow pixel in ``classes.tif``.
SHADOW = 253
#: The reserved values, in ``classes.tif`` order.
MASK_VALUES = (SHADOW, CLOUD)
#: How masked pixels are named and drawn, in ``classes.tif``'s colour table, the preview and
#: the QGIS style; never vectorized.
MASK_CLASSES = (
    ClassDef(value=SHADOW, name="cloud_shadow", colour="#525252", vectorize=False),
    ClassDef(value=CLOUD, name="cloud", colour="#c6dbef", vectorize=False),
)

Method = Literal["quality", "network", "spectral", "none"]

#: Bands of the six-band networks and of the four-band ones, in the networks' order.
NETWORK_BANDS_6 = ("blue", "green", "red", "nir", "swir16", "swir22")
NETWORK_BANDS_4 = ("blue", "green", "red", "nir")
#: Bands the spectral cloud test reads.
SPECTRAL_BANDS = ("green", "red", "nir", "swir16")
#: Pixel size the networks were trained at; they run at it or finer (never coarser).
NETWORK_GSD_M = 30.0

_OPTICAL = re.compile(r"sentinel-?2|landsat", re.IGNORECASE)
_LEVEL_2 = re.compile(r"l2a|level-?2|\bl2\b|l2sp|surface|\bsr\b", re.IGNORECASE)


@dataclass(frozen=True)
class MaskPlan:
    """How one scene is masked: small, hashable, sent with every task.

    ``bands`` are read in that order; a network cell is ``factor`` × ``factor`` grid pixels
    (``pixel_m`` metres each); cloud and shadow are grown by ``buffer_px`` grid pixels.
    """

    method: Method
    reason: str
    bands: tuple[str, ...] = ()
    network: str | None = None
    factor: int = 1
    buffer_px: int = 0
    pixel_m: float = 0.0

    def describe(self) -> dict[str, Any]:
        """What ``run.json`` records of the plan."""
        out: dict[str, Any] = {"method": self.method, "reason": self.reason}
        if self.method == "none":
            return out
        out["bands"] = list(self.bands)
        if self.network is not None:
            from pipeline.masking.network import network_version

            out["network"] = network_version(self.network)
            out["cell_m"] = round(self.factor * self.pixel_m, 2)
        out["buffer_m"] = round(self.buffer_px * self.pixel_m, 2)
        return out


def plan_mask(config: MaskConfig, scene: Scene, grid: Grid) -> MaskPlan:
    """The plan that masks ``scene`` on ``grid`` as ``config`` asks.

    Raises :class:`ConfigError` when a method named explicitly cannot run on the scene.
    """
    if config.method == "none":
        return MaskPlan("none", "the workflow turns masking off (mask: method: none)")
    pixel_m = pixel_size_m(grid)[0]
    buffer_px = round(config.buffer_m / pixel_m)
    have = set(scene.band_names)
    quality = sorted(have & QUALITY_BANDS)
    if config.method in ("auto", "quality") and quality:
        return MaskPlan(
            "quality",
            f"the catalog lists the scene's quality band {quality[0]!r}",
            (quality[0],),
            buffer_px=buffer_px,
            pixel_m=pixel_m,
        )
    if config.method == "quality":
        raise ConfigError(
            f"scene {scene.id!r} has no quality band ({', '.join(sorted(QUALITY_BANDS))}) for "
            "mask: method: quality; add it to the scene's entry or use method: auto"
        )
    network = _network_for(scene, have)
    if config.method in ("auto", "network") and isinstance(network, tuple):
        name, bands, why = network
        factor = max(1, int(NETWORK_GSD_M / pixel_m + 1e-6))
        return MaskPlan(
            "network",
            why,
            bands,
            network=name,
            factor=factor,
            buffer_px=buffer_px,
            pixel_m=pixel_m,
        )
    if config.method == "network":
        raise ConfigError(f"scene {scene.id!r} cannot use mask: method: network: {network}")
    missing = [b for b in SPECTRAL_BANDS if b not in have]
    if not missing:
        why = "no quality band, and the cloud networks cannot run: " + str(network)
        return MaskPlan("spectral", why, SPECTRAL_BANDS, buffer_px=buffer_px, pixel_m=pixel_m)
    if config.method == "spectral":
        raise ConfigError(
            f"scene {scene.id!r} lacks band(s) {', '.join(missing)} that mask: method: spectral "
            "reads; add them to the catalog entry or use method: auto"
        )
    return MaskPlan(
        "none",
        f"no quality band, no network for it ({network}), and band(s) {', '.join(missing)} "
        "of the spectral test missing: the scene is not masked",
    )


def _network_for(scene: Scene, have: set[str]) -> tuple[str, tuple[str, ...], str] | str:
    """The network that fits ``scene`` (name, bands, why), or why none does."""
    sensor = scene.sensor or ""
    if not _OPTICAL.search(sensor):
        return (
            f"they are trained on Sentinel-2 and Landsat, and the catalog's sensor is "
            f"{sensor or 'not given'!r} (set `sensor:` e.g. sentinel-2-l1c)"
        )
    level = "l2a" if _LEVEL_2.search(sensor) else "l1c"
    bands: tuple[str, ...]
    if all(b in have for b in NETWORK_BANDS_6):
        bands = NETWORK_BANDS_6
    elif all(b in have for b in NETWORK_BANDS_4):
        bands = NETWORK_BANDS_4
    else:
        missing = [b for b in NETWORK_BANDS_4 if b not in have]
        return f"they need the bands {', '.join(NETWORK_BANDS_4)}, and {', '.join(missing)} missing"
    name = f"model_{len(bands)}b_{level}"
    return name, bands, f"{sensor} scene with the {len(bands)} bands of the {level.upper()} network"
