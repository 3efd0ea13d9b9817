"""Scenes a catalog finds rather than lists: file patterns on disk, and STAC catalogs and APIs.

:mod:`pipeline.catalog` parses ``data_catalog.yaml``; this module owns the two ways its scenes
are found:

* A **pattern entry**, a ``scenes:`` key with placeholders (``pucallpa-{year}``), is expanded
  by :func:`expand_patterns` each time the catalog loads: its file template is globbed relative
  to the catalog file, and each matching file is one scene, its id the key filled in with the
  file's values and its date read from them. ``{year}`` alone dates a scene 1 January of that
  year, ``{year}`` and ``{month}`` the first of that month.
* A **STAC source**, an entry of ``stac:``, is read by :func:`read_source` with pystac (a
  static catalog, collection or item JSON, local or over http) or pystac-client (a STAC API
  that conforms to item search): each item is one scene of the source's series, its bands
  taken from the assets' ``eo:bands`` common names (STAC 1.0) or ``bands`` with
  ``eo:common_name`` (STAC 1.1), its scaling from ``raster:bands`` where they give it.

Reading a source is the only place here that touches the network; pystac-client is imported
only when an API is searched.
"""

from __future__ import annotations

import datetime as dt
import glob
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import pystac
import requests
from pystac.stac_io import DefaultStacIO

from pipeline.catalog import (
    COMMON_BANDS,
    QUALITY_BANDS,
    BandSource,
    Scene,
    SceneEntry,
    StacSource,
    is_local,
    resolve_path,
)
from pipeline.errors import ConfigError, SceneError
from pipeline.remote import redact

#: Placeholders a pattern entry's key and files may hold, and the text each stands for.
PLACEHOLDERS: dict[str, str] = {
    "year": r"\d{4}",
    "month": r"\d{2}",
    "day": r"\d{2}",
    "date": r"\d{4}-\d{2}-\d{2}|\d{8}",
}

#: Seconds to wait for a STAC server before calling the source unreadable.
HTTP_TIMEOUT_S = 30.0

_FIELD = re.compile(r"\{([^{}]*)\}")
_SEPARATORS = "-_. "
_ITEM_SEARCH = re.compile(r"^https?://api\.stacspec\.org/v1\.[^/]+/item-search$")
#: What reading a STAC document can raise: I/O and HTTP (requests' errors are OSErrors),
#: invalid JSON (ValueError), and JSON that is not the STAC object pystac expects.
_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, pystac.STACError, pystac.STACTypeError)


# --- pattern entries ------------------------------------------------------------------------


def is_pattern(key: str) -> bool:
    """Whether a ``scenes:`` key is a file pattern (it holds a ``{…}`` placeholder)."""
    return "{" in key or "}" in key


def expand_patterns(
    scenes: Mapping[str, SceneEntry], catalog: Path
) -> tuple[dict[str, SceneEntry], dict[str, SceneEntry]]:
    """Every scene id of ``scenes`` with its entry, and the pattern entries as written.

    Plain entries pass through; each pattern entry is replaced, where it stands, by one entry
    per file its template matches now (oldest first), ``path``/``assets`` filled in,
    ``acquired`` from the file's name and ``series`` defaulted. The patterns come back with
    their ``series`` filled in. Raises :class:`ConfigError` for a malformed pattern, a file
    whose name is no date, or an id given twice.
    """
    plain = {k for k in scenes if not is_pattern(k)}
    entries: dict[str, SceneEntry] = {}
    patterns: dict[str, SceneEntry] = {}
    for key, entry in scenes.items():
        where = f"{catalog}: scene {key!r}"
        if key in plain:
            _check_plain(entry, where)
            entries[key] = entry
            continue
        pattern = _check_pattern(key, entry, where)
        patterns[key] = pattern
        for sid, found, file in _expand(key, pattern, catalog.parent, where):
            if sid in entries or sid in plain:
                raise ConfigError(
                    f"{where}: file {file} gives scene id {sid!r}, which the catalog has "
                    "already; rename that scene or change the pattern's key"
                )
            entries[sid] = found
    return entries, patterns


def _templates(entry: SceneEntry) -> dict[str, str]:
    """An entry's file fields by name (``path`` or ``assets.NAME``), the first drives a glob."""
    if entry.path is not None:
        return {"path": entry.path}
    return {f"assets.{name}": value for name, value in (entry.assets or {}).items()}


