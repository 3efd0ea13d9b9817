"""Accuracy of a class map against reference labels.

This module owns the evaluation of a prediction (a class raster or a polygon layer) against
ground truth (a label mask or polygons): parsing class maps that recode either side, choosing
the evaluation grid, accumulating a confusion matrix block by block so memory stays bounded
whatever the scene size, the per-class metrics derived from it, and their JSON-safe and
tabular forms. It opens no file itself: every read goes through :mod:`pipeline.reading`.

The confusion matrix is indexed ``[predicted, truth]`` over class values 0..254; pixels where
either side is :data:`~pipeline.reading.NO_LABEL`, and predicted pixels that a run masked as
cloud or cloud shadow (:data:`~pipeline.masking.MASK_VALUES`), are not counted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.errors import ConfigError, SceneError
from pipeline.grid import Grid, blocks
from pipeline.masking import MASK_VALUES
from pipeline.reading import NO_LABEL, RASTER_SUFFIXES, is_raster, raster_grid, read_labels

#: Edge in pixels of the blocks the evaluation grid is read in; bounds memory per step.
BLOCK_SIZE = 1024
#: Number of class values a label can take (0..254; 255 is NO_LABEL).
NUM_VALUES = NO_LABEL

_MAP_ITEM = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?=\s*(\d+)\s*", re.ASCII)
_MAP_FORMAT = (
    "expected comma-separated VALUE=CLASS or FIRST-LAST=CLASS items with values 0..254, "
    "e.g. '0-2=0,3-6=1'"
)


@dataclass(frozen=True)
class ClassMetrics:
    """Scores of one class; a ratio whose denominator is 0 is NaN."""

    value: int
    name: str
    iou: float
    f1: float
    precision: float
    recall: float
    support: int
    predicted: int

    def to_dict(self) -> dict[str, Any]:
        """The metrics as JSON-safe values, NaN as ``None``."""
        return {
            "value": self.value,
            "name": self.name,
            "iou": _json_float(self.iou),
            "f1": _json_float(self.f1),
            "precision": _json_float(self.precision),
            "recall": _json_float(self.recall),
            "support": self.support,
            "predicted": self.predicted,
        }


@dataclass(frozen=True)
class EvaluationReport:
    """Per-class metrics, overall scores and the confusion matrix of one evaluation.

    ``classes`` lists every class value found in the prediction or the truth, in value order;
    ``confusion[i][j]`` counts pixels predicted as ``classes[i]`` whose truth is
    ``classes[j]``. ``mean_iou`` averages IoU over the classes present in the truth.
    """

    classes: tuple[ClassMetrics, ...]
    overall_accuracy: float
    mean_iou: float
    pixels: int
    confusion: tuple[tuple[int, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-safe values (``json.dumps(..., allow_nan=False)`` accepts it)."""
        return {
            "pixels": self.pixels,
            "overall_accuracy": _json_float(self.overall_accuracy),
            "mean_iou": _json_float(self.mean_iou),
            "classes": [c.to_dict() for c in self.classes],
            "confusion": {
                "values": [c.value for c in self.classes],
                "rows": "predicted",
                "columns": "truth",
                "matrix": [list(row) for row in self.confusion],
            },
        }


def parse_class_map(spec: str) -> dict[int, int]:
    """Parse a class map such as ``"0-2=0,3-6=1"`` into ``{value: class}``."""
    if not spec.strip():
        raise ConfigError(f"class map {spec!r} is empty; {_MAP_FORMAT}")
    mapping: dict[int, int] = {}
    for item in spec.split(","):
        match = _MAP_ITEM.fullmatch(item)
        if match is None:
            raise ConfigError(f"class map {spec!r}: cannot read item {item!r}; {_MAP_FORMAT}")
        first, last, target = match.groups()
        lo = int(first)
        hi = int(last) if last is not None else lo
        to = int(target)
        for number in (lo, hi, to):
            if number >= NUM_VALUES:
                raise ConfigError(
                    f"class map {spec!r}: value {number} is out of range; {_MAP_FORMAT}"
                )
        if hi < lo:
            raise ConfigError(f"class map {spec!r}: range {lo}-{hi} runs backwards; {_MAP_FORMAT}")
        for value in range(lo, hi + 1):
            if value in mapping:
                raise ConfigError(
                    f"class map {spec!r}: value {value} is mapped twice; {_MAP_FORMAT}"
                )
            mapping[value] = to
    return mapping


def evaluation_grid(pred: str, truth: str) -> Grid:
    """The grid to score on: the truth's if it is a raster, else the prediction's."""
    # The truth's own pixels are the reference, so they define what is counted; polygons have
    # no pixels, so a polygon truth is burned onto the prediction's grid instead.
    if is_raster(truth):
        return raster_grid(truth)
    if is_raster(pred):
        return raster_grid(pred)
    raise ConfigError(
        f"cannot evaluate {pred} against {truth}: both are polygon files; at least one of "
        f"--pred/--truth must be a raster ({', '.join(sorted(RASTER_SUFFIXES))})"
    )


