from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine

import pipeline.evaluate as evaluate_module
from pipeline.errors import ConfigError, SceneError
from pipeline.evaluate import (
    EvaluationReport,
    evaluate,
    evaluation_grid,
    format_table,
    parse_class_map,
    report_from_confusion,
)
from pipeline.reading import raster_grid
from tests.data import ORIGIN, UTM18, write_raster
from tests.helpers import user_error

# Integer metres, so pixel lookups below are exact integer arithmetic.
X0, Y0 = int(ORIGIN[0]), int(ORIGIN[1])
T10 = Affine(10, 0, X0, 0, -10, Y0)
NODATA = 255


def _pairs(report: EvaluationReport) -> dict[tuple[int, int], int]:
    """The report's confusion as {(predicted, truth): count}, zero cells left out."""
    values = [c.value for c in report.classes]
    return {
        (values[i], values[j]): n
        for i, row in enumerate(report.confusion)
        for j, n in enumerate(row)
        if n
    }


def _expected_pairs(pred: np.ndarray, truth: np.ndarray) -> dict[tuple[int, int], int]:
    """Count (pred, truth) pairs pixel by pixel, skipping NO_LABEL on either side."""
    counts = Counter(
        (int(p), int(t))
        for p, t in zip(pred.ravel(), truth.ravel(), strict=True)
        if p != NODATA and t != NODATA
    )
    return dict(counts)


def _pixel_box(row0: int, col0: int, row1: int, col1: int) -> shapely.Polygon:
    """The polygon covering 10 m pixels rows [row0, row1) x cols [col0, col1) of T10."""
    return shapely.box(X0 + 10 * col0, Y0 - 10 * row1, X0 + 10 * col1, Y0 - 10 * row0)


def _gpkg(path: Path, shapes: list[tuple[shapely.Polygon, int]], field: str = "class") -> Path:
    geoms = np.array([g for g, _ in shapes], dtype=object)
    pyogrio.raw.write(
        str(path),
        geometry=shapely.to_wkb(geoms),
        field_data=[np.array([v for _, v in shapes], dtype=np.int32)],
        fields=[field],
        crs=UTM18,
        geometry_type="Polygon",
        driver="GPKG",
    )
    return path


def _random_labels(shape: tuple[int, int], seed: int, k: int = 3, holes: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, shape).astype(np.uint8)
    labels[rng.random(shape) < holes] = NODATA
    return labels


# --- metrics from a confusion matrix ---------------------------------------------------------

# [predicted, truth]. Class 2 occurs only in the truth, class 3 only in the prediction, class 4
# nowhere. Counts per class, by hand:
#   0: TP 50, FP 5+4 = 9, FN 10+6 = 16     1: TP 30, FP 10, FN 5
#   2: TP 0,  FP 0,       FN 4             3: TP 0,  FP 6,  FN 0
HAND = [
    [50, 5, 4, 0, 0],
    [10, 30, 0, 0, 0],
    [0, 0, 0, 0, 0],
    [6, 0, 0, 0, 0],
    [0, 0, 0, 0, 0],
]


def test_metrics_from_known_counts():
    report = report_from_confusion(np.array(HAND), names={1: "forest"})
    by_value = {c.value: c for c in report.classes}
    assert list(by_value) == [0, 1, 2, 3]
    c0, c1, c2, c3 = (by_value[v] for v in range(4))

    assert (c0.name, c1.name) == ("0", "forest")
    assert c0.precision == pytest.approx(50 / 59)
    assert c0.recall == pytest.approx(50 / 66)
    assert c0.iou == pytest.approx(50 / 75)
    assert c0.f1 == pytest.approx(2 * 50 / (2 * 50 + 9 + 16))
    assert (c0.support, c0.predicted) == (66, 59)

    assert c1.precision == pytest.approx(30 / 40)
    assert c1.recall == pytest.approx(30 / 35)
    assert c1.iou == pytest.approx(30 / 45)
    assert c1.f1 == pytest.approx(60 / 75)

    # Never predicted: precision is 0/0; recall, IoU and F1 are 0.
    assert math.isnan(c2.precision)
    assert (c2.recall, c2.iou, c2.f1, c2.support, c2.predicted) == (0, 0, 0, 4, 0)
    # Absent from the truth: recall is 0/0.
    assert math.isnan(c3.recall)
    assert (c3.precision, c3.iou, c3.f1, c3.support, c3.predicted) == (0, 0, 0, 0, 6)

    assert report.pixels == 105
    assert report.overall_accuracy == pytest.approx(80 / 105)
    # Over classes present in the truth (0, 1, 2), not class 3.
    assert report.mean_iou == pytest.approx((50 / 75 + 30 / 45 + 0) / 3)
    assert report.confusion == ((50, 5, 4, 0), (10, 30, 0, 0), (0, 0, 0, 0), (6, 0, 0, 0))