def _placeholders(text: str, where: str) -> list[str]:
    """The placeholder names in ``text`` in order; unknown names and stray braces are errors."""
    names = _FIELD.findall(text)
    unknown = [n for n in names if n not in PLACEHOLDERS]
    rest = _FIELD.sub("", text)
    if unknown or "{" in rest or "}" in rest:
        bad = f"unknown placeholder {{{unknown[0]}}}" if unknown else "a brace outside {…}"
        raise ConfigError(f"{where}: {text!r} has {bad}; placeholders are {_listed(PLACEHOLDERS)}")
    return names


def _listed(names: Iterable[str]) -> str:
    return ", ".join(f"{{{n}}}" for n in names)


def _check_plain(entry: SceneEntry, where: str) -> None:
    """A plain entry's files must not hold placeholders: its key would need them too."""
    for field, value in _templates(entry).items():
        names = [n for n in _FIELD.findall(value) if n in PLACEHOLDERS]
        if names:
            raise ConfigError(
                f"{where}, field {field!r}: {value!r} holds {{{names[0]}}} but the key has no "
                "placeholder; put the same placeholders in the key to make it a pattern entry"
            )


def _check_pattern(key: str, entry: SceneEntry, where: str) -> SceneEntry:
    """Check a pattern entry's placeholders and files; return it with its ``series`` set."""
    names = _placeholders(key, where)
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: the key repeats a placeholder; give each once")
    used = set(names)
    if "date" in used and used & {"year", "month", "day"}:
        raise ConfigError(f"{where}: use {{date}} alone, or {{year}} with {{month}}/{{day}}")
    if "date" not in used and "year" not in used:
        raise ConfigError(f"{where}: a pattern needs {{year}} or {{date}}: its scenes are dated")
    if "day" in used and "month" not in used:
        raise ConfigError(f"{where}: {{day}} needs {{month}} in the key too")
    if entry.acquired is not None:
        raise ConfigError(
            f"{where}, field 'acquired': a pattern entry is dated by its file names; remove "
            "`acquired:` (or list the scene as an entry of its own)"
        )
    for i, (field, value) in enumerate(_templates(entry).items()):
        if not is_local(value):
            raise ConfigError(
                f"{where}, field {field!r}: {value!r} is a URL or pkg: path, and a pattern's "
                "files are found by globbing local paths; give a local path template, or list "
                "each scene as an entry of its own"
            )
        found = set(_placeholders(value, f"{where}, field {field!r}"))
        # The first file is globbed to find the scenes, so it needs every value of the key;
        # the others are filled in from it, and one shared by every date is fine.
        driving = i == 0
        if (driving and found != used) or not found <= used:
            need = "the same placeholders as" if driving else "only placeholders of"
            raise ConfigError(
                f"{where}, field {field!r}: {value!r} must use {need} the key "
                f"({_listed(names)}); make the key and the files agree"
            )
    series = entry.series or _series_name(key)
    if not series:
        raise ConfigError(f"{where}: the key is only placeholders; give the entry `series:`")
    return entry.model_copy(update={"series": series})


def _series_name(key: str) -> str:
    """The key without its placeholders and the separators before them (or after, at its start)."""
    stripped = re.sub(rf"[{re.escape(_SEPARATORS)}]*{_FIELD.pattern}", "", key)
    return stripped.strip(_SEPARATORS)


def _expand(
    key: str, pattern: SceneEntry, base: Path, where: str
) -> Iterator[tuple[str, SceneEntry, str]]:
    """One (id, entry, file) per file the pattern's first template matches, oldest first."""
    templates = _templates(pattern)
    field, template = next(iter(templates.items()))
    found = []
    for values, name in _glob(template, base):
        try:
            when = _date(values)
        except ValueError:
            raise ConfigError(
                f"{where}, field {field!r}: file {name} matches the pattern but "
                f"{', '.join(values.values())} is not a date; rename the file or move it away"
            ) from None
        found.append((when, _fill(key, values), name, values))
    for when, sid, name, values in sorted(found, key=lambda f: (f[0], f[1])):
        filled = {f: _fill(t, values) for f, t in templates.items()}
        update: dict[str, Any] = {"acquired": when}
        if pattern.path is not None:
            update["path"] = filled["path"]
        else:
            update["assets"] = {f.removeprefix("assets."): v for f, v in filled.items()}
        yield sid, pattern.model_copy(update=update), name


