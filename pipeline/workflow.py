"""Workflow files (``workflows/<name>.yaml``) parsed once into validated, frozen objects.

A workflow names the model, its classes and colours, the tiling and the clean-up of polygons.
Unknown keys are errors, so a typo fails at load time with the file, field and fix named,
never mid-run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from pipeline.errors import ConfigError, yaml_error

_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")

#: Where workflow names are looked up, after ``$GEOSEG_WORKFLOWS`` and ``./workflows``.
PROJECT_WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"


def _hex_colour(value: str) -> str:
    """``value`` in lower case if it is ``#rrggbb``, else a ValueError."""
    if not _COLOUR.match(value):
        raise ValueError(f"colour {value!r} is not #rrggbb")
    return value.lower()


#: A display colour, ``#rrggbb`` (kept in lower case).
Colour = Annotated[str, AfterValidator(_hex_colour), Field(description="Display colour, #rrggbb.")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassDef(_Strict):
    """One output class: its raster value, name, display colour and whether it becomes polygons."""

    value: int = Field(
        ge=0,
        le=254,
        description="Value in classes.tif (255 is nodata; a workflow's classes stop below 253, "
        "cloud shadow, and 254, cloud).",
    )
    name: str = Field(min_length=1)
    colour: Colour
    vectorize: bool = Field(default=True, description="Write polygons of this class.")

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The colour as 0–255 integers."""
        return int(self.colour[1:3], 16), int(self.colour[3:5], 16), int(self.colour[5:7], 16)


class PolygonClass(_Strict):
    """Vectorized classes that become polygons together, as one polygon class.

    Its polygons are the connected regions of those classes taken as one (a burn scar of
    every severity, say), cleaned as one: holes filled, small ones dropped. They carry the
    first of the classes' values, and this name and colour.
    """

    name: str = Field(min_length=1)
    colour: Colour
    classes: tuple[int, ...] = Field(min_length=1, description="Class values merged.")


class IndexModelConfig(_Strict):
    """``kind: index``: a spectral-index model from :mod:`pipeline.models.indices`."""

    kind: Literal["index"]
    name: str
    params: dict[str, float | list[float]] = Field(default_factory=dict)


class NormalizationConfig(_Strict):
    """Per input channel ``(reflectance - mean) / std``; one value per channel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


class TorchGeoModelConfig(_Strict):
    """``kind: torchgeo``: a segmentation network as TorchGeo's trainer builds it.

    ``checkpoint`` is a Lightning checkpoint of TorchGeo's ``SemanticSegmentationTask``, a
    plain state dict, or a checkpoint written by ``geoseg train`` (which carries a model card).
    ``weights`` names TorchGeo pretrained weights (e.g. ``ResNet18_Weights.SENTINEL2_ALL_MOCO``),
    resolved offline through the torch hub cache; backbone weights only initialise training.
    A relative ``checkpoint`` is relative to the workflow file.
    """

    kind: Literal["torchgeo"]
    arch: Literal["unet", "deeplabv3+", "fcn", "upernet", "segformer", "dpt"] = "unet"
    backbone: str = "resnet18"
    checkpoint: str | None = None
    weights: str | None = None
    bands: tuple[str, ...] | None = Field(
        default=None, description="Band common names in input order; the card's if omitted."
    )
    needs_before: bool = Field(default=False, description="Input is pre-event bands + bands.")
    normalization: NormalizationConfig | None = None
    gsd_m: float | None = Field(default=None, gt=0, description="Expected pixel size, m.")
    batch_size: int = Field(default=1, ge=1, le=256, description="Tiles per forward pass.")
    engine: Literal["auto", "torch", "openvino"] = Field(
        default="auto",
        description="What runs the forward pass: auto (the fastest that keeps the answers: "
        "torch on a CUDA GPU, else OpenVINO when its conversion reproduces torch, else torch), "
        "torch, or OpenVINO on the CPU (the network converted once and cached; workers then "
        "load no torch).",
    )
    precision: Literal["auto", "f32", "bf16"] = Field(
        default="auto",
        description="Arithmetic of the forward pass: auto (bf16 where OpenVINO runs it, the "
        "CPU has bfloat16 instructions and its classes agree with f32's on 99.9 % of the "
        "check pixels, else f32), f32, or bf16 (needs engine openvino and such a CPU; "
        "about 2x faster, classes differ on a few pixels in 10 000).",
    )

    @model_validator(mode="after")
    def _source(self) -> TorchGeoModelConfig:
        if self.checkpoint and self.weights:
            raise ValueError("give `checkpoint` or `weights`, not both")
        if self.precision == "bf16" and self.engine != "openvino":
            raise ValueError("`precision: bf16` needs `engine: openvino`")
        return self


#: Every model kind a workflow may name.
ModelConfig = Annotated[IndexModelConfig | TorchGeoModelConfig, Field(discriminator="kind")]


def model_content(
    config: IndexModelConfig | TorchGeoModelConfig, exclude: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """A model's configuration as JSON data, a checkpoint by its bytes' SHA-256, not its path.

    What digests of a model hash: the same model gets the same digest wherever its file lies,
    and retraining into the same file gets a new one. ``exclude`` leaves settings out.
    """
    from pipeline.reading import file_sha256

    data = config.model_dump(mode="json", exclude=set(exclude))
    checkpoint = data.pop("checkpoint", None)
    if checkpoint:
        data["checkpoint_sha256"] = file_sha256(checkpoint)
    return data


def uses_openvino(config: IndexModelConfig | TorchGeoModelConfig) -> bool:
    """Whether OpenVINO runs the model's forward pass (``engine: openvino``)."""
    return isinstance(config, TorchGeoModelConfig) and config.engine == "openvino"


class CleanupConfig(_Strict):
    """How class rasters are cleaned before they become polygons."""

    sieve_pixels: int = Field(
        default=0, ge=0, description="Merge regions smaller than this into neighbours."
    )
    min_area_m2: float = Field(default=0.0, ge=0, description="Drop polygons smaller than this.")
    fill_holes_m2: float = Field(
        default=0.0, ge=0, description="Fill holes smaller than this (m²) that hold no polygon."
    )
    simplify_m: float = Field(
        default=0.0, ge=0, description="Simplify edges by this tolerance (m), keeping them shared."
    )


class MaskConfig(_Strict):
    """How clouds and cloud shadows are masked before the model (:mod:`pipeline.masking`)."""

    method: Literal["auto", "quality", "network", "spectral", "none"] = Field(
        default="auto",
        description="auto: the scene's quality band, else the cloud networks, else the "
        "spectral test; or one of them by name; none: no mask.",
    )
    max_masked_fraction: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="Stop (exit 2) when more than this fraction of the scene's pixels with "
        "data is cloud or shadow.",
    )
    buffer_m: float = Field(
        default=60.0,
        ge=0,
        le=5000,
        description="Grow cloud and shadow by this distance (m): their edges are fuzzy.",
    )


class MonitorConfig(_Strict):
    """How ``geoseg monitor`` turns a series' runs into change alerts (:mod:`pipeline.monitoring`).

    A pixel's state is the class it was last *observed* as: under cloud, shadow or no data it
    keeps it. An alert is raised where a new observation leaves a ``lost`` class or enters an
    ``appeared`` one.
    """

    lost: tuple[str, ...] = Field(
        default=(),
        description="Classes whose loss is an alert: a pixel last observed as one of them, now "
        "observed as another class.",
    )
    appeared: tuple[str, ...] = Field(
        default=(),
        description="Classes whose appearance is an alert: a pixel now observed as one of them "
        "that was last observed as another class (for a two-date model, that was not one of "
        "them at the pre-event date).",
    )
    confirm: bool = Field(
        default=True,
        description="An alert starts at low confidence and becomes high when a later clear "
        "observation still shows the change; one it does not show is withdrawn. false: alerts "
        "are high at once (for models that compare two dates themselves: a scar is new once).",
    )
    min_area_m2: float = Field(
        default=0.0,
        ge=0,
        description="New detections in patches smaller than this (8-connected) raise no alert.",
    )
    baseline_observations: int = Field(
        default=2,
        ge=1,
        le=255,
        description="Clear observations in a row that make a pixel's class its baseline: only "
        "a baseline class can be lost (or, for a one-date model, give way to an appeared "
        "class), so one stray observation never raises an alert.",
    )


class Workflow(_Strict):
    """A validated workflow."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    description: str = ""
    model: ModelConfig
    classes: tuple[ClassDef, ...]
    tile_size: int = Field(
        default=1024, ge=16, le=16384, description="Output block edge in pixels."
    )
    halo: int = Field(default=0, ge=0, description="Context pixels read around each block.")
    cleanup: CleanupConfig = CleanupConfig()
    mask: MaskConfig = MaskConfig()
    polygons: tuple[PolygonClass, ...] = Field(
        default=(),
        description="Vectorized classes merged into one polygon class each; the other "
        "vectorized classes stay polygon classes of their own.",
    )
    monitor: MonitorConfig = MonitorConfig()

    @model_validator(mode="after")
    def _classes_consistent(self) -> Workflow:
        values = [c.value for c in self.classes]
        if values != list(range(len(values))):
            raise ValueError(f"class values must be 0, 1, 2, … in order; got {values}")
        if len(values) > 253:
            raise ValueError("at most 253 classes: values 253 and 254 mark cloud shadow and cloud")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"class names repeat: {names}")
        if not any(c.vectorize for c in self.classes):
            raise ValueError("no class has `vectorize: true`; polygons would be empty")
        vectorized = {c.value for c in self.classes if c.vectorize}
        seen: set[int] = set()
        for group in self.polygons:
            stray = sorted(set(group.classes) - vectorized)
            if stray:
                raise ValueError(
                    f"polygons {group.name!r}: classes {stray} are not vectorized classes"
                )
            if seen & set(group.classes):
                raise ValueError(f"polygons {group.name!r}: a class is in two polygon classes")
            seen |= set(group.classes)
        names = [c.name for c in self.polygon_classes()]
        if len(set(names)) != len(names):
            raise ValueError(f"polygon class names repeat: {names}")
        known = {c.name for c in self.classes}
        watched = (*self.monitor.lost, *self.monitor.appeared)
        unknown = [n for n in watched if n not in known]
        if unknown:
            raise ValueError(f"monitor: no class {unknown[0]!r} (classes: {sorted(known)})")
        if set(self.monitor.lost) & set(self.monitor.appeared):
            raise ValueError("monitor: a class cannot be both `lost` and `appeared`")
        return self

    def polygon_classes(self) -> tuple[ClassDef, ...]:
        """What becomes polygons, in class order.

        Each ``polygons`` entry (valued by its first class), and each vectorized class in none.
        """
        first = {min(g.classes): g for g in self.polygons}
        grouped = {v for g in self.polygons for v in g.classes}
        out = []
        for c in self.classes:
            if c.value in first:
                g = first[c.value]
                out.append(ClassDef(value=c.value, name=g.name, colour=g.colour))
            elif c.vectorize and c.value not in grouped:
                out.append(c)
        return tuple(out)

    def polygon_lookup(self) -> tuple[int, ...]:
        """Raster value → the value its pixels are vectorized as (merged classes share one)."""
        lookup = list(range(256))
        for g in self.polygons:
            for v in g.classes:
                lookup[v] = min(g.classes)
        return tuple(lookup)

    def with_overrides(self, tile_size: int | None = None, halo: int | None = None) -> Workflow:
        """Return a copy with command-line overrides applied and validated."""
        data = self.model_dump()
        if tile_size is not None:
            data["tile_size"] = tile_size
        if halo is not None:
            data["halo"] = halo
        try:
            return Workflow.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"workflow {self.name!r}: {_describe(exc)}") from None


def workflow_dirs() -> list[Path]:
    """Folders searched for a workflow given by name, in order."""
    dirs = [Path(p) for p in os.environ.get("GEOSEG_WORKFLOWS", "").split(os.pathsep) if p]
    return [*dirs, Path.cwd() / "workflows", PROJECT_WORKFLOWS]


def available_workflows() -> list[str]:
    """Names of the workflows found in :func:`workflow_dirs`."""
    names = {p.stem for d in workflow_dirs() if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(names)


def find_workflow(name_or_path: str) -> Path:
    """Locate a workflow by name (``forest``) or path (``my/flow.yaml``)."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in {".yaml", ".yml"} or os.sep in name_or_path:
        if not candidate.is_file():
            raise ConfigError(f"{candidate}: workflow file not found")
        return candidate.resolve()
    for d in workflow_dirs():
        p = d / f"{name_or_path}.yaml"
        if p.is_file():
            return p.resolve()
    known = ", ".join(available_workflows()) or "none"
    raise ConfigError(
        f"no workflow named {name_or_path!r} (known: {known}); "
        "give a name or a path to a .yaml file"
    )


def load_workflow(name_or_path: str) -> Workflow:
    """Find, parse and validate a workflow; raise :class:`ConfigError` with a one-line reason."""
    path = find_workflow(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise yaml_error(path, exc) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of workflow settings")
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("checkpoint"), str):
        # A relative checkpoint belongs to the workflow file, wherever geoseg runs from.
        ckpt = Path(model["checkpoint"]).expanduser()
        raw = {**raw, "model": {**model, "checkpoint": str(path.parent / ckpt)}}
    try:
        return Workflow.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg: Any = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key; see README.md for the workflow fields"
    if err["type"] in {"union_tag_invalid", "union_tag_not_found"}:
        loc += ".kind"
    return f"field {loc!r}: {msg}"
