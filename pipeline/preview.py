"""``preview.png``: one picture per run, to review a batch at a glance without a GIS.

This module owns the rendering only. It takes small arrays (the scene in natural colour or
grey and the class raster, both decimated by :func:`pipeline.reading.read_overview` and
:func:`pipeline.reading.read_band_overview` to :func:`overview_shape`) and returns PNG bytes,
which :mod:`pipeline.publish` writes; it opens no file except its fonts. The picture is drawn
with Pillow alone: the map's pixels are placed as they are, and text, legend and scale bar are
drawn around them: Pillow renders it several times faster than matplotlib, whose import
alone cost the client more than the render (``BENCHMARKS.md``).
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.util
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from pipeline.grid import Grid, ground_size_m
from pipeline.masking import MASK_CLASSES
from pipeline.workflow import ClassDef, Workflow

#: Longest side of the scene image in a preview, in pixels (the read is decimated to it).
MAX_SIZE = 1000
#: The scene is shown displayed at least this large, so small scenes stay readable.
MIN_DISPLAY = 640
#: Bands of a natural-colour image, in display order.
NATURAL_COLOUR = ("red", "green", "blue")
#: Opacity of the class colours over the scene.
OVERLAY_ALPHA = 0.7
#: Saturation kept in the scene under the classes: muted, so class colours stand out even
#: where they resemble the land they mark (dark green forest on dark green woods).
BASE_SATURATION = 0.3
#: zlib effort of the PNG (0–9).
PNG_LEVEL = 1
#: Where no band holds data.
NODATA_COLOUR = "#f0f0f0"

_LEGEND_PX = 300
_TITLE_PX = 78
_MARGIN_PX = 16
#: Text sizes in pixels: title, subtitle, legend title, legend and scale bar labels.
_TITLE_FONT, _SUBTITLE_FONT, _LEGEND_TITLE_FONT, _LABEL_FONT = 24, 14, 15, 14
_EDGE = "#333333"
_COMPOSE_ROWS = 128
_NODATA_RGB = [v / 255 for v in ImageColor.getrgb(NODATA_COLOUR)]


def preview_bands(available: Sequence[str], model_bands: Sequence[str]) -> tuple[str, ...]:
    """Red, green and blue when the scene has them, else the model's first band (shown grey)."""
    if all(b in available for b in NATURAL_COLOUR):
        return NATURAL_COLOUR
    return (model_bands[0],)


def overview_shape(grid: Grid, max_size: int = MAX_SIZE) -> tuple[int, int]:
    """(h, w) of the preview image: square ground pixels, long side ≤ ``max_size``.

    Never larger than the grid's own long side, so a small scene is not read upsampled.
    In a geographic CRS the pixels of the grid are not square on the ground; the preview's are.
    """
    width_m, height_m = ground_size_m(grid)
    long_side = min(max_size, max(grid.width, grid.height))
    if width_m >= height_m:
        return max(1, round(long_side * height_m / width_m)), long_side
    return long_side, max(1, round(long_side * width_m / height_m))


def stretch(
    data: np.ndarray, valid: np.ndarray, low: float = 2.0, high: float = 98.0
) -> np.ndarray:
    """Bands ``[c, h, w]`` to an image ``[h, w, c]`` in 0..1, stretched per band.

    Each band maps linearly from its ``low`` to its ``high`` percentile over valid pixels.
    """
    out = np.zeros((*data.shape[1:], data.shape[0]), dtype=np.float32)
    if not valid.any():
        return out
    for i, band in enumerate(data):
        lo, hi = np.percentile(band[valid], [low, high])
        span = hi - lo if hi > lo else 1.0
        out[..., i] = np.clip((band - lo) / span, 0.0, 1.0)
    return out


def nice_length(max_m: float) -> float:
    """The largest 1, 2 or 5 × 10ⁿ metres not above ``max_m`` (a scale bar's length)."""
    if max_m <= 0:
        raise ValueError("scale bar length must be positive")
    power = 10.0 ** math.floor(math.log10(max_m))
    return max(step * power for step in (1, 2, 5) if step * power <= max_m)


def format_length(metres: float) -> str:
    """``250 m``, ``2 km``, ``2.5 km``."""
    if metres >= 1000:
        return f"{metres / 1000:g} km"
    return f"{metres:g} m"