def test_f1_is_the_harmonic_mean_of_precision_and_recall():
    matrix = np.random.default_rng(3).integers(0, 50, (6, 6))
    for c in report_from_confusion(matrix).classes:
        p, r = c.precision, c.recall
        assert c.f1 == pytest.approx(2 * p * r / (p + r))


def test_to_dict_is_json_safe_with_none_for_undefined():
    data = report_from_confusion(np.array(HAND)).to_dict()
    text = json.dumps(data, allow_nan=False)
    back = json.loads(text)
    assert back["pixels"] == 105
    assert back["overall_accuracy"] == pytest.approx(80 / 105)
    by_value = {c["value"]: c for c in back["classes"]}
    assert by_value[2]["precision"] is None
    assert by_value[3]["recall"] is None
    assert by_value[1]["iou"] == pytest.approx(30 / 45)
    assert back["confusion"]["values"] == [0, 1, 2, 3]
    assert back["confusion"]["matrix"][1] == [10, 30, 0, 0]


def test_format_table_columns_and_overall_lines():
    text = format_table(report_from_confusion(np.array(HAND), names={1: "forest"}))
    lines = text.splitlines()
    assert lines[0].split() == ["class", "name", "IoU", "F1", "precision", "recall", "support"]
    assert lines[1].split() == ["0", "0", "0.6667", "0.8000", "0.8475", "0.7576", "66"]
    assert lines[2].split() == ["1", "forest", "0.6667", "0.8000", "0.7500", "0.8571", "35"]
    assert lines[3].split() == ["2", "2", "0.0000", "0.0000", "-", "0.0000", "4"]
    assert lines[4].split() == ["3", "3", "0.0000", "0.0000", "0.0000", "-", "0"]
    # Fixed width: the numeric columns end at the same place on every row.
    assert len({len(line) for line in lines[:5]}) == 1
    assert "overall accuracy  0.7619" in lines
    assert "mean IoU          0.4444" in lines
    assert "pixels evaluated  105" in lines


# --- class maps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("0-2=0,3-6=1", {0: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 1, 6: 1}),
        ("1=1,2=1,0=0", {0: 0, 1: 1, 2: 1}),
        (" 3 - 4 = 7 , 254=0 ", {3: 7, 4: 7, 254: 0}),
        ("5-5=2", {5: 2}),
    ],
)
def test_parse_class_map(spec, expected):
    assert parse_class_map(spec) == expected


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("0-2", "'0-2'"),
        ("a=1", "'a=1'"),
        ("0=0,", "''"),
        ("-1=0", "'-1=0'"),
        ("1=2=3", "'1=2=3'"),
        ("0=255", "255"),
        ("300=1", "300"),
        ("3-1=0", "3-1 runs backwards"),
        ("0=0,0=1", "value 0 is mapped twice"),
        ("0-2=0,2=1", "value 2 is mapped twice"),
        ("0=0\n1=1", "'0=0\\n1=1'"),
    ],
)
def test_bad_class_map_is_one_line_with_the_format(spec, needle):
    message = user_error(ConfigError, parse_class_map, spec)
    assert needle in message
    assert "e.g. '0-2=0,3-6=1'" in message


# --- evaluate on files -----------------------------------------------------------------------


def test_raster_vs_raster_ignores_nodata(tmp_path):
    pred = _random_labels((9, 11), seed=1)
    truth = _random_labels((9, 11), seed=2)
    p = write_raster(tmp_path / "pred.tif", pred, T10, nodata=NODATA)
    t = write_raster(tmp_path / "truth.tif", truth, T10, nodata=NODATA)

    report = evaluate(str(p), str(t))

    expected = _expected_pairs(pred, truth)
    assert _pairs(report) == expected
    assert report.pixels == int(((pred != NODATA) & (truth != NODATA)).sum())
    assert report.pixels < pred.size  # the nodata holes really were skipped
    correct = sum(n for (a, b), n in expected.items() if a == b)
    assert report.overall_accuracy == pytest.approx(correct / report.pixels)