def _glob(template: str, base: Path) -> Iterator[tuple[dict[str, str], str]]:
    """The files ``template`` matches (relative to ``base``): each one's values and path."""
    template = os.path.expanduser(template)
    prefix = "" if os.path.isabs(template) else str(base) + os.sep
    wildcard, regex, seen, pos = glob.escape(prefix), re.escape(prefix), set(), 0
    for m in _FIELD.finditer(template):
        literal, name = template[pos : m.start()], m.group(1)
        wildcard += glob.escape(literal) + "*"
        regex += re.escape(literal)
        regex += f"(?P={name})" if name in seen else f"(?P<{name}>{PLACEHOLDERS[name]})"
        seen.add(name)
        pos = m.end()
    wildcard += glob.escape(template[pos:])
    regex += re.escape(template[pos:])
    for name in sorted(glob.glob(wildcard)):
        match = re.fullmatch(regex, name)
        if match and os.path.isfile(name):
            yield match.groupdict(), name


def _date(values: dict[str, str]) -> dt.date:
    """The date a file's placeholder values give; a missing month or day is the first."""
    if "date" in values:
        digits = values["date"].replace("-", "")
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    return dt.date(int(values["year"]), int(values.get("month", 1)), int(values.get("day", 1)))


def _fill(template: str, values: dict[str, str]) -> str:
    """``template`` with each placeholder replaced by its value as the file name writes it."""
    return _FIELD.sub(lambda m: values[m.group(1)], template)


# --- STAC sources ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceItem:
    """One item of a STAC source: its id and date, and its scene or why it cannot be one."""

    id: str
    acquired: dt.date | None
    scene: Scene | None = None
    problem: str = ""

    def resolve(self) -> Scene:
        """The item's scene, or :class:`SceneError` saying why it has none."""
        if self.scene is None:
            raise SceneError(self.problem)
        return self.scene


class _HttpStacIO(DefaultStacIO):
    """pystac's reader with http(s) through requests: a timeout, and HTTP errors raised as such.

    pystac's own reader waits without limit and wraps an HTTP error in a bare Exception.
    """

    def read_text_from_href(self, href: str) -> str:
        """The text at ``href``: a local file, or an http(s) URL fetched with a timeout."""
        if not _is_http(href):
            return str(super().read_text_from_href(href))
        response = requests.get(href, timeout=HTTP_TIMEOUT_S)
        response.raise_for_status()
        return str(response.text)


def read_source(name: str, source: StacSource, catalog: Path) -> tuple[SourceItem, ...]:
    """The items of STAC source ``name`` that its filters keep, oldest first (ties by id).

    ``catalog`` is the catalog file (relative ``href`` s start from its folder). Items that
    cannot be scenes (a band of ``assets:`` missing, a local file absent) are kept with the
    reason. Raises :class:`ConfigError` naming the source when it cannot be read.
    """
    where = f"{catalog}: STAC source {name!r}"
    href = source.href
    if not _is_http(href):
        local = Path(href).expanduser()
        local = (local if local.is_absolute() else catalog.parent / local).resolve()
        if not local.is_file():
            raise ConfigError(f"{where}: file not found: {local}; fix the source's `href`")
        href = str(local)
    stac_io = _HttpStacIO()
    try:
        root = stac_io.read_json(href)
        if not isinstance(root, dict):
            raise ValueError("its JSON is not an object")
        if _is_http(href) and _searchable(root):
            items = _search(href, source, where)
        else:
            items = _static(pystac.read_dict(root, href=href, stac_io=stac_io), source, where)
        scenes = [_source_item(item, name, source, where) for item in items]
    except ConfigError:
        raise
    except _READ_ERRORS as exc:
        raise _unreadable(where, href, exc) from None
    twice = next((i for i, n in Counter(s.id for s in scenes).items() if n > 1), None)
    if twice is not None:
        raise ConfigError(
            f"{where}: item id {twice!r} appears twice; narrow the source with `collection:`"
        )
    return tuple(sorted(scenes, key=lambda s: (s.acquired or dt.date.min, s.id)))