def muted_scene(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The scene as the map shows it under the classes: float32 ``[h, w, 3]`` in 0..1.

    ``image`` is ``[3, h, w]`` (red, green, blue) or ``[1, h, w]`` (grey) reflectance, stretched
    and kept at :data:`BASE_SATURATION`; pixels without data are :data:`NODATA_COLOUR`. It needs
    no classes, so a run makes it while the tiles are still being classified.
    """
    base = stretch(image, valid)
    grey = base.mean(axis=2, keepdims=True)
    # grey + BASE_SATURATION × (base − grey), computed in place: no 12 MB temporaries at 1000².
    base -= grey
    base *= BASE_SATURATION
    base += grey
    if base.shape[2] == 1:
        base = np.repeat(base, 3, axis=2)
    base[~valid] = _NODATA_RGB
    return base


def compose(
    image: np.ndarray,
    valid: np.ndarray,
    classes: np.ndarray,
    class_defs: Sequence[ClassDef],
    muted: np.ndarray | None = None,
) -> np.ndarray:
    """The map picture, uint8 ``[h, w, 3]``: the scene muted, the classes blended over it.

    ``image`` is ``[3, h, w]`` (red, green, blue) or ``[1, h, w]`` (grey) reflectance; each
    vectorized class, and cloud and cloud shadow (:data:`~pipeline.masking.MASK_CLASSES`), is
    mixed in at :data:`OVERLAY_ALPHA`; pixels without data are
    :data:`NODATA_COLOUR`. ``muted`` is :func:`muted_scene` of ``image`` when made beforehand;
    then only the class pixels are computed here (at 1000², 0.03 s against 0.10 s).
    """
    base = muted_scene(image, valid) if muted is None else muted
    colour = np.zeros((256, 3), dtype=np.float32)
    alpha = np.zeros(256, dtype=np.float32)
    for c in _drawn(class_defs):
        colour[c.value] = [v / 255 for v in c.rgb]
        alpha[c.value] = OVERLAY_ALPHA
    out = np.empty(base.shape, dtype=np.uint8)
    # By bands of rows, so that the temporaries stay small (the client composes this while
    # its COG copies run): 2 MB at a time instead of 60 MB at 1000².
    for top in range(0, base.shape[0], _COMPOSE_ROWS):
        rows = slice(top, top + _COMPOSE_ROWS)
        muted_rows, class_rows = base[rows], classes[rows]
        part = np.round(muted_rows * 255).astype(np.uint8)
        shown = (alpha[class_rows] > 0) & valid[rows]
        drawn = class_rows[shown]
        a = alpha[drawn][:, None]
        blend = (1 - a) * muted_rows[shown] + a * colour[drawn]
        part[shown] = np.round(blend * 255).astype(np.uint8)
        out[rows] = part
    return out


def render_preview(
    image: np.ndarray,
    valid: np.ndarray,
    classes: np.ndarray,
    class_defs: Sequence[ClassDef],
    grid: Grid,
    scene_id: str,
    acquired: dt.date | None,
    subtitle: str = "",
    labels: Mapping[int, str] | None = None,
    picture: np.ndarray | None = None,
    extra: Sequence[tuple[str, str]] = (),
) -> bytes:
    """Render the preview and return it as PNG bytes.

    The map (:func:`compose`) with a title (scene id and acquisition date), ``subtitle``, a
    legend of the vectorized classes (and of cloud and cloud shadow where the map shows them)
    and a scale bar. ``classes`` is the class raster on the
    same decimated pixels as ``image``; ``grid`` is the run's full grid (for the scale bar);
    ``labels`` replaces a class's legend text (class value → text); ``extra`` entries
    (``#rrggbb``, text) follow the classes'. ``picture`` is the map when :func:`compose` has
    already made it of these arrays.
    """
    h, w = classes.shape
    assert image.shape[1:] == (h, w) and valid.shape == (h, w), "arrays must share one shape"
    if picture is None:
        picture = compose(image, valid, classes, class_defs)
    scale = max(1.0, MIN_DISPLAY / max(h, w))
    if scale > 1:  # small scenes are shown larger, pixel for pixel (nearest neighbour)
        size = (max(round(w * scale), 1), max(round(h * scale), 1))
        picture = np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.NEAREST))
    disp_h, disp_w = picture.shape[:2]
    canvas = np.full(
        (_TITLE_PX + disp_h + _MARGIN_PX, _MARGIN_PX + disp_w + _LEGEND_PX, 3), 255, np.uint8
    )
    canvas[_TITLE_PX : _TITLE_PX + disp_h, _MARGIN_PX : _MARGIN_PX + disp_w] = picture
    out_image = Image.fromarray(canvas)
    _scale_bar(out_image, grid, (_MARGIN_PX, _TITLE_PX, disp_w, disp_h))
    draw = ImageDraw.Draw(out_image)
    # The map's frame, just outside its pixels.
    draw.rectangle(
        (_MARGIN_PX - 1, _TITLE_PX - 1, _MARGIN_PX + disp_w, _TITLE_PX + disp_h), outline="black"
    )
    date = acquired.isoformat() if acquired else "date unknown"
    draw.text((_MARGIN_PX, 14), f"{scene_id} · {date}", fill="black", font=_font(_TITLE_FONT, True))
    if subtitle:
        draw.text((_MARGIN_PX, 46), subtitle, fill="#444444", font=_font(_SUBTITLE_FONT))

    present = np.zeros(256, dtype=bool)
    present[np.unique(classes)] = True
    entries = [
        (c.colour, (labels or {}).get(c.value, c.name))
        for c in _drawn(class_defs)
        if c.vectorize or present[c.value]
    ]
    entries += list(extra)
    if not valid.all():
        entries.append((NODATA_COLOUR, "no data"))
    _legend(draw, _MARGIN_PX + disp_w + 12, _TITLE_PX, entries)

    # zlib level 1: a third of the default level's time for a file a few per cent larger.
    out = io.BytesIO()
    info = PngInfo()
    info.add_text("Title", f"{scene_id} {date}")
    info.add_text("Software", "geoseg")
    out_image.save(out, format="PNG", pnginfo=info, compress_level=PNG_LEVEL)
    return out.getvalue()


def _drawn(class_defs: Sequence[ClassDef]) -> list[ClassDef]:
    """The classes a preview draws: the vectorized ones, then cloud and cloud shadow."""
    return [c for c in class_defs if c.vectorize] + list(MASK_CLASSES)


def legend(
    workflow: Workflow,
    polygons: np.ndarray,
    polygon_area_m2: np.ndarray,
    class_area_m2: np.ndarray,
    masked: Mapping[str, float],
) -> tuple[dict[int, str], list[tuple[str, str]]]:
    """A run's legend texts (class value → text) and its merged polygon classes' entries.

    A class that is its own polygon class shows its polygons and their area; a class merged
    into a polygon class with others (``Workflow.polygons``) shows its own area, and the
    polygon class follows with its polygons; cloud and shadow show their share of the scene.
    Counts and areas are indexed by class value.
    """
    shown = workflow.polygon_classes()
    own = {c.value: c for c in shown}

    def polygons_of(c: ClassDef) -> str:
        area = format_area(float(polygon_area_m2[c.value]))
        return f"{int(polygons[c.value]):,} polygons · {area}"

    labels = {}
    for c in workflow.classes:
        if own.get(c.value) == c:
            labels[c.value] = f"{c.name}\n{polygons_of(c)}"
        else:
            labels[c.value] = f"{c.name}\n{format_area(float(class_area_m2[c.value]))}"
    for c in MASK_CLASSES:
        labels[c.value] = f"{c.name.replace('_', ' ')}\n{masked[c.name]:.1%} of the scene"
    merged = [
        (c.colour, f"{c.name} (polygons)\n{polygons_of(c)}")
        for c in shown
        if c not in workflow.classes
    ]
    return labels, merged


def format_area(m2: float) -> str:
    """``3.20 km²`` from a square kilometre up, else ``12.50 ha``."""
    if m2 >= 1e6:
        return f"{m2 / 1e6:,.2f} km²"
    return f"{m2 / 1e4:,.2f} ha"


@functools.cache
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib) at ``size`` pixels, else Pillow's own font."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    spec = importlib.util.find_spec("matplotlib")  # finds the package without importing it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / name
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)


def _legend(draw: ImageDraw.ImageDraw, x: int, y: int, entries: list[tuple[str, str]]) -> None:
    """The legend at (x, y): its title, then a swatch (``#rrggbb``) and a label per entry."""
    draw.text((x, y), "classes", fill="black", font=_font(_LEGEND_TITLE_FONT))
    y += 30
    font = _font(_LABEL_FONT)
    for colour, label in entries:
        draw.rectangle((x, y, x + 22, y + 17), fill=colour, outline=_EDGE)
        bottom = draw.multiline_textbbox((x + 32, y), label, font=font, spacing=4)[3]
        draw.multiline_text((x + 32, y), label, fill="black", font=font, spacing=4)
        y += max(17, math.ceil(bottom) - y) + 12


def _scale_bar(image: Image.Image, grid: Grid, map_box: tuple[int, int, int, int]) -> None:
    """Draw a black-and-white scale bar in the map's lower left, on a white box.

    ``map_box`` is the map's (left, top, width, height) on ``image``, in pixels.
    """
    left, top, disp_w, disp_h = map_box
    width_m, _ = ground_size_m(grid)
    length = nice_length(width_m / 4)
    bar = max(round(length / width_m * disp_w), 2)
    x0, y0 = left + 20, top + disp_h - 20  # bar's lower-left corner
    bar_h, pad, text_h = 7, 8, 18
    box = (x0 - pad, y0 - bar_h - text_h - pad, x0 + bar + pad, y0 + pad)
    region = image.crop(box)
    image.paste(Image.blend(region, Image.new("RGB", region.size, "white"), 0.85), box[:2])
    draw = ImageDraw.Draw(image)
    half = x0 + bar // 2
    draw.rectangle((x0, y0 - bar_h, half, y0), fill="black", outline="black")
    draw.rectangle((half, y0 - bar_h, x0 + bar, y0), fill="white", outline="black")
    draw.text(
        (x0 + bar / 2, y0 - bar_h - 3),
        format_length(length),
        fill="black",
        font=_font(_LABEL_FONT),
        anchor="mb",
    )