def test_class_maps_recode_both_sides(tmp_path):
    pred = np.random.default_rng(4).integers(0, 7, (8, 10)).astype(np.uint8)
    truth = np.random.default_rng(5).integers(10, 12, (8, 10)).astype(np.uint8)
    p = write_raster(tmp_path / "pred.tif", pred, T10)
    t = write_raster(tmp_path / "truth.tif", truth, T10)

    report = evaluate(
        str(p),
        str(t),
        pred_map=parse_class_map("0-2=0,3-6=1"),
        truth_map=parse_class_map("10=0,11=1"),
        names={0: "other", 1: "burn"},
    )

    expected = _expected_pairs((pred >= 3).astype(np.uint8), truth - 10)
    assert _pairs(report) == expected
    assert [(c.value, c.name) for c in report.classes] == [(0, "other"), (1, "burn")]


def test_masked_prediction_pixels_are_not_counted(tmp_path):
    from pipeline.masking import CLOUD, SHADOW

    pred = np.random.default_rng(6).integers(0, 7, (8, 10)).astype(np.uint8)
    pred[:3, :4] = CLOUD
    pred[5:, 6:] = SHADOW
    truth = np.random.default_rng(7).integers(0, 2, (8, 10)).astype(np.uint8)
    p = write_raster(tmp_path / "pred.tif", pred, T10, nodata=NODATA)
    t = write_raster(tmp_path / "truth.tif", truth, T10)

    report = evaluate(str(p), str(t), pred_map=parse_class_map("0-2=0,3-6=1"))

    clear = pred < SHADOW
    assert report.pixels == int(clear.sum()) == 80 - 12 - 12
    assert _pairs(report) == _expected_pairs((pred[clear] >= 3).astype(np.uint8), truth[clear])


def test_pred_finer_than_truth_on_an_offset_grid(tmp_path):
    # Truth: 20 m, 5 x 6, at the origin. Prediction: 10 m, 12 x 10, starting 25 m east and
    # 25 m south, so some truth pixels lie outside it and no truth centre falls on a 10 m edge.
    truth = _random_labels((5, 6), seed=6, holes=0.0)
    pred = _random_labels((12, 10), seed=7, holes=0.0)
    t = write_raster(tmp_path / "truth.tif", truth, Affine(20, 0, X0, 0, -20, Y0))
    p = write_raster(
        tmp_path / "pred.tif", pred, Affine(10, 0, X0 + 25, 0, -10, Y0 - 25), nodata=NODATA
    )

    report = evaluate(str(p), str(t))

    expected: Counter[tuple[int, int]] = Counter()
    for i in range(5):
        for j in range(6):
            # Centre of truth pixel (i, j) is 20j + 10 m east and 20i + 10 m south of the
            # origin; the prediction pixel holding it starts 25 m further in, 10 m per pixel.
            row, col = (20 * i + 10 - 25) // 10, (20 * j + 10 - 25) // 10
            if 0 <= row < 12 and 0 <= col < 10:
                expected[int(pred[row, col]), int(truth[i, j])] += 1
    assert _pairs(report) == dict(expected)
    assert report.pixels == 4 * 5  # truth rows 1..4 and cols 1..5 are covered


def test_raster_pred_vs_polygon_truth(tmp_path):
    pred = _random_labels((20, 20), seed=8)
    p = write_raster(tmp_path / "pred.tif", pred, T10, nodata=NODATA)
    t = _gpkg(
        tmp_path / "truth.gpkg",
        [(_pixel_box(2, 3, 9, 11), 1), (_pixel_box(12, 5, 19, 16), 2)],
    )
    truth = np.zeros((20, 20), np.uint8)  # polygons burn onto 0 where nothing covers
    truth[2:9, 3:11] = 1
    truth[12:19, 5:16] = 2

    report = evaluate(str(p), str(t))

    assert _pairs(report) == _expected_pairs(pred, truth)
    assert evaluation_grid(str(p), str(t)) == raster_grid(str(p))


def test_polygon_pred_vs_raster_truth_with_label_field(tmp_path):
    truth = _random_labels((16, 18), seed=9)
    t = write_raster(tmp_path / "truth.tif", truth, T10, nodata=NODATA)
    p = _gpkg(
        tmp_path / "pred.gpkg",
        [(_pixel_box(0, 0, 8, 9), 2), (_pixel_box(10, 4, 16, 18), 1)],
        field="label",
    )
    pred = np.zeros((16, 18), np.uint8)
    pred[0:8, 0:9] = 2
    pred[10:16, 4:18] = 1

    report = evaluate(str(p), str(t), label_field="label")

    assert _pairs(report) == _expected_pairs(pred, truth)
    assert evaluation_grid(str(p), str(t)) == raster_grid(str(t))


def test_both_polygons_is_a_config_error():
    message = user_error(ConfigError, evaluate, "pred.gpkg", "truth.geojson")
    assert "at least one of --pred/--truth must be a raster" in message
    assert "pred.gpkg" in message and "truth.geojson" in message