def _unreadable(where: str, href: str, exc: Exception) -> ConfigError:
    """The error for a source that cannot be read, with the reader's reason in one line."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    message = (
        f"{where}: cannot read {href}: {reason}; point `href` at a STAC catalog, collection "
        "or API root (and check the network for a URL)"
    )
    return ConfigError(redact(message))  # no credentials of the URL in the error line


def _is_http(href: str) -> bool:
    return urlparse(href).scheme.lower() in ("http", "https")


def _searchable(root: dict[str, Any]) -> bool:
    """Whether a landing page declares STAC API item search."""
    return any(_ITEM_SEARCH.match(str(c)) for c in root.get("conformsTo") or ())


def _search(href: str, source: StacSource, where: str) -> list[pystac.Item]:
    """The items a STAC API's search gives for the source's collection, bbox and datetime."""
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    if source.collection is None:
        raise ConfigError(
            f"{where}: {href} is a STAC API, and searching it needs `collection:`; add the "
            "collection id to the source"
        )
    try:
        client = Client.open(href, timeout=HTTP_TIMEOUT_S)
        search = client.search(
            collections=[source.collection],
            bbox=list(source.bbox) if source.bbox else None,
            datetime=source.datetime,
        )
        return list(search.items())
    except (APIError, NotImplementedError) as exc:
        # NotImplementedError: pystac-client's word for an API without a search it can use.
        raise _unreadable(where, href, exc) from None


def _static(root: pystac.STACObject, source: StacSource, where: str) -> list[pystac.Item]:
    """The items of a static catalog, collection or item that the source's filters keep."""
    if isinstance(root, pystac.Item):
        found: Iterable[pystac.Item] = [root]
    elif isinstance(root, pystac.Catalog):
        node: pystac.Catalog | None = root
        if source.collection is not None and root.id != source.collection:
            node = root.get_child(source.collection, recursive=True)
        if node is None:
            children = ", ".join(c.id for c in root.get_children()) or "none"
            raise ConfigError(
                f"{where}: no collection {source.collection!r} in {root.id!r} (its children: "
                f"{children}); fix the source's `collection:`"
            )
        found = node.get_items(recursive=True)
    else:
        raise ValueError(f"a {type(root).__name__}, not a catalog, collection or item")
    return [item for item in found if _kept(item, source)]


def _kept(item: pystac.Item, source: StacSource) -> bool:
    """Whether ``item`` meets the source's bbox and datetime, as an API search would."""
    if source.bbox is not None and item.bbox:
        # A 3-D bbox is [west, south, bottom, east, north, top].
        half = len(item.bbox) // 2
        west, south, east, north = *item.bbox[:2], *item.bbox[half : half + 2]
        w, s, e, n = source.bbox
        if south > n or north < s or not _spans_meet(west, east, w, e):
            return False
    start, end = source.time_range()
    first, last = _item_span(item)
    if start is not None and last is not None and last < start:
        return False
    return not (end is not None and first is not None and first > end)


def _spans_meet(west: float, east: float, w: float, e: float) -> bool:
    """Whether two longitude spans meet; a span whose west exceeds its east crosses 180°."""

    def pieces(a: float, b: float) -> list[tuple[float, float]]:
        return [(a, b)] if a <= b else [(a, 180.0), (-180.0, b)]

    return any(a <= d and c <= b for a, b in pieces(west, east) for c, d in pieces(w, e))


def _item_span(item: pystac.Item) -> tuple[dt.datetime | None, dt.datetime | None]:
    """An item's time as UTC bounds: its datetime, or its start and end."""
    meta = item.common_metadata
    first = item.datetime or meta.start_datetime
    last = item.datetime or meta.end_datetime or first
    return _utc(first), _utc(last)


def _utc(when: dt.datetime | None) -> dt.datetime | None:
    if when is None:
        return None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def _acquired(item: pystac.Item) -> dt.date | None:
    """The UTC date of an item's datetime, or of its start."""
    first, _ = _item_span(item)
    return first.date() if first is not None else None


def _source_item(item: pystac.Item, name: str, source: StacSource, where: str) -> SourceItem:
    """An item as a :class:`SourceItem`: its scene, or the reason it cannot be one."""
    try:
        scene = item_scene(item, name, source, f"{where}, item {item.id!r}")
    except SceneError as exc:
        return SourceItem(item.id, _acquired(item), problem=str(exc))
    return SourceItem(item.id, scene.acquired, scene)


@dataclass(frozen=True)
class _Offer:
    """One band an item's asset offers: where it is and the scaling its metadata gives."""

    name: str
    asset: str
    index: int
    scale: float | None
    offset: float | None
    nodata: float | None
    #: How many bands the asset holds: a band's own asset wins over a multi-band one.
    width: int
    order: int