def accumulate_confusion(
    pred: str,
    truth: str,
    grid: Grid,
    pred_map: dict[int, int] | None = None,
    truth_map: dict[int, int] | None = None,
    label_field: str = "class",
    block_size: int = BLOCK_SIZE,
) -> npt.NDArray[np.int64]:
    """Count ``[predicted, truth]`` pixel pairs over ``grid``, one block at a time."""
    pred_lut, truth_lut = _lookup(pred_map), _lookup(truth_map)
    confusion = np.zeros(NUM_VALUES * NUM_VALUES, dtype=np.int64)
    unmapped_pred: set[int] = set()
    unmapped_truth: set[int] = set()
    for block in blocks(grid, block_size):
        p = read_labels(pred, grid, block.window, label_field)
        t = read_labels(truth, grid, block.window, label_field)
        # Unknown labels on either side say nothing about the prediction's accuracy, and
        # neither does a pixel the run did not classify because it was masked.
        keep = (p != NO_LABEL) & (t != NO_LABEL) & ~np.isin(p, MASK_VALUES)
        p_raw, t_raw = p[keep], t[keep]
        p_cls, t_cls = pred_lut[p_raw], truth_lut[t_raw]
        bad_p, bad_t = p_cls < 0, t_cls < 0
        unmapped_pred.update(int(v) for v in np.unique(p_raw[bad_p]))
        unmapped_truth.update(int(v) for v in np.unique(t_raw[bad_t]))
        ok = ~(bad_p | bad_t)
        confusion += confusion_of(p_cls[ok], t_cls[ok]).ravel()
    # Report every unmapped value at once (after the full pass) so one fix covers them all.
    problems = [
        _unmapped_message(side, path, values)
        for side, path, values in (("pred", pred, unmapped_pred), ("truth", truth, unmapped_truth))
        if values
    ]
    if problems:
        raise ConfigError("; ".join(problems))
    return confusion.reshape(NUM_VALUES, NUM_VALUES)


def confusion_of(pred: np.ndarray, truth: np.ndarray) -> npt.NDArray[np.int64]:
    """Count ``[predicted, truth]`` pixel pairs of two label arrays already in memory."""
    keep = (pred != NO_LABEL) & (truth != NO_LABEL)
    counts = np.bincount(
        pred[keep].astype(np.int64) * NUM_VALUES + truth[keep], minlength=NUM_VALUES * NUM_VALUES
    )
    return counts.reshape(NUM_VALUES, NUM_VALUES)


def report_from_confusion(
    confusion: npt.ArrayLike, names: dict[int, str] | None = None
) -> EvaluationReport:
    """Derive per-class and overall metrics from a ``[predicted, truth]`` confusion matrix."""
    matrix = np.asarray(confusion, dtype=np.int64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {matrix.shape}")
    names = names or {}
    predicted = matrix.sum(axis=1)
    support = matrix.sum(axis=0)
    tp = np.diag(matrix)
    values = [int(v) for v in np.flatnonzero((predicted > 0) | (support > 0))]
    classes = []
    for v in values:
        hit, pred_n, true_n = int(tp[v]), int(predicted[v]), int(support[v])
        classes.append(
            ClassMetrics(
                value=v,
                name=names.get(v, str(v)),
                iou=_ratio(hit, pred_n + true_n - hit),
                # 2TP / (2TP + FP + FN): equals 2PR/(P+R), yet stays defined (0) when no pixel
                # was predicted as a class the truth holds.
                f1=_ratio(2 * hit, pred_n + true_n),
                precision=_ratio(hit, pred_n),
                recall=_ratio(hit, true_n),
                support=true_n,
                predicted=pred_n,
            )
        )
    total = int(matrix.sum())
    truth_ious = [c.iou for c in classes if c.support > 0]
    return EvaluationReport(
        classes=tuple(classes),
        overall_accuracy=_ratio(int(tp.sum()), total),
        mean_iou=float(np.mean(truth_ious)) if truth_ious else math.nan,
        pixels=total,
        confusion=tuple(tuple(int(matrix[i, j]) for j in values) for i in values),
    )


def evaluate(
    pred: str,
    truth: str,
    pred_map: dict[int, int] | None = None,
    truth_map: dict[int, int] | None = None,
    label_field: str = "class",
    names: dict[int, str] | None = None,
) -> EvaluationReport:
    """Score ``pred`` (raster or polygons) against ``truth`` (raster or polygons)."""
    grid = evaluation_grid(pred, truth)
    confusion = accumulate_confusion(pred, truth, grid, pred_map, truth_map, label_field)
    report = report_from_confusion(confusion, names)
    if report.pixels == 0:
        raise SceneError(
            f"{pred} and {truth} share no labelled pixel; pick files that cover the same area"
        )
    return report


def format_table(report: EvaluationReport) -> str:
    """Render the report as a fixed-width table followed by the overall scores."""
    header = ("class", "name", "IoU", "F1", "precision", "recall", "support")
    rows = [
        (
            str(c.value),
            c.name,
            _cell(c.iou),
            _cell(c.f1),
            _cell(c.precision),
            _cell(c.recall),
            str(c.support),
        )
        for c in report.classes
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        # Class value and name read best left-aligned, numbers right-aligned.
        parts = [
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    lines = [line(header), *(line(r) for r in rows), ""]
    lines.append(f"overall accuracy  {_cell(report.overall_accuracy)}")
    lines.append(f"mean IoU          {_cell(report.mean_iou)}")
    lines.append(f"pixels evaluated  {report.pixels}")
    return "\n".join(lines)


def _lookup(mapping: dict[int, int] | None) -> npt.NDArray[np.int16]:
    """A 256-entry table from stored value to class; -1 marks values the map leaves out."""
    if mapping is None:
        return np.arange(NO_LABEL + 1, dtype=np.int16)
    lut = np.full(NO_LABEL + 1, -1, dtype=np.int16)
    for value, target in mapping.items():
        lut[value] = target
    return lut


def _unmapped_message(side: str, path: str, values: set[int]) -> str:
    listed = ", ".join(str(v) for v in sorted(values))
    example = ",".join(f"{v}=0" for v in sorted(values)[:2])
    return (
        f"the {side} map has no class for values {listed} found in {path}; "
        f"add them to --{side}-map (e.g. '{example}')"
    )


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _cell(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"