def test_unmapped_values_are_named(tmp_path):
    pred = np.array([[0, 1, 2, 3], [7, 7, 3, 0]], np.uint8)
    truth = np.array([[0, 1, 1, 5], [0, 1, 0, 1]], np.uint8)
    p = write_raster(tmp_path / "pred.tif", pred, T10)
    t = write_raster(tmp_path / "truth.tif", truth, T10)

    message = user_error(ConfigError, evaluate, str(p), str(t), {0: 0, 1: 0, 2: 1})
    assert "values 3, 7 found in" in message and "--pred-map" in message
    assert "truth" not in message.replace(str(t), "")

    message = user_error(
        ConfigError, evaluate, str(p), str(t), {v: 0 for v in (0, 1, 2, 3, 7)}, {0: 0, 1: 1}
    )
    assert "the truth map has no class for values 5 found in" in message

    message = user_error(ConfigError, evaluate, str(p), str(t), {0: 0}, {0: 0})
    assert "pred map" in message and "1, 2, 3, 7" in message
    assert "truth map" in message and "values 1, 5 found" in message


def test_unmapped_values_where_the_other_side_has_no_label_are_not_counted(tmp_path):
    pred = np.array([[0, 9], [1, 1]], np.uint8)
    truth = np.array([[0, NODATA], [1, 0]], np.uint8)
    p = write_raster(tmp_path / "pred.tif", pred, T10)
    t = write_raster(tmp_path / "truth.tif", truth, T10, nodata=NODATA)

    report = evaluate(str(p), str(t), pred_map={0: 0, 1: 1})
    assert _pairs(report) == {(0, 0): 1, (1, 1): 1, (1, 0): 1}


def test_no_common_pixels_is_a_scene_error(tmp_path):
    p = write_raster(tmp_path / "pred.tif", np.zeros((4, 4), np.uint8), T10)
    far = Affine(10, 0, X0 + 10_000, 0, -10, Y0)
    t = write_raster(tmp_path / "truth.tif", np.zeros((4, 4), np.uint8), far)
    message = user_error(SceneError, evaluate, str(p), str(t))
    assert "share no labelled pixel" in message


def test_large_raster_is_read_in_bounded_blocks(tmp_path, monkeypatch):
    height, width = 1300, 1500
    rng = np.random.default_rng(10)
    truth = rng.integers(0, 4, (height, width)).astype(np.uint8)
    # A prediction that mostly agrees, so the diagonal and off-diagonal both carry weight.
    pred = np.where(rng.random((height, width)) < 0.7, truth, rng.integers(0, 4, truth.shape))
    pred = pred.astype(np.uint8)
    pred[rng.random((height, width)) < 0.05] = NODATA
    pred[:40, 1000:1100] = NODATA  # straddles a block edge
    p = write_raster(tmp_path / "pred.tif", pred, T10, nodata=NODATA)
    t = write_raster(tmp_path / "truth.tif", truth, T10, nodata=NODATA)

    windows = []
    real_read = evaluate_module.read_labels

    def spy(path, grid, window, field="class"):
        windows.append(window)
        return real_read(path, grid, window, field)

    monkeypatch.setattr(evaluate_module, "read_labels", spy)
    report = evaluate(str(p), str(t))

    # Two reads (pred, truth) per block, 2 x 2 blocks, none over 1024 x 1024.
    assert len(windows) == 8
    assert max(int(w.height) for w in windows) <= 1024
    assert max(int(w.width) for w in windows) <= 1024
    assert sum(int(w.height) * int(w.width) for w in windows) == 2 * height * width

    # The same counts straight from the whole arrays, encoded differently (base 256).
    keep = pred != NODATA
    codes, counts = np.unique(pred[keep].astype(np.int32) * 256 + truth[keep], return_counts=True)
    expected = {(int(c) // 256, int(c) % 256): int(n) for c, n in zip(codes, counts, strict=True)}
    assert _pairs(report) == expected
    assert report.pixels == int(keep.sum())


def test_hurst_perimeter_against_itself(shared_data):
    path = shared_data / "fire" / "HURST_20250107" / "perimeter_mask.tif"
    with rasterio.open(path) as src:
        mask = src.read(1)

    report = evaluate(str(path), str(path), names={0: "unburned", 1: "burned"})

    burned = next(c for c in report.classes if c.value == 1)
    assert burned.name == "burned"
    assert burned.iou == 1.0
    assert burned.precision == burned.recall == burned.f1 == 1.0
    assert burned.support == int((mask == 1).sum()) > 0
    assert report.pixels == mask.size
    assert report.overall_accuracy == 1.0
    assert report.mean_iou == 1.0