def item_scene(item: pystac.Item, series: str, source: StacSource, where: str) -> Scene:
    """The scene of a STAC item, its bands chosen as the source says; ``where`` leads errors.

    A band name offered by several assets comes from the one with fewest bands (then the
    first), so a true-colour preview never stands in for the red band. Raises
    :class:`SceneError` for a band of ``assets:`` the item lacks or a local file not there.
    """
    offers: dict[str, _Offer] = {}
    for offer in _offers(item):
        held = offers.get(offer.name)
        if held is None or (offer.width, offer.order) < (held.width, held.order):
            offers[offer.name] = offer
    wanted = list(source.assets) if source.assets is not None else list(offers)
    missing = [b for b in wanted if b not in offers]
    if missing or not wanted:
        given = ", ".join(offers) or "no band with an eo common name"
        raise SceneError(
            f"{where}: no band {missing[0]!r} among its assets (they give: {given}); drop it "
            "from the source's `assets:` or narrow the source to items that have it"
            if missing
            else f"{where}: no asset has a band with an eo common name or the key scl/qa_pixel; "
            "add `eo:bands` to the items or list the scene under `scenes:`"
        )
    bands = []
    for band in wanted:
        offer = offers[band]
        href = _asset_href(item, offer.asset, f"{where}, asset {offer.asset!r}")
        scale = source.scale if offer.scale is None else offer.scale
        offset = source.offset if offer.offset is None else offer.offset
        if band in QUALITY_BANDS:
            scale, offset = 1.0, 0.0
        if scale == 0:
            raise SceneError(f"{where}, asset {offer.asset!r}: its `raster:bands` scale is 0")
        bands.append(BandSource(band, href, offer.index, scale, offset))
    return Scene(
        id=item.id,
        bands=tuple(bands),
        nodata=_nodata([offers[b] for b in wanted if b not in QUALITY_BANDS], source.nodata),
        acquired=_acquired(item),
        series=series,
        sensor=source.sensor,
    )


def _offers(item: pystac.Item) -> Iterator[_Offer]:
    """Every band an item's assets name: eo common names, and the quality asset keys."""
    for order, (key, asset) in enumerate(item.assets.items()):
        bands = _asset_bands(asset.to_dict())
        if key.lower() in QUALITY_BANDS:
            nodata = bands[0][3] if bands else None
            yield _Offer(key.lower(), key, 1, None, None, nodata, 1, order)
            continue
        for index, (common, scale, offset, nodata) in enumerate(bands, start=1):
            if common in COMMON_BANDS:
                yield _Offer(common, key, index, scale, offset, nodata, len(bands), order)


def _asset_bands(
    asset: dict[str, Any],
) -> list[tuple[str | None, float | None, float | None, float | None]]:
    """Each band of an asset as (common name, scale, offset, nodata), None where not given.

    STAC 1.1 lists them in ``bands`` (``eo:common_name``, ``raster:scale``…); STAC 1.0 in
    ``eo:bands`` (``common_name``) beside ``raster:bands`` (``scale``…), in the same order.
    """
    if isinstance(asset.get("bands"), list):
        return [
            (
                _text(b.get("eo:common_name")),
                _number(b.get("raster:scale", b.get("scale"))),
                _number(b.get("raster:offset", b.get("offset"))),
                _number(b.get("nodata")),
            )
            for b in asset["bands"]
            if isinstance(b, dict)
        ]
    eo = [b for b in asset.get("eo:bands") or () if isinstance(b, dict)]
    raster = [b for b in asset.get("raster:bands") or () if isinstance(b, dict)]
    out = []
    for i in range(max(len(eo), len(raster))):
        named = eo[i] if i < len(eo) else {}
        scaled = raster[i] if i < len(raster) else {}
        out.append(
            (
                _text(named.get("common_name")),
                _number(scaled.get("scale")),
                _number(scaled.get("offset")),
                _number(scaled.get("nodata")),
            )
        )
    return out


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: object) -> float | None:
    """A JSON number (or raster's ``"nan"``/``"inf"`` strings) as a float; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf"):
        return float(value)
    return None


def _nodata(offers: list[_Offer], default: float | None) -> float | None:
    """The chosen bands' nodata when their metadata agree on one, else the source's."""
    values = [o.nodata for o in offers]
    first = values[0] if values else None
    if first is None or any(v is None for v in values):
        return default
    same = all(v == first or (math.isnan(first) and math.isnan(v)) for v in values if v is not None)
    return first if same else default


def _asset_href(item: pystac.Item, key: str, where: str) -> str:
    """An asset's href made absolute against the item's own; a local file must be there."""
    href = item.assets[key].get_absolute_href()
    if href is None:
        raise SceneError(f"{where}: the asset has no href; fix the item")
    if urlparse(href).scheme.lower() == "file":
        href = url2pathname(urlparse(href).path)
    if is_local(href) and not os.path.isabs(href):
        raise SceneError(
            f"{where}: href {href!r} is relative and the item has no self link to resolve it "
            "against; give the item a self link or absolute asset hrefs"
        )
    return resolve_path(href, Path("/"), where)
